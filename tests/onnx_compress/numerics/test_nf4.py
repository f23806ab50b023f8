"""numerics.nf4: bitsandbytes-exact codebook, rounding, nibble order and NF4MatMul's layout."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.capi._pybind_state import quantize_matmul_bnb4

from onnx_compress.numerics import nf4


def test_codebook_is_bitsandbytes_nf4() -> None:
    assert nf4.CODEBOOK.dtype == np.float32 and nf4.CODEBOOK.shape == (16,)
    assert nf4.CODEBOOK[0] == -1.0 and nf4.CODEBOOK[nf4.ZERO_CODE] == 0.0 and nf4.CODEBOOK[15] == 1.0
    assert np.all(np.diff(nf4.CODEBOOK) > 0)
    # thresholds sit between neighbouring codes (bitsandbytes uses the midpoints)
    mid = (nf4.CODEBOOK[:-1].astype(np.float64) + nf4.CODEBOOK[1:]) / 2
    np.testing.assert_allclose(nf4.THRESHOLDS, mid, atol=1e-7)


def test_every_code_round_trips() -> None:
    for absmax in (1.0, 0.037, 250.0):
        # a block holding every code (absmax = |-1| * absmax appears via code 0)
        w = (nf4.CODEBOOK * np.float32(absmax))[None, :]
        codes, am = nf4.quantize_blocks(w, 16)
        assert am[0, 0] == np.float32(absmax)
        np.testing.assert_array_equal(codes[0], np.arange(16))
        np.testing.assert_array_equal(nf4.dequantize_blocks(codes, am, 16), w)


def test_threshold_ties_follow_strict_greater_than() -> None:
    # exactly on a threshold -> the lower code; one float32 ulp above -> the upper code
    x = np.concatenate([[1.0], nf4.THRESHOLDS, np.nextafter(nf4.THRESHOLDS, np.float32(2))]).astype(np.float32)
    codes, am = nf4.quantize_blocks(x[None, :], 64)
    assert am[0, 0] == 1.0
    np.testing.assert_array_equal(codes[0, 1:16], np.arange(15))
    np.testing.assert_array_equal(codes[0, 16:], np.arange(1, 16))


def test_zero_block_and_padding() -> None:
    codes, am = nf4.quantize_blocks(np.zeros((1, 5), np.float32), 4)
    assert am.tolist() == [[0.0, 0.0]] and np.all(codes == nf4.ZERO_CODE)
    assert nf4.pack(np.array([15, 0, 3], np.uint8)).tolist() == [0xF0, 0x37]  # high nibble first, pad = 7
    assert nf4.unpack(np.array([0xF0, 0x37], np.uint8), 3).tolist() == [15, 0, 3]


@pytest.mark.parametrize(("k", "n", "block"), [(128, 40, 64), (96, 40, 64), (256, 16, 256), (130, 7, 32), (33, 5, 64)])
def test_bit_exact_with_onnxruntime_bnb4_quantizer(k: int, n: int, block: int) -> None:
    rng = np.random.default_rng(k * n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[:5, 0] = 0.0
    packed = np.zeros((n * k + 1) // 2, np.uint8)
    absmax = np.zeros((n * k + block - 1) // block, np.float32)
    quantize_matmul_bnb4(packed, np.ascontiguousarray(w.T), absmax, block, 1, n, k)  # 1 = NF4
    # MatMulBnb4's layout: W^T [N, K] flattened, blocks over the flat array
    codes, am = nf4.quantize_blocks(w.T.reshape(-1), block)
    np.testing.assert_array_equal(nf4.pack(codes), packed)
    np.testing.assert_array_equal(am, absmax)
    # NF4MatMul's layout (rows padded to whole blocks) is the same bytes when K % block == 0
    b, a = nf4.quantize(w, block)
    assert b.shape == (n, -(-k // block) * block // 2) and a.shape == (n, -(-k // block))
    if k % block == 0:
        np.testing.assert_array_equal(b.reshape(-1), packed)
        np.testing.assert_array_equal(a.reshape(-1), absmax)


def test_layout_round_trip_and_padding_codes() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((100, 9)).astype(np.float32)
    b, a = nf4.quantize(w, 64)
    assert b.shape == (9, 64) and a.shape == (9, 2)
    codes = nf4.unpack(b, 128)
    assert np.all(codes[:, 100:] == nf4.ZERO_CODE)
    w2 = nf4.dequantize(b, a, 100, 64)
    assert w2.shape == w.shape
    # re-quantizing the dequantized weight is a fixed point
    b2, a2 = nf4.quantize(w2, 64)
    np.testing.assert_array_equal(b2, b)
    np.testing.assert_array_equal(a2, a)


@pytest.mark.parametrize(("block", "low", "high"), [(64, 0.088, 0.096), (128, 0.092, 0.099)])
def test_relative_error_on_gaussian_weights(block: int, low: float, high: float) -> None:
    # formats.md measured 0.092 (block 64) and 0.0955 (block 128) on Gaussian weights.
    w = np.random.default_rng(2).standard_normal((4096, 256)).astype(np.float32)
    b, a = nf4.quantize(w, block)
    rel = np.linalg.norm(nf4.dequantize(b, a, 4096, block) - w) / np.linalg.norm(w)
    assert low < rel < high
