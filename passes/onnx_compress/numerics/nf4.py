"""NF4 (4-bit NormalFloat), bitsandbytes-exact, and the packed layout of ``onnx_compress.NF4MatMul``.

Codebook and rounding (identical to bitsandbytes and ONNX Runtime's MatMulBnb4 quantizer):

* 16 float32 values, the quantiles of N(0, 1) rescaled to [-1, 1] with an exact zero
  (:data:`CODEBOOK`, index = code).
* Per block of ``block_size`` consecutive weights along K: ``absmax = max|w|`` (float32);
  ``x = w * (1 / absmax)`` with the reciprocal computed in float32 (0 when absmax is 0); the code
  is the number of thresholds ``t`` of :data:`THRESHOLDS` with ``x > t`` (strict, float32), i.e.
  the nearest codebook value with bitsandbytes' midpoint thresholds and tie rule.
* Dequantization: ``CODEBOOK[code] * absmax`` in float32.

Packed layout of ``NF4MatMul``'s B (chosen for the kernels; ``W`` is the weight as ``[K, N]``):

* Output channels are grouped in *panels* of 32 (``N_pad = ceil(N / 32) * 32``); K is padded to
  whole blocks (``K_pad = ceil(K / block_size) * block_size``).
* ``B``: uint8 ``[N_pad / 32, K_pad, 16]``. ``B[p, k, i]`` holds the codes of W[k, 32p + i] in
  the LOW nibble and of W[k, 32p + 16 + i] in the HIGH nibble. So for one k, the 16 bytes give
  the 32 output channels of a panel as two contiguous halves: a kernel vectorized over N
  decodes them with one table lookup per half, with no transpose, and each panel is one long
  contiguous stream along K (GEMV) or a ready-made B panel (GEMM tiles).
* Padding (k >= K, n >= N) holds the code of 0.0 (7), so it contributes nothing.
* ``absmax``: ``[N_pad / 32, K_pad / block_size, 32]``, float32 or the activation dtype:
  ``absmax[p, b, j]`` scales the block b of output channel 32p + j (0 for padding channels).
* Converting from / to MatMulBnb4 (bitsandbytes order: W^T [N, K] flattened, first code of a
  byte in the HIGH nibble) is a repack of the same codes and absmax values.

Double quantization (QLoRA's structure: the absmax values minus their mean, in 8-bit blocks of
256), as NF4MatMul's optional inputs (:func:`double_quantize`, :func:`double_dequantize`):

* ``offset`` = mean of all absmax entries of the weight (panel layout, padding included),
  computed in float64 and stored as float32.
* ``d = absmax - offset`` (float32), flattened in the panel layout's row-major order and cut
  into blocks of :data:`DQ_BLOCK` = 256 entries (the last one may be shorter); per block
  ``scale2 = max|d| / 127`` (float32) and ``code = clamp(rint(d / scale2), -127, 127)`` as int8
  (0 when scale2 is 0). Linear int8 codes rather than bitsandbytes' dynamic 8-bit map: the
  kernels decode them with one multiply-add, and the added weight error is measured in
  docs/accuracy.md.
* Decoding: ``absmax' = float32(code) * scale2[i // 256] + offset`` in float32, where i is the
  entry's flat index. Since 256 is a multiple of 32, the 32 channels of one (panel, block) row
  share one ``scale2``.
* Storage per weight: 1 byte per block of ``block_size`` weights plus 4 bytes per 256 blocks:
  0.127 bit/weight at block 64 (float32 absmax: 0.5; float16: 0.25).
"""

from __future__ import annotations

__all__ = [
    "CODEBOOK",
    "DQ_BLOCK",
    "PANEL",
    "THRESHOLDS",
    "ZERO_CODE",
    "dequantize",
    "bnb4_pack_kn",
    "dequantize_blocks",
    "dequantize_kn",
    "double_dequantize",
    "double_quantize",
    "encode",
    "pack",
    "panel_pack",
    "panel_pack_kn",
    "panel_unpack",
    "quantize",
    "quantize_blocks",
    "quantize_kn",
    "unpack",
]

import numpy as np
import numpy.typing as npt

from onnx_compress.numerics.int8 import transpose_2d

CODEBOOK = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
"""The 16 NF4 values (bitsandbytes ``get_4bit_type('nf4')``), as float32."""

