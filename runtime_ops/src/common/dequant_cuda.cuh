// CUDA kernels shared by NF4MatMul and Int8MatMul (panel layout, see dequant_cpu.h).
//
// * GemvKernel (SIMT, fp32 accumulation): small M, and every M for float32 activations (kept
//   exact: no tensor-core rounding). CTA = one panel (32 output channels) x a range of K
//   blocks x up to MR rows of A; each lane decodes half a k-row (16 channels) of 16 k-rows the
//   warp reads together (one coalesced 256/512-byte stretch of the panel), multiplies by the
//   block's scales held in registers, and accumulates MR x 16 sums; lanes and warps are reduced
//   at the end. Weight bytes are read exactly once.
// * TcKernel (fp16/bf16 tensor cores, mma.sync m16n8k16, fp32 accumulation): larger M. CTA tile
//   BM x 128 (4 panels) x 32 along K, 3-stage cp.async pipeline for A and the packed weights;
//   each lane decodes the B fragments it needs straight from the packed tile in shared memory
//   (code -> codebook value x scale in fp32, rounded once to fp16/bf16), so dequantized weights
//   never touch device memory. A fragments come from ldmatrix.
// * Both split K across CTAs when the grid would not fill the GPU; partial sums then go to a
//   float32 workspace and SplitReduceKernel adds them, the bias, and converts.
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
  __device__ static __forceinline__ float Value(const uint8_t* row, int c, const float* lut) {
    return lut[(row[c & 15] >> ((c >> 4) << 2)) & 15];
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
  __device__ static __forceinline__ float Value(const uint8_t* row, int c, const float*) {
    return static_cast<float>(static_cast<int8_t>(row[c]));
  }
};

