// NF4MatMul CPU kernels: the shared dequant-matmul engine (common/dequant_cpu.h) with an NF4
// decoder: one k-row of a panel is 16 bytes, low nibbles = channels 0-15, high = 16-31; the
// 16-entry codebook sits in one AVX-512 register and vpermps looks up 16 codes at once.
#include "nf4_matmul/nf4_matmul.h"

#include "common/dequant_cpu.h"

namespace oco {
namespace {

struct Nf4Decoder {
  static constexpr int64_t kBytesPerK = 16;

  static float Scalar(const uint8_t* row, int j) {
    return nf4::kCodebook[j < 16 ? (row[j] & 15) : (row[j - 16] >> 4)];
  }

  __m512 lut;
  OCO_AVX512 Nf4Decoder() : lut(_mm512_loadu_ps(nf4::kCodebook)) {}
  OCO_AVX512 void operator()(const uint8_t* row, __m512& lo, __m512& hi) const {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
    lo = _mm512_permutexvar_ps(v, lut);  // vpermps reads index bits 3..0: the low nibble
    hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
  }
};

struct Nf4Format {
  static constexpr const char* kOp = nf4::kOp;
  static constexpr const char* kScaleName = "absmax";
  static constexpr ONNXTensorElementDataType kBType = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  static constexpr bool kDoubleQuant = true;  // int8 absmax with absmax_scale, absmax_offset
  using Decoder = Nf4Decoder;
  static DequantParams Params(const Ort::ConstKernelInfo& info) { return nf4::ReadParams(info); }
};

}  // namespace

std::vector<const OrtCustomOp*> Nf4MatMulCpuOps(bool portable) {
  static DequantMatMulCpuOp<Nf4Format, float, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT> f32, portable_f32(true);
  static DequantMatMulCpuOp<Nf4Format, uint16_t, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16> f16, portable_f16(true);
  if (portable) return {&portable_f32, &portable_f16};
  return {&f32, &f16};
}

}  // namespace oco