THRESHOLDS = np.array(
    [
        -0.8480964004993439,
        -0.6106329262256622,
        -0.4599952697753906,
        -0.33967943489551544,
        -0.23460740596055984,
        -0.13791173323988914,
        -0.045525018125772476,
        0.03979014977812767,
        0.1202552504837513,
        0.2035212516784668,
        0.2920137718319893,
        0.3893125355243683,
        0.5016634166240692,
        0.6427869200706482,
        0.8614784181118011,
    ],
    dtype=np.float32,
)
"""Decision thresholds between neighbouring codes (bitsandbytes' dQuantizeNF4 constants)."""

ZERO_CODE = 7
"""Code of 0.0: the padding value."""

PANEL = 32
"""Output channels per panel in NF4MatMul's / Int8MatMul's packed layouts."""

DQ_BLOCK = 256
"""absmax entries per 8-bit block of the double quantization."""


_BUCKETS = 32
"""The encoder splits [-1, 1] into 2 * 32 buckets of width 1/32: every bucket holds at most one
threshold, none closer than 1.6e-3 to a bucket edge (tests/numerics/test_nf4.py checks both)."""


def _bucket_tables() -> tuple[np.ndarray, np.ndarray]:
    lower = (np.arange(2 * _BUCKETS + 1) - _BUCKETS) / _BUCKETS  # bucket i covers [lower[i], lower[i+1])
    t64 = THRESHOLDS.astype(np.float64)
    base = np.array([(t64 < lo).sum() for lo in lower], np.uint8)
    inner = np.full(lower.shape, np.inf, np.float32)
    for i, lo in enumerate(lower):
        hit = t64[(t64 >= lo) & (t64 < lo + 1 / _BUCKETS)]
        if hit.size:
            inner[i] = THRESHOLDS[t64 == hit[0]][0] * np.float32(_BUCKETS)  # exact: a power-of-two scale
    return base, inner


_BASE, _INNER = _bucket_tables()


def _encode_scaled(z: np.ndarray) -> np.ndarray:
    """Codes of ``x = z / 32`` given ``z = 32 x`` (exact), x in [-1, 1] up to one ulp.

    The code is the number of thresholds below x: those below x's bucket (a table) plus one if x
    exceeds the threshold inside the bucket (an exact float32 comparison, at the same scale).
    The bucket index only selects the tables; an error of one ulp in it cannot matter because no
    threshold lies near a bucket edge. About 3 ns per value, against 18 for a binary search.
    """
    idx = np.add(z, np.float32(_BUCKETS)).astype(np.uint8)  # |x| <= 1 + 2^-23: index in [0, 64]
    codes = np.take(_BASE, idx)
    codes += np.greater(z, np.take(_INNER, idx))
    return codes


def encode(x: npt.ArrayLike) -> np.ndarray:
    """NF4 codes (uint8) of normalized values ``x = w / absmax`` in [-1, 1] (float32): the count
    of :data:`THRESHOLDS` strictly below each value, i.e. bitsandbytes' nearest-code rule."""
    z = np.asarray(x, dtype=np.float32) * np.float32(_BUCKETS)
    return _encode_scaled(z)


def _reciprocal_x32(absmax: np.ndarray) -> np.ndarray:
    """``32 * (1 / absmax)`` in float32 (0 where absmax is 0), so that ``w * r = 32 * fl(w / absmax)``
    with the reciprocal rounded as bitsandbytes rounds it."""
    with np.errstate(divide="ignore"):
        recip = np.where(absmax > 0, np.float32(1.0) / absmax, np.float32(0.0)).astype(np.float32)
    return recip * np.float32(_BUCKETS)


