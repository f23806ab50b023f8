"""Blockwise INT4 weights, exactly as ONNX Runtime's quantizers compute them.

For a weight ``W`` [K, N], blocks of ``block_size`` consecutive elements along K per output
channel n (the last block of a channel may be shorter). All arithmetic is float32, as in MLAS
(``BlockwiseQuantizer`` for MatMulNBits, ``BlockwiseQDQQuantizer`` for QDQ); ``roundf`` rounds
half away from zero; ``r = 1 / stored_scale`` (0 when the scale is 0), the stored scale being the
float32 scale cast to the scale dtype.

* Symmetric: ``m`` = the block's value of largest magnitude *with its sign* (on a tie the
  minimum), ``scale = -m / 8``.
* Asymmetric: ``lo = min(min(w), 0)``, ``hi = max(max(w), 0)``, ``scale = (hi - lo) / 15``,
  ``zp = clamp(roundf(-lo / scale), 0, 15)`` (0 when the scale is 0).

The two ORT quantizers round differently, and both are reproduced (:class:`Rounding`):

* QDQ (``quantize_qdq_matmul_4bits``): ``q = clamp(roundf(w * r) + zp, lo, hi)``: int4 in
  [-8, 7] (symmetric, zp 0) or uint4 in [0, 15].
* MatMulNBits (``quantize_matmul_4bits``): ``code = clamp(roundf(w * r + zp), 0, 15)`` with zp = 8
  when symmetric; a tie such as ``w * r = -2.5`` gives -2 here (6 - 8) and -3 in QDQ, and the
  float32 sum ``w * r + 8`` rounds before roundf does.

:class:`Int4Weight` holds QDQ values either way (``q = code - 8`` when symmetric).

Layouts (byte-identical to ORT's MatMulNBitsQuantizer):

* QDQ ``DequantizeLinear(q [K, N] int4|uint4, scale [K/B, N], zp [K/B, N], axis=0, block_size=B)``:
  int4 data packed two per byte in row-major order of [K, N], element 2i in the low nibble
  (ONNX's int4 packing), zero points likewise.
* ``MatMulNBits`` bits=4: ``B`` uint8 [N, k_blocks, B/2] (blocks along K per column, element 2i
  of a block in the low nibble), scales [N, k_blocks], zero points uint8 [N, ceil(k_blocks / 2)]
  (block 2j in the low nibble; 8 in an unused nibble). K is padded to whole blocks; the kernels
  never read the padding, which holds what ORT's quantizer leaves there: 0, except that for an
  odd K the nibble after the last element repeats the code of element K-2 (a stale register in
  MLAS) unless element K-1 starts one of MLAS's two-block work items.
"""

from __future__ import annotations

__all__ = [
    "Int4Weight",
    "Rounding",
    "dequantize",
    "pack_matmulnbits",
    "pack_qdq",
    "quantize",
    "roundf",
]

import dataclasses
import enum

import numpy as np
import numpy.typing as npt

from onnx_compress.numerics.int8 import transpose_2d

_HALF_BELOW = np.float32(0.49999997)
"""The float32 just below 0.5: ``trunc(x + copysign(0.49999997, x))`` is C's ``roundf`` for every
float32 of magnitude below 2^23 (adding 0.5 itself would round 0.49999997 up to 1); checked
against a float64 reference in tests/numerics/test_int4.py."""


class Rounding(enum.Enum):
    """Which ORT quantizer's rounding to reproduce (see the module docstring)."""

    QDQ = "qdq"
    MATMULNBITS = "matmulnbits"


def roundf(x: npt.ArrayLike) -> np.ndarray:
    """C's roundf (halves away from zero), elementwise, for float32 ``|x| < 2^23``."""
    arr = np.asarray(x, dtype=np.float32)
    return np.trunc(arr + np.copysign(_HALF_BELOW, arr))


@dataclasses.dataclass(frozen=True)
class Int4Weight:
    """Quantized weight in a layout-neutral form: per (block, channel) along K.

    q: int8 [K, N] holding values in [-8, 7] (symmetric) or [0, 15] (asymmetric);
    scales: [k_blocks, N] in the scale dtype; zero_points: uint8 [k_blocks, N] or None.
    """

    q: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    block_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None


