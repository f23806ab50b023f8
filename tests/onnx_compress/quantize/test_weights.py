"""QuantizeWeightsPass on tiny graphs: structure, exactness against the dequantized-weight oracle."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import tiny
from onnx.reference import ReferenceEvaluator
from tests.conftest import TOL, rel_error, run_ort

from onnx_compress import (
    AccuracyLevel,
    QuantizeWeights,
    UnsupportedModelError,
    WeightFormat,
)
from onnx_compress.numerics import int8
from onnx_compress.quantize.weights import QuantizeWeightsPass
from onnx_compress.report import records

RNG = np.random.default_rng(123)


def quantize(model: onnx.ModelProto, **config: object) -> tuple[ir.Model, bool]:
    m = ir.serde.deserialize_model(model)
    result = QuantizeWeightsPass(QuantizeWeights(**config))(m)  # type: ignore[arg-type]
    return result.model, result.modified


def proto(m: ir.Model) -> onnx.ModelProto:
    p = ir.serde.serialize_model(m)
    onnx.checker.check_model(p, full_check=True)
    return p


def ops(m: ir.Model) -> list[str]:
    return [n.op_type for n in m.graph]


def init(m: ir.Model, suffix: str) -> np.ndarray:
    (value,) = [v for name, v in m.graph.initializers.items() if name.endswith(suffix)]
    return value.const_value.numpy()


def oracle_weight(w: np.ndarray, reduction_axis: int, block: int) -> np.ndarray:
    s = int8.scales_from_absmax(int8.absmax(w, reduction_axis, block), w.dtype)
    return int8.dequantize(int8.quantize(w, s, reduction_axis, block), s, reduction_axis, block, np.float32)


@pytest.mark.parametrize("block", [0, 16, 32])
def test_matmul_qdq_matches_dequantized_oracle(block: int) -> None:
    model = tiny.matmul(k=72, n=40)  # K=72: not a multiple of 16 or 32
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    q, modified = quantize(model, block_size=block)
    assert modified
    assert ops(q) == ["DequantizeLinear", "MatMul"]
    dq = q.graph.node(0)
    if block == 0:
        assert dq.attributes.get_int("axis") == 1 and "block_size" not in dq.attributes
        assert init(q, ".scale").shape == (40,)
    else:
        assert dq.attributes.get_int("axis") == 0 and dq.attributes.get_int("block_size") == block
        assert init(q, ".scale").shape == (-(-72 // block), 40)
    assert init(q, ".int8").dtype == np.int8
    assert "W" not in q.graph.initializers  # the float weight is gone
    x = RNG.standard_normal((5, 72)).astype(np.float32)
    (y,) = run_ort(proto(q), {"x": x}, optimize=False)
    expected = x.astype(np.float64) @ oracle_weight(w, 0, block)
    assert rel_error(y, expected) < TOL["ort_vs_oracle_fp32"]
    (rec,) = records(q)
    assert rec.quantized and rec.shape == (72, 40) and rec.bytes_before == 72 * 40 * 4
    assert rec.rel_error == pytest.approx(np.linalg.norm(oracle_weight(w, 0, block) - w) / np.linalg.norm(w), rel=1e-4)


def test_constant_on_the_left_and_constant_node() -> None:
    model = tiny.matmul(k=64, n=32, constant_left=True, as_constant_node=True)
    w = onnx.numpy_helper.to_array(model.graph.node[0].attribute[0].t)  # [M=32, K=64]
    q, _ = quantize(model)
    assert ops(q) == ["DequantizeLinear", "MatMul"]  # the Constant node is removed
    assert q.graph.node(0).attributes.get_int("axis") == 0  # output channels are the rows
    x = RNG.standard_normal((64, 3)).astype(np.float32)
    (y,) = run_ort(proto(q), {"x": x}, optimize=False)
    assert rel_error(y, oracle_weight(w, 1, 0).astype(np.float64) @ x) < TOL["ort_vs_oracle_fp32"]


@pytest.mark.parametrize("block", [0, 16])
def test_rank3_weight_uses_blocked_dq_along_k(block: int) -> None:
    model = tiny.matmul(k=48, n=24, batch_dims=(3,))
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    q, _ = quantize(model, block_size=block)
    dq = q.graph.node(0)
    assert dq.attributes.get_int("axis") == 1 and dq.attributes.get_int("block_size") == (block or 48)
    x = RNG.standard_normal((3, 4, 48)).astype(np.float32)
    (y,) = run_ort(proto(q), {"x": x}, optimize=False)
    assert rel_error(y, x.astype(np.float64) @ oracle_weight(w, 1, block)) < TOL["ort_vs_oracle_fp32"]


GEMM_CASES = [
    dict(trans_b=1, bias="vector"),
    dict(trans_b=0, bias="vector", alpha=0.5, beta=2.0),
    dict(trans_b=1, bias="matrix", alpha=1.5, beta=0.25),
    dict(trans_b=0, bias=None),
    dict(trans_b=1, bias="vector", trans_a=1),
]


def _gemm_expected(model: onnx.ModelProto, case: dict, block: int, feeds: dict) -> np.ndarray:
    b = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "B"))
    trans_b = case["trans_b"]
    w = oracle_weight(b, 1 if trans_b else 0, block)
    w = w.T if trans_b else w
    x = feeds["x"].T if case.get("trans_a") else feeds["x"]
    y = case.get("alpha", 1.0) * (x.astype(np.float64) @ w)
    if case["bias"] == "vector":
        c = next(i for i in model.graph.initializer if i.name == "C")
        y += case.get("beta", 1.0) * onnx.numpy_helper.to_array(c)
    elif case["bias"] == "matrix":
        y += case.get("beta", 1.0) * feeds["C"]
    return y


@pytest.mark.parametrize("fmt", [WeightFormat.QDQ, WeightFormat.MATMULNBITS])
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("block", [0, 32])
def test_gemm(case: dict, fmt: WeightFormat, block: int) -> None:
    model = tiny.gemm(k=64, n=48, **case)
    q, _ = quantize(model, block_size=block, format=fmt, accuracy_level=AccuracyLevel.FP32)
    nbits = fmt is WeightFormat.MATMULNBITS and not case.get("trans_a")
    if nbits:
        assert "MatMulNBits" in ops(q) and "Gemm" not in ops(q)
        node = next(n for n in q.graph if n.op_type == "MatMulNBits")
        assert node.attributes.get_int("bits") == 8 and node.attributes.get_int("accuracy_level") == 1
        assert node.attributes.get_int("block_size") == (block or 64)
    else:
        assert ops(q) == ["DequantizeLinear", "Gemm"]
    feeds = {"x": RNG.standard_normal((64, 5) if case.get("trans_a") else (5, 64)).astype(np.float32)}
    if case["bias"] == "matrix":
        feeds["C"] = RNG.standard_normal((5, 48)).astype(np.float32)
    (y,) = run_ort(proto(q), feeds, optimize=False)
    assert rel_error(y, _gemm_expected(model, case, block, feeds)) < TOL["ort_vs_oracle_fp32"]


@pytest.mark.parametrize("block", [0, 32])
def test_matmulnbits_layout_and_accuracy_levels(block: int) -> None:
    model = tiny.matmul(k=100, n=40)  # K=100: padded to the block inside MatMulNBits
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    x = RNG.standard_normal((7, 100)).astype(np.float32)
    expected = x.astype(np.float64) @ oracle_weight(w, 0, block)
    for level, tol in ((AccuracyLevel.FP32, TOL["ort_vs_oracle_fp32"]), (AccuracyLevel.INT8, TOL["nbits_acc4"])):
        q, _ = quantize(model, block_size=block, format=WeightFormat.MATMULNBITS, accuracy_level=level)
        node = next(n for n in q.graph if n.op_type == "MatMulNBits")
        blk = block or 128  # per channel: one block spanning K, rounded up to a power of two
        assert node.attributes.get_int("block_size") == blk
        assert node.attributes.get_int("K") == 100 and node.attributes.get_int("N") == 40
        b = node.inputs[1].const_value.numpy()
        assert b.dtype == np.uint8 and b.shape == (40, -(-100 // blk), blk)
        # Symmetric storage q + 128; the padding beyond K stores q = 0.
        assert np.all(b.reshape(40, -1)[:, 100:] == 128)
        assert q.opset_imports["com.microsoft"] == 1
        (y,) = run_ort(proto(q), {"x": x}, optimize=False)
        assert rel_error(y, expected) < tol


def test_shared_weight_is_quantized_once() -> None:
    model = tiny.shared()
    q, _ = quantize(model)
    assert ops(q) == ["DequantizeLinear", "MatMul", "MatMul"]
    assert sum(1 for v in q.graph.initializers.values() if v.dtype == ir.DataType.INT8) == 1
    (rec,) = records(q)
    assert rec.consumers == 2
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    (y,) = run_ort(proto(q), {"x": x}, optimize=False)
    wq = oracle_weight(w, 0, 0)
    assert rel_error(y, x.astype(np.float64) @ wq @ wq) < TOL["ort_vs_oracle_fp32"]


def test_shared_with_gather_stays_float_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    q, modified = quantize(tiny.shared(gather=True))
    assert not modified and ops(q) == ["MatMul", "MatMul", "Gather"]
    (rec,) = records(q)
    assert not rec.quantized and "also used by Gather node 'embed'" in (rec.reason or "")


def test_exclude_and_small_layers_stay_float() -> None:
    model = tiny.mlp((64, 8, 64, 32), names=["enc.weight", "tiny.weight", "lm_head.weight"])
    q, modified = quantize(model)
    assert not modified
    by_weight = {r.weight: r for r in records(q)}
    assert by_weight["enc.weight"].reason == "N=8 < 16"
    assert by_weight["tiny.weight"].reason == "K=8 < 16"
    assert by_weight["lm_head.weight"].reason == "matches --exclude 'lm_head'"
    assert all(n.op_type != "DequantizeLinear" for n in q.graph)  # nothing else to quantize
    q2, _ = quantize(model, exclude=(), min_dim=4)
    assert sum(n.op_type == "DequantizeLinear" for n in q2.graph) == 3


def test_unsupported_dtype_is_an_error_unless_excluded() -> None:
    model = tiny.matmul(dtype="float64")
    with pytest.raises(UnsupportedModelError, match=r"is float64; supported weight dtypes: float32, float16, bfloat16"):
        quantize(model)
    _, modified = quantize(model, exclude=("proj",))
    assert not modified


def test_nothing_to_quantize_reports_unmodified_and_leaves_graph_alone() -> None:
    model = tiny.matmul(k=8, n=8)
    q, modified = quantize(model)
    assert not modified
    untouched = ir.serde.serialize_model(ir.serde.deserialize_model(model))
    assert onnx.printer.to_text(proto(q).graph) == onnx.printer.to_text(untouched.graph)


def test_second_run_finds_nothing() -> None:
    q, _ = quantize(tiny.mlp())
    again = QuantizeWeightsPass(QuantizeWeights())(q)
    assert not again.modified


def test_float16_model() -> None:
    model = tiny.matmul(k=64, n=48, dtype="float16")
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    q, _ = quantize(model)
    assert init(q, ".scale").dtype == np.float16
    x = RNG.standard_normal((5, 64)).astype(np.float16)
    (y,) = run_ort(proto(q), {"x": x}, optimize=False)
    assert y.dtype == np.float16
    expected = x.astype(np.float64) @ oracle_weight(w, 0, 0)
    assert rel_error(y, expected) < TOL["ort_vs_oracle_fp16"]


def test_bfloat16_model_with_reference_evaluator() -> None:
    # ORT CPU has no bfloat16 MatMul/DequantizeLinear kernels: onnx's reference evaluator
    # runs the graph instead (bf16 outputs: 8 bits of mantissa -> 2^-8 = 0.4% per rounding).
    model = tiny.matmul(k=64, n=48, dtype="bfloat16")
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    q, _ = quantize(model, block_size=32)
    assert init(q, ".scale").dtype == np.dtype(ml_dtypes.bfloat16)
    x = RNG.standard_normal((5, 64)).astype(ml_dtypes.bfloat16)
    (y,) = ReferenceEvaluator(proto(q)).run(None, {"x": x})
    expected = x.astype(np.float64) @ oracle_weight(w, 0, 32)
    assert rel_error(y.astype(np.float64), expected) < 1e-2


def test_float16_per_channel_needs_opset_19() -> None:
    # DequantizeLinear takes float16 scales from opset 19 on: an opset-17 fp16 model is upgraded.
    model = tiny.matmul(dtype="float16", opset=17)
    q, _ = quantize(model)
    assert q.opset_imports[""] == 19
    x = RNG.standard_normal((5, 64)).astype(np.float16)
    (y,) = run_ort(proto(q), {"x": x}, optimize=False)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    assert rel_error(y, x.astype(np.float64) @ oracle_weight(w, 0, 0)) < TOL["ort_vs_oracle_fp16"]


def test_opset_upgrade_for_blocked_dq() -> None:
    model = tiny.matmul(opset=17)
    q, _ = quantize(model, block_size=32)
    assert q.opset_imports[""] == 21 and q.ir_version >= 10
    proto(q)


def test_opset_upgrade_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxscript.version_converter as vc

    class Broken:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __call__(self, model: ir.Model) -> None:
            raise RuntimeError("no adapter for FancyOp")

    monkeypatch.setattr(vc, "ConvertVersionPass", Broken)
    message = "needs opset >= 21 and the ONNX version converter could not upgrade it (no adapter for FancyOp)"
    with pytest.raises(UnsupportedModelError, match=re.escape(message)):
        quantize(tiny.matmul(opset=17), block_size=32)