def quantize_blocks(w: npt.ArrayLike, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize along the last axis in blocks: returns (codes uint8, absmax float32).

    ``w``: [..., L] (L need not be a multiple of ``block_size``; the last block is shorter).
    codes: [..., L]; absmax: [..., ceil(L / block_size)].
    """
    arr = np.asarray(w, dtype=np.float32)
    length = arr.shape[-1]
    n_blocks = -(-length // block_size)
    pad = n_blocks * block_size - length
    padded = np.pad(arr, [(0, 0)] * (arr.ndim - 1) + [(0, pad)]) if pad else arr
    blocks = padded.reshape(*arr.shape[:-1], n_blocks, block_size)
    absmax = np.abs(blocks).max(axis=-1).astype(np.float32)
    codes = _encode_scaled(blocks * _reciprocal_x32(absmax)[..., None])
    codes = codes.reshape(*arr.shape[:-1], n_blocks * block_size)[..., :length]
    return codes, absmax


def quantize_kn(w_kn: npt.ArrayLike, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a weight ``W`` [K, N] in blocks along K (axis 0), per output channel.

    Returns codes uint8 [K, N] and absmax float32 [ceil(K / block_size), N] (the last block of a
    channel may be shorter). The same codes as :func:`quantize_blocks` on ``W.T``, computed
    without a transpose (blocks are reduced across rows, vectorized over N).
    """
    w = np.asarray(w_kn, dtype=np.float32)
    k, n = w.shape
    n_blocks = -(-k // block_size)
    full = (k // block_size) * block_size
    codes = np.empty((k, n), np.uint8)
    absmax = np.empty((n_blocks, n), np.float32)
    if full:
        blocks = w[:full].reshape(full // block_size, block_size, n)
        absmax[: full // block_size] = np.abs(blocks).max(axis=1)
        r = _reciprocal_x32(absmax[: full // block_size])
        codes[:full] = _encode_scaled(blocks * r[:, None, :]).reshape(full, n)
    if full < k:
        tail = w[full:]
        absmax[-1] = np.abs(tail).max(axis=0)
        codes[full:] = _encode_scaled(tail * _reciprocal_x32(absmax[-1])[None, :])
    return codes, absmax


def dequantize_kn(codes_kn: np.ndarray, absmax_bn: np.ndarray, block_size: int) -> np.ndarray:
    """Inverse of :func:`quantize_kn`: ``W'`` [K, N] float32."""
    k = codes_kn.shape[0]
    scale = np.repeat(np.asarray(absmax_bn, dtype=np.float32), block_size, axis=0)[:k]
    return np.take(CODEBOOK, codes_kn) * scale


def panel_pack_kn(codes_kn: np.ndarray, absmax_bn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes [K, N] and absmax [K_pad/bs, N] (from :func:`quantize_kn`) in NF4MatMul's panel
    layout: ``(B [N_pad/32, K_pad, 16] uint8, absmax [N_pad/32, K_pad/bs, 32])`` (absmax keeps
    its dtype; padding channels get 0)."""
    k, n = codes_kn.shape
    n_blocks = absmax_bn.shape[0]
    k_pad = n_blocks * block_size
    n_pad = -(-n // PANEL) * PANEL
    p = n_pad // PANEL
    if k_pad == k and n_pad == n:
        full = codes_kn
    else:
        full = np.full((k_pad, n_pad), ZERO_CODE, np.uint8)
        full[:k, :n] = codes_kn
    halves = full.reshape(k_pad, p, 2, PANEL // 2)
    packed = halves[:, :, 0, :] | (halves[:, :, 1, :] << 4)  # [K_pad, P, 16]
    b = np.ascontiguousarray(packed.transpose(1, 0, 2))
    am = np.zeros((n_blocks, n_pad), absmax_bn.dtype)
    am[:, :n] = absmax_bn
    return b, np.ascontiguousarray(am.reshape(n_blocks, p, PANEL).transpose(1, 0, 2))


def bnb4_pack_kn(codes_kn: np.ndarray, absmax_bn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes [K, N] and absmax [K/bs, N] in MatMulBnb4's layout, for K a multiple of the block
    (then bitsandbytes' blocks of the flattened ``W^T`` [N, K] are exactly the per-channel blocks
    along K): ``(B uint8 [N*K/2], absmax [N*K/bs])``, first code of a byte in the high nibble."""
    k = codes_kn.shape[0]
    if k % block_size:
        raise ValueError(f"bnb4_pack_kn needs K ({k}) to be a multiple of the block ({block_size})")
    packed_kn = (codes_kn[0::2] << 4) | codes_kn[1::2]  # [K/2, N]: pairs along K
    return transpose_2d(packed_kn).reshape(-1), np.ascontiguousarray(absmax_bn.T).reshape(-1)


def dequantize_blocks(codes: np.ndarray, absmax: np.ndarray, block_size: int) -> np.ndarray:
    """Inverse of :func:`quantize_blocks` (float32)."""
    length = codes.shape[-1]
    scale = np.repeat(np.asarray(absmax, dtype=np.float32), block_size, axis=-1)[..., :length]
    return CODEBOOK[codes] * scale


def pack(codes: np.ndarray) -> np.ndarray:
    """Two codes per byte along the last axis, first in the high nibble; odd length padded with
    :data:`ZERO_CODE`."""
    c = np.asarray(codes, dtype=np.uint8)
    if c.shape[-1] % 2:
        c = np.concatenate([c, np.full(c.shape[:-1] + (1,), ZERO_CODE, np.uint8)], axis=-1)
    return ((c[..., 0::2] << 4) | c[..., 1::2]).astype(np.uint8)


def unpack(packed: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`pack`: codes [..., length]."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), np.uint8)
    out[..., 0::2] = p >> 4
    out[..., 1::2] = p & 0x0F
    return out[..., :length]


def quantize(w_kn: npt.ArrayLike, block_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A weight ``W`` [K, N] to NF4MatMul's ``(B [N_pad/32, K_pad, 16] uint8,
    absmax [N_pad/32, K_pad/bs, 32] float32)`` (see the module docstring)."""
    w = np.asarray(w_kn, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D [K, N] weight, got shape {w.shape}")
    return panel_pack_kn(*quantize_kn(w, block_size), block_size)


def panel_pack(
    codes_nk: np.ndarray, absmax_nb: np.ndarray, k: int, n: int, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Codes [N, K] and absmax [N, K_pad/bs] (per output channel, blocks along K) in
    NF4MatMul's panel layout."""
    k_pad = -(-k // block_size) * block_size
    n_pad = -(-n // PANEL) * PANEL
    full = np.full((n_pad, k_pad), ZERO_CODE, np.uint8)
    full[:n, :k] = codes_nk[:, :k]
    panels = full.reshape(n_pad // PANEL, PANEL, k_pad).transpose(0, 2, 1)  # [P, K_pad, 32]
    b = (panels[..., :16] | (panels[..., 16:] << 4)).astype(np.uint8)
    am = np.zeros((n_pad, k_pad // block_size), np.float32)
    am[:n] = absmax_nb
    return np.ascontiguousarray(b), np.ascontiguousarray(am.reshape(n_pad // PANEL, PANEL, -1).transpose(0, 2, 1))


def panel_unpack(b: np.ndarray, absmax: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`panel_pack`: codes [N, K] and absmax [N, K_pad/bs] (float32)."""
    panels = np.concatenate([b & 0x0F, b >> 4], axis=-1)  # [P, K_pad, 32]
    codes = panels.transpose(0, 2, 1).reshape(-1, b.shape[1])[:n, :k]
    am = np.asarray(absmax, dtype=np.float32).transpose(0, 2, 1).reshape(-1, absmax.shape[1])[:n]
    return codes, am


def dequantize(b: np.ndarray, absmax: np.ndarray, k: int, n: int, block_size: int = 64) -> np.ndarray:
    """NF4MatMul's ``(B, absmax)`` back to the float32 weight ``W'`` [K, N]."""
    codes, am = panel_unpack(b, absmax, k, n)
    return np.ascontiguousarray(dequantize_blocks(codes, am, block_size).T)


def double_quantize(absmax: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """absmax (any shape, e.g. NF4MatMul's [P, K_pad/bs, 32]) to (int8 codes of the same shape,
    float32 scale2 [ceil(size / 256)], float32 offset); see the module docstring."""
    am = np.asarray(absmax, dtype=np.float32)
    offset = np.float32(am.astype(np.float64).mean()) if am.size else np.float32(0.0)
    d = am.reshape(-1) - offset
    n_blocks = -(-d.size // DQ_BLOCK)
    padded = np.zeros(n_blocks * DQ_BLOCK, np.float32)
    padded[: d.size] = d
    blocks = padded.reshape(n_blocks, DQ_BLOCK)
    scale2 = (np.abs(blocks).max(axis=1) / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale2[:, None] > 0, np.rint(blocks / scale2[:, None]), np.float32(0.0))
    codes = np.clip(q, -127, 127).astype(np.int8).reshape(-1)[: d.size].reshape(am.shape)
    return codes, scale2, offset


def double_dequantize(codes: np.ndarray, scale2: np.ndarray, offset: npt.ArrayLike) -> np.ndarray:
    """Inverse of :func:`double_quantize`: the float32 absmax values NF4MatMul uses."""
    flat = np.asarray(codes, dtype=np.int8).reshape(-1).astype(np.float32)
    s = np.repeat(np.asarray(scale2, dtype=np.float32), DQ_BLOCK)[: flat.size]
    off = np.float32(np.asarray(offset, dtype=np.float32).reshape(-1)[0])
    return (flat * s + off).astype(np.float32).reshape(np.shape(codes))
