"""Writing an encoded weight into the graph, in each output format.

* ``qdq``: ``DequantizeLinear(q, scale[, zero_point]) -> MatMul/Gemm``. int8 keeps the weight's
  orientation (per-axis DequantizeLinear for a 2-D per-channel weight, else the blocked form
  along K). int4 stores the canonical ``[K, N]`` weight with ``axis=0`` (a ``Gemm(transB=1)``
  becomes ``transB=0``, which ORT's CPU optimizer fuses into MatMulNBits); a weight on the left of
  a MatMul keeps ``[M, K]`` with ``axis=1``.
* fused ops (``com.microsoft.MatMulNBits``, ``onnx_compress.NF4MatMul`` / ``Int8MatMul``,
  ``com.microsoft.MatMulBnb4``): each MatMul/Gemm consuming the weight is replaced by one node.
  A Gemm's ``alpha`` is folded into the scales (one scaled copy per distinct alpha) and
  ``beta * C`` becomes the op's bias input when C is a constant vector (MatMulBnb4 has none: an
  Add), else ``Add(Y, beta * C)``.
"""

from __future__ import annotations

__all__ = ["emit"]

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnx_compress.ir_utils import NameScope, add_initializer, first_consumer, tensor_shape
from onnx_compress.quantize.encode import Encoded
from onnx_compress.quantize.sites import Site, Use, UseKind
from onnx_compress.quantize.w8a8 import ActivationRanges, emit_w8a8
from onnx_compress.recipe import AccuracyLevel, WeightFormat, WeightScheme

CUSTOM_DOMAIN = "onnx_compress"
MS_DOMAIN = "com.microsoft"


def emit(
    graph: ir.Graph,
    names: NameScope,
    site: Site,
    enc: Encoded,
    accuracy_level: AccuracyLevel,
    ranges: ActivationRanges | None = None,
) -> int:
    """Rewire ``site``'s consumers to the encoded weight; returns the bytes of the new initializers.

    The stored weight (``q`` of QDQ, ``B`` of the fused ops) inherits the float weight's
    ``onnx_compress.*`` tensor annotations (2:4 sparsity: symmetric quantization keeps zeros)."""
    target = enc.target
    if target.scheme is WeightScheme.W8A8:
        if ranges is None:
            raise ValueError("w8a8 needs activation ranges")  # the pass always passes them
        nbytes = 0
        if target.format is WeightFormat.QDQ:
            nbytes = _emit_int8_qdq(graph, names, site, enc)
        else:
            nbytes = enc.nbytes + site.n  # + the zero points
        emit_w8a8(graph, names, site, enc.arrays["q"], enc.arrays["scales"], target.format, ranges)
        return nbytes
    if target.format is WeightFormat.QDQ:
        if target.scheme is WeightScheme.INT4:
            return _emit_int4_qdq(graph, names, site, enc)
        return _emit_int8_qdq(graph, names, site, enc)
    return _emit_fused(graph, names, site, enc, _spec(site, enc, accuracy_level))


def _inherit(site: Site, stored: ir.Value) -> None:
    """Copy the float weight's onnx_compress annotations to the tensor that now stores it."""
    tensor = stored.const_value
    if tensor is None:
        return
    for key, value in site.tensor.metadata_props.items():
        if key.startswith("onnx_compress."):
            tensor.metadata_props[key] = value


# ---- QDQ ----------------------------------------------------------------------------------
def _dequantize_node(
    graph: ir.Graph,
    names: NameScope,
    site: Site,
    inputs: Sequence[ir.Value],
    attributes: Mapping[str, int],
    shape: ir.Shape,
) -> ir.Value:
    base = site.value.name or site.name
    dq = ir.node("DequantizeLinear", list(inputs), dict(attributes), name=names.fresh(f"{base}.dequantize"))
    out = dq.outputs[0]
    out.name = names.fresh(f"{base}.dequantized")
    out.type = site.value.type
    out.shape = shape
    graph.insert_before(first_consumer(graph, [u.node for u in site.uses]), dq)
    return out


