// CUDA kernels shared by NF4MatMul and Int8MatMul (panel layout, see dequant_cpu.h). Which one
// runs is Plan<Dec>()'s choice (measured on an H100, docs/benchmarks.md):
//
// * Int8GemvSkKernel: Int8 with float16 A and M <= 4 (stream-K, like the NF4 one below), but M = 1
//   with at most one panel per SM, and M = 3-4 where the wgmma kernel runs (sm_90a, K % 8 == 0).
// * GemvKernel (SIMT, fp32 accumulation): M <= 2 (the rest of float16 A), and every M
//   below the cuBLAS path for float32 activations (kept exact: no tensor-core rounding). CTA =
//   one panel (32 output channels) x up to MR rows of A, 16 warps taking chunks of K in turn;
//   each lane decodes whole k-rows, scales and accumulates; lanes and warps are reduced at the
//   end. Weight bytes are read once.
// * Nf4GemvSkKernel / Nf4GemvHalfKernel: NF4 with float16 A and M <= 2 (<= 4 where K % 8 != 0):
//   a byte of codes is one half2 lookup and one HFMA2 per row of A; a stream-K schedule over all
//   SMs, or at M = 1 with few panels one CTA per panel (see there).
// * Nf4MmaKernel: NF4 with float16 A, M from kMmaMinRows to kMmaMaxRows (K % 8 == 0): tensor
//   cores fed from registers, the codes looked up and scaled straight into mma.sync's operands
//   (no shared fp16 tile), stream-K over groups of panels (see there).
// * WgmmaKernel (wgmma.cuh): NF4 / Int8 with float16 A, M from kWgMinRows / kWgInt8MinRows to
//   kWgMaxRows (K % 8 == 0) on compute capability 9.0 with the sm_90a build (CudaCall::wgmma):
//   wgmma with the weights decoded into its register operand, A's rows in swizzled shared memory
//   (TMA), a producer warpgroup and mbarriers, K split among CTAs when the tiles alone leave SMs
//   idle, or a stream-K schedule over all SMs where that does better (PlanWgGrid).
// * TcKernel (fp16/bf16 tensor cores, mma.sync m16n8k16, fp32 accumulation): M from 3 (for NF4
//   float16 only above kMmaMaxRows or with K % 8 != 0, where it takes 5 on) to
//   kDequantGemmMinRows - 1. The CTA tile (BM x BN) and a split of K among its
//   warps (WK groups, reduced in shared memory at the end) are chosen from M so that the grid
//   fills the GPU without split-K across CTAs. A cp.async pipeline brings A and the packed
//   weights; each stage's weights are decoded once by the whole CTA (code -> value x scale in
//   fp32, rounded once to fp16/bf16) into a shared tile that ldmatrix feeds to the tensor cores.
// * M >= kDequantGemmMinRows with a loadable cuBLAS: DequantChunkKernel writes chunks of the
//   dequantized weights to a workspace and cublasGemmEx multiplies (LaunchDequantGemm).
// * Scales S: float, __half / __nv_bfloat16 (A's type), or int8_t: NF4MatMul's double-quantized
//   absmax (numerics/nf4.py), decoded where the scales are read: the GEMV stages a panel's
//   scales to shared memory as float, the tensor-core decode turns each stage's staged int8 row
//   into floats; both as float(code) * scale2[row >> 3] + offset (row = panel * blocks + block,
//   mul and add each rounded, so the same float32 values as double_dequantize). The weight +
//   absmax stream is then 1 byte per block of 32 channels instead of 2 or 4.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "common/dequant_cuda.h"

