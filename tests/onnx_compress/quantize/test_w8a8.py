"""W8A8: static int8 activations (QDQ and QLinearMatMul forms), SmoothQuant, fallbacks, CLI."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import rel_error, run_ort

import onnx_compress as oc
from onnx_compress import cli, model_io
from onnx_compress.numerics import activation, int8
from onnx_compress.verify import random_inputs

W8A8 = oc.QuantizeWeights(scheme=oc.WeightScheme.W8A8, min_dim=1)


@pytest.fixture(scope="module")
def library_file() -> Path:
    """One file of the calibration text (library/): 87 KB, about 20k tokens."""
    from models import text

    return text.calibration_dir() / "functions.rst.txt"


def _one_layer(gemm: bool = False) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 24)).astype(np.float32) * 0.1
    if gemm:
        node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "W"), numpy_helper.from_array(w[0], "b")]
    else:
        node = helper.make_node("MatMul", ["x", "W"], ["y"])
        inits = [numpy_helper.from_array(w, "W")]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 24])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), w


def _samples(n: int = 6, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((5, 32)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("gemm", [False, True])
def test_qdq_form_matches_the_int8_oracle_and_follows_tensorrt_placement(gemm: bool) -> None:
    proto, w = _one_layer(gemm)
    samples = _samples()
    recipe = oc.Recipe(
        steps=(oc.QuantizeWeights(scheme=oc.WeightScheme.W8A8, min_dim=1, act_calib=oc.ActCalib.MINMAX),)
    )
    model = oc.compress(proto, recipe, calibration=samples).model
    ops = collections.Counter(n.op_type for n in model.graph)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 2
    consumer = next(n for n in model.graph if n.op_type in ("MatMul", "Gemm"))
    act_dq, w_dq = (consumer.inputs[i].producer() for i in (0, 1))  # type: ignore[union-attr]
    assert act_dq is not None and w_dq is not None
    # activations per tensor, int8, zero point 0; weights per output channel on the right axis
    act_scale = act_dq.inputs[1].const_value.numpy()  # type: ignore[union-attr]
    assert act_scale.shape == () and act_dq.inputs[2].const_value.numpy().dtype == np.int8  # type: ignore[union-attr]
    assert w_dq.attributes.get_int("axis") == (0 if gemm else 1)
    assert w_dq.inputs[0].const_value.dtype == ir.DataType.INT8  # type: ignore[union-attr]
    # minmax: the scale is max|x| over the calibration samples / 127
    amax = max(float(np.abs(s["x"]).max()) for s in samples)
    assert act_scale == pytest.approx(amax / 127, rel=1e-6)
    # ORT (fused to integer kernels) against numpy: fake-quantized x times the dequantized weight
    x = _samples(1, seed=9)[0]
    scales = int8.scales_from_absmax(int8.absmax(w, 0))
    wq = int8.dequantize(int8.quantize(w, scales, 0), scales, 0)
    oracle = activation.fake_quantize(x["x"], float(act_scale)) @ wq + (w[0] if gemm else 0)
    got = run_ort(ir.serde.serialize_model(model), x)[0]
    # integer GEMM in ORT is exact; only the float rescaling of the int32 sums differs (1e-6),
    # well below int8 quantization errors (1e-2) that a wrong scale or axis would show
    assert rel_error(got, oracle) < 1e-5


def test_qlinear_form_uses_uint8_activations_and_output_ranges() -> None:
    proto, w = _one_layer(gemm=True)
    samples = _samples()
    step = oc.QuantizeWeights(
        scheme=oc.WeightScheme.W8A8, format=oc.WeightFormat.QLINEAR, min_dim=1, act_calib=oc.ActCalib.MINMAX
    )
    model = oc.compress(proto, oc.Recipe(steps=(step,)), calibration=samples).model
    ops = collections.Counter(n.op_type for n in model.graph)
    assert ops == {"QuantizeLinear": 1, "QLinearMatMul": 1, "DequantizeLinear": 1, "Add": 1}
    qmm = next(n for n in model.graph if n.op_type == "QLinearMatMul")
    zp = qmm.inputs[2].const_value.numpy()  # type: ignore[union-attr]
    assert zp.dtype == np.uint8 and int(zp) == 128
    assert qmm.inputs[3].const_value.shape == (32, 24)  # type: ignore[union-attr]  # [K, N] (Gemm transB=1 turned)
    x = _samples(1, seed=9)[0]
    ref = x["x"] @ w + w[0]
    got = run_ort(ir.serde.serialize_model(model), x)[0]
    # three int8 roundings (input, weight, output) of ~0.4% each on random data
    assert rel_error(got, ref) < 2e-2


def test_percentile_entropy_and_minmax_give_different_ranges(exported) -> None:  # type: ignore[no-untyped-def]
    path = exported("llama", "dynamo")
    m = ir.load(str(path))
    samples = [random_inputs(m, batch=1, sequence=16, seed=i) for i in range(4)]
    scales = {}
    for rule in oc.ActCalib:
        step = oc.QuantizeWeights(scheme=oc.WeightScheme.W8A8, min_dim=1, act_calib=rule)
        model = oc.compress(path, oc.Recipe(steps=(step,)), calibration=samples).model
        scales[rule] = sorted(
            float(n.inputs[1].const_value.numpy())  # type: ignore[union-attr]
            for n in model.graph
            if n.op_type == "QuantizeLinear"
        )
    # 2 layers x (q, k, v, o, gate, up, down) and lm_head: a pair per consumer
    assert len(scales[oc.ActCalib.MINMAX]) == 15
    assert all(p <= m + 1e-12 for p, m in zip(scales[oc.ActCalib.PERCENTILE], scales[oc.ActCalib.MINMAX], strict=True))
    assert scales[oc.ActCalib.PERCENTILE] != scales[oc.ActCalib.MINMAX]
    assert scales[oc.ActCalib.ENTROPY] != scales[oc.ActCalib.MINMAX]


def test_smoothing_keeps_the_float_model_and_lowers_the_w8a8_error(exported, library_file: Path) -> None:  # type: ignore[no-untyped-def]
    # real weights and real text: SmolLM2's outlier channels are what SmoothQuant is for
    path = exported("smollm2-l4", "dynamo")
    from models import export

    text = oc.TextCalibration(library_file, export.smollm2_tokenizer(), samples=8, seqlen=64)
    w8a8 = oc.QuantizeWeights(scheme=oc.WeightScheme.W8A8)
    plain = oc.compress(path, oc.Recipe(steps=(w8a8,)), calibration=text)
    smooth = oc.compress(path, oc.Recipe(steps=(oc.Smooth(0.5), w8a8)), calibration=text)
    ops = collections.Counter(n.op_type for n in smooth.model.graph)
    assert ops["QuantizeLinear"] >= 4 * 4  # per layer: norm output, attention output, post-norm output, act*up
    err_plain = max(plain.report.verification["output_errors"].values())  # type: ignore[index]
    err_smooth = max(smooth.report.verification["output_errors"].values())  # type: ignore[index]
    assert err_smooth < 0.8 * err_plain, (err_smooth, err_plain)


def test_max_layer_error_falls_back_to_weight_only_int8(exported) -> None:  # type: ignore[no-untyped-def]
    path = exported("llama", "dynamo")
    m = ir.load(str(path))
    samples = [random_inputs(m, batch=1, sequence=16, seed=i) for i in range(4)]
    step = oc.QuantizeWeights(scheme=oc.WeightScheme.W8A8, min_dim=1, max_layer_error=0.001)
    report = oc.compress(path, oc.Recipe(steps=(step,)), calibration=samples).report
    fallen = [r for r in report.layers if r.fallback and "w8a8/channel output error" in r.fallback]
    assert fallen and all(r.scheme in ("int8/channel", "float") for r in fallen)
    assert all(r.output_error is None or r.output_error <= 0.001 for r in fallen if r.quantized)


def test_cli_w8a8_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proto, _ = _one_layer()
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    out = tmp_path / "out.onnx"
    assert cli.main([str(src), str(out), "--quantize", "w8a8", "--min-dim", "1"]) == 7
    assert "step 'quantize' needs calibration data" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main([str(src), str(out), "--smooth", "0.5"]) == 2
    assert "needs a w8a8 quantize step" in capsys.readouterr().err
    assert cli.main([str(src), str(out), "--quantize", "int8", "--act-calib", "entropy"]) == 2
    assert "only apply to w8a8" in capsys.readouterr().err
    assert cli.main([str(src), str(out), "--quantize", "w8a8", "--smooth", "1.5"]) == 2
    assert "alpha must be in [0, 1]" in capsys.readouterr().err
    data = tmp_path / "calib"
    data.mkdir()
    for i, s in enumerate(_samples(3)):
        np.savez(data / f"{i}.npz", **s)
    code = cli.main(
        [str(src), str(out), "--quantize", "w8a8", "--format", "qlinear", "--min-dim", "1", "--calib-data", str(data)]
    )
    assert code == 0 and out.exists()
    assert "QLinearMatMul" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_qlinear_keeps_a_float_output_where_the_output_has_massive_values() -> None:
    # one token with a 1000x activation (an LLM's "massive activation"): int8 outputs would give
    # the bulk of the output fewer than 4 levels, so the layer keeps the QDQ form (float output)
    proto, w = _one_layer()
    w = w.copy()
    w[0] = 0.0
    w[0, 5] = 1.0  # input channel 0 reaches only output channel 5
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    samples = _samples(20)  # 2400 output elements: one of them 1000x the others' scale
    samples[0]["x"][0, 0] = 1000.0
    step = oc.QuantizeWeights(scheme=oc.WeightScheme.W8A8, format=oc.WeightFormat.QLINEAR, min_dim=1)
    # (no verification: a per-tensor int8 input cannot carry that token either; smoothing is the cure)
    result = oc.compress(proto, oc.Recipe(steps=(step,), verify=oc.Verify(enabled=False)), calibration=samples)
    ops = collections.Counter(n.op_type for n in result.model.graph)
    assert "QLinearMatMul" not in ops and ops["MatMul"] == 1
    (layer,) = result.report.layers
    assert layer.fallback is not None and "x its RMS" in layer.fallback and layer.format == "qdq"
    normal = oc.compress(proto, oc.Recipe(steps=(step,)), calibration=_samples()).model
    assert any(n.op_type == "QLinearMatMul" for n in normal.graph)


def test_untyped_intermediate_activations_are_quantized() -> None:
    # exporters do not always record value_info for intermediate values: the activation of the
    # second layer has no type, and still gets its static range (the weight's float type)
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W0"], ["m"]),
            helper.make_node("Tanh", ["m"], ["h"]),
            helper.make_node("MatMul", ["h", "W1"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 32])],
        [
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32) * 0.2, "W0"),
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32) * 0.2, "W1"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    report = oc.compress(proto, oc.Recipe(steps=(W8A8,)), calibration=_samples()).report
    assert [r.scheme for r in report.layers] == ["w8a8/channel", "w8a8/channel"]
    assert report.verification is not None and report.verification["passed"]


def test_statistics_without_histograms_are_refused_for_percentile(tmp_path: Path) -> None:
    # statistics cached by a min-max run hold no histogram: a percentile run says what to do
    proto, _ = _one_layer()
    minmax = oc.QuantizeWeights(scheme=oc.WeightScheme.W8A8, min_dim=1, act_calib=oc.ActCalib.MINMAX)
    stats = tmp_path / "stats.npz"
    oc.compress(proto, oc.Recipe(steps=(minmax,)), calibration=_samples(), calibration_stats=stats)
    with pytest.raises(oc.CalibrationDataError, match="hold no histogram"):
        oc.compress(proto, oc.Recipe(steps=(W8A8,)), calibration_stats=stats)


def test_ort_fuses_every_consumer_of_a_shared_activation(tmp_path: Path) -> None:
    # q/k/v read one activation: each gets its own QuantizeLinear -> DequantizeLinear pair, and
    # ORT CPU turns all three into integer MatMuls (with one shared QuantizeLinear it fused none)
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"]) for i in range(3)]
    nodes.append(helper.make_node("Sum", ["y0", "y1", "y2"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), f"W{i}") for i in range(3)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model = oc.compress(proto, oc.Recipe(steps=(W8A8,)), calibration=_samples()).model
    path = tmp_path / "w8a8.onnx"
    model_io.save(model, path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["MatMulIntegerToFloat"] == 3 and ops["MatMul"] == 0, ops


def test_a_tied_lm_head_gets_an_int8_copy(exported) -> None:  # type: ignore[no-untyped-def]
    # SmolLM2 ties lm_head to the embedding: the Gather keeps the float table, the MatMul reads
    # an int8 copy (w8a8 is for speed; the float lm_head would be a fifth of the prefill)
    path = exported("smollm2-l4", "dynamo")
    m = ir.load(str(path))
    samples = [random_inputs(m, batch=1, sequence=16, seed=i) for i in range(3)]
    result = oc.compress(path, oc.Recipe(steps=(W8A8,), verify=oc.Verify(enabled=False)), calibration=samples)
    head = [r for r in result.report.layers if r.name.endswith("lm_head")]
    assert head and head[0].scheme == "w8a8/channel"
    gather = next(n for n in result.model.graph if n.op_type == "Gather")
    assert gather.inputs[0] is not None and gather.inputs[0].dtype == ir.DataType.FLOAT


def test_a_weight_shared_with_a_gather_gets_an_int8_copy_for_w8a8_only() -> None:
    # an embedding table read directly by Gather and by the lm_head MatMul (no Transpose)
    rng = np.random.default_rng(6)
    table = rng.standard_normal((32, 32)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["e"]),
            helper.make_node("MatMul", ["x", "E"], ["m"]),
            helper.make_node("ReduceSum", ["e"], ["s"], keepdims=0),
            helper.make_node("Add", ["m", "s"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 32])],
        [numpy_helper.from_array(table, "E")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    samples = [s | {"ids": np.array([1, 3], np.int64)} for s in _samples()]
    w8a8 = oc.compress(proto, oc.Recipe(steps=(W8A8,)), calibration=samples)
    (layer,) = w8a8.report.layers
    assert layer.scheme == "w8a8/channel"
    gather = next(n for n in w8a8.model.graph if n.op_type == "Gather")
    assert gather.inputs[0] is not None and gather.inputs[0].name == "E" and gather.inputs[0].dtype == ir.DataType.FLOAT
    # weight-only int8 is about size: a copy would grow the model, so the shared table stays float
    int8_only = oc.compress(proto, oc.Recipe(steps=(oc.QuantizeWeights(min_dim=1),)), calibration=samples)
    assert int8_only.report.layers[0].scheme == "float" and "Gather" in (int8_only.report.layers[0].reason or "")
