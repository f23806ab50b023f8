// cuBLAS, loaded at run time (dlopen) for the large-M path of the CUDA kernels: dequantize a
// chunk of the weights into a workspace, then one cublasGemmEx per chunk.
//
// Loaded, not linked: the build needs no cuBLAS (the build machines have nvcc but no cuBLAS; the
// GPU machine's onnxruntime-gpu brings its own libcublas, which dlopen then finds already loaded).
// When no libcublas can be opened, CublasApi::Get() returns null and the kernels keep their own
// tensor-core path for every M. Only the C entry points used below are declared; their ABI is
// cuBLAS's stable C API (cublas_api.h), the enum values are cuBLAS's published ones.
#pragma once

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <library_types.h>

namespace oco {

struct CublasApi {
  // cublasStatus_t, cublasHandle_t, cublasOperation_t, cublasComputeType_t, cublasGemmAlgo_t
  using Status = int;
  using Handle = void*;
  static constexpr int kOpN = 0;            // CUBLAS_OP_N
  static constexpr int kCompute32F = 68;    // CUBLAS_COMPUTE_32F (no TF32, no fp16 accumulation)
  static constexpr int kGemmDefault = -1;   // CUBLAS_GEMM_DEFAULT

  Status (*create)(Handle*) = nullptr;                    // cublasCreate_v2
  Status (*destroy)(Handle) = nullptr;                    // cublasDestroy_v2
  Status (*set_stream)(Handle, cudaStream_t) = nullptr;   // cublasSetStream_v2
  Status (*gemm_ex)(Handle, int, int, int, int, int, const void*, const void*, cudaDataType, int, const void*,
                    cudaDataType, int, const void*, void*, cudaDataType, int, int, int) = nullptr;  // cublasGemmEx

  // The process's cuBLAS (loaded once; immutable afterwards), or null when none can be loaded.
  static const CublasApi* Get() {
    static const CublasApi* api = Load();
    return api;
  }

 private:
  static const CublasApi* Load() {
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
    }
    if (lib == nullptr) return nullptr;
    static CublasApi api;  // filled once, here
    api.create = reinterpret_cast<decltype(api.create)>(dlsym(lib, "cublasCreate_v2"));
    api.destroy = reinterpret_cast<decltype(api.destroy)>(dlsym(lib, "cublasDestroy_v2"));
    api.set_stream = reinterpret_cast<decltype(api.set_stream)>(dlsym(lib, "cublasSetStream_v2"));
    api.gemm_ex = reinterpret_cast<decltype(api.gemm_ex)>(dlsym(lib, "cublasGemmEx"));
    if (!api.create || !api.destroy || !api.set_stream || !api.gemm_ex) return nullptr;
    return &api;
  }
};

}  // namespace oco
