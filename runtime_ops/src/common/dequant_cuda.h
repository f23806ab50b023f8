// Host-side interface of the CUDA kernels of NF4MatMul and Int8MatMul (no CUDA headers needed
// by callers beyond the runtime API). The kernels live in common/dequant_cuda.cuh.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/cublas_api.h"
#include "common/ops_common.h"

namespace oco {

// kInt8: scales only (NF4MatMul's double-quantized absmax, with CudaCall::scale2 and offset).
enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2, kInt8 = 3 };

// One call: Y[m, N] = A[m, K] @ dequant(B) (+ bias), all pointers on the device.
struct CudaCall {
  const void* a = nullptr;
  int64_t m = 0;
  const uint8_t* b = nullptr;      // [panels, k_pad, bytes_per_k]
  const void* scales = nullptr;    // [panels, blocks, 32]
  DType scale_type = DType::kFloat;
  const float* scale2 = nullptr;   // kInt8 scales: [ceil(panels * blocks * 32 / 256)] (device)
  const float* offset = nullptr;   // kInt8 scales: one float (device)
  const void* bias = nullptr;      // [N] or null
  void* y = nullptr;
  DType type = DType::kHalf;       // of A, bias and Y
  DequantParams p;
  cudaStream_t stream = nullptr;
  int sm_count = 132;
  // Large-M path (dequantize chunks of B into `workspace`, cublasGemmEx per chunk): taken when
  // `blas` is set and M is large enough; `blas_handle` is a cuBLAS handle of this device.
  const CublasApi* blas = nullptr;
  void* blas_handle = nullptr;
  void* workspace = nullptr;                  // WorkspaceBytes(call, plan) bytes (device)
  // Stream-K GEMV (CudaPlan::stream_k): GemvWorkspaceBytes(call, plan) bytes (device), zeroed before
  // its first use and then reused by every call on one stream (the kernel leaves it as it found it).
  void* gemv_workspace = nullptr;
  int64_t chunk_bytes = int64_t{128} << 20;   // dequantized bytes per chunk (smaller chunks: slower cuBLAS calls)
  int force = 0;  // benchmarks: 1 = own kernels only, 2 = dequant + cuBLAS, 3 / 4 = its dequant / GEMMs alone,
                  // 5 = the general GEMV (M <= 2), 6 / 7 = the float16 GEMVs' stream-K / per-panel kernel,
                  // 8 = NF4's register-decoding tensor-core kernel (M <= kMmaMaxRows), 9 = the
                  // wgmma kernel, NF4 or Int8 (sm_90a; mma_gp: its rows of A per CTA, 0 = planned)
  // The device (compute capability 9.0) and the build (sm_90a code) run the wgmma kernel.
  bool wgmma = false;
  int mma_gp = 0;  // benchmarks: that kernel's panels per CTA group (0: planned)
  int wg_splits = 0;  // benchmarks: the wgmma kernel's splits of K (0: planned)
  int wg_stream_k = 0;  // benchmarks: its stream-K schedule (WgGrid::sk_ctas): 0 planned, 1 never, 2 always
  // The GEMVs and the register-decoding tensor-core kernel as programmatic dependent launches
  // (sm_90 on): they may start while the stream's previous kernel finishes, reading B and the
  // scales before they wait for it. Set only when B and the scales (scale2, offset) are constant
  // initializers of a device of compute capability 9 or more.
  bool pdl = false;
  // Bytes of its weights each CTA of those kernels prefetches into L2 when it starts (sm_90 on;
  // -1: kDefaultPrefetchBytes for the GEMVs, none for the tensor-core kernel).
  int64_t prefetch_bytes = -1;
};

// H100, kernel_bench (docs/benchmarks.md): 64 KiB per CTA takes 0.3-0.9 us off the GEMVs at M = 1
// (4096x11008 NF4 16.2 -> 15.8 us, 11008x4096 15.4 -> 14.5), is neutral at M = 2 and slows the
// tensor-core kernel (8192x28672 M = 16: 77.4 -> 80.6 us); a CTA's whole range slows them all
// (L2 thrashing: 8192x28672 NF4 M = 1 52.1 -> 62.6 us).
inline constexpr int64_t kDefaultPrefetchBytes = 64 * 1024;

