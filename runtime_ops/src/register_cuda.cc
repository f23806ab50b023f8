// Registration table of the CUDA execution provider.
#include "common/dequant_cuda_op.h"
#include "int8_matmul/int8_matmul.h"
#include "nf4_matmul/nf4_matmul.h"
#include "register.h"

namespace oco {
namespace {

struct Nf4CudaFormat {
  static constexpr const char* kOp = nf4::kOp;
  static constexpr const char* kScaleName = "absmax";
  static constexpr ONNXTensorElementDataType kBType = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  static constexpr int64_t kBytesPerK = 16;
  static constexpr bool kDoubleQuant = true;  // int8 absmax with absmax_scale, absmax_offset
  static DequantParams Params(const Ort::ConstKernelInfo& info) { return nf4::ReadParams(info); }
  static CudaPlan Plan(const CudaCall& call) { return PlanNf4(call); }
  static cudaError_t Launch(const CudaCall& call, const CudaPlan& plan) { return LaunchNf4(call, plan); }
};

struct Int8CudaFormat {
  static constexpr const char* kOp = int8mm::kOp;
  static constexpr const char* kScaleName = "scales";
  static constexpr ONNXTensorElementDataType kBType = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  static constexpr int64_t kBytesPerK = 32;
  static constexpr bool kDoubleQuant = false;  // 4 inputs: no double-quantized scales
  static DequantParams Params(const Ort::ConstKernelInfo& info) { return int8mm::ReadParams(info); }
  static CudaPlan Plan(const CudaCall& call) { return PlanInt8(call); }
  static cudaError_t Launch(const CudaCall& call, const CudaPlan& plan) { return LaunchInt8(call, plan); }
};

}  // namespace

std::vector<const OrtCustomOp*> Nf4MatMulCudaOps() {
  static DequantMatMulCudaOp<Nf4CudaFormat, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT> f32;
  static DequantMatMulCudaOp<Nf4CudaFormat, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16> f16;
  static DequantMatMulCudaOp<Nf4CudaFormat, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16> bf16;
  return {&f32, &f16, &bf16};
}

std::vector<const OrtCustomOp*> Int8MatMulCudaOps() {
  static DequantMatMulCudaOp<Int8CudaFormat, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT> f32;
  static DequantMatMulCudaOp<Int8CudaFormat, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16> f16;
  static DequantMatMulCudaOp<Int8CudaFormat, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16> bf16;
  return {&f32, &f16, &bf16};
}

std::vector<const OrtCustomOp*> CudaOps() {
  std::vector<const OrtCustomOp*> ops;
  for (auto* op : Nf4MatMulCudaOps()) ops.push_back(op);
  for (auto* op : Int8MatMulCudaOps()) ops.push_back(op);
  return ops;
}

}  // namespace oco
