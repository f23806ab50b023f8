// CUDA kernels shared by NF4MatMul and Int8MatMul (panel layout, see dequant_cpu.h).
//
// * GemvKernel (SIMT, fp32 accumulation): M <= 4, and every M for float32 activations (kept
//   exact: no tensor-core rounding). CTA = one panel (32 output channels) x up to MR rows of A,
//   16 warps taking 64-row chunks of K in turn; each lane decodes half a k-row (16 channels) of
//   the 16 k-rows its warp reads together (one coalesced stretch of the panel), scales and
//   accumulates MR x 16 sums; lanes and warps are reduced at the end. Weight bytes are read once.
// * TcKernel (fp16/bf16 tensor cores, mma.sync m16n8k16, fp32 accumulation): M > 4. The CTA
//   tile (BM x BN) and a split of K among its warps (WK groups, reduced in shared memory at the
//   end) are chosen from M so that the grid fills the GPU without split-K across CTAs. A
//   3-stage cp.async pipeline brings A and the packed weights; each stage's weights are decoded
//   once by the whole CTA (code -> value x scale in fp32, rounded once to fp16/bf16) into a
//   shared tile that ldmatrix feeds to the tensor cores: dequantized weights never reach device
//   memory.
// * One launch per call, no workspace.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/dequant_cuda.h"

namespace oco {
namespace cuda {

constexpr int kPanel = 32;

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
};

inline Params MakeParams(const DequantParams& p) { return {p.K, p.N, p.group, p.blocks, p.k_pad, p.panels}; }

// ---- decoders ------------------------------------------------------------------------------
// Half(): half h of one k-row of a panel -> 16 floats for the lane's channels Channel(h, j).
// Value(): the value of channel c (0..31) in one k-row (for the tensor-core fragments).
struct Nf4Decoder {
  static constexpr int kBytesPerK = 16;
  static constexpr bool kNeedsLut = true;
  __device__ static __forceinline__ int Channel(int h, int j) { return j < 8 ? 8 * h + j : 16 + 8 * h + (j - 8); }
  __device__ static __forceinline__ void Half(const uint8_t* row, int h, const float* lut, float out[16]) {
    const uint2 v = *reinterpret_cast<const uint2*>(row + 8 * h);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t lo_word = (v.x >> (8 * i)) & 0xFF, hi_word = (v.y >> (8 * i)) & 0xFF;
      out[i] = lut[lo_word & 15];
      out[8 + i] = lut[lo_word >> 4];
      out[4 + i] = lut[hi_word & 15];
      out[12 + i] = lut[hi_word >> 4];
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
  __device__ static __forceinline__ int Channel(int h, int j) { return 16 * h + j; }
  __device__ static __forceinline__ void Half(const uint8_t* row, int h, const float*, float out[16]) {
    const uint4 v = *reinterpret_cast<const uint4*>(row + 16 * h);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 16; ++i) out[i] = static_cast<float>(static_cast<int8_t>((w[i / 4] >> (8 * (i % 4))) & 0xFF));
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
};

constexpr int kGemvWarps = 16;
constexpr int64_t kGemvChunk = 64;  // K rows per unit of work (never straddles a >= 32 block)

template <class Dec, typename T, typename S, int MR>
__global__ void __launch_bounds__(kGemvWarps * 32, MR == 1 ? 2 : 1) GemvKernel(KernelArgs<T, S> g) {
  __shared__ float lut[16];
  __shared__ float red[kGemvWarps][MR][kPanel];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (Dec::kNeedsLut && threadIdx.x < 16) lut[threadIdx.x] = kNf4Lut[threadIdx.x];
  __syncthreads();
  const Params& p = g.p;
  const int64_t panel = blockIdx.x, m0 = static_cast<int64_t>(blockIdx.y) * MR;
  const int h = lane & 1, r = lane >> 1;
  const uint8_t* bpanel = g.b + panel * p.k_pad * Dec::kBytesPerK;
  const S* spanel = g.scales + panel * p.blocks * kPanel;
  const int64_t chunk = p.group < kGemvChunk ? p.group : kGemvChunk;
  const int64_t chunks = (p.k_pad + chunk - 1) / chunk;

  float acc[MR][16];
#pragma unroll
  for (int mi = 0; mi < MR; ++mi)
#pragma unroll
    for (int j = 0; j < 16; ++j) acc[mi][j] = 0.0f;

  for (int64_t ci = warp; ci < chunks; ci += kGemvWarps) {
    const int64_t kbeg = ci * chunk, kend = min(p.k_pad, kbeg + chunk), blk = kbeg / p.group;
    float s[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) s[j] = ToF(spanel[blk * kPanel + Dec::Channel(h, j)]);
#pragma unroll 4
    for (int64_t k = kbeg + r; k < kend; k += 16) {
      float w[16];
      Dec::Half(bpanel + k * Dec::kBytesPerK, h, lut, w);
      float av[MR];
#pragma unroll
      for (int mi = 0; mi < MR; ++mi) av[mi] = (m0 + mi < g.m && k < p.K) ? ToF(g.a[(m0 + mi) * p.K + k]) : 0.0f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float ws = w[j] * s[j];
#pragma unroll
        for (int mi = 0; mi < MR; ++mi) acc[mi][j] = fmaf(ws, av[mi], acc[mi][j]);
      }
    }
  }
  // Lanes with the same h hold the same channels: reduce over r, then over warps.
#pragma unroll
  for (int mi = 0; mi < MR; ++mi)
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      float v = acc[mi][j];
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      if (r == 0) red[warp][mi][Dec::Channel(h, j)] = v;
    }
  __syncthreads();
  for (int t = threadIdx.x; t < MR * kPanel; t += blockDim.x) {
    const int mi = t / kPanel, c = t % kPanel;
    const int64_t n = panel * kPanel + c, row = m0 + mi;
    if (n >= p.N || row >= g.m) continue;
    float v = g.bias ? ToF(g.bias[n]) : 0.0f;
#pragma unroll
    for (int w = 0; w < kGemvWarps; ++w) v += red[w][mi][c];
    g.y[row * p.N + n] = FromF<T>(v);
  }
}