// The wgmma kernel of NF4 and Int8 (sm_90a, wgmma.cuh): CTAs whose kWgThreads consumer threads hold the
// sums of kWgPanels panels x CudaPlan::bm rows of A, K in stages of kWgK rows.
inline constexpr int kWgThreads = 256;
inline constexpr int kWgPanels = 4;
inline constexpr int kWgK = 64;
// Its grid: tiles of kWgPanels panels x bm rows (x, y) and splits of K (z), or, with sk_ctas > 0,
// the stream-K schedule: sk_ctas CTAs, each taking an equal contiguous range of the tiles x stages
// (tile-major), the partial sums of tiles shared by CTAs added by the CTA that holds the tile's
// last stage (wgmma.cuh). cost: the plan's stages per CTA times its waves (the planner's measure).
struct WgGrid {
  int64_t tiles_x = 0, tiles_y = 0;
  int splits = 1;
  int sk_ctas = 0;
  double cost = 0;
};

// How a call is run: which kernel and tile.
struct CudaPlan {
  bool tensor_cores = false;
  int bm = 0;  // rows per CTA of the tensor-core kernel
  int mr = 0;  // rows of A per CTA of the SIMT kernel
  bool dequant_gemm = false;  // dequantize chunk_panels panels at a time, then cuBLAS
  bool half_gemv = false;     // float16 A, M <= 4: the float16 GEMVs (NF4: two kernels; Int8: stream-K)
  bool stream_k = false;      // ... in the stream-K form (needs CudaCall::gemv_workspace)
  bool mma = false;           // NF4, float16 A: the tensor-core kernel decoding in registers (stream-K
                              // too: counters in gemv_workspace, partial sums in workspace)
  int nt = 0;                 // ... its tiles of 8 rows of A (M <= 8 * nt)
  int gp = 0;                 // ... its panels per CTA group (2, 4 or 8; MmaGroupPanels)
  bool wgmma = false;         // float16 A, sm_90a: wgmma fed from registers (bm: rows of A per CTA)
  WgGrid wg;                  // ... its tiles and splits of K (PlanWgGrid)
  int64_t chunk_panels = 0;
};

// Rows of A from which dequantize + cuBLAS beats our tensor-core kernel (measured on an H100:
// docs/benchmarks.md, tools/cuda/kernel_bench.cu).
inline constexpr int64_t kDequantGemmMinRows = 64;

inline size_t ElementBytes(DType t) { return t == DType::kFloat ? 4 : 2; }

// NF4's register-decoding tensor-core kernel: a CTA of kMmaWarps warps (one per SM) takes groups
// of CudaPlan::gp panels; its fp32 partial sums of the first and last group of its range go to
// CudaCall::workspace.
inline constexpr int kMmaWarps = 16;
inline constexpr int kMmaMinRows = 3;
inline constexpr int kMmaMaxRows = 32;
// Its panels per group: 2, or 4 / 8 once the layer has 2 / 4 panels per SM (narrow groups: few
// CTAs share one, short fix-ups; wide ones read A's rows fewer times per weight); 4 tiles of A's
// rows take at least 4 panels (8 with float32 scales) to fit in shared memory.
// H100, kernel_bench, 2 / 4 / 8 panels, M = 16 (docs/results/runtime_ops_cuda_h100_kernels_streamk_owner.txt,
// part 7): 4096x11008 (2.6 panels per SM) 21.4 / 19.8 / 20.5 us, 11008x4096 (1 per SM) 20.4 / 20.6
// / 22.9, 8192x2048 (0.5) 12.3 / 14.0 / 19.8, 1032x17000 (4.0) 17.1 / 13.6 / 13.2, 8192x28672 (6.8)
// 77.0 / 69.8 / 67.8; M = 3 and 8 alike.
inline int MmaGroupPanels(const CudaCall& call, int nt) {
  const int64_t sms = call.sm_count;
  int gp = call.p.panels >= 4 * sms ? 8 : call.p.panels >= 2 * sms ? 4 : 2;
  if (nt == 4) gp = std::max(gp, call.scale_type == DType::kFloat ? 8 : 4);
  return gp;
}

