// Registration tables: one per execution provider.
#pragma once

#include <vector>

#include "common/ops_common.h"

namespace oco {

std::vector<const OrtCustomOp*> Nf4MatMulCpuOps();
std::vector<const OrtCustomOp*> Int8MatMulCpuOps();
std::vector<const OrtCustomOp*> CpuOps();

#ifdef OCO_WITH_CUDA
std::vector<const OrtCustomOp*> Nf4MatMulCudaOps();
std::vector<const OrtCustomOp*> Int8MatMulCudaOps();
std::vector<const OrtCustomOp*> CudaOps();
#endif

}  // namespace oco
