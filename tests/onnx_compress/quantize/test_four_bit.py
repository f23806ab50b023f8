"""4-bit weight passes (int4, nf4): bit-exact with ORT's quantizers, Gemm = transposed MatMul,
accuracy on real weights, mixed precision, the report, and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import tiny
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from onnxruntime.quantization.quant_utils import QuantFormat
from tests.conftest import TOL, rel_error, run_ort

from onnx_compress import (
    QuantizeWeights,
    Recipe,
    RecipeError,
    UnsupportedModelError,
    Verify,
    WeightFormat,
    WeightScheme,
    compress_file,
)
from onnx_compress.cli import main
from onnx_compress.quantize.weights import QuantizeWeightsPass
from onnx_compress.report import records
from onnx_compress.runtime.reference import OPS

INT4, NF4 = WeightScheme.INT4, WeightScheme.NF4
QDQ, NBITS, CUSTOM, BNB4 = WeightFormat.QDQ, WeightFormat.MATMULNBITS, WeightFormat.CUSTOM, WeightFormat.BNB4


def ours(model: onnx.ModelProto, **config: object) -> ir.Model:
    """Our pass on an in-memory model, every layer 4-bit (no int8 head, no size filter)."""
    m = ir.serde.deserialize_model(model)
    settings = {"exclude": (), "int8": (), "min_dim": 1} | config
    QuantizeWeightsPass(QuantizeWeights(**settings))(m)  # type: ignore[arg-type]
    return m


def initializer_bytes(m: ir.Model) -> dict[str, bytes]:
    return {name: v.const_value.tobytes() for name, v in m.graph.initializers.items() if v.const_value is not None}


def ort_initializer_bytes(m: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: ir.serde.deserialize_tensor(t).tobytes() for t in m.graph.initializer}


def ort_nbits(model: onnx.ModelProto, block: int, symmetric: bool, fmt: QuantFormat) -> dict[str, bytes]:
    q = MatMulNBitsQuantizer(
        onnx.ModelProto.FromString(model.SerializeToString()), 4, block, symmetric, quant_format=fmt
    )
    q.process()
    return ort_initializer_bytes(q.model.model)


# (our role suffix, ORT's suffix) per format; ORT names initializers after the weight.
NBITS_ROLES = {QDQ: {"int4": "_DQ_Q4", "uint4": "_DQ_Q4", "scale": "_DQ_scales", "zero_point": "_DQ_zero_points"},
               NBITS: {"b": "_Q4", "scales": "_scales", "zero_points": "_zero_points"}}  # fmt: skip


def compare_with_ort(model: onnx.ModelProto, mine: ir.Model, theirs: dict[str, bytes], roles: dict[str, str]) -> int:
    """Assert every initializer we made for a weight equals ORT's for that weight; count weights."""
    weights = {r.weight for r in records(mine) if r.quantized}
    have = initializer_bytes(mine)
    compared = 0
    for w in weights:
        for role, suffix in roles.items():
            key = f"{w}.{role}"
            if key in have and w + suffix in theirs:
                assert have[key] == theirs[w + suffix], (w, role)
                compared += 1
    assert compared >= 2 * len(weights) > 0  # data and scales of every weight at least
    return len(weights)


def odd_mlp(dtype: str = "float32") -> onnx.ModelProto:
    """K not a multiple of any block (200, 72), an odd K (73) and odd N."""
    return tiny.mlp((200, 73, 72, 40), dtype=dtype, opset=21)


# ---- bit-exact with ORT ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [QDQ, NBITS])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_int4_byte_identical_to_matmulnbits_quantizer_odd_shapes(
    fmt: WeightFormat, symmetric: bool, block: int, dtype: str
) -> None:
    # block 128: K=300 and 130 leave partly filled last blocks
    model = odd_mlp(dtype) if block == 32 else tiny.mlp((300, 130, 40), dtype=dtype, opset=21)
    mine = ours(model, scheme=INT4, format=fmt, block_size=block, symmetric=symmetric)
    ort_fmt = QuantFormat.QDQ if fmt is QDQ else QuantFormat.QOperator
    compare_with_ort(model, mine, ort_nbits(model, block, symmetric, ort_fmt), NBITS_ROLES[fmt])