// The wgmma kernel's tiles for bn rows each and its splits of K: the most (at most 4, each at least
// 4 stages) that keep every CTA in one wave, only when the tiles are fewer than the SMs (and, for
// the counters, than the panels). A split that adds a wave costs more than the idle SMs (H100,
// kernel_bench, 4096x11008: 86 tiles of 256 rows 52.8 us unsplit, 64.5 us split 3 ways into
// 258 CTAs; 11008x4096: 32 tiles 129.9 / 74.9 / 60.2 / 51.0 us with 1-4 splits, all in one wave).
// Then the stream-K schedule over sm_count CTAs where its stages per CTA plus kWgSkFixup stages
// (a shared tile's partial sums, written once and read once) come to less than kWgSkGain of that
// plan's waves x stages per CTA (`stream_k`: CudaCall::wg_stream_k). H100, kernel_bench
// (docs/benchmarks.md): it takes 4096x11008 at 4-1024 rows (86 tiles: Int8 M = 16 34.4 -> 28.1 us,
// M = 256 57.3 -> 52.3, M = 512 117.4 -> 90.3; NF4 M = 64 29.7 -> 26.6, M = 256 51.6 -> 48.9) and
// 8192x28672 at 16-256; where equal splits of K already fill one wave (11008x4096: 32 tiles x 4)
// in its form they were 0-14% slower, and at 11008x4096 M = 1024 (128 tiles, one wave) 4-7%.
inline constexpr double kWgSkFixup = 4.0;
inline constexpr double kWgSkGain = 0.9;
inline WgGrid PlanWgGrid(int64_t panels, int64_t m, int64_t K, int bn, int sm_count, int stream_k = 0) {
  WgGrid w;
  w.tiles_x = (panels + kWgPanels - 1) / kWgPanels;
  w.tiles_y = (m + bn - 1) / bn;
  const int64_t tiles = w.tiles_x * w.tiles_y, stages = (K + kWgK - 1) / kWgK;
  if (tiles <= panels) {
    for (int s = 4; s > 1; --s) {
      if (tiles * s <= sm_count && stages / s >= 4) {
        w.splits = s;
        break;
      }
    }
  }
  const int64_t ctas = tiles * w.splits, waves = (ctas + sm_count - 1) / sm_count;
  w.cost = static_cast<double>(waves * ((stages + w.splits - 1) / w.splits));
  const int64_t units = tiles * stages;
  const double sk_cost = static_cast<double>((units + sm_count - 1) / sm_count) + kWgSkFixup;
  if (stream_k != 1 && units >= sm_count && (stream_k == 2 || sk_cost < kWgSkGain * w.cost)) {
    w.splits = 1;
    w.sk_ctas = sm_count;
    w.cost = sk_cost;
  }
  return w;
}
inline size_t WgPartialBytes(const WgGrid& w, int bn) {
  const size_t per_cta = static_cast<size_t>(bn / 2) * kWgThreads * 4;
  if (w.sk_ctas > 0) return static_cast<size_t>(w.sk_ctas) * per_cta;
  return w.splits > 1 ? static_cast<size_t>(w.tiles_x * w.tiles_y) * w.splits * per_cta : 0;
}

// Rows of A for which NF4 with float16 A takes the wgmma kernel where it can (H100, kernel_bench,
// docs/benchmarks.md): from 32 (against the register-decoding mma.sync kernel: 30.6 / 32.0 us at
// 4096x11008, 26.3 / 37.4 us at 11008x4096) to 1024 (against dequantize + cuBLAS: 163.5 / 185.6
// us at 4096x11008 M = 1024, 140.1 / 167.8 us at 11008x4096; at M = 2048 324 / 308 us and 280 /
// 279 us, at 4096 601 / 582 us: there dequantize + cuBLAS stays, where cuBLAS loads).
inline constexpr int64_t kWgMinRows = 32;
inline constexpr int64_t kWgMaxRows = 1024;
// Int8 with float16 A takes it from 3 rows (H100, kernel_bench, 4096x11008 / 11008x4096, with the
// producers' copies as in WgIssueWeights: M = 3 22.9 / 22.1 us against the stream-K GEMV's 28.8 /
// 27.3, M = 2 22.8 / 22.1 against 20.4 / 20.1; earlier M = 16 33.5 / 26.5 us against fp16's 35.6 /
// 36.3), up to kWgMaxRows (M = 1024 179 / 158 us, dequantize + cuBLAS 193 / 179; at 2048 362 / 318
// against 312 / 294).
inline constexpr int64_t kWgInt8MinRows = 3;

