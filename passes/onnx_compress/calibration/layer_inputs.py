"""The inputs of a model's MatMul/Gemm layers on sample inputs (verification or calibration data).

:func:`capture_layer_inputs` runs the *input* model in ONNX Runtime (CPU) with the activation
input of every constant-weight MatMul/Gemm added as a graph output, and keeps a seeded sample of
at most ``max_rows`` rows per activation, each row a vector along the layer's reduction axis K.
With the rows ``X`` [S, K] of a layer and its weight as ``W`` [K, N], the layer's relative output
error is ``||X (W - W')|| / ||X W||`` (what ``--max-layer-error`` bounds).

Rows are keyed by the activation value's name, with ``#T`` appended where K is the second-last
axis (a MatMul with the constant on the left, ``W @ X``, or a Gemm with ``transA=1``). The result
is immutable and can be saved to / loaded from ``.npz``.

The model is given to ORT as a serialized proto whose external initializers still point to the
files they were loaded from (no copy of the weights is written); models without external data
are serialized whole. Only the activation outputs are requested.
"""

from __future__ import annotations

__all__ = ["LayerInputs", "capture_layer_inputs", "rows_key"]

import dataclasses
import logging
import os
import tempfile
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.errors import CalibrationDataError
from onnx_compress.quantize.sites import Use, UseKind, find_sites

logger = logging.getLogger(__name__)

_PROTO_LIMIT = 2**31 - 2**26  # leave room under protobuf's 2 GiB for the graph itself


def rows_key(use: Use) -> tuple[str, bool] | None:
    """(activation value name, whether K is its second-last axis) for one weight use."""
    node = use.node
    if use.kind is UseKind.MATMUL_RHS:
        value, transposed = node.inputs[0], False
    elif use.kind is UseKind.MATMUL_LHS:
        value, transposed = node.inputs[1], True
    else:  # Gemm: A, or A^T with transA=1
        value, transposed = node.inputs[0], bool(node.attributes.get_int("transA"))
    if value is None or value.name is None:
        return None
    return value.name, transposed


def _key(name: str, transposed: bool) -> str:
    return name + "#T" if transposed else name


@dataclasses.dataclass(frozen=True)
class LayerInputs:
    """Sampled layer input rows: key (see the module docstring) -> float32 [S, K], read-only."""

    rows: Mapping[str, np.ndarray]
    samples: int = 0

    def __post_init__(self) -> None:
        frozen = {}
        for key, arr in self.rows.items():
            a = np.array(arr, dtype=np.float32, copy=True)
            if a.ndim != 2:
                raise CalibrationDataError(f"layer input rows '{key}' must be 2-D [rows, K], got shape {a.shape}")
            a.setflags(write=False)
            frozen[key] = a
        object.__setattr__(self, "rows", types.MappingProxyType(frozen))

    def for_uses(self, uses: Sequence[Use], k: int) -> np.ndarray | None:
        """The rows feeding a weight through all its uses (concatenated), or None if any is missing."""
        parts = []
        for use in uses:
            key = rows_key(use)
            arr = self.rows.get(_key(*key)) if key is not None else None
            if arr is None or arr.shape[1] != k:
                return None
            parts.append(arr)
        return np.concatenate(parts) if parts else None

    def save(self, path: str | os.PathLike[str]) -> None:
        arrays: dict[str, Any] = {"__samples__": np.asarray(self.samples), **self.rows}
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LayerInputs:
        try:
            with np.load(path, allow_pickle=False) as data:
                rows = {k: data[k] for k in data.files if k != "__samples__"}
                samples = int(data["__samples__"]) if "__samples__" in data.files else 0
        except (OSError, ValueError, KeyError) as e:
            raise CalibrationDataError(f"cannot read layer inputs from '{path}': {e}") from e
        return cls(rows, samples)


def _wanted(model: ir.Model) -> dict[str, set[bool]]:
    """Activation names (and orientations) feeding the model's constant-weight MatMul/Gemm."""
    wanted: dict[str, set[bool]] = {}
    for site in find_sites(model.graph):
        for use in site.uses:
            key = rows_key(use)
            if key is not None:
                wanted.setdefault(key[0], set()).add(key[1])
    return wanted


def _session(model: ir.Model, outputs: Sequence[str], tmp: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    work = model.clone()
    known = {v.name for v in work.graph.outputs}
    values = {v.name: v for v in ir.convenience.create_value_mapping(work.graph).values() if v.name}
    for name in outputs:
        if name not in known and name in values and not values[name].is_graph_input():
            work.graph.outputs.append(values[name])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    external_dirs = {
        str(t.base_dir)
        for t in (v.const_value for v in work.graph.initializers.values())
        if isinstance(t, ir.ExternalTensor)
    }
    inline_bytes = sum(
        int(v.const_value.nbytes)
        for v in work.graph.initializers.values()
        if v.const_value is not None and not isinstance(v.const_value, ir.ExternalTensor)
    )
    if len(external_dirs) <= 1 and inline_bytes < _PROTO_LIMIT:
        proto = ir.serde.serialize_model(work)
        if external_dirs:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", external_dirs.pop()
            )
        source: bytes | str = proto.SerializeToString()
    else:  # weights from several folders or too big to inline: a staged copy
        path = tmp / "model.onnx"
        ir.save(work, path, external_data="model.onnx.data")
        source = str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def capture_layer_inputs(
    model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]], *, max_rows: int = 64, seed: int = 0
) -> LayerInputs:
    """Run ``model`` on ``feeds`` (ORT CPU) and sample the rows entering each MatMul/Gemm weight."""
    from onnx_compress.verify import run_session  # ORT-facing helpers live with verification

    wanted = _wanted(model)
    if not wanted or not feeds:
        return LayerInputs({}, len(feeds))
    graph_inputs = {v.name for v in model.graph.inputs}
    names = sorted(n for n in wanted if n not in graph_inputs)
    parts: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="onnx-compress-capture-") as tmp:
        try:
            session = _session(model, names, Path(tmp))
        except Exception as e:  # ORT raises its own exception types
            raise CalibrationDataError(
                f"ONNX Runtime (CPU) cannot run the input model to measure layer inputs: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
            ) from e
        outputs = [o.name for o in session.get_outputs()]
        for sample in feeds:
            got = run_session(session, sample, outputs)
            got.update({k: np.asarray(v) for k, v in sample.items() if k in wanted})
            for name, orientations in wanted.items():
                if name not in got:
                    continue
                arr = np.asarray(got[name])
                if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.kind != "V":
                    continue
                arr = arr.astype(np.float32)
                for transposed in orientations:
                    if arr.ndim < (2 if transposed else 1):
                        continue
                    rows = np.swapaxes(arr, -1, -2) if transposed else arr
                    parts.setdefault(_key(name, transposed), []).append(rows.reshape(-1, rows.shape[-1]))
        del session
    rng = np.random.default_rng(seed)
    sampled: dict[str, np.ndarray] = {}
    for key, chunks in parts.items():
        allrows = np.concatenate(chunks)
        if len(allrows) > max_rows:
            allrows = allrows[np.sort(rng.choice(len(allrows), max_rows, replace=False))]
        sampled[key] = allrows
    logger.info("captured inputs of %d layer activations on %d samples", len(sampled), len(feeds))
    return LayerInputs(sampled, len(feeds))
