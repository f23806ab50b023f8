"""W8A8 on ORT CPU: our static INT8 against fp32, ORT quantize_dynamic and quantize_static.

Two parts, every variant timed in the same run on the same machine:

1. Per layer: a stack of 8 MatMul layers alternating SmolLM2's 576x1536 and 1536x576 weights
   (Gaussian, seeded), M in {1, 256} rows; variants: fp32 MatMul, ours (w8a8, QDQ form, which
   ORT fuses; and the QLinearMatMul form), ORT quantize_dynamic (per channel) and ORT
   quantize_static (QDQ, per channel, MinMax) calibrated on the same rows as ours.
2. Whole model: SmolLM2-135M prefill of one 512-token window of tutorial/ text; variants: fp32
   (as exported, and with our ort-cpu fusions alone: attention, norms, rotary), ours (w8a8 +
   SmoothQuant alpha: QDQ form, QDQ with the ort-cpu fusions, QLinearMatMul form), ORT
   quantize_dynamic, ORT quantize_static
   (QDQ, per channel, MatMul/Gemm as ours, MinMax) on the same calibration windows (library/
   text, ``--calib-samples`` x 512).

Times are medians of ``--repeat`` runs after 2 warm-up runs, the variants' runs interleaved
round-robin, with ORT's default threading; ratios are fp32 time / variant time (> 1: faster).
The quantized models are kept in ``--out`` so that ``python -m tools.eval_perplexity`` can score
them.

    python -m tools.bench_w8a8                       # both parts, models in out/w8a8/
    python -m tools.bench_w8a8 --skip-model          # per-layer only (a minute)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_compress import (
    AttentionTarget,
    FuseAttention,
    QuantizeWeights,
    Recipe,
    Smooth,
    Verify,
    WeightFormat,
    WeightScheme,
    compress_file,
)
from onnx_compress.calibration.data import TextCalibration, input_specs, model_feeds, read_text, tokenize

ROOT = Path(__file__).resolve().parents[1]


def _time_all(paths: Mapping[str, Path], feeds: Mapping[str, np.ndarray], repeat: int) -> dict[str, float]:
    """Median time of each model, the runs interleaved round-robin so that a slow phase of the
    machine (a 2-core VM has them) hits every variant alike."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    for s in sessions.values():
        for _ in range(2):
            s.run(None, dict(feeds))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeat):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, dict(feeds))
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _stack(path: Path, layers: int = 8) -> None:
    rng = np.random.default_rng(0)
    dims = [576, 1536] * (layers // 2) + [576]
    nodes, inits = [], []
    for i in range(layers):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"], name=f"layer{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))  # keeps activations in range
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["m", dims[0]])],
        [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, ["m", dims[-1]])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)


class _Reader:
    """ORT's CalibrationDataReader over our samples."""

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return dict(next(self._it, None) or {}) or None


def _ort_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=True)


def _ort_static(src: Path, dst: Path, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        src,
        dst,
        _Reader(samples),  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=True,
        # bounded memory; ORT raises "No data is collected" when the sample count is a multiple
        extra_options={"CalibMaxIntermediateOutputs": next(m for m in (3, 5, 7, 11) if len(samples) % m)},
    )


def _fused_fp32(src: Path, dst: Path) -> None:
    recipe = Recipe(steps=(FuseAttention(AttentionTarget.ORT_CPU),), verify=Verify(enabled=False))
    compress_file(src, dst, recipe)


def _ours(src: Path, dst: Path, samples: Any, fmt: WeightFormat, alpha: float | None, fuse: bool = False) -> None:
    steps: list[Any] = [] if alpha is None else [Smooth(alpha)]
    if fuse:
        steps.append(FuseAttention(AttentionTarget.ORT_CPU))
    steps.append(QuantizeWeights(scheme=WeightScheme.W8A8, format=fmt))
    compress_file(src, dst, Recipe(steps=tuple(steps), verify=Verify(enabled=False)), samples)


def _row(label: str, seconds: float, fp32: float, per: int = 1) -> str:
    return f"| {label} | {1e3 * seconds / per:.3f} | {fp32 / seconds:.2f}x |"