def _emit_int8_qdq(graph: ir.Graph, names: NameScope, site: Site, enc: Encoded) -> int:
    base = site.value.name or site.name
    q_arr, scales = enc.arrays["q"], enc.arrays["scales"]
    block = enc.target.block_size
    if block == 0 and len(site.shape) == 2:
        scales = scales.reshape(-1)
        attributes: dict[str, int] = {"axis": site.channel_axis}
    else:
        attributes = {"axis": site.reduction_axis, "block_size": block or site.k}
    q = add_initializer(graph, names, f"{base}.int8", q_arr)
    _inherit(site, q)
    s = add_initializer(graph, names, f"{base}.scale", scales)
    out = _dequantize_node(graph, names, site, [q, s], attributes, site.value.shape or ir.Shape(site.shape))
    for use in site.uses:
        use.node.replace_input_with(use.input_index, out)
    return q_arr.nbytes + scales.nbytes


def _emit_int4_qdq(graph: ir.Graph, names: NameScope, site: Site, enc: Encoded) -> int:
    base = site.value.name or site.name
    scales = enc.arrays["scales"]
    zp_bytes = enc.arrays.get("zero_points")
    lhs = any(u.kind is UseKind.MATMUL_LHS for u in site.uses)
    shape = (site.n, site.k) if lhs else (site.k, site.n)  # stored orientation (see encode)
    dtype = ir.DataType.INT4 if zp_bytes is None else ir.DataType.UINT4
    q = add_initializer(
        graph, names, f"{base}.{dtype.name.lower()}", ir.PackedTensor(enc.arrays["q"], dtype, shape=shape)
    )
    _inherit(site, q)
    inputs = [q, add_initializer(graph, names, f"{base}.scale", scales)]
    if zp_bytes is not None:
        inputs.append(
            add_initializer(graph, names, f"{base}.zero_point", ir.PackedTensor(zp_bytes, dtype, shape=scales.shape))
        )
    attributes = {"axis": 1 if lhs else 0, "block_size": enc.target.block_size}
    out = _dequantize_node(graph, names, site, inputs, attributes, ir.Shape(shape))
    for use in site.uses:
        use.node.replace_input_with(use.input_index, out)
        if use.kind is UseKind.GEMM and use.node.attributes.get_int("transB"):
            use.node.attributes["transB"] = ir.AttrInt64("transB", 0)  # B is now [K, N]
    return sum(int(a.nbytes) for a in enc.arrays.values())


# ---- fused ops ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _OpSpec:
    op_type: str
    domain: str
    attributes: Mapping[str, int]
    scaled_roles: tuple[str, ...]  # arrays multiplied by Gemm's alpha
    bias_index: int | None  # input slot of the bias, None if the op has none
    inputs: Callable[[Mapping[str, ir.Value]], list[ir.Value | None]]  # inputs after A


def _spec(site: Site, enc: Encoded, accuracy_level: AccuracyLevel) -> _OpSpec:
    t = enc.target
    k, n = site.k, site.n
    if t.format is WeightFormat.MATMULNBITS:
        bits = 4 if t.scheme is WeightScheme.INT4 else 8
        block = enc.arrays["b"].shape[2] * 8 // bits
        attrs = {"K": k, "N": n, "bits": bits, "block_size": block, "accuracy_level": int(accuracy_level)}
        return _OpSpec(
            "MatMulNBits",
            MS_DOMAIN,
            attrs,
            ("scales",),
            5,
            lambda v: [v["b"], v["scales"], v.get("zero_points")],
        )
    if t.format is WeightFormat.BNB4:
        attrs = {"K": k, "N": n, "block_size": t.block_size, "quant_type": 1}
        return _OpSpec("MatMulBnb4", MS_DOMAIN, attrs, ("absmax",), None, lambda v: [v["b"], v["absmax"]])
    if t.scheme is WeightScheme.NF4:
        attrs = {"K": k, "N": n, "block_size": t.block_size}
        if t.double_quant:
            return _OpSpec(
                "NF4MatMul",
                CUSTOM_DOMAIN,
                attrs,
                ("absmax_scale", "absmax_offset"),
                3,
                lambda v: [v["b"], v["absmax"], None, v["absmax_scale"], v["absmax_offset"]],
            )
        return _OpSpec("NF4MatMul", CUSTOM_DOMAIN, attrs, ("absmax",), 3, lambda v: [v["b"], v["absmax"]])
    attrs = {"K": k, "N": n, "block_size": t.block_size}
    return _OpSpec("Int8MatMul", CUSTOM_DOMAIN, attrs, ("scales",), 3, lambda v: [v["b"], v["scales"]])


