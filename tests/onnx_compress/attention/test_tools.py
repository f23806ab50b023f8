"""The attention measurement tools measure what they claim (coverage cells, attention-only cuts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import attention_corpus as corpus
from tests.conftest import rel_error
from tools import attention_coverage, gpu_attention

from onnx_compress.attention.fuse import FuseAttentionPass
from onnx_compress.recipe import AttentionTarget


def test_coverage_cells_check_parity_and_count_if_wrapped_ops() -> None:
    ours = attention_coverage.measure("llama", "dynamo", "onnx-compress", "float16")
    assert ours.correct and ours.fused == 2  # GQA inside If(unpadded) counts once per block
    cell = attention_coverage.measure("gpt2", "dynamo", "onnxscript")
    assert not cell.correct and "does not run" in cell.note  # onnxscript's 3-D output for a 2-D reshape
    text = attention_coverage.table([("llama", "dynamo", 2, dict.fromkeys(attention_coverage.TOOLS, ours))])
    assert "**2 (100%)**" in text


@pytest.mark.slow
def test_attention_only_cuts_compute_the_same_attention(tmp_path: Path) -> None:
    """The fused and unfused cuts read the same values and give the same outputs (fp16, CPU),
    so their GPU timings compare the same work."""
    for name, mode in (("llama-cache", "decode"), ("bert-eager", "prompt")):
        model = ir.load(str(corpus.export(name, "dynamo", "float16")))
        unfused = tmp_path / f"{name}-unfused.onnx"
        fused = tmp_path / f"{name}-fused.onnx"
        ir.save(model, unfused)
        FuseAttentionPass(AttentionTarget.ORT_CUDA)(model)
        ir.save(model, fused)
        stops, outputs = gpu_attention._attention_cut(unfused)
        assert len(outputs) == (6 if mode == "decode" else 2)  # attention out (+ present k, v) per layer
        results = []
        for source in (unfused, fused):
            cut = source.with_name(source.stem + "-attn.onnx")
            gpu_attention._cone(source, stops, outputs, cut)
            session = ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"])
            feeds = gpu_attention._feeds(cut, mode, 24)
            names = {i.name for i in session.get_inputs()}
            assert set(stops) <= names  # the cut starts at the same values in both models
            results.append(session.run(None, {k: v for k, v in feeds.items() if k in names}))
        for a, b in zip(*results, strict=True):
            # fp16 attention over 24 keys, fused vs unfused accumulation order: the tests' fp16 bound
            assert rel_error(np.asarray(a), np.asarray(b)) < 2e-3, name
