# ruff: noqa: E501  (C++ text to find and replace, kept on one line each)
"""Per-CTA timelines of NF4's mma.sync kernel (Nf4MmaKernel), and ablations of its group ends.

Patches a copy of runtime_ops/src and of tools/cuda (never the working tree): thread 0 of each CTA
records clock64 / %globaltimer marks (start, GridDependencyWait done, first unit landed, last unit
computed, end; the time spent in group ends and waiting for flags), and kernel_bench prints them
for the last launch of the kernel ("TL" lines, "TLAVG" the mean). On the GPU machine:

    cp -r runtime_ops/src /tmp/s && cp -r tools/cuda /tmp/t
    python3 tools/cuda/mma_timeline_patch.py /tmp/s /tmp/t tl        # or tl_nofix, tl_norel, tl_empty
    nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I <ORT headers> -I /tmp/s -I /tmp/t \
        /tmp/t/kernel_bench.cu -lcublas -o /tmp/kb && CHUNKS= MMAGP= /tmp/kb nf4 4096 11008 16

Variants (results WRONG where a step is removed; timing only): nofix (every group written as if
the CTA held it whole), norel (no release of the partial sums' flags, no wait for them), empty
(group ends only clear the sums). docs/results/runtime_ops_cuda_h100_mma_timeline.txt.
"""

import pathlib
import sys

src, tools, variant = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
f = src / "common" / "dequant_cuda.cuh"
t = f.read_text()


def rep(old, new, count=1):
    global t
    assert t.count(old) == count, (variant, old, t.count(old))
    t = t.replace(old, new)


if "nofix" in variant:
    rep(
        "    const bool has_end = range.u_end >= (grp + 1) * sk.upp;  // the group's last unit is this CTA's",
        "    const bool has_end = true;",
    )
    rep(
        "      const int c_first = range.u_begin <= grp * sk.upp ? static_cast<int>(blockIdx.x) : sk.CtaOf(grp * sk.upp);",
        "      const int c_first = blockIdx.x;",
    )
