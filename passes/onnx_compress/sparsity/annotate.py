"""How pruned weights are annotated, and how annotations follow a weight through later passes.

Per tensor (TensorProto.metadata_props, written only for IR >= 10, where ONNX has the field):

==========================================  ==============================================
``onnx_compress.sparsity.pattern``          ``2:4``: the (dequantized) weight is 2:4
``onnx_compress.sparsity.axis``             axis of the *stored* tensor the groups run along
``onnx_compress.sparsity.consumer``         the consumers, e.g. ``MatMul /layers.0/MatMul``
``onnx_compress.sparsity.method``           ``magnitude``, ``wanda`` or ``existing``
``onnx_compress.sparsity.format``           ``float``, ``int8``, ``int4``, ``uint4``, or
                                            ``packed:<op>`` (an op-specific layout)
``onnx_compress.sparsity.stored``           ``2:4`` when the stored values themselves have
                                            two zeros per group (what TensorRT compresses);
                                            ``no`` (zero points, packed nibbles) otherwise
``onnx_compress.sparsity.source``           the float weight the annotation started on
==========================================  ==============================================

Per model (ModelProto.metadata_props ``onnx_compress.sparsity``, any IR version): a JSON summary
with every pruned tensor, every skipped weight with its reason and deployment hints. For IR < 10
the summary is the only annotation (the checker reads it).

The quantize pass copies a weight's ``onnx_compress.*`` tensor metadata to the tensor that
replaces it (:func:`inherit`); :class:`RefreshSparsityPass`, run at the end of the pipeline,
recomputes format, axis and stored pattern from the final tensors and rewrites the summary.
"""

from __future__ import annotations

__all__ = [
    "DEPLOYMENT",
    "KEY",
    "PREFIX",
    "SUMMARY_KEY",
    "RefreshSparsityPass",
    "annotate",
    "inherit",
    "read_summary",
    "write_summary",
]

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.numerics import sparse24
from onnx_compress.sparsity.sites import WeightSite, find_weight_sites

logger = logging.getLogger(__name__)

PREFIX = "onnx_compress.sparsity."
SUMMARY_KEY = "onnx_compress.sparsity"
KEY = {name: PREFIX + name for name in ("pattern", "axis", "consumer", "method", "format", "stored", "source")}
TENSOR_METADATA_IR = 10  # TensorProto.metadata_props exists from IR version 10 (ONNX 1.16)

DEPLOYMENT: Mapping[str, str] = {
    "tensorrt": "build with the SPARSE_WEIGHTS builder flag (trtexec --sparsity=enable) and fp16 or int8 "
    "precision; TensorRT re-checks the pattern and lists the sparse layers in its verbose build log",
    "onnxruntime_tensorrt_ep": "provider option trt_sparsity_enable=1",
    "onnxruntime_cpu_cuda": "no sparse kernels: the zeros are stored densely and run at dense speed",
    "formats": "2:4 runs on sparse tensor cores with fp16, bf16, int8 and fp8; there is no 4-bit sparse "
    "kernel in TensorRT or cuSPARSELt",
}


def annotate(tensor: ir.TensorProtocol, fields: Mapping[str, str]) -> None:
    """Set ``onnx_compress.sparsity.<field>`` metadata on ``tensor``."""
    for name, value in fields.items():
        tensor.metadata_props[KEY[name]] = value


def inherit(source: ir.TensorProtocol, target: ir.TensorProtocol) -> None:
    """Copy ``source``'s onnx_compress annotations to ``target`` (the tensor replacing it)."""
    for key, value in source.metadata_props.items():
        if key.startswith("onnx_compress."):
            target.metadata_props[key] = value


