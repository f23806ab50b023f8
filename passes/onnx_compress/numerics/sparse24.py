"""2:4 structured sparsity, pure numpy: the mask rule and the pattern check, defined once.

Definitions (nothing here knows about ONNX graphs):

* A weight ``w`` has a *reduction axis* (K). Along it, the elements are split into groups of
  :data:`GROUP` = 4 consecutive elements (``w[..., 4g:4g+4, ...]``); K must be a multiple of 4.
* The pattern holds when every group has at least :data:`ZEROS` = 2 zeros (so at most 2
  non-zeros: what NVIDIA's sparse tensor cores and cuSPARSELt compress). ``-0.0`` counts as zero.
* A mask keeps the :data:`KEEP` = 2 elements of each group with the highest *score* and zeroes
  the other two. Ties are broken deterministically: a higher ``|w|`` first, then the lower
  index along K (so a weight that is already 2:4 keeps all its non-zeros: pruning is idempotent).
* Scores: ``magnitude`` is ``|w|``; ``wanda`` is ``|w| * ||X_k||_2``, the weight's magnitude
  times the L2 norm over the calibration rows of the input channel k it multiplies (Wanda,
  Sun et al. 2023), compared only within each group along K (the 2:4 variant of its rule).
* Quantized weights stored with a zero point (``DequantizeLinear(q, s, zp)``) dequantize to zero
  exactly where ``q == zp``: :func:`zeros` takes the zero point into account.
"""

from __future__ import annotations

__all__ = [
    "GROUP",
    "KEEP",
    "ZEROS",
    "magnitude_scores",
    "mask",
    "prune",
    "violations",
    "wanda_scores",
    "zeros",
]

import numpy as np
import numpy.typing as npt

GROUP = 4
"""Elements per group along the reduction axis."""
KEEP = 2
"""Non-zeros a group may keep."""
ZEROS = GROUP - KEEP
"""Zeros every group must have."""


def _groups(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` with ``axis`` moved last and split into (K / 4, 4)."""
    k = x.shape[axis]
    if k % GROUP:
        raise ValueError(f"the reduction axis {axis} has {k} elements, not a multiple of {GROUP}")
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(*moved.shape[:-1], k // GROUP, GROUP)


def _ungroup(g: np.ndarray, axis: int) -> np.ndarray:
    flat = g.reshape(*g.shape[:-2], g.shape[-2] * GROUP)
    return np.moveaxis(flat, -1, axis)


def magnitude_scores(w: npt.ArrayLike) -> np.ndarray:
    """``|w|`` in float32 (float16 / bfloat16 weights are widened first)."""
    return np.abs(np.asarray(w).astype(np.float32))


def wanda_scores(w: npt.ArrayLike, l2: npt.ArrayLike, axis: int) -> np.ndarray:
    """``|w| * l2`` with ``l2`` (length K: ||X_k||_2 per input channel) broadcast along ``axis``."""
    a = magnitude_scores(w)
    norms = np.asarray(l2, np.float32)
    if norms.shape != (a.shape[axis],):
        raise ValueError(f"need one activation norm per input channel ({a.shape[axis]}), got shape {norms.shape}")
    shape = [1] * a.ndim
    shape[axis] = -1
    return a * norms.reshape(shape)


def mask(scores: npt.ArrayLike, axis: int, w: npt.ArrayLike | None = None) -> np.ndarray:
    """Boolean keep-mask (True = keep) with exactly :data:`KEEP` True per group along ``axis``.

    Within a group the highest scores are kept; ties go to the larger ``|w|`` (when ``w`` is
    given), then to the lower index."""
    s = _groups(np.asarray(scores, np.float32), axis)
    mag = _groups(magnitude_scores(w), axis) if w is not None else np.zeros_like(s)
    index = np.broadcast_to(np.arange(GROUP, dtype=np.float32), s.shape)
    # lexsort sorts by the last key first: score, then |w|, then (descending) position.
    order = np.lexsort((index, -mag, -s), axis=-1)
    keep = np.zeros(s.shape, bool)
    np.put_along_axis(keep, order[..., :KEEP], True, axis=-1)
    return _ungroup(keep, axis)


def prune(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``w`` with the masked-out elements set to zero (same dtype and shape)."""
    if keep.shape != w.shape:
        raise ValueError(f"mask shape {keep.shape} does not match the weight's {w.shape}")
    return np.where(keep, w, np.zeros((), w.dtype)).astype(w.dtype, copy=False)


def zeros(stored: npt.ArrayLike, zero_point: npt.ArrayLike | None = None) -> np.ndarray:
    """Where the (dequantized) weight is exactly zero: ``stored == 0``, or ``stored == zp``
    (``zero_point`` broadcastable to ``stored``)."""
    a = np.asarray(stored)
    if zero_point is None:
        return np.asarray(a == 0)
    return np.asarray(a.astype(np.int32) == np.asarray(zero_point).astype(np.int32))


def violations(is_zero: np.ndarray, axis: int) -> tuple[int, int]:
    """(groups with fewer than :data:`ZEROS` zeros, all groups) along ``axis``."""
    g = _groups(np.asarray(is_zero, bool), axis)
    bad = int(np.count_nonzero(g.sum(axis=-1) < ZEROS))
    return bad, int(g.size // GROUP)
