// How fast can a kernel only *read* a weight of a given size on this GPU? The floor under every
// GEMV of runtime_ops: at batch 1 a GEMV reads each weight byte once, so its time can not go below
// a kernel that reads the same bytes and does nothing else. Three readers, each over copies of the
// buffer rotated beyond L2, CUDA-event medians of back-to-back launches (as kernel_bench.cu):
//   * empty: a kernel of one CTA per SM that reads nothing (launch + scheduling cost per kernel);
//   * ldg:   CTAs x 512 threads, 16-byte __ldg loads, U loads in flight per thread (registers);
//   * bulk:  one CTA per SM, a producer lane streams its contiguous range through S shared-memory
//            stages of C bytes with cp.async.bulk (TMA, sm_90) and mbarriers, 8 consumer warps read
//            the stages (LDS.128).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 tools/cuda/read_floor.cu -o /tmp/read_floor
//   /tmp/read_floor [MB ...]        (default: 23.3 = NF4 4096x11008 with absmax, 45.1, 117)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_common.cuh"

__global__ void EmptyKernel(unsigned* sink) {
  if (threadIdx.x == 1023) sink[blockIdx.x] = 0;  // never true (fewer threads): keeps the launch
}

template <int U>
__global__ void __launch_bounds__(512) LdgKernel(const uint4* src, int64_t n16, unsigned* sink) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  unsigned acc = 0;
  int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (; i + (U - 1) * stride < n16; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = __ldg(src + i + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n16; i += stride) {
    const uint4 v = __ldg(src + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;  // practically never: the loads stay
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned SmemAddr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void MbarInit(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SmemAddr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarExpectTx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(SmemAddr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(SmemAddr(bar)) : "memory");
}
__device__ __forceinline__ void MbarWait(uint64_t* bar, unsigned parity) {
  unsigned done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(SmemAddr(bar)), "r"(parity)
        : "memory");
  }
}
__device__ __forceinline__ void BulkLoad(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   SmemAddr(dst)),
               "l"(src), "r"(bytes), "r"(SmemAddr(bar))
               : "memory");
}
#endif

constexpr int kConsumerWarps = 8;

// Shared memory: S stages of C bytes, then 2 * S mbarriers (full, empty).
__global__ void __launch_bounds__((kConsumerWarps + 1) * 32, 1)
    BulkKernel(const uint8_t* src, int64_t bytes, int stages, int chunk, unsigned* sink) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + int64_t(stages) * chunk);
  uint64_t* empty = full + stages;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // this CTA's contiguous range, 16-byte aligned
  const int64_t n16 = bytes / 16;
  const int64_t b0 = n16 * blockIdx.x / gridDim.x * 16, b1 = n16 * (blockIdx.x + 1) / gridDim.x * 16;
  const int64_t nchunks = (b1 - b0 + chunk - 1) / chunk;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      MbarInit(full + s, 1);
      MbarInit(empty + s, kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == kConsumerWarps) {  // producer
    if (lane == 0) {
      for (int64_t c = 0; c < nchunks; ++c) {
        const int s = static_cast<int>(c % stages);
        if (c >= stages) MbarWait(empty + s, static_cast<unsigned>((c / stages - 1) & 1));
        const unsigned len = static_cast<unsigned>(min(int64_t(chunk), b1 - b0 - c * chunk));
        MbarExpectTx(full + s, len);
        BulkLoad(smem + int64_t(s) * chunk, src + b0 + c * chunk, len, full + s);
      }
    }
    return;
  }
  unsigned acc = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int s = static_cast<int>(c % stages);
    MbarWait(full + s, static_cast<unsigned>((c / stages) & 1));
    const int len16 = static_cast<int>(min(int64_t(chunk), b1 - b0 - c * chunk) / 16);
    const uint4* st = reinterpret_cast<const uint4*>(smem + int64_t(s) * chunk);
    for (int i = threadIdx.x; i < len16; i += kConsumerWarps * 32) {
      const uint4 v = st[i];
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __syncwarp();
    if (lane == 0) MbarArrive(empty + s);
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
#endif
}

int main(int argc, char** argv) {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::vector<double> sizes_mb = {23.3, 45.1, 117.4};
  if (argc > 1) {
    sizes_mb.clear();
    for (int i = 1; i < argc; ++i) sizes_mb.push_back(std::atof(argv[i]));
  }
  unsigned* sink;
  CK(cudaMalloc(&sink, 4096 * sizeof(unsigned)));
  std::printf("%s, %d SMs\n", prop.name, sms);
  std::printf("empty kernel (%d CTAs of 512 threads), back to back: %.2f us\n", sms,
              MedianUs([&](int) { EmptyKernel<<<sms, 512>>>(sink); }, 200, nullptr));
  CK(cudaFuncSetAttribute(BulkKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
  for (const double mb : sizes_mb) {
    const int64_t bytes = static_cast<int64_t>(mb * 1e6) / 16 * 16;
    constexpr int kCopies = 4;  // > L2 together (50 MB on an H100) from 23 MB on
    std::vector<uint8_t*> bufs(kCopies);
    for (auto& b : bufs) {
      CK(cudaMalloc(&b, bytes));
      CK(cudaMemset(b, 1, bytes));
    }
    auto report = [&](const char* what, float us) {
      std::printf("%7.1f MB  %-28s %7.2f us  %6.0f GB/s\n", mb, what, us, bytes / (us * 1e-6) / 1e9);
      std::fflush(stdout);
    };
    for (const int per_sm : {1, 2, 4}) {
      char what[64];
      std::snprintf(what, sizeof what, "ldg x4, %d CTA/SM", per_sm);
      report(what, MedianUs([&](int i) { LdgKernel<4><<<sms * per_sm, 512>>>(reinterpret_cast<const uint4*>(bufs[i % kCopies]), bytes / 16, sink); }, 50, nullptr));
      std::snprintf(what, sizeof what, "ldg x8, %d CTA/SM", per_sm);
      report(what, MedianUs([&](int i) { LdgKernel<8><<<sms * per_sm, 512>>>(reinterpret_cast<const uint4*>(bufs[i % kCopies]), bytes / 16, sink); }, 50, nullptr));
    }
    for (const int chunk : {4096, 8192, 16384}) {
      for (const int stages : {4, 8}) {
        if (int64_t(chunk) * stages > 160 * 1024) continue;
        char what[64];
        std::snprintf(what, sizeof what, "bulk %2d x %5d B", stages, chunk);
        const size_t smem = size_t(chunk) * stages + 16 * stages;
        report(what, MedianUs([&](int i) { BulkKernel<<<sms, (kConsumerWarps + 1) * 32, smem>>>(bufs[i % kCopies], bytes, stages, chunk, sink); }, 50, nullptr));
      }
    }
    for (auto* b : bufs) CK(cudaFree(b));
  }
  CK(cudaFree(sink));
  return 0;
}
