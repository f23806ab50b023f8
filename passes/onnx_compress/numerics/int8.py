"""INT8 symmetric weight quantization: the seed's formula, defined once.

Definitions (all arrays are numpy; nothing here knows about ONNX graphs):

* A weight ``w`` has a *reduction axis* (K, the axis summed over by the matmul that consumes
  it) and a *channel axis* (N, the output channel). For ``MatMul(x, W)`` with ``W[K, N]``
  the reduction axis is 0 and the channel axis 1; for ``Gemm(transB=1)`` with ``B[N, K]`` it
  is the other way round.
* Groups: per output channel (``block_size == 0``) one group is the whole K extent of a
  channel; blockwise (``block_size == B > 0``) a group is ``B`` consecutive elements along K
  of one channel (the last block of a channel may be shorter when ``K % B != 0``).
* ``scale = max|w| / 127`` over each group, computed in float32 and then stored in the
  scale dtype (the model's float type); ``q = round(w / scale)`` with round-half-to-even
  (ONNX QuantizeLinear's rounding), clipped to ``[-127, 127]``, computed with the *stored*
  scale so that ``q * scale`` is the best reconstruction the stored scale allows.
* A group that is all zero gets ``scale = 1`` and ``q = 0`` (no division by zero; it
  dequantizes to exact zeros). Zero stays exactly zero everywhere, which keeps 2:4 sparsity.
* Scale layout: the scale array has the weight's shape with the reduction axis replaced by
  ``ceil(K / B)`` (blockwise) or ``1`` (per channel). This is exactly the shape ONNX's
  blocked ``DequantizeLinear(axis=reduction_axis, block_size=B)`` expects; a per-channel 2-D
  weight uses ``scale.reshape(-1)`` with ``axis=channel_axis``.

Layouts of the custom / contrib ops that carry these weights:

* ``onnx_compress.Int8MatMul``: output channels in panels of 32 (``N_pad = ceil(N / 32) * 32``),
  K padded to whole groups (``K_pad``); ``B`` int8 ``[N_pad / 32, K_pad, 32]`` with
  ``B[p, k, j] = q[k, 32p + j]`` (each panel one contiguous stream along K, the 32 channels of a
  k side by side, as NF4MatMul's layout in numerics/nf4.py), ``scales``
  ``[N_pad / 32, groups, 32]``; ``W'[k, n] = B[n // 32, k, n % 32] * scales[n // 32, k // g, n % 32]``
  with g = block_size (K per channel). Padding holds q = 0 and scale 0
  (:func:`to_int8matmul`, :func:`from_int8matmul`).
* ``com.microsoft.MatMulNBits`` bits=8: see :func:`pack_matmulnbits`.
"""

from __future__ import annotations

__all__ = [
    "QMAX",
    "absmax",
    "dequantize",
    "pack_matmulnbits",
    "quantize",
    "quantize_with_error",
    "scales_from_absmax",
    "from_int8matmul",
    "to_int8matmul",
    "transpose_2d",
]

import ml_dtypes
import numpy as np
import numpy.typing as npt

QMAX = 127
"""Largest magnitude of a stored value; -128 is never used, so the grid is symmetric."""


