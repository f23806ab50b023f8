"""Weight-quantization error on the test models, as markdown tables.

For each model and configuration (``scheme:block[:asym|:dq]``): the per-layer weight error
(``||dW||_F / ||W||_F``, the expected relative output error of the layer for isotropic inputs),
the per-layer output error on the layer's captured inputs (``||X dW|| / ||X W||``, seeded
verification inputs), and the whole model's output error on seeded random inputs with fp32
compute (ORT session option ``session.qdq_matmulnbits_accuracy_level=1``) and with ORT CPU's
default (accuracy level 4: int8 activations inside the fused MatMulNBits). Every layer is
quantized with the configured scheme (``--int8 ''``: no int8 lm_head) unless ``--keep-head``.

4-bit schemes use stock ORT forms (int4: QDQ; nf4: MatMulBnb4; nf4 with ``:dq``: our
NF4MatMul), whose CPU kernels compute in float: the error is the weights' alone.

    python -m tools.accuracy                                          # the int8 table
    python -m tools.accuracy --configs int4:64 nf4:64 int4:128 nf4:128 --models minilm smollm2-l4
    python -m tools.accuracy --configs int4:128 nf4:128 --models smollm2-l4 --per-layer
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from models import export

from onnx_compress import QuantizeWeights, Recipe, Report, Verify, WeightFormat, WeightScheme, compress_file, runtime
from onnx_compress.verify import random_inputs


def _run(path: Path, feeds: dict[str, np.ndarray], level: str | None) -> np.ndarray:
    options = ort.SessionOptions()
    if level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
    if any(n.domain == runtime.DOMAIN for n in ir.load(path).graph.all_nodes()):
        runtime.session_options(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def step(config: str, keep_head: bool) -> QuantizeWeights:
    """``int8:0``, ``int4:128``, ``int4:128:asym``, ``nf4:64``, ``nf4:64:dq`` -> the quantize step."""
    parts = config.split(":")
    scheme = WeightScheme(parts[0])
    block = int(parts[1]) if len(parts) > 1 else None
    flags = set(parts[2:])
    kwargs: dict[str, object] = {"scheme": scheme, "block_size": block}
    if scheme is WeightScheme.NF4:
        kwargs["format"] = WeightFormat.CUSTOM if "dq" in flags else WeightFormat.BNB4
        kwargs["double_quant"] = "dq" in flags
    if "asym" in flags:
        kwargs["symmetric"] = False
    if scheme.four_bit and not keep_head:
        kwargs["int8"] = ()
    return QuantizeWeights(**kwargs)  # type: ignore[arg-type]


def _pct(x: float) -> str:
    return f"{100 * x:.3f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert", "llama", "minilm", "smollm2-l4"])
    parser.add_argument("--exporter", default="dynamo")
    parser.add_argument("--configs", nargs="+", default=["int8:0", "int8:32"], help="scheme:block[:asym|:dq]")
    parser.add_argument("--keep-head", action="store_true", help="4-bit: keep the default int8 lm_head")
    parser.add_argument("--per-layer", action="store_true", help="also print every layer's errors")
    args = parser.parse_args()
    print(
        "| model | scheme | layers | bits/weight | weight error mean / max | layer output error mean / max "
        "| model output error fp32 compute | ORT CPU default |"
    )
    print("|---|---|---|---|---|---|---|---|")
    per_layer: dict[tuple[str, str], Report] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            src = export.export(name, args.exporter)
            feeds = random_inputs(ir.load(src), seed=1)
            y_ref = _run(src, feeds, None)
            for config in args.configs:
                q = step(config, args.keep_head)
                out = Path(tmp) / f"{name}-{config.replace(':', '-')}.onnx"
                # verification on: it captures the layer inputs (layer output errors) and checks the result
                report = compress_file(src, out, Recipe(steps=(q,), verify=Verify(enabled=True)))
                per_layer[(name, config)] = report
                w = [r.rel_error for r in report.quantized if r.rel_error is not None]
                o = [r.output_error for r in report.quantized if r.output_error is not None]
                fp32 = _rel(_run(out, feeds, "1"), y_ref)
                default = _rel(_run(out, feeds, None), y_ref)
                bits = report.bits_per_weight or 0.0
                layer_out = f"{_pct(float(np.mean(o)))} / {_pct(max(o))}" if o else "-"
                print(
                    f"| {name} | {q.label} | {len(w)} | {bits:.2f} | {_pct(float(np.mean(w)))} / {_pct(max(w))} "
                    f"| {layer_out} | {_pct(fp32)} | {_pct(default)} |"
                )
    if args.per_layer:
        for name in args.models:
            reports = {c: per_layer[(name, c)] for c in args.configs}
            print(f"\n{name}: per-layer output error (weight error in brackets)\n")
            print("| layer | " + " | ".join(reports) + " |")
            print("|---|" + "---|" * len(reports))
            first = next(iter(reports.values()))
            for rec in first.quantized:
                cells = []
                for report in reports.values():
                    r = next(x for x in report.quantized if x.weight == rec.weight)
                    out_err = _pct(r.output_error) if r.output_error is not None else "-"
                    cells.append(f"{out_err} ({_pct(r.rel_error or 0.0)})")
                print(f"| {rec.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
