#!/bin/bash
# On the GPU machine: tools/cuda/kernel_bench.cu built from two copies of runtime_ops/src, the
# working tree's ("new") and OLD_SRC ("old"), run alternately for ROUNDS rounds (default 2) on the
# same machine, then each line's best time old / new. Prepare OLD_SRC here and carry it, e.g.:
#
#   rm -rf .gpu/origsrc && git archive HEAD runtime_ops/src | tar -x -C /tmp && cp -r /tmp/runtime_ops/src .gpu/origsrc
#   (device run, carry .gpu/ort-include and .gpu/origsrc)
#   OLD_SRC=.gpu/origsrc bash tools/cuda/ab_kernel_bench.sh "SHAPES=4096x11008,11008x4096 MS=1,2 nf4" "MS=1 int8"
#
# OLD_BENCH (default: the working tree's tools/cuda/kernel_bench.cu) is the kernel_bench source built
# with OLD_SRC, for when the working tree's needs fields the old sources lack (e.g. a copy of HEAD's
# kernel_bench.cu next to OLD_SRC).
# Each argument: kernel_bench's environment settings (README of kernel_bench.cu), then the format.
# CHUNKS and MMAGP default to empty (no dequantize + cuBLAS lines, planned groups only). Writes
# ab.txt to $OUT (or /tmp/oco-out).
set -uo pipefail
out=${OUT:-/tmp/oco-out}
mkdir -p "$out"
old=${OLD_SRC:?OLD_SRC: a copy of runtime_ops/src to compare with}
inc=${ORT_INCLUDE_DIR:-$PWD/.gpu/ort-include}
nv=(nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I "$inc")
"${nv[@]}" -I "$old" -I tools/cuda "${OLD_BENCH:-tools/cuda/kernel_bench.cu}" -lcublas -o /tmp/kb_old &
"${nv[@]}" -I runtime_ops/src tools/cuda/kernel_bench.cu -lcublas -o /tmp/kb_new &
wait
[ -x /tmp/kb_old ] && [ -x /tmp/kb_new ] || { echo "BUILD FAILED"; exit 1; }
for r in $(seq "${ROUNDS:-2}"); do
  for v in old new; do
    echo "== $v round $r"
    for cfg in "$@"; do
      read -ra parts <<<"$cfg"
      fmt=${parts[${#parts[@]} - 1]}
      env CHUNKS= MMAGP= "${parts[@]:0:${#parts[@]}-1}" /tmp/kb_$v "$fmt" | grep -v '^NVIDIA'
    done
  done
done 2>&1 | tee "$out/ab.txt"
python3 - "$out/ab.txt" <<'PY'
import collections, re, sys
times = collections.defaultdict(list)
version = None
for line in open(sys.argv[1]):
    m = re.match(r"== (\w+) round", line)
    if m:
        version = m.group(1)
        continue
    f = line.split()
    if "ours" in f and len(f) > 10:
        times[(" ".join(f[: f.index("ours")]), version)].append(float(f[f.index("ours") + 1]))
print("best of the rounds, us: old / new (ratio > 1: new faster)")
for key in sorted({k[0] for k in times}):
    o, n = times.get((key, "old")), times.get((key, "new"))
    if o and n:
        print(f"{key:72s} {min(o):8.1f} / {min(n):8.1f}  {min(o) / min(n):.3f}")
PY
