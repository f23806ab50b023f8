"""Calibration statistics: exact per-channel reductions, streamed, bounded, immutable, cached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from models import tiny

from onnx_compress import CalibrationDataError
from onnx_compress.calibration import ActivationStats, collect_stats, matmul_activations, model_fingerprint


def _model() -> ir.Model:
    return ir.serde.deserialize_model(tiny.mlp((32, 48, 16), opset=21))


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    # different row counts per sample, and one outlier channel (what AWQ/SmoothQuant look for)
    out = []
    for i in range(n):
        x = rng.standard_normal((5 + 3 * i, 32)).astype(np.float32)
        x[:, 3] *= 20
        out.append({"x": x})
    return out


def _reference(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    w0 = ir.convenience.get_const_tensor(model.graph.initializers["layers.0.weight"]).numpy()
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    return {"x": x, "h0": np.maximum(x @ w0.astype(np.float64), 0)}


def test_statistics_are_the_exact_reductions_over_every_row() -> None:
    model, feeds = _model(), _feeds(4)
    stats = collect_stats(model, iter(feeds))  # a one-pass iterator is enough
    assert set(stats.values) == set(matmul_activations(model)) == {"x", "h0"}
    for name, x in _reference(model, feeds).items():
        s = stats[name]
        assert s.count == len(x) == 5 + 8 + 11 + 14
        # x is the fed rows: only float64 summation order differs (1e-12). h0 comes from ORT's
        # float32 MatMul: 1e-5 relative covers float32 rounding of a 32-term dot product
        # (~32 * 6e-8), not a wrong reduction
        rtol = 1e-12 if name == "x" else 1e-5
        np.testing.assert_allclose(s.mean_abs, np.abs(x).mean(0), rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(s.max_abs, np.abs(x).max(0), rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(s.l2, np.linalg.norm(x, axis=0), rtol=rtol, atol=1e-6)
        assert s.minimum == pytest.approx(x.min(), rel=1e-5) and s.maximum == pytest.approx(x.max(), rel=1e-5)
    assert int(np.argmax(stats["x"].mean_abs)) == 3  # the outlier channel stands out
    assert stats.samples == 4 and stats.fingerprint == model_fingerprint(model)
    with pytest.raises(ValueError):
        stats["x"].mean_abs[0] = 1.0  # immutable


def test_row_sample_is_bounded_seeded_and_made_of_real_rows() -> None:
    model, feeds = _model(), _feeds(6)
    a = collect_stats(model, feeds, rows=16, seed=1)
    b = collect_stats(model, feeds, rows=16, seed=1)
    c = collect_stats(model, feeds, rows=16, seed=2)
    x = _reference(model, feeds)["x"].astype(np.float32)
    rows = a["x"].rows
    assert rows is not None and rows.shape == (16, 32)
    np.testing.assert_array_equal(rows, b["x"].rows)
    assert not np.array_equal(rows, c["x"].rows)
    assert all((x == r).all(axis=1).any() for r in rows)  # every kept row is a fed row
    assert len({r.tobytes() for r in rows}) == 16  # and no row is kept twice
    small = collect_stats(model, feeds[:1], rows=16)
    assert small["x"].rows is not None and small["x"].rows.shape == (5, 32)  # fewer rows than asked


def test_reservoir_is_uniform_over_the_stream() -> None:
    """Each of 200 streamed rows is kept with probability 20/200: over 300 seeds, the rows of the
    first and the last sample are kept about equally often (a biased reservoir keeps early rows)."""
    model = _model()
    feeds = [{"x": np.full((10, 32), float(i), np.float32)} for i in range(20)]
    kept = np.zeros(20)
    for seed in range(300):
        rows = collect_stats(model, feeds, ["x"], rows=20, seed=seed)["x"].rows
        assert rows is not None
        kept += np.bincount(rows[:, 0].astype(int), minlength=20)
    expected = 300 * 20 / 20  # 300 seeds x 20 slots over 20 samples
    # binomial(300 * 10 rows, 0.1) per sample: sd ~ 16; 5 sd keeps a correct reservoir passing
    assert np.abs(kept - expected).max() < 5 * np.sqrt(3000 * 0.1 * 0.9), kept


def test_save_and_load_round_trip_and_refuse_another_model(tmp_path: Path) -> None:
    model, feeds = _model(), _feeds(3)
    stats = collect_stats(model, feeds, rows=8)
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = ActivationStats.load(path, model_fingerprint(model))
    assert loaded.samples == 3 and set(loaded.values) == set(stats.values)
    for name in stats.values:
        for field in ("mean_abs", "max_abs", "sq_sum", "rows"):
            np.testing.assert_array_equal(getattr(loaded[name], field), getattr(stats[name], field))
        assert (loaded[name].minimum, loaded[name].count) == (stats[name].minimum, stats[name].count)
    other = ir.serde.deserialize_model(tiny.mlp((32, 48, 16), opset=21))
    other.graph.initializers["layers.0.weight"].const_value = ir.tensor(
        np.zeros((32, 48), np.float32), name="layers.0.weight"
    )
    with pytest.raises(CalibrationDataError, match="computed on another model"):
        ActivationStats.load(path, model_fingerprint(other))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationDataError, match="cannot read calibration statistics"):
        ActivationStats.load(tmp_path / "bad.npz")


def test_bad_samples_are_refused_with_what_the_model_takes() -> None:
    model = _model()
    x = np.zeros((2, 32), np.float32)
    cases = [
        ({"input": x}, "missing \\['x'\\], unknown \\['input'\\]; the model takes x: float32\\[batch, 32\\]"),
        ({"x": x.astype(np.float64)}, "input 'x' is float64; the model takes x: float32"),
        ({"x": x[0]}, "input 'x' has shape \\(32,\\)"),
        ({"x": np.zeros((2, 31), np.float32)}, "input 'x' has 31 on axis 1"),
    ]
    for sample, message in cases:
        with pytest.raises(CalibrationDataError, match=message):
            collect_stats(model, [sample])

    def empty() -> Iterator[dict[str, np.ndarray]]:
        yield from ()

    with pytest.raises(CalibrationDataError, match="no calibration samples"):
        collect_stats(model, empty())
