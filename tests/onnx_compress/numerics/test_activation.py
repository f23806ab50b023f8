"""Static activation ranges (numerics/activation.py) and the histogram they are read from."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.calibration.stats import _Histogram
from onnx_compress.numerics import activation


def _histogram(x: np.ndarray, bins: int = 16384, chunks: int = 7) -> _Histogram:
    h = _Histogram(bins)
    for part in np.array_split(x, chunks):
        h.add(np.abs(part))
    return h


def test_histogram_grows_its_range_and_keeps_every_count() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000), 40 * rng.standard_normal(100)]).astype(np.float32)
    h = _histogram(x, bins=1024, chunks=11)  # later chunks exceed the first chunk's range
    assert h.counts.sum() == x.size
    assert h.top >= np.abs(x).max()
    # each count sits in the bin of its value (to one bin of the merging's resolution)
    edges = np.linspace(0, h.top, 1025)
    direct, _ = np.histogram(np.abs(x), bins=edges)
    assert np.abs(np.cumsum(direct) - np.cumsum(h.counts)).max() <= 0.01 * x.size


def test_percentile_matches_numpy_within_a_bin() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    h = _histogram(x)
    width = h.top / len(h.counts)
    for p in (50.0, 99.0, 99.99):
        got = activation.amax_percentile(h.counts, h.top, p)
        assert abs(got - np.percentile(np.abs(x), p)) <= 2 * width, p
    # the 100th percentile is the largest |x| (the histogram's range may extend beyond it)
    assert abs(activation.amax_percentile(h.counts, h.top, 100.0) - np.abs(x).max()) <= width
    with pytest.raises(ValueError, match="percentile must be in"):
        activation.amax_percentile(h.counts, h.top, 0.0)


def test_entropy_clips_outliers_and_keeps_a_clean_range() -> None:
    rng = np.random.default_rng(2)
    clean = rng.standard_normal(2_000_000).astype(np.float32)
    h = _histogram(clean)
    amax = activation.amax_entropy(h.counts, h.top)
    # TensorRT's KL threshold on a Gaussian lands between the bulk and the extreme (about 3-5 sigma)
    assert 2.5 < amax < np.abs(clean).max()
    spiky = clean.copy()
    spiky[:20] *= 100  # 20 outliers out of 2M: the range must not follow them
    hs = _histogram(spiky)
    amax_spiky = activation.amax_entropy(hs.counts, hs.top)
    assert amax_spiky < 0.1 * np.abs(spiky).max()

    # and the clipped range quantizes the bulk far better than min-max would
    def err(a: float) -> float:
        q = activation.fake_quantize(spiky, float(activation.scale_from_amax(a)))
        return float(np.linalg.norm((q - spiky)[20:]) / np.linalg.norm(spiky[20:]))

    assert err(amax_spiky) < 0.2 * err(float(np.abs(spiky).max()))


def test_fake_quantize_is_quantize_dequantize_with_saturation() -> None:
    s = float(activation.scale_from_amax(127.0))  # scale 1
    x = np.array([-300.0, -128.4, -0.5, 0.5, 1.5, 2.5, 126.6, 300.0], np.float32)
    # round half to even, saturate to [-128, 127] as QuantizeLinear does
    assert activation.fake_quantize(x, s).tolist() == [-128.0, -128.0, -0.0, 0.0, 2.0, 2.0, 127.0, 127.0]
    assert activation.scale_from_amax(0.0) == 1.0  # an all-zero activation
