// Standalone benchmark and check of the NF4MatMul / Int8MatMul CUDA kernels, without ONNX Runtime:
// the kernels of runtime_ops/src/common/dequant_cuda.cuh against cuBLAS fp16 GEMM (the anchor
// ORT's fp16 MatMul uses), on the GPU machine, in one call:
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I runtime_ops/src -I <ORT headers> \
//        tools/cuda/kernel_bench.cu -lcublas -o /tmp/kernel_bench && /tmp/kernel_bench
//
// "nf4dq" runs NF4 with a double-quantized absmax (int8 codes + one float scale per 256 + an
// offset, decoded in the kernels) instead of float16 absmax; "int8" has per-channel scales,
// "int8b32" (only when named) blocks of 32.
//
// Each M > 2 runs our own kernels ("gemv"/"tc", as the library plans them below
// kDequantGemmMinRows) and the large-M path ("dqgemm": chunks of the weights dequantized into a
// workspace, then cublasGemmEx) once per chunk size in MiB of CHUNKS (default "128", the
// library's). SPLIT=1 adds the dequantization ("dq") and the GEMMs ("gemm") timed alone;
// OLDGEMV=1 adds, at M <= 2, the general GEMV ("gemv0"), and the float16 GEMVs' kernels forced:
// stream-K ("gemvs", M <= 4) and one CTA per panel ("gemvf", M = 1; for Int8 the general GEMV).
//
// NF4 also runs the register-decoding tensor-core kernel forced ("mma", M <= 32; at 3-32 rows it
// is the planned kernel too, so the line repeats), its panels per group planned or, with
// MMAGP="2,4,8", each of these (its "bm=" column shows them).
// WGBN="0,128" adds the wgmma kernel forced (force 9; sm_90a: compile for it as above) with
// these rows of A per CTA (0: planned; the "bm=" column); WGSPLITS="1,3" runs each with these
// splits of K instead of the planned ones (the "chunk=" column shows a wgmma line's splits, or
// its CTAs as a negative number where it runs the stream-K schedule); WGSK=1 / 2 plans that never /
// always (CudaCall::wg_stream_k). The planned paths ("ours") take it
// where the library would (compute capability 9.0; NF4 above kMmaMaxRows, Int8 from kWgInt8MinRows).
// MS="1,8,16" and SHAPES="4096x4096,1000x999" (K x N) replace the default M and shapes.
// LAUNCH="1:-1 0:0" runs each path once per pair pdl:prefetch (CudaCall::pdl, ::prefetch_bytes;
// "all" = the whole range of each CTA); default "1:-1" (programmatic launches, the library's
// prefetch). Launches follow each other on one stream, so with pdl each one may start while the
// previous finishes, as consecutive MatMuls of a model in ORT do.
//
// Weights rotate among several copies so that no run reads them from L2 (50 MB on an H100).
// Each result is checked against cuBLAS on the same dequantized weights (float16 relative
// error). Times are CUDA-event medians of kernel launches alone: ORT's per-op overhead is not in
// them (tools/bench_runtime_ops.py measures through ORT).
#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/dequant_cuda.cuh"
#include "bench_common.cuh"

#define CB(x)                                                                                     \
  do {                                                                                            \
    cublasStatus_t s_ = (x);                                                                      \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                            \
      std::fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #x, int(s_));      \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

using oco::CudaCall;
using oco::CudaPlan;
using oco::DequantParams;
using oco::DType;

__device__ __forceinline__ float ScaleF(__half s) { return __half2float(s); }
__device__ __forceinline__ float ScaleF(float s) { return s; }

// Dequantize the packed panel layout to a row-major fp16 W [K, N] (the reference for cuBLAS).
template <class Dec, typename S>
__global__ void DequantKernel(const uint8_t* b, const S* scales, DequantParams p, __half* w) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = oco::cuda::kNf4Lut[threadIdx.x];
  __syncthreads();
  const int64_t total = p.K * p.N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / p.N, n = i % p.N, panel = n / 32, c = n % 32;
    float v[32];
    typename Dec::Row row = Dec::LoadRow(b + (panel * p.k_pad + k) * Dec::kBytesPerK);
    Dec::Decode(row, lut, v);
    w[i] = __float2half(v[c] * ScaleF(scales[(panel * p.blocks + k / p.group) * 32 + c]));
  }
}

