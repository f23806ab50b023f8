"""The Python API: compress() in memory, compress_file() on paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import tiny

import onnx_compress as oc


def test_compress_accepts_proto_ir_and_path(tmp_path: Path) -> None:
    proto = tiny.mlp((64, 128, 64))
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    for source in (proto, ir.serde.deserialize_model(proto), path, str(path)):
        result = oc.compress(source)
        assert len(result.report.quantized) == 2
        assert result.report.verification is not None and result.report.verification["passed"]
        assert sum(n.op_type == "DequantizeLinear" for n in result.model.graph) == 2


def test_compress_does_not_modify_the_given_model() -> None:
    model = ir.serde.deserialize_model(tiny.mlp((64, 128, 64)))
    before = onnx.printer.to_text(ir.serde.serialize_model(model))
    weights = {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}
    oc.compress(model)
    assert onnx.printer.to_text(ir.serde.serialize_model(model)) == before
    for k, v in model.graph.initializers.items():
        np.testing.assert_array_equal(v.const_value.numpy(), weights[k])


def test_calibration_samples_are_used_for_verification() -> None:
    proto = tiny.mlp((64, 128, 64))
    good = [{"x": np.ones((4, 64), np.float32)}]
    assert oc.compress(proto, calibration=good).report.verification["passed"]
    with pytest.raises(oc.CalibrationDataError, match=r"missing \['x'\]"):
        oc.compress(proto, calibration=[{"input_ids": np.ones((1, 3), np.int64)}])


def test_compress_file_writes_atomically(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(tiny.mlp((64, 128, 64)), src)
    out = tmp_path / "q.onnx"
    report = oc.compress_file(src, out, oc.Recipe(steps=(oc.QuantizeWeights(block_size=32),)))
    assert report.output_path == str(out) and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "q.onnx"]
    assert report.to_dict()["totals"]["layers_quantized"] == 2


def test_public_api_surface() -> None:
    for name in oc.__all__:
        assert hasattr(oc, name), name
