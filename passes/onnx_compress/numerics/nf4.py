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
"""

from __future__ import annotations

__all__ = [
    "CODEBOOK",
    "PANEL",
    "THRESHOLDS",
    "ZERO_CODE",
    "dequantize",
    "dequantize_blocks",
    "pack",
    "panel_pack",
    "panel_unpack",
    "quantize",
    "quantize_blocks",
    "unpack",
]

import numpy as np
import numpy.typing as npt

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
    absmax = np.abs(blocks).max(axis=-1)
    with np.errstate(divide="ignore"):
        recip = np.where(absmax > 0, np.float32(1.0) / absmax, np.float32(0.0)).astype(np.float32)
    x = blocks * recip[..., None]
    codes = np.searchsorted(THRESHOLDS, x, side="left").astype(np.uint8)  # count of t < x
    codes = codes.reshape(*arr.shape[:-1], n_blocks * block_size)[..., :length]
    return codes, absmax.astype(np.float32)


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
    k, n = w.shape
    codes, absmax = quantize_blocks(np.ascontiguousarray(w.T), block_size)  # [N, K], [N, K_pad/bs]
    return panel_pack(codes, absmax, k, n, block_size)


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
