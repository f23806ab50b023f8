// Shared pieces of the onnx_compress custom ops: ORT API access, status helpers, attribute
// validation, the dequant-matmul parameter block, and float16/bfloat16 conversions.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace oco {

inline constexpr const char* kDomain = "onnx_compress";
inline constexpr int kDomainVersion = 1;

// An error in what the user gave us (attributes, input shapes): becomes ORT_INVALID_ARGUMENT.
struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
std::string Str(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}

inline OrtStatusPtr MakeStatus(OrtErrorCode code, const std::string& msg) {
  return Ort::GetApi().CreateStatus(code, msg.c_str());
}

// Runs `fn` and turns any exception into an OrtStatus (never lets one cross into ORT).
template <typename Fn>
OrtStatusPtr Guard(const char* op, Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const InvalidArgument& e) {
    return MakeStatus(ORT_INVALID_ARGUMENT, Str(op, ": ", e.what()));
  } catch (const Ort::Exception& e) {
    return MakeStatus(e.GetOrtErrorCode(), Str(op, ": ", e.what()));
  } catch (const std::exception& e) {
    return MakeStatus(ORT_FAIL, Str(op, ": ", e.what()));
  } catch (...) {
    return MakeStatus(ORT_FAIL, Str(op, ": unknown error"));
  }
}

inline int64_t IntAttr(const Ort::ConstKernelInfo& info, const char* name, const int64_t* fallback) {
  int64_t value = 0;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    if (fallback == nullptr) throw InvalidArgument(Str("required attribute '", name, "' is missing"));
    return *fallback;
  }
  return value;
}

inline bool IsPowerOfTwo(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

// K x N weight, blocks of `block` along K (block == 0: one block spanning K, i.e. per channel).
struct DequantParams {
  int64_t K = 0;
  int64_t N = 0;
  int64_t block = 0;   // as given (0 = per channel)
  int64_t group = 0;   // elements per scale along K (block, or K when per channel)
  int64_t blocks = 0;  // scales per output channel
  int64_t k_pad = 0;   // K rounded up to whole groups
  int64_t panels = 0;  // output channels come in panels of 32

  static DequantParams Make(int64_t K, int64_t N, int64_t block) {
    DequantParams p;
    p.K = K;
    p.N = N;
    p.block = block;
    p.group = block == 0 ? K : block;
    p.blocks = (K + p.group - 1) / p.group;
    p.k_pad = p.blocks * p.group;
    p.panels = (N + 31) / 32;
    return p;
  }
};

inline std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

inline const char* TypeStr(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    default: return "another type";
  }
}

// Shapes and types of a call's inputs, as ValidateIo checks them.
struct IoShapes {
  std::vector<int64_t> a, b, scales, bias, scale2, offset;
  bool has_bias = false;
  bool has_scale2 = false;  // NF4MatMul's absmax_scale (input 4)
  bool has_offset = false;  // NF4MatMul's absmax_offset (input 5)
  ONNXTensorElementDataType scale_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  ONNXTensorElementDataType scale2_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  ONNXTensorElementDataType offset_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;

  // Input i of the node, or a null value when the node has fewer inputs or leaves it out ("").
  static Ort::ConstValue Optional(const Ort::KernelContext& ctx, size_t i) {
    return ctx.GetInputCount() > i ? ctx.GetInput(i) : Ort::ConstValue{};
  }

  // Inputs: A, B, scales[, bias][, absmax_scale, absmax_offset] (4 and 5: NF4MatMul only).
  static IoShapes Read(const Ort::KernelContext& ctx) {
    IoShapes io;
    io.a = ctx.GetInput(0).GetTensorTypeAndShapeInfo().GetShape();
    io.b = ctx.GetInput(1).GetTensorTypeAndShapeInfo().GetShape();
    auto s_info = ctx.GetInput(2).GetTensorTypeAndShapeInfo();
    io.scales = s_info.GetShape();
    io.scale_type = s_info.GetElementType();
    if (auto bias = Optional(ctx, 3)) {
      io.has_bias = true;
      io.bias = bias.GetTensorTypeAndShapeInfo().GetShape();
    }
    if (auto s2 = Optional(ctx, 4)) {
      auto info = s2.GetTensorTypeAndShapeInfo();
      io.has_scale2 = true;
      io.scale2 = info.GetShape();
      io.scale2_type = info.GetElementType();
    }
    if (auto off = Optional(ctx, 5)) {
      auto info = off.GetTensorTypeAndShapeInfo();
      io.has_offset = true;
      io.offset = info.GetShape();
      io.offset_type = info.GetElementType();
    }
    return io;
  }
};

