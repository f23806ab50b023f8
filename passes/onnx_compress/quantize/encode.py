"""Encoding one weight into the arrays of one output format.

A :class:`Target` says what a weight becomes (scheme, graph format, block size, symmetry,
double quantization); :func:`encode` reads the weight and returns an :class:`Encoded`: the
initializer arrays of that format by role, the weight's relative error ``||W - W'|| / ||W||``,
and a way to rebuild ``W'`` for measuring output errors. All number formats come from
``numerics/``; this module only reads weights and arranges arrays.

4-bit formats work on the weight in its *canonical* orientation ``[K, N]`` (K = the reduction
axis): a MatMul weight as it is, a ``Gemm(transB=1)`` weight ``[N, K]`` (or a MatMul weight on the
left, ``[M, K]``) transposed. So a Gemm's initializers are exactly those of the equivalent MatMul.
Weights are read in slabs of rows (whole 4-bit blocks along K, or whole channels), so a weight is
never held in float32 as a whole unless its output error is measured.

Array roles per format (shapes for a canonical [K, N] weight, ``kb = ceil(K / block)``):

==================  ==========================================================================
int8 qdq            q int8 (the weight's shape), scales (int8 numerics' scale shape)
int8 matmulnbits    b uint8 [N, kb, block], scales [N, kb]
int8 custom         b int8 [P, K_pad, 32], scales [P, groups, 32] (Int8MatMul, numerics/int8.py)
int4 qdq            q packed int4/uint4 [K, N] (or [N, K] for a left-hand weight), scales
                    [kb, N], zero_points packed uint4 (asymmetric only)
int4 matmulnbits    b uint8 [N, kb, block/2], scales [N, kb], zero_points [N, ceil(kb/2)]
nf4 custom          b uint8 [P, K_pad, 16], absmax [P, kb, 32] (model dtype, or float32 for
                    bfloat16), or int8 with absmax_scale, absmax_offset (double quantization)
nf4 bnb4            b uint8 [(N*K+1)/2], absmax [ceil(N*K/block)] (model dtype)
==================  ==========================================================================
"""

from __future__ import annotations

__all__ = ["Encoded", "Target", "encode", "read_kn"]

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import onnx_ir as ir

from onnx_compress.numerics import int4, int8, nf4
from onnx_compress.quantize.sites import Site, UseKind
from onnx_compress.recipe import WeightFormat, WeightScheme
from onnx_compress.tensor_io import iter_row_slabs, row_slab_size


@dataclasses.dataclass(frozen=True)
class Target:
    """What one weight becomes."""

    scheme: WeightScheme
    format: WeightFormat
    block_size: int  # 0: per output channel (int8 only)
    symmetric: bool = True
    double_quant: bool = False

    @property
    def label(self) -> str:
        granularity = "channel" if self.block_size == 0 else f"block{self.block_size}"
        extra = ("" if self.symmetric else " asym") + (" dq" if self.double_quant else "")
        return f"{self.scheme.value}/{granularity}{extra}"


@dataclasses.dataclass(frozen=True)
class Encoded:
    target: Target
    arrays: Mapping[str, np.ndarray]
    weight_error: float
    dequantize_kn: Callable[[], np.ndarray]  # W' [K, N] float32 (2-D weights only)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())


def _rel(err: float, total: float) -> float:
    return math.sqrt(err / total) if total > 0 else 0.0


def _as_f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32, copy=False)


def read_kn(site: Site, k_multiple: int = 1) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """The 2-D weight of ``site`` as float32 pieces of its canonical ``[K, N]`` form.

    Yields ``(k_slice, n_slice, piece)``: slabs of K rows (a multiple of ``k_multiple`` each)
    when K is the stored row axis, else slabs of channels (transposed), each with all of K.
    """
    tensor = site.tensor
    shape = site.shape
    if site.reduction_axis == 0:
        for start, slab in iter_row_slabs(tensor, row_slab_size(shape, multiple=k_multiple)):
            yield slice(start, start + len(slab)), slice(0, shape[1]), _as_f32(slab)
    else:
        for start, slab in iter_row_slabs(tensor, row_slab_size(shape)):
            yield slice(0, shape[1]), slice(start, start + len(slab)), np.ascontiguousarray(_as_f32(slab).T)


def weight_kn(site: Site) -> np.ndarray:
    """The whole 2-D weight as float32 ``[K, N]``."""
    out = np.empty((site.k, site.n), np.float32)
    for ks, ns, piece in read_kn(site):
        out[ks, ns] = piece
    return out


