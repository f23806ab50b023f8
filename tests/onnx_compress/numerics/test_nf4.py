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
    # NF4MatMul's panel layout holds the same codes and absmax values
    b, a = nf4.quantize(w, block)
    k_pad, n_pad = -(-k // block) * block, -(-n // 32) * 32
    assert b.shape == (n_pad // 32, k_pad, 16) and a.shape == (n_pad // 32, k_pad // block, 32)
    codes_nk, absmax_nb = nf4.panel_unpack(b, a, k, n)
    codes_flat, _ = nf4.quantize_blocks(w.T.reshape(-1), block)
    if k % block == 0:  # then MatMulBnb4's flat blocks are per-channel blocks too
        np.testing.assert_array_equal(codes_nk.reshape(-1), codes_flat)
        np.testing.assert_array_equal(absmax_nb.reshape(-1), absmax)


def test_panel_layout_nibbles_and_padding() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((100, 45)).astype(np.float32)
    b, a = nf4.quantize(w, 64)
    assert b.shape == (2, 128, 16) and a.shape == (2, 2, 32)
    codes, _ = nf4.quantize_blocks(w.T, 64)  # [N, K]
    # B[p, k, i]: channel 32p + i in the low nibble, channel 32p + 16 + i in the high nibble
    assert b[0, 5, 3] == codes[3, 5] | (codes[19, 5] << 4)
    assert b[1, 99, 12] & 0x0F == codes[44, 99] and b[1, 99, 12] >> 4 == nf4.ZERO_CODE  # n = 60 > N
    assert np.all(b[:, 100:, :] == nf4.ZERO_CODE | (nf4.ZERO_CODE << 4))  # k >= K
    assert np.all(a[1, :, 13:] == 0)  # absmax of padding channels (n >= 45)
    w2 = nf4.dequantize(b, a, 100, 45, 64)
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
    rel = np.linalg.norm(nf4.dequantize(b, a, 4096, 256, block) - w) / np.linalg.norm(w)
    assert low < rel < high


def test_encoder_tables_are_safe() -> None:
    # every bucket of width 1/32 holds at most one threshold, none within 1e-3 of a bucket edge,
    # so an index off by one float32 rounding cannot change a code
    t = nf4.THRESHOLDS.astype(np.float64) * 32
    assert np.all(np.diff(np.floor(t)) >= 1)
    assert np.min(np.abs(t - np.rint(t))) > 1e-3 * 32


def test_encode_equals_threshold_count() -> None:
    rng = np.random.default_rng(3)
    t = nf4.THRESHOLDS
    edges = np.concatenate([t, np.nextafter(t, np.float32(2)), np.nextafter(t, np.float32(-2))])
    x = np.concatenate(
        [
            rng.uniform(-1, 1, 200_000).astype(np.float32),
            edges,
            (np.arange(-32, 33) / np.float32(32)).astype(np.float32),  # bucket edges
            np.float32([-1.0, 1.0, 0.0, -0.0, np.nextafter(1, 2), np.nextafter(-1, -2)]),
        ]
    ).astype(np.float32)
    np.testing.assert_array_equal(nf4.encode(x), np.searchsorted(t, x, side="left"))


@pytest.mark.parametrize(("k", "n", "block"), [(256, 48, 64), (200, 33, 64), (40, 7, 64), (512, 64, 128)])
def test_quantize_kn_matches_blocks_along_k(k: int, n: int, block: int) -> None:
    w = np.random.default_rng(k + n).standard_normal((k, n)).astype(np.float32)
    codes, absmax = nf4.quantize_kn(w, block)
    ref_codes, ref_absmax = nf4.quantize_blocks(w.T, block)
    np.testing.assert_array_equal(codes, ref_codes.T)
    np.testing.assert_array_equal(absmax, ref_absmax.T)
    np.testing.assert_array_equal(
        nf4.dequantize_kn(codes, absmax, block), nf4.dequantize_blocks(ref_codes, ref_absmax, block).T
    )
    b, a = nf4.panel_pack_kn(codes, absmax, block)
    b2, a2 = nf4.panel_pack(ref_codes, ref_absmax, k, n, block)
    np.testing.assert_array_equal(b, b2)
    np.testing.assert_array_equal(a, a2)
    if k % block == 0:  # MatMulBnb4's layout from the same codes
        packed, am = nf4.bnb4_pack_kn(codes, absmax, block)
        np.testing.assert_array_equal(packed, nf4.pack(ref_codes.reshape(-1)))
        np.testing.assert_array_equal(am, ref_absmax.reshape(-1))


def test_double_quantization() -> None:
    w = (np.random.default_rng(4).standard_normal((1000, 300)) * 0.02).astype(np.float32)
    _, am = nf4.quantize(w, 64)
    codes, scale2, offset = nf4.double_quantize(am)
    assert codes.dtype == np.int8 and codes.shape == am.shape
    assert scale2.dtype == np.float32 and scale2.shape == (-(-am.size // nf4.DQ_BLOCK),)
    assert offset == np.float32(am.astype(np.float64).mean())
    decoded = nf4.double_dequantize(codes, scale2, offset)
    # linear 8-bit codes: each value within half a step (scale2 / 2) of the original
    step = np.repeat(scale2, nf4.DQ_BLOCK)[: am.size].reshape(am.shape)
    assert np.all(np.abs(decoded - am) <= step / 2 * (1 + 1e-5) + 1e-9)
    assert np.abs(codes).max() == 127
    # decoding is exactly code * scale2 + offset in float32
    flat = codes.reshape(-1).astype(np.float32) * np.repeat(scale2, nf4.DQ_BLOCK)[: am.size] + offset
    np.testing.assert_array_equal(decoded.reshape(-1), flat)
    # all-equal absmax: a zero scale2 and codes 0, decoding to the offset itself
    c0, s0, o0 = nf4.double_quantize(np.full((2, 3, 32), 0.5, np.float32))
    assert np.all(c0 == 0) and np.all(s0 == 0) and np.all(nf4.double_dequantize(c0, s0, o0) == 0.5)