def _grouped(w: np.ndarray, axis: int, block_size: int) -> tuple[np.ndarray, int]:
    """View ``w`` with the reduction axis split into (groups, group_len); pads with zeros."""
    k = w.shape[axis]
    group = k if block_size == 0 else block_size
    n_groups = -(-k // group)
    pad = n_groups * group - k
    if pad:
        widths = [(0, 0)] * w.ndim
        widths[axis] = (0, pad)
        w = np.pad(w, widths)
    shape = w.shape[:axis] + (n_groups, group) + w.shape[axis + 1 :]
    return w.reshape(shape), pad


def _unpad(x: np.ndarray, axis: int, k: int) -> np.ndarray:
    return x[(slice(None),) * axis + (slice(0, k),)]


def _check(w: np.ndarray, axis: int, block_size: int) -> int:
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis {axis} out of range for a rank-{w.ndim} weight")
    if block_size < 0:
        raise ValueError(f"block_size must be 0 (per channel) or positive, got {block_size}")
    return axis % w.ndim


def absmax(w: npt.ArrayLike, axis: int, block_size: int = 0) -> np.ndarray:
    """Max |w| of every group, in float32, shaped like the scale array (see module doc)."""
    arr = np.asarray(w)
    axis = _check(arr, axis, block_size)
    grouped, _ = _grouped(arr, axis, block_size)
    return np.abs(grouped).max(axis=axis + 1).astype(np.float32, copy=False)


def scales_from_absmax(amax: np.ndarray, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """``amax / 127`` stored in ``dtype``; zero groups get 1; never rounds a scale to zero.

    A float16/bfloat16 scale that would underflow to zero is raised to the dtype's smallest
    positive normal value: such a group dequantizes with a (tiny) absolute error instead of
    producing inf/nan.
    """
    scale = np.asarray(amax, dtype=np.float32) / np.float32(QMAX)
    scale = np.where(amax > 0, scale, np.float32(1.0))
    stored = scale.astype(dtype)
    tiny = np.asarray(ml_dtypes.finfo(stored.dtype).tiny, dtype=stored.dtype)
    return np.where(stored.astype(np.float32) > 0, stored, tiny)


def quantize(w: npt.ArrayLike, scales: np.ndarray, axis: int, block_size: int = 0) -> np.ndarray:
    """``clip(round(w / scale), -127, 127)`` as int8, with ``scales`` from :func:`scales_from_absmax`."""
    return quantize_with_error(w, scales, axis, block_size)[0]


def quantize_with_error(
    w: npt.ArrayLike, scales: np.ndarray, axis: int, block_size: int = 0
) -> tuple[np.ndarray, float, float]:
    """:func:`quantize`, plus ``sum((w - q * scale)^2)`` and ``sum(w^2)`` (float64 totals).

    The reconstruction error is ``scale * (w / scale - q)``, so it comes from the quotient
    already computed for rounding, without dequantizing.
    """
    arr = np.asarray(w)
    axis = _check(arr, axis, block_size)
    grouped, pad = _grouped(arr.astype(np.float32, copy=False), axis, block_size)
    s = np.expand_dims(np.asarray(scales).astype(np.float32), axis + 1)
    ratio = grouped / s
    q = np.rint(ratio)
    np.clip(q, -QMAX, QMAX, out=q)
    ratio -= q
    ratio *= ratio
    group_err = ratio.sum(axis=axis + 1)  # float32 pairwise sums of values in [0, 1/4]
    sq_error = float(np.dot(group_err.ravel().astype(np.float64), np.square(s.astype(np.float64)).ravel()))
    flat = grouped.reshape(-1)
    sq_norm = float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    q8 = q.astype(np.int8).reshape(grouped.shape[:axis] + (-1,) + grouped.shape[axis + 2 :])
    return (_unpad(q8, axis, arr.shape[axis]) if pad else q8), sq_error, sq_norm


def dequantize(
    q: np.ndarray, scales: np.ndarray, axis: int, block_size: int = 0, dtype: npt.DTypeLike = np.float32
) -> np.ndarray:
    """``q * scale`` computed in float32 and returned in ``dtype`` (DequantizeLinear's math)."""
    axis = _check(q, axis, block_size)
    grouped, pad = _grouped(q.astype(np.float32), axis, block_size)
    w = grouped * np.expand_dims(np.asarray(scales).astype(np.float32), axis + 1)
    w = w.reshape(grouped.shape[:axis] + (-1,) + grouped.shape[axis + 2 :])
    return (_unpad(w, axis, q.shape[axis]) if pad else w).astype(dtype)


def transpose_2d(a: np.ndarray, tile: int = 32) -> np.ndarray:
    """``a.T`` as a new C-contiguous array, copied in tiles (3-5x faster than ``a.T.copy()``
    for 1-byte dtypes on large matrices, whose naive strided copy thrashes the cache)."""
    rows, cols = a.shape
    out = np.empty((cols, rows), a.dtype)
    for i in range(0, rows, tile):
        for j in range(0, cols, 2048):
            out[j : j + 2048, i : i + tile] = a[i : i + tile, j : j + 2048].T
    return out


def pack_matmulnbits(q_nk: np.ndarray, block_size: int) -> np.ndarray:
    """ORT MatMulNBits (bits=8) storage of symmetric int8 weights ``q_nk`` [N, K].

    Layout: uint8 [N, ceil(K / block_size), block_size], blocks along K, each value stored as
    ``q + 128`` (the op's default zero point is 128, so no zero_points input is needed);
    K is padded with q = 0 (stored 128) up to a whole number of blocks.
    """
    n, k = q_nk.shape
    k_blocks = -(-k // block_size)
    packed = np.empty((n, k_blocks * block_size), np.uint8)
    np.bitwise_xor(q_nk.view(np.uint8), np.uint8(0x80), out=packed[:, :k])  # q + 128 (mod 256)
    packed[:, k:] = 0x80
    return packed.reshape(n, k_blocks, block_size)


def to_int8matmul(
    q: np.ndarray, scales: np.ndarray, reduction_axis: int, block_size: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D quantized weight (``q``, ``scales`` as :func:`quantize` makes them) in Int8MatMul's
    panel layout: ``B`` [N_pad/32, K_pad, 32] int8 and scales [N_pad/32, groups, 32]."""
    if q.ndim != 2:
        raise ValueError(f"Int8MatMul takes a 2-D weight, got shape {q.shape}")
    q_kn = q if reduction_axis % 2 == 0 else q.T
    s_gn = np.asarray(scales) if reduction_axis % 2 == 0 else np.asarray(scales).T  # [groups, N]
    k, n = q_kn.shape
    groups = s_gn.shape[0]
    k_pad, n_pad = (groups * block_size if block_size else k), -(-n // 32) * 32
    b = np.zeros((k_pad, n_pad), np.int8)
    b[:k, :n] = q_kn
    s = np.zeros((groups, n_pad), s_gn.dtype)
    s[:, :n] = s_gn
    return (
        np.ascontiguousarray(b.reshape(k_pad, n_pad // 32, 32).transpose(1, 0, 2)),
        np.ascontiguousarray(s.reshape(groups, n_pad // 32, 32).transpose(1, 0, 2)),
    )


def from_int8matmul(b: np.ndarray, scales: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_int8matmul`: ``q`` [K, N] int8 and scales [groups, N]."""
    q = b.transpose(1, 0, 2).reshape(b.shape[1], -1)[:k, :n]
    s = np.asarray(scales).transpose(1, 0, 2).reshape(scales.shape[1], -1)[:, :n]
    return np.ascontiguousarray(q), np.ascontiguousarray(s)