def read_summary(model: ir.Model) -> dict[str, Any] | None:
    raw = model.metadata_props.get(SUMMARY_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return {"invalid": raw[:200]}
    return data if isinstance(data, dict) else {"invalid": raw[:200]}


def write_summary(model: ir.Model, summary: Mapping[str, Any]) -> None:
    model.metadata_props[SUMMARY_KEY] = json.dumps(summary, sort_keys=True)


def stored_state(site: WeightSite) -> dict[str, Any]:
    """Format, axis and pattern of a weight as stored now (quantized or float)."""
    tensor = site.tensor
    stored = tensor.numpy()
    dq = site.dequantize
    zero_point = None
    fmt = "float"
    if dq is not None:
        fmt = tensor.dtype.name.lower()
        zp_value = dq.inputs[2] if len(dq.inputs) > 2 else None
        zp_tensor = ir.convenience.get_const_tensor(zp_value) if zp_value is not None else None
        if zp_tensor is not None:
            zero_point = _broadcast_zero_point(zp_tensor.numpy(), stored.shape, dq)
    axis = site.axis
    k = stored.shape[axis]
    if k % sparse24.GROUP:
        return {"format": fmt, "axis": axis, "pattern": False, "stored": False, "bad": None, "groups": None}
    bad, groups = sparse24.violations(sparse24.zeros(stored, zero_point), axis)
    raw_bad = bad if zero_point is None else sparse24.violations(sparse24.zeros(stored), axis)[0]
    return {"format": fmt, "axis": axis, "pattern": bad == 0, "stored": raw_bad == 0, "bad": bad, "groups": groups}


def _broadcast_zero_point(zp: np.ndarray, shape: tuple[int, ...], dq: ir.Node) -> np.ndarray:
    """DequantizeLinear's zero point expanded to the data's shape (per tensor, axis or block)."""
    if zp.size == 1:
        return zp.reshape(())
    axis = dq.attributes.get_int("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    block = dq.attributes.get_int("block_size", 0)
    if block:
        return np.repeat(zp, block, axis=axis).take(np.arange(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = -1
    return zp.reshape(view)


class RefreshSparsityPass(ir.passes.InPlacePass):
    """After the last pass: recompute each annotated weight's format, axis and stored pattern
    from the final tensors (quantization may have replaced, transposed or packed them), update
    the summary, and drop per-tensor metadata where the IR version has no field for it."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        summary = read_summary(model)
        if summary is None or "tensors" not in summary:
            return ir.passes.PassResult(model, modified=False)
        by_source = {entry["source"]: entry for entry in summary["tensors"]}
        seen: set[str] = set()
        for site in find_weight_sites(model.graph):
            tensor = site.tensor
            source = tensor.metadata_props.get(KEY["source"])
            if source is None or source not in by_source or site.skip or not site.uses:
                continue
            state = stored_state(site)
            entry = by_source[source]
            entry.update(
                tensor=site.value.name,
                axis=state["axis"],
                format=state["format"],
                stored="2:4" if state["stored"] else "no",
                pattern="2:4" if state["pattern"] else "broken",
            )
            annotate(tensor, {"axis": str(state["axis"]), "format": state["format"], "stored": entry["stored"]})
            seen.add(source)
        for value in model.graph.initializers.values():  # packed by a fused op: not a weight site any more
            packed = value.const_value
            source = packed.metadata_props.get(KEY["source"]) if packed is not None else None
            if packed is None or source is None or source in seen or source not in by_source:
                continue
            ops = sorted({node.op_type for node, _ in value.uses()})
            fmt = "packed:" + ",".join(ops) if ops else "unused"
            by_source[source].update(tensor=value.name, format=fmt, stored="no")
            annotate(packed, {"format": fmt, "stored": "no"})
            seen.add(source)
        if model.ir_version < TENSOR_METADATA_IR:
            for value in model.graph.initializers.values():
                if value.const_value is not None:
                    for key in [k for k in value.const_value.metadata_props if k.startswith(PREFIX)]:
                        del value.const_value.metadata_props[key]
        write_summary(model, summary)
        return ir.passes.PassResult(model, modified=True)