__global__ void FillHalf(__half* x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u1 = ((z & 0xFFFFFF) + 1) / 16777217.0f, u2 = ((z >> 24) & 0xFFFFFF) / 16777216.0f;
    x[i] = __float2half(scale * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2));
  }
}

__global__ void FillBytes(uint8_t* x, int64_t n, uint64_t seed, int int8_gauss) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 31;
    x[i] = int8_gauss ? uint8_t(int8_t(int(z % 255) - 127)) : uint8_t(z & 0xFF);
  }
}

// Double-quantized absmax: scale2 of about 0.02 / 127 per 256 entries and an offset of 0.02 (the
// codes are random bytes), and the float32 absmax they decode to (the reference's).
__global__ void FillDq(float* scale2, int64_t n, float* offset, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    scale2[i] = 0.02f / 127.0f * (1.0f + 0.5f * sinf(float(i) + float(seed)));
  if (blockIdx.x == 0 && threadIdx.x == 0) *offset = 0.02f;
}
__global__ void DecodeDq(const int8_t* codes, const float* scale2, const float* offset, int64_t n, float* absmax) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    absmax[i] = float(codes[i]) * scale2[i / 256] + *offset;
}

// "1,8,16" -> {1, 8, 16} (nullptr: none)
std::vector<long long> CsvInts(const char* s) {
  std::vector<long long> v;
  for (const char* c = s; c && *c;) {
    v.push_back(std::atoll(c));
    while (*c && *c != ',') ++c;
    if (*c == ',') ++c;
  }
  return v;
}

struct Shape {
  int64_t k, n;
};

