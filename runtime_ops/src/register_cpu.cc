#include "register.h"

namespace oco {

std::vector<const OrtCustomOp*> CpuOps(bool portable) {
  std::vector<const OrtCustomOp*> ops;
  for (auto* op : Nf4MatMulCpuOps(portable)) ops.push_back(op);
  for (auto* op : Int8MatMulCpuOps(portable)) ops.push_back(op);
  return ops;
}

}  // namespace oco
