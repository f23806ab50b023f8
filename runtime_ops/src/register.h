// Registration tables: one per execution provider.
#pragma once

#include <vector>

#include "common/ops_common.h"

namespace oco {

// portable: the CPU ops that always run the portable C++ kernels (tests, comparisons).
std::vector<const OrtCustomOp*> Nf4MatMulCpuOps(bool portable);
std::vector<const OrtCustomOp*> Int8MatMulCpuOps(bool portable);
std::vector<const OrtCustomOp*> CpuOps(bool portable);

#ifdef OCO_WITH_CUDA
std::vector<const OrtCustomOp*> Nf4MatMulCudaOps();
std::vector<const OrtCustomOp*> Int8MatMulCudaOps();
std::vector<const OrtCustomOp*> CudaOps();
#endif

}  // namespace oco
