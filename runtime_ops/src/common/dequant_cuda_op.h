// ORT glue of the CUDA kernels (plain C++; the kernels are in dequant_cuda.cuh): validates
// inputs exactly as the CPU kernels do, launches one kernel on ORT's compute stream, and reports
// every CUDA error as an ORT error status.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include "common/dequant_cuda.h"
#include "common/ops_common.h"

namespace oco {

template <ONNXTensorElementDataType kType>
constexpr DType ToDType() {
  return kType == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT     ? DType::kFloat
         : kType == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? DType::kHalf
                                                          : DType::kBFloat16;
}

inline void CheckCuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(Str(what, " failed: ", cudaGetErrorString(err)));
}

// Stream-ordered memory pool of a device for the dequantized chunks, shared by all kernels of the
// library. The device's default pool has a release threshold of 0: it unmaps freed memory at every
// synchronization, so each run would map its chunk workspace (up to 128 MiB) again; this one keeps
// up to kChunkPoolKeepBytes mapped.
inline constexpr uint64_t kChunkPoolKeepBytes = uint64_t{256} << 20;
inline cudaMemPool_t ChunkPool(int device) {
  static std::mutex mu;
  static std::vector<std::pair<int, cudaMemPool_t>> pools;  // process lifetime, like the CUDA context
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& [d, pool] : pools)
    if (d == device) return pool;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  CheckCuda(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  uint64_t keep = kChunkPoolKeepBytes;
  CheckCuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  pools.emplace_back(device, pool);
  return pool;
}

