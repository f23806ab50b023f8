"""Weight-only quantization of MatMul / Gemm weights.

This is a pass over *weights*, not over nodes: each constant weight is read once (a slab of
rows at a time, so a model larger than RAM is fine), quantized once however many nodes share
it, and its consumers are rewired. That is why it is a hand-written ``ir.passes`` pass rather
than a per-node rewrite rule. Formats are defined in ``numerics/``; this module only moves
arrays between the graph and those functions.

Output forms (``QuantizeWeights.format``):

* ``qdq``: ``DequantizeLinear(q, scale) -> MatMul/Gemm``. A 2-D per-channel weight uses the
  per-axis form (opset 13; 19 for float16/bfloat16 scales); blockwise weights and per-channel
  weights of rank > 2 use the blocked form along K (opset 21). Older models are upgraded with
  the ONNX version converter.
* ``matmulnbits``: ``com.microsoft.MatMulNBits`` (bits=8, symmetric: stored ``q + 128``, the
  kernel's default zero point). Gemm's alpha is folded into the scales and beta*C becomes the
  bias. Weights the op cannot take (rank > 2, constant on the left, Gemm transA=1) fall back to
  the QDQ form, with the reason logged.
"""

from __future__ import annotations

__all__ = ["QuantizeWeightsPass"]

import logging
import math
import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from onnx_compress.errors import UnsupportedModelError
from onnx_compress.ir_utils import (
    NameScope,
    dtype_name,
    ensure_opset,
    first_consumer,
    remove_if_unused,
    tensor_shape,
)
from onnx_compress.numerics import int8
from onnx_compress.parallel import ordered_map
from onnx_compress.quantize.sites import Site, UseKind, find_sites
from onnx_compress.recipe import ProgressFactory, QuantizeWeights, WeightFormat
from onnx_compress.report import LayerRecord, add_records
from onnx_compress.tensor_io import iter_row_slabs, row_slab_size

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


class Quantized(NamedTuple):
    q: np.ndarray  # int8 in the weight's shape (QDQ), or MatMulNBits' packed uint8 B
    scales: np.ndarray  # scale dtype, shape of numerics.int8 (or MatMulNBits' [N, k_blocks])
    rel_error: float  # ||W - W'||_F / ||W||_F


def quantize_int8_tensor(tensor: ir.TensorProtocol, reduction_axis: int, block_size: int) -> Quantized:
    """Quantize a weight with :mod:`numerics.int8`, reading 2-D weights in slabs of rows."""
    shape = tensor_shape(tensor)
    scale_dtype = tensor.dtype.numpy()
    if len(shape) != 2:
        w = tensor.numpy()
        scales = int8.scales_from_absmax(int8.absmax(w, reduction_axis, block_size), scale_dtype)
        q, err, total = int8.quantize_with_error(w, scales, reduction_axis, block_size)
        return Quantized(q, scales, math.sqrt(err / total) if total > 0 else 0.0)

    q = np.empty(shape, np.int8)
    err = total = 0.0
    if reduction_axis == 1 or block_size:
        # Every slab holds whole groups: rows are channels, or rows are K in whole blocks.
        rows = row_slab_size(shape, multiple=block_size if reduction_axis == 0 and block_size else 1)
        parts = []
        for start, slab in iter_row_slabs(tensor, rows):
            s = int8.scales_from_absmax(int8.absmax(slab, reduction_axis, block_size), scale_dtype)
            q[start : start + len(slab)], e, t = int8.quantize_with_error(slab, s, reduction_axis, block_size)
            parts.append(s)
            err, total = err + e, total + t
        scales = np.concatenate(parts, axis=0)
    else:
        # Per channel over K = axis 0: one pass for the scales, one to quantize.
        rows = row_slab_size(shape)
        amax = np.zeros((1, shape[1]), np.float32)
        for _, slab in iter_row_slabs(tensor, rows):
            np.maximum(amax, int8.absmax(slab, 0, 0), out=amax)
        scales = int8.scales_from_absmax(amax, scale_dtype)
        for start, slab in iter_row_slabs(tensor, rows):
            q[start : start + len(slab)], e, t = int8.quantize_with_error(slab, scales, 0, 0)
            err, total = err + e, total + t
    return Quantized(q, scales, math.sqrt(err / total) if total > 0 else 0.0)


