"""2:4 pruning per op form, skips, annotations, the checker, composition with quantization."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import rel_error, run_ort

import onnx_compress as oc
from onnx_compress import api, cli, model_io
from onnx_compress.numerics import sparse24
from onnx_compress.sparsity.annotate import KEY, SUMMARY_KEY
from onnx_compress.sparsity.prune import SparsifyPass
from onnx_compress.verify import random_inputs

MAGNITUDE = oc.Sparsify(method=oc.SparsityMethod.MAGNITUDE, min_dim=16)
PRUNE = oc.Recipe(steps=(MAGNITUDE,))


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    inits: dict[str, np.ndarray],
    ir_version: int = 10,
) -> onnx.ModelProto:
    """``nodes`` produce ``y``; a Sigmoid after it makes the consumer not an output projection."""
    graph = helper.make_graph(
        [*nodes, helper.make_node("Sigmoid", ["y"], ["out"])],
        "g",
        inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = ir_version
    return _typed_outputs(model)


def _typed_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the graph outputs their inferred types (the checker's full check wants shapes)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for out in model.graph.output:
        out.type.CopyFrom(types[out.name])
    return model


def _w(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _x(name: str, *shape: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# name -> (model, stored weight name, expected stored K axis, another axis to show the pattern is not there)
FORMS: dict[str, Callable[[], tuple[onnx.ModelProto, str, int, int]]] = {
    "matmul [K,N]": lambda: (
        _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_x("x", 3, 32)], {"W": _w(32, 16)}),
        "W",
        0,
        1,
    ),
    "matmul constant left [M,K]": lambda: (
        _model([helper.make_node("MatMul", ["W", "x"], ["y"])], [_x("x", 32, 3)], {"W": _w(16, 32)}),
        "W",
        1,
        0,
    ),
    "matmul rank 3 [B,K,N]": lambda: (
        _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_x("x", 2, 3, 32)], {"W": _w(2, 32, 16)}),
        "W",
        1,
        2,
    ),
    "gemm transB=0": lambda: (
        _model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=0)], [_x("x", 3, 32)], {"W": _w(32, 16)}),
        "W",
        0,
        1,
    ),
    "gemm transB=1": lambda: (
        _model(
            [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
            [_x("x", 3, 32)],
            {"W": _w(16, 32), "b": _w(16, seed=1)},
        ),
        "W",
        1,
        0,
    ),
    "conv group 1": lambda: (
        _model(
            [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
            [_x("x", 1, 32, 6, 6)],
            {"W": _w(16, 32, 3, 3)},
        ),
        "W",
        1,
        0,
    ),
    "conv group 2": lambda: (
        _model(
            [helper.make_node("Conv", ["x", "W"], ["y"], group=2)],
            [_x("x", 1, 64, 5, 5)],
            {"W": _w(32, 32, 3, 3)},
        ),
        "W",
        1,
        0,
    ),
    "transpose chain (stored [N,K])": lambda: (
        _model(
            [
                helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
                helper.make_node("MatMul", ["x", "Wt"], ["y"]),
            ],
            [_x("x", 3, 32)],
            {"W": _w(16, 32)},
        ),
        "W",
        1,
        0,
    ),
    "transpose rank 3 (stored [K,N,B])": lambda: (
        _model(
            [
                helper.make_node("Transpose", ["W"], ["Wt"], perm=[2, 0, 1]),  # [B, K, N]
                helper.make_node("MatMul", ["x", "Wt"], ["y"]),
            ],
            [_x("x", 2, 3, 32)],
            {"W": _w(32, 16, 2)},
        ),
        "W",
        0,  # the view's K axis 1 reads stored axis perm[1] = 0
        1,
    ),
    "cast chain (float16 stored)": lambda: (
        _model(
            [
                helper.make_node("Cast", ["W"], ["Wf"], to=TensorProto.FLOAT),
                helper.make_node("MatMul", ["x", "Wf"], ["y"]),
            ],
            [_x("x", 3, 32)],
            {"W": _w(32, 16).astype(np.float16)},
        ),
        "W",
        0,
        1,
    ),
}


def _initializer(model: ir.Model, name: str) -> np.ndarray:
    value = model.graph.initializers[name]
    assert value.const_value is not None
    return value.const_value.numpy()


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_op_form_is_pruned_along_its_reduction_axis(form: str) -> None:
    proto, name, axis, other = FORMS[form]()
    before = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == name))
    result = oc.compress(proto, PRUNE)
    w = _initializer(result.model, name)
    assert w.dtype == before.dtype and w.shape == before.shape
    bad, groups = sparse24.violations(sparse24.zeros(w), axis)
    assert bad == 0 and groups == w.size // 4
    # a mask along any other axis (the wrong-axis bug) shows: Gaussian weights pruned along K
    # leave most groups along the other axis with fewer than 2 zeros
    assert sparse24.violations(sparse24.zeros(w), other)[0] > groups // 4
    kept = w != 0
    assert np.array_equal(w[kept], before[kept]) and np.count_nonzero(w) == w.size // 2
    meta = result.model.graph.initializers[name].const_value.metadata_props  # type: ignore[union-attr]
    assert meta[KEY["pattern"]] == "2:4" and meta[KEY["axis"]] == str(axis)
    assert meta[KEY["method"]] == "magnitude" and meta[KEY["format"]] == "float"
    assert oc.check_sparsity(result.model).ok
    assert result.report.verification is not None and result.report.verification["passed"]


SKIPS = {
    "K not a multiple of 4": (
        lambda: _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_x("x", 3, 18)], {"W": _w(18, 16)}),
        "not a multiple of 4",
    ),
    "K not a multiple of 16": (
        lambda: _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_x("x", 3, 20)], {"W": _w(20, 16)}),
        "sparse tensor cores need K a multiple of 16",
    ),
    "depthwise conv": (
        lambda: _model(
            [helper.make_node("Conv", ["x", "W"], ["y"], group=32)], [_x("x", 1, 32, 5, 5)], {"W": _w(32, 1, 3, 3)}
        ),
        "depthwise",
    ),
    "conv transpose": (
        lambda: _model(
            [helper.make_node("ConvTranspose", ["x", "W"], ["y"])], [_x("x", 1, 32, 5, 5)], {"W": _w(32, 16, 3, 3)}
        ),
        "ConvTranspose",
    ),
    "small layer": (
        lambda: _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_x("x", 3, 32)], {"W": _w(32, 16)}),
        "small layer",
    ),
    "lm_head by name": (
        lambda: _model(
            [helper.make_node("MatMul", ["x", "lm_head.weight"], ["y"])],
            [_x("x", 3, 32)],
            {"lm_head.weight": _w(32, 16)},
        ),
        "matches exclude pattern 'lm_head'",
    ),
    "output projection": (
        lambda: _typed_outputs(
            onnx.helper.make_model(
                helper.make_graph(
                    [helper.make_node("MatMul", ["x", "W"], ["logits"])],
                    "g",
                    [_x("x", 3, 32)],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                    [numpy_helper.from_array(_w(32, 16), "W")],
                ),
                opset_imports=[helper.make_opsetid("", 21)],
            )
        ),
        "output projection (produces graph output 'logits'",
    ),
    "embedding shared with Gather": (
        lambda: _model(
            [
                helper.make_node("Gather", ["W", "ids"], ["e"]),
                helper.make_node("MatMul", ["x", "W"], ["m"]),
                helper.make_node("ReduceSum", ["e"], ["s"], keepdims=0),
                helper.make_node("Add", ["m", "s"], ["y"]),
            ],
            [_x("x", 3, 32), helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
            {"W": _w(32, 32)},
        ),
        "also read by Gather",
    ),
    "consumers on different axes": (
        lambda: _model(
            [
                helper.make_node("MatMul", ["x", "W"], ["a"]),
                helper.make_node("MatMul", ["W", "x2"], ["b"]),
                helper.make_node("ReduceSum", ["a"], ["sa"], keepdims=0),
                helper.make_node("ReduceSum", ["b"], ["sb"], keepdims=0),
                helper.make_node("Add", ["sa", "sb"], ["y"]),
            ],
            [_x("x", 3, 32), _x("x2", 32, 3)],
            {"W": _w(32, 32)},
        ),
        "different axes",
    ),
}


@pytest.mark.parametrize("case", sorted(SKIPS))
def test_skipped_weights_stay_untouched_with_a_reason(case: str) -> None:
    build, reason = SKIPS[case]
    proto = build()
    before = {i.name: numpy_helper.to_array(i).copy() for i in proto.graph.initializer}
    step = MAGNITUDE if case != "small layer" else oc.Sparsify(method=oc.SparsityMethod.MAGNITUDE)
    result = oc.compress(proto, oc.Recipe(steps=(step,)))
    for name, arr in before.items():
        assert np.array_equal(_initializer(result.model, name), arr), name
    summary = json.loads(result.model.metadata_props[SUMMARY_KEY])
    assert summary["tensors"] == []
    assert any(reason in s["reason"] for s in summary["skipped"]), summary["skipped"]
    assert oc.check_sparsity(result.model).ok


def test_pruning_is_idempotent_and_deterministic(tmp_path: Path) -> None:
    proto, *_ = FORMS["gemm transB=1"]()
    src = tmp_path / "in.onnx"
    onnx.save(proto, src)
    for out in ("a.onnx", "b.onnx"):
        oc.compress_file(src, tmp_path / out, PRUNE)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    # again on the pruned model: nothing changes (the pass reports it), same bytes out
    model = ir.load(str(tmp_path / "a.onnx"))
    assert not SparsifyPass(MAGNITUDE)(model).modified
    oc.compress_file(tmp_path / "a.onnx", tmp_path / "c.onnx", PRUNE)
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_metadata_and_opsets_of_the_input_are_preserved() -> None:
    proto, *_ = FORMS["matmul [K,N]"]()
    helper.set_model_props(proto, {"author": "someone", "onnx_compress.other": "kept"})
    proto.opset_import.append(helper.make_opsetid("com.example", 3))
    proto.graph.initializer[0].metadata_props.add(key="origin", value="upstream")
    model = oc.compress(proto, PRUNE).model
    assert model.metadata_props["author"] == "someone" and model.metadata_props["onnx_compress.other"] == "kept"
    assert model.opset_imports == {"": 21, "com.example": 3}
    meta = model.graph.initializers["W"].const_value.metadata_props  # type: ignore[union-attr]
    assert meta["origin"] == "upstream" and meta[KEY["pattern"]] == "2:4"
    out = ir.serde.serialize_model(model)
    assert not out.graph.sparse_initializer  # dense storage, never sparse_initializer
    summary = json.loads(next(p.value for p in out.metadata_props if p.key == SUMMARY_KEY))
    assert summary["deployment"]["onnxruntime_tensorrt_ep"] == "provider option trt_sparsity_enable=1"
    assert "trtexec --sparsity=enable" in summary["deployment"]["tensorrt"]


@pytest.mark.parametrize(
    ("name", "exporter"), [("smollm2-l4", "dynamo"), ("bert", "torchscript"), ("minilm", "dynamo")]
)
def test_pruned_model_equals_the_original_with_the_masks_applied(  # type: ignore[no-untyped-def]
    name: str, exporter: str, exported, tmp_path: Path
) -> None:
    path = exported(name, exporter)
    result = oc.compress(path, oc.Recipe(steps=(oc.Sparsify(method=oc.SparsityMethod.MAGNITUDE, min_dim=16),)))
    pruned_path = tmp_path / "pruned.onnx"
    model_io.save(result.model, pruned_path, external_data="pruned.onnx.data")
    summary = json.loads(result.model.metadata_props[SUMMARY_KEY])
    names = {t["tensor"] for t in summary["tensors"]}
    assert len(names) >= 12
    # the original with each pruned tensor's zeros applied by hand (read from the pruned data)
    masked = onnx.load(str(path))
    for init in masked.graph.initializer:
        if init.name in names:
            arr = numpy_helper.to_array(init).copy()
            arr[_initializer(result.model, init.name) == 0] = 0
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    feeds = random_inputs(ir.load(str(path)), batch=2, sequence=16, seed=3)
    for a, b in zip(run_ort(pruned_path, feeds, optimize=False), run_ort(masked, feeds, optimize=False), strict=True):
        # the same graph with the same weights: identical up to ORT's thread scheduling
        assert rel_error(a, b) < 1e-6
    report = result.report
    assert report.verification is not None and report.verification["passed"]
    saved = onnx.load(str(pruned_path))
    annotated = [i for i in saved.graph.initializer if any(p.key == KEY["pattern"] for p in i.metadata_props)]
    if exporter == "torchscript":  # IR 8: the summary is the annotation, no tensor metadata
        assert saved.ir_version < 10 and not annotated
    else:
        assert {i.name for i in annotated} == names
    assert oc.check_sparsity(ir.load(str(pruned_path))).ok


def test_validator_catches_a_broken_model_in_both_directions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"]),
            helper.make_node("MatMul", ["x", "V"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [_x("x", 3, 32)],
        {"W": _w(32, 16), "V": _w(32, 16, seed=5)},
    )
    pruned = ir.serde.serialize_model(oc.compress(proto, PRUNE).model)
    good = tmp_path / "good.onnx"
    onnx.save(pruned, good)
    assert cli.main(["check-sparsity", str(good)]) == 0
    assert "2 of 2 weights are 2:4" in capsys.readouterr().out

    # annotated but not sparse: one pruned weight gets a value back
    broken = onnx.load(str(good))
    w = broken.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr[np.unravel_index(np.flatnonzero(arr == 0)[0], arr.shape)] = 1.0
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    w.metadata_props.add(key=KEY["pattern"], value="2:4")
    w.metadata_props.add(key=KEY["axis"], value="0")
    onnx.save(broken, tmp_path / "annotated_not_sparse.onnx")
    assert cli.main(["check-sparsity", str(tmp_path / "annotated_not_sparse.onnx")]) == 6
    assert "annotated 2:4 along axis 0 but 1 of 128 groups" in capsys.readouterr().out

    # sparse but not annotated: the annotation and the summary entry of one weight removed
    bare = onnx.load(str(good))
    del bare.graph.initializer[1].metadata_props[:]
    prop = next(p for p in bare.metadata_props if p.key == SUMMARY_KEY)
    summary = json.loads(prop.value)
    summary["tensors"] = [t for t in summary["tensors"] if t["tensor"] != "V"]
    prop.value = json.dumps(summary)
    onnx.save(bare, tmp_path / "sparse_not_annotated.onnx")
    assert cli.main(["check-sparsity", str(tmp_path / "sparse_not_annotated.onnx"), "--json"]) == 6
    out = json.loads(capsys.readouterr().out)
    assert [p["tensor"] for p in out["problems"]] == ["V"] and "not annotated" in out["problems"][0]["problem"]

    # annotated on the wrong axis (pruned along N: a wrong-axis pruner)
    wrong = onnx.load(str(good))
    v = next(i for i in wrong.graph.initializer if i.name == "V")
    dense = _w(32, 16, seed=5)
    along_n = sparse24.prune(dense, sparse24.mask(sparse24.magnitude_scores(dense), 1, dense))
    v.CopyFrom(numpy_helper.from_array(along_n, "V"))
    v.metadata_props.add(key=KEY["pattern"], value="2:4")
    v.metadata_props.add(key=KEY["axis"], value="1")
    onnx.save(wrong, tmp_path / "wrong_axis.onnx")
    result = oc.check_sparsity(ir.load(str(tmp_path / "wrong_axis.onnx")))
    assert [t.tensor for t in result.problems] == ["V"]
    assert "annotated along axis 1 but MatMul" in (result.problems[0].problem or "")


def test_int8_keeps_the_pattern_in_the_stored_tensor() -> None:
    proto, *_ = FORMS["gemm transB=1"]()
    result = oc.compress(proto, oc.Recipe(steps=(MAGNITUDE, oc.QuantizeWeights(min_dim=1))))
    model = result.model
    (q_name,) = [n for n, v in model.graph.initializers.items() if v.dtype == ir.DataType.INT8]
    q = _initializer(model, q_name)
    assert sparse24.violations(sparse24.zeros(q), 1)[0] == 0  # [N, K]: K on axis 1, as the float weight
    meta = model.graph.initializers[q_name].const_value.metadata_props  # type: ignore[union-attr]
    assert meta[KEY["format"]] == "int8" and meta[KEY["stored"]] == "2:4" and meta[KEY["axis"]] == "1"
    assert "W" not in model.graph.initializers
    summary = json.loads(model.metadata_props[SUMMARY_KEY])
    assert summary["tensors"][0]["tensor"] == q_name and summary["tensors"][0]["source"] == "W"
    assert oc.check_sparsity(model).ok
    assert "sparsity 2:4 (magnitude): 1 weights" in result.report.format_totals()
    assert "stored as 1 int8" in result.report.format_totals()


def test_four_bit_formats_say_whether_the_stored_tensor_is_2_4(monkeypatch: pytest.MonkeyPatch) -> None:
    proto, *_ = FORMS["matmul [K,N]"]()
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(_w(256, 16), "W"))
    proto.graph.input[0].CopyFrom(_x("x", 3, 256))
    cases = {
        "int4 symmetric (QDQ)": (oc.QuantizeWeights(scheme=oc.WeightScheme.INT4, block_size=32), "int4", "2:4"),
        "int4 asymmetric (QDQ)": (
            oc.QuantizeWeights(scheme=oc.WeightScheme.INT4, block_size=32, symmetric=False),
            "uint4",
            "no",
        ),
        "nf4 (MatMulBnb4)": (
            oc.QuantizeWeights(scheme=oc.WeightScheme.NF4, format=oc.WeightFormat.BNB4),
            "packed:MatMulBnb4",
            "no",
        ),
    }
    warnings: list[str] = []
    # the warning as the API logs it (read from the call: other tests reconfigure logging)
    monkeypatch.setattr(api.logger, "warning", lambda msg, *a: warnings.append(msg % a))
    for label, (quantize, fmt, stored) in cases.items():
        warnings.clear()
        model = oc.compress(proto, oc.Recipe(steps=(MAGNITUDE, quantize))).model
        summary = json.loads(model.metadata_props[SUMMARY_KEY])
        (entry,) = summary["tensors"]
        assert (entry["format"], entry["stored"]) == (fmt, stored), label
        assert any("no 4-bit sparse kernel exists in TensorRT or cuSPARSELt" in w for w in warnings), label
        check = oc.check_sparsity(model)
        assert check.ok, (label, check.format_text())
        if fmt.startswith("packed"):
            assert check.unchecked == (entry["tensor"],)


def test_quantize_then_prune_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(oc.RecipeError, match="'sparsify' must come before 'quantize'"):
        oc.Recipe(steps=(oc.QuantizeWeights(), MAGNITUDE))
    proto, *_ = FORMS["matmul [K,N]"]()
    src, quantized = tmp_path / "in.onnx", tmp_path / "int8.onnx"
    onnx.save(proto, src)
    oc.compress_file(src, quantized, oc.Recipe(steps=(oc.QuantizeWeights(min_dim=1),)))
    before = quantized.read_bytes()
    out = tmp_path / "out.onnx"
    code = cli.main([str(quantized), str(out), "--sparsify", "2:4", "--sparsify-min-dim", "16", "--no-quantize"])
    assert code == 4 and not out.exists() and quantized.read_bytes() == before
    err = capsys.readouterr().err
    assert "already quantized (DequantizeLinear" in err and "must come before quantization" in err


def _llama_calibration(path: Path, n: int = 6) -> list[dict[str, np.ndarray]]:
    model = ir.load(str(path))
    return [random_inputs(model, batch=1, sequence=16, seed=i) for i in range(n)]


def test_wanda_uses_the_calibration_statistics(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = exported("llama", "dynamo")
    samples = _llama_calibration(path)
    step = oc.Sparsify(min_dim=16)  # method resolved: wanda with calibration data
    wanda = oc.compress(path, oc.Recipe(steps=(step,)), calibration=samples)
    magnitude = oc.compress(path, oc.Recipe(steps=(step,)))
    assert 'method = "wanda"' in wanda.report.recipe_toml and 'method = "magnitude"' in magnitude.report.recipe_toml
    sw = json.loads(wanda.model.metadata_props[SUMMARY_KEY])
    assert sw["method"] == "wanda" and {t["method"] for t in sw["tensors"]} == {"wanda"}
    differ = 0
    for t in sw["tensors"]:
        a, b = _initializer(wanda.model, t["tensor"]), _initializer(magnitude.model, t["tensor"])
        assert sparse24.violations(sparse24.zeros(a), t["axis"])[0] == 0
        differ += int(not np.array_equal(a == 0, b == 0))
    assert differ == len(sw["tensors"])  # random-token activations are far from uniform per channel
    # statistics collected for another recipe (AWQ-only keys are a superset here, so drop some)
    from onnx_compress.calibration.stats import ActivationStats, collect_stats

    stats = collect_stats(ir.load(str(path)), samples)
    partial = ActivationStats(dict(list(stats.values.items())[:1]), stats.fingerprint, stats.samples)
    with pytest.raises(oc.CalibrationDataError, match="have no entry for"):
        oc.compress(
            path, oc.Recipe(steps=(oc.Sparsify(method=oc.SparsityMethod.WANDA, min_dim=16),)), calibration_stats=partial
        )


def test_cli_sparsify_flags(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    path = exported("llama", "dynamo")
    data = tmp_path / "calib"
    data.mkdir()
    for i, s in enumerate(_llama_calibration(path, 4)):
        np.savez(data / f"{i}.npz", **s)
    out = tmp_path / "out.onnx"
    code = cli.main(
        [str(path), str(out), "--sparsify", "2:4", "--sparsify-min-dim", "16", "--calib-data", str(data), "-q"]
    )
    assert code == 0
    model = ir.load(str(out))
    summary = json.loads(model.metadata_props[SUMMARY_KEY])
    assert summary["method"] == "wanda" and len(summary["tensors"]) == 14
    assert {t["format"] for t in summary["tensors"]} == {"int8"}  # the default quantize step follows
    assert oc.check_sparsity(model).ok
    assert cli.main(["--sparsify", "2:4", "--print-recipe"]) == 0
    assert 'kind = "sparsify"' in capsys.readouterr().out
    assert cli.main(["--sparsify-method", "wanda", "--print-recipe"]) == 2
    assert "only apply with --sparsify 2:4" in capsys.readouterr().err
    assert cli.main(["--sparsify", "2:4", "--sparsify-method", "wanda", "--print-recipe"]) == 0
    code = cli.main([str(path), str(tmp_path / "x.onnx"), "--sparsify", "2:4", "--sparsify-method", "wanda"])
    assert code == 7 and not (tmp_path / "x.onnx").exists()
    assert "needs calibration data" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("perm", "dq_axis", "k_axis"),
    [
        (None, 1, 0),  # int8 [K, N] -> DequantizeLinear(axis=1: per output channel) -> MatMul
        ([1, 0], 0, 1),  # int8 [N, K] -> DequantizeLinear(axis=0) -> Transpose -> MatMul
    ],
)
def test_dequantize_linear_chains_are_followed_to_the_stored_tensor(
    perm: list[int] | None, dq_axis: int, k_axis: int
) -> None:
    # a QDQ model made elsewhere: the checker finds the stored int8 tensor and its K axis through
    # the chain; pruning it is refused (prune the float model first)
    rng = np.random.default_rng(4)
    shape = (32, 16) if perm is None else (16, 32)
    w = rng.standard_normal(shape).astype(np.float32)
    q = np.clip(np.round(sparse24.prune(w, sparse24.mask(np.abs(w), k_axis, w)) * 40), -127, 127).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["Q", "s"], ["Wd"], axis=dq_axis)]
    if perm is not None:
        nodes.append(helper.make_node("Transpose", ["Wd"], ["Wt"], perm=perm))
    nodes.append(helper.make_node("MatMul", ["x", "Wt" if perm is not None else "Wd"], ["y"]))
    scales = np.full(q.shape[dq_axis], 1 / 40, np.float32)
    proto = _model(nodes, [_x("x", 3, 32)], {"Q": q, "s": scales})
    model = ir.serde.deserialize_model(proto)
    result = oc.check_sparsity(model)
    found = [(t.tensor, t.axis, t.format, t.problem is not None) for t in result.tensors]
    assert found == [("Q", k_axis, "int8", True)]
    assert "not annotated" in (result.problems[0].problem or "")
    model.graph.initializers["Q"].const_value.metadata_props.update(  # type: ignore[union-attr]
        {KEY["pattern"]: "2:4", KEY["axis"]: str(k_axis), KEY["stored"]: "2:4"}
    )
    assert oc.check_sparsity(model).ok
    model.graph.initializers["Q"].const_value.metadata_props[KEY["axis"]] = str(1 - k_axis)  # type: ignore[union-attr]
    assert "annotated along axis" in (oc.check_sparsity(model).problems[0].problem or "")
    with pytest.raises(oc.UnsupportedModelError, match="already quantized"):
        oc.compress(proto, PRUNE)


def test_awq_after_pruning_keeps_zeros_and_annotations(exported) -> None:  # type: ignore[no-untyped-def]
    # AWQ rescales pruned weights (rows by s, the producer's columns by 1/s) and clips them:
    # zeros stay zero and the annotations move with the rescaled tensors
    path = exported("llama", "dynamo")
    recipe = oc.Recipe(steps=(oc.Sparsify(min_dim=16), oc.Awq(rows=64, clip_rows=64), oc.QuantizeWeights()))
    result = oc.compress(path, recipe, calibration=_llama_calibration(path))
    summary = json.loads(result.model.metadata_props[SUMMARY_KEY])
    assert summary["method"] == "wanda" and len(summary["tensors"]) == 14
    assert {t["format"] for t in summary["tensors"]} == {"int8"}
    assert oc.check_sparsity(result.model).ok
    assert any(r.ratio is not None for r in result.report.awq)  # AWQ did rescale some groups
