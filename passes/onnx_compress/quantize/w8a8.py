"""W8A8: static per-tensor int8 activations in front of per-channel int8 weights.

Two graph forms (numerics in :mod:`onnx_compress.numerics.activation`):

* ``qdq`` (default; TensorRT's explicit quantization, which ORT CPU fuses into
  ``MatMulIntegerToFloat``): per consumer a ``QuantizeLinear -> DequantizeLinear`` pair (int8,
  zero point 0, per tensor; the scale shared by the consumers of one activation) feeding the
  MatMul/Gemm, and the weight as ``DequantizeLinear(int8, scale[N], axis = output channel)``.
* ``qlinear`` (ORT CPU): ``QuantizeLinear(x)`` (uint8, zero point 128: the symmetric grid shifted,
  ORT's fast u8 x s8 path) -> ``QLinearMatMul`` with the int8 weight as [K, N] and its per-column
  scales -> ``DequantizeLinear`` of the uint8 output, whose range is the full range of the
  layer's output on the calibration data (never clipped); a Gemm's bias is added after.

Activation ranges are read per value from :class:`~onnx_compress.calibration.stats.ActivationStats`
with the configured rule (minmax, percentile, entropy) once and shared by every consumer.
"""

from __future__ import annotations

__all__ = ["QLINEAR_MAX_CREST", "ActivationRanges", "activation_key", "emit_w8a8", "output_key"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnx_compress.calibration.stats import ActivationStats
from onnx_compress.errors import CalibrationDataError
from onnx_compress.ir_utils import NameScope, add_initializer
from onnx_compress.numerics import activation
from onnx_compress.quantize.sites import Site, Use, UseKind
from onnx_compress.recipe import ActCalib, WeightFormat

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)

QLINEAR_MAX_CREST = 32.0
"""A layer whose output's max|y| exceeds 32 x its RMS keeps a float output (the QDQ form) instead
of QLinearMatMul's int8 output: the bulk of the output would get fewer than 4 of the 127 levels.
LLMs' "massive activations" (SmolLM2's early down_proj outputs: max|y| ~ 1000 x RMS) are such
outputs; measured on SmolLM2-L4: that layer's output error 31% as QLinearMatMul, 3% as QDQ."""


def _activation_index(use: Use) -> int:
    return 1 if use.kind is UseKind.MATMUL_LHS else 0


def activation_key(use: Use) -> str | None:
    """Statistics key of the activation a weight use reads (whole-tensor ranges: the
    orientation does not matter, the plain value name is used)."""
    value = use.node.inputs[_activation_index(use)]
    return value.name if value is not None and value.name else None


def output_key(use: Use) -> str | None:
    value = use.node.outputs[0]
    return value.name or None


@dataclasses.dataclass
class ActivationRanges:
    """amax per activation (computed once), and the quantized activations already emitted."""

    stats: ActivationStats
    rule: ActCalib
    percentile: float
    _amax: dict[str, float] = dataclasses.field(default_factory=dict)
    _params: dict[tuple[str, WeightFormat], tuple[ir.Value, ir.Value]] = dataclasses.field(default_factory=dict)
    _quantized: dict[str, ir.Value] = dataclasses.field(default_factory=dict)  # qlinear: shared inputs
    _pairs: dict[str, int] = dataclasses.field(default_factory=dict)  # qdq: pairs emitted per activation

    def missing(self, site: Site, fmt: WeightFormat) -> str | None:
        """Why ``site``'s activations (and outputs, for qlinear) have no range, if so."""
        for use in site.uses:
            value = use.node.inputs[_activation_index(use)]
            # untyped intermediate values (no value_info) have the weight's float type
            if value is None or (value.dtype or site.dtype) not in _FLOATS:
                return f"the input of '{use.node.name}' is not a float tensor"
            keys = [("input", activation_key(use))]
            if fmt is WeightFormat.QLINEAR:
                keys.append(("output", output_key(use)))
            for role, key in keys:
                if key is None or key not in self.stats:
                    return f"no calibration statistics for '{key}' (the {role} of '{use.node.name}')"
        return None

    def amax(self, key: str) -> float:
        if key not in self._amax:
            if key not in self.stats:
                raise CalibrationDataError(f"the calibration statistics have no entry for '{key}'")
            st = self.stats[key]
            if self.rule is ActCalib.MINMAX:
                value = st.amax
            else:
                if st.histogram is None:
                    raise CalibrationDataError(
                        f"the calibration statistics of '{key}' hold no histogram, needed for the "
                        f"{self.rule.value} activation range: collect them again (a new --calib-stats file)"
                    )
                if self.rule is ActCalib.PERCENTILE:
                    value = activation.amax_percentile(st.histogram, st.histogram_max, self.percentile)
                else:
                    value = activation.amax_entropy(st.histogram, st.histogram_max)
                value = min(value, st.amax) if st.amax > 0 else value
            self._amax[key] = float(value)
        return self._amax[key]

    def scale(self, key: str) -> float:
        return float(activation.scale_from_amax(self.amax(key)))

    def crest(self, key: str) -> float:
        """max|y| / rms(y) of a value over the calibration data (how many int8 levels its bulk gets)."""
        st = self.stats[key]
        elements = st.count * max(len(st.sq_sum), 1)
        rms = float(np.sqrt(np.sum(st.sq_sum) / elements)) if elements else 0.0
        return st.amax / rms if rms > 0 else 0.0

    def output_scale(self, key: str) -> float:
        """A QLinearMatMul output's scale: always the full range seen (min-max). Clipping an
        output saturates its outlier channels (k_proj's, down_proj's), which attention and the
        residual stream depend on; measured on SmolLM2-L4: logits error 14.8% with the rule's
        (percentile) range, see docs/accuracy.md#w8a8."""
        if key not in self.stats:
            raise CalibrationDataError(f"the calibration statistics have no entry for '{key}'")
        return float(activation.scale_from_amax(self.stats[key].amax))