def _emit_fused(graph: ir.Graph, names: NameScope, site: Site, enc: Encoded, spec: _OpSpec) -> int:
    base = site.value.name or site.name
    shared = {role: add_initializer(graph, names, f"{base}.{role}", arr) for role, arr in enc.arrays.items()}
    _inherit(site, shared["b"])
    nbytes = enc.nbytes
    by_alpha: dict[float, dict[str, ir.Value]] = {1.0: shared}
    for use in site.uses:
        alpha = use.node.attributes.get_float("alpha", 1.0) if use.kind is UseKind.GEMM else 1.0
        if alpha not in by_alpha:
            values = dict(shared)
            for role in spec.scaled_roles:
                arr = enc.arrays[role]
                scaled = (arr.astype(np.float32) * np.float32(alpha)).astype(arr.dtype)
                values[role] = add_initializer(graph, names, f"{base}.{role}", np.ascontiguousarray(scaled))
                nbytes += scaled.nbytes
            by_alpha[alpha] = values
        _replace(graph, names, use, spec, by_alpha[alpha], site.n)
    return nbytes


def _replace(
    graph: ir.Graph, names: NameScope, use: Use, spec: _OpSpec, values: Mapping[str, ir.Value], n: int
) -> None:
    node = use.node
    a = node.inputs[0]
    weight_inputs = spec.inputs(values)
    name = names.fresh(f"{node.name or 'matmul'}.{spec.op_type.lower()}")
    extra: list[ir.Node] = []
    bias_value: ir.Value | None = None
    addend: ir.Value | None = None
    out_dtype = node.outputs[0].type.dtype if node.outputs[0].type is not None else None
    if use.kind is UseKind.GEMM and len(node.inputs) > 2 and node.inputs[2] is not None:
        c = node.inputs[2]
        beta = node.attributes.get_float("beta", 1.0)
        c_tensor = ir.convenience.get_const_tensor(c)
        c_shape = tensor_shape(c_tensor) if c_tensor is not None else ()
        if (
            c_tensor is not None
            and c_tensor.size in (1, n)
            and len(c_shape) <= 2
            and (c_tensor.size == 1 or c_shape[-1] == n)
        ):
            vec = np.broadcast_to(c_tensor.numpy().astype(np.float32).reshape(-1) * np.float32(beta), (n,))
            const = add_initializer(
                graph, names, f"{name}.bias", np.ascontiguousarray(vec.astype(c_tensor.dtype.numpy()))
            )
            if spec.bias_index is not None:
                bias_value = const
            else:
                addend = const
        else:
            addend = c
            if beta != 1.0:
                dtype = c.type.dtype.numpy() if c.type is not None else np.float32
                beta_v = add_initializer(graph, names, f"{name}.beta", np.asarray(beta, dtype=dtype))
                mul = ir.node("Mul", [c, beta_v], name=names.fresh(f"{name}.beta_c"))
                extra.append(mul)
                addend = mul.outputs[0]
    inputs: list[ir.Value | None] = [a, *weight_inputs]
    if bias_value is not None and spec.bias_index is not None:
        while len(inputs) <= spec.bias_index:
            inputs.append(None)
        inputs[spec.bias_index] = bias_value
    while inputs and inputs[-1] is None:
        inputs.pop()
    new = ir.node(spec.op_type, inputs, dict(spec.attributes), domain=spec.domain, name=name)
    result = new.outputs[0]
    old_out = node.outputs[0]
    if addend is not None:
        add = ir.node("Add", [result, addend], name=names.fresh(f"{name}.add_c"))
        extra.append(add)
        result.type = ir.TensorType(out_dtype) if out_dtype is not None else None
        result = add.outputs[0]
    result.type, result.shape = old_out.type, old_out.shape
    ir.convenience.replace_nodes_and_values(graph, node, [node], [new, *extra], [old_out], [result])
