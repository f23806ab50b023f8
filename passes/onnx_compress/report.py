"""What a compression run did, per layer and in total.

Passes record one :class:`LayerRecord` per weight they looked at into the model's in-memory
metadata (``model.meta``, never serialized) with :func:`add_records`; :func:`build_report`
derives the report from those records and from the models before and after (sizes).
"""

from __future__ import annotations

__all__ = [
    "AwqRecord",
    "LayerRecord",
    "Report",
    "add_awq_records",
    "add_records",
    "awq_records",
    "build_report",
    "records",
]

import dataclasses
import json
import math
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir

_META_KEY = "onnx_compress.layers"
_AWQ_KEY = "onnx_compress.awq"


@dataclasses.dataclass(frozen=True)
class LayerRecord:
    """One weight: quantized (``reason`` None) or left float (``reason`` says why).

    ``rel_error`` is ``||dW||_F / ||W||_F``, the expected relative error of the layer's output
    ``x @ W`` for inputs with independent, equal-variance entries (E||x dW||^2 = s^2 ||dW||_F^2).
    ``output_error`` is ``||X dW|| / ||X W||`` on the layer's actual inputs X (the verification or
    calibration samples), when they were captured. ``fallback`` says why the layer got another
    format than the one asked for (``--int8``, an op that cannot take it, ``--max-layer-error``).
    """

    name: str
    weight: str
    shape: tuple[int, ...]
    dtype: str
    scheme: str
    format: str
    bytes_before: int
    bytes_after: int
    rel_error: float | None = None
    consumers: int = 1
    reason: str | None = None
    output_error: float | None = None
    block_size: int | None = None
    fallback: str | None = None

    @property
    def quantized(self) -> bool:
        return self.reason is None

    @property
    def error(self) -> float | None:
        """The best available error: on actual inputs if measured, else the weight error."""
        return self.output_error if self.output_error is not None else self.rel_error

    @property
    def params(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class AwqRecord:
    """What AWQ did to one group (weights read from one activation)."""

    activation: str
    layers: tuple[str, ...]
    fold: str  # FoldKind name
    fold_node: str | None  # the node whose constants absorbed 1/s (None: a Mul was inserted)
    ratio: float | None  # the grid ratio chosen; None when plain RTN (s = 1) was best
    loss_rtn: float  # mean squared output error of RTN on the sampled rows
    loss: float  # with the chosen scales (<= loss_rtn)
    scale_min: float
    scale_max: float
    clipped: tuple[float, ...]  # per layer: fraction of (block, output channel) bounds below max|w|
    rows: int  # sampled rows the loss was evaluated on
    loss_on: str = "outputs"  # the group's outputs, or the block output (through which linear)


def awq_records(model: ir.Model) -> tuple[AwqRecord, ...]:
    return tuple(model.meta.get(_AWQ_KEY, ()))


def add_awq_records(model: ir.Model, new: Iterable[AwqRecord]) -> None:
    model.meta[_AWQ_KEY] = awq_records(model) + tuple(new)


def records(model: ir.Model) -> tuple[LayerRecord, ...]:
    return tuple(model.meta.get(_META_KEY, ()))


def add_records(model: ir.Model, new: Iterable[LayerRecord]) -> None:
    model.meta[_META_KEY] = records(model) + tuple(new)


@dataclasses.dataclass(frozen=True)
class Report:
    """The summary of one run (also written as ``--report`` JSON)."""

    layers: tuple[LayerRecord, ...]
    model_bytes_before: int
    model_bytes_after: int
    seconds: float
    recipe_toml: str
    verification: dict[str, Any] | None = None
    input_path: str | None = None
    output_path: str | None = None
    awq: tuple[AwqRecord, ...] = ()
    sparsity: dict[str, Any] | None = None  # the model's 2:4 summary (sparsity/annotate.py)

    @property
    def quantized(self) -> tuple[LayerRecord, ...]:
        return tuple(r for r in self.layers if r.quantized)

    @property
    def skipped(self) -> tuple[LayerRecord, ...]:
        return tuple(r for r in self.layers if not r.quantized)

    @property
    def size_ratio(self) -> float:
        return self.model_bytes_before / self.model_bytes_after if self.model_bytes_after else float("inf")

    def with_verification(self, verification: dict[str, Any]) -> Report:
        return dataclasses.replace(self, verification=verification)

    @property
    def bits_per_weight(self) -> float | None:
        """Stored bits per quantized weight, scales and zero points included."""
        params = sum(r.params for r in self.quantized)
        return 8 * sum(r.bytes_after for r in self.quantized) / params if params else None

    @property
    def bits_per_weight_all(self) -> float | None:
        """Stored bits per MatMul/Gemm weight, counting the layers left float at their dtype."""
        params = sum(r.params for r in self.layers)
        return 8 * sum(r.bytes_after for r in self.layers) / params if params else None

    def to_dict(self) -> dict[str, Any]:
        q = self.quantized
        errors = [e for r in q if (e := r.error) is not None]
        return {
            "input": self.input_path,
            "output": self.output_path,
            "recipe": self.recipe_toml,
            "layers": [
                dataclasses.asdict(r) | {"quantized": r.quantized, "bits_per_weight": 8 * r.bytes_after / r.params}
                for r in self.layers
            ],
            "totals": {
                "layers_quantized": len(q),
                "layers_skipped": len(self.skipped),
                "model_bytes_before": self.model_bytes_before,
                "model_bytes_after": self.model_bytes_after,
                "size_ratio": self.size_ratio,
                "quantized_bytes_before": sum(r.bytes_before for r in q),
                "quantized_bytes_after": sum(r.bytes_after for r in q),
                "bits_per_weight": self.bits_per_weight,
                "bits_per_weight_all_layers": self.bits_per_weight_all,
                "layers_fallen_back": sum(1 for r in self.layers if r.fallback),
                "error_basis": "outputs" if any(r.output_error is not None for r in q) else "weights",
                "max_layer_rel_error": max(errors) if errors else None,
                "mean_layer_rel_error": sum(errors) / len(errors) if errors else None,
                "seconds": self.seconds,
            },
            "awq": [dataclasses.asdict(r) for r in self.awq] if self.awq else None,
            "sparsity": self.sparsity,
            "verification": self.verification,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self, max_rows: int | None = None) -> str:
        """The per-layer table and totals, for a terminal."""
        basis = "out.err" if any(r.output_error is not None for r in self.quantized) else "w.err"
        header = ("layer", "shape", "before", "after", "bits", basis, "format")
        rows = [header]
        for r in self.layers if max_rows is None else self.layers[:max_rows]:
            err = f"{100 * e:.3f}%" if (e := r.error) is not None else "-"
            bits = f"{8 * r.bytes_after / r.params:.2f}" if r.params else "-"
            if r.quantized:
                what = f"{r.scheme} {r.format}" + (f" ({r.fallback})" if r.fallback else "")
            else:
                what = f"float ({r.reason})"
            rows.append(
                (r.name, "x".join(map(str, r.shape)), _bytes(r.bytes_before), _bytes(r.bytes_after), bits, err, what)
            )
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = []
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:6], widths[1:], strict=True)]
            lines.append("  ".join([*cells, row[6]]))
        if max_rows is not None and len(self.layers) > max_rows:
            lines.append(f"... {len(self.layers) - max_rows} more layers (see --report)")
        lines.append(self.format_totals())
        return "\n".join(lines)

    def format_totals(self) -> str:
        q = self.quantized
        errors = [e for r in q if (e := r.error) is not None]
        parts = [
            f"quantized {len(q)} layers, {len(self.skipped)} left float",
            f"model {_bytes(self.model_bytes_before)} -> {_bytes(self.model_bytes_after)} "
            f"({self.size_ratio:.2f}x smaller)",
        ]
        if self.bits_per_weight is not None:
            parts.append(f"{self.bits_per_weight:.2f} bits/weight incl. scales")
        fallen = sum(1 for r in self.layers if r.fallback)
        if fallen:
            parts.append(f"{fallen} layers in another format (see table)")
        if errors:
            basis = "output" if any(r.output_error is not None for r in q) else "weight"
            parts.append(
                f"layer {basis} error mean {100 * sum(errors) / len(errors):.3f}% max {100 * max(errors):.3f}%"
            )
        parts.append(f"{self.seconds:.1f} s")
        text = "total: " + "; ".join(parts)
        if self.awq:
            text += "\n" + self.format_awq()
        if self.sparsity:
            text += "\n" + self.format_sparsity()
        if self.verification is not None:
            text += "\nverification: " + self.verification.get("summary", "")
        return text

    def format_awq(self) -> str:
        """One line on AWQ: groups scaled, the loss against RTN, where 1/s went, clipping."""
        scaled = [r for r in self.awq if r.ratio is not None]
        gains = sorted(r.loss / r.loss_rtn for r in self.awq if r.loss_rtn > 0)
        folds: dict[str, int] = {}
        for r in scaled:
            folds[r.fold] = folds.get(r.fold, 0) + 1
        clipped = [c for r in self.awq for c in r.clipped]
        where = ", ".join(f"{n} {k.lower()}" for k, n in sorted(folds.items()))
        line = f"awq: {len(scaled)} of {len(self.awq)} groups scaled"
        if where:
            line += f" (1/s into: {where})"
        if gains:
            line += f"; group loss vs RTN median {gains[len(gains) // 2]:.3f}, worst {gains[-1]:.3f}"
        if clipped:
            line += f"; clipped {100 * sum(clipped) / len(clipped):.1f}% of block bounds"
        return line

    def format_sparsity(self) -> str:
        """One line on 2:4 sparsity: weights pruned, method, formats, why others stayed dense."""
        s = self.sparsity or {}
        tensors = s.get("tensors", [])
        skipped = s.get("skipped", [])
        params = sum(math.prod(t.get("shape", [])) for t in tensors)
        formats: dict[str, int] = {}
        for t in tensors:
            formats[str(t.get("format"))] = formats.get(str(t.get("format")), 0) + 1
        reasons: dict[str, int] = {}
        for t in skipped:
            head = str(t.get("reason", "")).split(" (")[0].split(":")[0]
            reasons[head] = reasons.get(head, 0) + 1
        line = f"sparsity 2:4 ({s.get('method')}): {len(tensors)} weights ({params / 1e6:.1f}M params)"
        if formats:
            line += " stored as " + ", ".join(f"{n} {k}" for k, n in sorted(formats.items()))
        if skipped:
            line += f"; {len(skipped)} dense: " + ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
        return line


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def build_report(
    before_bytes: int,
    after: ir.Model,
    after_bytes: int,
    seconds: float,
    recipe_toml: str,
    input_path: str | None = None,
    output_path: str | None = None,
) -> Report:
    from onnx_compress.sparsity.annotate import read_summary

    return Report(
        awq=awq_records(after),
        sparsity=read_summary(after),
        layers=records(after),
        model_bytes_before=before_bytes,
        model_bytes_after=after_bytes,
        seconds=seconds,
        recipe_toml=recipe_toml,
        input_path=input_path,
        output_path=output_path,
    )