template <class Dec>
void Run(const char* name, int block, cublasHandle_t handle, cudaStream_t stream, int sms, float copy_bw,
         std::vector<Shape> shapes, std::vector<int> ms, bool dq = false) {
  constexpr int kCopies = 4;  // weights of 4 layers: beyond L2
  int cc_major = 0, cc_minor = 0;
  CK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, 0));
  CK(cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, 0));
  const int cc = 10 * cc_major + cc_minor;
  for (const Shape& sh : shapes) {
    DequantParams p = DequantParams::Make(sh.k, sh.n, block);
    const int64_t b_bytes = p.panels * p.k_pad * Dec::kBytesPerK, s_elems = p.panels * p.blocks * 32;
    const int64_t s2_elems = (s_elems + 255) / 256;
    std::vector<uint8_t*> bs(kCopies);
    std::vector<void*> ss(kCopies);       // float16 absmax, or int8 codes (dq)
    std::vector<float*> s2s(kCopies, nullptr), offs(kCopies, nullptr);  // dq only
    for (int c = 0; c < kCopies; ++c) {
      CK(cudaMalloc(&bs[c], b_bytes));
      FillBytes<<<1024, 256, 0, stream>>>(bs[c], b_bytes, 1234 + c, Dec::kBytesPerK == 32);
      if (dq) {
        CK(cudaMalloc(&ss[c], s_elems));
        CK(cudaMalloc(&s2s[c], s2_elems * 4));
        CK(cudaMalloc(&offs[c], 4));
        FillBytes<<<1024, 256, 0, stream>>>(static_cast<uint8_t*>(ss[c]), s_elems, 99 + c, 1);
        FillDq<<<64, 256, 0, stream>>>(s2s[c], s2_elems, offs[c], c);
      } else {
        CK(cudaMalloc(&ss[c], s_elems * 2));
        FillHalf<<<1024, 256, 0, stream>>>(static_cast<__half*>(ss[c]), s_elems, 99 + c, 0.02f);
      }
    }
    __half *w_ref, *w16[2], *a, *y, *y_ref;
    CK(cudaMalloc(&w_ref, p.K * p.N * 2));
    for (auto& w : w16) {
      CK(cudaMalloc(&w, p.K * p.N * 2));
      FillHalf<<<1024, 256, 0, stream>>>(w, p.K * p.N, 7, 0.02f);
    }
    const int64_t max_m = std::max<int64_t>(1024, *std::max_element(ms.begin(), ms.end()));  // A, Y: the largest M
    CK(cudaMalloc(&a, max_m * p.K * 2));
    CK(cudaMalloc(&y, max_m * p.N * 2));
    CK(cudaMalloc(&y_ref, max_m * p.N * 2));
    FillHalf<<<1024, 256, 0, stream>>>(a, max_m * p.K, 5, 1.0f);
    if (dq) {
      float* absmax;
      CK(cudaMalloc(&absmax, s_elems * 4));
      DecodeDq<<<1024, 256, 0, stream>>>(static_cast<const int8_t*>(ss[0]), s2s[0], offs[0], s_elems, absmax);
      DequantKernel<Dec><<<2048, 256, 0, stream>>>(bs[0], absmax, p, w_ref);
      CK(cudaStreamSynchronize(stream));
      CK(cudaFree(absmax));
    } else {
      DequantKernel<Dec><<<2048, 256, 0, stream>>>(bs[0], static_cast<const __half*>(ss[0]), p, w_ref);
    }
    CK(cudaGetLastError());
    const double weight_bytes = double(b_bytes) + (dq ? s_elems + s2_elems * 4.0 : s_elems * 2.0);
    std::vector<std::pair<int, int64_t>> paths = {{1, 0}};  // (force, chunk MiB)
    if (std::is_same_v<Dec, oco::cuda::Nf4Decoder>) {  // the register-decoding mma kernel (MMAGP="2,4": these groups)
      const char* gps = std::getenv("MMAGP");
      if (gps == nullptr) paths.push_back({8, 0});
      for (const long long gp : CsvInts(gps)) paths.push_back({8, gp});
    }
    {  // WGBN="128,256": the wgmma kernel (sm_90a) with these rows per CTA
      const char* splits = std::getenv("WGSPLITS");  // WGSPLITS="1,2": these splits of K (bm + 1000 * splits)
      for (const long long bn : CsvInts(std::getenv("WGBN"))) {
        if (splits == nullptr) paths.push_back({9, bn});
        for (const long long sp : CsvInts(splits)) paths.push_back({9, bn + 1000 * sp});
      }
    }
    if (std::getenv("OLDGEMV")) {  // the general GEMV, the stream-K and the per-panel float16 GEMV forced
      paths.push_back({5, 0});
      paths.push_back({6, 0});
      paths.push_back({7, 0});
    }
    const char* chunks_env = std::getenv("CHUNKS");
    std::string chunks = chunks_env ? chunks_env : "128";
    for (size_t pos = 0; pos < chunks.size();) {
      const size_t end = chunks.find(' ', pos);
      const std::string tok = chunks.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
      if (!tok.empty()) {
        paths.push_back({2, std::atoll(tok.c_str())});
        if (std::getenv("SPLIT")) {  // the dequantization and the GEMMs timed apart
          paths.push_back({3, std::atoll(tok.c_str())});
          paths.push_back({4, std::atoll(tok.c_str())});
        }
      }
      if (end == std::string::npos) break;
      pos = end + 1;
    }
    std::vector<std::pair<bool, int64_t>> launches;  // (pdl, prefetch bytes)
    {
      const char* env = std::getenv("LAUNCH");
      std::string spec = env ? env : "1:-1";
      for (size_t pos = 0; pos < spec.size();) {
        size_t end = spec.find(' ', pos);
        if (end == std::string::npos) end = spec.size();
        const std::string tok = spec.substr(pos, end - pos);
        const size_t colon = tok.find(':');
        if (!tok.empty() && colon != std::string::npos) {
          const std::string pf = tok.substr(colon + 1);
          launches.push_back({tok[0] == '1', pf == "all" ? (int64_t{1} << 40) : std::atoll(pf.c_str())});
        }
        pos = end + 1;
      }
    }
    for (int m : ms)
    for (const auto& [force, chunk_mb] : paths)
    for (const auto& [pdl, prefetch] : launches) {
      if (force >= 2 && force <= 4 && m <= 2) continue;
      if (force == 5 && m > 2) continue;
      if ((force == 6 && m > 4) || (force == 7 && m > 1) || (force == 8 && m > oco::kMmaMaxRows)) continue;
      if (force == 8 && chunk_mb == 2 && m > 16) continue;  // (no 2-panel groups above 16 rows)
      CudaCall call;
      call.a = a;
      call.m = m;
      call.scale_type = dq ? DType::kInt8 : DType::kHalf;
      call.type = DType::kHalf;
      call.p = p;
      call.stream = stream;
      call.sm_count = sms;
      call.force = force;
      call.wgmma = cc == 90;
      call.blas = oco::CublasApi::Get();
      call.blas_handle = handle;
      call.chunk_bytes = chunk_mb << 20;
      if (force == 8) call.mma_gp = static_cast<int>(chunk_mb);
      if (force == 9) {
        call.mma_gp = static_cast<int>(chunk_mb % 1000);
        call.wg_splits = static_cast<int>(chunk_mb / 1000);
      }
      if (const char* e = std::getenv("WGSK")) call.wg_stream_k = std::atoi(e);
      call.pdl = pdl;
      call.prefetch_bytes = prefetch;
      const CudaPlan plan = oco::cuda::Plan<Dec>(call);
      const size_t ws_bytes = oco::WorkspaceBytes(call, plan);
      if (ws_bytes > 0) CK(cudaMalloc(&call.workspace, ws_bytes));
      const size_t gemv_ws_bytes = oco::GemvWorkspaceBytes(call, plan);  // stream-K GEMV: zeroed once
      if (gemv_ws_bytes > 0) {
        CK(cudaMalloc(&call.gemv_workspace, gemv_ws_bytes));
        CK(cudaMemset(call.gemv_workspace, 0, gemv_ws_bytes));
      }
      auto ours = [&](int i) {
        call.b = bs[i % kCopies];
        call.scales = ss[i % kCopies];
        call.scale2 = s2s[i % kCopies];
        call.offset = offs[i % kCopies];
        call.y = y;
        CK(oco::cuda::Launch<Dec>(call, plan));
      };
      // correctness against cuBLAS on the same dequantized weights (copy 0)
      ours(0);
      const float one = 1.0f, zero = 0.0f;
      CB(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(p.N), m, int(p.K), &one, w_ref, CUDA_R_16F, int(p.N), a,
                      CUDA_R_16F, int(p.K), &zero, y_ref, CUDA_R_16F, int(p.N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      CK(cudaStreamSynchronize(stream));
      std::vector<__half> h(m * p.N), hr(m * p.N);
      CK(cudaMemcpy(h.data(), y, m * p.N * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(hr.data(), y_ref, m * p.N * 2, cudaMemcpyDeviceToHost));
      double num = 0, den = 0;
      bool finite = true;
      for (int64_t i = 0; i < m * p.N; ++i) {
        const double u = __half2float(h[i]), v = __half2float(hr[i]);
        finite &= std::isfinite(u);
        num += (u - v) * (u - v);
        den += v * v;
      }
      const double rel = std::sqrt(num / den);
      const float t_ours = MedianUs(ours, 20, stream);
      auto cublas = [&](int i) {
        CB(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(p.N), m, int(p.K), &one, w16[i % 2], CUDA_R_16F,
                        int(p.N), a, CUDA_R_16F, int(p.K), &zero, y_ref, CUDA_R_16F, int(p.N), CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT));
      };
      const float t_fp16 = MedianUs(cublas, 20, stream);
      const char* kernel = force == 3 ? "dq" : force == 4 ? "gemm" : force == 5 ? "gemv0" : force == 6 ? "gemvs" : force == 7 ? "gemvf" : plan.wgmma ? "wgmma" : plan.mma ? "mma" : plan.dequant_gemm ? "dqgemm" : plan.tensor_cores ? "tc" : "gemv";
      if (call.workspace) CK(cudaFree(call.workspace));
      if (call.gemv_workspace) CK(cudaFree(call.gemv_workspace));
      char pf[32];
      if (prefetch >= (int64_t{1} << 40)) std::snprintf(pf, sizeof pf, "all");
      else std::snprintf(pf, sizeof pf, "%lld", (long long)prefetch);
      std::printf("%-5s %5lldx%-5lld M=%-5d %-6s bm=%-4d chunk=%-3lld pdl=%d pf=%-6s ours %8.1f us  fp16 %8.1f us  %5.2fx  %6.0f GB/s (%4.1f%% of copy)  "
                  "rel err %.1e%s\n",
                  name, (long long)p.K, (long long)p.N, m, kernel, plan.mma ? plan.gp : plan.bm, (long long)(plan.wgmma ? (plan.wg.sk_ctas > 0 ? -plan.wg.sk_ctas : plan.wg.splits) : plan.chunk_panels), int(pdl), pf, t_ours, t_fp16, t_fp16 / t_ours,
                  weight_bytes / t_ours / 1e3, 100.0 * weight_bytes / (t_ours * 1e-6) / copy_bw, rel,
                  (finite && rel < 2e-3) ? "" : "  WRONG");
      std::fflush(stdout);
    }
    for (int c = 0; c < kCopies; ++c) {
      CK(cudaFree(bs[c]));
      CK(cudaFree(ss[c]));
      if (dq) {
        CK(cudaFree(s2s[c]));
        CK(cudaFree(offs[c]));
      }
    }
    for (auto* ptr : {w_ref, w16[0], w16[1], a, y, y_ref}) CK(cudaFree(ptr));
  }
}

int main(int argc, char** argv) {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  cublasHandle_t handle;
  CB(cublasCreate(&handle));
  CB(cublasSetStream(handle, stream));
  // copy bandwidth: 1 GiB device to device, read + write
  void *src, *dst;
  const size_t bytes = size_t(1) << 30;
  CK(cudaMalloc(&src, bytes));
  CK(cudaMalloc(&dst, bytes));
  const float copy_us = MedianUs([&](int) { CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream)); }, 5,
                                 stream);
  const float copy_bw = 2.0f * bytes / (copy_us * 1e-6f);
  CK(cudaFree(src));
  CK(cudaFree(dst));
  std::printf("%s, %d SMs, copy bandwidth %.2f TB/s (read + write)\n", prop.name, prop.multiProcessorCount, copy_bw / 1e12);
  // kernel_bench [nf4|nf4dq|int8|int8b32 K N M]: one configuration only (for a profiler)
  std::vector<Shape> shapes = {{4096, 11008}, {11008, 4096}};
  std::vector<int> ms = {1, 2, 4, 16, 64, 256, 1024};
  std::string only = argc > 1 ? argv[1] : "";
  if (const char* e = std::getenv("MS")) {  // MS="1,8,16": these M only
    ms.clear();
    for (const long long m : CsvInts(e)) ms.push_back(static_cast<int>(m));
  }
  if (const char* e = std::getenv("SHAPES")) {  // SHAPES="4096x4096,1000x999": these K x N only
    shapes.clear();
    for (const char* c = e; *c;) {
      char* end = nullptr;
      const long long k = std::strtoll(c, &end, 10);
      const long long n = std::strtoll(end + 1, &end, 10);
      shapes.push_back({k, n});
      c = *end == ',' ? end + 1 : end;
    }
  }
  if (argc > 4) {
    shapes = {{std::atoll(argv[2]), std::atoll(argv[3])}};
    ms = {std::atoi(argv[4])};
  }
  if (only.empty() || only == "nf4")
    Run<oco::cuda::Nf4Decoder>("nf4", 64, handle, stream, prop.multiProcessorCount, copy_bw, shapes, ms);
  if (only.empty() || only == "nf4dq")
    Run<oco::cuda::Nf4Decoder>("nf4dq", 64, handle, stream, prop.multiProcessorCount, copy_bw, shapes, ms, true);
  if (only.empty() || only == "int8")
    Run<oco::cuda::Int8Decoder>("int8", 0, handle, stream, prop.multiProcessorCount, copy_bw, shapes, ms);
  if (only == "int8b32")  // Int8 with blocks of 32 along K (two scale rows per wgmma stage)
    Run<oco::cuda::Int8Decoder>("int8b32", 32, handle, stream, prop.multiProcessorCount, copy_bw, shapes, ms);
  return 0;
}
