#!/bin/bash
# On the GPU machine (device run carrying .gpu/ort-include): build and run tools/cuda/kernel_bench.cu,
# then profile a few kernels with Nsight Compute when PROFILE is set. Output under $OUT.
set -uo pipefail
out=${OUT:-/tmp/oco-out}
mkdir -p "$out"
nvcc -O3 -std=c++17 -lineinfo -gencode arch=compute_90a,code=sm_90a -I runtime_ops/src -I .gpu/ort-include \
  tools/cuda/kernel_bench.cu -lcublas -o /tmp/kernel_bench || exit 1
/tmp/kernel_bench | tee "$out/kernel_bench.log"
if [ -n "${PROFILE:-}" ] && command -v ncu >/dev/null; then
  for cfg in ${PROFILE}; do  # e.g. PROFILE="nf4:4096:11008:1024 nf4:4096:11008:16"
    IFS=: read -r fmt k n m <<<"$cfg"
    timeout 120 ncu --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
      --section MemoryWorkloadAnalysis -k 'regex:TcKernel|GemvKernel|DequantChunk' --launch-skip 2 --launch-count 1 \
      /tmp/kernel_bench "$fmt" "$k" "$n" "$m" > "$out/ncu_${fmt}_${k}_${n}_${m}.log" 2>&1
    grep -E "Duration|Throughput|Achieved Occupancy|Registers|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible|Theoretical Occ|Block Limit|Bank" \
      "$out/ncu_${fmt}_${k}_${n}_${m}.log" | head -40
  done
fi