@pytest.mark.parametrize("fmt", [QDQ, NBITS])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("name", "block"), [("minilm", 128), ("minilm", 32), ("smollm2-l4", 128)])
def test_int4_byte_identical_on_real_models(
    exported: Callable[[str, str], Path], name: str, block: int, fmt: WeightFormat, symmetric: bool
) -> None:
    """Real weights; SmolLM2's K=576 leaves a half-filled last block of 128."""
    model = onnx.load(exported(name, "dynamo"))
    mine = ours(model, scheme=INT4, format=fmt, block_size=block, symmetric=symmetric)
    ort_fmt = QuantFormat.QDQ if fmt is QDQ else QuantFormat.QOperator
    n = compare_with_ort(model, mine, ort_nbits(model, block, symmetric, ort_fmt), NBITS_ROLES[fmt])
    assert n == {"minilm": 36, "smollm2-l4": 28}[name]


@pytest.mark.parametrize(("k", "n", "block"), [(128, 40, 64), (96, 40, 64), (130, 7, 32), (65, 7, 32), (256, 33, 256)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bnb4_byte_identical_to_matmulbnb4_quantizer(k: int, n: int, block: int, dtype: str) -> None:
    """Includes K not a multiple of the block (blocks straddle channels) and an odd N*K."""
    model = tiny.matmul(k=k, n=n, dtype=dtype)
    mine = initializer_bytes(ours(model, scheme=NF4, format=BNB4, block_size=block))
    q = MatMulBnb4Quantizer(onnx.ModelProto.FromString(model.SerializeToString()), MatMulBnb4Quantizer.NF4, block)
    q.process()
    theirs = ort_initializer_bytes(q.model.model)
    assert mine["W.b"] == theirs["W_Bnb4"]
    assert mine["W.absmax"] == theirs["W_absmax"]


def test_bnb4_byte_identical_on_real_model(exported: Callable[[str, str], Path]) -> None:
    model = onnx.load(exported("minilm", "dynamo"))
    mine = ours(model, scheme=NF4, format=BNB4, block_size=64)
    q = MatMulBnb4Quantizer(onnx.ModelProto.FromString(model.SerializeToString()), MatMulBnb4Quantizer.NF4, 64)
    q.process()
    assert (
        compare_with_ort(model, mine, ort_initializer_bytes(q.model.model), {"b": "_Bnb4", "absmax": "_absmax"}) == 36
    )


# ---- Gemm = the transposed MatMul ---------------------------------------------------------
def matmul_of_gemm(gemm: onnx.ModelProto) -> onnx.ModelProto:
    """The MatMul model computing the same product as tiny.gemm's ``x @ B^T`` (no bias)."""
    b = numpy_helper.to_array(gemm.graph.initializer[0])
    k = b.shape[1]
    node = helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")
    graph = helper.make_graph(
        [node],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, b.shape[0]])],
        [numpy_helper.from_array(np.ascontiguousarray(b.T), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


CONFIGS = [
    dict(scheme=INT4, format=QDQ, block_size=32),
    dict(scheme=INT4, format=NBITS, block_size=32, symmetric=False),
    dict(scheme=NF4, format=CUSTOM, block_size=64),
    dict(scheme=NF4, format=CUSTOM, block_size=64, double_quant=True),
    dict(scheme=NF4, format=BNB4, block_size=32),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['scheme'].value}-{c['format'].value}")
@pytest.mark.parametrize("bias", [None, "vector"])
def test_gemm_equals_transposed_matmul(config: dict, bias: str | None) -> None:
    gemm = tiny.gemm(k=96, n=40, trans_b=1, bias=bias)
    mm = matmul_of_gemm(gemm)
    g, m = ours(gemm, **config), ours(mm, **config)
    gi, mi = initializer_bytes(g), initializer_bytes(m)
    for name, data in mi.items():
        assert gi[name] == data, name
    # and both compute x @ W' (+ C): against the reference evaluator with our ops' oracles
    x = np.random.default_rng(0).standard_normal((5, 96)).astype(np.float32)
    (yg,) = (
        run_ort(ir.serde.serialize_model(g), {"x": x}, optimize=False) if config["format"] is not CUSTOM else _ref(g, x)
    )
    (ym,) = (
        run_ort(ir.serde.serialize_model(m), {"x": x}, optimize=False) if config["format"] is not CUSTOM else _ref(m, x)
    )
    c = numpy_helper.to_array(gemm.graph.initializer[1]) if bias else 0.0
    assert rel_error(yg, ym + c) < TOL["ort_vs_oracle_fp32"]


def _ref(m: ir.Model, x: np.ndarray) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(ir.serde.serialize_model(m), new_ops=OPS).run(None, {"x": x}))


def test_gemm_qdq_keeps_gemm_with_transb_zero() -> None:
    q = ours(tiny.gemm(k=96, n=40, trans_b=1, alpha=0.5, beta=2.0), scheme=INT4, format=QDQ, block_size=32)
    ops = [n.op_type for n in q.graph]
    assert ops == ["DequantizeLinear", "Gemm"]
    gemm = next(n for n in q.graph if n.op_type == "Gemm")
    assert gemm.attributes.get_int("transB") == 0 and gemm.attributes.get_float("alpha") == 0.5
    dq = next(n for n in q.graph if n.op_type == "DequantizeLinear")
    assert dq.attributes.get_int("axis") == 0 and dq.attributes.get_int("block_size") == 32
    assert dq.inputs[0].const_value.dtype == ir.DataType.INT4 and tuple(dq.inputs[0].shape) == (96, 40)


# ---- accuracy on real weights -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm", "smollm2-l4"])
@pytest.mark.parametrize("block", [64, 128])
def test_nf4_error_not_above_int4_on_real_weights(
    exported: Callable[[str, str], Path], tmp_path: Path, name: str, block: int
) -> None:
    """Acceptance: NF4 output error <= INT4 symmetric at the same block, every layer reported."""
    src = exported(name, "dynamo")
    reports = {}
    for scheme in (NF4, INT4):
        fmt = BNB4 if scheme is NF4 else QDQ  # stock ORT forms: the error does not depend on the form
        recipe = Recipe(steps=(QuantizeWeights(scheme=scheme, format=fmt, block_size=block, int8=()),))
        reports[scheme] = compress_file(src, tmp_path / f"{scheme.value}.onnx", recipe)
    per_layer = {}
    for scheme, report in reports.items():
        assert report.verification is not None and report.verification["passed"]
        layers = report.quantized
        assert layers and all(r.output_error is not None and r.rel_error is not None for r in layers)
        per_layer[scheme] = {r.weight: r for r in layers}
    assert per_layer[NF4].keys() == per_layer[INT4].keys()
    for basis in ("rel_error", "output_error"):
        nf4 = np.array([getattr(per_layer[NF4][w], basis) for w in per_layer[NF4]])
        int4 = np.array([getattr(per_layer[INT4][w], basis) for w in per_layer[NF4]])
        # averaged over the layers (single layers can go either way: on SmolLM2 at block 128
        # the q/k/v projections of the first layer, fed by outlier activation channels, do
        # better with int4; docs/accuracy.md lists every layer)
        assert nf4.mean() <= int4.mean(), (basis, nf4.mean(), int4.mean())


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        dict(scheme=INT4),
        dict(scheme=INT4, format=NBITS, symmetric=False),
        dict(scheme=NF4),
        dict(scheme=NF4, double_quant=True),
        dict(scheme=NF4, format=BNB4),
    ],
    ids=lambda c: "-".join(str(getattr(v, "value", v)) for v in c.values()),
)
def test_every_form_runs_in_ort_cpu(exported: Callable[[str, str], Path], tmp_path: Path, config: dict) -> None:
    """The whole real model (SmolLM2, 4 layers) in ORT CPU with each output form, matching the
    model with the same dequantized weights (fp32 compute), and the float model loosely."""
    src = exported("smollm2-l4", "dynamo")
    out = tmp_path / "q.onnx"
    report = compress_file(src, out, Recipe(steps=(QuantizeWeights(**config),)))
    assert report.verification is not None and report.verification["passed"]
    assert len(report.quantized) == 28
    # 4-bit weights: the model's logits move by 8-13% (docs/accuracy.md); 25% bounds them
    # with room while a layout bug gives >= 100%
    assert max(report.verification["output_errors"].values()) < 0.25