// Entries of absmax_scale for a double-quantized scale tensor [panels, blocks, 32]: one per 256
// scales (passes/onnx_compress/numerics/nf4.py, DQ_BLOCK); the 32 scales of one (panel, block)
// row r share entry r / 8.
inline constexpr int64_t kDqBlock = 256;
inline constexpr int kDqRowShift = 3;  // scale row r of 32 -> its scale2 entry r >> 3
static_assert(kDqBlock == (int64_t{32} << kDqRowShift), "256 scales (8 rows of 32) per scale2 entry");
inline int64_t DqScaleCount(const DequantParams& p) { return (p.panels * p.blocks * 32 + kDqBlock - 1) / kDqBlock; }

// Rows of A: the product of all but its last dimension.
inline int64_t Rows(const IoShapes& io) {
  int64_t m = 1;
  for (size_t i = 0; i + 1 < io.a.size(); ++i) m *= io.a[i];
  return m;
}

// Checks shared by the CPU and CUDA kernels of both ops; returns M (rows of A).
// B is [panels, k_pad, bytes_per_k] and the scales [panels, blocks, 32] (panel layout).
// double_quant: the scales may also be int8 codes with absmax_scale / absmax_offset (NF4MatMul).
inline int64_t ValidateIo(const IoShapes& io, const DequantParams& p, int64_t bytes_per_k,
                          ONNXTensorElementDataType a_type, const char* scale_name, bool double_quant = false) {
  if (io.a.size() < 2) throw InvalidArgument(Str("A must have rank >= 2, got shape ", ShapeStr(io.a)));
  if (io.a.back() != p.K) throw InvalidArgument(Str("A's last dimension must be K=", p.K, ", got shape ", ShapeStr(io.a)));
  if (io.b != std::vector<int64_t>{p.panels, p.k_pad, bytes_per_k})
    throw InvalidArgument(Str("B must have shape [", p.panels, ", ", p.k_pad, ", ", bytes_per_k, "] for K=", p.K,
                              ", N=", p.N, ", got ", ShapeStr(io.b)));
  if (io.scales != std::vector<int64_t>{p.panels, p.blocks, 32})
    throw InvalidArgument(Str(scale_name, " must have shape [", p.panels, ", ", p.blocks, ", 32], got ",
                              ShapeStr(io.scales)));
  const bool dq = double_quant && io.scale_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  if (io.scale_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && io.scale_type != a_type && !dq) {
    if (double_quant)
      throw InvalidArgument(Str(scale_name, " must be float32, A's type (", TypeStr(a_type),
                                ") or int8 (double-quantized), got ", TypeStr(io.scale_type)));
    throw InvalidArgument(Str(scale_name, " must be float32 or A's type (", TypeStr(a_type), "), got ",
                              TypeStr(io.scale_type)));
  }
  if (io.has_bias && (io.bias.size() != 1 || io.bias[0] != p.N))
    throw InvalidArgument(Str("bias must have shape [", p.N, "], got ", ShapeStr(io.bias)));
  if (!dq && !io.has_scale2 && !io.has_offset) return Rows(io);  // the plain (float) scales: done
  const std::string scale2_name = Str(scale_name, "_scale"), offset_name = Str(scale_name, "_offset");
  const std::string given = io.has_scale2 && io.has_offset ? Str(scale2_name, " and ", offset_name)
                            : io.has_scale2               ? Str("only ", scale2_name)
                            : io.has_offset               ? Str("only ", offset_name)
                                                          : std::string("neither");
  if (dq) {
    if (!io.has_scale2 || !io.has_offset)
      throw InvalidArgument(Str(scale_name, " is int8 (double-quantized): ", scale2_name, " and ", offset_name,
                                " (inputs 4 and 5) are required, got ", given));
    if (io.scale2_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw InvalidArgument(Str(scale2_name, " must be float32, got ", TypeStr(io.scale2_type)));
    if (io.scale2 != std::vector<int64_t>{DqScaleCount(p)})
      throw InvalidArgument(Str(scale2_name, " must have shape [", DqScaleCount(p), "] (one entry per ", kDqBlock,
                                " of the ", p.panels * p.blocks * 32, " ", scale_name, " entries), got ",
                                ShapeStr(io.scale2)));
    if (io.offset_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw InvalidArgument(Str(offset_name, " must be float32, got ", TypeStr(io.offset_type)));
    if (!io.offset.empty() && io.offset != std::vector<int64_t>{1})
      throw InvalidArgument(Str(offset_name, " must have shape [1] or [], got ", ShapeStr(io.offset)));
  } else if (io.has_scale2 || io.has_offset) {
    throw InvalidArgument(Str(scale2_name, " and ", offset_name, " are only for an int8 (double-quantized) ",
                              scale_name, ", got a ", TypeStr(io.scale_type), " ", scale_name, " with ", given));
  }
  return Rows(io);
}

// ---- float16 / bfloat16 <-> float (bit exact, round to nearest even) ------------------------
inline float HalfToFloat(uint16_t h) { return Ort::Float16_t::FromBits(h).ToFloat(); }
inline uint16_t FloatToHalf(float f) { return Ort::Float16_t(f).val; }
inline float BFloat16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t FloatToBFloat16(float f) { return Ort::BFloat16_t(f).val; }

}  // namespace oco
