// Int8MatMul CUDA kernels: the shared kernels of common/dequant_cuda.cuh with the int8 decoder.
#include "common/dequant_cuda.cuh"

namespace oco {

CudaPlan PlanInt8(const CudaCall& call) { return cuda::Plan<cuda::Int8Decoder>(call); }
cudaError_t LaunchInt8(const CudaCall& call, const CudaPlan& plan) { return cuda::Launch<cuda::Int8Decoder>(call, plan); }

}  // namespace oco
