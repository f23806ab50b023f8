// Int8MatMul CPU kernels: the shared dequant-matmul engine (common/dequant_cpu.h) with an int8
// decoder: one k-row of a panel is 32 int8 values, sign-extended and converted 16 at a time.
#include "int8_matmul/int8_matmul.h"

#include "common/dequant_cpu.h"

namespace oco {
namespace {

struct Int8Decoder {
  static constexpr int64_t kBytesPerK = 32;

  static float Scalar(const uint8_t* row, int j) { return static_cast<float>(static_cast<int8_t>(row[j])); }

  OCO_AVX512 void operator()(const uint8_t* row, __m512& lo, __m512& hi) const {
    lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row))));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16))));
  }
};

struct Int8Format {
  static constexpr const char* kOp = int8mm::kOp;
  static constexpr const char* kScaleName = "scales";
  static constexpr ONNXTensorElementDataType kBType = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  static constexpr bool kDoubleQuant = false;  // 4 inputs: no double-quantized scales
  using Decoder = Int8Decoder;
  static DequantParams Params(const Ort::ConstKernelInfo& info) { return int8mm::ReadParams(info); }
};

}  // namespace

std::vector<const OrtCustomOp*> Int8MatMulCpuOps(bool portable) {
  static DequantMatMulCpuOp<Int8Format, float, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT> f32, portable_f32(true);
  static DequantMatMulCpuOp<Int8Format, uint16_t, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16> f16, portable_f16(true);
  if (portable) return {&portable_f32, &portable_f16};
  return {&f32, &f16};
}

}  // namespace oco
