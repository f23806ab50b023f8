"""Run each of our CUDA kernels a few times on one 4096x11008 layer, for a profiler.

    ncu --metrics gpu__time_duration.sum -k regex:'Gemv|Tc' python -m tools.profile_cuda_ops

ncu reports each kernel's own duration, which separates kernel time from ORT's per-op
overhead in tools/bench_runtime_ops.py's numbers.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

from onnx_compress import runtime
from tools.bench_runtime_ops import build_int8, build_nf4, session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    parser.add_argument("--shape", default="4096x11008")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    k, n = (int(v) for v in args.shape.split("x"))
    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32) * 0.02
    assert runtime.has_cuda_library()
    for name, build in (("nf4", build_nf4), ("int8", build_int8)):
        model, _, _ = build([w], np.float16)
        sess = session(model, "cuda")
        for m in args.m:
            x = ort.OrtValue.ortvalue_from_numpy(np.ones((m, k), np.float16), "cuda", 0)
            binding = sess.io_binding()
            binding.bind_ortvalue_input("x", x)
            binding.bind_output("y", "cuda")
            for _ in range(args.runs):
                sess.run_with_iobinding(binding)
            print(f"{name} M={m} done", flush=True)


if __name__ == "__main__":
    main()
