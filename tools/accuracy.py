"""Weight-quantization error on the test models, as a markdown table.

For each model and block size: the mean and max per-layer relative error (||dW||_F / ||W||_F,
the expected relative output error of the layer for isotropic inputs) and the whole model's
output error on seeded random inputs, with fp32 compute (ORT session option
``session.qdq_matmulnbits_accuracy_level=1``) and with ORT CPU's default (accuracy level 4:
int8 activations inside the fused MatMulNBits).

    python -m tools.accuracy                                   # the table in docs/accuracy.md
    python -m tools.accuracy --models minilm --block-sizes 0 32 64 128
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from models import export

from onnx_compress import QuantizeWeights, Recipe, Verify, compress_file
from onnx_compress.verify import random_inputs


def _run(path: Path, feeds: dict[str, np.ndarray], level: str | None) -> np.ndarray:
    options = ort.SessionOptions()
    if level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert", "llama", "minilm", "smollm2-l4"])
    parser.add_argument("--exporter", default="dynamo")
    parser.add_argument("--block-sizes", nargs="+", type=int, default=[0, 32])
    args = parser.parse_args()
    print(
        "| model | scheme | layers | layer error mean | layer error max | output error fp32 compute "
        "| output error ORT CPU default |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            src = export.export(name, args.exporter)
            feeds = random_inputs(ir.load(src), seed=1)
            y_ref = _run(src, feeds, None)
            for block in args.block_sizes:
                out = Path(tmp) / f"{name}-{block}.onnx"
                recipe = Recipe(steps=(QuantizeWeights(block_size=block),), verify=Verify(enabled=False))
                report = compress_file(src, out, recipe)
                errors = [r.rel_error for r in report.quantized if r.rel_error is not None]
                fp32 = _rel(_run(out, feeds, "1"), y_ref)
                default = _rel(_run(out, feeds, None), y_ref)
                label = QuantizeWeights(block_size=block).label
                print(
                    f"| {name} | {label} | {len(errors)} | {100 * np.mean(errors):.3f}% | {100 * max(errors):.3f}% "
                    f"| {100 * fp32:.3f}% | {100 * default:.3f}% |"
                )


if __name__ == "__main__":
    main()