namespace oco {
namespace cuda {

constexpr int kPanel = 32;

// f(std::integral_constant<int, 0>{}), ..., f(integral_constant<int, N - 1>{}): a loop whose index
// is a compile-time constant (template arguments such as PairLookup's byte).
template <class F, int... I>
__device__ __forceinline__ void UnrollImpl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
__device__ __forceinline__ void Unroll(F&& f) {
  UnrollImpl(f, std::make_integer_sequence<int, N>{});
}

// ---- types ---------------------------------------------------------------------------------
__device__ __forceinline__ float ToF(float v) { return v; }
__device__ __forceinline__ float ToF(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToF(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T FromF(float v);
template <>
__device__ __forceinline__ float FromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromF<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ uint32_t Pack2(float lo, float hi, __half*) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t Pack2(float lo, float hi, __nv_bfloat16*) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

struct Params {
  int64_t K, N, group, blocks, k_pad, panels;
  int group_shift;  // log2(group) for power-of-two blocks; 62 when per channel (one block: k >> 62 == 0)
  __device__ __forceinline__ int64_t Block(int64_t k) const { return k >> group_shift; }
};

inline Params MakeParams(const DequantParams& p) {
  int shift = 62;
  if (p.block > 0)
    for (shift = 0; (int64_t{1} << shift) < p.group; ++shift) {
    }
  return {p.K, p.N, p.group, p.blocks, p.k_pad, p.panels, shift};
}

// ---- decoders ------------------------------------------------------------------------------
// LoadRow()/Decode(): one k-row of a panel -> its 32 channels in order (GEMV).
// Row16(): channels 16 * ch .. 16 * ch + 15 of a k-row held in shared memory (tensor cores).
struct Nf4Decoder {
  static constexpr int kBytesPerK = 16;
  static constexpr bool kNeedsLut = true;
  static constexpr bool kDoubleQuant = true;  // int8 scales (absmax) with scale2 / offset
  struct Row {
    uint4 v;
  };
  __device__ static __forceinline__ Row LoadRow(const uint8_t* row) {
    return {__ldg(reinterpret_cast<const uint4*>(row))};
  }
  // All 32 channels of a k-row, in channel order (low nibbles 0-15, high nibbles 16-31).
  __device__ static __forceinline__ void Decode(const Row& r, const float* lut, float out[32]) {
    const uint32_t w[4] = {r.v.x, r.v.y, r.v.z, r.v.w};
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t byte = (w[i / 4] >> (8 * (i % 4))) & 0xFF;
      out[i] = lut[byte & 15];
      out[16 + i] = lut[byte >> 4];
    }
  }
  // Channels 16 * ch .. 16 * ch + 15 of one k-row (ch 0: low nibbles, 1: high nibbles).
  __device__ static __forceinline__ void Row16(const uint8_t* row, int ch, const float* lut, float out[16]) {
    const uint4 v = *reinterpret_cast<const uint4*>(row);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    const int shift = 4 * ch;
#pragma unroll
    for (int j = 0; j < 16; ++j) out[j] = lut[(w[j / 4] >> (8 * (j % 4) + shift)) & 15];
  }
};

struct Int8Decoder {
  static constexpr int kBytesPerK = 32;
  static constexpr bool kNeedsLut = false;
  static constexpr bool kDoubleQuant = false;
  struct Row {
    uint4 lo, hi;
  };
  __device__ static __forceinline__ Row LoadRow(const uint8_t* row) {
    return {__ldg(reinterpret_cast<const uint4*>(row)), __ldg(reinterpret_cast<const uint4*>(row + 16))};
  }
  __device__ static __forceinline__ void Decode(const Row& r, const float*, float out[32]) {
    const uint32_t w[8] = {r.lo.x, r.lo.y, r.lo.z, r.lo.w, r.hi.x, r.hi.y, r.hi.z, r.hi.w};
#pragma unroll
    for (int i = 0; i < 32; ++i) out[i] = static_cast<float>(static_cast<int8_t>((w[i / 4] >> (8 * (i % 4))) & 0xFF));
  }
  __device__ static __forceinline__ void Row16(const uint8_t* row, int ch, const float*, float out[16]) {
    const uint4 v = *reinterpret_cast<const uint4*>(row + 16 * ch);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) out[j] = static_cast<float>(static_cast<int8_t>((w[j / 4] >> (8 * (j % 4))) & 0xFF));
  }
};

__constant__ float kNf4Lut[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// ---- double-quantized scales --------------------------------------------------------------
// One int8 scale code of row r: code * scale2[r >> kDqRowShift] + offset, each step rounded
// (never fused into an FMA: bit-identical to numerics/nf4.py's double_dequantize).
__device__ __forceinline__ float DqScale(int code, float scale2, float offset) {
  return __fadd_rn(__fmul_rn(static_cast<float>(code), scale2), offset);
}
// Byte j of 16 int8 codes.
__device__ __forceinline__ int Code(const uint32_t w[4], int j) {
  return static_cast<int8_t>((w[j / 4] >> (8 * (j % 4))) & 0xFF);
}

// ---- SIMT GEMV -----------------------------------------------------------------------------
template <typename T, typename S>
struct KernelArgs {
  const T* a;
  int64_t m;
  const uint8_t* b;
  const S* scales;
  const T* bias;
  T* y;
  Params p;
  const float* scale2;  // int8_t scales only: [ceil(panels * blocks * 32 / 256)]
  const float* offset;  // int8_t scales only: one float
  bool pdl;             // host: launch the GEMVs as programmatic dependent launches (CudaCall::pdl)
  int64_t prefetch;     // bytes of its weights a GEMV CTA prefetches into L2 at its start (0: none)
};

// ---- programmatic dependent launch and L2 prefetch (sm_90 on; no-ops before) ----------------
// A kernel that LaunchKernel starts with `pdl` may begin while the stream's previous kernel is
// still finishing. Until GridDependencyWait() it reads only the weights, scales and bias (constant
// initializers: CudaCall::pdl is set only then) and writes only shared memory; A, Y, the
// workspaces and counters come after, when the previous kernel is complete and its writes are
// visible. AllowDependentLaunch() lets the stream's next kernel start early in the same way (its
// CTAs take SMs as ours leave them). Without a programmatic launch both return at once.
__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Bytes [p, p + bytes) into L2 by the copy engine (cp.async.bulk.prefetch: no registers, no
// wait), in pieces of kPrefetchPiece; p 16-byte aligned, bytes a multiple of 16.
constexpr int64_t kPrefetchPiece = 32 * 1024;
__device__ __forceinline__ void PrefetchL2(const uint8_t* p, int64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  for (int64_t o = 0; o < bytes; o += kPrefetchPiece) {
    const uint32_t n = static_cast<uint32_t>(min(kPrefetchPiece, bytes - o));
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + o), "r"(n) : "memory");
  }
#endif
}

// By thread 0: up to `limit` bytes of the weights of units [u_begin, u_end) of a stream-K range
// into L2, in the order they are read (units of `rows` k-rows of `gp` panels, group-major; panels of
// k_pad rows of row_bytes, row_bytes a multiple of 16).
__device__ __forceinline__ void PrefetchUnitsL2(const uint8_t* b, int64_t k_pad, int64_t panels, int row_bytes,
                                                int rows, int gp, int upp, int u_begin, int u_end, int64_t limit) {
  if (threadIdx.x != 0) return;
  for (int grp = u_begin / upp; grp * upp < u_end && limit > 0; ++grp) {
    const int64_t r0 = static_cast<int64_t>(max(u_begin - grp * upp, 0)) * rows;
    const int64_t r1 = min(static_cast<int64_t>(min(u_end - grp * upp, upp)) * rows, k_pad);
    for (int j = 0; j < gp && limit > 0; ++j) {
      const int64_t panel = static_cast<int64_t>(grp) * gp + j;
      if (panel >= panels) break;
      const int64_t bytes = min((r1 - r0) * row_bytes, limit);
      PrefetchL2(b + (panel * k_pad + r0) * row_bytes, bytes);
      limit -= bytes;
    }
  }
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when `pdl`
// (the caller checked the device: sm_90 on).
template <typename... KParams, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(KParams...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         bool pdl, Args&&... args) {
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

constexpr int kGemvWarps = 16;
constexpr int kGemvMaxRows = 2;  // GEMV for M <= 2 (and float32, which skips the tensor cores)
constexpr size_t kHalfGemvMaxSmem = 200 * 1024;         // table + scales; more scale blocks: other kernels
// The NF4 GEMVs' pair table: rows of 256 bytes (128 used) at a 64 KiB-aligned shared address,
// so that one PRMT of the packed byte and a word holding the table's address and 4 * lane is the
// lookup's address (no IMAD per byte); the dynamic allocation holds the table wherever the
// aligned address falls in it.
constexpr size_t kPairTableBytes = 256 * 256;
constexpr size_t kPairTableSmem = 2 * kPairTableBytes;

// v[0..kN-1] (kN = 32 or 16) summed over the lanes that hold the same channels (all 32; or the 16
// of equal parity), scattered: afterwards v[0] of lane j holds the total of v[j] (kN = 32), or of
// v[j >> 1] (kN = 16). Each step swaps half of the values with the lane `width` away.
template <int kN>
__device__ __forceinline__ void ReduceScatter(float v[kN], int lane) {
#pragma unroll
  for (int width = 16, n = kN / 2; n >= 1; width >>= 1, n >>= 1) {
    const bool upper = (lane & width) != 0;
#pragma unroll
    for (int j = 0; j < kN / 2; ++j) {
      if (j < n) {
        const float send = upper ? v[j] : v[j + n];
        const float keep = upper ? v[j + n] : v[j];
        v[j] = keep + __shfl_xor_sync(0xffffffffu, send, width);
      }
    }
  }
}

// A panel's scales, as float, into shared memory ([blocks][32]); double-quantized int8 ones
// decoded on the way. Every thread of the CTA takes part; the caller synchronizes.
template <typename T, typename S>
__device__ __forceinline__ void StageScales(const KernelArgs<T, S>& g, int64_t panel, float* scales_s) {
  const S* sp = g.scales + panel * g.p.blocks * kPanel;
  if constexpr (std::is_same_v<S, int8_t>) {
    const float offset = __ldg(g.offset);
    const int64_t row0 = panel * g.p.blocks;
    for (int64_t i = threadIdx.x; i < g.p.blocks * kPanel; i += blockDim.x)
      scales_s[i] = DqScale(sp[i], __ldg(g.scale2 + ((row0 + i / kPanel) >> kDqRowShift)), offset);
  } else {
    for (int64_t i = threadIdx.x; i < g.p.blocks * kPanel; i += blockDim.x) scales_s[i] = ToF(sp[i]);
  }
}

// A warp's steps first, first + kGemvWarps, ... below `steps`, ping-ponging between two buffers:
// the next step's loads are issued before this step's math.
template <class Buf, class Load, class Compute>
__device__ __forceinline__ void PingPong(int64_t first, int64_t steps, Buf& b0, Buf& b1, Load&& load,
                                         Compute&& compute) {
  int64_t st = first;
  if (st < steps) load(st, b0);
  while (st < steps) {
    if (st + kGemvWarps < steps) load(st + kGemvWarps, b1);
    compute(st, b0);
    st += kGemvWarps;
    if (st >= steps) break;
    if (st + kGemvWarps < steps) load(st + kGemvWarps, b0);
    compute(st, b1);
    st += kGemvWarps;
  }
}

template <class Dec, int MR>
struct GemvRow {  // one k-row (per lane) and A at that k
  typename Dec::Row row;
  float a[MR];
};

// k-rows per lane per step: 64 bytes of weights in flight per lane for one row of A (32 for
// two), plus the next step's, within the 128 registers that 16 warps per SM leave.
template <class Dec, int MR>
constexpr int kGemvRows = (MR == 1 ? 64 : 32) / Dec::kBytesPerK;

template <class Dec, int MR>
struct GemvStep {
  GemvRow<Dec, MR> r[kGemvRows<Dec, MR>];
};

template <class Dec, typename T, typename S, int MR>
__device__ __forceinline__ void GemvLoad(const KernelArgs<T, S>& g, int64_t panel, int64_t k0, int lane,
                                         GemvStep<Dec, MR>& st) {
#pragma unroll
  for (int i = 0; i < kGemvRows<Dec, MR>; ++i) {
    const int64_t k = k0 + 32 * i + lane;
    st.r[i].row = Dec::LoadRow(g.b + (panel * g.p.k_pad + k) * Dec::kBytesPerK);
#pragma unroll
    for (int mi = 0; mi < MR; ++mi) st.r[i].a[mi] = (mi < g.m && k < g.p.K) ? ToF(g.a[mi * g.p.K + k]) : 0.0f;
  }
}

template <class Dec, int MR>
__device__ __forceinline__ void GemvFma(const GemvRow<Dec, MR>& r, const float* s, const float* lut,
                                        float acc[MR][kPanel]) {
  float w[kPanel];
  Dec::Decode(r.row, lut, w);
#pragma unroll
  for (int j = 0; j < kPanel; ++j) {
    const float ws = w[j] * s[j];
#pragma unroll
    for (int mi = 0; mi < MR; ++mi) acc[mi][j] = fmaf(ws, r.a[mi], acc[mi][j]);
  }
}

// The step's rows (32 apart) are grouped by scale block: codes x A are summed per block, then
// scaled once (one multiply per channel and block instead of one per weight).
template <class Dec, typename T, typename S, int MR>
__device__ __forceinline__ void GemvCompute(const KernelArgs<T, S>& g, const GemvStep<Dec, MR>& st, int64_t k0,
                                            const float* scales_s, const float* lut, float acc[MR][kPanel]) {
  if constexpr (MR > 1) {  // no registers left for per-block partial sums: scale every weight
#pragma unroll
    for (int i = 0; i < kGemvRows<Dec, MR>; ++i)
      GemvFma<Dec, MR>(st.r[i], scales_s + g.p.Block(k0 + 32 * i) * kPanel, lut, acc);
  } else {
  float part[MR][kPanel];
#pragma unroll
  for (int i = 0; i < kGemvRows<Dec, MR>; ++i) {
    float w[kPanel];
    Dec::Decode(st.r[i].row, lut, w);
    const bool first = i == 0 || g.p.Block(k0 + 32 * i) != g.p.Block(k0 + 32 * (i - 1));
#pragma unroll
    for (int j = 0; j < kPanel; ++j)
#pragma unroll
      for (int mi = 0; mi < MR; ++mi) part[mi][j] = first ? w[j] * st.r[i].a[mi] : fmaf(w[j], st.r[i].a[mi], part[mi][j]);
    const bool last = i == kGemvRows<Dec, MR> - 1 || g.p.Block(k0 + 32 * i) != g.p.Block(k0 + 32 * (i + 1));
    if (last) {
      const float* s = scales_s + g.p.Block(k0 + 32 * i) * kPanel;
#pragma unroll
      for (int j = 0; j < kPanel; ++j) {
        const float sj = s[j];
#pragma unroll
        for (int mi = 0; mi < MR; ++mi) acc[mi][j] = fmaf(part[mi][j], sj, acc[mi][j]);
      }
    }
  }
  }
}

// CTA = one panel x MR rows of A. The panel's scales are staged in shared memory (as float,
// double-quantized ones decoded on the way);
// warps take steps of 4 x 32 k-rows in turn (a 32-row chunk never straddles a scale block:
// blocks are >= 32), one k-row per lane per chunk (coalesced 512/1024-byte reads), the next
// step loaded before the current one is computed; then lanes and warps are reduced.
// Dynamic shared memory: blocks * 32 floats.
template <class Dec, typename T, typename S, int MR>
__global__ void __launch_bounds__(kGemvWarps * 32, 1) GemvKernel(KernelArgs<T, S> g) {
  extern __shared__ __align__(16) float scales_s[];  // [blocks][32]
  __shared__ float lut[16];
  __shared__ float red[kGemvWarps][MR][kPanel];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (Dec::kNeedsLut && threadIdx.x < 16) lut[threadIdx.x] = kNf4Lut[threadIdx.x];
  const int64_t panel = blockIdx.x;
  const int64_t panel_bytes = g.p.k_pad * Dec::kBytesPerK;
  if (threadIdx.x == 0 && blockIdx.y == 0) PrefetchL2(g.b + panel * panel_bytes, min(g.prefetch, panel_bytes));
  StageScales(g, panel, scales_s);
  GridDependencyWait();
  AllowDependentLaunch();
  g.a += static_cast<int64_t>(blockIdx.y) * MR * g.p.K;  // this CTA's rows of A
  g.y += static_cast<int64_t>(blockIdx.y) * MR * g.p.N;
  g.m -= static_cast<int64_t>(blockIdx.y) * MR;
  float acc[MR][kPanel];
#pragma unroll
  for (int mi = 0; mi < MR; ++mi)
#pragma unroll
    for (int j = 0; j < kPanel; ++j) acc[mi][j] = 0.0f;
  __syncthreads();

  constexpr int64_t kStep = 32 * kGemvRows<Dec, MR>;
  const int64_t steps = g.p.k_pad / kStep;  // whole steps; the rest below
  GemvStep<Dec, MR> s0, s1;
  PingPong(
      warp, steps, s0, s1, [&](int64_t st, GemvStep<Dec, MR>& b) { GemvLoad(g, panel, st * kStep, lane, b); },
      [&](int64_t st, const GemvStep<Dec, MR>& b) { GemvCompute(g, b, st * kStep, scales_s, lut, acc); });
  // The rows past the last whole step, one 32-row chunk per warp.
  for (int64_t k = steps * kStep + 32 * warp + lane; k < g.p.k_pad; k += 32 * kGemvWarps) {
    GemvRow<Dec, MR> r;
    r.row = Dec::LoadRow(g.b + (panel * g.p.k_pad + k) * Dec::kBytesPerK);
#pragma unroll
    for (int mi = 0; mi < MR; ++mi) r.a[mi] = (mi < g.m && k < g.p.K) ? ToF(g.a[mi * g.p.K + k]) : 0.0f;
    GemvFma<Dec, MR>(r, scales_s + g.p.Block(k) * kPanel, lut, acc);
  }
#pragma unroll
  for (int mi = 0; mi < MR; ++mi) {
    ReduceScatter<32>(acc[mi], lane);
    red[warp][mi][lane] = acc[mi][0];
  }
  __syncthreads();
  for (int t = threadIdx.x; t < MR * kPanel; t += blockDim.x) {
    const int mi = t / kPanel, c = t % kPanel;
    const int64_t n = panel * kPanel + c;
    if (n >= g.p.N || mi >= g.m) continue;
    float v = g.bias ? ToF(g.bias[n]) : 0.0f;
#pragma unroll
    for (int w = 0; w < kGemvWarps; ++w) v += red[w][mi][c];
    g.y[mi * g.p.N + n] = FromF<T>(v);
  }
}

// ---- tensor cores --------------------------------------------------------------------------
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: fill with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void CpAsync4(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void LdMatrixX4(uint32_t r[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void Mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1, __half*) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void Mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1, __nv_bfloat16*) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

constexpr int kTcThreads = 256;

// CTA tile BM x BN; 8 warps = WM x WN x WK: WK groups of warps take different BKW-row slices of
// each stage (BKS = WK * BKW rows) and are summed in shared memory at the end.
template <class Dec, typename S, int BM_, int BN_, int WM_, int WN_, int WK_, int BKW_, int STAGES_>
struct TcCfg {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, WK = WK_, BKW = BKW_, STAGES = STAGES_;
  static_assert(WM * WN * WK == 8, "8 warps");
  static constexpr int WTM = BM / WM, WTN = BN / WN, MT = WTM / 16, NT = WTN / 8;
  static_assert(MT >= 1 && NT % 2 == 0 && BKW % 16 == 0, "warp tile");
  static constexpr int BKS = WK * BKW;             // k rows per stage
  static constexpr int kPanels = BN / kPanel;
  static constexpr int kRow = BKS + 8;             // halves per smem row of A / decoded B (no bank conflicts)
  static constexpr int kAElems = BM * kRow;        // per stage
  static constexpr int kPackedBytes = kPanels * BKS * Dec::kBytesPerK;  // per stage
  static constexpr int kDecElems = BN * kRow;
  static constexpr int kScaleBlocks = BKS / 32 + 1;  // blocks (>= 32 rows) a stage can touch
  static constexpr int kScaleElems = kPanels * kScaleBlocks * kPanel;  // per stage
  static_assert(STAGES >= 4, "decode of stage s + 1 overlaps the MMAs of stage s");
  static constexpr size_t kOffDec = static_cast<size_t>(STAGES) * kAElems * 2;
  static constexpr size_t kOffPacked = kOffDec + static_cast<size_t>(2 * kDecElems) * 2;  // two decoded tiles
  static constexpr size_t kOffScales = kOffPacked + static_cast<size_t>(STAGES) * kPackedBytes;
  static constexpr size_t kSmem = kOffScales + static_cast<size_t>(STAGES) * kScaleElems * sizeof(S);
  static constexpr size_t kRed = static_cast<size_t>(WK > 1 ? WK : 0) * BM * BN * 4;  // reuses the pipeline space
  static constexpr size_t kSmemTotal = kSmem > kRed ? kSmem : kRed;
};

template <class Cfg, class Dec, typename T, typename S>
__global__ void __launch_bounds__(kTcThreads) TcKernel(KernelArgs<T, S> g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* as = reinterpret_cast<T*>(smem_raw);                             // [stages][BM][kRow]
  T* bd0 = reinterpret_cast<T*>(smem_raw + Cfg::kOffDec);             // [2][BN][kRow] decoded B (n-major)
  uint8_t* bp = smem_raw + Cfg::kOffPacked;                           // [stages][panels][BKS][bytes]
  S* ss = reinterpret_cast<S*>(smem_raw + Cfg::kOffScales);           // [stages][panels][kScaleBlocks][32]
  __shared__ float lut[16];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (Dec::kNeedsLut && tid < 16) lut[tid] = kNf4Lut[tid];
  float dq_offset = 0.0f;  // double-quantized scales: the offset
  if constexpr (std::is_same_v<S, int8_t>) dq_offset = __ldg(g.offset);

  const Params& p = g.p;
  const int64_t panel0 = static_cast<int64_t>(blockIdx.x) * Cfg::kPanels;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * Cfg::BM;
  const int64_t stages_total = (p.k_pad + Cfg::BKS - 1) / Cfg::BKS;

  auto load_stage = [&](int slot, int64_t st) {
    const int64_t k0 = st * Cfg::BKS;
    T* a_dst = as + slot * Cfg::kAElems;
    constexpr int kAChunksPerRow = Cfg::BKS / 8;
    for (int c = tid; c < Cfg::BM * kAChunksPerRow; c += kTcThreads) {
      const int row = c / kAChunksPerRow, col = (c % kAChunksPerRow) * 8;
      const int64_t gm = m0 + row, gk = k0 + col;
      const bool valid = gm < g.m && gk < p.K;
      CpAsync16(a_dst + row * Cfg::kRow + col, valid ? g.a + gm * p.K + gk : g.a, valid);
    }
    uint8_t* b_dst = bp + slot * Cfg::kPackedBytes;
    constexpr int kRowChunks = Dec::kBytesPerK / 16;
    for (int c = tid; c < Cfg::kPackedBytes / 16; c += kTcThreads) {
      const int pi = c / (Cfg::BKS * kRowChunks), rem = c % (Cfg::BKS * kRowChunks);
      const int row = rem / kRowChunks, part = rem % kRowChunks;
      const int64_t panel = panel0 + pi, k = k0 + row;
      const bool valid = panel < p.panels && k < p.k_pad;
      const uint8_t* src = g.b + (panel * p.k_pad + k) * Dec::kBytesPerK + part * 16;
      CpAsync16(b_dst + c * 16, valid ? src : g.b, valid);
    }
    // scales of the blocks this stage touches: [panels][kScaleBlocks][32], 16-byte pieces
    S* s_dst = ss + slot * Cfg::kScaleElems;
    const int64_t blk0 = p.Block(k0);
    constexpr int kPieces = kPanel * static_cast<int>(sizeof(S)) / 16;  // per (panel, block)
    for (int c = tid; c < Cfg::kPanels * Cfg::kScaleBlocks * kPieces; c += kTcThreads) {
      const int pi = c / (Cfg::kScaleBlocks * kPieces), rem = c % (Cfg::kScaleBlocks * kPieces);
      const int bi = rem / kPieces, piece = rem % kPieces;
      const int64_t panel = panel0 + pi, blk = blk0 + bi;
      const bool valid = panel < p.panels && blk < p.blocks;
      const S* src = g.scales + (panel * p.blocks + blk) * kPanel;
      CpAsync16(reinterpret_cast<uint8_t*>(s_dst + (pi * Cfg::kScaleBlocks + bi) * kPanel) + piece * 16,
                valid ? reinterpret_cast<const uint8_t*>(src) + piece * 16 : reinterpret_cast<const uint8_t*>(g.scales),
                valid);
    }
  };

  // Decode one stage into bd: items are (panel, pair of k rows, half of the 32 channels); each
  // writes 16 pairs (k, k+1) of its channels as one 32-bit store each.
  auto decode_stage = [&](int slot, int64_t st) {
    T* bd = bd0 + (st & 1) * Cfg::kDecElems;
    const uint8_t* src = bp + slot * Cfg::kPackedBytes;
    const S* sc = ss + slot * Cfg::kScaleElems;
    const int64_t blk0 = p.Block(st * Cfg::BKS);
    constexpr int kItems = Cfg::kPanels * (Cfg::BKS / 2) * 2;
    for (int it = tid; it < kItems; it += kTcThreads) {
      const int ch = it & 1, pair = (it >> 1) % (Cfg::BKS / 2), pi = (it >> 1) / (Cfg::BKS / 2);
      const int r0 = 2 * pair;
      const int64_t k = st * Cfg::BKS + r0;
      const int bi = static_cast<int>(min(p.Block(k), p.blocks - 1) - blk0);
      const uint8_t* row0 = src + (pi * Cfg::BKS + r0) * Dec::kBytesPerK;
      float v0[16], v1[16];
      Dec::Row16(row0, ch, lut, v0);
      Dec::Row16(row0 + Dec::kBytesPerK, ch, lut, v1);
      const S* srow = sc + (pi * Cfg::kScaleBlocks + bi) * kPanel + 16 * ch;
      if constexpr (std::is_same_v<S, int8_t>) {
        // 16 int8 codes (16 aligned bytes) and the row's scale2 entry (0 for a panel past the last)
        float scale2 = 0.0f, offset = 0.0f;
        const int64_t panel = panel0 + pi;
        if (panel < p.panels) {
          scale2 = __ldg(g.scale2 + ((panel * p.blocks + blk0 + bi) >> kDqRowShift));
          offset = dq_offset;
        }
        const uint4 q = *reinterpret_cast<const uint4*>(srow);
        const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const float s = DqScale(Code(w, j), scale2, offset);
          *reinterpret_cast<uint32_t*>(bd + (pi * kPanel + 16 * ch + j) * Cfg::kRow + r0) =
              Pack2(v0[j] * s, v1[j] * s, static_cast<T*>(nullptr));
        }
      } else {
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const float s = ToF(srow[j]);
          *reinterpret_cast<uint32_t*>(bd + (pi * kPanel + 16 * ch + j) * Cfg::kRow + r0) =
              Pack2(v0[j] * s, v1[j] * s, static_cast<T*>(nullptr));
        }
      }
    }
  };

  const int wk = warp / (Cfg::WM * Cfg::WN), wmn = warp % (Cfg::WM * Cfg::WN);
  const int wm = wmn / Cfg::WN, wn = wmn % Cfg::WN;
  float acc[Cfg::MT][Cfg::NT][4];
#pragma unroll
  for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // Stage st's MMAs run while stage st + 1 is decoded into the other tile and stage st + 3 loads:
  // one barrier per stage.
  for (int s = 0; s < Cfg::STAGES - 1; ++s) {
    if (s < stages_total) load_stage(s, s);
    CpAsyncCommit();
  }
  CpAsyncWait<Cfg::STAGES - 3>();  // stages 0 and 1 landed
  __syncthreads();                 // (and the LUT is written)
  if (stages_total > 0) decode_stage(0, 0);
  __syncthreads();

  for (int64_t st = 0; st < stages_total; ++st) {
    const int64_t next = st + Cfg::STAGES - 1;
    if (next < stages_total) load_stage(static_cast<int>(next % Cfg::STAGES), next);
    CpAsyncCommit();
    if (st + 1 < stages_total) decode_stage(static_cast<int>((st + 1) % Cfg::STAGES), st + 1);
    const T* a_s = as + static_cast<int>(st % Cfg::STAGES) * Cfg::kAElems;
    const T* bd = bd0 + (st & 1) * Cfg::kDecElems;
#pragma unroll
    for (int kk = 0; kk < Cfg::BKW / 16; ++kk) {
      const int kc = wk * Cfg::BKW + kk * 16;
      uint32_t af[Cfg::MT][4];
#pragma unroll
      for (int i = 0; i < Cfg::MT; ++i)
        LdMatrixX4(af[i], a_s + (wm * Cfg::WTM + i * 16 + (lane & 15)) * Cfg::kRow + kc + (lane >> 4) * 8);
#pragma unroll
      for (int j = 0; j < Cfg::NT; j += 2) {
        uint32_t bf[4];  // n8 tile j: (bf[0], bf[1]); tile j + 1: (bf[2], bf[3])
        const int n = wn * Cfg::WTN + j * 8 + (lane & 7) + ((lane >> 4) & 1) * 8;
        LdMatrixX4(bf, bd + n * Cfg::kRow + kc + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int i = 0; i < Cfg::MT; ++i) {
          Mma(acc[i][j], af[i], bf[0], bf[1], static_cast<T*>(nullptr));
          Mma(acc[i][j + 1], af[i], bf[2], bf[3], static_cast<T*>(nullptr));
        }
      }
    }
    CpAsyncWait<Cfg::STAGES - 3>();  // stages up to st + 2 landed
    __syncthreads();
  }
  CpAsyncWait<0>();

  const int t4 = lane & 3, g8 = lane >> 2;
  if constexpr (Cfg::WK > 1) {
    __syncthreads();  // the pipeline buffers become the reduction buffer
    float* red = reinterpret_cast<float*>(smem_raw);  // [WK][BM][BN]
#pragma unroll
    for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
      for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = wm * Cfg::WTM + i * 16 + g8 + (e >= 2 ? 8 : 0);
          const int col = wn * Cfg::WTN + j * 8 + 2 * t4 + (e & 1);
          red[(wk * Cfg::BM + row) * Cfg::BN + col] = acc[i][j][e];
        }
    __syncthreads();
    for (int t = tid; t < Cfg::BM * Cfg::BN; t += kTcThreads) {
      const int row = t / Cfg::BN, col = t % Cfg::BN;
      const int64_t gm = m0 + row, n = panel0 * kPanel + col;
      if (gm >= g.m || n >= p.N) continue;
      float v = g.bias ? ToF(g.bias[n]) : 0.0f;
#pragma unroll
      for (int w = 0; w < Cfg::WK; ++w) v += red[(w * Cfg::BM + row) * Cfg::BN + col];
      g.y[gm * p.N + n] = FromF<T>(v);
    }
  } else {
#pragma unroll
    for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
      for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t gm = m0 + wm * Cfg::WTM + i * 16 + g8 + (e >= 2 ? 8 : 0);
          const int64_t n = panel0 * kPanel + wn * Cfg::WTN + j * 8 + 2 * t4 + (e & 1);
          if (gm >= g.m || n >= p.N) continue;
          g.y[gm * p.N + n] = FromF<T>(acc[i][j][e] + (g.bias ? ToF(g.bias[n]) : 0.0f));
        }
  }
}

// Tile shapes by M: small M splits K among warps (WK) instead of across CTAs.
//                                       BM   BN  WM WN WK BKW STAGES
template <class D, class S> using Tc16 = TcCfg<D, S, 16, 32, 1, 1, 8, 32, 4>;
template <class D, class S> using Tc32 = TcCfg<D, S, 32, 32, 2, 1, 4, 32, 4>;
template <class D, class S> using Tc64 = TcCfg<D, S, 64, 64, 2, 2, 2, 32, 4>;
template <class D, class S> using Tc256 = TcCfg<D, S, 64, 128, 2, 4, 1, 64, 4>;
template <class D, class S> using Tc1k = TcCfg<D, S, 128, 128, 2, 4, 1, 64, 4>;

// ---- planning and launching ----------------------------------------------------------------
// cuTensorMapEncodeTiled from the driver, or null (wgmma.cuh).
inline PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder();

// Rows of A from which the wgmma kernel is planned for the format (dequant_cuda.h).
template <class Dec>
constexpr int64_t WgMinRows() {
  return std::is_same_v<Dec, Nf4Decoder> ? kWgMinRows : kWgInt8MinRows;
}

template <class Dec>
CudaPlan Plan(const CudaCall& call) {
  const DequantParams& p = call.p;
  CudaPlan plan;
  // From the format's WgMinRows to kWgMaxRows rows (any M above where cuBLAS does not load) on
  // sm_90a, K % 8 == 0, A 16-byte aligned: the wgmma kernel (force 9 at any M), tile rows by
  // WgTileRows.
  const bool wg_fits = call.type == DType::kHalf && p.K % 8 == 0 && reinterpret_cast<uintptr_t>(call.a) % 16 == 0;
  const bool wg_planned = call.force <= 1 && call.wgmma && call.m >= WgMinRows<Dec>() &&
                          (call.m <= kWgMaxRows || call.blas == nullptr);
  // (the driver must encode the tensor map of its TMA copies of A; asked only here, once)
  if (wg_fits && (call.force == 9 || wg_planned) && TensorMapEncoder() != nullptr) {
    plan.wgmma = true;
    const bool small_tiles = std::is_same_v<Dec, Int8Decoder>;
    plan.bm = call.mma_gp != 0 ? call.mma_gp
                               : WgTileRows(p.panels, call.m, p.K, call.sm_count, small_tiles, call.wg_stream_k);
    plan.wg = PlanWgGrid(p.panels, call.m, p.K, plan.bm, call.sm_count, call.wg_stream_k);
    if (call.wg_splits > 0 && plan.wg.sk_ctas == 0) plan.wg.splits = call.wg_splits;
    plan.stream_k = plan.wg.splits > 1 || plan.wg.sk_ctas > 0;  // its counters / flags
    return plan;
  }
  // NF4 with float16 A and M <= 4 (M <= 2 where the register-decoding kernel below takes 3-4):
  // the float16 GEMV, which reads the weights once for all rows (the tensor-core kernel was 0.65x
  // of fp16 MatMul at M = 4 on an H100; the register-decoding one 22.5 us against the GEMV's
  // 22.8 / 26.5 / 35.7 us at M = 2 / 3 / 4, 4096x11008, so it takes M from 3). At M = 1 with at most
  // one panel per SM and panels shorter than kSkMinPanelRows the full-row kernel, one CTA per panel
  // (H100, kernel times, full-row / stream-K: 5.8 / 8.4 us at 4096x4096, 14.5 / 13.7 us at
  // 11008x4096; more panels: 19.3 / 14.5 us at 4096x11008, 77.0 / 48.1 us at 8192x28672,
  // docs/results/runtime_ops_cuda_h100_kernels_gemv_fill.txt); else the stream-K kernel.
  // Benchmarks: force 5 keeps the general kernels, 6 / 7 force the stream-K / full-row kernel, 2-4
  // the dequantize + cuBLAS path.
  if constexpr (std::is_same_v<Dec, Nf4Decoder>) {
    // From kMmaMinRows to kMmaMaxRows rows: the register-decoding tensor-core kernel (force 8 at
    // any M up to kMmaMaxRows), groups of panels by MmaGroupPanels.
    const bool mma_ok = call.type == DType::kHalf && call.m >= 1 && call.m <= kMmaMaxRows && p.K % 8 == 0 &&
                        reinterpret_cast<uintptr_t>(call.a) % 16 == 0;
    if (mma_ok && (call.force == 8 || (call.force <= 1 && call.m >= kMmaMinRows))) {
      plan.mma = true;
      plan.stream_k = true;
      plan.nt = call.m <= 8 ? 1 : call.m <= 16 ? 2 : 4;
      plan.gp = call.mma_gp != 0 ? call.mma_gp : MmaGroupPanels(call, plan.nt);
      return plan;
    }
    const bool fits = kPairTableSmem + static_cast<size_t>(p.blocks) * kPanel * sizeof(float) <= kHalfGemvMaxSmem;
    const bool full_row = call.m == 1 && fits &&
                          (call.force == 7 ||
                           (call.force != 6 && p.panels <= call.sm_count && p.k_pad < kSkMinPanelRows));
    if (call.type == DType::kHalf && call.m >= 1 && call.m <= kSkMaxRows &&
        (call.force <= 1 || call.force == 6 || (call.force == 7 && full_row))) {
      plan.half_gemv = true;
      plan.stream_k = !full_row;
      plan.mr = static_cast<int>(call.m);
      return plan;
    }
  }
  // Int8 with float16 A and M <= 4 (where the wgmma kernel above did not take 3-4): the stream-K
  // GEMV, except at M = 1 with at most one panel per SM (the general GEMV, one CTA per panel, as for
  // NF4). Benchmarks: force 6 forces the stream-K kernel, 5 / 7 the general GEMV.
  if constexpr (std::is_same_v<Dec, Int8Decoder>) {
    const bool per_panel =
        call.m == 1 && (call.force == 5 || call.force == 7 || (call.force != 6 && p.panels <= call.sm_count));
    if (call.type == DType::kHalf && call.scale_type != DType::kInt8 && call.m >= 1 && call.m <= kSkMaxRows &&
        !per_panel && (call.force <= 1 || call.force == 6)) {
      plan.half_gemv = true;
      plan.stream_k = true;
      plan.mr = static_cast<int>(call.m);
      return plan;
    }
  }
  const bool large = call.force >= 2 || (call.force == 0 && call.m >= kDequantGemmMinRows);
  if (call.blas != nullptr && large && call.m > kGemvMaxRows) {
    plan.dequant_gemm = true;
    const int64_t panel_bytes = kPanel * p.K * static_cast<int64_t>(ElementBytes(call.type));
    int64_t np = std::max<int64_t>(1, call.chunk_bytes / panel_bytes);
    if (np >= 4) np -= np % 4;  // whole 128-column tiles for cuBLAS
    plan.chunk_panels = std::min(np, p.panels);
    return plan;
  }
  const bool aligned = p.K % 8 == 0 && reinterpret_cast<uintptr_t>(call.a) % 16 == 0;
  plan.tensor_cores = call.type != DType::kFloat && call.m > kGemvMaxRows && aligned;
  if (plan.tensor_cores)
    plan.bm = call.m <= 16 ? 16 : call.m <= 32 ? 32 : call.m <= 64 ? 64 : call.m <= 256 ? 256 : 1024;
  else
    plan.mr = call.m >= 2 ? 2 : 1;
  return plan;
}

// More than 48 KiB of dynamic shared memory must be allowed explicitly, once per kernel.
template <typename Kernel>
cudaError_t AllowSmem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <class Cfg, class Dec, typename T, typename S>
cudaError_t LaunchTc(const KernelArgs<T, S>& g, cudaStream_t stream) {
  static const cudaError_t attr = AllowSmem(TcKernel<Cfg, Dec, T, S>, Cfg::kSmemTotal);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(static_cast<unsigned>((g.p.panels * kPanel + Cfg::BN - 1) / Cfg::BN),
                  static_cast<unsigned>((g.m + Cfg::BM - 1) / Cfg::BM));
  TcKernel<Cfg, Dec, T, S><<<grid, kTcThreads, Cfg::kSmemTotal, stream>>>(g);
  return cudaGetLastError();
}

template <class Dec, typename T, typename S, int MR>
cudaError_t LaunchGemv(const KernelArgs<T, S>& g, cudaStream_t stream) {
  constexpr size_t kMaxSmem = 200 * 1024;
  static const cudaError_t attr = AllowSmem(GemvKernel<Dec, T, S, MR>, kMaxSmem);
  if (attr != cudaSuccess) return attr;
  const size_t smem = static_cast<size_t>(g.p.blocks) * kPanel * sizeof(float);
  if (smem > kMaxSmem) return cudaErrorInvalidConfiguration;  // > 1600 scale blocks per channel
  const dim3 grid(static_cast<unsigned>(g.p.panels), static_cast<unsigned>((g.m + MR - 1) / MR));
  return LaunchKernel(GemvKernel<Dec, T, S, MR>, grid, dim3(kGemvWarps * 32), smem, stream, g.pdl, g);
}

// ---- NF4 GEMV for one row of float16 A ---------------------------------------------------------
// The general GEMV above spends about 8.5 instructions per weight (a table lookup and an fp32
// FMA per 4-bit code; Nsight Compute: 0.58 issued per cycle, 16 warps per SM). Here a byte (the
// codes of channels i and 16 + i) is one lookup of a half2 pair in a per-lane copy of a 256-entry
// table (conflict-free: copy = bank) and one HFMA2 with the activation; a lane takes 4
// consecutive k-rows (one scale block: blocks are >= 32 rows), sums their products in half2 and
// adds them to its fp32 accumulators once per 4 rows, scaled. About 2.5 instructions per weight.
// The fp16 partial sums hold 4 products of |code| <= 1 and A; their rounding (2^-11 relative)
// stays below the float16 output's own.
// The per-lane pair table: entry [byte][copy] = (lut[byte & 15], lut[byte >> 4]) as half2, a
// byte's 32 copies in a row of kRowBytes (256 for the GEMVs' aligned table, AlignedTableLane; the
// tensor-core kernel's too; tab 16-byte aligned). Each lane holds lut[lane & 15] (selected from
// constant operands: no indexed constant loads), 8 lanes write a row's copies 16 bytes each, the
// pair taken by two shuffles. H100, Nsight Compute: the loop it replaces (a warp per row, two
// indexed constant loads per entry, 16 rounds) took 8.5% of the NF4 GEMV's instructions and 13% of
// its stall samples at 4096x11008, M = 1. blockDim.x: a multiple of 32.
template <int kRowBytes>
__device__ __forceinline__ void FillPairTable(void* tab) {
  static_assert(kRowBytes % 16 == 0 && kRowBytes >= 128, "a row holds 32 copies of 4 bytes");
  const int lane = threadIdx.x & 31;
  float mine = kNf4Lut[0];
#pragma unroll
  for (int i = 1; i < 16; ++i) mine = (lane & 15) == i ? kNf4Lut[i] : mine;
  // rows 4 apart per warp: the bound is warp-uniform (256 and the step are multiples of 4)
  for (int row = 4 * static_cast<int>(threadIdx.x >> 5) + (lane >> 3); row < 256; row += 4 * (blockDim.x >> 5)) {
    const __half2 v =
        __floats2half2_rn(__shfl_sync(0xffffffffu, mine, row & 15), __shfl_sync(0xffffffffu, mine, row >> 4));
    const uint32_t u = *reinterpret_cast<const uint32_t*>(&v);
    unsigned char* dst = static_cast<unsigned char*>(tab) + row * kRowBytes + 16 * (lane & 7);
    *reinterpret_cast<uint4*>(dst) = make_uint4(u, u, u, u);
  }
}

// The 64 KiB-aligned shared address of a kPairTableBytes table in a kPairTableSmem allocation at
// smem, with 4 * lane in its low byte; *tab gets the generic pointer (for FillPairTable<256>).
__device__ __forceinline__ uint32_t AlignedTableLane(unsigned char* smem, unsigned char** tab) {
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t addr = (base + 0xFFFFu) & ~0xFFFFu;
  *tab = smem + (addr - base);
  return addr | (4u * (threadIdx.x & 31));
}

// The pair of byte J of `word` in the lane's copy of the aligned table: the address is one PRMT
// (4 * lane, the byte, the table's upper address bytes), then one LDS.
template <int J>
__device__ __forceinline__ __half2 PairLookup(uint32_t word, uint32_t tab_lane) {
  const uint32_t addr = __byte_perm(word, tab_lane, 0x7604u + 16u * J);
  uint32_t bits;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(bits) : "r"(addr));
  return *reinterpret_cast<const __half2*>(&bits);
}

