"""Quantizer throughput and peak memory: onnx-compress against ONNX Runtime's own quantizers.

Each quantizer runs file to file (load, quantize, save) in its own fresh process, so its peak
RSS is its own; the same models are used for all of them in one run. Throughput is the number
of MatMul weight parameters in the model divided by the wall time of that process's work
(imports excluded). Ratios are ours / theirs (> 1: we are faster / use less memory).

    python -m tools.bench_quantize                    # large 2.1 GB model + MiniLM (real weights)
    python -m tools.bench_quantize --models minilm    # just one
    python -m tools.bench_quantize --json out.json

Quantizers (ours all with --no-verify; 4-bit ones with --int8 '' so that every layer is 4-bit,
as ORT's quantizers do it):
  ours-int8          onnx-compress --quantize int8 (per channel, QDQ)
  ours-int8-nbits    onnx-compress --format matmulnbits --block-size 128
  ours-int4          onnx-compress --quantize int4 --format matmulnbits (block 128, symmetric)
  ours-int4-qdq      onnx-compress --quantize int4 (QDQ int4, block 128, symmetric)
  ours-nf4           onnx-compress --quantize nf4 (NF4MatMul, block 64)
  ours-nf4-bnb4      onnx-compress --quantize nf4 --format bnb4 (MatMulBnb4, block 64)
  ort-nbits8         onnxruntime MatMulNBitsQuantizer(bits=8, block 128, symmetric)
  ort-dynamic        onnxruntime quantize_dynamic(per_channel=True, QInt8 weights)
  ort-nbits4         onnxruntime MatMulNBitsQuantizer(bits=4, block 128, symmetric, QOperator)
  ort-nbits4-qdq     onnxruntime MatMulNBitsQuantizer(bits=4, block 128, symmetric, QDQ)
  ort-bnb4           onnxruntime MatMulBnb4Quantizer(NF4, block 64)

Each of ours is compared with the ORT quantizers of its family (int8, int4, nf4).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]

# name -> (imports, timed work). Imports are not timed, for any quantizer.
_RUNNERS = {
    "ours-int8": ("from onnx_compress.cli import main", 'assert main([SRC, DST, "--no-verify", "-q"]) == 0'),
    "ours-int8-nbits": (
        "from onnx_compress.cli import main",
        'assert main([SRC, DST, "--no-verify", "-q", "--format", "matmulnbits", "--block-size", "128"]) == 0',
    ),
    "ort-nbits8": (
        "import onnx\nfrom onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer",
        "q = MatMulNBitsQuantizer(onnx.load(SRC), bits=8, block_size=128, is_symmetric=True, "
        "accuracy_level=4)\nq.process()\n"
        "q.model.save_model_to_file(DST, use_external_data_format=EXTERNAL)",
    ),
    "ort-dynamic": (
        "from onnxruntime.quantization import QuantType, quantize_dynamic",
        "quantize_dynamic(SRC, DST, per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=EXTERNAL)",
    ),
    "ours-int4": (
        "from onnx_compress.cli import main",
        'assert main([SRC, DST, "--no-verify", "-q", "--quantize", "int4", "--format", "matmulnbits", '
        '"--int8", ""]) == 0',
    ),
    "ours-int4-qdq": (
        "from onnx_compress.cli import main",
        'assert main([SRC, DST, "--no-verify", "-q", "--quantize", "int4", "--int8", ""]) == 0',
    ),
    "ours-nf4": (
        "from onnx_compress.cli import main",
        'assert main([SRC, DST, "--no-verify", "-q", "--quantize", "nf4", "--int8", ""]) == 0',
    ),
    "ours-nf4-bnb4": (
        "from onnx_compress.cli import main",
        'assert main([SRC, DST, "--no-verify", "-q", "--quantize", "nf4", "--format", "bnb4", "--int8", ""]) == 0',
    ),
    "ort-nbits4": (
        "import onnx\nfrom onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer",
        "q = MatMulNBitsQuantizer(onnx.load(SRC), bits=4, block_size=128, is_symmetric=True, "
        "accuracy_level=4)\nq.process()\n"
        "q.model.save_model_to_file(DST, use_external_data_format=EXTERNAL)",
    ),
    "ort-nbits4-qdq": (
        "import onnx\nfrom onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer\n"
        "from onnxruntime.quantization.quant_utils import QuantFormat",
        "q = MatMulNBitsQuantizer(onnx.load(SRC), bits=4, block_size=128, is_symmetric=True, "
        "quant_format=QuantFormat.QDQ)\nq.process()\n"
        "q.model.save_model_to_file(DST, use_external_data_format=EXTERNAL)",
    ),
    "ort-bnb4": (
        "import onnx\nfrom onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer",
        "q = MatMulBnb4Quantizer(onnx.load(SRC), MatMulBnb4Quantizer.NF4, 64)\nq.process()\n"
        "q.model.save_model_to_file(DST, use_external_data_format=EXTERNAL)",
    ),
}

# Which ORT quantizers each of ours is compared with.
_FAMILY = {"int8": ("ort-nbits8", "ort-dynamic"), "int4": ("ort-nbits4", "ort-nbits4-qdq"), "nf4": ("ort-bnb4",)}


def _family(name: str) -> tuple[str, ...]:
    return _FAMILY[name.split("-")[1]]


# Peak RSS is read from /proc/self/status (VmHWM): getrusage's ru_maxrss survives exec and
# would report the parent's peak for a child forked from a large parent.
PEAK_RSS = """
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
"""

_HARNESS = (
    PEAK_RSS
    + """