// Relative time of one stage of a CTA of the wgmma kernel by its rows of A (H100, kernel_bench:
// 0.98 / 0.73 us per stage at 11008x4096 M = 384 with 256 / 128 rows, 0.83 / 0.59 us at
// 4096x11008; 64 rows cost about what 128 do: the loop is latency-bound there).
inline double WgStageCost(int bn) { return bn == 256 ? 1.0 : 0.72; }

// The wgmma kernel's rows of A per CTA: where M fits in one tile of 64 / 128 rows, the smallest
// such (Int8: of 16 / 32 / 64 / 128; NF4, whose decode is its bound there: 64 / 128; H100,
// kernel_bench, 4096x11008 / 11008x4096 M = 16: Int8 33.5 / 26.5 us with 16 rows, 40.0 / 32.8
// with 64; NF4 32.9 / 25.3 us with 16 rows, 29.5 / 24.8 with 64), else 128 or 256, whichever grid
// (PlanWgGrid) takes fewer waves x stages per CTA x WgStageCost (4096x11008 M = 384: 128, 73.5
// against 106.8 us; 11008x4096 M = 384: 256, 79.4 against 94.6 us).
inline int WgTileRows(int64_t panels, int64_t m, int64_t K, int sm_count, bool small_tiles, int stream_k = 0) {
  if (small_tiles && m <= 16) return 16;
  if (small_tiles && m <= 32) return 32;
  if (m <= 64) return 64;
  if (m <= 128) return 128;
  const auto cost = [&](int bn) { return PlanWgGrid(panels, m, K, bn, sm_count, stream_k).cost * WgStageCost(bn); };
  return cost(128) < cost(256) ? 128 : 256;
}

// Device bytes the call needs in CudaCall::workspace (0 unless the plan dequantizes, is `mma`, or
// is `wgmma` with K split).
inline size_t WorkspaceBytes(const CudaCall& call, const CudaPlan& plan) {
  if (plan.mma) return static_cast<size_t>(call.sm_count) * call.m * plan.gp * 32 * 4;  // one partial sum per CTA
  if (plan.wgmma) return WgPartialBytes(plan.wg, plan.bm);
  return plan.dequant_gemm ? static_cast<size_t>(plan.chunk_panels) * 32 * call.p.K * ElementBytes(call.type) : 0;
}

// The stream-K GEMVs (float16 A, M <= kSkMaxRows) and their workspace: fp32 partial sums of up
// to kSkMaxCtasPerSm CTAs per SM (one per CTA, kSkMaxRows rows of 32 channels), then the 32-bit
// flags / counters: one per CTA of a stream-K schedule (the GEMVs, NF4's mma.sync kernel, the
// wgmma kernel), one per tile of the wgmma kernel's split K.
inline constexpr int kSkMaxCtasPerSm = 2;
inline constexpr int kSkMaxRows = 4;
// NF4 at M = 1 with at most one panel per SM: panels of this many k-rows or more go to the stream-K
// GEMV too (H100: it wins at 11008 rows, loses at 4096; the crossover between was not measured).
inline constexpr int64_t kSkMinPanelRows = 8192;
inline size_t SkPartialFloats(int sm_count) {
  return static_cast<size_t>(sm_count) * kSkMaxCtasPerSm * kSkMaxRows * 32;
}
inline size_t GemvWorkspaceBytes(const CudaCall& call, const CudaPlan& plan) {
  const int64_t counters = std::max<int64_t>(call.p.panels, int64_t{call.sm_count} * kSkMaxCtasPerSm);
  return plan.stream_k ? (SkPartialFloats(call.sm_count) + static_cast<size_t>(counters)) * 4 : 0;
}

CudaPlan PlanNf4(const CudaCall& call);
cudaError_t LaunchNf4(const CudaCall& call, const CudaPlan& plan);
CudaPlan PlanInt8(const CudaCall& call);
cudaError_t LaunchInt8(const CudaCall& call, const CudaPlan& plan);

}  // namespace oco