constexpr int kHalfGemvRows = 4;                      // consecutive k-rows per lane
constexpr int kHalfGemvStep = 32 * kHalfGemvRows;     // k-rows per warp step

template <typename S>
__global__ void __launch_bounds__(kGemvWarps * 32, 1) Nf4GemvHalfKernel(KernelArgs<__half, S> g) {
  extern __shared__ __align__(16) unsigned char hg_smem[];
  unsigned char* tab = nullptr;  // [256][64] half2 (32 used), kPairTableBytes
  const uint32_t tab_lane = AlignedTableLane(hg_smem, &tab);
  float* scales_s = reinterpret_cast<float*>(hg_smem + kPairTableSmem);  // [blocks][32]
  __shared__ float red[kGemvWarps][kPanel];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t panel = blockIdx.x;
  if (threadIdx.x == 0) PrefetchL2(g.b + panel * g.p.k_pad * 16, min(g.prefetch, g.p.k_pad * 16));
  FillPairTable<256>(tab);
  StageScales(g, panel, scales_s);
  GridDependencyWait();
  AllowDependentLaunch();
  float acc[kPanel];
#pragma unroll
  for (int j = 0; j < kPanel; ++j) acc[j] = 0.0f;
  __syncthreads();

  const uint8_t* bp = g.b + panel * g.p.k_pad * 16;
  const __half zero = __float2half(0.0f);
  const int64_t steps = g.p.k_pad / kHalfGemvStep;
  struct Buf {
    uint4 rows[kHalfGemvRows];
    __half a[kHalfGemvRows];
  };
  auto load = [&](int64_t st, Buf& b) {
    uint4* rows = b.rows;
    __half* a = b.a;
    const int64_t k0 = st * kHalfGemvStep + kHalfGemvRows * lane;
#pragma unroll
    for (int i = 0; i < kHalfGemvRows; ++i) {
      rows[i] = __ldg(reinterpret_cast<const uint4*>(bp + (k0 + i) * 16));
      a[i] = k0 + i < g.p.K ? g.a[k0 + i] : zero;
    }
  };
  auto compute = [&](int64_t st, const Buf& b) {
    const uint4* rows = b.rows;
    const __half* a = b.a;
    __half2 part[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) part[j] = __half2half2(zero);
#pragma unroll
    for (int i = 0; i < kHalfGemvRows; ++i) {
      const __half2 a2 = __half2half2(a[i]);
      const uint32_t w[4] = {rows[i].x, rows[i].y, rows[i].z, rows[i].w};
      Unroll<16>([&](auto jc) {
        constexpr int j = decltype(jc)::value;
        part[j] = __hfma2(PairLookup<j % 4>(w[j / 4], tab_lane), a2, part[j]);
      });
    }
    const float* sc = scales_s + g.p.Block(st * kHalfGemvStep + kHalfGemvRows * lane) * kPanel;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const float2 f = __half22float2(part[j]);
      acc[j] = fmaf(f.x, sc[j], acc[j]);
      acc[16 + j] = fmaf(f.y, sc[16 + j], acc[16 + j]);
    }
  };
  Buf b0, b1;
  PingPong(warp, steps, b0, b1, load, compute);
  // the k-rows past the last whole step (k_pad is a multiple of 32, not of 128): a row per lane
  for (int64_t k = steps * kHalfGemvStep + 32 * warp + lane; k < g.p.k_pad; k += 32 * kGemvWarps) {
    const uint4 row = __ldg(reinterpret_cast<const uint4*>(bp + k * 16));
    const float a = k < g.p.K ? __half2float(g.a[k]) : 0.0f;
    const uint32_t w[4] = {row.x, row.y, row.z, row.w};
    const float* sc = scales_s + g.p.Block(k) * kPanel;
    Unroll<16>([&](auto jc) {
      constexpr int j = decltype(jc)::value;
      const float2 f = __half22float2(PairLookup<j % 4>(w[j / 4], tab_lane));
      acc[j] = fmaf(f.x * a, sc[j], acc[j]);
      acc[16 + j] = fmaf(f.y * a, sc[16 + j], acc[16 + j]);
    });
  }
  ReduceScatter<32>(acc, lane);
  red[warp][lane] = acc[0];
  __syncthreads();
  if (threadIdx.x < kPanel) {
    const int64_t n = panel * kPanel + threadIdx.x;
    if (n < g.p.N) {
      float v = g.bias ? __half2float(g.bias[n]) : 0.0f;
#pragma unroll
      for (int w = 0; w < kGemvWarps; ++w) v += red[w][threadIdx.x];
      g.y[n] = __float2half_rn(v);
    }
  }
}

