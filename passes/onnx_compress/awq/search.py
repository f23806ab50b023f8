"""AWQ's scale and clip search on one group of linears sharing an input (pure numpy).

A *group* is the set of weights ``W_i`` [K, N_i] that read the same activation ``x`` [T, K]
(q/k/v after the input norm, gate/up after the post-attention norm, ...). AWQ (AutoAWQ, the
reference; ``../shared/design/awq.md``) scales input channel c of every weight up by ``s[c]``
and the activation down by it: ``(x / s) @ Q(diag(s) W)`` approximates ``x @ W`` better than
``x @ Q(W)`` when the salient channels (large mean |x|) get larger ``s``.

:func:`search_scales`, faithful to AutoAWQ's ``_search_best_scale``:

* ``x_mean[c]`` = mean |x[:, c]| over every calibration row (the statistics of
  :mod:`onnx_compress.calibration.stats`, not only the sampled rows);
* ``w_mean[c]``: the group's weights side by side ([K, sum N]), |w| / max|w| within each
  quantization block along K (per output channel), averaged over output channels;
* for r in 0, 1/20, ..., 19/20: ``s = clip(x_mean^r / (w_mean^(1-r) + 1e-4), 1e-4)``,
  ``s /= sqrt(max(s) * min(s))``, non-finite -> 1; loss = mean squared error of the group's
  outputs on the sampled rows (all linears' outputs, concatenated) against the float outputs;
* the best r wins. Plain round-to-nearest (s = 1; llm-awq's r = 0) is evaluated too and kept
  when no grid point beats it, so the result is never worse than RTN on the sampled rows
  (AutoAWQ's r = 0 is s = 1 / w_mean, not RTN).

:func:`search_clip` (AutoAWQ's ``_compute_best_clip``): per output channel and quantization
block, shrink the clipping range to ``max|w| * (1 - 0.5 i / steps)``, i = 0..steps-1, and keep
the value that minimizes that block's partial-product error on the sampled rows (i = 0 is no
clip). AutoAWQ's grid is steps = 10 (1, 0.95, ..., 0.55); the same range in finer steps finds
each block's bound closer to its optimum (SmolLM2 int4 perplexity: 17.283 / 17.229 / 17.109
with 10 / 20 / 30 steps, docs/accuracy.md), so the default is :data:`CLIP_STEPS` = 30.

The quantizer is a :class:`FakeQuant` built on :mod:`onnx_compress.numerics`, the same formulas
the quantization pass stores, so the searched loss is the deployed one.
"""

from __future__ import annotations

__all__ = ["FakeQuant", "ScaleResult", "apply_clip", "search_clip", "search_scales", "weight_mean"]

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from onnx_compress.numerics import int4, int8, nf4
from onnx_compress.recipe import WeightScheme

GRID = 20
CLIP_STEPS = 30
CLIP_MAX_SHRINK = 0.5  # AutoAWQ's max_shrink: bounds go down to just above half of max|w|
_EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class FakeQuant:
    """Quantize-dequantize of a [K, N] weight in the deployed format."""

    scheme: WeightScheme
    block_size: int  # along K; 0 = per output channel (int8 only)
    symmetric: bool = True

    def __call__(self, w_kn: np.ndarray) -> np.ndarray:
        w = np.asarray(w_kn, np.float32)
        if self.scheme is WeightScheme.INT4:
            return int4.dequantize(int4.quantize(w, self.block_size, self.symmetric))
        if self.scheme is WeightScheme.NF4:
            codes, absmax = nf4.quantize_kn(w, self.block_size)
            return nf4.dequantize_kn(codes, absmax, self.block_size)
        scales = int8.scales_from_absmax(int8.absmax(w, 0, self.block_size))
        return int8.dequantize(int8.quantize(w, scales, 0, self.block_size), scales, 0, self.block_size)