def _blocks(ks: slice, block: int) -> slice:
    return slice(ks.start // block, -(-ks.stop // block))


def encode(site: Site, target: Target) -> Encoded:
    """Quantize ``site``'s weight as ``target`` says (see the module docstring for the arrays)."""
    if target.scheme is WeightScheme.INT4:
        return _encode_int4(site, target)
    if target.scheme is WeightScheme.NF4:
        return _encode_nf4(site, target) if target.format is WeightFormat.CUSTOM else _encode_bnb4(site, target)
    return _encode_int8(site, target)


# ---- int8 ---------------------------------------------------------------------------------
def _quantize_int8(site: Site, block: int) -> tuple[np.ndarray, np.ndarray, float]:
    """int8 q (the weight's own shape and orientation), scales and relative error."""
    tensor, shape = site.tensor, site.shape
    axis = site.reduction_axis
    scale_dtype = tensor.dtype.numpy()
    if len(shape) != 2:
        w = tensor.numpy()
        scales = int8.scales_from_absmax(int8.absmax(w, axis, block), scale_dtype)
        q, err, total = int8.quantize_with_error(w, scales, axis, block)
        return q, scales, _rel(err, total)
    q = np.empty(shape, np.int8)
    err = total = 0.0
    if axis == 1 or block:
        # Every slab holds whole groups: rows are channels, or rows are K in whole blocks.
        rows = row_slab_size(shape, multiple=block if axis == 0 and block else 1)
        parts = []
        for start, slab in iter_row_slabs(tensor, rows):
            s = int8.scales_from_absmax(int8.absmax(slab, axis, block), scale_dtype)
            q[start : start + len(slab)], e, t = int8.quantize_with_error(slab, s, axis, block)
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
    return q, scales, _rel(err, total)


def _next_pow2(x: int) -> int:
    return 1 << max(4, (x - 1).bit_length())


def _encode_int8(site: Site, target: Target) -> Encoded:
    block = target.block_size
    axis = site.reduction_axis
    q, scales, err = _quantize_int8(site, block)

    def deq() -> np.ndarray:
        w = int8.dequantize(q, scales, axis, block)
        return w if axis == 0 else np.ascontiguousarray(w.T)

    if target.format is WeightFormat.QDQ:
        return Encoded(target, {"q": q, "scales": scales}, err, deq)
    if target.format is WeightFormat.QLINEAR:  # QLinearMatMul: the weight's own orientation (emit transposes)
        return Encoded(target, {"q": q, "scales": scales}, err, deq)
    if target.format is WeightFormat.CUSTOM:
        b, s = int8.to_int8matmul(q, scales, axis, block)
        return Encoded(target, {"b": b, "scales": s}, err, deq)
    # MatMulNBits: B [N, k_blocks, block] (blocks along K), scales [N, k_blocks]; per channel is
    # one block spanning all of K (the op needs a power of two).
    nb_block = block or _next_pow2(site.k)
    q_nk = q if axis == 1 else int8.transpose_2d(q)
    scales_nk = scales if axis == 1 else np.ascontiguousarray(scales.T)
    k_blocks = -(-site.k // nb_block)
    if scales_nk.shape[1] != k_blocks:
        scales_nk = np.ascontiguousarray(np.broadcast_to(scales_nk, (site.n, k_blocks)))
    return Encoded(target, {"b": int8.pack_matmulnbits(q_nk, nb_block), "scales": scales_nk}, err, deq)


# ---- int4 ---------------------------------------------------------------------------------
def _encode_int4(site: Site, target: Target) -> Encoded:
    k, n, bs = site.k, site.n, target.block_size
    kb = -(-k // bs)
    scale_dtype = site.tensor.dtype.numpy()
    rounding = int4.Rounding.MATMULNBITS if target.format is WeightFormat.MATMULNBITS else int4.Rounding.QDQ
    q = np.empty((k, n), np.int8)
    scales = np.empty((kb, n), scale_dtype)
    zp = None if target.symmetric else np.empty((kb, n), np.uint8)
    err = total = 0.0
    for ks, ns, piece in read_kn(site, bs):
        qw = int4.quantize(piece, bs, target.symmetric, scale_dtype, rounding)
        q[ks, ns] = qw.q
        scales[_blocks(ks, bs), ns] = qw.scales
        if zp is not None and qw.zero_points is not None:
            zp[_blocks(ks, bs), ns] = qw.zero_points
        d = int4.dequantize(qw)
        d -= piece
        err += float(np.vdot(d, d))
        total += float(np.vdot(piece, piece))
    full = int4.Int4Weight(q, scales, zp, bs)

    def deq() -> np.ndarray:
        return int4.dequantize(full)

    if target.format is WeightFormat.MATMULNBITS:
        b, s, z = int4.pack_matmulnbits(full)
        arrays = {"b": b, "scales": s} | ({"zero_points": z} if z is not None else {})
        return Encoded(target, arrays, _rel(err, total), deq)
    if any(u.kind is UseKind.MATMUL_LHS for u in site.uses):  # DQ output must be [M, K]: axis 1
        full = int4.Int4Weight(
            np.ascontiguousarray(q.T),
            np.ascontiguousarray(scales.T),
            None if zp is None else np.ascontiguousarray(zp.T),
            bs,
        )
    data, zpd = int4.pack_qdq(full)
    arrays = {"q": data, "scales": full.scales} | ({"zero_points": zpd} if zpd is not None else {})
    return Encoded(target, arrays, _rel(err, total), deq)


# ---- nf4 ----------------------------------------------------------------------------------
def _nf4_codes(site: Site, bs: int, stored: np.dtype | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Codes [K, N] and float32 absmax [kb, N] of the whole weight, read piecewise, with the
    relative error of the codes under the absmax rounded to ``stored`` (None: not measured)."""
    k, n = site.k, site.n
    codes = np.empty((k, n), np.uint8)
    absmax = np.empty((-(-k // bs), n), np.float32)
    err = total = 0.0
    for ks, ns, piece in read_kn(site, bs):
        c, a = nf4.quantize_kn(piece, bs)
        codes[ks, ns], absmax[_blocks(ks, bs), ns] = c, a
        if stored is not None:
            d = nf4.dequantize_kn(c, a.astype(stored).astype(np.float32, copy=False), bs)
            d -= piece
            err += float(np.vdot(d, d))
            total += float(np.vdot(piece, piece))
    return codes, absmax, _rel(err, total)


def _error_against(site: Site, bs: int, codes: np.ndarray, absmax_eff: np.ndarray) -> float:
    """Relative error of codes with the absmax values the kernel will use (second read)."""
    err = total = 0.0
    for ks, ns, piece in read_kn(site, bs):
        d = nf4.dequantize_kn(codes[ks, ns], absmax_eff[_blocks(ks, bs), ns], bs)
        d -= piece
        err += float(np.vdot(d, d))
        total += float(np.vdot(piece, piece))
    return _rel(err, total)


def _absmax_dtype(site: Site) -> np.dtype:
    """absmax storage: the model's dtype (float16 halves its size), float32 for bfloat16 (its
    8-bit mantissa would add 0.4% of scale error) and float32 models."""
    return np.dtype(np.float16) if site.dtype == ir.DataType.FLOAT16 else np.dtype(np.float32)


def _encode_nf4(site: Site, target: Target) -> Encoded:
    bs, k, n = target.block_size, site.k, site.n
    if target.double_quant:
        codes, absmax, _ = _nf4_codes(site, bs, None)
        b, am_panel = nf4.panel_pack_kn(codes, absmax, bs)
        am_codes, am_scale, am_offset = nf4.double_quantize(am_panel)
        eff_panel = nf4.double_dequantize(am_codes, am_scale, am_offset)
        _, eff_nb = nf4.panel_unpack(b, eff_panel, k, n)
        eff = np.ascontiguousarray(eff_nb.T)
        err = _error_against(site, bs, codes, eff)  # the decoded absmax depends on the whole weight
        arrays = {
            "b": b,
            "absmax": am_codes,
            "absmax_scale": am_scale,
            "absmax_offset": np.asarray([am_offset], np.float32),
        }
    else:
        dtype = _absmax_dtype(site)
        codes, absmax, err = _nf4_codes(site, bs, dtype)
        stored = absmax.astype(dtype)
        b, am_panel = nf4.panel_pack_kn(codes, stored, bs)
        eff = stored.astype(np.float32)
        arrays = {"b": b, "absmax": am_panel}
    return Encoded(target, arrays, err, lambda: nf4.dequantize_kn(codes, eff, bs))


def _encode_bnb4(site: Site, target: Target) -> Encoded:
    """MatMulBnb4: bitsandbytes' blocks run over the flattened ``W^T`` [N, K]; when K is a
    multiple of the block they are the per-channel blocks along K (read piecewise), otherwise
    they straddle channels and the weight is quantized whole."""
    bs, k, n = target.block_size, site.k, site.n
    dtype = site.tensor.dtype.numpy()
    if k % bs == 0:
        codes, absmax, err = _nf4_codes(site, bs, dtype)
        stored = absmax.astype(dtype)
        packed, am_flat = nf4.bnb4_pack_kn(codes, stored, bs)
        eff = stored.astype(np.float32)
        return Encoded(target, {"b": packed, "absmax": am_flat}, err, lambda: nf4.dequantize_kn(codes, eff, bs))
    w_flat = np.ascontiguousarray(weight_kn(site).T).reshape(-1)
    codes_flat, absmax_flat = nf4.quantize_blocks(w_flat, bs)
    stored_flat = absmax_flat.astype(dtype)
    eff_flat = stored_flat.astype(np.float32)
    deq_flat = nf4.dequantize_blocks(codes_flat, eff_flat, bs)
    d = deq_flat - w_flat
    err = _rel(float(np.vdot(d, d)), float(np.vdot(w_flat, w_flat)))
    packed = nf4.pack(codes_flat)

    def deq() -> np.ndarray:
        return np.ascontiguousarray(nf4.dequantize_blocks(codes_flat, eff_flat, bs).reshape(n, k).T)

    return Encoded(target, {"b": packed, "absmax": stored_flat}, err, deq)