// ---- stream-K schedule of the float16 NF4 GEMV ---------------------------------------------------
// One CTA per panel (the kernel above) pays the CTA set-up (pair table, scales) once per panel and
// leaves SMs idle in a partial last wave (4096x11008: 344 panels on 132 SMs). Here the grid is what
// is resident at once (every SM, as many CTAs as fit, at most kSkMaxCtasPerSm; fewer for small
// weights, at least one unit per warp), and the sequence of all units (16 * KR k-rows of one panel,
// panel-major) is cut into equal contiguous ranges, one per CTA: a range ends one panel, covers whole
// panels, and starts another.
// A lane takes half of each k-row (8 bytes: channels 8h..8h+7 and 16+8h..16+8h+7, h = lane & 1) of
// rows 16i + q (q = lane >> 1, i < KR) of a unit: 16 fp32 accumulators per row of A (with KR = 4
// and one row of A, two CTAs of 16 warps
// fit on an SM). A warp takes every kGemvWarps-th unit of a panel's part of the range; the next
// unit's weights (registers) and scales (cp.async into shared memory) are requested before the
// current unit is computed, across panel boundaries too; A is read when a unit is computed (it is
// small and read by every CTA: L1 / L2 hits). At the end of each panel's part the warps' sums meet
// in shared memory and warp 0 writes Y for a whole panel; a panel shared by CTAs is finished by
// the CTA holding its last unit, which adds the others' flagged fp32 partial sums in CTA order (the
// result does not depend on timing), adds the bias, writes Y and sets their flags back to 0: the
// workspace is left as found, ready for the next launch on the stream (SkRange, SkPanelOut).
// H100, kernel times against the one-CTA-per-panel half-row kernel it replaced: 19.5 / 22.1
// us at 4096x11008 (M = 1), 22.6 / 28.1 (M = 2), 35.2 / 47.9 (M = 4), 59.9 / 74.8 at 8192x28672.

struct StreamK {  // 32-bit unit indices (LaunchNf4GemvSk checks that they fit)
  int upp;    // units per panel: ceil(k_pad / unit rows)
  int total;  // panels * upp
  int ctas;   // <= total: every CTA gets at least one unit
  __host__ __device__ int Start(int c) const { return static_cast<int>(static_cast<int64_t>(c) * total / ctas); }
  // The CTA whose range holds unit u: the largest c with Start(c) <= u.
  __host__ __device__ int CtaOf(int u) const {
    return static_cast<int>((static_cast<int64_t>(u + 1) * ctas - 1) / total);
  }
};