def _block_range(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (block along K, channel): max and min of ``w`` [K, N] (the last block may be short)."""
    k, n = w.shape
    full = (k // block_size) * block_size
    kb = -(-k // block_size)
    bmax = np.empty((kb, n), np.float32)
    bmin = np.empty((kb, n), np.float32)
    if full:
        blocks = w[:full].reshape(full // block_size, block_size, n)
        blocks.max(axis=1, out=bmax[: full // block_size])
        blocks.min(axis=1, out=bmin[: full // block_size])
    if full < k:
        w[full:].max(axis=0, out=bmax[-1])
        w[full:].min(axis=0, out=bmin[-1])
    return bmax, bmin


def _per_row(x: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """Per-block values [k_blocks, N] as a broadcastable per-row array."""
    if k % block_size == 0:
        return x[:, None, :]
    return np.repeat(x, block_size, axis=0)[:k]


def quantize(
    w_kn: npt.ArrayLike,
    block_size: int,
    symmetric: bool = True,
    scale_dtype: npt.DTypeLike = np.float32,
    rounding: Rounding = Rounding.QDQ,
) -> Int4Weight:
    """Quantize ``W`` [K, N] blockwise along K (see the module docstring for the formulas).

    Vectorized as ``int(clip(y, lo, hi) + copysign(0.49999997, .))`` for the value ``y`` to be
    rounded: clipping first gives the same result as clipping the rounded value (the bounds are
    integers), and the cast to an integer truncates, so the sum is roundf.
    """
    w = np.asarray(w_kn).astype(np.float32, copy=False)
    k, n = w.shape
    kb = -(-k // block_size)
    bmax, bmin = _block_range(w, block_size)
    zero_points: np.ndarray | None
    if symmetric:
        m = np.where(np.abs(bmax) > np.abs(bmin), bmax, bmin)
        scales = (-m / np.float32(8.0)).astype(scale_dtype)
        zero_points = None
    else:
        lo = np.minimum(bmin, np.float32(0.0))
        hi = np.maximum(bmax, np.float32(0.0))
        scale_f = (hi - lo) / np.float32(15.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp_fp = np.where(scale_f != 0, np.float32(0.0) - lo / scale_f, lo)
        zero_points = roundf(np.clip(zp_fp, 0, 15)).astype(np.uint8)
        scales = scale_f.astype(scale_dtype)
    s32 = scales.astype(np.float32)
    with np.errstate(divide="ignore"):
        recip = np.where(s32 != 0, np.float32(1.0) / s32, np.float32(0.0)).astype(np.float32)
    shape3 = (kb, block_size, n) if k % block_size == 0 else (k, n)
    x = w.reshape(shape3) * _per_row(recip, k, block_size)
    if rounding is Rounding.MATMULNBITS:
        zp_f = np.float32(8.0) if zero_points is None else _per_row(zero_points.astype(np.float32), k, block_size)
        x += zp_f  # rounded in float32 before roundf, as MLAS does
        np.clip(x, 0.0, 15.0, out=x)
        x += _HALF_BELOW
        codes = x.astype(np.uint8).reshape(k, n)
        q = codes.view(np.int8) if zero_points is not None else (codes.astype(np.int8) - np.int8(8))
    elif zero_points is None:
        np.clip(x, -8.0, 7.0, out=x)
        x += np.copysign(_HALF_BELOW, x)
        q = x.astype(np.int8).reshape(k, n)
    else:
        zp_i = _per_row(zero_points.astype(np.float32), k, block_size)
        np.clip(x, -zp_i, np.float32(15.0) - zp_i, out=x)  # roundf(x) + zp must land in [0, 15]
        x += np.copysign(_HALF_BELOW, x)
        q = (x.astype(np.int8) + _per_row(zero_points.view(np.int8), k, block_size)).reshape(k, n)
    return Int4Weight(np.ascontiguousarray(q), scales, zero_points, block_size)


def dequantize(qw: Int4Weight, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """``(q - zp) * scale`` [K, N] (DequantizeLinear's math, in float32)."""
    k, n = qw.q.shape
    bs = qw.block_size
    kb = qw.scales.shape[0]
    q = qw.q.astype(np.float32)
    q3 = q.reshape(kb, bs, n) if k % bs == 0 else q
    if qw.zero_points is not None:
        q3 -= _per_row(qw.zero_points.astype(np.float32), k, bs)
    q3 *= _per_row(qw.scales.astype(np.float32), k, bs)
    return q.astype(dtype, copy=False)


def _pack_nibbles(v: np.ndarray) -> np.ndarray:
    """Flat array of 4-bit values -> bytes, element 2i in the low nibble (odd length: 0 pad)."""
    flat = v.reshape(-1).view(np.uint8) if v.dtype.itemsize == 1 else v.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] & np.uint8(0x0F)) | (flat[1::2] << 4)


def pack_qdq(qw: Int4Weight) -> tuple[np.ndarray, np.ndarray | None]:
    """(data bytes, zero-point bytes) of the QDQ form: row-major [K, N] and [k_blocks, N]."""
    zp = _pack_nibbles(qw.zero_points) if qw.zero_points is not None else None
    return _pack_nibbles(qw.q), zp


def pack_matmulnbits(qw: Int4Weight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(B [N, k_blocks, B/2] uint8, scales [N, k_blocks], zero points [N, ceil(k_blocks/2)] uint8);
    ``qw`` must come from :func:`quantize` with ``Rounding.MATMULNBITS`` to match ORT."""
    k, n = qw.q.shape
    bs = qw.block_size
    kb = -(-k // bs)
    codes = np.zeros((kb * bs, n), np.uint8)
    if qw.symmetric:
        np.add(qw.q, 8, out=codes[:k], casting="unsafe")
    else:
        codes[:k] = qw.q
    if k % 2 and (k - 1) % (2 * bs):
        codes[k] = codes[k - 2]  # what ORT's quantizer leaves in the padding nibble (module docstring)
    packed_kn = codes[0::2] | (codes[1::2] << 4)  # [K_pad/2, N]: pairs along K
    b = transpose_2d(packed_kn).reshape(n, kb, bs // 2)
    scales = np.ascontiguousarray(qw.scales.T)
    if qw.zero_points is None:
        return b, scales, None
    zp = np.full((n, 2 * ((kb + 1) // 2)), 8, np.uint8)
    zp[:, :kb] = qw.zero_points.T
    return b, scales, (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
