#!/bin/bash
# GPU machine checks of the 4-bit forms, in two device runs right after the onnxruntime-gpu
# install (../shared/gpu/README.md: runs carrying .gpu/ort/p1..p4, then p5):
#
#   run 5 (carry .gpu/ort/p5 .gpu/ort-include .whl):
#     bash .gpu/ort/p5/install-ort-gpu.sh > /dev/null && bash tools/gpu_check.sh build
#   run 6 (carry .gpu/models), within 30 s:
#     bash tools/gpu_check.sh models
#
# build: the CUDA build of runtime_ops, the CUDA op tests (double-quantized absmax included)
#        and the standalone kernel benchmark (nf4, nf4dq, int8 against cuBLAS fp16).
# models: tools/gpu_models.py on .gpu/models/*.onnx: every 4-bit form on ORT CUDA vs ORT CPU.
# attention (carry .gpu/attn; after the install): tools/gpu_attention.py run, fused vs unfused.
# Logs go to $OUT (or /tmp/oco-out).
set -uo pipefail
out=${OUT:-/tmp/oco-out}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD/passes:$PWD${PYTHONPATH:+:$PYTHONPATH}
case "${1:-}" in
  build)
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
    build=/tmp/oco-build
    {
      cmake -S runtime_ops -B "$build" -DCMAKE_BUILD_TYPE=Release -DOCO_CUDA=ON \
            -DORT_INCLUDE_DIR="$PWD/.gpu/ort-include" &&
      cmake --build "$build" -j "$(nproc)" &&
      cmake --install "$build"
    } > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
    echo "built: $(ls passes/onnx_compress/runtime/lib)"
    timeout 300 python3 -m pytest -q -p no:cacheprovider -rs tests/onnx_compress/runtime 2>&1 | tee "$out/tests.log" | tail -15
    bash tools/cuda/run_kernel_bench.sh > "$out/kernel_bench.txt" 2>&1; tail -45 "$out/kernel_bench.txt"
    ;;
  models)
    for m in .gpu/models/*.onnx; do
      timeout 400 python3 -m tools.gpu_models "$m" --json "$out/gpu_models_$(basename "$m" .onnx).json" 2>&1 \
        | tee -a "$out/gpu_models.log"
    done
    ;;
  attention)
    # fused vs unfused attention (tools/gpu_attention.py; models from its prepare step)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    timeout 500 python3 -m tools.gpu_attention run .gpu/attn --json "$out/gpu_attention.json" 2>&1 \
      | tee "$out/gpu_attention.log"
    ;;
  *) echo "usage: $0 build|models|attention"; exit 2 ;;
esac
