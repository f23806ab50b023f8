// Int8MatMul(A, B, scales[, bias]) -> Y = A @ dequant_int8(B) (+ bias), domain onnx_compress v1.
//
// Layout (defined once, in passes/onnx_compress/numerics/int8.py):
// output channels in panels of 32, K padded to whole blocks (K_pad; K when per channel):
//   B      int8 [N_pad / 32, K_pad, 32]: B[p, k, j] = q[k, 32p + j] (padding 0).
//   scales [N_pad / 32, groups, 32], float32 or A's type (groups = 1 per channel, else
//          ceil(K / block_size)); W'[k, n] = B[n / 32, k, n % 32] * scales[n / 32, k / g, n % 32].
//   A      [..., K] float32 / float16 (CPU, CUDA) or bfloat16 (CUDA); Y [..., N] like A.
// Attributes: K >= 1, N >= 1, block_size: 0 (per channel, default) or a power of two >= 32
// (a 32-row chunk of K then never straddles two scale blocks, which the kernels rely on).
#pragma once

#include <cstdint>

#include "common/ops_common.h"

namespace oco {
namespace int8mm {

inline constexpr const char* kOp = "Int8MatMul";

inline DequantParams ReadParams(const Ort::ConstKernelInfo& info) {
  const int64_t default_block = 0;
  const int64_t k = IntAttr(info, "K", nullptr);
  const int64_t n = IntAttr(info, "N", nullptr);
  const int64_t block = IntAttr(info, "block_size", &default_block);
  if (k < 1) throw InvalidArgument(Str("attribute K must be >= 1, got ", k));
  if (n < 1) throw InvalidArgument(Str("attribute N must be >= 1, got ", n));
  if (block != 0 && (block < 32 || !IsPowerOfTwo(block)))
    throw InvalidArgument(Str("attribute block_size must be 0 (per channel) or a power of two >= 32, got ", block));
  return DequantParams::Make(k, n, block);
}

}  // namespace int8mm
}  // namespace oco