def weight_mean(weights: Sequence[np.ndarray], block_size: int) -> np.ndarray:
    """AutoAWQ's w_mean [K]: |w| / max|w| per (block along K, output channel), averaged over
    every output channel of the group. ``block_size`` 0: the whole K is one block."""
    w = np.concatenate([np.abs(np.asarray(x, np.float32)) for x in weights], axis=1)  # [K, sum N]
    k, n = w.shape
    b = block_size or k
    kb = -(-k // b)
    padded = np.pad(w, ((0, kb * b - k), (0, 0))) if kb * b != k else w
    blocks = padded.reshape(kb, b, n)
    peak = blocks.max(axis=1, keepdims=True)
    normed = np.divide(blocks, peak, out=np.zeros_like(blocks), where=peak > 0)
    return normed.reshape(kb * b, n)[:k].mean(axis=1)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class ScaleResult:
    scales: np.ndarray  # [K] float32; all ones when RTN was best
    ratio: float | None  # the grid ratio chosen; None when RTN (s = 1) was best
    loss_rtn: float  # output MSE of plain round-to-nearest on the sampled rows
    loss: float  # output MSE with the chosen scales (<= loss_rtn)


OutputMap = Callable[[list[np.ndarray]], np.ndarray]
"""Maps the group's per-weight outputs [T, N_i] to the output the loss is measured on."""


def _concat(outs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(outs, axis=1)


def _group_loss(
    x: np.ndarray,
    weights: Sequence[np.ndarray],
    reference: np.ndarray,
    quants: Sequence[FakeQuant],
    s: np.ndarray,
    block: OutputMap,
) -> float:
    """MSE of ``block((x / s) @ Q_i(diag(s) W_i) for each i)`` against ``reference``."""
    xs = (x / s).astype(np.float32)
    outs = [xs @ q(w * s[:, None]) for w, q in zip(weights, quants, strict=True)]
    diff = block(outs) - reference
    return float(np.mean(np.square(diff, dtype=np.float64)))


def search_scales(
    x_rows: np.ndarray,
    x_mean: np.ndarray,
    weights: Sequence[np.ndarray],
    quant: FakeQuant | Sequence[FakeQuant],
    block: OutputMap | None = None,
) -> ScaleResult:
    """The AWQ scales for one group (see the module docstring).

    ``x_rows`` [T, K]: sampled input rows (the loss is evaluated on them); ``x_mean`` [K]: mean
    |x| over all calibration rows; ``weights``: the group's [K, N_i] float weights; ``quant``:
    the quantizer of every weight, or one per weight (a group may mix int8 and 4-bit layers);
    ``block``: the output the loss is measured on, from the per-weight outputs (default: the
    outputs side by side; AutoAWQ's module output where the pass can evaluate it)."""
    block = block or _concat
    quants = [quant] * len(weights) if isinstance(quant, FakeQuant) else list(quant)
    if len(quants) != len(weights):
        raise ValueError(f"{len(quants)} quantizers for {len(weights)} weights")
    x = np.asarray(x_rows, np.float32)
    k = x.shape[1]
    if any(w.shape[0] != k for w in weights) or x_mean.shape != (k,):
        raise ValueError(
            f"group shapes disagree: rows {x.shape}, x_mean {x_mean.shape}, weights {[w.shape for w in weights]}"
        )
    reference = block([x @ np.asarray(w, np.float32) for w in weights])
    ones = np.ones(k, np.float32)
    loss_rtn = _group_loss(x, weights, reference, quants, ones, block)
    xm = np.asarray(x_mean, np.float64)
    wm = weight_mean(weights, quants[0].block_size).astype(np.float64)
    best: tuple[float, float | None, np.ndarray] = (loss_rtn, None, ones)
    for i in range(GRID):
        r = i / GRID
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s = np.clip(np.power(xm, r) / (np.power(wm, 1 - r) + _EPS), _EPS, None)
            s = s / np.sqrt(s.max() * s.min())
        s = np.where(np.isfinite(s), s, 1.0).astype(np.float32)
        loss = _group_loss(x, weights, reference, quants, s, block)
        if loss < best[0]:
            best = (loss, r, s)
    return ScaleResult(scales=best[2], ratio=best[1], loss_rtn=loss_rtn, loss=best[0])


def search_clip(
    x_rows: np.ndarray, w_kn: np.ndarray, quant: FakeQuant, *, max_rows: int = 512, steps: int = CLIP_STEPS
) -> np.ndarray:
    """Per (block along K, output channel) the clipping bound [K_blocks, N] that minimizes the
    block's partial-product error ``||x_b (w_b - Q(clip(w_b)))||`` on up to ``max_rows`` rows
    (grid: max|w| * (1 - 0.5 i / steps), i = 0..steps-1; AutoAWQ's is steps = 10). Apply with
    :func:`apply_clip`."""
    if steps < 1:
        raise ValueError(f"clip steps must be >= 1, got {steps}")
    x = np.asarray(x_rows[:max_rows], np.float32)
    w = np.asarray(w_kn, np.float32)
    k, n = w.shape
    b = quant.block_size or k
    kb = -(-k // b)
    peak = np.stack([np.abs(w[i * b : (i + 1) * b]).max(axis=0) for i in range(kb)])  # [kb, N]
    best_err = np.full((kb, n), np.inf)
    best = peak.copy()
    for i in range(steps):
        bound = peak * (1 - CLIP_MAX_SHRINK * i / steps)
        wq = quant(apply_clip(w, bound, b))
        for j in range(kb):
            rows = slice(j * b, (j + 1) * b)
            err = np.square(x[:, rows] @ (w[rows] - wq[rows]), dtype=np.float64).mean(axis=0)  # [N]
            better = err < best_err[j]
            best_err[j] = np.where(better, err, best_err[j])
            best[j] = np.where(better, bound[j], best[j])
    return best


def apply_clip(w_kn: np.ndarray, bound: np.ndarray, block_size: int) -> np.ndarray:
    """``clip(w, -bound, bound)`` with bound [K_blocks, N] per block along K."""
    k = w_kn.shape[0]
    per_row = np.repeat(bound, block_size or k, axis=0)[:k]
    return np.clip(w_kn, -per_row, per_row)