import json, sys, time, logging
logging.disable(logging.WARNING)
SRC, DST, EXTERNAL = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
{setup}
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "max_rss": peak_rss()}}))
"""
)


def matmul_params(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            for name in node.input[:2]:
                if name in inits:
                    total += math.prod(inits[name].dims)
    return total


def run_one(name: str, src: Path, folder: Path, external: bool) -> dict[str, float]:
    dst = folder / f"{name}.onnx"
    setup, body = _RUNNERS[name]
    code = _HARNESS.format(setup=setup, body=body)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(src), str(dst), "1" if external else "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for p in folder.glob(f"{name}.onnx*"):
        p.unlink()
    return result


def model_path(name: str, work: Path) -> tuple[Path, bool]:
    if name == "large":
        from models import large

        return large.build(work / "large"), True
    from models import export

    return export.export(name, "dynamo"), False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["large", "minilm"],
        help="large (2.1 GB, 8 x 8192x8192), or names from models/export.py",
    )
    parser.add_argument("--quantizers", nargs="+", default=list(_RUNNERS), choices=list(_RUNNERS))
    parser.add_argument("--repeats", type=int, default=1, help="runs per quantizer (best time is kept)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=ROOT / "out" if (ROOT / "out").is_dir() else None) as tmp:
        work = Path(tmp)
        for model in args.models:
            src, external = model_path(model, work)
            params = matmul_params(src)
            nbytes = sum(p.stat().st_size for p in src.parent.glob(src.name + "*"))
            results[model] = {}
            print(f"\n{model}: {params / 1e6:.1f} M MatMul weight params, {nbytes / 2**20:.0f} MiB on disk")
            for q in args.quantizers:
                runs = [run_one(q, src, work, external) for _ in range(args.repeats)]
                ok = [r for r in runs if "error" not in r]
                if not ok:
                    results[model][q] = runs[0]
                    print(f"  {q:16s} FAILED: {runs[0]['error']}")
                    continue
                best = min(ok, key=lambda r: r["seconds"])
                best["mparams_per_s"] = params / best["seconds"] / 1e6
                best["rss_over_model"] = best["max_rss"] / nbytes
                results[model][q] = best
            base = {k: v for k, v in results[model].items() if "error" not in v}
            for q, r in base.items():
                line = (
                    f"  {q:16s} {r['seconds']:7.2f} s  {r['mparams_per_s']:7.1f} M params/s  "
                    f"peak RSS {r['max_rss'] / 2**20:7.0f} MiB ({r['rss_over_model']:.2f}x model)"
                )
                if q.startswith("ours"):
                    for other in (k for k in base if k in _family(q)):
                        o = base[other]
                        line += (
                            f"\n{'':20s}vs {other}: {o['seconds'] / r['seconds']:.2f}x speed, "
                            f"{o['max_rss'] / r['max_rss']:.2f}x less memory"
                        )
                print(line)
            if model == "large":
                shutil.rmtree(work / "large", ignore_errors=True)
    meta = {"machine": platform.machine(), "cpus": __import__("os").cpu_count(), "python": platform.python_version()}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