# ---- mixed precision and the report -------------------------------------------------------
def test_lm_head_int8_by_default_and_overrides(exported: Callable[[str, str], Path]) -> None:
    model = onnx.load(exported("llama", "dynamo"))
    m = ir.serde.deserialize_model(model)
    QuantizeWeightsPass(QuantizeWeights(scheme=INT4))(m)
    head = next(r for r in records(m) if r.name == "lm_head")
    assert head.scheme == "int8/channel" and head.format == "qdq" and head.fallback == "matches --int8: int8"
    others = [r for r in records(m) if r.name != "lm_head"]
    assert others and all(r.scheme == "int4/block128" and r.fallback is None for r in others)
    # --int8 '' puts the head in 4-bit; --exclude keeps it float
    m = ir.serde.deserialize_model(model)
    QuantizeWeightsPass(QuantizeWeights(scheme=NF4, format=BNB4, int8=()))(m)
    assert next(r for r in records(m) if r.name == "lm_head").scheme == "nf4/block64"
    m = ir.serde.deserialize_model(model)
    QuantizeWeightsPass(QuantizeWeights(scheme=NF4, exclude=("lm_head",)))(m)
    assert not next(r for r in records(m) if r.name == "lm_head").quantized
    # custom format: the int8 head uses Int8MatMul with the 4-bit block size
    m = ir.serde.deserialize_model(model)
    QuantizeWeightsPass(QuantizeWeights(scheme=NF4))(m)
    assert next(r for r in records(m) if r.name == "lm_head").scheme == "int8/block64"
    assert {n.op_type for n in m.graph if n.domain == "onnx_compress"} == {"NF4MatMul", "Int8MatMul"}


