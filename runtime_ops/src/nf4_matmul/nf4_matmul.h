// NF4MatMul(A, B, absmax[, bias][, absmax_scale, absmax_offset]) -> Y = A @ dequant_nf4(B) (+ bias),
// domain onnx_compress v1.
//
// Layout (defined once, in passes/onnx_compress/numerics/nf4.py): output channels in panels
// of 32, K padded to whole blocks (K_pad):
//   B      uint8 [N_pad / 32, K_pad, 16]: B[p, k, i] = code(W[k, 32p + i]) | code(W[k, 32p + 16 + i]) << 4,
//          padding codes are 7 (0.0).
//   absmax [N_pad / 32, K_pad / block_size, 32], float32 or A's type; or int8 codes when
//          double-quantized (QLoRA-style), with both of:
//   absmax_scale  float32 [ceil(size(absmax) / 256)] and absmax_offset float32 [1] or []:
//          absmax[i] = float(code[i]) * absmax_scale[i / 256] + absmax_offset in float32 (i: flat
//          row-major index; the 32 channels of a (panel, block) row share one absmax_scale entry),
//          decoded inside the kernels where they read the absmax. Not allowed with a float absmax.
//   A      [..., K] float32 / float16 (CPU, CUDA) or bfloat16 (CUDA); Y [..., N] like A.
// Attributes: K >= 1, N >= 1, block_size in {32, 64, 128, 256} (default 64).
#pragma once

#include <cstdint>

#include "common/ops_common.h"

namespace oco {
namespace nf4 {

inline constexpr const char* kOp = "NF4MatMul";

// bitsandbytes' NF4 codebook (index = code).
inline constexpr float kCodebook[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

inline DequantParams ReadParams(const Ort::ConstKernelInfo& info) {
  const int64_t default_block = 64;
  const int64_t k = IntAttr(info, "K", nullptr);
  const int64_t n = IntAttr(info, "N", nullptr);
  const int64_t block = IntAttr(info, "block_size", &default_block);
  if (k < 1) throw InvalidArgument(Str("attribute K must be >= 1, got ", k));
  if (n < 1) throw InvalidArgument(Str("attribute N must be >= 1, got ", n));
  if (block < 32 || block > 256 || !IsPowerOfTwo(block))
    throw InvalidArgument(Str("attribute block_size must be a power of two in [32, 256], got ", block));
  return DequantParams::Make(k, n, block);
}

}  // namespace nf4
}  // namespace oco
