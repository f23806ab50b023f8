"""numerics.int4: ORT-exact blockwise INT4 (both of ORT's rounding rules) and its two layouts."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_qdq_matmul_4bits

from onnx_compress.numerics import int4


def _roundf64(x: np.ndarray) -> np.ndarray:
    """C roundf through float64, where x + 0.5 is exact for every float32."""
    x64 = x.astype(np.float64)
    return np.trunc(x64 + np.copysign(0.5, x64))


def test_roundf_is_c_roundf() -> None:
    # every float32 within 2000 ulps of each half-integer in [-20, 20], plus tiny values
    halves = np.arange(-40, 41, dtype=np.float32) / 2
    ulps = np.arange(-2000, 2001)
    near = (halves[:, None].view(np.int32) + ulps[None, :]).astype(np.int32).view(np.float32).reshape(-1)
    near = near[np.isfinite(near)]
    tiny = np.float32([0.0, -0.0, 1e-30, -1e-30, 0.49999997, -0.49999997, 0.5, -0.5, 2.5, -2.5])
    x = np.concatenate([near, tiny, np.random.default_rng(0).uniform(-20, 20, 100_000).astype(np.float32)])
    np.testing.assert_array_equal(int4.roundf(x), _roundf64(x))


def test_the_two_rounding_rules_differ_on_ties() -> None:
    # block [-8 s, -2.5 s, 3.5 s, ...]: symmetric scale s, so w * r = 8, 2.5, -3.5 after the sign flip
    w = np.float32([[8.0], [2.5], [-3.5], [0.5], [-0.5]])
    qdq = int4.quantize(w, 32, rounding=int4.Rounding.QDQ)
    nbits = int4.quantize(w, 32, rounding=int4.Rounding.MATMULNBITS)
    assert qdq.scales[0, 0] == np.float32(-1.0)  # scale = -m / 8, m = 8
    # x = w / scale = [-8, -2.5, 3.5, -0.5, 0.5]: QDQ rounds halves away from zero,
    # MatMulNBits rounds x + 8 (so halves go up)
    assert qdq.q[:, 0].tolist() == [-8, -3, 4, -1, 1]
    assert nbits.q[:, 0].tolist() == [-8, -2, 4, 0, 1]


def _ort_nbits(w: np.ndarray, bs: int, sym: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ORT's MatMulNBitsQuantizer core, called the way the quantizer calls it (K padded with zeros)."""
    rows, cols = w.shape
    kb = -(-rows // bs)
    wp = np.pad(w, ((0, kb * bs - rows), (0, 0)))
    packed = np.zeros((cols, kb, bs // 2), np.uint8)
    zp = np.zeros((cols, (kb + 1) // 2), np.uint8)
    scales = np.zeros((cols, kb), w.dtype)
    quantize_matmul_4bits(packed, np.ascontiguousarray(wp), scales, zp, bs, cols, rows, sym)
    return packed, scales, zp


def _ort_qdq(w: np.ndarray, bs: int, sym: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = w.shape
    kb = -(-rows // bs)
    packed = np.zeros((rows * cols + 1) // 2, np.uint8)
    zp = np.zeros((cols * kb + 1) // 2, np.uint8)
    scales = np.zeros((kb, cols), w.dtype)
    quantize_qdq_matmul_4bits(packed, w, scales, zp, bs, cols, rows, sym)
    return packed, scales, zp


SHAPES = [(256, 64), (300, 77), (64, 33), (1000, 96), (17, 40), (129, 8)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 32, 128])
@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_byte_identical_to_onnxruntime(k: int, n: int, block: int, symmetric: bool, dtype: type) -> None:
    # float16 weights hit exact ties (w * r = -2.5) often: the two rounding rules both matter
    rng = np.random.default_rng(k * 1000 + n)
    w = (rng.standard_normal((k, n)) * 0.05).astype(dtype)
    w[3, 5 % n] = 0.0
    w[min(k - 1, 40), :] = 0.0  # a zero row inside a block
    nb = int4.quantize(w, block, symmetric, dtype, int4.Rounding.MATMULNBITS)
    b, s, z = int4.pack_matmulnbits(nb)
    ob, os_, oz = _ort_nbits(w, block, symmetric)
    np.testing.assert_array_equal(b, ob)
    np.testing.assert_array_equal(s, os_)
    if not symmetric:
        np.testing.assert_array_equal(z, oz)
    qd = int4.quantize(w, block, symmetric, dtype, int4.Rounding.QDQ)
    data, zp = int4.pack_qdq(qd)
    pb, ps, pz = _ort_qdq(w, block, symmetric)
    np.testing.assert_array_equal(data, pb)
    np.testing.assert_array_equal(qd.scales, ps)
    if not symmetric:
        np.testing.assert_array_equal(zp, pz)


@pytest.mark.parametrize("symmetric", [True, False])
def test_dequantize_and_error(symmetric: bool) -> None:
    w = np.random.default_rng(5).standard_normal((4096, 128)).astype(np.float32)
    for block, low, high in ((128, 0.09, 0.105), (32, 0.075, 0.09)):
        qw = int4.quantize(w, block, symmetric)
        d = int4.dequantize(qw)
        rel = float(np.linalg.norm(d - w) / np.linalg.norm(w))
        # formats.md: int4 sym block 128 0.103, asym 0.100 on Gaussian weights; block 32 lower
        assert low < rel < high, (block, rel)
        # every value sits within half a step of its reconstruction, except that the symmetric
        # grid [-8, 7] maps the largest magnitude to -8, so values of the other sign beyond 7.5
        # steps are clipped to 7 (at most one step off)
        step = np.repeat(np.abs(qw.scales.astype(np.float32)), block, axis=0)
        err = np.abs(d - w)
        assert np.all(err <= step * (1 + 1e-6) + 1e-12)
        clipped = err > step / 2 * (1 + 1e-6) + 1e-12
        if symmetric:
            assert np.all(np.abs(w[clipped]) > 7.5 * step[clipped] * (1 - 1e-6))
        else:
            assert not clipped.any()
