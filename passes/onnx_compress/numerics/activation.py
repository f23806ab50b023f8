"""Static INT8 activation quantization (W8A8): the range rules and the activation formula.

Definitions (pure numpy):

* Activations are quantized per tensor with the seed's symmetric formula: ``scale = amax / 127``
  and ``q = saturate(round_half_even(x / scale))``. In the QDQ form ``q`` is int8 with zero point
  0 (TensorRT's explicit quantization); in the QLinearMatMul form it is uint8 with zero point 128,
  the same grid shifted (ORT CPU's integer kernels are 13x faster on u8 activations there).
  Saturation is to [-128, 127] (what QuantizeLinear does), so values beyond ``amax`` clip.
* ``amax`` comes from calibration statistics (``ChannelStats``) by one of three rules:

  - ``minmax``: the largest |x| seen;
  - ``percentile``: the ``p``-th percentile of |x| over every element (default 99.99), read from
    the histogram as the upper edge of the bin where the cumulative count reaches ``p``%;
  - ``entropy``: TensorRT's rule: the threshold whose 128-level quantization of the |x|
    histogram (clipped mass folded into the last kept bin) has the smallest KL divergence from
    the clipped histogram itself. Thresholds are tried at :data:`ENTROPY_CANDIDATES` bin edges
    spaced geometrically over the full-resolution histogram (with outlier activations 100x the
    bulk, TensorRT's 2048 bins over the whole range put the bulk in a few bins).
"""

from __future__ import annotations

__all__ = [
    "ENTROPY_CANDIDATES",
    "LEVELS",
    "amax_entropy",
    "amax_percentile",
    "fake_quantize",
    "scale_from_amax",
]

import numpy as np
import numpy.typing as npt

LEVELS = 128  # non-negative int8 levels 0..127 of the symmetric grid
ENTROPY_CANDIDATES = 400  # thresholds tried, geometrically spaced (TensorRT tries every bin of 2048)


def scale_from_amax(amax: float) -> np.float32:
    """``amax / 127`` in float32; a tensor that was always zero gets scale 1."""
    return np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)


def fake_quantize(x: npt.ArrayLike, scale: float) -> np.ndarray:
    """``x`` through QuantizeLinear -> DequantizeLinear with ``scale`` (zero point 0, int8)."""
    s = np.float32(scale)
    q = np.clip(np.rint(np.asarray(x, np.float32) / s), -128, 127)
    return (q * s).astype(np.float32)  # type: ignore[no-any-return]


def amax_percentile(histogram: np.ndarray, top: float, percentile: float) -> float:
    """The ``percentile``-th percentile of |x| from a histogram on [0, top]."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    total = float(histogram.sum())
    if total == 0 or top == 0:
        return 0.0
    cdf = np.cumsum(histogram) / total
    index = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
    index = min(index, len(histogram) - 1)
    return float((index + 1) * top / len(histogram))


def amax_entropy(histogram: np.ndarray, top: float, levels: int = LEVELS) -> float:
    """TensorRT's KL-divergence threshold on a histogram of |x| over [0, top]."""
    hist = np.asarray(histogram, np.float64)
    n = len(hist)
    if hist.sum() == 0 or top == 0:
        return 0.0
    width = top / n
    nonzero = hist > 0
    last = int(np.flatnonzero(nonzero)[-1]) + 1
    if last <= levels:
        return last * width  # fewer occupied bins than levels: no clipping needed
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    candidates = np.unique(np.geomspace(levels, last, ENTROPY_CANDIDATES).astype(np.int64))
    best_i, best_kl = last, np.inf
    for i in (int(c) for c in candidates):
        p = hist[:i].copy()
        p[i - 1] += tail[i]
        starts = (np.arange(levels) * i) // levels
        sums = np.add.reduceat(hist[:i], starts)
        counts = np.add.reduceat(nonzero[:i].astype(np.float64), starts)
        per = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        owner = np.repeat(np.arange(levels), np.diff(np.append(starts, i)))
        q = np.where(nonzero[:i], per[owner], 0.0)
        keep = p > 0
        q_sum, p_sum = q.sum(), p.sum()
        if q_sum == 0:
            continue
        # q is 0 only where hist is 0; p can be > 0 there only in the last bin (clipped mass):
        # give such bins a tiny mass (TensorRT smooths the same way) so the divergence is finite
        q = np.where(keep & (q == 0), 1e-4 * q_sum / i, q)
        kl = float(np.sum(p[keep] / p_sum * np.log((p[keep] / p_sum) / (q[keep] / q.sum()))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width
