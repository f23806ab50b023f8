#!/bin/bash
# Build the CUDA library of runtime_ops on the GPU machine, run the CUDA tests and the kernel
# benchmark, in one call. Run from the repository root on that machine, with onnxruntime-gpu
# importable (../shared/gpu/README.md: five device runs carrying .gpu/ort/p1..p5), e.g.:
#
#   bash .gpu/ort/p5/install-ort-gpu.sh && export PYTHONPATH=/tmp/site && bash tools/gpu_runtime_ops.sh
#
# Needs the ORT C/C++ headers (no network there): tools/gpu_prepare.sh copies them, with the
# wheels of pytest that the machine lacks, into .gpu/ort-include and .whl (carry both).
# Writes build.log, tests.log, bench.log, bench_cuda.json and gpu.txt to $OUT (or /tmp/oco-out).
set -uo pipefail
out=${OUT:-/tmp/oco-out}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD/passes:$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
inc=${ORT_INCLUDE_DIR:-$PWD/.gpu/ort-include}
# Kernel times without ORT first (CUDA events, cuBLAS fp16 baseline; CHUNKS sets the chunk
# sizes of the dequantize + cuBLAS path): tools/cuda/kernel_bench.cu
if [ -z "${SKIP_KERNEL_BENCH:-}" ]; then
  bash tools/cuda/run_kernel_bench.sh > "$out/kernel_bench.txt" 2>&1; tail -80 "$out/kernel_bench.txt"
fi
build=/tmp/oco-build
{
  cmake -S runtime_ops -B "$build" -DCMAKE_BUILD_TYPE=Release -DOCO_CUDA=ON \
        -DORT_INCLUDE_DIR="$inc" &&
  cmake --build "$build" -j "$(nproc)" &&
  cmake --install "$build"
} > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
echo "built: $(ls passes/onnx_compress/runtime/lib)"
timeout 300 python3 -m pytest -q -p no:cacheprovider -rs tests/onnx_compress/runtime 2>&1 | tee "$out/tests.log" | tail -25
timeout 400 python3 -m tools.bench_runtime_ops --device cuda --json "$out/bench_cuda.json" ${BENCH_ARGS:-} 2>&1 \
  | tee "$out/bench.log" | tail -30
# Per-op overhead floor: tiny layers, where the kernels take no time.
timeout 120 python3 -m tools.bench_runtime_ops --device cuda --shapes 256x256 --m 1 16 --formats float nbits4 ours-nf4 \
  --repeats 3 2>&1 | tee "$out/overhead.log" | tail -6