__device__ __forceinline__ void StoreRelease(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned LoadAcquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Waits, with the threads t < `threads` of the caller's group, until the flags of CTAs [c_first,
// c_end) are set (acquire), and sets them back to 0 (the caller is their only reader); the caller
// then synchronizes its group. All flags are polled at once: a narrow layer's owner may wait for
// dozens of CTAs. The flags' writers have lower indices, and every CTA of the grid is resident at
// once (at most the CTAs per SM the occupancy allows, times the SMs), so the wait ends: the next
// kernel on the stream starts (programmatic dependent launch) only once all of them have started.
__device__ __forceinline__ void SkAwaitFlags(unsigned* flags, int c_first, int c_end, int t, int threads) {
  for (int c = c_first + t; c < c_end; c += threads) {
    while (LoadAcquire(flags + c) == 0u) {
    }
    flags[c] = 0u;
  }
}

// Workspace of the stream-K GEMVs (GemvWorkspaceBytes): partial sums [ctas][MR][32] (a CTA has at
// most one: SkRange), then the flags, one per CTA (SkPartialFloats(sm_count) floats in), 0 before a
// launch and left at 0.

template <typename S>
__device__ __forceinline__ float SkScale(S raw, float scale2, float offset) {
  if constexpr (std::is_same_v<S, int8_t>) {
    return DqScale(raw, scale2, offset);
  } else {
    return ToF(raw);
  }
}

// One CTA's range of the schedule, and this warp's units in it.
// The panels are run in the order First(), Next(First()), ...: the head of the last panel when the
// range ends inside it (a partial sum, written and flagged early), the panels held whole, then the
// tail of the first panel (its owner's part when the panel started in an earlier CTA: the partial
// sums it adds were, as a rule, written long before).
struct SkRange {
  int u_begin, u_end, p_first, p_last;
  bool pre;  // the last panel's head first
  __device__ SkRange(const StreamK& sk, int cta)
      : u_begin(sk.Start(cta)), u_end(sk.Start(cta + 1)), p_first(sk.Start(cta) / sk.upp),
        p_last((sk.Start(cta + 1) - 1) / sk.upp), pre(p_last > p_first && u_end % sk.upp != 0) {}
  // The CTA's units of panel p are [max(u_begin - p * upp, 0), End(p)) (indices in the panel).
  __device__ int End(const StreamK& sk, int p) const { return min(u_end - p * sk.upp, sk.upp); }
  __device__ bool Whole(const StreamK& sk, int p) const { return u_begin <= p * sk.upp && End(sk, p) == sk.upp; }
  // The CTA holds panel p's last unit (whole, or the owner of its tail).
  __device__ bool HasEnd(const StreamK& sk, int p) const { return u_end >= (p + 1) * sk.upp; }
  __device__ int First() const { return pre ? p_last : p_first < p_last ? p_first + 1 : p_first; }
  __device__ int Next(int p) const {  // -1: none left
    if (p == p_first) return -1;
    const int q = pre && p == p_last ? p_first + 1 : p + 1;
    return q <= (pre ? p_last - 1 : p_last) ? q : p_first;
  }
  // The warp's first unit in panels p, Next(p), ...: returns its panel (-1: none), sets idx.
  __device__ int FirstFrom(const StreamK& sk, int p, int warp, int& idx) const {
    for (; p >= 0; p = Next(p)) {
      idx = max(u_begin - p * sk.upp, 0) + warp;
      if (idx < End(sk, p)) return p;
    }
    return -1;
  }
};

// A CTA's loop over its range: load(panel, idx, buf, slot) / compute(idx, buf, slot) in ping-pong
// (the two buffers by name: no dynamic register indexing; one cp.async group per unit, committed
// even when empty), prologue() once after the first load, panel_end(p, parity of p's place in the
// order) by every thread after the warp's units of each panel. load_a(idx, buf) requests a unit's
// rows of A with its weights (after the prologue for the first unit: A may be written by the
// previous kernel until GridDependencyWait), so that a unit waits for neither when it is computed.
template <class Buf, class Load, class LoadA, class Compute, class Prologue, class PanelEnd>
__device__ __forceinline__ void SkLoop(const StreamK& sk, const SkRange& r, int warp, Load&& load, LoadA&& load_a,
                                       Compute&& compute, Prologue&& prologue, PanelEnd&& panel_end) {
  Buf b0, b1;
  int idx = 0;
  int up = r.FirstFrom(sk, r.First(), warp, idx);  // the panel of this warp's next unit (-1: none left)
  if (up >= 0) load(up, idx, b0, 0);                // in flight during the prologue
  CpAsyncCommit();
  prologue();
  if (up >= 0) load_a(idx, b0);
  bool in_b1 = false;
  int par = 0;  // the panel's parity in the order (panel_end's buffer)
  for (int p = r.First(); p >= 0; p = r.Next(p), par ^= 1) {
    const int end = r.End(sk, p);
    while (up == p) {  // warp-uniform
      int nidx = idx + kGemvWarps, np = p;
      if (nidx >= end) np = r.FirstFrom(sk, r.Next(p), warp, nidx);
      if (!in_b1) {
        if (np >= 0) {
          load(np, nidx, b1, 1);
          load_a(nidx, b1);
        }
        CpAsyncCommit();
        compute(idx, b0, 0);
      } else {
        if (np >= 0) {
          load(np, nidx, b0, 0);
          load_a(nidx, b0);
        }
        CpAsyncCommit();
        compute(idx, b1, 1);
      }
      in_b1 = !in_b1;
      up = np;
      idx = nidx;
    }
    panel_end(p, par);
  }
}

// End of panel p's part, by every thread, after each warp has put its sums into red[par][warp]
// (the next panel's loads are in flight): warp 0 sums the warps and writes Y (a whole panel), or
// writes the CTA's partial sum to the workspace and flags it (counters[cta] = 1, release), or, as
// the panel's owner, waits for the flags of the CTAs before it that share the panel (acquire),
// adds their sums in CTA order, sets their flags back to 0, adds the bias and writes Y.
template <int MR>
__device__ __forceinline__ void SkPanelOut(const StreamK& sk, const SkRange& r, int p, int par,
                                           const float (&red)[2][kGemvWarps][MR][kPanel], const __half* bias_p,
                                           __half* y, int64_t N, float* partials, unsigned* counters) {
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x, cta = blockIdx.x;
  const int64_t n = static_cast<int64_t>(p) * kPanel + lane;
  float v[MR];
#pragma unroll
  for (int mi = 0; mi < MR; ++mi) {
    v[mi] = 0.0f;
#pragma unroll
    for (int w = 0; w < kGemvWarps; ++w) v[mi] += red[par][w][mi][lane];
  }
  if (!r.HasEnd(sk, p)) {
    float* mine = partials + static_cast<int64_t>(cta) * MR * kPanel;
#pragma unroll
    for (int mi = 0; mi < MR; ++mi) mine[mi * kPanel + lane] = v[mi];
    __syncwarp();  // (orders the lanes' writes before lane 0's release)
    if (lane == 0) StoreRelease(counters + cta, 1u);
    return;
  }
  if (!r.Whole(sk, p)) {
    const int c_first = sk.CtaOf(p * sk.upp);
    SkAwaitFlags(counters, c_first, cta, lane, 32);
    __syncwarp();
#pragma unroll 4
    for (int c = c_first; c < cta; ++c)  // CTA order
#pragma unroll
      for (int mi = 0; mi < MR; ++mi) v[mi] += __ldcg(partials + (static_cast<int64_t>(c) * MR + mi) * kPanel + lane);
  }
  const float bias = (bias_p != nullptr && n < N) ? __half2float(bias_p[n]) : 0.0f;
  if (n < N)
#pragma unroll
    for (int mi = 0; mi < MR; ++mi) y[mi * N + n] = __float2half_rn(v[mi] + bias);
}

// ---- per-unit pieces shared by the stream-K GEMVs --------------------------------------------------
// Weights are read once: their loads do not allocate in L1, which keeps A's lines (read by every
// panel of a CTA's range) there.
__device__ __forceinline__ uint2 LdgStream(const uint2* p) {
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 LdgStream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// A unit's rows 16i + q (i < KR) of a panel's weights, `stride` bytes apart per 16 rows, from bp
// (the lane's bytes of row k0 + q); rows past k_pad get `pad` (a code worth 0).
template <int KR, typename Row>
__device__ __forceinline__ void SkLoadRows(const uint8_t* bp, int stride, int k0, int q, int k_pad, Row pad,
                                           Row (&rows)[KR]) {
  if (k0 + 16 * KR <= k_pad) {  // (uniform) a whole unit
#pragma unroll
    for (int i = 0; i < KR; ++i) rows[i] = LdgStream(reinterpret_cast<const Row*>(bp + stride * i));
  } else {  // a panel's last unit, short
#pragma unroll
    for (int i = 0; i < KR; ++i)
      rows[i] = k0 + 16 * i + q < k_pad ? LdgStream(reinterpret_cast<const Row*>(bp + stride * i)) : pad;
  }
}

// Copies (cp.async, 4-byte pieces, one per lane in turn) the scale rows of a unit's `pieces` 32-row
// pieces into dst (a row past the last block: the last one); int8 (double-quantized) scales: the
// first lanes also copy each row's scale2, after the rows.
template <typename T, typename S>
__device__ __forceinline__ void SkCopyScales(const KernelArgs<T, S>& g, int panel, int k0, int shift, int pieces,
                                             int lane, unsigned char* dst) {
  constexpr int kRowBytes = kPanel * static_cast<int>(sizeof(S)), kPieces = kRowBytes / 4;
  const int64_t row0 = static_cast<int64_t>(panel) * g.p.blocks;
  const int last_block = static_cast<int>(g.p.blocks) - 1;
  for (int piece = lane; piece < pieces * kPieces; piece += 32) {
    const int64_t r = row0 + min((k0 + 32 * (piece / kPieces)) >> shift, last_block);
    CpAsync4(dst + 4 * piece, reinterpret_cast<const unsigned char*>(g.scales + r * kPanel) + 4 * (piece % kPieces));
  }
  if constexpr (std::is_same_v<S, int8_t>) {
    if (lane < pieces) {
      const int64_t r = row0 + min((k0 + 32 * lane) >> shift, last_block);
      CpAsync4(dst + pieces * kRowBytes + 4 * lane, g.scale2 + (r >> kDqRowShift));
    }
  }
}

// Waits for the unit's scales (the next unit's copies may be pending) and decodes them from src
// (SkCopyScales) into the warp's float rows sw [pieces][32]; the warp's previous flushes are done
// reading sw before, and every lane sees the new rows after.
template <typename S>
__device__ __forceinline__ void SkStageScales(const unsigned char* src, int pieces, float offset, int lane, float* sw) {
  CpAsyncWait<1>();
  __syncwarp();
  const S* raw = reinterpret_cast<const S*>(src);
  for (int j = 0; j < pieces; ++j) {
    float s2 = 0.0f;
    if constexpr (std::is_same_v<S, int8_t>) s2 = reinterpret_cast<const float*>(src + pieces * kPanel * sizeof(S))[j];
    sw[kPanel * j + lane] = SkScale(raw[kPanel * j + lane], s2, offset);
  }
  __syncwarp();
}

// A at the lane's rows k0 + 16i + q of the unit (0 past K), MR rows.
template <int MR, int KR>
__device__ __forceinline__ void SkLoadA(const __half* a, int64_t lda, int k0, int q, int K, __half (&out)[MR][KR]) {
  const __half* ap = a + k0 + q;
  if (k0 + 16 * KR <= K) {  // (uniform)
#pragma unroll
    for (int i = 0; i < KR; ++i)
#pragma unroll
      for (int mi = 0; mi < MR; ++mi) out[mi][i] = __ldg(ap + mi * lda + 16 * i);
  } else {
#pragma unroll
    for (int i = 0; i < KR; ++i)
#pragma unroll
      for (int mi = 0; mi < MR; ++mi) out[mi][i] = k0 + 16 * i + q < K ? __ldg(ap + mi * lda + 16 * i) : __float2half(0.0f);
  }
}

// A's rows of a unit come with its weights (SkLoop's load_a) at 1-2 rows of A; at 3-4 the registers
// of two units' rows spill, so they are loaded when the unit is computed. H100, Nsight Compute
// (4096x11008, M = 1, before): 11% of the Int8 GEMV's stall samples waited for A there.
template <int MR>
constexpr bool kSkEarlyA = MR <= 2;

// The unit's rows of A: those loaded with its weights, or loaded now.
template <int MR, int KR>
__device__ __forceinline__ void SkTakeA(const __half (&early)[MR][KR], const __half* a, int64_t lda, int k0, int q,
                                        int K, __half (&out)[MR][KR]) {
  if constexpr (kSkEarlyA<MR>) {
#pragma unroll
    for (int mi = 0; mi < MR; ++mi)
#pragma unroll
      for (int i = 0; i < KR; ++i) out[mi][i] = early[mi][i];
  } else {
    SkLoadA(a, lda, k0, q, K, out);
  }
}

// The warp's sums of a panel into red_w (ReduceScatter<16>: lane's total is for channel ch), then 0.
template <int MR>
__device__ __forceinline__ void SkWarpSums(float (&acc)[MR][16], int lane, int ch, float (&red_w)[MR][kPanel]) {
#pragma unroll
  for (int mi = 0; mi < MR; ++mi) {
    ReduceScatter<16>(acc[mi], lane);
    red_w[mi][ch] = acc[mi][0];
#pragma unroll
    for (int j = 0; j < 16; ++j) acc[mi][j] = 0.0f;
  }
}

// KR: rows per lane per unit (a unit is 16 * KR k-rows: 8 -> 128 rows at M = 1, 4 -> 64 rows);
// CTAs per SM: 2 with 4 rows and one row of A (64 registers), else 1.
template <int KR, int MR>
constexpr int kSkCtasPerSmBound = (KR == 4 && MR == 1) ? 2 : 1;

template <typename S, int MR, int KR>
__global__ void __launch_bounds__(kGemvWarps * 32, kSkCtasPerSmBound<KR, MR>)
    Nf4GemvSkKernel(KernelArgs<__half, S> g, StreamK sk, float* partials, unsigned* counters) {
  constexpr int kUnit = 16 * KR;              // k-rows per unit
  constexpr int kUnitBlocks = kUnit / 32;     // scale blocks a unit can hold (blocks are >= 32 rows)
  extern __shared__ __align__(16) unsigned char hg_smem[];
  __shared__ __align__(16) float sc_s[kGemvWarps][kUnitBlocks * kPanel];  // per warp: its unit's scales, by 32 rows
  __shared__ __align__(16) unsigned char sc_raw[kGemvWarps][2][kUnitBlocks * (kPanel * sizeof(S) + 4)];  // as stored, by buffer
  __shared__ float red[2][kGemvWarps][MR][kPanel];              // by panel parity
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane >> 1, h = lane & 1;
  const SkRange range(sk, blockIdx.x);
  PrefetchUnitsL2(g.b, g.p.k_pad, g.p.panels, 16, kUnit, 1, sk.upp, range.u_begin, range.u_end, g.prefetch);
  float dq_offset = 0.0f;
  if constexpr (std::is_same_v<S, int8_t>) dq_offset = __ldg(g.offset);
  const __half zero = __float2half(0.0f);
  // A unit's weights are loaded into registers, its scales copied into shared memory (cp.async,
  // slot = buffer); A's rows with them at 1-2 rows of A (kSkEarlyA), else when the unit is computed
  // (small, read by every CTA: L1 / L2 hits).
  struct Buf {
    uint2 rows[KR];
    __half a[MR][KR];
  };
  // In-panel row indices are 32-bit (k_pad < 2^31). NF4 blocks are 32..256 rows (power of 2), so a
  // 32-row piece of a unit lies in one block: piece j's scales are those of row k0 + 32 j.
  const int k_pad = static_cast<int>(g.p.k_pad), K = static_cast<int>(g.p.K);
  const int shift = g.p.group_shift;
  auto load = [&](int panel, int idx, Buf& b, int slot) {
    const int k0 = idx * kUnit;
    const uint8_t* bp = g.b + (static_cast<int64_t>(panel) * k_pad + k0 + q) * 16 + 8 * h;
    SkLoadRows<KR>(bp, 256, k0, q, k_pad, make_uint2(0x77777777u, 0x77777777u), b.rows);  // pad: code 7 = 0.0
    SkCopyScales(g, panel, k0, shift, kUnitBlocks, lane, sc_raw[warp][slot]);
  };
  float acc[MR][16];  // channels 8h + j (j < 8) and 16 + 8h + j - 8 (j >= 8)
#pragma unroll
  for (int mi = 0; mi < MR; ++mi)
#pragma unroll
    for (int j = 0; j < 16; ++j) acc[mi][j] = 0.0f;
  // The lane's word for PairLookup: the aligned table's address with 4 * lane in its low byte.
  unsigned char* tab = nullptr;
  const uint32_t tab_lane = AlignedTableLane(hg_smem, &tab);
  float* sw = sc_s[warp];
  auto load_a = [&](int idx, Buf& b) {
    if constexpr (kSkEarlyA<MR>) SkLoadA(g.a, g.p.K, idx * kUnit, q, K, b.a);
  };
  auto compute = [&](int idx, const Buf& b, int slot) {
    const int k0 = idx * kUnit;
    __half a[MR][KR];
    SkTakeA(b.a, g.a, g.p.K, k0, q, K, a);
    SkStageScales<S>(sc_raw[warp][slot], kUnitBlocks, dq_offset, lane, sw);
    __half2 part[MR][8];
#pragma unroll
    for (int mi = 0; mi < MR; ++mi)
#pragma unroll
      for (int j = 0; j < 8; ++j) part[mi][j] = __half2half2(zero);
#pragma unroll
    for (int i = 0; i < KR; ++i) {
      const uint32_t w[2] = {b.rows[i].x, b.rows[i].y};
      Unroll<8>([&](auto jc) {  // byte j: one PRMT (the address), one LDS
        constexpr int j = decltype(jc)::value;
        const __half2 v = PairLookup<j % 4>(w[j / 4], tab_lane);
#pragma unroll
        for (int mi = 0; mi < MR; ++mi) part[mi][j] = __hfma2(v, __half2half2(a[mi][i]), part[mi][j]);
      });
      // flush the fp16 sums where the next 16 rows are in another scale block (uniform)
      if (i == KR - 1 || ((k0 + 16 * i) >> shift) != ((k0 + 16 * (i + 1)) >> shift)) {
        const float* sc = sw + kPanel * (i / 2) + 8 * h;  // the 32-row piece of rows 16i..16i+15
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float s_lo = sc[j], s_hi = sc[16 + j];
#pragma unroll
          for (int mi = 0; mi < MR; ++mi) {
            const float2 f = __half22float2(part[mi][j]);
            acc[mi][j] = fmaf(f.x, s_lo, acc[mi][j]);
            acc[mi][8 + j] = fmaf(f.y, s_hi, acc[mi][8 + j]);
            part[mi][j] = __half2half2(zero);
          }
        }
      }
    }
  };

  const int ch = q < 8 ? 8 * h + q : 16 + 8 * h + q - 8;  // the channel ReduceScatter<16> leaves in acc[mi][0]
  SkLoop<Buf>(
      sk, range, warp, load, load_a, compute,
      [&] {
        FillPairTable<256>(tab);  // (the first unit's loads are in flight)
        GridDependencyWait();
        AllowDependentLaunch();
        __syncthreads();
      },
      [&](int p, int par) {
        SkWarpSums(acc, lane, ch, red[par][warp]);
        SkPanelOut<MR>(sk, range, p, par, red, g.bias, g.y, g.p.N, partials, counters);
      });
}

// ---- stream-K Int8 GEMV with float16 A ---------------------------------------------------------
// The schedule above; a lane takes half of each k-row (16 bytes: channels 16h..16h+15, h = lane & 1)
// of rows 16i + q (q = lane >> 1, i < KR) of a unit. int8 -> float16 exactly: a byte XOR 0x80
// (u = x + 128) placed under the exponent byte 0x64 is the float16 1024 + u (PRMT), minus 1152
// (HSUB2); one HFMA2 per two weights and row of A into fp16 sums of the unit's rows of one scale
// block (at most 8 products of |x| <= 127), then fp32 with the scale. Scales: per channel or
// blocks of >= 32 rows, so a 32-row piece of a unit has one scale row.
template <typename S, int MR, int KR>
__global__ void __launch_bounds__(kGemvWarps * 32, 1)
    Int8GemvSkKernel(KernelArgs<__half, S> g, StreamK sk, float* partials, unsigned* counters) {
  constexpr int kUnit = 16 * KR;           // k-rows per unit
  constexpr int kUnitPieces = kUnit / 32;  // its 32-row pieces
  static_assert(kUnitPieces >= 1, "units of whole 32-row pieces");
  __shared__ __align__(16) float sc_s[kGemvWarps][kUnitPieces * kPanel];                 // per warp, by piece
  __shared__ __align__(16) unsigned char sc_raw[kGemvWarps][2][kUnitPieces * kPanel * sizeof(S)];  // by buffer
  __shared__ float red[2][kGemvWarps][MR][kPanel];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane >> 1, h = lane & 1;
  const SkRange range(sk, blockIdx.x);
  PrefetchUnitsL2(g.b, g.p.k_pad, g.p.panels, 32, kUnit, 1, sk.upp, range.u_begin, range.u_end, g.prefetch);
  const __half zero = __float2half(0.0f);
  struct Buf {
    uint4 rows[KR];
    __half a[MR][KR];
  };
  const int k_pad = static_cast<int>(g.p.k_pad), K = static_cast<int>(g.p.K);  // per channel: k_pad = K
  const int shift = min(g.p.group_shift, 31);                                  // per channel: every row -> block 0
  auto load = [&](int panel, int idx, Buf& b, int slot) {
    const int k0 = idx * kUnit;
    const uint8_t* bp = g.b + (static_cast<int64_t>(panel) * k_pad + k0 + q) * 32 + 16 * h;
    SkLoadRows<KR>(bp, 512, k0, q, k_pad, make_uint4(0, 0, 0, 0), b.rows);  // pad: code 0
    SkCopyScales(g, panel, k0, shift, kUnitPieces, lane, sc_raw[warp][slot]);
  };
  float acc[MR][16];  // channels 16h + j
#pragma unroll
  for (int mi = 0; mi < MR; ++mi)
#pragma unroll
    for (int j = 0; j < 16; ++j) acc[mi][j] = 0.0f;
  float* sw = sc_s[warp];
  const __half2 bias1152 = __floats2half2_rn(1152.0f, 1152.0f);
  auto load_a = [&](int idx, Buf& b) {
    if constexpr (kSkEarlyA<MR>) SkLoadA(g.a, g.p.K, idx * kUnit, q, K, b.a);
  };
  auto compute = [&](int idx, const Buf& b, int slot) {
    const int k0 = idx * kUnit;
    __half a[MR][KR];
    SkTakeA(b.a, g.a, g.p.K, k0, q, K, a);
    SkStageScales<S>(sc_raw[warp][slot], kUnitPieces, 0.0f, lane, sw);
    __half2 part[MR][8];  // channel pairs (16h + 2t, 16h + 2t + 1)
#pragma unroll
    for (int mi = 0; mi < MR; ++mi)
#pragma unroll
      for (int t = 0; t < 8; ++t) part[mi][t] = __half2half2(zero);
#pragma unroll
    for (int i = 0; i < KR; ++i) {
      const uint32_t w[4] = {b.rows[i].x, b.rows[i].y, b.rows[i].z, b.rows[i].w};
#pragma unroll
      for (int t = 0; t < 4; ++t) {  // word t: channels 16h + 4t .. 16h + 4t + 3
        const uint32_t x = w[t] ^ 0x80808080u;
        const uint32_t lo_bits = __byte_perm(x, 0x64646464u, 0x5140u), hi_bits = __byte_perm(x, 0x64646464u, 0x5342u);
        const __half2 lo = __hsub2(*reinterpret_cast<const __half2*>(&lo_bits), bias1152);
        const __half2 hi = __hsub2(*reinterpret_cast<const __half2*>(&hi_bits), bias1152);
#pragma unroll
        for (int mi = 0; mi < MR; ++mi) {
          const __half2 a2 = __half2half2(a[mi][i]);
          part[mi][2 * t] = __hfma2(lo, a2, part[mi][2 * t]);
          part[mi][2 * t + 1] = __hfma2(hi, a2, part[mi][2 * t + 1]);
        }
      }
      // flush the fp16 sums where the next 16 rows are in another scale block (uniform)
      if (i == KR - 1 || ((k0 + 16 * i) >> shift) != ((k0 + 16 * (i + 1)) >> shift)) {
        const float* sc = sw + kPanel * (i / 2) + 16 * h;  // the 32-row piece of rows 16i..16i+15
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const float s0 = sc[2 * t], s1 = sc[2 * t + 1];
#pragma unroll
          for (int mi = 0; mi < MR; ++mi) {
            const float2 f = __half22float2(part[mi][t]);
            acc[mi][2 * t] = fmaf(f.x, s0, acc[mi][2 * t]);
            acc[mi][2 * t + 1] = fmaf(f.y, s1, acc[mi][2 * t + 1]);
            part[mi][t] = __half2half2(zero);
          }
        }
      }
    }
  };
  SkLoop<Buf>(
      sk, range, warp, load, load_a, compute,
      [] {
        GridDependencyWait();  // (the first unit's loads are in flight)
        AllowDependentLaunch();
      },
      [&](int p, int par) {
        SkWarpSums(acc, lane, 16 * h + q, red[par][warp]);
        SkPanelOut<MR>(sk, range, p, par, red, g.bias, g.y, g.p.N, partials, counters);
      });
}

