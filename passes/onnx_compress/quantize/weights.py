"""Weight-only quantization of MatMul / Gemm weights (int8, int4, nf4), with mixed precision.

This is a pass over *weights*, not over nodes: each constant weight is read once (a slab of
rows at a time, so a model larger than RAM is fine), quantized once however many nodes share
it, and its consumers are rewired. That is why it is a hand-written ``ir.passes`` pass rather
than a per-node rewrite rule. Number formats are defined in ``numerics/``; ``encode`` turns a
weight into a format's arrays and ``emit`` writes them into the graph.

Per weight the pass chooses a :class:`~onnx_compress.quantize.encode.Target`:

1. Layers matching ``exclude`` (or too small, or not safely quantizable) stay float.
2. With a 4-bit scheme, layers matching ``int8`` (default ``lm_head``) get int8 in the int8 form
   of the chosen format: qdq -> per-channel int8 QDQ; matmulnbits -> 8-bit MatMulNBits and
   custom -> Int8MatMul, both with the 4-bit block size; bnb4 -> per-channel int8 QDQ.
3. A weight the chosen op cannot take (rank > 2, constant on the left of a MatMul, Gemm with
   transA=1, 1-D activations) uses the QDQ form of its scheme instead (int8 QDQ for nf4, which
   DequantizeLinear cannot express), with the reason logged and reported.
4. With ``max_layer_error``, a layer whose relative output error on the captured layer inputs
   (``LayerInputs``) exceeds the bound falls back to int8, then to float; the report says so.
"""

from __future__ import annotations

__all__ = ["QuantizeWeightsPass"]

import dataclasses
import logging
import re
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnx_compress.calibration.layer_inputs import LayerInputs
from onnx_compress.calibration.stats import ActivationStats
from onnx_compress.errors import UnsupportedModelError
from onnx_compress.ir_utils import NameScope, add_initializer, dtype_name, ensure_opset, remove_if_unused
from onnx_compress.numerics import activation
from onnx_compress.parallel import ordered_map
from onnx_compress.quantize.emit import CUSTOM_DOMAIN, MS_DOMAIN, emit
from onnx_compress.quantize.encode import Encoded, Target, encode, weight_kn
from onnx_compress.quantize.sites import Site, UseKind, find_sites
from onnx_compress.quantize.w8a8 import QLINEAR_MAX_CREST, ActivationRanges, activation_key, output_key
from onnx_compress.recipe import ProgressFactory, QuantizeWeights, WeightFormat, WeightScheme
from onnx_compress.report import LayerRecord, add_records

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)

_OP_NAMES = {
    WeightFormat.MATMULNBITS: "MatMulNBits",
    WeightFormat.BNB4: "MatMulBnb4",
    WeightFormat.QLINEAR: "QLinearMatMul",
}


def _op_name(target: Target) -> str:
    if target.format is WeightFormat.CUSTOM:
        return "NF4MatMul" if target.scheme is WeightScheme.NF4 else "Int8MatMul"
    return _OP_NAMES.get(target.format, "DequantizeLinear")


