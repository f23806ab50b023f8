"""verify: random inputs that respect the model, and failures that are caught."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import tiny
from onnx import TensorProto, helper, numpy_helper

from onnx_compress import CalibrationDataError, VerificationError
from onnx_compress.verify import random_inputs, verify_files


def test_random_inputs_respect_the_model(exported: Callable[[str, str], Path]) -> None:
    model = ir.load(exported("bert", "dynamo"))
    feeds = random_inputs(model, seed=3, batch=3, sequence=5)
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert feeds["input_ids"].shape == (3, 5) and feeds["input_ids"].dtype == np.int64
    # ids index the word-embedding table (vocab 1000): they are spread over it, never beyond
    assert feeds["input_ids"].max() < 1000 and feeds["input_ids"].max() > 2
    assert np.all(feeds["attention_mask"] == 1) and np.all(feeds["token_type_ids"] == 0)
    assert np.array_equal(random_inputs(model, seed=3)["input_ids"], random_inputs(model, seed=3)["input_ids"])


def test_position_inputs_count_up() -> None:
    g = helper.make_graph(
        [helper.make_node("Cast", ["position_ids"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )
    feeds = random_inputs(ir.serde.deserialize_model(helper.make_model(g)), batch=2, sequence=4)
    assert feeds["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def test_drift_is_caught(tmp_path: Path) -> None:
    ref = _save(tiny.matmul(), tmp_path / "ref.onnx")
    broken = tiny.matmul()
    w = numpy_helper.to_array(broken.graph.initializer[0])
    broken.graph.initializer[0].CopyFrom(numpy_helper.from_array(w * 1.05, "W"))  # 5% off
    cand = _save(broken, tmp_path / "cand.onnx")
    feeds = [{"x": np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)}]
    with pytest.raises(VerificationError, match=r"'y' 5.00% relative error \(tolerance 1%\)"):
        verify_files(ref, cand, feeds, tolerance=0.01)
    result = verify_files(ref, cand, feeds, tolerance=0.06)
    assert result.passed and result.output_errors["y"] == pytest.approx(0.05, rel=1e-4)


def test_integer_outputs_must_match_exactly(tmp_path: Path) -> None:
    def argmax_model(scale: float) -> onnx.ModelProto:
        w = np.diag(np.arange(1, 17, dtype=np.float32)) * scale
        w[0, 0] = 100.0 * scale if scale < 0 else w[0, 0]
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("ArgMax", ["h"], ["y"], axis=1)]
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
            [helper.make_tensor_value_info("y", TensorProto.INT64, [2, 1])],
            [numpy_helper.from_array(w, "W")],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])

    ref = _save(argmax_model(1.0), tmp_path / "ref.onnx")
    cand = _save(argmax_model(-1.0), tmp_path / "cand.onnx")
    feeds = [{"x": np.ones((2, 16), np.float32)}]
    with pytest.raises(VerificationError, match="integer output 'y' differs"):
        verify_files(ref, cand, feeds, tolerance=0.5)


def test_checker_failure_is_a_verification_error(tmp_path: Path) -> None:
    ref = _save(tiny.matmul(), tmp_path / "ref.onnx")
    bad = tiny.matmul()
    bad.graph.node[0].op_type = "NoSuchOp"
    cand = tmp_path / "cand.onnx"
    onnx.save(bad, cand)
    with pytest.raises(VerificationError, match=r"fails onnx\.checker"):
        verify_files(ref, cand, [], tolerance=0.1)


def test_sample_that_does_not_fit_the_model(tmp_path: Path) -> None:
    ref = _save(tiny.matmul(), tmp_path / "ref.onnx")
    with pytest.raises(CalibrationDataError, match=r"missing \['x'\]; unknown \['z'\]"):
        verify_files(ref, ref, [{"z": np.zeros((1, 64), np.float32)}], tolerance=0.1)
    with pytest.raises(CalibrationDataError, match="does not fit the model"):
        verify_files(ref, ref, [{"x": np.zeros((1, 63), np.float32)}], tolerance=0.1)


def test_reference_that_ort_cannot_run_skips_parity(tmp_path: Path) -> None:
    ref = _save(tiny.matmul(dtype="bfloat16"), tmp_path / "ref.onnx")
    result = verify_files(ref, ref, [], tolerance=0.1)
    assert result.passed and result.parity.startswith("not checked: ORT CPU cannot run the input model")