// CTAs per SM of a stream-K kernel (at most kSkMaxCtasPerSm), once per kernel.
template <typename Kernel>
int SkCtasPerSm(Kernel kernel, size_t smem) {
  int blocks = 0;
  if (AllowSmem(kernel, smem) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kGemvWarps * 32, smem) != cudaSuccess)
    return 0;
  return std::min(blocks, kSkMaxCtasPerSm);
}

// The schedule for units of `unit` k-rows: all resident CTAs, but at least a unit per warp each
// (small weights: fewer shared panels). ctas = 0: does not fit 32-bit unit indices.
inline StreamK MakeStreamK(const Params& p, int unit, int sm_count, int per_sm) {
  StreamK sk{};
  const int64_t upp = (p.k_pad + unit - 1) / unit, total = p.panels * upp;
  if (total >= (int64_t{1} << 30)) return sk;  // never planned (2^35 weights and more)
  sk.upp = static_cast<int>(upp);
  sk.total = static_cast<int>(total);
  const int64_t busy = (total + kGemvWarps - 1) / kGemvWarps;
  sk.ctas = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(busy, static_cast<int64_t>(sm_count) * per_sm)));
  return sk;
}

template <typename S, int MR>
cudaError_t LaunchNf4GemvSk(const KernelArgs<__half, S>& g, void* workspace, int sm_count, cudaStream_t stream) {
  // M = 1: 8 rows per lane, one CTA of 16 warps per SM (128 registers); H100 kernel times against 4
  // rows and two CTAs per SM: 19.5 / 19.7 us at 4096x11008, 58.1 / 60.5 at 8192x28672, 19.3 / 18.9
  // at 11008x4096 (24% fewer instructions, fewer warps to hide latency). M = 2-4: 4 rows (4 rows
  // against 2 at M = 4: 37.0 / 37.9 us).
  constexpr int KR = MR == 1 ? 8 : 4;
  static const int per_sm = SkCtasPerSm(Nf4GemvSkKernel<S, MR, KR>, kPairTableSmem);
  const StreamK sk = MakeStreamK(g.p, 16 * KR, sm_count, per_sm);
  if (workspace == nullptr || per_sm < 1 || sk.ctas < 1) return cudaErrorInvalidValue;
  float* partials = static_cast<float*>(workspace);
  unsigned* counters = reinterpret_cast<unsigned*>(partials + SkPartialFloats(sm_count));
  return LaunchKernel(Nf4GemvSkKernel<S, MR, KR>, dim3(static_cast<unsigned>(sk.ctas)), dim3(kGemvWarps * 32),
                      kPairTableSmem, stream, g.pdl, g, sk, partials, counters);
}

template <typename S, int MR>
cudaError_t LaunchInt8GemvSk(const KernelArgs<__half, S>& g, void* workspace, int sm_count, cudaStream_t stream) {
  // 64-row units (32 at M = 3, 4: registers), one CTA of 16 warps per SM. H100, M = 1: 32-row units
  // with two CTAs per SM measured no faster (23.7 / 23.2 us at 4096x11008, 87.4 / 86.9 at 8192x28672).
  constexpr int KR = MR <= 2 ? 4 : 2;
  static const int per_sm = SkCtasPerSm(Int8GemvSkKernel<S, MR, KR>, 0);
  const StreamK sk = MakeStreamK(g.p, 16 * KR, sm_count, per_sm);
  if (workspace == nullptr || per_sm < 1 || sk.ctas < 1) return cudaErrorInvalidValue;
  float* partials = static_cast<float*>(workspace);
  unsigned* counters = reinterpret_cast<unsigned*>(partials + SkPartialFloats(sm_count));
  return LaunchKernel(Int8GemvSkKernel<S, MR, KR>, dim3(static_cast<unsigned>(sk.ctas)), dim3(kGemvWarps * 32), 0,
                      stream, g.pdl, g, sk, partials, counters);
}

template <typename S>
cudaError_t LaunchInt8GemvHalf(const KernelArgs<__half, S>& g, int sm_count, void* workspace, cudaStream_t stream) {
  switch (g.m) {
    case 1: return LaunchInt8GemvSk<S, 1>(g, workspace, sm_count, stream);
    case 2: return LaunchInt8GemvSk<S, 2>(g, workspace, sm_count, stream);
    case 3: return LaunchInt8GemvSk<S, 3>(g, workspace, sm_count, stream);
    case 4: return LaunchInt8GemvSk<S, 4>(g, workspace, sm_count, stream);
    default: return cudaErrorInvalidValue;
  }
}

// The float16 NF4 GEMV (M <= 4): CudaPlan::stream_k picks the stream-K kernel or, at M = 1, the
// one-CTA-per-panel full-row kernel (see Plan).
template <typename S>
cudaError_t LaunchNf4GemvHalf(const KernelArgs<__half, S>& g, bool stream_k, int sm_count, void* workspace,
                              cudaStream_t stream) {
  if (stream_k) {
    switch (g.m) {
      case 1: return LaunchNf4GemvSk<S, 1>(g, workspace, sm_count, stream);
      case 2: return LaunchNf4GemvSk<S, 2>(g, workspace, sm_count, stream);
      case 3: return LaunchNf4GemvSk<S, 3>(g, workspace, sm_count, stream);
      case 4: return LaunchNf4GemvSk<S, 4>(g, workspace, sm_count, stream);
      default: return cudaErrorInvalidValue;
    }
  }
  const size_t smem = kPairTableSmem + static_cast<size_t>(g.p.blocks) * kPanel * sizeof(float);
  if (g.m != 1 || smem > kHalfGemvMaxSmem) return cudaErrorInvalidValue;  // never planned
  static const cudaError_t attr = AllowSmem(Nf4GemvHalfKernel<S>, kHalfGemvMaxSmem);
  if (attr != cudaSuccess) return attr;
  return LaunchKernel(Nf4GemvHalfKernel<S>, dim3(static_cast<unsigned>(g.p.panels)), dim3(kGemvWarps * 32), smem,
                      stream, g.pdl, g);
}

// ---- NF4 with float16 A on tensor cores, decoded in registers (M <= kMmaMaxRows) --------------
// The tensor-core kernel above decodes each stage into a shared fp16 tile (about 6 instructions
// per weight, then ldmatrix); here the weights go from the packed bytes straight into mma.sync
// operands. The weights are the A operand (m16n8k16: 16 channels x 16 k-rows) and A's rows the B
// operand (8 rows per tile). Lane (g = lane >> 2, c = lane & 3) takes bytes 2g, 2g+1 of k-rows
// 4c..4c+3 of each 16-row step: byte 2g is channels 2g / 2g+16, byte 2g+1 channels 2g+1 / 2g+17
// (panel layout). A byte is one lookup of a half2 pair in the per-lane table (as the GEMV), one
// HMUL2 by the pair's scales (fp16 value x scale, rounded: the dequantized fp16 weight, as the
// dequantize + cuBLAS path makes it but for the codebook's own fp16 rounding), and half a PRMT
// that pairs two k-rows of one channel: the mma tile X holds channels 2g (row g) and 2g+1 (row
// g+8), tile Y channels 16+2g and 17+2g, and mma k-index 2c, 2c+1, 2c+8, 2c+9 is k-row 4c..4c+3
// (the same order for A's rows, so a lane reads its 4 values of A as one 8-byte word).
// A CTA (kMmaWarps = 16 warps, one CTA per SM) owns groups of GP panels: warp w takes panel
// w % GP of the group and the w / GP-th slice of kMmaSliceRows k-rows of each unit (units of
// 16 / GP slices x GP panels, group-major, stream-K ranges), through a kStages-deep cp.async
// pipeline of weights, A's rows and the scales. A warp keeps its sums in registers until the
// group ends; then the slices of a panel are summed through shared memory in slice order (the
// first slice's warp adds the others'), and a group shared with other CTAs is finished by the CTA
// holding its last unit, which adds the others' fp32 partial sums (CudaCall::workspace, one per
// CTA, flagged with release / acquire) in CTA order. A CTA runs the head of its last group first
// and the tail of its first group last (MmaOrder), so the sums an owner waits for were written
// long before and no CTA stops mid-range for more than a barrier. (The earlier scheme, a counter
// per group and the last CTA to arrive summing, took 6.3 of 23.5 us at 4096x11008, M = 16: fences
// by every thread, atomics and sums mid-range and at every range's end; this one 20.1 us. H100,
// kernel_bench, docs/results/runtime_ops_cuda_h100_kernels_streamk_owner.txt.) Few panels per
// group give every SM work on narrow layers and few CTAs per group (short fix-ups); more panels per
// group read fewer of A's rows per weight (kernel_bench, force 8).
constexpr int kMmaSliceRows = 64;
constexpr int kMaxSmemPerCta = 227 * 1024;  // sm_80 / sm_90 opt-in limit
// The per-lane pair table (FillPairTable's entries) with rows of 256 bytes, 128 used: the byte at
// offset (byte << 8) + 4 lane, one PRMT from the packed byte and the lane (MmaTableOffset).
constexpr int kMmaTableBytes = static_cast<int>(kPairTableBytes);  // the GEMVs' layout, not aligned
constexpr int kMmaSliceBytes = kMmaSliceRows * 16 + kMmaSliceRows / 8 * 16;  // 16 more bytes per 8 rows: no bank conflicts

template <typename S, int NT, int GP>
struct MmaLayout {
  static constexpr int kSlices = kMmaWarps / GP;
  static constexpr int kRows = kSlices * kMmaSliceRows;  // k-rows per unit
  static constexpr int kPieces = kRows / 32;              // 32-row pieces: one scale row each (block_size >= 32)
  static constexpr int kRowBytes = kPanel * static_cast<int>(sizeof(S));  // a scale row as stored
  static constexpr int kW = GP * kSlices * kMmaSliceBytes;
  static constexpr int kARow = 2 * kRows + 32;  // bytes per row of A (+32: conflict-free 8-byte reads)
  static constexpr int kA = 8 * NT * kARow;
  static constexpr int kS = GP * kPieces * kRowBytes;                                  // [panel][piece][row]
  static constexpr int kS2 = std::is_same_v<S, int8_t> ? GP * kPieces * 4 : 0;        // scale2 [panel][piece]
  static constexpr int kStage = (kW + kA + kS + kS2 + 15) / 16 * 16;
  static constexpr int kRed = (kSlices - 1) * GP * 8 * NT * 32 * 4;  // sums of slices 1.. [slice-1][panel][value][lane]
  static constexpr int kStages = kMmaTableBytes + 4 * kStage + kRed <= kMaxSmemPerCta ? 4 : 3;
  static constexpr size_t kSmem = kMmaTableBytes + static_cast<size_t>(kStages) * kStage + kRed;
  static constexpr bool kFits = kSmem <= kMaxSmemPerCta;  // (not for 32 rows of A with few panels per group)
};

// The lane's scale pairs of one 32-row piece (row: the panel's scales as stored): p0 = (s[2g],
// s[2g+16]) and p1 = (s[2g+1], s[2g+17]) as half2, the channels of bytes 2g and 2g+1.
template <typename S>
__device__ __forceinline__ void MmaScalePairs(const unsigned char* row, const unsigned char* s2, float offset, int g,
                                              uint32_t& p0, uint32_t& p1) {
  if constexpr (std::is_same_v<S, __half>) {
    const uint32_t lo = *reinterpret_cast<const uint32_t*>(row + 4 * g);
    const uint32_t hi = *reinterpret_cast<const uint32_t*>(row + 32 + 4 * g);
    p0 = __byte_perm(lo, hi, 0x5410u);
    p1 = __byte_perm(lo, hi, 0x7632u);
  } else if constexpr (std::is_same_v<S, float>) {
    const float2 lo = *reinterpret_cast<const float2*>(row + 8 * g);
    const float2 hi = *reinterpret_cast<const float2*>(row + 64 + 8 * g);
    p0 = Pack2(lo.x, hi.x, static_cast<__half*>(nullptr));
    p1 = Pack2(lo.y, hi.y, static_cast<__half*>(nullptr));
  } else {
    const float scale2 = *reinterpret_cast<const float*>(s2);
    const int8_t* c = reinterpret_cast<const int8_t*>(row);
    p0 = Pack2(DqScale(c[2 * g], scale2, offset), DqScale(c[16 + 2 * g], scale2, offset), static_cast<__half*>(nullptr));
    p1 = Pack2(DqScale(c[2 * g + 1], scale2, offset), DqScale(c[17 + 2 * g], scale2, offset),
               static_cast<__half*>(nullptr));
  }
}

// Offset in the table of byte `which` (0 / 1) of w for the lane whose 4 * lane is lane4.
template <int which>
__device__ __forceinline__ uint32_t MmaTableOffset(uint32_t w, uint32_t lane4) {
  return __byte_perm(w, lane4, which == 0 ? 0x5504u : 0x5514u);  // bytes: 4 lane, w's byte, 0, 0
}

// The lane's pair (half2 bits) of byte `which` of w in the table at shared address tab_base.
template <int which>
__device__ __forceinline__ uint32_t MmaPair(uint32_t tab_base, uint32_t w, uint32_t lane4) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(tab_base + MmaTableOffset<which>(w, lane4)));
  return v;
}

