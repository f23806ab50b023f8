"""Layer-input capture: the rows entering each MatMul/Gemm weight, sampled, saved and reloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from models import tiny

from onnx_compress import CalibrationDataError
from onnx_compress.calibration import LayerInputs, capture_layer_inputs
from onnx_compress.quantize.sites import find_sites


def test_rows_are_the_activations_feeding_each_weight() -> None:
    model = ir.serde.deserialize_model(tiny.mlp((32, 48, 16), opset=21))
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    captured = capture_layer_inputs(model, [{"x": x}], max_rows=64)
    sites = find_sites(model.graph)
    first, second = (captured.for_uses(s.uses, s.k) for s in sites)
    assert first is not None and second is not None
    np.testing.assert_array_equal(first, x)  # the graph input itself
    w0 = ir.convenience.get_const_tensor(sites[0].value).numpy()
    np.testing.assert_allclose(second, np.maximum(x @ w0, 0), rtol=1e-5, atol=1e-6)  # Relu(x @ W0)
    assert captured.samples == 1


def test_rows_are_subsampled_seeded_and_read_only(tmp_path: Path) -> None:
    model = ir.serde.deserialize_model(tiny.mlp((32, 48, 16), opset=21))
    feeds = [{"x": np.random.default_rng(i).standard_normal((40, 32)).astype(np.float32)} for i in range(3)]
    a = capture_layer_inputs(model, feeds, max_rows=50, seed=3)
    b = capture_layer_inputs(model, feeds, max_rows=50, seed=3)
    assert all(v.shape[0] == 50 for v in a.rows.values())
    for key in a.rows:
        np.testing.assert_array_equal(a.rows[key], b.rows[key])
        # every sampled row is one of the 120 real rows, in order
        allx = np.concatenate([f["x"] for f in feeds])
        if key == "x":
            assert all((allx == row).all(axis=1).any() for row in a.rows[key])
    with pytest.raises(ValueError):
        a.rows["x"][0, 0] = 1.0
    a.save(tmp_path / "rows.npz")
    c = LayerInputs.load(tmp_path / "rows.npz")
    assert c.samples == 3 and c.rows.keys() == a.rows.keys()
    for key in a.rows:
        np.testing.assert_array_equal(c.rows[key], a.rows[key])


def test_gemm_with_transposed_activations() -> None:
    model = ir.serde.deserialize_model(tiny.gemm(k=24, n=16, trans_a=1))
    x = np.random.default_rng(0).standard_normal((24, 5)).astype(np.float32)
    captured = capture_layer_inputs(model, [{"x": x}])
    (site,) = find_sites(model.graph)
    np.testing.assert_array_equal(captured.for_uses(site.uses, site.k), x.T)  # rows along K


def test_bad_file_and_sample() -> None:
    with pytest.raises(CalibrationDataError, match="cannot read layer inputs"):
        LayerInputs.load("/nonexistent/rows.npz")
    model = ir.serde.deserialize_model(tiny.mlp((32, 48, 16), opset=21))
    with pytest.raises(CalibrationDataError, match=r"does not fit the model|does not match the model"):
        capture_layer_inputs(model, [{"x": np.zeros((2, 7), np.float32)}])
