"""``onnx-compress check-sparsity``: recompute the 2:4 pattern of every weight from its data.

For every stored weight of a MatMul / Gemm / Conv (followed through Transpose / Cast /
DequantizeLinear chains, :mod:`onnx_compress.sparsity.sites`), the checker recomputes from the
stored values (``q == zero_point`` counts as zero for quantized weights) whether every group of 4
along the consumer's reduction axis has 2 zeros, and compares with the annotations (tensor
metadata, or the model summary for IR < 10). Problems:

* annotated but not 2:4 (or annotated on an axis that is not the consumer's K axis, or a
  ``stored = 2:4`` claim that the raw stored values do not meet);
* 2:4 along K but not annotated;
* annotated tensors the checker cannot find as weights of any consumer (packed by an op whose
  layout it does not know are listed as *unchecked*, not as problems).
"""

from __future__ import annotations

__all__ = ["SparsityCheck", "TensorCheck", "check_sparsity"]

import dataclasses
import json
from typing import Any

import onnx_ir as ir

from onnx_compress.sparsity.annotate import KEY, read_summary, stored_state
from onnx_compress.sparsity.sites import find_weight_sites


@dataclasses.dataclass(frozen=True)
class TensorCheck:
    """What the checker found for one weight."""

    tensor: str
    layer: str
    axis: int | None
    annotated: bool
    sparse: bool  # every group along K has >= 2 zeros (of the dequantized weight)
    format: str
    bad_groups: int | None
    groups: int | None
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class SparsityCheck:
    tensors: tuple[TensorCheck, ...]
    unchecked: tuple[str, ...] = ()  # annotated tensors in a packed layout (not recomputed)

    @property
    def problems(self) -> tuple[TensorCheck, ...]:
        return tuple(t for t in self.tensors if t.problem is not None)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sparse": [dataclasses.asdict(t) for t in self.tensors if t.sparse or t.annotated],
            "problems": [dataclasses.asdict(t) for t in self.problems],
            "unchecked": list(self.unchecked),
            "weights": len(self.tensors),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_text(self) -> str:
        sparse = [t for t in self.tensors if t.sparse and t.annotated and t.problem is None]
        lines = [f"{len(sparse)} of {len(self.tensors)} weights are 2:4 along their reduction axis and annotated"]
        for t in self.problems:
            lines.append(f"  PROBLEM {t.tensor} ({t.layer}): {t.problem}")
        for name in self.unchecked:
            lines.append(f"  unchecked {name}: annotated, stored in an op-specific packed layout")
        lines.append("ok" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def check_sparsity(model: ir.Model) -> SparsityCheck:
    """Recompute every weight's 2:4 pattern from its stored data and compare with the annotations."""
    summary = read_summary(model) or {}
    listed = {e.get("tensor"): e for e in summary.get("tensors", []) if isinstance(e, dict)}
    results: list[TensorCheck] = []
    seen: set[str] = set()
    for site in find_weight_sites(model.graph):
        name = site.value.name or ""
        tensor = site.tensor
        meta = tensor.metadata_props
        entry = listed.get(name)
        annotated = meta.get(KEY["pattern"]) == "2:4" or entry is not None
        seen.add(name)
        if not site.uses:
            if annotated:
                results.append(
                    TensorCheck(name, site.name, None, True, False, "?", None, None, f"annotated but {site.skip}")
                )
            continue
        state = stored_state(site)
        axis = state["axis"]
        problem = None
        claimed_axis = meta.get(KEY["axis"]) or (str(entry["axis"]) if entry is not None and "axis" in entry else None)
        claimed_stored = meta.get(KEY["stored"]) or (entry.get("stored") if entry is not None else None)
        if annotated:
            if state["groups"] is None:
                problem = (
                    f"annotated 2:4 but its reduction axis {axis} has {site.shape[axis]} elements (not a multiple of 4)"
                )
            elif claimed_axis is not None and claimed_axis != str(axis):
                problem = (
                    f"annotated along axis {claimed_axis} but {site.uses[0].label} reduces along stored axis {axis}"
                )
            elif not state["pattern"]:
                problem = (
                    f"annotated 2:4 along axis {axis} but {state['bad']} of {state['groups']} groups of 4 "
                    "have fewer than 2 zeros"
                )
            elif claimed_stored == "2:4" and not state["stored"]:
                problem = "annotated stored=2:4 but the stored values are not (zero points shift the zeros)"
            elif site.skip:
                problem = f"annotated but cannot be sparse as consumed: {site.skip}"
        elif state["pattern"] and not site.skip:
            problem = f"2:4 along its reduction axis {axis} but not annotated ({KEY['pattern']})"
        results.append(
            TensorCheck(
                name,
                site.name,
                axis,
                annotated,
                bool(state["pattern"]),
                state["format"],
                state["bad"],
                state["groups"],
                problem,
            )
        )
    unchecked: list[str] = []
    for value in model.graph.initializers.values():
        name = value.name or ""
        init = value.const_value
        if name in seen or init is None:
            continue
        annotated = init.metadata_props.get(KEY["pattern"]) == "2:4" or name in listed
        if not annotated:
            continue
        fmt = init.metadata_props.get(KEY["format"]) or str(listed.get(name, {}).get("format", ""))
        if fmt.startswith("packed:"):
            unchecked.append(name)
        else:
            results.append(
                TensorCheck(
                    name,
                    name,
                    None,
                    True,
                    False,
                    fmt or "?",
                    None,
                    None,
                    "annotated 2:4 but no MatMul/Gemm/Conv reads it as a weight",
                )
            )
    return SparsityCheck(tuple(results), tuple(unchecked))