__device__ __forceinline__ uint32_t Hmul2(uint32_t x, uint32_t y) {
  const __half2 r = __hmul2(*reinterpret_cast<const __half2*>(&x), *reinterpret_cast<const __half2*>(&y));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// The order in which a CTA of Nf4MmaKernel runs its range [u0, u1) of units: the head of its last
// group when the range ends inside it (a partial sum, written and flagged early), then the groups
// it holds whole, then the tail of its first group (the owner's part when that group started in an
// earlier CTA: it adds their flagged partial sums last, long after they were written). Segments
// [t, u1), [s, t), [u0, s); a group never appears in two of them.
struct MmaOrder {
  int u0, u1, s, t;
  __device__ MmaOrder(const StreamK& sk, int u0_, int u1_) : u0(u0_), u1(u1_) {
    const int g_first = u0 / sk.upp, g_last = (u1 - 1) / sk.upp;
    s = min(u1, (g_first + 1) * sk.upp);
    t = g_last > g_first && u1 % sk.upp != 0 ? g_last * sk.upp : u1;
  }
  __device__ int Begin(int seg) const { return seg == 0 ? t : seg == 1 ? s : u0; }
  __device__ int End(int seg) const { return seg == 0 ? u1 : seg == 1 ? t : s; }
};

template <typename S, int NT, int GP>
__global__ void __launch_bounds__(kMmaWarps * 32, 1)
    Nf4MmaKernel(KernelArgs<__half, S> g, StreamK sk, float* partials, unsigned* counters) {
  using L = MmaLayout<S, NT, GP>;
  extern __shared__ __align__(16) unsigned char mma_smem[];
  unsigned char* stages = mma_smem + kMmaTableBytes;
  float* red = reinterpret_cast<float*>(stages + L::kStages * L::kStage);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lg = lane >> 2, lc = lane & 3;
  const int pw = warp % GP, slice = warp / GP;
  const SkRange range(sk, blockIdx.x);
  const MmaOrder order(sk, range.u_begin, range.u_end);
  const int k_pad = static_cast<int>(g.p.k_pad), K = static_cast<int>(g.p.K), m = static_cast<int>(g.m);
  const int panels = static_cast<int>(g.p.panels), shift = g.p.group_shift;
  const int last_block = static_cast<int>(g.p.blocks) - 1;
  float dq_offset = 0.0f;
  if constexpr (std::is_same_v<S, int8_t>) dq_offset = __ldg(g.offset);

  // The next unit to load: ld_u of segment ld_seg (MmaOrder), its group and first k-row; advanced
  // by issue().
  int ld_seg = 0, ld_u = 0, ld_grp = 0, ld_k0 = 0;
  constexpr int kThreads = kMmaWarps * 32;
  constexpr int kWChunks = GP * L::kRows / kThreads;  // 16-byte pieces of weights per thread
  static_assert(kWChunks * kThreads == GP * L::kRows, "weights per stage");
  constexpr int kAChunks = L::kRows / 8;                                // 16-byte pieces per row of A
  constexpr int kAPer = (8 * NT * kAChunks + kThreads - 1) / kThreads;  // per thread, at most
  constexpr int kSChunks = L::kRowBytes / 16;                           // 16-byte pieces per scale row
  constexpr int kSCopies = GP * L::kPieces * kSChunks;
  static_assert(kSCopies <= kThreads && GP * L::kPieces <= kThreads, "one scale copy per thread");
  // A thread copies the same pieces in every unit (16 bytes of a k-row of a panel, of a row of A,
  // of a scale row): its source pointers move on by a unit's rows and are set again when the
  // group changes (issue() recomputing every address was about 30% of the kernel's instructions).
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t panel_bytes = static_cast<int64_t>(k_pad) * 16;
  const uint8_t* w_ptr[kWChunks];
  const __half* a_ptr[kAPer];
  auto set_pointers = [&]() {
    const uint8_t* wb = g.b + static_cast<int64_t>(ld_grp) * GP * panel_bytes + static_cast<int64_t>(ld_k0) * 16;
#pragma unroll
    for (int i = 0; i < kWChunks; ++i) {
      const int t = tid + i * kThreads;
      w_ptr[i] = wb + (t / L::kRows) * panel_bytes + (t % L::kRows) * 16;
    }
#pragma unroll
    for (int i = 0; i < kAPer; ++i) {
      const int t = tid + i * kThreads;
      a_ptr[i] = g.a + static_cast<int64_t>(t / kAChunks) * K + 8 * (t % kAChunks) + ld_k0;
    }
  };
  // To the first unit of the next non-empty segment (none left: ld_seg == 3).
  auto seek = [&]() {
    while (ld_seg < 3 && order.Begin(ld_seg) == order.End(ld_seg)) ++ld_seg;
    if (ld_seg < 3) {
      ld_u = order.Begin(ld_seg);
      ld_grp = ld_u / sk.upp;
      ld_k0 = (ld_u - ld_grp * sk.upp) * L::kRows;
      set_pointers();
    }
  };
  seek();
  const int s_tp = tid / (L::kPieces * kSChunks), s_piece = (tid / kSChunks) % L::kPieces, s_c = tid % kSChunks;
  // The next unit's weights, rows of A and scales into stage `slot` (every thread; one cp.async group).
  auto issue = [&](int slot) {
    const int p0 = ld_grp * GP, k0 = ld_k0;
    unsigned char* st = stages + slot * L::kStage;
    const int p_left = panels - p0, k_left = k_pad - k0, ka_left = K - k0;
#pragma unroll
    for (int i = 0; i < kWChunks; ++i) {
      const int t = tid + i * kThreads, tp = t / L::kRows, row = t % L::kRows;
      const bool valid = tp < p_left && row < k_left;  // else zeros: code 0, times A's zeros past K
      CpAsync16(st + tp * L::kSlices * kMmaSliceBytes + row * 16 + row / 8 * 16, valid ? w_ptr[i] : g.b, valid);
      w_ptr[i] += L::kRows * 16;
    }
#pragma unroll
    for (int i = 0; i < kAPer; ++i) {
      const int t = tid + i * kThreads, mi = t / kAChunks, j = t % kAChunks;
      if (mi < m) {  // (m <= 8 * NT; rows past m are not copied, their outputs not written); K % 8 == 0 (Plan)
        const bool valid = 8 * j < ka_left;
        CpAsync16(st + L::kW + mi * L::kARow + 16 * j, valid ? a_ptr[i] : g.a, valid);
      }
      a_ptr[i] += L::kRows;
    }
    if (tid < kSCopies) {
      const int panel = min(p0 + s_tp, panels - 1);
      const int64_t r = static_cast<int64_t>(panel) * g.p.blocks + min((k0 + 32 * s_piece) >> shift, last_block);
      CpAsync16(st + L::kW + L::kA + (s_tp * L::kPieces + s_piece) * L::kRowBytes + 16 * s_c,
                reinterpret_cast<const unsigned char*>(g.scales + r * kPanel) + 16 * s_c, true);
    }
    if constexpr (std::is_same_v<S, int8_t>) {
      if (tid < GP * L::kPieces) {
        const int panel = min(p0 + tid / L::kPieces, panels - 1);
        const int64_t r =
            static_cast<int64_t>(panel) * g.p.blocks + min((k0 + 32 * (tid % L::kPieces)) >> shift, last_block);
        CpAsync4(st + L::kW + L::kA + L::kS + 4 * tid, g.scale2 + (r >> kDqRowShift));
      }
    }
    if (++ld_u == order.End(ld_seg)) {
      ++ld_seg;
      seek();
    } else {
      ld_k0 += L::kRows;
      if (ld_k0 >= sk.upp * L::kRows) {
        ld_k0 = 0;
        ++ld_grp;
        set_pointers();
      }
    }
  };

  float acc[NT][8];  // [0..3]: tile X (channels 2g, 2g+1), [4..7]: tile Y (16+2g, 17+2g) of A's rows 8nt..8nt+7
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[nt][e] = 0.0f;
  const uint32_t tab_base = static_cast<uint32_t>(__cvta_generic_to_shared(mma_smem)), lane4 = 4 * lane;

  auto compute = [&](int slot) {
    const unsigned char* st = stages + slot * L::kStage;
    // k-row r of the slice is at 16 r + 16 (r / 8): row 16s + 4c + rr at 288 s + 16 rr + 64 c + 16 (c / 2)
    const unsigned char* wp =
        st + (pw * L::kSlices + slice) * kMmaSliceBytes + 64 * lc + 16 * (lc >> 1) + 2 * lg;
    const unsigned char* ap = st + L::kW + lg * L::kARow + slice * 2 * kMmaSliceRows + 8 * lc;
    const unsigned char* sp = st + L::kW + L::kA + (pw * L::kPieces + slice * 2) * L::kRowBytes;
    const unsigned char* s2p = st + L::kW + L::kA + L::kS + (pw * L::kPieces + slice * 2) * 4;
    uint32_t sp0 = 0, sp1 = 0;
#pragma unroll
    for (int s = 0; s < kMmaSliceRows / 16; ++s) {
      if (s % 2 == 0) MmaScalePairs<S>(sp + (s / 2) * L::kRowBytes, s2p + (s / 2) * 4, dq_offset, lg, sp0, sp1);
      uint32_t l0[4], l1[4];  // byte 2g / 2g+1 of k-row 16s + 4c + rr, looked up and scaled
#pragma unroll
      for (int rr = 0; rr < 4; ++rr) {
        const uint32_t w = *reinterpret_cast<const unsigned short*>(wp + 288 * s + 16 * rr);
        const uint32_t v0 = MmaPair<0>(tab_base, w, lane4), v1 = MmaPair<1>(tab_base, w, lane4);
        l0[rr] = Hmul2(v0, sp0);
        l1[rr] = Hmul2(v1, sp1);
      }
      const uint32_t ax[4] = {__byte_perm(l0[0], l0[1], 0x5410u), __byte_perm(l1[0], l1[1], 0x5410u),
                              __byte_perm(l0[2], l0[3], 0x5410u), __byte_perm(l1[2], l1[3], 0x5410u)};
      const uint32_t ay[4] = {__byte_perm(l0[0], l0[1], 0x7632u), __byte_perm(l1[0], l1[1], 0x7632u),
                              __byte_perm(l0[2], l0[3], 0x7632u), __byte_perm(l1[2], l1[3], 0x7632u)};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint2 b = *reinterpret_cast<const uint2*>(ap + nt * 8 * L::kARow + 32 * s);
        Mma(acc[nt], ax, b.x, b.y, static_cast<__half*>(nullptr));
        Mma(acc[nt] + 4, ay, b.x, b.y, static_cast<__half*>(nullptr));
      }
    }
  };

  // The end of group grp's part of the range (every thread): the slices summed, then Y (the whole
  // group, or its tail with the earlier CTAs' flagged partial sums added in CTA order), or the
  // CTA's partial sum written and flagged (its one partial: MmaOrder). The flags are left at 0.
  auto group_end = [&](int grp) {
    if constexpr (L::kSlices > 1) {
      if (slice > 0) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 8; ++e) red[(((slice - 1) * GP + pw) * 8 * NT + nt * 8 + e) * 32 + lane] = acc[nt][e];
      }
      __syncthreads();
      if (slice == 0) {
        for (int sl = 1; sl < L::kSlices; ++sl)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[nt][e] += red[(((sl - 1) * GP + pw) * 8 * NT + nt * 8 + e) * 32 + lane];
      }
    }
    constexpr int kGroupCh = GP * kPanel;
    const int panel = grp * GP + pw;
    const bool has_end = range.u_end >= (grp + 1) * sk.upp;  // the group's last unit is this CTA's
    float* const own = partials + static_cast<int64_t>(blockIdx.x) * m * kGroupCh;
    if (!has_end) {
      if (slice == 0) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const int mi = 8 * nt + 2 * lc + (e & 1);
            const int ch = pw * kPanel + 2 * lg + ((e >> 1) & 1) + (e >= 4 ? 16 : 0);
            if (mi < m) own[mi * kGroupCh + ch] = acc[nt][e];
          }
      }
      __syncthreads();  // (bar.sync orders every thread's writes before thread 0's release)
      if (threadIdx.x == 0) StoreRelease(counters + blockIdx.x, 1u);
    } else {
      const int c_first = range.u_begin <= grp * sk.upp ? static_cast<int>(blockIdx.x) : sk.CtaOf(grp * sk.upp);
      if (c_first < static_cast<int>(blockIdx.x)) {
        SkAwaitFlags(counters, c_first, blockIdx.x, threadIdx.x, kThreads);
        __syncthreads();
        if (slice == 0) {
#pragma unroll 1
          for (int c = c_first; c < static_cast<int>(blockIdx.x); ++c) {  // CTA order (8 NT loads each)
            const float* theirs = partials + static_cast<int64_t>(c) * m * kGroupCh;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int e = 0; e < 8; ++e) {
                const int mi = 8 * nt + 2 * lc + (e & 1);
                const int ch = pw * kPanel + 2 * lg + ((e >> 1) & 1) + (e >= 4 ? 16 : 0);
                if (mi < m) acc[nt][e] += __ldcg(theirs + mi * kGroupCh + ch);
              }
          }
        }
      }
      if (slice == 0 && panel < panels) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const int mi = 8 * nt + 2 * lc + (e & 1);
            const int64_t n = static_cast<int64_t>(panel) * kPanel + 2 * lg + ((e >> 1) & 1) + (e >= 4 ? 16 : 0);
            if (mi < m && n < g.p.N)
              g.y[mi * g.p.N + n] = __float2half_rn(acc[nt][e] + (g.bias ? __half2float(g.bias[n]) : 0.0f));
          }
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[nt][e] = 0.0f;
  };

  const int u0 = range.u_begin, u1 = range.u_end, units = u1 - u0;
  // The weights of the range into L2 and the table filled, while the previous kernel may still run
  // (A is in the stages: the loads wait for it).
  PrefetchUnitsL2(g.b, k_pad, panels, 16, L::kRows, GP, sk.upp, u0, u1, g.prefetch);
  FillPairTable<256>(mma_smem);  // (visible after the loop's first barrier)
  GridDependencyWait();
  AllowDependentLaunch();
#pragma unroll
  for (int s = 0; s < L::kStages - 1; ++s) {
    if (s < units) issue(s);
    CpAsyncCommit();
  }
  // The unit being computed (u of segment seg, in group grp) and the units of grp left in seg.
  int slot = 0, seg = 0;
  while (order.Begin(seg) == order.End(seg)) ++seg;  // (the range is not empty)
  int u = order.Begin(seg), grp = u / sk.upp, left = min(order.End(seg), (grp + 1) * sk.upp) - u;
  for (int j = 0; j < units; ++j) {
    CpAsyncWait<L::kStages - 2>();
    __syncthreads();  // unit j has landed for every thread, and every warp is done with unit j - 1's stage
    if (j + L::kStages - 1 < units) issue(slot == 0 ? L::kStages - 1 : slot - 1);
    CpAsyncCommit();
    compute(slot);
    slot = slot + 1 == L::kStages ? 0 : slot + 1;
    ++u;
    if (--left == 0) {
      group_end(grp);
      if (j + 1 < units) {
        if (u == order.End(seg)) {
          do ++seg;
          while (order.Begin(seg) == order.End(seg));
          u = order.Begin(seg);
        }
        grp = u / sk.upp;
        left = min(order.End(seg), (grp + 1) * sk.upp) - u;
      }
    }
  }
}

template <typename S, int NT, int GP>
cudaError_t LaunchNf4MmaKernel(const KernelArgs<__half, S>& g, void* workspace, void* gemv_workspace, int sm_count,
                               cudaStream_t stream) {
  using L = MmaLayout<S, NT, GP>;
  if constexpr (!L::kFits) {
    return cudaErrorInvalidValue;  // never planned
  } else {
    static const cudaError_t attr = AllowSmem(Nf4MmaKernel<S, NT, GP>, L::kSmem);
    if (attr != cudaSuccess) return attr;
    const int64_t groups = (g.p.panels + GP - 1) / GP;
    const int64_t upp = (g.p.k_pad + L::kRows - 1) / L::kRows, total = groups * upp;
    if (workspace == nullptr || gemv_workspace == nullptr || total >= (int64_t{1} << 30) || g.m > 8 * NT ||
        g.p.K % 8 != 0)
      return cudaErrorInvalidValue;  // never planned
    StreamK sk{};
    sk.upp = static_cast<int>(upp);
    sk.total = static_cast<int>(total);
    sk.ctas = static_cast<int>(std::min<int64_t>(total, sm_count));  // one CTA per SM (WorkspaceBytes)
    unsigned* counters = reinterpret_cast<unsigned*>(static_cast<float*>(gemv_workspace) + SkPartialFloats(sm_count));
    return LaunchKernel(Nf4MmaKernel<S, NT, GP>, dim3(static_cast<unsigned>(sk.ctas)), dim3(kMmaWarps * 32), L::kSmem,
                        stream, g.pdl, g, sk, static_cast<float*>(workspace), counters);
  }
}

