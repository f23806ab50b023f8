"""AWQ scale and clip search on synthetic groups with outlier channels (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.awq.search import CLIP_STEPS, FakeQuant, apply_clip, search_clip, search_scales, weight_mean
from onnx_compress.recipe import Awq, WeightScheme

INT4 = FakeQuant(WeightScheme.INT4, 128)
NF4 = FakeQuant(WeightScheme.NF4, 64)
INT8 = FakeQuant(WeightScheme.INT8, 0)


def _group(k: int = 512, n: tuple[int, ...] = (192, 64), rows: int = 256, outliers: int = 5, seed: int = 0):  # type: ignore[no-untyped-def]
    """LLM-like activations: a few input channels ~30x larger than the rest (awq.md's setup)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    salient = rng.choice(k, outliers, replace=False)
    x[:, salient] *= 30
    weights = [(rng.standard_normal((k, m)) * 0.02).astype(np.float32) for m in n]
    return x, np.abs(x).mean(axis=0), weights, salient


@pytest.mark.parametrize("quant", [INT4, NF4, INT8], ids=["int4-b128", "nf4-b64", "int8-channel"])
def test_awq_beats_rtn_on_outlier_channels(quant: FakeQuant) -> None:
    x, x_mean, weights, salient = _group()
    result = search_scales(x, x_mean, weights, quant)
    assert result.ratio is not None and result.loss <= result.loss_rtn
    # the paper's synthetic layer: AWQ about halves RTN's error; demand a clear gain (< 0.8x)
    assert result.loss < 0.8 * result.loss_rtn, (result.loss, result.loss_rtn)
    # salient channels are scaled up relative to the median channel
    assert np.median(result.scales[salient]) > 2 * np.median(result.scales)
    # the float product is unchanged by the scaling itself (what the fold relies on)
    s = result.scales
    np.testing.assert_allclose((x / s) @ (weights[0] * s[:, None]), x @ weights[0], rtol=1e-4, atol=1e-4)


def test_never_worse_than_rtn_without_outliers() -> None:
    for seed in range(3):
        x, x_mean, weights, _ = _group(outliers=0, seed=seed)
        result = search_scales(x, x_mean, weights, INT4)
        assert result.loss <= result.loss_rtn
        if result.ratio is None:
            np.testing.assert_array_equal(result.scales, np.ones(512, np.float32))


def test_weight_mean_per_block_then_over_channels() -> None:
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal((100, 7)).astype(np.float32), rng.standard_normal((100, 3)).astype(np.float32)]
    w = np.abs(np.concatenate(weights, axis=1))
    expected = np.empty(100)
    for k in range(100):
        block = slice((k // 32) * 32, min((k // 32 + 1) * 32, 100))  # last block is 4 rows
        expected[k] = np.mean(w[k] / w[block].max(axis=0))
    np.testing.assert_allclose(weight_mean(weights, 32), expected, rtol=1e-6)
    np.testing.assert_allclose(weight_mean(weights, 0), np.mean(w / w.max(axis=0), axis=1), rtol=1e-6)


def test_clip_search_lowers_each_blocks_error() -> None:
    x, _, weights, _ = _group(n=(48,))
    w = weights[0]
    w[7, 3] = 0.5  # one large weight stretches its block's range
    bound = search_clip(x, w, INT4)
    peak = np.stack([np.abs(w[i * 128 : (i + 1) * 128]).max(axis=0) for i in range(4)])
    lowest = 1 - 0.5 * (CLIP_STEPS - 1) / CLIP_STEPS  # the default grid's smallest bound
    assert bound.shape == (4, 48) and (bound <= peak + 1e-7).all() and (bound >= lowest * peak - 1e-7).all()
    clipped = INT4(apply_clip(w, bound, 128))
    plain = INT4(w)
    for j in range(4):
        rows = slice(j * 128, (j + 1) * 128)
        err_c = np.square(x[:, rows] @ (w[rows] - clipped[rows])).mean(axis=0)
        err_p = np.square(x[:, rows] @ (w[rows] - plain[rows])).mean(axis=0)
        assert (err_c <= err_p * (1 + 1e-6)).all()
    assert (bound < peak).any()  # some block profits from clipping


def test_finer_clip_grid_contains_autoawqs_and_is_never_worse_per_block() -> None:
    # 30 steps of max|w| / 60 hold AutoAWQ's 10 steps of max|w| / 20 (every third), over the same
    # range, so each block's chosen error can only go down; exact comparison on the same rows
    x, _, weights, _ = _group(n=(40,))
    w = weights[0]
    coarse, fine = search_clip(x, w, INT4, steps=10), search_clip(x, w, INT4, steps=30)
    peak = np.stack([np.abs(w[i * 128 : (i + 1) * 128]).max(axis=0) for i in range(4)])
    grid = 1 - np.arange(10) / 20  # AutoAWQ's: 1, 0.95, ..., 0.55
    assert (np.abs((coarse / peak)[..., None] - grid).min(axis=-1) < 1e-6).all()
    assert (fine >= peak * (1 - 0.5 * 29 / 30) - 1e-7).all()
    for j in range(4):
        rows = slice(j * 128, (j + 1) * 128)
        errs = [
            np.square(x[:, rows] @ (w[rows] - INT4(apply_clip(w, b, 128))[rows]), dtype=np.float64).mean(axis=0)
            for b in (coarse, fine)
        ]
        assert (errs[1] <= errs[0] * (1 + 1e-6)).all()
    assert (fine != coarse).any()  # the finer grid moves some bound
    assert Awq().clip_steps == CLIP_STEPS  # the recipe's default is the search's (no import cycle to share it)
    with pytest.raises(ValueError, match="clip steps must be >= 1, got 0"):
        search_clip(x, w, INT4, steps=0)


def test_group_shapes_are_checked() -> None:
    x, x_mean, weights, _ = _group()
    with pytest.raises(ValueError, match="group shapes disagree"):
        search_scales(x[:, :100], x_mean, weights, INT4)