def _next_pow2(x: int) -> int:
    return 1 << max(4, (x - 1).bit_length())


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """Quantize the constant weights of MatMul/Gemm nodes as configured by ``QuantizeWeights``."""

    def __init__(self, config: QuantizeWeights, progress: ProgressFactory | None = None) -> None:
        super().__init__()
        self.config = config
        self.progress = progress
        self._exclude = [re.compile(p) for p in config.exclude if p]

    # ---- selection --------------------------------------------------------------------
    def _skip_reason(self, site: Site) -> str | None:
        if site.skip:
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

    def _nbits_fallback(self, site: Site) -> str | None:
        """Why this weight cannot become MatMulNBits (it then uses the QDQ form)."""
        if len(site.shape) != 2:
            return f"MatMulNBits takes a 2-D weight, got rank {len(site.shape)}"
        for use in site.uses:
            if use.kind is UseKind.MATMUL_LHS:
                return f"MatMul '{use.node.name}' has the weight on the left"
            if use.kind is UseKind.GEMM and use.node.attributes.get_int("transA"):
                return f"Gemm '{use.node.name}' has transA=1"
        return None

    def _qdq_opset(self, site: Site) -> int:
        if self.config.block_size or len(site.shape) != 2:
            return 21  # blocked DequantizeLinear
        return 13 if site.dtype == ir.DataType.FLOAT else 19  # per-axis; float16/bf16 scales need 19

    # ---- pass -------------------------------------------------------------------------
    def _plan(self, graph: ir.Graph) -> tuple[list[tuple[Site, bool]], list[LayerRecord]]:
        """Sites to quantize (with whether each becomes MatMulNBits) and records of the rest."""
        chosen: list[tuple[Site, bool]] = []
        skipped: list[LayerRecord] = []
        for site in find_sites(graph):
            reason = self._skip_reason(site)
            if reason is not None:
                logger.info("keeping '%s' (%s) float: %s", site.name, site.value.name, reason)
                skipped.append(self._skip_record(site, reason))
                continue
            as_nbits = self.config.format is WeightFormat.MATMULNBITS
            if as_nbits and (why := self._nbits_fallback(site)):
                logger.info("'%s' uses the QDQ form instead of MatMulNBits: %s", site.name, why)
                as_nbits = False
            chosen.append((site, as_nbits))
        return chosen, skipped

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        chosen, out_records = self._plan(model.graph)
        modified = False
        qdq_opset = max((self._qdq_opset(s) for s, nbits in chosen if not nbits), default=0)
        if qdq_opset and ensure_opset(model, qdq_opset, f"{self.config.label} DequantizeLinear weights"):
            modified = True
            chosen, out_records = self._plan(model.graph)  # the converter may have rebuilt the graph
        if any(nbits for _, nbits in chosen) and "com.microsoft" not in model.opset_imports:
            model.opset_imports["com.microsoft"] = 1

        graph = model.graph
        names = NameScope(graph)
        results: Iterable[tuple[tuple[Site, bool], Quantized]] = ordered_map(self._quantize, chosen)
        if self.progress is not None and chosen:
            results = self.progress(results, total=len(chosen), desc="quantizing", unit="weight")
        for (site, as_nbits), quantized in results:
            if as_nbits:
                after = self._emit_matmulnbits(graph, names, site, quantized)
            else:
                after = self._emit_qdq(graph, names, site, quantized)
            release = getattr(site.tensor, "release", None)
            if release is not None:
                release()
            remove_if_unused(graph, site.value)
            out_records.append(
                LayerRecord(
                    name=site.name,
                    weight=site.value.name or "",
                    shape=site.shape,
                    dtype=dtype_name(site.dtype),
                    scheme=self.config.label,
                    format="matmulnbits" if as_nbits else "qdq",
                    bytes_before=_nbytes(site),
                    bytes_after=after,
                    rel_error=quantized.rel_error,
                    consumers=len(site.uses),
                )
            )
            modified = True
        add_records(model, out_records)
        if not chosen:
            logger.warning("nothing to quantize: no MatMul/Gemm weight is eligible (%d kept float)", len(out_records))
        return ir.passes.PassResult(model, modified=modified)

    def _skip_record(self, site: Site, reason: str) -> LayerRecord:
        nbytes = _nbytes(site)
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

    # ---- emission ---------------------------------------------------------------------
    @staticmethod
    def _initializer(graph: ir.Graph, names: NameScope, base: str, array: np.ndarray) -> ir.Value:
        name = names.fresh(base)
        tensor = ir.Tensor(array, name=name)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        graph.register_initializer(value)
        return value

    def _emit_qdq(self, graph: ir.Graph, names: NameScope, site: Site, qt: Quantized) -> int:
        base = site.value.name or site.name
        q = self._initializer(graph, names, f"{base}.int8", qt.q)
        rank = len(site.shape)
        if self.config.block_size == 0 and rank == 2:
            scales = qt.scales.reshape(-1)
            attributes: dict[str, int] = {"axis": site.channel_axis}
        else:
            scales = qt.scales
            attributes = {"axis": site.reduction_axis, "block_size": self.config.block_size or site.k}
        s = self._initializer(graph, names, f"{base}.scale", scales)
        dq = ir.node("DequantizeLinear", [q, s], attributes, name=names.fresh(f"{base}.dequantize"))
        out = dq.outputs[0]
        out.name = names.fresh(f"{base}.dequantized")
        out.type = site.value.type
        out.shape = site.value.shape
        graph.insert_before(first_consumer(graph, [u.node for u in site.uses]), dq)
        for use in site.uses:
            use.node.replace_input_with(use.input_index, out)
        return qt.q.nbytes + scales.nbytes

    def _quantize(self, item: tuple[Site, bool]) -> Quantized:
        """Worker-thread part: read, quantize and lay out one weight (no graph access)."""
        site, as_nbits = item
        qt = quantize_int8_tensor(site.tensor, site.reduction_axis, self.config.block_size)
        if not as_nbits:
            return qt
        # MatMulNBits wants B as [N, k_blocks, block] (blocks along K) and scales [N, k_blocks].
        # Per channel = one block spanning all of K (the op needs a power of two).
        block = self.config.block_size or _next_pow2(site.k)
        q_nk = qt.q if site.reduction_axis == 1 else int8.transpose_2d(qt.q)
        scales_nk = qt.scales if site.reduction_axis == 1 else np.ascontiguousarray(qt.scales.T)
        k_blocks = -(-site.k // block)
        if scales_nk.shape[1] != k_blocks:
            scales_nk = np.ascontiguousarray(np.broadcast_to(scales_nk, (site.n, k_blocks)))
        return Quantized(int8.pack_matmulnbits(q_nk, block), scales_nk, qt.rel_error)

    def _emit_matmulnbits(self, graph: ir.Graph, names: NameScope, site: Site, qt: Quantized) -> int:
        """``qt`` holds the packed B [N, k_blocks, block] and scales [N, k_blocks] (see _quantize)."""
        k, n = site.k, site.n
        packed, scales_nk = qt.q, qt.scales
        block = packed.shape[2]
        base = site.value.name or site.name
        b = self._initializer(graph, names, f"{base}.q8", packed)
        nbytes = packed.nbytes
        scales_by_alpha: dict[float, ir.Value] = {}
        for use in site.uses:
            node = use.node
            alpha = node.attributes.get_float("alpha", 1.0) if use.kind is UseKind.GEMM else 1.0
            if alpha not in scales_by_alpha:
                scaled = (scales_nk.astype(np.float32) * np.float32(alpha)).astype(scales_nk.dtype)
                scales_by_alpha[alpha] = self._initializer(graph, names, f"{base}.scales", np.ascontiguousarray(scaled))
                nbytes += scaled.nbytes
            self._replace_with_nbits(
                graph, names, use.node, use.kind, b, scales_by_alpha[alpha], k, n, block, scales_nk.dtype
            )
        return nbytes

    def _replace_with_nbits(
        self,
        graph: ir.Graph,
        names: NameScope,
        node: ir.Node,
        kind: UseKind,
        b: ir.Value,
        scales: ir.Value,
        k: int,
        n: int,
        block: int,
        float_dtype: np.dtype,
    ) -> None:
        a = node.inputs[0]
        bias: ir.Value | None = None
        extra: list[ir.Node] = []
        attrs = {"K": k, "N": n, "bits": 8, "block_size": block, "accuracy_level": int(self.config.accuracy_level)}
        new = ir.node(
            "MatMulNBits",
            [a, b, scales],
            attrs,
            domain="com.microsoft",
            name=names.fresh(f"{node.name or 'matmul'}.nbits"),
        )
        result = new.outputs[0]
        if kind is UseKind.GEMM and len(node.inputs) > 2 and node.inputs[2] is not None:
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
                c_arr = c_tensor.numpy().astype(np.float32).reshape(-1)
                vec = np.broadcast_to(c_arr * np.float32(beta), (n,)).astype(c_tensor.dtype.numpy())
                bias = self._initializer(graph, names, f"{new.name}.bias", np.ascontiguousarray(vec))
                new = ir.node(
                    "MatMulNBits", [a, b, scales, None, None, bias], attrs, domain="com.microsoft", name=new.name
                )
                result = new.outputs[0]
            else:
                addend = c
                if beta != 1.0:
                    beta_v = self._initializer(graph, names, f"{new.name}.beta", np.asarray(beta, dtype=float_dtype))
                    mul = ir.node("Mul", [c, beta_v], name=names.fresh(f"{new.name}.beta_c"))
                    extra.append(mul)
                    addend = mul.outputs[0]
                add = ir.node("Add", [result, addend], name=names.fresh(f"{new.name}.add_c"))
                extra.append(add)
                result = add.outputs[0]
        old_out = node.outputs[0]
        result.type, result.shape = old_out.type, old_out.shape
        ir.convenience.replace_nodes_and_values(graph, node, [node], [new, *extra], [old_out], [result])


def _nbytes(site: Site) -> int:
    return int(site.tensor.nbytes)