// The groups MmaGroupPanels plans fit in shared memory.
static_assert(MmaLayout<__half, 2, 2>::kFits && MmaLayout<float, 2, 2>::kFits && MmaLayout<int8_t, 2, 2>::kFits &&
                  MmaLayout<__half, 2, 4>::kFits && MmaLayout<float, 2, 4>::kFits && MmaLayout<int8_t, 2, 4>::kFits &&
                  MmaLayout<__half, 1, 4>::kFits && MmaLayout<float, 1, 4>::kFits && MmaLayout<int8_t, 1, 4>::kFits &&
                  MmaLayout<__half, 4, 4>::kFits && MmaLayout<int8_t, 4, 4>::kFits && MmaLayout<float, 4, 8>::kFits,
              "MmaGroupPanels");

template <typename S, int NT>
cudaError_t LaunchNf4MmaNt(const KernelArgs<__half, S>& g, int gp, void* workspace, void* gemv_workspace,
                           int sm_count, cudaStream_t stream) {
  switch (gp) {
    case 2: return LaunchNf4MmaKernel<S, NT, 2>(g, workspace, gemv_workspace, sm_count, stream);
    case 4: return LaunchNf4MmaKernel<S, NT, 4>(g, workspace, gemv_workspace, sm_count, stream);
    case 8: return LaunchNf4MmaKernel<S, NT, 8>(g, workspace, gemv_workspace, sm_count, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename S>
cudaError_t LaunchNf4Mma(const KernelArgs<__half, S>& g, const CudaPlan& plan, void* workspace, void* gemv_workspace,
                         int sm_count, cudaStream_t stream) {
  switch (plan.nt) {
    case 1: return LaunchNf4MmaNt<S, 1>(g, plan.gp, workspace, gemv_workspace, sm_count, stream);
    case 2: return LaunchNf4MmaNt<S, 2>(g, plan.gp, workspace, gemv_workspace, sm_count, stream);
    case 4: return LaunchNf4MmaNt<S, 4>(g, plan.gp, workspace, gemv_workspace, sm_count, stream);
    default: return cudaErrorInvalidValue;
  }
}

#include "common/wgmma.cuh"

// ---- large M: dequantize chunks of B, then cuBLAS ----------------------------------------------
// Our tensor-core kernel loses to this from M = 64 on (docs/benchmarks.md); there the weights
// of chunk_panels panels are dequantized into the workspace (row-major [K][chunk_panels * 32],
// CudaCall::chunk_bytes at most: L2-sized chunks were measured slower, the cuBLAS calls on narrow
// chunks lose more than L2 residency gains) and one cublasGemmEx multiplies A by them into Y's
// columns of the chunk.
//
// Warp = 8 consecutive k-rows x 32 panels of the chunk, one panel per lane: a lane reads its
// panel's rows (128 / 256 contiguous bytes) and the scales of their block once (16-byte loads),
// decodes and scales a row (code x scale in float, rounded once to T, as the tensor-core decode)
// into the warp's staging buffer, and the warp then writes the row's 32 panels as one contiguous
// run, 512 bytes per store instruction (whole sectors; stores straight from the lanes would cover
// each sector in two halves).
constexpr int kDequantRows = 8;
constexpr int kDequantWarps = 8;

template <typename T, typename S>
__device__ __forceinline__ void LoadScaleRow(const KernelArgs<T, S>& g, int64_t row, float s[kPanel]) {
  constexpr int kVec = kPanel * static_cast<int>(sizeof(S)) / 16;
  uint4 v[kVec];
  const uint4* src = reinterpret_cast<const uint4*>(g.scales + row * kPanel);
#pragma unroll
  for (int j = 0; j < kVec; ++j) v[j] = __ldg(src + j);
  const S* e = reinterpret_cast<const S*>(v);
  if constexpr (std::is_same_v<S, int8_t>) {
    const float scale2 = __ldg(g.scale2 + (row >> kDqRowShift)), offset = __ldg(g.offset);
#pragma unroll
    for (int c = 0; c < kPanel; ++c) s[c] = DqScale(e[c], scale2, offset);
  } else {
#pragma unroll
    for (int c = 0; c < kPanel; ++c) s[c] = ToF(e[c]);
  }
}

// 32 values rounded to T, stored as 16-byte pieces.
template <typename T>
__device__ __forceinline__ void StoreRow(void* dst, const float v[kPanel]) {
  uint4* d = reinterpret_cast<uint4*>(dst);
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int j = 0; j < kPanel / 4; ++j)
      d[j] = make_uint4(__float_as_uint(v[4 * j]), __float_as_uint(v[4 * j + 1]), __float_as_uint(v[4 * j + 2]),
                        __float_as_uint(v[4 * j + 3]));
  } else {
#pragma unroll
    for (int j = 0; j < kPanel / 8; ++j)
      d[j] = make_uint4(Pack2(v[8 * j], v[8 * j + 1], static_cast<T*>(nullptr)),
                        Pack2(v[8 * j + 2], v[8 * j + 3], static_cast<T*>(nullptr)),
                        Pack2(v[8 * j + 4], v[8 * j + 5], static_cast<T*>(nullptr)),
                        Pack2(v[8 * j + 6], v[8 * j + 7], static_cast<T*>(nullptr)));
  }
}

// Warps per chunk of np panels: ceil(np / 32) per group of 8 k-rows.
inline int64_t DequantWarps(int64_t K, int64_t np) {
  return ((np + kPanel - 1) / kPanel) * ((K + kDequantRows - 1) / kDequantRows);
}

template <class Dec, typename T, typename S>
__global__ void __launch_bounds__(kDequantWarps * 32) DequantChunkKernel(KernelArgs<T, S> g, int64_t panel0,
                                                                          int64_t np, T* w) {
  constexpr int kRowBytes = kPanel * static_cast<int>(sizeof(T));  // a panel's k-row in T
  constexpr int kStride = kRowBytes + 16;  // padded: a quarter warp's 16-byte stores hit distinct banks
  __shared__ __align__(16) unsigned char stage[kDequantWarps][kPanel * kStride];
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = kNf4Lut[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kDequantWarps + warp;
  const int64_t warps_per_k = (np + kPanel - 1) / kPanel;
  const int64_t k0 = kDequantRows * (gw / warps_per_k), pbase = kPanel * (gw % warps_per_k);
  if (k0 >= g.p.K) return;  // whole warps: no block-wide barrier follows
  const int64_t pi = pbase + lane, panel = panel0 + pi;
  const bool valid = pi < np;  // np never runs past the last panel
  const int rows = static_cast<int>(min(static_cast<int64_t>(kDequantRows), g.p.K - k0));
  typename Dec::Row row_data[kDequantRows];
  float s[kPanel];
  int64_t block = g.p.Block(k0);
  if (valid) {
#pragma unroll
    for (int r = 0; r < kDequantRows; ++r)
      if (r < rows) row_data[r] = Dec::LoadRow(g.b + (panel * g.p.k_pad + k0 + r) * Dec::kBytesPerK);
    LoadScaleRow(g, panel * g.p.blocks + block, s);
  }
  unsigned char* st = stage[warp];
  const int64_t ld = np * kPanel;
  const int64_t run_pieces = (min(np - pbase, static_cast<int64_t>(kPanel)) * kRowBytes) / 16;  // valid 16-byte pieces
#pragma unroll
  for (int r = 0; r < kDequantRows; ++r) {
    if (r >= rows) break;  // uniform in the warp
    const int64_t k = k0 + r;
    if (valid) {
      if (g.p.Block(k) != block) {  // blocks are >= 32 rows: only per-channel edge cases reach here
        block = g.p.Block(k);
        LoadScaleRow(g, panel * g.p.blocks + block, s);
      }
      float v[kPanel];
      Dec::Decode(row_data[r], lut, v);
#pragma unroll
      for (int c = 0; c < kPanel; ++c) v[c] *= s[c];
      StoreRow<T>(st + lane * kStride, v);
    }
    __syncwarp();
    unsigned char* dst = reinterpret_cast<unsigned char*>(w + k * ld + pbase * kPanel);
#pragma unroll
    for (int j = 0; j < kRowBytes / 16; ++j) {
      const int piece = j * 32 + lane, o = piece * 16;
      if (piece < run_pieces)
        *reinterpret_cast<uint4*>(dst + o) = *reinterpret_cast<const uint4*>(st + (o / kRowBytes) * kStride + o % kRowBytes);
    }
    __syncwarp();
  }
}

template <typename T>
__global__ void AddBiasKernel(T* y, const T* bias, int64_t m, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m * n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = FromF<T>(ToF(y[i]) + ToF(bias[i % n]));
}

template <typename T>
constexpr cudaDataType BlasType() {
  return std::is_same_v<T, float> ? CUDA_R_32F : std::is_same_v<T, __half> ? CUDA_R_16F : CUDA_R_16BF;
}

// cuBLAS failures come back as cudaErrorUnknown (the glue names the path in its message).
template <class Dec, typename T, typename S>
cudaError_t LaunchDequantGemm(const KernelArgs<T, S>& g, const CudaCall& call, const CudaPlan& plan) {
  if (call.blas == nullptr || call.blas_handle == nullptr || call.workspace == nullptr || plan.chunk_panels < 1)
    return cudaErrorInvalidValue;
  if (call.blas->set_stream(call.blas_handle, call.stream) != 0) return cudaErrorUnknown;
  T* w = static_cast<T*>(call.workspace);
  const float one = 1.0f, zero = 0.0f;
  constexpr cudaDataType kType = BlasType<T>();
  for (int64_t p0 = 0; p0 < g.p.panels; p0 += plan.chunk_panels) {
    const int64_t np = std::min<int64_t>(plan.chunk_panels, g.p.panels - p0);
    const int64_t blocks = (DequantWarps(g.p.K, np) + kDequantWarps - 1) / kDequantWarps;
    if (call.force != 4) {  // 4: benchmarks time the GEMMs alone
      DequantChunkKernel<Dec, T, S><<<static_cast<unsigned>(blocks), kDequantWarps * 32, 0, call.stream>>>(g, p0, np, w);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    if (call.force == 3) continue;  // 3: benchmarks time the dequantization alone
    // column-major view: Y^T[n0 : n0 + cols, :] = W_chunk^T (cols x K, ld np * 32) x A^T (K x m, ld K)
    const int64_t n0 = p0 * kPanel, cols = std::min<int64_t>(np * kPanel, g.p.N - n0);
    if (call.blas->gemm_ex(call.blas_handle, CublasApi::kOpN, CublasApi::kOpN, static_cast<int>(cols),
                           static_cast<int>(g.m), static_cast<int>(g.p.K), &one, w, kType,
                           static_cast<int>(np * kPanel), g.a, kType, static_cast<int>(g.p.K), &zero, g.y + n0, kType,
                           static_cast<int>(g.p.N), CublasApi::kCompute32F, CublasApi::kGemmDefault) != 0)
      return cudaErrorUnknown;
  }
  if (g.bias != nullptr) {
    const int64_t total = g.m * g.p.N;
    AddBiasKernel<T><<<static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 4096)), 256, 0, call.stream>>>(
        g.y, g.bias, g.m, g.p.N);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

template <class Dec, typename T, typename S>
cudaError_t LaunchTyped(const CudaCall& call, const CudaPlan& plan) {
  KernelArgs<T, S> g;
  g.a = static_cast<const T*>(call.a);
  g.m = call.m;
  g.b = call.b;
  g.scales = static_cast<const S*>(call.scales);
  g.bias = static_cast<const T*>(call.bias);
  g.y = static_cast<T*>(call.y);
  g.p = MakeParams(call.p);
  g.scale2 = call.scale2;
  g.offset = call.offset;
  g.pdl = call.pdl;
  g.prefetch = call.prefetch_bytes >= 0 ? call.prefetch_bytes : plan.mma ? 0 : kDefaultPrefetchBytes;
  if (plan.dequant_gemm) return LaunchDequantGemm<Dec, T, S>(g, call, plan);
  if (plan.tensor_cores) {
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorInvalidValue;  // never planned: float32 stays on the exact SIMT path
    } else {
      switch (plan.bm) {
        case 16: return LaunchTc<Tc16<Dec, S>, Dec, T, S>(g, call.stream);
        case 32: return LaunchTc<Tc32<Dec, S>, Dec, T, S>(g, call.stream);
        case 64: return LaunchTc<Tc64<Dec, S>, Dec, T, S>(g, call.stream);
        case 256: return LaunchTc<Tc256<Dec, S>, Dec, T, S>(g, call.stream);
        default: return LaunchTc<Tc1k<Dec, S>, Dec, T, S>(g, call.stream);
      }
    }
  }
  if constexpr (std::is_same_v<T, __half>) {
    if (plan.wgmma)
      return LaunchWgmma<Dec, S>(g, plan.bm, plan.wg, call.sm_count, call.workspace, call.gemv_workspace, call.stream);
  }
  if constexpr (std::is_same_v<Dec, Int8Decoder> && std::is_same_v<T, __half> && !std::is_same_v<S, int8_t>) {
    if (plan.half_gemv) return LaunchInt8GemvHalf<S>(g, call.sm_count, call.gemv_workspace, call.stream);
  }
  if constexpr (std::is_same_v<Dec, Nf4Decoder> && std::is_same_v<T, __half>) {
    if (plan.mma) return LaunchNf4Mma<S>(g, plan, call.workspace, call.gemv_workspace, call.sm_count, call.stream);
    if (plan.half_gemv) return LaunchNf4GemvHalf<S>(g, plan.stream_k, call.sm_count, call.gemv_workspace, call.stream);  // 5: benchmarks, the general GEMV
  }
  return plan.mr == 1 ? LaunchGemv<Dec, T, S, 1>(g, call.stream) : LaunchGemv<Dec, T, S, 2>(g, call.stream);
}

template <class Dec>
cudaError_t Launch(const CudaCall& call, const CudaPlan& plan) {
  if (call.scale_type == DType::kInt8) {  // double-quantized scales (NF4MatMul's absmax)
    if constexpr (Dec::kDoubleQuant) {
      if (call.scale2 == nullptr || call.offset == nullptr) return cudaErrorInvalidValue;
      switch (call.type) {
        case DType::kFloat: return LaunchTyped<Dec, float, int8_t>(call, plan);
        case DType::kHalf: return LaunchTyped<Dec, __half, int8_t>(call, plan);
        case DType::kBFloat16: return LaunchTyped<Dec, __nv_bfloat16, int8_t>(call, plan);
        default: break;
      }
    }
    return cudaErrorInvalidValue;
  }
  const bool scale_f32 = call.scale_type == DType::kFloat;
  switch (call.type) {
    case DType::kFloat:
      return LaunchTyped<Dec, float, float>(call, plan);
    case DType::kHalf:
      return scale_f32 ? LaunchTyped<Dec, __half, float>(call, plan) : LaunchTyped<Dec, __half, __half>(call, plan);
    case DType::kBFloat16:
      return scale_f32 ? LaunchTyped<Dec, __nv_bfloat16, float>(call, plan)
                       : LaunchTyped<Dec, __nv_bfloat16, __nv_bfloat16>(call, plan);
    default: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace oco
