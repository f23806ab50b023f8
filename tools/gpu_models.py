"""Whole models with every 4-bit output form on ONNX Runtime CUDA against ONNX Runtime CPU.

For each form the input model is compressed here (our passes, no verification), then run on
the CPU and on the CUDA execution provider with the same seeded inputs; the script reports
the relative L2 difference CUDA vs CPU of every output, and each EP's error against the float
model on the same EP. It fails (exit 1) if CUDA and CPU differ by more than ``--tolerance``.

    python -m tools.gpu_models .gpu/models/minilm-fp16.onnx --json out.json

Forms: nf4 in NF4MatMul (float16 absmax, and double-quantized), int4 in MatMulNBits (block
128, symmetric, accuracy level 1 so that ORT CPU computes in float instead of int8) and in QDQ,
nf4 in MatMulBnb4, int8 in Int8MatMul. Our ops need our library (the CUDA build on the GPU
machine: tools/gpu_runtime_ops.sh builds it); where CUDA is missing the CUDA column is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnx_compress import AccuracyLevel, QuantizeWeights, Recipe, Verify, WeightFormat, WeightScheme, compress, runtime
from onnx_compress.verify import random_inputs

FORMS: dict[str, QuantizeWeights] = {
    "nf4-custom": QuantizeWeights(scheme=WeightScheme.NF4),
    "nf4-custom-dq": QuantizeWeights(scheme=WeightScheme.NF4, double_quant=True),
    "int4-matmulnbits": QuantizeWeights(
        scheme=WeightScheme.INT4, format=WeightFormat.MATMULNBITS, accuracy_level=AccuracyLevel.FP32
    ),
    "int4-qdq": QuantizeWeights(scheme=WeightScheme.INT4),
    "nf4-bnb4": QuantizeWeights(scheme=WeightScheme.NF4, format=WeightFormat.BNB4),
    "int8-custom": QuantizeWeights(format=WeightFormat.CUSTOM),
}


def session(path: Path, cuda: bool) -> ort.InferenceSession:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ORT CPU fuses DequantizeLinear->MatMul into MatMulNBits with int8 activations by default
    # (accuracy level 4); compute in float like the CUDA EP does, so the two can be compared.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if cuda and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    uses_ours = any(n.domain == runtime.DOMAIN for n in ir.load(path).graph.all_nodes())
    if uses_ours:
        runtime.session_options(options, cuda=cuda)
    sess = ort.InferenceSession(str(path), options, providers=providers)
    if cuda and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"no CUDA session for {path}")
    return sess


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--tolerance", type=float, default=1e-2, help="max CUDA-vs-CPU relative difference")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and runtime.has_cuda_library()
    model = ir.load(args.model)
    feeds = random_inputs(model, seed=0, batch=2, sequence=16)
    results: dict[str, Any] = {"model": str(args.model), "cuda": cuda, "forms": {}}
    ref = {"cpu": session(args.model, False).run(None, feeds)}
    if cuda:
        ref["cuda"] = session(args.model, True).run(None, feeds)
        results["float_cuda_vs_cpu"] = max(rel(c, p) for c, p in zip(ref["cuda"], ref["cpu"], strict=True))
        print(f"float model: CUDA vs CPU {results['float_cuda_vs_cpu']:.2e}")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.forms:
            t0 = time.perf_counter()
            out = compress(model, Recipe(steps=(FORMS[name],), verify=Verify(enabled=False)))
            path = Path(tmp, f"{name}.onnx")
            ir.save(out.model, path)
            ops = sorted({n.op_type for n in out.model.graph if n.domain in ("com.microsoft", runtime.DOMAIN)})
            row: dict[str, Any] = {"ops": ops, "seconds_to_compress": time.perf_counter() - t0}
            y_cpu = session(path, False).run(None, feeds)
            row["cpu_vs_float"] = max(rel(a, b) for a, b in zip(y_cpu, ref["cpu"], strict=True))
            if cuda:
                y_cuda = session(path, True).run(None, feeds)
                row["cuda_vs_cpu"] = max(rel(a, b) for a, b in zip(y_cuda, y_cpu, strict=True))
                row["cuda_vs_float"] = max(rel(a, b) for a, b in zip(y_cuda, ref["cuda"], strict=True))
                row["ok"] = bool(row["cuda_vs_cpu"] <= args.tolerance and np.isfinite(row["cuda_vs_cpu"]))
                failed |= not row["ok"]
            results["forms"][name] = row
            cols = " ".join(
                f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "seconds_to_compress"
            )
            print(
                f"{name:18s} {'+'.join(ops) or 'DequantizeLinear'}: {cols} {'' if row.get('ok', True) else 'MISMATCH'}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