// Large M (see kDequantGemmMinRows) goes through cuBLAS on dequantized chunks of B when a
// libcublas can be loaded: the kernel then owns a cuBLAS handle (created on first use, on the
// device of the inputs) and takes its workspace from the stream-ordered allocator on ORT's
// stream for the duration of the call (ChunkPool). Without cuBLAS (or without device memory for the
// workspace) every M runs our own kernels. The environment variable
// ONNX_COMPRESS_CUDA_CHUNK_BYTES (read when the session creates the kernel) sets the dequantized
// bytes per chunk (tests use 1: one 32-channel panel per chunk); ONNX_COMPRESS_CUDA_PDL=0 launches
// every kernel the ordinary way (CudaCall::pdl) and ONNX_COMPRESS_CUDA_PREFETCH_BYTES sets the
// GEMVs' L2 prefetch per CTA (CudaCall::prefetch_bytes; benchmarks); ONNX_COMPRESS_CUDA_WGMMA=0
// keeps NF4 and Int8 off the wgmma kernel (CudaCall::wgmma: sm_90a builds on compute capability 9.0).
// The stream-K GEMV's workspace (partial sums and per-panel counters, which every launch leaves at
// 0) is allocated and zeroed once per stream: ORT runs concurrent Run() calls on different streams.
//
// Format: kOp, kScaleName, kBType, kBytesPerK, kDoubleQuant, Params(info), Plan(call), Launch(call, plan).
// kDoubleQuant: the scales may be int8 with inputs 4 and 5 (scale2, offset), as for NF4MatMul.
template <typename Format, ONNXTensorElementDataType kType>
class DequantMatMulCudaKernel {
 public:
  explicit DequantMatMulCudaKernel(const OrtKernelInfo* info)
      : p_(Format::Params(Ort::ConstKernelInfo(info))), constant_weights_(ConstantWeights(Ort::ConstKernelInfo(info))) {
    if (const char* v = std::getenv("ONNX_COMPRESS_CUDA_CHUNK_BYTES"))
      chunk_bytes_ = std::max<int64_t>(1, std::atoll(v));
    if (const char* v = std::getenv("ONNX_COMPRESS_CUDA_PDL")) pdl_env_ = std::atoi(v) != 0;
    if (const char* v = std::getenv("ONNX_COMPRESS_CUDA_PREFETCH_BYTES")) prefetch_bytes_ = std::max<int64_t>(-1, std::atoll(v));
    if (const char* v = std::getenv("ONNX_COMPRESS_CUDA_WGMMA")) wgmma_env_ = std::atoi(v) != 0;
  }
  ~DequantMatMulCudaKernel() {
    if (blas_handle_ != nullptr) CublasApi::Get()->destroy(blas_handle_);
    for (const auto& entry : gemv_ws_) (void)cudaFree(entry.second);
  }
  DequantMatMulCudaKernel(const DequantMatMulCudaKernel&) = delete;
  DequantMatMulCudaKernel& operator=(const DequantMatMulCudaKernel&) = delete;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return Guard(Format::kOp, [&] { Compute(Ort::KernelContext(context)); });
  }

 private:
  void Compute(const Ort::KernelContext& ctx) {
    auto a = ctx.GetInput(0);
    auto b = ctx.GetInput(1);
    auto s = ctx.GetInput(2);
    const IoShapes io = IoShapes::Read(ctx);
    const bool has_bias = io.has_bias;
    const int64_t m = ValidateIo(io, p_, Format::kBytesPerK, kType, Format::kScaleName, Format::kDoubleQuant);
    std::vector<int64_t> y_shape(io.a.begin(), io.a.end() - 1);
    y_shape.push_back(p_.N);
    auto y = ctx.GetOutput(0, y_shape);
    if (m == 0) return;

    const int device = a.GetTensorMemoryInfo().GetDeviceId();
    if (sm_count_ == 0) {
      CheckCuda(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
      CheckCuda(cudaDeviceGetAttribute(&cc_major_, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
      CheckCuda(cudaDeviceGetAttribute(&cc_minor_, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
    }
    CudaCall call;
    call.a = a.GetTensorRawData();
    call.m = m;
    call.b = static_cast<const uint8_t*>(b.GetTensorRawData());
    call.scales = s.GetTensorRawData();
    call.scale_type = io.scale_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT  ? DType::kFloat
                      : io.scale_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 ? DType::kInt8
                                                                            : ToDType<kType>();
    if (call.scale_type == DType::kInt8) {  // double-quantized (ValidateIo checked inputs 4 and 5)
      call.scale2 = ctx.GetInput(4).GetTensorData<float>();
      call.offset = ctx.GetInput(5).GetTensorData<float>();
    }
    call.bias = has_bias ? ctx.GetInput(3).GetTensorRawData() : nullptr;
    call.y = y.GetTensorMutableRawData();
    call.type = ToDType<kType>();
    call.p = p_;
    call.stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    call.sm_count = sm_count_;
    call.blas = CublasApi::Get();
    call.chunk_bytes = chunk_bytes_;
    call.pdl = constant_weights_ && pdl_env_ && cc_major_ >= 9;
    call.prefetch_bytes = prefetch_bytes_;
#if defined(OCO_WGMMA)
    call.wgmma = wgmma_env_ && cc_major_ == 9 && cc_minor_ == 0;  // sm_90a code runs on 9.0 only
#endif
    CudaPlan plan = Format::Plan(call);
    if (plan.stream_k) call.gemv_workspace = GemvWorkspace(call.stream, GemvWorkspaceBytes(call, plan));
    const size_t partial_bytes = plan.mma || plan.wgmma ? WorkspaceBytes(call, plan) : 0;
    if (partial_bytes > 0) {  // partial sums of what CTAs share: stream-ordered, from the pool
      CheckCuda(cudaMallocFromPoolAsync(&call.workspace, partial_bytes, ChunkPool(device), call.stream),
                "cudaMallocFromPoolAsync (partial sums)");
      const cudaError_t err = Format::Launch(call, plan);
      const cudaError_t freed = cudaFreeAsync(call.workspace, call.stream);
      CheckCuda(err, Format::kOp);
      CheckCuda(freed, "cudaFreeAsync (partial sums)");
      return;
    }
    if (!plan.dequant_gemm) {
      CheckCuda(Format::Launch(call, plan), Format::kOp);
      return;
    }
    std::lock_guard<std::mutex> lock(blas_mu_);  // one handle: its stream is set per call
    if (blas_handle_ == nullptr && call.blas->create(&blas_handle_) != 0) {
      blas_handle_ = nullptr;  // no cuBLAS context on this device: our own kernels for every M
      call.blas = nullptr;
      plan = Format::Plan(call);
      CheckCuda(Format::Launch(call, plan), Format::kOp);
      return;
    }
    call.blas_handle = blas_handle_;
    const cudaError_t alloc =
        cudaMallocFromPoolAsync(&call.workspace, WorkspaceBytes(call, plan), ChunkPool(device), call.stream);
    if (alloc == cudaErrorMemoryAllocation) {  // no room for the dequantized chunk: our own kernels
      (void)cudaGetLastError();                 // clear the (non-sticky) error
      call.blas = nullptr;
      call.workspace = nullptr;
      plan = Format::Plan(call);
      CheckCuda(Format::Launch(call, plan), Format::kOp);
      return;
    }
    CheckCuda(alloc, "cudaMallocFromPoolAsync (workspace)");
    const cudaError_t err = Format::Launch(call, plan);
    const cudaError_t freed = cudaFreeAsync(call.workspace, call.stream);
    CheckCuda(err, "dequantize + cuBLAS GEMM");
    CheckCuda(freed, "cudaFreeAsync (workspace)");
  }

  // The stream-K GEMV's workspace of `stream` (zeroed on it at the first call).
  void* GemvWorkspace(cudaStream_t stream, size_t bytes) {
    std::lock_guard<std::mutex> lock(gemv_mu_);
    for (const auto& [s, ptr] : gemv_ws_)
      if (s == stream) return ptr;
    void* ptr = nullptr;
    CheckCuda(cudaMalloc(&ptr, bytes), "cudaMalloc (GEMV workspace)");
    const cudaError_t err = cudaMemsetAsync(ptr, 0, bytes, stream);
    if (err != cudaSuccess) (void)cudaFree(ptr);
    CheckCuda(err, "cudaMemsetAsync (GEMV workspace)");
    gemv_ws_.emplace_back(stream, ptr);
    return ptr;
  }

  // B and its scales (with double quantization also scale2 and offset) are constant initializers:
  // the kernels may read them before the stream's previous kernel has finished (CudaCall::pdl).
  static bool ConstantWeights(const Ort::ConstKernelInfo& info) {
    const size_t inputs = info.GetInputCount();
    for (const size_t i : {size_t{1}, size_t{2}, size_t{4}, size_t{5}}) {
      if (i >= inputs) break;
      int is_constant = 0;
      try {
        (void)info.GetTensorConstantInput(i, &is_constant);
      } catch (const Ort::Exception&) {
        return false;
      }
      if (is_constant == 0) return false;
    }
    return true;
  }

  DequantParams p_;
  bool constant_weights_ = false;
  bool pdl_env_ = true;                // ONNX_COMPRESS_CUDA_PDL=0: never a programmatic launch
  int64_t prefetch_bytes_ = -1;        // ONNX_COMPRESS_CUDA_PREFETCH_BYTES (-1: the library's default)
  bool wgmma_env_ = true;              // ONNX_COMPRESS_CUDA_WGMMA=0: never the wgmma kernel
  int cc_major_ = 0;
  int cc_minor_ = 0;
  int sm_count_ = 0;
  int64_t chunk_bytes_ = CudaCall().chunk_bytes;
  std::mutex blas_mu_;
  CublasApi::Handle blas_handle_ = nullptr;
  std::mutex gemv_mu_;
  std::vector<std::pair<cudaStream_t, void*>> gemv_ws_;
};

template <typename Format, ONNXTensorElementDataType kType>
struct DequantMatMulCudaOp
    : Ort::CustomOpBase<DequantMatMulCudaOp<Format, kType>, DequantMatMulCudaKernel<Format, kType>, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return Guard(Format::kOp, [&] { *kernel = new DequantMatMulCudaKernel<Format, kType>(info); });
  }
  const char* GetName() const { return Format::kOp; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  // Inputs: A, B, scales[, bias], and with Format::kDoubleQuant [, scale2, offset] (float32).
  size_t GetInputTypeCount() const { return Format::kDoubleQuant ? 6 : 4; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    if (i == 1) return Format::kBType;
    if (i == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // float32, A's type (or int8): checked in Compute
    if (i >= 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;      // scale2, offset
    return kType;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i >= 3 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*i*/) const { return kType; }
};

}  // namespace oco