if "tl" in variant:
    rep(
        "template <typename S, int NT, int GP>\n__global__ void __launch_bounds__(kMmaWarps * 32, 1)\n    Nf4MmaKernel(",
        '__device__ unsigned long long oco_tl[4096 * 10];\n__device__ __forceinline__ unsigned long long Gt() { unsigned long long v; asm volatile("mov.u64 %0, %globaltimer;" : "=l"(v)); return v; }\n'
        "template <typename S, int NT, int GP>\n__global__ void __launch_bounds__(kMmaWarps * 32, 1)\n    Nf4MmaKernel(",
    )
    rep(
        "  using L = MmaLayout<S, NT, GP>;\n  extern __shared__ __align__(16) unsigned char mma_smem[];\n  unsigned char* stages = mma_smem + kMmaTableBytes;",
        "  using L = MmaLayout<S, NT, GP>;\n  const unsigned long long tl_g0 = Gt(); const long long tl_c0 = clock64(); long long tl_gw = 0, tl_first = 0, tl_lastc = 0, tl_wait = 0, tl_gend = 0;\n  extern __shared__ __align__(16) unsigned char mma_smem[];\n  unsigned char* stages = mma_smem + kMmaTableBytes;",
    )
    rep(
        "        SkAwaitFlags(counters, c_first, blockIdx.x, threadIdx.x, kThreads);\n        __syncthreads();",
        "        const long long tw0 = clock64();\n        SkAwaitFlags(counters, c_first, blockIdx.x, threadIdx.x, kThreads);\n        __syncthreads();\n        tl_wait += clock64() - tw0;",
    )
    rep(
        "  GridDependencyWait();\n  AllowDependentLaunch();\n#pragma unroll\n  for (int s = 0; s < L::kStages - 1; ++s) {",
        "  GridDependencyWait();\n  tl_gw = clock64();\n  AllowDependentLaunch();\n#pragma unroll\n  for (int s = 0; s < L::kStages - 1; ++s) {",
    )
    rep(
        "    __syncthreads();  // unit j has landed for every thread, and every warp is done with unit j - 1's stage\n",
        "    __syncthreads();  // unit j has landed for every thread, and every warp is done with unit j - 1's stage\n    if (j == 0) tl_first = clock64();\n",
    )
    rep(
        "    if (--left == 0) {\n      group_end(grp);",
        "    if (j + 1 == units) tl_lastc = clock64();\n    if (--left == 0) {\n      const long long tg0 = clock64();\n"
        "      group_end(grp);\n      tl_gend += clock64() - tg0;",
    )
    # end of kernel: after the loop
    rep(
        "        grp = u / sk.upp;\n        left = min(order.End(seg), (grp + 1) * sk.upp) - u;\n      }\n    }\n  }\n}\n",
        "        grp = u / sk.upp;\n        left = min(order.End(seg), (grp + 1) * sk.upp) - u;\n      }\n    }\n  }\n"
        "  if (threadIdx.x == 0) { const long long ce = clock64(); unsigned long long* o = oco_tl + blockIdx.x * 10; o[8] = range.u_begin; o[9] = range.u_end;\n"
        "    o[0] = tl_g0; o[1] = Gt(); o[2] = ce - tl_c0; o[3] = tl_gw - tl_c0; o[4] = tl_first - tl_gw; o[5] = tl_lastc - tl_first; o[6] = ce - tl_lastc; o[7] = (unsigned long long)units | ((unsigned long long)tl_wait << 8) | ((unsigned long long)tl_gend << 36); }\n}\n",
    )
    kb = tools / "kernel_bench.cu"
    k = kb.read_text()
    old = "  return 0;\n}\n"
    assert k.count(old) == 1
    k = k.replace(
        old,
        r"""  {
    static unsigned long long h[4096 * 10];
    CK(cudaMemcpyFromSymbol(h, oco::cuda::oco_tl, sizeof h));
    int n = 0; unsigned long long g0 = ~0ull, g1 = 0;
    for (; n < 4096 && h[n * 10] != 0; ++n) { g0 = std::min(g0, h[n * 10]); g1 = std::max(g1, h[n * 10 + 1]); }
    double cyc = 0, ns = 0;
    for (int c = 0; c < n; ++c) { cyc += h[c * 10 + 2]; ns += h[c * 10 + 1] - h[c * 10]; }
    const double ghz = cyc / ns;
    std::printf("TIMELINE ctas=%d span=%.2f us clock=%.3f GHz (last launch of Nf4MmaKernel)\n", n, (g1 - g0) / 1e3, ghz);
    std::printf("TL  cta units start_us end_us | tot gw first loop/unit end wait gend (us)\n");
    double s[8] = {0};
    for (int c = 0; c < n; ++c) {
      const unsigned long long* o = h + c * 10;
      const int units = int(o[7] & 255); const double wait = double((o[7] >> 8) & ((1ull << 28) - 1)), gend = double(o[7] >> 36);
      const double v[8] = {(o[0] - g0) / 1e3, (o[1] - g0) / 1e3, o[2] / ghz / 1e3, o[3] / ghz / 1e3, o[4] / ghz / 1e3, units > 1 ? o[5] / ghz / 1e3 / (units - 1) : 0, o[6] / ghz / 1e3, wait / ghz / 1e3};
      for (int i = 0; i < 8; ++i) s[i] += v[i];
      std::printf("TL %4d %3d %6.2f %6.2f | %6.2f %5.2f %5.2f %5.3f %5.2f %5.2f %5.2f %llu %llu\n", c, units, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], gend / ghz / 1e3, o[8], o[9]);
    }
    std::printf("TLAVG %6.2f %6.2f | %6.2f %5.2f %5.2f %5.3f %5.2f %5.2f\n", s[0] / n, s[1] / n, s[2] / n, s[3] / n, s[4] / n, s[5] / n, s[6] / n, s[7] / n);
  }
  return 0;
}
""",
    )
    kb.write_text(k)
if "norel" in variant:  # no release and no flag wait (results wrong; timing only)
    rep("      if (threadIdx.x == 0) StoreRelease(counters + blockIdx.x, 1u);", "")
    rep("        SkAwaitFlags(counters, c_first, blockIdx.x, threadIdx.x, kThreads);\n", "")
if "empty" in variant:  # group_end only clears the sums (results wrong; timing only)
    rep("  auto group_end = [&](int grp) {\n", "  auto group_end = [&](int grp) {\n    if (m < 0) {\n")
    rep(
        "#pragma unroll\n    for (int nt = 0; nt < NT; ++nt)\n#pragma unroll\n      for (int e = 0; e < 8; ++e) acc[nt][e] = 0.0f;\n  };",
        "    }\n    if (acc[0][0] == 1.2345f) g.y[threadIdx.x] = 0;\n#pragma unroll\n    for (int nt = 0; nt < NT; ++nt)\n"
        "#pragma unroll\n      for (int e = 0; e < 8; ++e) acc[nt][e] = 0.0f;\n  };",
    )
f.write_text(t)