def _params(
    graph: ir.Graph, names: NameScope, ranges: ActivationRanges, value: ir.Value, fmt: WeightFormat, dtype: ir.DataType
) -> tuple[ir.Value, ir.Value]:
    """The (scale, zero point) constants of ``value`` in ``fmt``, created once."""
    assert value.name is not None
    key = (value.name, fmt)
    if key not in ranges._params:
        scale = add_initializer(
            graph, names, f"{value.name}.act_scale", np.asarray(ranges.scale(value.name), dtype.numpy())
        )
        zp_array = np.asarray(128, np.uint8) if fmt is WeightFormat.QLINEAR else np.asarray(0, np.int8)
        ranges._params[key] = (scale, add_initializer(graph, names, f"{value.name}.act_zero_point", zp_array))
    return ranges._params[key]


def _quantize(
    graph: ir.Graph, names: NameScope, value: ir.Value, scale: ir.Value, zp: ir.Value, fmt: WeightFormat
) -> ir.Node:
    q = ir.node("QuantizeLinear", [value, scale, zp], name=names.fresh(f"{value.name}.quantize"))
    out = q.outputs[0]
    out.name = names.fresh(f"{value.name}.quantized")
    out.type = ir.TensorType(ir.DataType.UINT8 if fmt is WeightFormat.QLINEAR else ir.DataType.INT8)
    out.shape = value.shape
    return q


def _shared_quantized(
    graph: ir.Graph, names: NameScope, ranges: ActivationRanges, value: ir.Value, dtype: ir.DataType
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """QLinearMatMul's input: one QuantizeLinear per activation, right after its producer, shared
    by every QLinearMatMul reading it."""
    assert value.name is not None
    scale, zp = _params(graph, names, ranges, value, WeightFormat.QLINEAR, dtype)
    if value.name not in ranges._quantized:
        q = _quantize(graph, names, value, scale, zp, WeightFormat.QLINEAR)
        producer = value.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, q)
        else:  # a graph input: before every node
            first = next(iter(graph), None)
            if first is None:
                graph.append(q)
            else:
                graph.insert_before(first, q)
        ranges._quantized[value.name] = q.outputs[0]
    return ranges._quantized[value.name], scale, zp


def _distinct_scale(
    graph: ir.Graph, names: NameScope, ranges: ActivationRanges, value: ir.Value, scale: ir.Value, dtype: ir.DataType
) -> ir.Value:
    """The scale for the next QuantizeLinear of ``value``: the shared one for the first, then the
    same number moved up by one ulp per earlier pair (a relative change of 1.2e-7 per step for
    float32). ORT merges identical QuantizeLinear nodes (constant sharing + common subexpression
    elimination), and on x86 it fuses an int8 QuantizeLinear -> DequantizeLinear -> MatMul into
    its integer kernel only when the QuantizeLinear feeds that one DequantizeLinear: with q/k/v
    sharing one QuantizeLinear, ORT left those MatMuls in float (measured: SmolLM2 prefill 0.92x
    fp32). TensorRT quantizes each pair as given."""
    assert value.name is not None
    count = ranges._pairs.get(value.name, 0)
    ranges._pairs[value.name] = count + 1
    if count == 0:
        return scale
    base = scale.const_value
    assert base is not None
    nudged = base.numpy().astype(dtype.numpy())
    for _ in range(count):
        nudged = np.nextafter(nudged, np.asarray(np.inf, nudged.dtype))
    return add_initializer(graph, names, f"{value.name}.act_scale", np.asarray(nudged))


