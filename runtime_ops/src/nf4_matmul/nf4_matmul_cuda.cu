// NF4MatMul CUDA kernels: the shared kernels of common/dequant_cuda.cuh with the NF4 decoder.
#include "common/dequant_cuda.cuh"

namespace oco {

CudaPlan PlanNf4(const CudaCall& call) { return cuda::Plan<cuda::Nf4Decoder>(call); }
cudaError_t LaunchNf4(const CudaCall& call, const CudaPlan& plan) { return cuda::Launch<cuda::Nf4Decoder>(call, plan); }

}  // namespace oco