// ---- tensor cores --------------------------------------------------------------------------
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: fill with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
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

constexpr int kTcThreads = 256, kTcStages = 3, kTcBkw = 32;  // k rows per warp group per stage

// CTA tile BM x BN; 8 warps = WM x WN x WK: WK groups of warps take different k rows of each
// stage and are summed in shared memory at the end.
template <class Dec, int BM_, int BN_, int WM_, int WN_, int WK_>
struct TcCfg {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, WK = WK_;
  static_assert(WM * WN * WK == 8, "8 warps");
  static constexpr int WTM = BM / WM, WTN = BN / WN, MT = WTM / 16, NT = WTN / 8;
  static_assert(MT >= 1 && NT % 2 == 0, "warp tile");
  static constexpr int BKS = WK * kTcBkw;          // k rows per stage
  static constexpr int kRow = BKS + 8;             // halves per smem row of A / decoded B (no bank conflicts)
  static constexpr int kAElems = BM * kRow;        // per stage
  static constexpr int kPackedBytes = (BN / kPanel) * BKS * Dec::kBytesPerK;  // per stage
  static constexpr int kDecElems = BN * kRow;
  static constexpr size_t kSmem = (kTcStages * kAElems + kDecElems) * 2 + kTcStages * kPackedBytes;
  static constexpr size_t kRed = static_cast<size_t>(WK > 1 ? WK : 0) * BM * BN * 4;  // reuses the pipeline space
  static constexpr size_t kSmemTotal = kSmem > kRed ? kSmem : kRed;
};