@pytest.mark.slow
def test_max_layer_error_falls_back(exported: Callable[[str, str], Path], tmp_path: Path) -> None:
    src = exported("smollm2-l4", "dynamo")
    free = compress_file(src, tmp_path / "a.onnx", Recipe(steps=(QuantizeWeights(scheme=INT4),)))
    errors = {r.weight: r.output_error for r in free.quantized}
    assert all(e is not None for e in errors.values())
    bound = float(np.median([e for e in errors.values() if e is not None]))
    report_path = tmp_path / "r.json"
    rc = main([str(src), str(tmp_path / "b.onnx"), "--quantize", "int4", "--max-layer-error", str(bound),
               "--report", str(report_path), "-q"])  # fmt: skip
    assert rc == 0
    data = json.loads(report_path.read_text())
    for layer in data["layers"]:
        before = errors[layer["weight"]]
        assert before is not None
        if before <= bound:  # kept 4-bit, same error
            assert layer["scheme"] == "int4/block128" and layer["fallback"] is None
            assert layer["output_error"] == pytest.approx(before, rel=1e-6)
        else:  # int8 instead, within the bound (int8 errors are ~10x smaller)
            assert layer["scheme"] == "int8/channel", layer
            assert "int4/block128 output error" in layer["fallback"] and layer["output_error"] <= bound
    assert data["totals"]["layers_fallen_back"] == sum(e is not None and e > bound for e in errors.values()) > 0
    # a bound nothing meets: everything ends float, and says so
    report = compress_file(
        src,
        tmp_path / "c.onnx",
        Recipe(steps=(QuantizeWeights(scheme=INT4, max_layer_error=1e-5),), verify=Verify(enabled=False)),
    )
    assert not report.quantized and all("float" in (r.fallback or "") for r in report.skipped if r.fallback)


