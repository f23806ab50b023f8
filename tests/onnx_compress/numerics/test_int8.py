"""numerics.int8: the seed's formula, exactly."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from onnx_compress.numerics import int8


def test_known_vector_per_channel() -> None:
    # Column 0: absmax 1.27 -> scale 0.01; column 1: all zero -> scale 1, q 0.
    w = np.array([[1.27, 0.0], [-0.5, 0.0], [0.26, 0.0], [-1.27, 0.0]], np.float32)
    s = int8.scales_from_absmax(int8.absmax(w, axis=0), np.float32)
    assert s.shape == (1, 2)
    np.testing.assert_array_equal(s, np.array([[np.float32(1.27) / np.float32(127), 1.0]], np.float32))
    q = int8.quantize(w, s, axis=0)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q[:, 0], [127, -50, 26, -127])
    np.testing.assert_array_equal(q[:, 1], 0)


def test_round_half_to_even() -> None:
    # 2.5 and 3.5 units of the scale 1: ONNX QuantizeLinear rounds half to even -> 2 and 4.
    w = np.array([[127.0], [2.5], [3.5], [-2.5]], np.float32)
    s = int8.scales_from_absmax(int8.absmax(w, 0))
    np.testing.assert_array_equal(int8.quantize(w, s, 0)[:, 0], [127, 2, 4, -2])


@pytest.mark.parametrize("block", [0, 16, 32])
@pytest.mark.parametrize("axis", [0, 1])
def test_error_bound_and_range(axis: int, block: int) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((100, 37)).astype(np.float32)  # K=100 is not a multiple of any block
    s = int8.scales_from_absmax(int8.absmax(w, axis, block))
    k = w.shape[axis]
    groups = k if block == 0 else block
    assert s.shape[axis] == math.ceil(k / groups)
    q = int8.quantize(w, s, axis, block)
    assert q.shape == w.shape and np.abs(q.astype(int)).max() == 127
    deq = int8.dequantize(q, s, axis, block)
    # Round to nearest: every element within half a step of its group's scale (up to the
    # float32 rounding of w / scale, a relative 2^-23 of the quotient <= 127).
    per_elem_scale = np.repeat(s, groups, axis=axis).take(np.arange(k), axis=axis)
    assert np.all(np.abs(deq - w) <= per_elem_scale * (0.5 + 127 * 2**-23))
    # The largest |w| of each group is reproduced exactly up to float rounding of the scale.
    assert np.allclose(np.abs(deq).max(axis=axis), np.abs(w).max(axis=axis), rtol=1e-6)


def test_zero_stays_zero_and_requantization_is_a_fixed_point() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    w[::4] = 0.0  # e.g. a pruned pattern
    s = int8.scales_from_absmax(int8.absmax(w, 0, 16))
    q = int8.quantize(w, s, 0, 16)
    assert np.all(q[::4] == 0)
    deq = int8.dequantize(q, s, 0, 16)
    assert np.all(deq[::4] == 0.0)
    s2 = int8.scales_from_absmax(int8.absmax(deq, 0, 16))
    np.testing.assert_array_equal(int8.quantize(deq, s2, 0, 16), q)


@pytest.mark.parametrize(
    ("k", "block", "low", "high"),
    [
        # Theory for Gaussian weights: scale = E[max|w|]/127, error = scale/sqrt(12) with the
        # max element exact. K=4096: E[max] ~ 3.9-4.0 sigma -> 0.87%; block 32: 2.07 sigma ->
        # 0.53%. The bounds are two-sided so that a too-good result (e.g. no rounding at all)
        # fails as well as a too-bad one.
        (4096, 0, 0.0080, 0.0095),
        (4096, 32, 0.0050, 0.0056),
        (512, 0, 0.0068, 0.0082),
    ],
)
def test_relative_error_on_gaussian_weights(k: int, block: int, low: float, high: float) -> None:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((k, 256)) * 0.02).astype(np.float32)
    s = int8.scales_from_absmax(int8.absmax(w, 0, block))
    deq = int8.dequantize(int8.quantize(w, s, 0, block), s, 0, block)
    rel = np.linalg.norm(deq - w) / np.linalg.norm(w)
    assert low < rel < high


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_low_precision_scales(dtype: type) -> None:
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((64, 16)) * 0.02).astype(dtype)
    s = int8.scales_from_absmax(int8.absmax(w, 0), dtype)
    assert s.dtype == np.dtype(dtype)
    q = int8.quantize(w, s, 0)
    # q is computed with the stored (rounded) scale: still within half a step (+ clipping of
    # the max element when the stored scale rounded down, at most 1/2 step more).
    deq = int8.dequantize(q, s, 0, dtype=np.float32)
    assert np.all(np.abs(deq - w.astype(np.float32)) <= s.astype(np.float32))


def test_tiny_scales_never_underflow_to_zero() -> None:
    w = np.full((32, 1), 1e-9, np.float32)
    s = int8.scales_from_absmax(int8.absmax(w, 0), np.float16)
    assert s[0, 0] > 0
    q = int8.quantize(w, s, 0)
    assert np.isfinite(int8.dequantize(q, s, 0)).all()


def test_rank3_weights_group_per_batch() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 40, 8)).astype(np.float32)
    w[1] *= 100  # a batch with much larger values must not share scales with the others
    s = int8.scales_from_absmax(int8.absmax(w, 1))
    assert s.shape == (3, 1, 8)
    deq = int8.dequantize(int8.quantize(w, s, 1), s, 1)
    for b in range(3):
        assert np.linalg.norm(deq[b] - w[b]) / np.linalg.norm(w[b]) < 0.01


def test_bad_arguments() -> None:
    w = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="axis 2 out of range"):
        int8.absmax(w, 2)
    with pytest.raises(ValueError, match="block_size must be 0"):
        int8.absmax(w, 0, -1)


@pytest.mark.parametrize("block", [0, 32])
def test_int8matmul_panel_layout(block: int) -> None:
    rng = np.random.default_rng(6)
    w = rng.standard_normal((100, 45)).astype(np.float32)
    s = int8.scales_from_absmax(int8.absmax(w, 0, block))
    q = int8.quantize(w, s, 0, block)
    b, sp = int8.to_int8matmul(q, s, 0, block)
    k_pad = 100 if block == 0 else 128
    assert b.shape == (2, k_pad, 32) and b.dtype == np.int8 and sp.shape == (2, s.shape[0], 32)
    assert b[1, 7, 3] == q[7, 35] and sp[1, 0, 3] == s[0, 35]  # channel 32 * 1 + 3
    assert np.all(b[:, 100:] == 0) and np.all(b[1, :, 13:] == 0) and np.all(sp[1, :, 13:] == 0)  # padding
    q2, s2 = int8.from_int8matmul(b, sp, 100, 45)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(s2, s)
    # the Gemm transB=1 orientation ([N, K] weights) gives the same layout
    b_t, sp_t = int8.to_int8matmul(np.ascontiguousarray(q.T), np.ascontiguousarray(s.T), 1, block)
    np.testing.assert_array_equal(b_t, b)
    np.testing.assert_array_equal(sp_t, sp)
