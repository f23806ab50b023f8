#include "register.h"

namespace oco {

std::vector<const OrtCustomOp*> CpuOps() {
  std::vector<const OrtCustomOp*> ops;
  for (auto* op : Nf4MatMulCpuOps()) ops.push_back(op);
  for (auto* op : Int8MatMulCpuOps()) ops.push_back(op);
  return ops;
}

}  // namespace oco