@dataclasses.dataclass(frozen=True)
class _Plan:
    site: Site
    chain: tuple[Target, ...]  # first choice, then fallbacks for max_layer_error
    note: str | None  # why the first choice is not the configured one (reported)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    encoded: Encoded | None  # None: the layer stays float
    output_error: float | None
    fallback: str | None


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """Quantize the constant weights of MatMul/Gemm nodes as configured by ``QuantizeWeights``."""

    def __init__(
        self,
        config: QuantizeWeights,
        progress: ProgressFactory | None = None,
        layer_inputs: LayerInputs | None = None,
        activation_stats: ActivationStats | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.progress = progress
        self.layer_inputs = layer_inputs
        self.ranges = (
            ActivationRanges(activation_stats, config.act_calib, config.percentile)
            if activation_stats is not None and config.scheme is WeightScheme.W8A8
            else None
        )
        self._exclude = [re.compile(p) for p in config.exclude_patterns if p]
        self._int8 = [re.compile(p) for p in config.int8_patterns if p]

    # ---- targets ----------------------------------------------------------------------
    @property
    def _primary(self) -> Target:
        c = self.config
        return Target(c.scheme, c.resolved_format, c.resolved_block_size, c.symmetric, c.double_quant)

    @property
    def _int8_target(self) -> Target:
        """The int8 form of the configured format (for --int8 layers and fallbacks)."""
        c = self.config
        fmt = c.resolved_format
        if c.scheme is WeightScheme.INT8:
            return self._primary
        if c.scheme is WeightScheme.W8A8:  # weight-only int8: the activations stay float
            return Target(WeightScheme.INT8, WeightFormat.QDQ, 0)
        if fmt in (WeightFormat.MATMULNBITS, WeightFormat.CUSTOM):
            return Target(WeightScheme.INT8, fmt, c.resolved_block_size)
        return Target(WeightScheme.INT8, WeightFormat.QDQ, 0)

    @staticmethod
    def _infeasible(site: Site, target: Target) -> str | None:
        """Why ``site`` cannot take ``target`` (None if it can)."""
        rank = len(site.shape)
        if target.format is WeightFormat.QLINEAR:
            for use in site.uses:
                node = use.node
                c = node.inputs[2] if use.kind is UseKind.GEMM and len(node.inputs) > 2 else None
                if (
                    c is not None
                    and ir.convenience.get_const_tensor(c) is None
                    and node.attributes.get_float("beta", 1.0) != 1.0
                ):
                    return f"Gemm '{node.name}' has a computed C with beta != 1"
        if target.format is WeightFormat.QDQ:
            if target.scheme is WeightScheme.INT4 and rank != 2:
                return f"int4 takes a 2-D weight, got rank {rank}"
            return None
        op = _op_name(target)
        if rank != 2:
            return f"{op} takes a 2-D weight, got rank {rank}"
        for use in site.uses:
            if use.kind is UseKind.MATMUL_LHS:
                return f"MatMul '{use.node.name}' has the weight on the left"
            if use.kind is UseKind.GEMM and use.node.attributes.get_int("transA"):
                return f"Gemm '{use.node.name}' has transA=1"
            a = use.node.inputs[0]
            if target.format is WeightFormat.CUSTOM and a is not None and a.shape is not None and len(a.shape) < 2:
                return f"{op} needs activations of rank >= 2, '{use.node.name}' has rank {len(a.shape)}"
        return None

    def _feasible(self, site: Site, target: Target) -> tuple[Target, str | None]:
        """``target``, or the QDQ form of its scheme (int8 QDQ for nf4) when the op cannot take
        the weight; with the reason."""
        why = self._infeasible(site, target)
        if why is None:
            return target, None
        if target.scheme is WeightScheme.INT4:
            fallback = Target(WeightScheme.INT4, WeightFormat.QDQ, target.block_size, target.symmetric)
            if self._infeasible(site, fallback) is None:
                return fallback, f"{why}: int4 QDQ instead"
        if target.scheme is WeightScheme.W8A8:
            return Target(WeightScheme.W8A8, WeightFormat.QDQ, 0), f"{why}: w8a8 QDQ instead"
        block = target.block_size if target.scheme is WeightScheme.INT8 else 0
        return Target(WeightScheme.INT8, WeightFormat.QDQ, block), f"{why}: int8 QDQ instead"

    # ---- selection --------------------------------------------------------------------
    def _skip_reason(self, site: Site) -> str | None:
        if site.skip and not (site.tied and self.config.scheme is WeightScheme.W8A8):
            return site.skip
        for pattern in self._exclude:
            for name in site.names():
                if pattern.search(name):
                    return f"matches --exclude {pattern.pattern!r}"
        if site.dtype not in SUPPORTED_DTYPES:
            raise UnsupportedModelError(
                f"weight '{site.value.name}' of layer '{site.name}' is {dtype_name(site.dtype)}; "
                "supported weight dtypes: float32, float16, bfloat16 (keep the layer float with "
                f"--exclude '{re.escape(site.name)}')"
            )
        small = [f"{axis}={dim}" for axis, dim in (("K", site.k), ("N", site.n)) if dim < self.config.min_dim]
        if small:
            return f"{', '.join(small)} < {self.config.min_dim}"
        return None

    def _wants_int8(self, site: Site) -> bool:
        return any(p.search(name) for p in self._int8 for name in site.names())

    def _choice(self, site: Site) -> tuple[Target | None, str | None]:
        """``(target, note)``: the first choice for ``site`` and why it differs from the configured
        one; ``(None, reason)`` when the layer stays float."""
        reason = self._skip_reason(site)
        if reason is not None:
            return None, reason
        note = None
        first = self._primary
        if first.scheme.four_bit and self._wants_int8(site):
            first, note = self._int8_target, "matches --int8: int8"
        if first.scheme.four_bit and site.k < first.block_size and len(site.shape) == 2:
            raise UnsupportedModelError(
                f"layer '{site.name}' has K={site.k}, smaller than the {first.scheme.value} block of "
                f"{first.block_size}; use --block-size {max(32, 1 << (site.k.bit_length() - 1))} or smaller, "
                f"keep it float with --exclude '{re.escape(site.name)}', "
                f"or int8 with --int8 '{re.escape(site.name)}'"
            )
        first, why = self._feasible(site, first)
        if why is not None:
            logger.info("'%s': %s", site.name, why)
            note = why
        if first.scheme is WeightScheme.W8A8 and self.ranges is not None:
            missing = self.ranges.missing(site, first.format)
            if missing is not None:
                first, note = self._int8_target, f"{missing}: weight-only int8"
                logger.info("'%s': %s", site.name, note)
            elif first.format is WeightFormat.QLINEAR:
                for use in site.uses:
                    out = output_key(use)
                    crest = self.ranges.crest(out) if out is not None else 0.0
                    if crest > QLINEAR_MAX_CREST:
                        first = Target(WeightScheme.W8A8, WeightFormat.QDQ, 0)
                        note = f"output max {crest:.0f}x its RMS (> {QLINEAR_MAX_CREST:.0f}): w8a8 QDQ (float output)"
                        logger.info("'%s': %s", site.name, note)
                        break
        return first, note

    def target_for(self, site: Site) -> Target | None:
        """The format ``site`` will be quantized to (before ``max_layer_error`` fallbacks), or
        None when it stays float: what a pass preparing weights for this one (AWQ) needs."""
        return self._choice(site)[0]

    def _plan(self, graph: ir.Graph) -> tuple[list[_Plan], list[LayerRecord]]:
        """What each weight becomes, and records of the weights that stay float."""
        plans: list[_Plan] = []
        skipped: list[LayerRecord] = []
        int8_target = self._int8_target
        for site in find_sites(graph):
            first, note = self._choice(site)
            if first is None:
                reason = note or "kept float"
                logger.info("keeping '%s' (%s) float: %s", site.name, site.value.name, reason)
                skipped.append(self._skip_record(site, reason))
                continue
            chain = [first]
            if self.config.max_layer_error is not None and first.scheme in (
                WeightScheme.INT4,
                WeightScheme.NF4,
                WeightScheme.W8A8,
            ):
                chain.append(self._feasible(site, int8_target)[0])
            plans.append(_Plan(site, tuple(chain), note))
        return plans, skipped

    def _skip_record(self, site: Site, reason: str) -> LayerRecord:
        nbytes = int(site.tensor.nbytes)
        return LayerRecord(
            name=site.name,
            weight=site.value.name or "",
            shape=site.shape,
            dtype=dtype_name(site.dtype),
            scheme="float",
            format="-",
            bytes_before=nbytes,
            bytes_after=nbytes,
            consumers=len(site.uses),
            reason=reason,
        )

    # ---- work (worker threads: no graph access) -----------------------------------------
    def _output_error(self, site: Site, enc: Encoded) -> float | None:
        if self.layer_inputs is None or len(site.shape) != 2:
            return None
        x = self.layer_inputs.for_uses(site.uses, site.k)
        if x is None or not len(x):
            return None
        w = weight_kn(site)
        ref = x @ w
        if enc.target.scheme is WeightScheme.W8A8 and self.ranges is not None:
            # what the int8 kernels compute: fake-quantized activations (and outputs, qlinear)
            use = site.uses[0]
            key = activation_key(use)
            assert key is not None  # _choice checked the ranges exist
            got = activation.fake_quantize(x, self.ranges.scale(key)) @ enc.dequantize_kn()
            out = output_key(use)
            if enc.target.format is WeightFormat.QLINEAR and out is not None:
                got = activation.fake_quantize(got, self.ranges.output_scale(out))
            err = got - ref
        else:
            w -= enc.dequantize_kn()
            err = x @ w
        denom = float(np.linalg.norm(ref))
        return float(np.linalg.norm(err)) / denom if denom > 0 else 0.0

    def _process(self, plan: _Plan) -> _Outcome:
        bound = self.config.max_layer_error
        fallback: str | None = None
        for target in plan.chain:
            enc = encode(plan.site, target)
            out_err = self._output_error(plan.site, enc)
            err = out_err if out_err is not None else enc.weight_error
            if bound is None or err <= bound:
                return _Outcome(enc, out_err, fallback)
            basis = "output" if out_err is not None else "weight"
            step = f"{target.label} {basis} error {100 * err:.2f}% > {100 * bound:.2f}%"
            fallback = step if fallback is None else f"{fallback}; {step}"
        return _Outcome(None, None, f"{fallback}: float")

    # ---- pass -------------------------------------------------------------------------
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        if self.config.scheme is WeightScheme.W8A8:
            modified = fold_weight_transposes(model.graph) > 0
        plans, out_records = self._plan(model.graph)
        opset = max((self._qdq_opset(t, p.site) for p in plans for t in p.chain), default=0)
        if opset and ensure_opset(model, opset, f"{self.config.label} DequantizeLinear weights"):
            modified = True
            plans, out_records = self._plan(model.graph)  # the converter may have rebuilt the graph
        targets = [t for p in plans for t in p.chain]
        if any(t.scheme is WeightScheme.INT4 and t.format is WeightFormat.QDQ for t in targets):
            if (model.ir_version or 0) < 10:
                model.ir_version = 10  # int4 / uint4 initializers
                modified = True
        graph = model.graph
        names = NameScope(graph)
        results: Iterable[tuple[_Plan, _Outcome]] = ordered_map(self._process, plans)
        if self.progress is not None and plans:
            results = self.progress(results, total=len(plans), desc="quantizing", unit="weight")
        used_domains: set[str] = set()
        for plan, outcome in results:
            site = plan.site
            if outcome.encoded is None:
                logger.info("keeping '%s' float: %s", site.name, outcome.fallback)
                reason = outcome.fallback or "fell back to float"
                out_records.append(dataclasses.replace(self._skip_record(site, reason), fallback=reason))
                continue
            enc = outcome.encoded
            after = emit(graph, names, site, enc, self.config.accuracy_level, self.ranges)
            if enc.target.format in (WeightFormat.MATMULNBITS, WeightFormat.BNB4):
                used_domains.add(MS_DOMAIN)
            elif enc.target.format is WeightFormat.CUSTOM:
                used_domains.add(CUSTOM_DOMAIN)
            release = getattr(site.tensor, "release", None)
            if release is not None:
                release()
            remove_if_unused(graph, site.value)
            fallback = "; ".join(x for x in (plan.note, outcome.fallback) if x) or None
            out_records.append(
                LayerRecord(
                    name=site.name,
                    weight=site.value.name or "",
                    shape=site.shape,
                    dtype=dtype_name(site.dtype),
                    scheme=enc.target.label,
                    format=enc.target.format.value,
                    bytes_before=int(site.tensor.nbytes),
                    bytes_after=after,
                    rel_error=enc.weight_error,
                    output_error=outcome.output_error,
                    consumers=len(site.uses),
                    block_size=enc.target.block_size,
                    fallback=fallback,
                )
            )
            modified = True
        for domain in sorted(used_domains):
            model.opset_imports.setdefault(domain, 1)
        add_records(model, out_records)
        if not plans:
            logger.warning("nothing to quantize: no MatMul/Gemm weight is eligible (%d kept float)", len(out_records))
        return ir.passes.PassResult(model, modified=modified)

    @staticmethod
    def _qdq_opset(target: Target, site: Site) -> int:
        if target.scheme is WeightScheme.W8A8:  # per-axis DQ: 13; float16 scales: 19; QLinearMatMul fp16: 21
            if site.dtype == ir.DataType.FLOAT:
                return 13
            return 21 if target.format is WeightFormat.QLINEAR else 19
        if target.format is not WeightFormat.QDQ:
            return 0
        if target.scheme is WeightScheme.INT4 or target.block_size or len(site.shape) != 2:
            return 21  # blocked DequantizeLinear, int4 types
        return 13 if site.dtype == ir.DataType.FLOAT else 19  # per-axis; float16/bf16 scales need 19


def _transposed_weights(graph: ir.Graph) -> list[tuple[ir.Node, ir.Node, ir.Value]]:
    """(consumer, Transpose, constant) for every MatMul/Gemm reading ``Transpose(constant)`` as
    its weight (input 1) with a computed input 0."""
    found = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        weight, a = node.inputs[1], node.inputs[0]
        producer = weight.producer() if weight is not None else None
        if producer is None or producer.op_type != "Transpose" or producer.domain not in ("", "ai.onnx"):
            continue
        source = producer.inputs[0]
        if source is None or ir.convenience.get_const_tensor(source) is None:
            continue
        if a is None or ir.convenience.get_const_tensor(a) is not None:
            continue
        found.append((node, producer, source))
    return found


def transposed_weight_activations(graph: ir.Graph, outputs: bool = False) -> list[str]:
    """The activations (and with ``outputs`` the outputs) of the layers
    :func:`fold_weight_transposes` will give a weight: their calibration statistics are
    collected on the input model."""
    names = set()
    for node, _, _ in _transposed_weights(graph):
        values = [node.inputs[0], node.outputs[0] if outputs else None]
        names |= {v.name for v in values if v is not None and v.name}
    return sorted(names)


def fold_weight_transposes(graph: ir.Graph) -> int:
    """Give each MatMul/Gemm whose weight is ``Transpose(constant)`` its own transposed constant
    (w8a8: the weight can then be quantized; the original stays for its other readers, e.g. the
    embedding Gather of a tied lm_head, as the dynamo exporter writes SmolLM2's). Returns how
    many weights were folded."""
    folded = 0
    names = NameScope(graph)
    for node, producer, source in _transposed_weights(graph):
        tensor = ir.convenience.get_const_tensor(source)
        assert tensor is not None  # _transposed_weights checked
        array = tensor.numpy()
        perm = producer.attributes.get_ints("perm")
        transposed = np.ascontiguousarray(np.transpose(array, perm if perm is not None else None))
        value = add_initializer(graph, names, f"{source.name or 'weight'}.transposed", transposed)
        node.replace_input_with(1, value)
        if not producer.outputs[0].uses() and not producer.outputs[0].is_graph_output():
            graph.remove(producer, safe=True)
        folded += 1
    if folded:
        logger.info("w8a8: %d weights read through Transpose got their own transposed copy", folded)
    return folded