__constant__ float kNf4Lut[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// ---- SIMT GEMV -----------------------------------------------------------------------------
// K per unit of GEMV work: 64 rows, or the block when it is smaller (blocks are powers of two
// >= 32, so a chunk never straddles two); per-channel weights (one block of K) are cut in 64s.
__host__ __device__ inline int64_t GemvChunk(const Params& p) { return p.group < 64 ? p.group : 64; }

template <typename T, typename S>
struct KernelArgs {
  const T* a;
  int64_t m;
  const uint8_t* b;
  const S* scales;
  const T* bias;
  T* y;
  float* ws;
  Params p;
  int64_t blocks_per_split;  // GEMV: K chunks per CTA;  TC: k tiles per CTA
  int splits;
};

template <class Dec, typename T, typename S, int MR>
__global__ void __launch_bounds__(128) GemvKernel(KernelArgs<T, S> g) {
  __shared__ float lut[16];
  __shared__ float red[4][MR][kPanel];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (Dec::kNeedsLut && threadIdx.x < 16) lut[threadIdx.x] = kNf4Lut[threadIdx.x];
  __syncthreads();
  const Params& p = g.p;
  const int64_t panel = blockIdx.x, split = blockIdx.y, m0 = static_cast<int64_t>(blockIdx.z) * MR;
  const int h = lane & 1, r = lane >> 1;
  const uint8_t* bpanel = g.b + panel * p.k_pad * Dec::kBytesPerK;
  const S* spanel = g.scales + panel * p.blocks * kPanel;

  float acc[MR][16];
#pragma unroll
  for (int mi = 0; mi < MR; ++mi)
#pragma unroll
    for (int j = 0; j < 16; ++j) acc[mi][j] = 0.0f;

  // Work comes in chunks of K that never straddle a scale block (GemvChunk); warps take turns.
  const int64_t chunk = GemvChunk(p), chunks = (p.k_pad + chunk - 1) / chunk;
  const int64_t c0 = split * g.blocks_per_split, c1 = min(chunks, c0 + g.blocks_per_split);
  for (int64_t ci = c0 + warp; ci < c1; ci += 4) {
    const int64_t kbeg = ci * chunk, kend = min(p.k_pad, kbeg + chunk), blk = kbeg / p.group;
    float s[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) s[j] = ToF(spanel[blk * kPanel + Dec::Channel(h, j)]);
#pragma unroll 4
    for (int64_t k = kbeg + r; k < kend; k += 16) {
      float w[16];
      Dec::Half(bpanel + k * Dec::kBytesPerK, h, lut, w);
#pragma unroll
      for (int j = 0; j < 16; ++j) w[j] *= s[j];
#pragma unroll
      for (int mi = 0; mi < MR; ++mi) {
        const float av = (m0 + mi < g.m && k < p.K) ? ToF(g.a[(m0 + mi) * p.K + k]) : 0.0f;
#pragma unroll
        for (int j = 0; j < 16; ++j) acc[mi][j] = fmaf(w[j], av, acc[mi][j]);
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
    const float v = red[0][mi][c] + red[1][mi][c] + red[2][mi][c] + red[3][mi][c];
    if (g.splits == 1)
      g.y[row * p.N + n] = FromF<T>(v + (g.bias ? ToF(g.bias[n]) : 0.0f));
    else
      g.ws[(split * g.m + row) * p.N + n] = v;
  }
}

template <typename T>
__global__ void SplitReduceKernel(const float* ws, int splits, int64_t m, int64_t n, const T* bias, T* y) {
  const int64_t total = m * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = bias ? ToF(bias[i % n]) : 0.0f;
    for (int s = 0; s < splits; ++s) v += ws[s * total + i];
    y[i] = FromF<T>(v);
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

__device__ __forceinline__ void Mma(float c[4], const uint32_t a[4], const uint32_t b[2], __half*) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void Mma(float c[4], const uint32_t a[4], const uint32_t b[2], __nv_bfloat16*) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

constexpr int kTcBn = 128, kTcBk = 32, kTcStages = 3, kTcThreads = 256;

template <class Dec, int BM>
struct TcShape {
  static constexpr int WM = BM >= 32 ? 2 : 1;       // warps along M
  static constexpr int WN = 8 / WM;                 // warps along N
  static constexpr int WTM = BM / WM, WTN = kTcBn / WN;
  static constexpr int MT = WTM / 16, NT = WTN / 8;
  static constexpr int kAStride = kTcBk + 8;        // halves per smem row of A (16B-aligned, no conflicts)
  static constexpr int kBBytes = (kTcBn / kPanel) * kTcBk * Dec::kBytesPerK;
};

// A must be 16-byte aligned per row (K % 8 == 0) for the cp.async path (the host checks).
template <class Dec, typename T, typename S, int BM>
__global__ void __launch_bounds__(kTcThreads) TcKernel(KernelArgs<T, S> g) {
  using Shape = TcShape<Dec, BM>;
  __shared__ __align__(16) T as[kTcStages][BM][Shape::kAStride];
  __shared__ __align__(16) uint8_t bs[kTcStages][Shape::kBBytes];
  __shared__ float lut[16];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (Dec::kNeedsLut && tid < 16) lut[tid] = kNf4Lut[tid];

  const Params& p = g.p;
  const int64_t panel0 = static_cast<int64_t>(blockIdx.x) * (kTcBn / kPanel);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t k_tiles = (p.k_pad + kTcBk - 1) / kTcBk;
  const int64_t kt0 = blockIdx.z * g.blocks_per_split, kt1 = min(k_tiles, kt0 + g.blocks_per_split);

  auto load_stage = [&](int slot, int64_t kt) {
    const int64_t k0 = kt * kTcBk;
    // A: BM rows x 32 halves = BM x 4 chunks of 16 bytes
    for (int c = tid; c < BM * 4; c += kTcThreads) {
      const int row = c >> 2, col = (c & 3) * 8;
      const int64_t gm = m0 + row, gk = k0 + col;
      const bool valid = gm < g.m && gk < p.K;
      CpAsync16(&as[slot][row][col], valid ? g.a + gm * p.K + gk : g.a, valid);
    }
    // B: 4 panels x 32 k-rows x bytes_per_k
    constexpr int kRowChunks = Dec::kBytesPerK / 16;
    for (int c = tid; c < Shape::kBBytes / 16; c += kTcThreads) {
      const int pi = c / (kTcBk * kRowChunks), rem = c % (kTcBk * kRowChunks);
      const int row = rem / kRowChunks, part = rem % kRowChunks;
      const int64_t panel = panel0 + pi, k = k0 + row;
      const bool valid = panel < p.panels && k < p.k_pad;
      const uint8_t* src = g.b + (panel * p.k_pad + k) * Dec::kBytesPerK + part * 16;
      CpAsync16(&bs[slot][c * 16], valid ? src : g.b, valid);
    }
  };

  const int wm = warp / Shape::WN, wn = warp % Shape::WN;
  float acc[Shape::MT][Shape::NT][4];
#pragma unroll
  for (int i = 0; i < Shape::MT; ++i)
#pragma unroll
    for (int j = 0; j < Shape::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  for (int s = 0; s < kTcStages - 1; ++s) {
    if (kt0 + s < kt1) load_stage(s, kt0 + s);
    CpAsyncCommit();
  }
  __syncthreads();  // the LUT

  const int t4 = lane & 3, g8 = lane >> 2;
  for (int64_t kt = kt0; kt < kt1; ++kt) {
    CpAsyncWait<kTcStages - 2>();
    __syncthreads();
    const int slot = static_cast<int>((kt - kt0) % kTcStages);
#pragma unroll
    for (int kk = 0; kk < kTcBk / 16; ++kk) {
      const int64_t kbase = kt * kTcBk + kk * 16;  // all 16 rows lie in one scale block
      const int64_t blk = min(kbase / p.group, p.blocks - 1);
      uint32_t afrag[Shape::MT][4];
#pragma unroll
      for (int i = 0; i < Shape::MT; ++i)
        LdMatrixX4(afrag[i], &as[slot][wm * Shape::WTM + i * 16 + (lane & 15)][kk * 16 + (lane >> 4) * 8]);
#pragma unroll
      for (int j = 0; j < Shape::NT; ++j) {
        const int n_local = wn * Shape::WTN + j * 8 + g8;  // 0..127
        const int pi = n_local / kPanel, c = n_local % kPanel;
        const int64_t panel = panel0 + pi;
        const float sc = panel < p.panels ? ToF(g.scales[(panel * p.blocks + blk) * kPanel + c]) : 0.0f;
        const uint8_t* rows = &bs[slot][(pi * kTcBk + kk * 16) * Dec::kBytesPerK];
        const float w0 = Dec::Value(rows + (2 * t4) * Dec::kBytesPerK, c, lut) * sc;
        const float w1 = Dec::Value(rows + (2 * t4 + 1) * Dec::kBytesPerK, c, lut) * sc;
        const float w2 = Dec::Value(rows + (2 * t4 + 8) * Dec::kBytesPerK, c, lut) * sc;
        const float w3 = Dec::Value(rows + (2 * t4 + 9) * Dec::kBytesPerK, c, lut) * sc;
        const uint32_t bfrag[2] = {Pack2(w0, w1, static_cast<T*>(nullptr)), Pack2(w2, w3, static_cast<T*>(nullptr))};
#pragma unroll
        for (int i = 0; i < Shape::MT; ++i) Mma(acc[i][j], afrag[i], bfrag, static_cast<T*>(nullptr));
      }
    }
    const int64_t next = kt + kTcStages - 1;
    if (next < kt1) load_stage(static_cast<int>((next - kt0) % kTcStages), next);
    CpAsyncCommit();
  }
  CpAsyncWait<0>();

  // Epilogue: c0,c1 at (row g8, cols 2*t4, 2*t4+1), c2,c3 at row g8 + 8.
#pragma unroll
  for (int i = 0; i < Shape::MT; ++i)
#pragma unroll
    for (int j = 0; j < Shape::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = m0 + wm * Shape::WTM + i * 16 + g8 + (e >= 2 ? 8 : 0);
        const int64_t n = panel0 * kPanel + wn * Shape::WTN + j * 8 + 2 * t4 + (e & 1);
        if (row >= g.m || n >= p.N) continue;
        if (g.splits == 1)
          g.y[row * p.N + n] = FromF<T>(acc[i][j][e] + (g.bias ? ToF(g.bias[n]) : 0.0f));
        else
          g.ws[(static_cast<int64_t>(blockIdx.z) * g.m + row) * p.N + n] = acc[i][j][e];
      }
}

// ---- planning and launching ----------------------------------------------------------------
inline CudaPlan Plan(const CudaCall& call) {
  const DequantParams& p = call.p;
  CudaPlan plan;
  const bool aligned = p.K % 8 == 0 && reinterpret_cast<uintptr_t>(call.a) % 16 == 0;
  plan.tensor_cores = call.type != DType::kFloat && call.m > 4 && aligned;
  if (plan.tensor_cores) {
    plan.bm = call.m <= 16 ? 16 : call.m <= 32 ? 32 : call.m <= 64 ? 64 : 128;
    const int64_t tiles = ((p.panels + 3) / 4) * ((call.m + plan.bm - 1) / plan.bm);
    const int64_t k_tiles = (p.k_pad + kTcBk - 1) / kTcBk;
    const int64_t want = (2 * call.sm_count + tiles - 1) / tiles;  // about two CTAs per SM
    plan.splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, k_tiles / 8)));
  } else {
    plan.mr = call.m >= 4 ? 4 : call.m >= 2 ? 2 : 1;
    const int64_t ctas = p.panels * ((call.m + plan.mr - 1) / plan.mr);
    const int64_t chunks = (p.k_pad + GemvChunk(MakeParams(p)) - 1) / GemvChunk(MakeParams(p));
    const int64_t want = (8 * call.sm_count + ctas - 1) / ctas;  // 128-thread CTAs: several per SM
    plan.splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, chunks / 8)));
  }
  plan.workspace_bytes = plan.splits > 1 ? static_cast<size_t>(plan.splits) * call.m * p.N * sizeof(float) : 0;
  return plan;
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
  g.ws = call.workspace;
  g.p = MakeParams(call.p);
  g.splits = plan.splits;
  const DequantParams& p = call.p;
  if (plan.tensor_cores) {
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorInvalidValue;  // never planned
    } else {
      const int64_t k_tiles = (p.k_pad + kTcBk - 1) / kTcBk;
      g.blocks_per_split = (k_tiles + plan.splits - 1) / plan.splits;
      const dim3 grid(static_cast<unsigned>((p.panels + 3) / 4), static_cast<unsigned>((call.m + plan.bm - 1) / plan.bm),
                      static_cast<unsigned>(plan.splits));
      switch (plan.bm) {
        case 16: TcKernel<Dec, T, S, 16><<<grid, kTcThreads, 0, call.stream>>>(g); break;
        case 32: TcKernel<Dec, T, S, 32><<<grid, kTcThreads, 0, call.stream>>>(g); break;
        case 64: TcKernel<Dec, T, S, 64><<<grid, kTcThreads, 0, call.stream>>>(g); break;
        default: TcKernel<Dec, T, S, 128><<<grid, kTcThreads, 0, call.stream>>>(g); break;
      }
    }
  } else {
    const int64_t chunks = (p.k_pad + GemvChunk(g.p) - 1) / GemvChunk(g.p);
    g.blocks_per_split = (chunks + plan.splits - 1) / plan.splits;
    const dim3 grid(static_cast<unsigned>(p.panels), static_cast<unsigned>(plan.splits),
                    static_cast<unsigned>((call.m + plan.mr - 1) / plan.mr));
    switch (plan.mr) {
      case 1: GemvKernel<Dec, T, S, 1><<<grid, 128, 0, call.stream>>>(g); break;
      case 2: GemvKernel<Dec, T, S, 2><<<grid, 128, 0, call.stream>>>(g); break;
      default: GemvKernel<Dec, T, S, 4><<<grid, 128, 0, call.stream>>>(g); break;
    }
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || plan.splits == 1) return err;
  const int64_t total = call.m * p.N;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 4 * call.sm_count));
  SplitReduceKernel<T><<<blocks, 256, 0, call.stream>>>(call.workspace, plan.splits, call.m, p.N, g.bias, g.y);
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
