"""2:4 mask rule and pattern check (numerics/sparse24.py)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.numerics import sparse24


def _groups_along(a: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(*moved.shape[:-1], -1, 4)


@pytest.mark.parametrize(("shape", "axis"), [((16, 12), 0), ((12, 16), 1), ((3, 8, 5), 1), ((6, 8, 3, 3), 1)])
def test_mask_keeps_the_two_largest_of_each_group_along_the_axis(shape: tuple[int, ...], axis: int) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    keep = sparse24.mask(sparse24.magnitude_scores(w), axis, w)
    g_keep, g_w = _groups_along(keep, axis), _groups_along(np.abs(w), axis)
    assert (g_keep.sum(-1) == 2).all()
    # every kept |w| >= every dropped |w| in its group (a brute-force statement of top-2)
    kept_min = np.where(g_keep, g_w, np.inf).min(-1)
    dropped_max = np.where(g_keep, -np.inf, g_w).max(-1)
    assert (kept_min >= dropped_max).all()
    pruned = sparse24.prune(w, keep)
    assert pruned.dtype == w.dtype and sparse24.violations(sparse24.zeros(pruned), axis) == (0, w.size // 4)


def test_ties_are_deterministic_and_pruning_is_idempotent() -> None:
    w = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, -3.0]], np.float32)
    keep = sparse24.mask(sparse24.magnitude_scores(w), 1, w)
    # equal magnitudes: the lower indices win; a group with fewer than 2 non-zeros keeps them
    assert keep.tolist() == [[True, True, False, False], [True, True, False, False], [True, False, False, True]]
    pruned = sparse24.prune(w, keep)
    again = sparse24.prune(pruned, sparse24.mask(sparse24.magnitude_scores(pruned), 1, pruned))
    assert np.array_equal(again, pruned)


def test_wanda_weighs_magnitudes_by_the_input_channel_norm() -> None:
    # one group along K = axis 0: magnitude keeps rows 0 and 1; with a large activation norm on
    # rows 2 and 3, wanda keeps those instead
    w = np.array([[4.0], [3.0], [2.0], [1.0]], np.float32)
    l2 = np.array([1.0, 1.0, 10.0, 10.0], np.float32)
    mag = sparse24.mask(sparse24.magnitude_scores(w), 0, w)
    wanda = sparse24.mask(sparse24.wanda_scores(w, l2, 0), 0, w)
    assert mag[:, 0].tolist() == [True, True, False, False]
    assert wanda[:, 0].tolist() == [False, False, True, True]
    # a dead channel (norm 0) ties with a zero weight: the larger |w| is kept, so the result
    # is still idempotent
    w2 = np.array([[0.0], [5.0], [0.0], [1.0]], np.float32)
    keep = sparse24.mask(sparse24.wanda_scores(w2, np.array([1, 0, 1, 1], np.float32), 0), 0, w2)
    assert keep[:, 0].tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="one activation norm per input channel"):
        sparse24.wanda_scores(w, l2[:3], 0)


def test_violations_count_groups_and_zero_points_define_zeros() -> None:
    q = np.array([[8, 8, 3, 9], [8, 1, 2, 8]], np.uint8)  # uint4 values with zero point 8
    assert sparse24.violations(sparse24.zeros(q, 8), 1) == (0, 2)
    assert sparse24.violations(sparse24.zeros(q), 1) == (2, 2)  # raw values: no zeros at all
    with pytest.raises(ValueError, match="not a multiple of 4"):
        sparse24.violations(np.zeros((6, 3), bool), 0)
    with pytest.raises(ValueError, match="does not match"):
        sparse24.prune(np.zeros((4, 4), np.float32), np.ones((4, 2), bool))


def test_bfloat16_and_float16_weights_keep_their_dtype() -> None:
    import ml_dtypes

    rng = np.random.default_rng(1)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        w = rng.standard_normal((8, 4)).astype(dtype)
        pruned = sparse24.prune(w, sparse24.mask(sparse24.magnitude_scores(w), 0, w))
        assert pruned.dtype == w.dtype
        assert sparse24.violations(sparse24.zeros(pruned), 0)[0] == 0
        kept = pruned.astype(np.float32) != 0
        assert np.array_equal(pruned.astype(np.float32)[kept], w.astype(np.float32)[kept])
