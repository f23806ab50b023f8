#!/bin/bash
# On the GPU machine, after tools/gpu_runtime_ops.sh has built and installed the working tree's
# CUDA library (same warm machine): that library ("new") against one built from OLD_SRC ("old"),
# each copied into passes/onnx_compress/runtime/lib in turn and timed through ORT by
# tools/bench_runtime_ops.py, alternately for ROUNDS rounds (default 3). Prepare OLD_SRC here and
# carry it (as for ab_kernel_bench.sh), e.g.
#
#   OLD_SRC=.gpu/origsrc bash tools/cuda/ab_ort_bench.sh --formats float ours-nf4 --m 3 16 --repeats 5
#
# The arguments go to bench_runtime_ops (--device cuda is added). Writes ab_ort.txt to $OUT (or
# /tmp/oco-out); the working tree's library is put back at the end.
set -uo pipefail
out=${OUT:-/tmp/oco-out}
mkdir -p "$out"
old=${OLD_SRC:?OLD_SRC: a copy of runtime_ops/src to compare with}
export PYTHONPATH=/tmp/site:$PWD/passes${PYTHONPATH:+:$PYTHONPATH}
lib=passes/onnx_compress/runtime/lib/libonnx_compress_ops_cuda.so
[ -f "$lib" ] || { echo "no $lib: run tools/gpu_runtime_ops.sh first"; exit 1; }
cp "$lib" /tmp/ab_new.so
rm -rf /tmp/ab_old_src && mkdir -p /tmp/ab_old_src && cp -r runtime_ops/CMakeLists.txt runtime_ops/cmake /tmp/ab_old_src/ &&
  cp -r "$old" /tmp/ab_old_src/src
{ cmake -S /tmp/ab_old_src -B /tmp/ab_old_build -DCMAKE_BUILD_TYPE=Release -DOCO_CUDA=ON \
    -DORT_INCLUDE_DIR="${ORT_INCLUDE_DIR:-$PWD/.gpu/ort-include}" && cmake --build /tmp/ab_old_build -j "$(nproc)"; } \
  > /tmp/ab_old_build.log 2>&1 || { tail -20 /tmp/ab_old_build.log; echo "BUILD FAILED"; exit 1; }
cp "$(find /tmp/ab_old_build -name libonnx_compress_ops_cuda.so | head -1)" /tmp/ab_old.so
for r in $(seq "${ROUNDS:-3}"); do
  for v in old new; do
    cp "/tmp/ab_$v.so" "$lib"
    echo "== $v round $r"
    timeout 200 python3 -m tools.bench_runtime_ops --device cuda "$@" 2>&1 | grep -E '^[a-z0-9-]+ +[0-9.]+us'
  done
done | tee "$out/ab_ort.txt"
cp /tmp/ab_new.so "$lib"