def test_report_fields_and_totals(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(tiny.mlp((256, 128, 64), opset=21), src)
    report_path = tmp_path / "r.json"
    assert main([str(src), str(tmp_path / "q.onnx"), "--quantize", "nf4", "--format", "bnb4", "--report",
                 str(report_path), "-q"]) == 0  # fmt: skip
    data = json.loads(report_path.read_text())
    layers = data["layers"]
    assert [(x["scheme"], x["format"], x["block_size"]) for x in layers] == [("nf4/block64", "bnb4", 64)] * 2
    for x in layers:
        params = int(np.prod(x["shape"]))
        # 4 bits per weight plus a float32 absmax per 64: 4.5 bits
        assert x["bytes_after"] == params // 2 + 4 * params // 64
        assert x["bits_per_weight"] == pytest.approx(4.5)
        assert 0.05 < x["rel_error"] < 0.15 and 0.05 < x["output_error"] < 0.2 and x["fallback"] is None
    t = data["totals"]
    assert t["bits_per_weight"] == pytest.approx(4.5) and t["error_basis"] == "outputs"
    assert t["size_ratio"] == pytest.approx(t["model_bytes_before"] / t["model_bytes_after"])


# ---- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(scheme=INT4, block_size=48), "int4 block_size must be a power of two in [32, 256], got 48"),
        (dict(scheme=NF4, block_size=512), "nf4 block_size must be a power of two in [32, 256], got 512"),
        (dict(scheme=NF4, block_size=0), "got 0"),
        (dict(scheme=NF4, format=QDQ), "format 'qdq' cannot carry nf4 weights"),
        (dict(scheme=INT4, format=CUSTOM), "format 'custom' cannot carry int4 weights; supported: qdq, matmulnbits"),
        (dict(scheme=INT4, format=BNB4), "supported: qdq, matmulnbits"),
        (dict(scheme=NF4, symmetric=False), "asymmetric quantization is only available for int4"),
        (dict(scheme=NF4, format=BNB4, double_quant=True), "double_quant needs the nf4 scheme with format 'custom'"),
        (dict(scheme=INT4, double_quant=True), "double_quant needs"),
        (dict(int8=("lm_head",)), "int8 layer patterns only apply to 4-bit schemes"),
        (dict(scheme=INT4, int8=("(",)), "int8 pattern '(' is not a valid regular expression"),
        (dict(scheme=INT4, max_layer_error=1.5), "max_layer_error must be in (0, 1), got 1.5"),
        (dict(format=CUSTOM, block_size=16), "Int8MatMul (format custom) needs block_size 0 or a power of two >= 32"),
    ],
)
def test_recipe_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(RecipeError) as e:
        QuantizeWeights(**kwargs)
    assert message in str(e.value)


def test_unknown_format_in_recipe_file_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nkind = "quantize"\nscheme = "nf4"\nformat = "gguf"\n')
    with pytest.raises(RecipeError, match=r"steps\[0\] \(quantize\)\.format: got 'gguf'; supported: 'qdq'"):
        Recipe.load(recipe)
    with pytest.raises(SystemExit) as e:
        main(["a.onnx", "b.onnx", "--quantize", "nf4", "--format", "gguf"])
    assert e.value.code == 2 and "invalid choice: 'gguf'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "text"), [(["--block-size", "100"], "got 100"), (["--format", "qdq"], "cannot carry nf4")]
)
def test_cli_bad_block_or_format_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], text: str
) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(tiny.matmul(), src)
    before = src.read_bytes()
    assert main([str(src), str(tmp_path / "q.onnx"), "--quantize", "nf4", *args]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists() and src.read_bytes() == before


def test_k_smaller_than_block_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(tiny.mlp((256, 48, 64), opset=21), src)  # second layer: K=48 < 64
    with pytest.raises(UnsupportedModelError, match=r"has K=48, smaller than the nf4 block of 64; use --block-size 32"):
        ours(onnx.load(src), scheme=NF4)
    assert main([str(src), str(tmp_path / "q.onnx"), "--quantize", "nf4"]) == 4
    err = capsys.readouterr().err
    assert "K=48" in err and "--exclude 'layers\\.1\\.weight'" in err
    assert not any(p.name.startswith("q.onnx") for p in tmp_path.iterdir())


def test_custom_ops_need_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(tiny.mlp((256, 128, 64), opset=21), src)
    # with the library: verified, and the summary says how to load it
    assert main([str(src), str(tmp_path / "ok.onnx"), "--quantize", "nf4"]) == 0
    printed = capsys.readouterr().out
    assert "onnx_compress custom ops" in printed and "register_custom_ops_library" in printed
    # without it: exit 8 naming the fix, nothing written
    from onnx_compress import runtime

    monkeypatch.setattr(runtime, "_LIB_DIR", tmp_path / "no-lib")
    assert main([str(src), str(tmp_path / "q.onnx"), "--quantize", "nf4"]) == 8
    assert "is not built; build it with `make setup`" in capsys.readouterr().err
    assert not any(p.name.startswith("q.onnx") for p in tmp_path.iterdir())
    # --no-verify writes the model: running it is the user's business
    assert main([str(src), str(tmp_path / "q.onnx"), "--quantize", "nf4", "--no-verify", "-q"]) == 0
