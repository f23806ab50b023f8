"""Acceptance on models exported from transformers code (both exporters): BERT and LLaMA (GQA)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from tests.conftest import TOL, rel_error, run_ort

from onnx_compress import QuantizeWeights, Recipe, WeightFormat, compress_file
from onnx_compress.quantize.sites import find_sites
from onnx_compress.verify import random_inputs

MODELS = [("bert", "dynamo"), ("bert", "torchscript"), ("llama", "dynamo"), ("llama", "torchscript")]
# Only the LLaMA lm_head is float by default (--exclude lm_head); BERT has no head here.
EXPECTED_FLOAT = {"bert": set(), "llama": {"lm_head"}}


@pytest.mark.parametrize(("name", "exporter"), MODELS)
@pytest.mark.parametrize("block", [0, 32])
def test_int8_qdq_on_exported_models(
    exported: Callable[[str, str], Path], tmp_path: Path, name: str, exporter: str, block: int
) -> None:
    src = exported(name, exporter)
    out = tmp_path / "q.onnx"
    report = compress_file(src, out, Recipe(steps=(QuantizeWeights(block_size=block),)))
    assert report.verification is not None and report.verification["passed"]

    # Every eligible MatMul/Gemm weight is quantized; only the excluded head stays float.
    before = ir.load(src)
    n_sites = len([s for s in find_sites(before.graph) if s.skip is None])
    assert len(report.quantized) == n_sites - len(EXPECTED_FLOAT[name]) > 0
    assert {r.name for r in report.skipped} == EXPECTED_FLOAT[name]
    after = ir.load(out)
    assert {s.name for s in find_sites(after.graph)} == EXPECTED_FLOAT[name]
    assert sum(n.op_type == "DequantizeLinear" for n in after.graph) == len(report.quantized)

    onnx.checker.check_model(out, full_check=True)

    # Per-layer error bounds (acceptance): <= 1% per channel; block 32 at the formula's value.
    bound = TOL["layer_int8_block32"] if block else TOL["layer_int8_channel"]
    worst = max(report.quantized, key=lambda r: r.rel_error or 0.0)
    assert worst.rel_error is not None and worst.rel_error <= bound, worst

    # Whole-model output error with fp32 compute (isolates the weight quantization): < 1%.
    feeds = random_inputs(before, seed=1)
    (y_ref,) = run_ort(src, feeds)
    (y_fp32,) = run_ort(out, feeds, config={"session.qdq_matmulnbits_accuracy_level": "1"})
    key = "model_output_int8_random_llama_channel" if (name, block) == ("llama", 0) else "model_output_int8"
    assert rel_error(y_fp32, y_ref) < TOL[key]
    # ORT CPU's default fuses DQ->MatMul into MatMulNBits with int8 activations (accuracy
    # level 4): that adds its own error on top, which the verification tolerance covers.
    (y_default,) = run_ort(out, feeds)
    assert rel_error(y_default, y_ref) < QuantizeWeights().verify_tolerance


@pytest.mark.parametrize(("name", "exporter"), [("llama", "dynamo"), ("bert", "torchscript")])
def test_int8_matmulnbits_on_exported_models(
    exported: Callable[[str, str], Path], tmp_path: Path, name: str, exporter: str
) -> None:
    src = exported(name, exporter)
    out = tmp_path / "q.onnx"
    report = compress_file(src, out, Recipe(steps=(QuantizeWeights(format=WeightFormat.MATMULNBITS),)))
    assert report.verification is not None and report.verification["passed"]
    nodes = [n for n in onnx.load(out).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == len(report.quantized) > 0
    assert all(r.format == "matmulnbits" for r in report.quantized)
    onnx.checker.check_model(out, full_check=True)


@pytest.mark.slow
@pytest.mark.parametrize("block", [0, 32])
def test_int8_on_real_smollm2_layers(exported: Callable[[str, str], Path], tmp_path: Path, block: int) -> None:
    """Real weights and architecture (SmolLM2-135M, first 4 layers): output error < 1%."""
    src = exported("smollm2-l4", "dynamo")
    out = tmp_path / "q.onnx"
    report = compress_file(src, out, Recipe(steps=(QuantizeWeights(block_size=block),)))
    assert report.verification is not None and report.verification["passed"]
    # The tied embedding feeds Gather and (through Transpose) the lm_head: it stays float.
    assert len(report.quantized) == 4 * 7
    feeds = random_inputs(ir.load(src), seed=1)
    (y_ref,) = run_ort(src, feeds)
    (y,) = run_ort(out, feeds, config={"session.qdq_matmulnbits_accuracy_level": "1"})
    assert rel_error(y, y_ref) < TOL["model_output_int8"]