def layers(out: Path, repeat: int) -> None:
    src = out / "stack-fp32.onnx"
    _stack(src)
    rng = np.random.default_rng(1)
    calib = [{"h0": rng.standard_normal((64, 576)).astype(np.float32)} for _ in range(8)]
    variants: dict[str, Callable[[Path], None]] = {
        "ours w8a8 (QDQ, fused by ORT)": lambda p: _ours(src, p, calib, WeightFormat.QDQ, None),
        "ours w8a8 (QLinearMatMul)": lambda p: _ours(src, p, calib, WeightFormat.QLINEAR, None),
        "ORT quantize_dynamic": lambda p: _ort_dynamic(src, p),
        "ORT quantize_static (QDQ, MinMax)": lambda p: _ort_static(src, p, calib),
    }
    paths = {"fp32 MatMul": src}
    for i, (label, make) in enumerate(variants.items()):
        paths[label] = out / f"stack-{i}.onnx"
        make(paths[label])
    print("\n8 MatMul layers 576x1536 / 1536x576 (per layer):\n")
    for m in (1, 256):
        x = {"h0": rng.standard_normal((m, 576)).astype(np.float32)}
        times = _time_all(paths, x, repeat)
        print(f"M = {m}\n\n| variant | ms per layer | vs fp32 |\n|---|---|---|")
        for label, seconds in times.items():
            print(_row(label, seconds, times["fp32 MatMul"], per=8), flush=True)
        print()


def whole_model(out: Path, repeat: int, calib_samples: int, alpha: float) -> None:
    from models import export, text

    src = export.export("smollm2", "dynamo")
    tokenizer = export.smollm2_tokenizer()
    calibration = TextCalibration(text.calibration_dir(), tokenizer, calib_samples, 512)
    import onnx_ir as ir

    model = ir.load(str(src))
    samples = calibration.for_model(model)
    specs = input_specs(model)
    del model
    window = tokenize(read_text(text.evaluation_dir()), tokenizer)[:512]
    feeds = model_feeds(specs, window[None, :])
    variants: dict[str, Callable[[Path], None]] = {
        "fp32 + our ort-cpu fusions (attention, norms, rotary)": lambda p: _fused_fp32(src, p),
        f"ours w8a8 + smooth {alpha} (QDQ)": lambda p: _ours(src, p, samples, WeightFormat.QDQ, alpha),
        f"ours w8a8 + smooth {alpha} (QDQ) + ort-cpu fusions": lambda p: _ours(
            src, p, samples, WeightFormat.QDQ, alpha, fuse=True
        ),
        f"ours w8a8 + smooth {alpha} (QLinearMatMul)": lambda p: _ours(src, p, samples, WeightFormat.QLINEAR, alpha),
        "ORT quantize_dynamic": lambda p: _ort_dynamic(src, p),
        "ORT quantize_static (QDQ, MinMax)": lambda p: _ort_static(src, p, samples),
    }
    paths = {"fp32": src}
    names = [
        "fp32-fused",
        "ours-w8a8-smooth-qdq",
        "ours-w8a8-smooth-qdq-fused",
        "ours-w8a8-smooth-qlinear",
        "ort-dynamic",
        "ort-static",
    ]
    for name, (label, make) in zip(names, variants.items(), strict=True):
        paths[label] = out / f"smollm2-{name}.onnx"
        start = time.perf_counter()
        make(paths[label])
        print(f"built {paths[label].name} in {time.perf_counter() - start:.0f} s", flush=True)
    times = _time_all(paths, feeds, repeat)
    print(f"\nSmolLM2-135M prefill, 512 tokens, batch 1 ({calib_samples} x 512 calibration tokens):\n")
    print("| variant | ms | vs fp32 |\n|---|---|---|")
    for label, seconds in times.items():
        print(_row(label, seconds, times["fp32"]), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "w8a8")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--skip-model", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import os
    import platform

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}"
    )
    with tempfile.TemporaryDirectory():
        if not args.skip_layers:
            layers(args.out, args.repeat)
        if not args.skip_model:
            whole_model(args.out, args.repeat, args.calib_samples, args.alpha)


if __name__ == "__main__":
    main()
