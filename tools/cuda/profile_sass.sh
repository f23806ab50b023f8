#!/bin/bash
# On the GPU machine: Nsight Compute on one launch of a kernel of tools/cuda/kernel_bench.cu, then
# where its instructions and stall samples go, per SASS opcode and per straight-line region.
#
#   bash tools/cuda/profile_sass.sh nf4m1 Nf4GemvSkKernel nf4 4096 11008 1
#
# (name, kernel name regex, kernel_bench's format K N M). Writes NAME_details.txt (ncu's sections),
# NAME_stalls.txt (stall reasons per issued instruction, the opcode and region tables) and
# NAME_sass.csv.gz (per-instruction source page) to $OUT (or /tmp/oco-out).
set -uo pipefail
out=${OUT:-/tmp/oco-out}
mkdir -p "$out"
name=$1 rx=$2
shift 2
inc=${ORT_INCLUDE_DIR:-$PWD/.gpu/ort-include}
[ -x /tmp/kernel_bench_lineinfo ] || nvcc -O3 -std=c++17 -lineinfo -gencode arch=compute_90a,code=sm_90a \
  -I runtime_ops/src -I "$inc" tools/cuda/kernel_bench.cu -lcublas -o /tmp/kernel_bench_lineinfo || exit 1
CHUNKS= MMAGP= timeout 300 ncu --set full --import-source no -k "regex:$rx" --launch-skip 5 --launch-count 1 \
  -o "/tmp/$name" -f /tmp/kernel_bench_lineinfo "$@" > "/tmp/$name.log" 2>&1 || { tail -20 "/tmp/$name.log"; exit 1; }
ncu -i "/tmp/$name.ncu-rep" --page details > "$out/${name}_details.txt" 2>&1
ncu -i "/tmp/$name.ncu-rep" --page raw --csv > "/tmp/${name}_raw.csv" 2>/dev/null
ncu -i "/tmp/$name.ncu-rep" --page source --csv --print-source sass > "/tmp/${name}_sass.csv" 2>/dev/null
gzip -c "/tmp/${name}_sass.csv" > "$out/${name}_sass.csv.gz"
python3 - "/tmp/${name}_raw.csv" "/tmp/${name}_sass.csv" <<'PY' | tee "$out/${name}_stalls.txt"
import collections, csv, sys
raw = list(csv.reader(open(sys.argv[1])))
metrics = dict(zip(raw[0], raw[2])) if len(raw) > 2 else {}
prefix, suffix = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"
stalls = sorted(((k[len(prefix):-len(suffix)], float(v)) for k, v in metrics.items()
                 if k.startswith(prefix) and k.endswith(suffix) and v not in ("", "n/a")), key=lambda x: -x[1])
for k in ("gpu__time_duration.sum", "smsp__inst_executed.sum", "smsp__issue_active.avg.pct_of_peak_sustained_active",
          "launch__registers_per_thread", "dram__bytes_read.sum"):
    print(k, metrics.get(k, "?"))
print("stall cycles per issued instruction:", ", ".join(f"{k} {v:.2f}" for k, v in stalls[:10]))
rows = list(csv.reader(open(sys.argv[2])))
head, body = rows[1], rows[2:]
ie, st = head.index("Instructions Executed"), head.index("Warp Stall Sampling (All Samples)")
total = sum(int(r[ie]) for r in body) or 1
samples = sum(int(r[st]) for r in body) or 1
ops, op_samples = collections.Counter(), collections.Counter()
for r in body:
    words = r[1].split()
    op = (words[1] if words and words[0].startswith("@") else words[0]).split(".")[0] if words else "?"
    ops[op] += int(r[ie])
    op_samples[op] += int(r[st])
print(f"{total} instructions, {samples} stall samples; by opcode:")
for op, n in ops.most_common(20):
    print(f"  {op:10s} {100 * n / total:5.1f}% of instructions  {100 * op_samples[op] / samples:5.1f}% of samples")
print("regions of equal execution count (>= 1% of instructions or samples):")
start, count, acc = 0, None, 0
regions = []
for i, r in enumerate(body + [[None] * len(head)]):
    n = int(r[ie]) if r[ie] is not None else None
    if n != count:
        if count is not None:
            regions.append((start, i - 1, count, acc))
        start, count, acc = i, n, 0
    acc += int(r[st]) if r[st] is not None else 0
for a, b, n, s in regions:
    w = n * (b - a + 1)
    if w >= 0.01 * total or s >= 0.01 * samples:
        print(f"  lines {a}-{b} x{n}: {100 * w / total:4.1f}% of instructions, {100 * s / samples:4.1f}% of samples")
PY