def _emit_qdq_activations(graph: ir.Graph, names: NameScope, site: Site, ranges: ActivationRanges) -> None:
    """A QuantizeLinear -> DequantizeLinear pair in front of each consumer (see
    :func:`_distinct_scale` for why the pairs must stay apart)."""
    for use in site.uses:
        index = _activation_index(use)
        value = use.node.inputs[index]
        assert value is not None
        dtype = value.dtype or site.dtype
        scale, zp = _params(graph, names, ranges, value, WeightFormat.QDQ, dtype)
        scale = _distinct_scale(graph, names, ranges, value, scale, dtype)
        q = _quantize(graph, names, value, scale, zp, WeightFormat.QDQ)
        dq = ir.node(
            "DequantizeLinear",
            [q.outputs[0], scale, zp],
            name=names.fresh(f"{use.node.name or 'matmul'}.act_dequantize"),
        )
        dq.outputs[0].name = names.fresh(f"{value.name}.dequantized")
        dq.outputs[0].type = value.type or ir.TensorType(site.dtype)
        dq.outputs[0].shape = value.shape
        graph.insert_before(use.node, q)
        graph.insert_before(use.node, dq)
        use.node.replace_input_with(index, dq.outputs[0])


def _emit_qlinear(
    graph: ir.Graph, names: NameScope, site: Site, q_kn: np.ndarray, scales_n: np.ndarray, ranges: ActivationRanges
) -> None:
    base = site.value.name or site.name
    w = add_initializer(graph, names, f"{base}.int8", np.ascontiguousarray(q_kn))
    wzp = add_initializer(graph, names, f"{base}.zero_point", np.zeros(site.n, np.int8))
    for use in site.uses:
        node = use.node
        a = node.inputs[0]
        assert a is not None
        a_dtype = a.dtype or site.dtype
        dtype = a_dtype.numpy()
        alpha = node.attributes.get_float("alpha", 1.0) if use.kind is UseKind.GEMM else 1.0
        ws = add_initializer(
            graph, names, f"{base}.scale", (scales_n.astype(np.float32) * np.float32(alpha)).astype(dtype)
        )
        xq, xs, xzp = _shared_quantized(graph, names, ranges, a, a_dtype)
        old_out = node.outputs[0]
        out_key = old_out.name
        assert out_key is not None
        ys = add_initializer(graph, names, f"{out_key}.act_scale", np.asarray(ranges.output_scale(out_key), dtype))
        yzp = add_initializer(graph, names, f"{out_key}.act_zero_point", np.asarray(128, np.uint8))
        name = names.fresh(f"{node.name or 'matmul'}.qlinear")
        qmm = ir.node("QLinearMatMul", [xq, xs, xzp, w, ws, wzp, ys, yzp], name=name)
        qmm.outputs[0].name = names.fresh(f"{out_key}.quantized")
        qmm.outputs[0].type = ir.TensorType(ir.DataType.UINT8)
        dq = ir.node("DequantizeLinear", [qmm.outputs[0], ys, yzp], name=names.fresh(f"{name}.dequantize"))
        new_nodes = [qmm, dq]
        result = dq.outputs[0]
        c = node.inputs[2] if use.kind is UseKind.GEMM and len(node.inputs) > 2 else None
        if c is not None:
            beta = node.attributes.get_float("beta", 1.0)
            c_tensor = ir.convenience.get_const_tensor(c)
            if c_tensor is not None:
                vec = (c_tensor.numpy().astype(np.float32) * np.float32(beta)).astype(dtype)
                addend = add_initializer(graph, names, f"{name}.bias", vec)
            else:  # _infeasible keeps non-constant C with beta != 1 in QDQ form
                addend = c
            add = ir.node("Add", [result, addend], name=names.fresh(f"{name}.bias_add"))
            result.type = old_out.type
            new_nodes.append(add)
            result = add.outputs[0]
        result.type, result.shape = old_out.type, old_out.shape
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [old_out], [result])


def emit_w8a8(
    graph: ir.Graph,
    names: NameScope,
    site: Site,
    q: np.ndarray,
    scales: np.ndarray,
    fmt: WeightFormat,
    ranges: ActivationRanges,
) -> None:
    """Activation quantization for ``site``'s consumers, and the QLinearMatMul form (the QDQ
    form's weight is emitted by the int8 QDQ emitter before this)."""
    if fmt is WeightFormat.QLINEAR:
        q_kn = q if site.reduction_axis == 0 else np.ascontiguousarray(q.T)
        _emit_qlinear(graph, names, site, q_kn, np.asarray(scales).reshape(-1), ranges)
    else:
        _emit_qdq_activations(graph, names, site, ranges)