template <class Cfg, class Dec, typename T, typename S>
__global__ void __launch_bounds__(kTcThreads) TcKernel(KernelArgs<T, S> g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* as = reinterpret_cast<T*>(smem_raw);                          // [stages][BM][kRow]
  T* bd = as + kTcStages * Cfg::kAElems;                           // [BN][kRow] decoded B (n-major)
  uint8_t* bp = reinterpret_cast<uint8_t*>(bd + Cfg::kDecElems);   // [stages][BN/32][BKS][bytes]
  __shared__ float lut[16];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (Dec::kNeedsLut && tid < 16) lut[tid] = kNf4Lut[tid];

  const Params& p = g.p;
  const int64_t panel0 = static_cast<int64_t>(blockIdx.x) * (Cfg::BN / kPanel);
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
  };

  // Decode one stage of packed weights into bd: work items are (panel, pair of k rows, half of
  // the 32 channels); each writes 16 half2 values (k, k+1) of its channels.
  auto decode_stage = [&](int slot, int64_t st) {
    const uint8_t* src = bp + slot * Cfg::kPackedBytes;
    constexpr int kItems = (Cfg::BN / kPanel) * (Cfg::BKS / 2) * 2;
    for (int it = tid; it < kItems; it += kTcThreads) {
      const int ch = it & 1, pair = (it >> 1) % (Cfg::BKS / 2), pi = (it >> 1) / (Cfg::BKS / 2);
      const int r0 = 2 * pair;
      const int64_t panel = panel0 + pi, k = st * Cfg::BKS + r0;
      const int64_t blk = min(k / p.group, p.blocks - 1);
      const bool live = panel < p.panels;
      const uint8_t* row0 = src + (pi * Cfg::BKS + r0) * Dec::kBytesPerK;
      float v0[16], v1[16];
      Dec::Row16(row0, ch, lut, v0);
      Dec::Row16(row0 + Dec::kBytesPerK, ch, lut, v1);
      const S* srow = g.scales + (panel * p.blocks + blk) * kPanel + 16 * ch;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float sc = live ? ToF(srow[j]) : 0.0f;
        *reinterpret_cast<uint32_t*>(bd + (pi * kPanel + 16 * ch + j) * Cfg::kRow + r0) =
            Pack2(v0[j] * sc, v1[j] * sc, static_cast<T*>(nullptr));
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

  for (int s = 0; s < kTcStages - 1; ++s) {
    if (s < stages_total) load_stage(s, s);
    CpAsyncCommit();
  }

  for (int64_t st = 0; st < stages_total; ++st) {
    const int slot = static_cast<int>(st % kTcStages);
    CpAsyncWait<kTcStages - 2>();
    __syncthreads();  // stage st landed; everyone is done reading bd of the previous stage
    decode_stage(slot, st);
    const int64_t next = st + kTcStages - 1;
    if (next < stages_total) load_stage(static_cast<int>(next % kTcStages), next);
    CpAsyncCommit();
    __syncthreads();  // bd ready
    const T* a_s = as + slot * Cfg::kAElems;
#pragma unroll
    for (int kk = 0; kk < kTcBkw / 16; ++kk) {
      const int kc = wk * kTcBkw + kk * 16;
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

// The four tile shapes, by M: small M splits K among warps instead of across CTAs.
template <class Dec> using Tc16 = TcCfg<Dec, 16, 32, 1, 1, 8>;
template <class Dec> using Tc32 = TcCfg<Dec, 32, 32, 2, 1, 4>;
template <class Dec> using Tc64 = TcCfg<Dec, 64, 64, 2, 2, 2>;
template <class Dec> using Tc128 = TcCfg<Dec, 128, 64, 4, 2, 1>;

// ---- planning and launching ----------------------------------------------------------------
inline CudaPlan Plan(const CudaCall& call) {
  const DequantParams& p = call.p;
  CudaPlan plan;
  const bool aligned = p.K % 8 == 0 && reinterpret_cast<uintptr_t>(call.a) % 16 == 0;
  plan.tensor_cores = call.type != DType::kFloat && call.m > 4 && aligned;
  if (plan.tensor_cores)
    plan.bm = call.m <= 16 ? 16 : call.m <= 32 ? 32 : call.m <= 64 ? 64 : 128;
  else
    plan.mr = call.m >= 4 ? 4 : call.m >= 2 ? 2 : 1;
  return plan;
}

template <class Cfg, class Dec, typename T, typename S>
cudaError_t LaunchTc(const KernelArgs<T, S>& g, cudaStream_t stream) {
  // More than 48 KiB of dynamic shared memory must be allowed explicitly, once per kernel.
  static const cudaError_t attr = cudaFuncSetAttribute(TcKernel<Cfg, Dec, T, S>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       static_cast<int>(Cfg::kSmemTotal));
  if (attr != cudaSuccess) return attr;
  const dim3 grid(static_cast<unsigned>((g.p.panels * kPanel + Cfg::BN - 1) / Cfg::BN),
                  static_cast<unsigned>((g.m + Cfg::BM - 1) / Cfg::BM));
  TcKernel<Cfg, Dec, T, S><<<grid, kTcThreads, Cfg::kSmemTotal, stream>>>(g);
  return cudaGetLastError();
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
  if (plan.tensor_cores) {
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorInvalidValue;  // never planned: float32 stays on the exact SIMT path
    } else {
      switch (plan.bm) {
        case 16: return LaunchTc<Tc16<Dec>, Dec, T, S>(g, call.stream);
        case 32: return LaunchTc<Tc32<Dec>, Dec, T, S>(g, call.stream);
        case 64: return LaunchTc<Tc64<Dec>, Dec, T, S>(g, call.stream);
        default: return LaunchTc<Tc128<Dec>, Dec, T, S>(g, call.stream);
      }
    }
  }
  const dim3 grid(static_cast<unsigned>(call.p.panels), static_cast<unsigned>((call.m + plan.mr - 1) / plan.mr));
  switch (plan.mr) {
    case 1: GemvKernel<Dec, T, S, 1><<<grid, kGemvWarps * 32, 0, call.stream>>>(g); break;
    case 2: GemvKernel<Dec, T, S, 2><<<grid, kGemvWarps * 32, 0, call.stream>>>(g); break;
    default: GemvKernel<Dec, T, S, 4><<<grid, kGemvWarps * 32, 0, call.stream>>>(g); break;
  }
  return cudaGetLastError();
}

template <class Dec>
cudaError_t Launch(const CudaCall& call, const CudaPlan& plan) {
  const bool scale_f32 = call.scale_type == DType::kFloat;
  switch (call.type) {
    case DType::kFloat:
      return LaunchTyped<Dec, float, float>(call, plan);
    case DType::kHalf:
      return scale_f32 ? LaunchTyped<Dec, __half, float>(call, plan) : LaunchTyped<Dec, __half, __half>(call, plan);
    case DType::kBFloat16:
      return scale_f32 ? LaunchTyped<Dec, __nv_bfloat16, float>(call, plan)
                       : LaunchTyped<Dec, __nv_bfloat16, __nv_bfloat16>(call, plan);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace oco
