// The CPU engine shared by NF4MatMul and Int8MatMul: Y = A @ dequant(B) (+ bias).
//
// Both weights use the panel layout (passes/onnx_compress/numerics/nf4.py and int8.py): output
// channels in panels of 32, B [N_pad/32, K_pad, bytes_per_k] with one k-row of a panel holding
// its 32 channels side by side, and scales [N_pad/32, blocks, 32]. A `Decoder` turns one k-row
// into two vectors of 16 floats (channels 0-15 and 16-31 of the panel); everything else is
// shared:
//
// * Small M (<= kGemvMaxRows): GEMV. Each panel is one contiguous stream along K; a k-row is
//   decoded once and multiplied into up to 4 rows of A (broadcast), partial sums per block are
//   scaled by the block's 32 scales; parallel over panels with ORT's intra-op thread pool.
// * Large M: GEMM. For chunks of K, panels are decoded (scaled) into float panels [kc][32] that
//   stay in cache, and a 12x32 register-tiled micro-kernel (24 accumulators, A broadcast from
//   its rows) accumulates into Y. Decoding costs N*K once per call; the product M*N*K.
//
// Kernels exist for AVX-512 (F, BW, VL) and as portable C++ (any CPU); the choice is made at
// run time (cpu_features.h).
//
// Scale types S: float, float16 (uint16_t bits), or int8_t for NF4MatMul's double-quantized
// absmax: the 32 scales of a (panel, block) row are int8 codes c and the row r = panel * blocks
// + block shares one float32 scale2[r / 8] (256 scales per entry), decoded where the scales are
// read as float(c) * scale2[r / 8] + offset (a multiply and an add, each rounded: the same
// float32 values as numerics/nf4.py's double_dequantize). LoadScales / ScaleToFloat get the row
// for that; the float paths ignore it.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu_features.h"
#include "common/ops_common.h"

#define OCO_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace oco {

inline constexpr int64_t kPanel = 32;
inline constexpr int64_t kGemvMaxRows = 8;
inline constexpr int kGemvRowGroup = 4;
inline constexpr int64_t kGemmKc = 256;     // K chunk of the GEMM: a float panel is kc * 32 * 4 = 32 KiB
inline constexpr int64_t kGemmPanels = 4;   // panels per GEMM task (128 columns)
inline constexpr int kGemmMr = 12;          // rows of the micro-kernel

template <typename S>  // scale type: float, uint16_t holding float16, or int8_t (double-quantized)
struct Args {
  const uint8_t* b = nullptr;  // [panels, k_pad, bytes_per_k]
  const S* scales = nullptr;   // [panels, blocks, 32]
  const float* a = nullptr;    // [m, lda], zero beyond K
  int64_t lda = 0;
  float* y = nullptr;          // [m, ldy]
  int64_t ldy = 0;
  DequantParams p;
  const float* scale2 = nullptr;  // int8_t scales only: [ceil(panels * blocks * 32 / 256)]
  float offset = 0.0f;            // int8_t scales only
};

// One scale as float; row: its (panel, block) row (double-quantized scales only).
template <typename S>
inline float ScaleToFloat(S s, int64_t row, const Args<S>& g) {
  if constexpr (std::is_same_v<S, float>) {
    return s;
  } else if constexpr (std::is_same_v<S, int8_t>) {
    const float scaled = static_cast<float>(s) * g.scale2[row >> kDqRowShift];
    return scaled + g.offset;
  } else {
    return HalfToFloat(s);
  }
}

template <typename F>
void ParallelFor(const Ort::KernelContext& ctx, size_t total, F& fn) {
  if (total == 0) return;
  if (total == 1) {
    fn(size_t{0});
    return;
  }
  ctx.ParallelFor([](void* data, size_t i) { (*static_cast<F*>(data))(i); }, total, 0, &fn);
}

// ---- portable kernels (any CPU) ------------------------------------------------------------
template <typename Decoder, typename S>
void GemvPortable(const Args<S>& g, int mr, int64_t panel) {
  const DequantParams& p = g.p;
  const int64_t n0 = panel * kPanel, nvalid = std::min(kPanel, p.N - n0);
  const uint8_t* b = g.b + panel * p.k_pad * Decoder::kBytesPerK;
  const S* s = g.scales + panel * p.blocks * kPanel;
  const int64_t row0 = panel * p.blocks;
  for (int m = 0; m < mr; ++m) {
    float acc[kPanel] = {};
    for (int64_t blk = 0; blk < p.blocks; ++blk) {
      float part[kPanel] = {};
      for (int64_t k = blk * p.group; k < (blk + 1) * p.group; ++k) {
        const float av = g.a[m * g.lda + k];
        for (int j = 0; j < kPanel; ++j) part[j] += Decoder::Scalar(b + k * Decoder::kBytesPerK, j) * av;
      }
      for (int j = 0; j < kPanel; ++j) acc[j] += part[j] * ScaleToFloat(s[blk * kPanel + j], row0 + blk, g);
    }
    for (int64_t j = 0; j < nvalid; ++j) g.y[m * g.ldy + n0 + j] = acc[j];
  }
}

template <typename Decoder, typename S>
void DecodePanelPortable(const Args<S>& g, int64_t panel, int64_t k0, int64_t kc, float* out) {
  const DequantParams& p = g.p;
  const uint8_t* b = g.b + panel * p.k_pad * Decoder::kBytesPerK;
  const S* s = g.scales + panel * p.blocks * kPanel;
  for (int64_t k = k0; k < k0 + kc; ++k) {
    const int64_t blk = k / p.group;
    for (int j = 0; j < kPanel; ++j)
      out[(k - k0) * kPanel + j] =
          Decoder::Scalar(b + k * Decoder::kBytesPerK, j) * ScaleToFloat(s[blk * kPanel + j], panel * p.blocks + blk, g);
  }
}

inline void MicroKernelPortable(int mr, const float* a, int64_t lda, const float* bp, int64_t kc, float* y,
                                int64_t ldy, int64_t nvalid, bool first) {
  nvalid = std::min(nvalid, kPanel);  // the caller passes the columns left from this panel on
  for (int i = 0; i < mr; ++i) {
    float c[kPanel] = {};
    for (int64_t k = 0; k < kc; ++k)
      for (int j = 0; j < kPanel; ++j) c[j] += a[i * lda + k] * bp[k * kPanel + j];
    for (int64_t j = 0; j < nvalid; ++j) y[i * ldy + j] = first ? c[j] : y[i * ldy + j] + c[j];
  }
}

// ---- AVX-512 kernels -----------------------------------------------------------------------
// The 32 scales at s (scale row `row`, used only by double-quantized scales) as two vectors.
template <typename S>
OCO_AVX512 inline void LoadScales(const S* s, int64_t row, const Args<S>& g, __m512& lo, __m512& hi) {
  if constexpr (std::is_same_v<S, float>) {
    lo = _mm512_loadu_ps(s);
    hi = _mm512_loadu_ps(s + 16);
  } else if constexpr (std::is_same_v<S, int8_t>) {
    // codes -> float, times the row's scale2, plus the offset: rounded after the multiply (an
    // explicit-rounding multiply, which the compiler cannot fuse with the add into an FMA).
    const __m512 scale2 = _mm512_set1_ps(g.scale2[row >> kDqRowShift]), offset = _mm512_set1_ps(g.offset);
    const __m512 c_lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))));
    const __m512 c_hi =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16))));
    lo = _mm512_add_ps(_mm512_mul_round_ps(c_lo, scale2, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), offset);
    hi = _mm512_add_ps(_mm512_mul_round_ps(c_hi, scale2, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), offset);
  } else {
    lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
    hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 16)));
  }
}

OCO_AVX512 inline __mmask16 TailMask(int64_t valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1u);
}

// MR rows of A against one panel; U independent accumulator sets hide the FMA latency.
template <typename Decoder, typename S, int MR, int U>
OCO_AVX512 void GemvAvx512(const Args<S>& g, int64_t panel) {
  const DequantParams& p = g.p;
  const Decoder dec;
  const uint8_t* b = g.b + panel * p.k_pad * Decoder::kBytesPerK;
  const S* s = g.scales + panel * p.blocks * kPanel;
  __m512 acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int64_t blk = 0; blk < p.blocks; ++blk) {
    __m512 part[U][MR][2];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MR; ++m) part[u][m][0] = part[u][m][1] = _mm512_setzero_ps();
    const int64_t k0 = blk * p.group, k1 = k0 + p.group;
    int64_t k = k0;
    for (; k + U <= k1; k += U) {
      for (int u = 0; u < U; ++u) {
        __m512 lo, hi;
        dec(b + (k + u) * Decoder::kBytesPerK, lo, hi);
        for (int m = 0; m < MR; ++m) {
          const __m512 av = _mm512_set1_ps(g.a[m * g.lda + k + u]);
          part[u][m][0] = _mm512_fmadd_ps(lo, av, part[u][m][0]);
          part[u][m][1] = _mm512_fmadd_ps(hi, av, part[u][m][1]);
        }
      }
    }
    for (; k < k1; ++k) {  // only when the group is not a multiple of U (per-channel int8)
      __m512 lo, hi;
      dec(b + k * Decoder::kBytesPerK, lo, hi);
      for (int m = 0; m < MR; ++m) {
        const __m512 av = _mm512_set1_ps(g.a[m * g.lda + k]);
        part[0][m][0] = _mm512_fmadd_ps(lo, av, part[0][m][0]);
        part[0][m][1] = _mm512_fmadd_ps(hi, av, part[0][m][1]);
      }
    }
    __m512 s_lo, s_hi;
    LoadScales(s + blk * kPanel, panel * p.blocks + blk, g, s_lo, s_hi);
    for (int m = 0; m < MR; ++m) {
      for (int u = 1; u < U; ++u) {
        part[0][m][0] = _mm512_add_ps(part[0][m][0], part[u][m][0]);
        part[0][m][1] = _mm512_add_ps(part[0][m][1], part[u][m][1]);
      }
      acc[m][0] = _mm512_fmadd_ps(part[0][m][0], s_lo, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(part[0][m][1], s_hi, acc[m][1]);
    }
  }
  const int64_t n0 = panel * kPanel, nvalid = std::min(kPanel, p.N - n0);
  for (int m = 0; m < MR; ++m) {
    float* y = g.y + m * g.ldy + n0;
    _mm512_mask_storeu_ps(y, TailMask(nvalid), acc[m][0]);
    _mm512_mask_storeu_ps(y + 16, TailMask(nvalid - 16), acc[m][1]);
  }
}

template <typename Decoder, typename S>
OCO_AVX512 void DecodePanelAvx512(const Args<S>& g, int64_t panel, int64_t k0, int64_t kc, float* out) {
  const DequantParams& p = g.p;
  const Decoder dec;
  const uint8_t* b = g.b + panel * p.k_pad * Decoder::kBytesPerK;
  const S* s = g.scales + panel * p.blocks * kPanel;
  int64_t blk = -1;
  __m512 s_lo = _mm512_setzero_ps(), s_hi = _mm512_setzero_ps();
  for (int64_t k = k0; k < k0 + kc; ++k) {
    if (k / p.group != blk) {
      blk = k / p.group;
      LoadScales(s + blk * kPanel, panel * p.blocks + blk, g, s_lo, s_hi);
    }
    __m512 lo, hi;
    dec(b + k * Decoder::kBytesPerK, lo, hi);
    _mm512_storeu_ps(out + (k - k0) * kPanel, _mm512_mul_ps(lo, s_lo));
    _mm512_storeu_ps(out + (k - k0) * kPanel + 16, _mm512_mul_ps(hi, s_hi));
  }
}

// C[MR x 32] += A[MR x kc] * P[kc x 32]; A rows are lda apart, P is a decoded float panel.
template <int MR>
OCO_AVX512 void MicroKernelAvx512(const float* a, int64_t lda, const float* bp, int64_t kc, float* y, int64_t ldy,
                                  int64_t nvalid, bool first) {
  __m512 c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(bp + k * kPanel);
    const __m512 b1 = _mm512_loadu_ps(bp + k * kPanel + 16);
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * lda + k]);
      c[i][0] = _mm512_fmadd_ps(av, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(av, b1, c[i][1]);
    }
  }
  const __mmask16 m0 = TailMask(nvalid), m1 = TailMask(nvalid - 16);
  for (int i = 0; i < MR; ++i) {
    float* row = y + i * ldy;
    if (!first) {
      c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(m0, row));
      c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(m1, row + 16));
    }
    _mm512_mask_storeu_ps(row, m0, c[i][0]);
    _mm512_mask_storeu_ps(row + 16, m1, c[i][1]);
  }
}

// ---- dispatch ------------------------------------------------------------------------------
template <typename Decoder, typename S>
void Gemv(Isa isa, const Args<S>& g, int mr, int64_t panel) {
  if (isa != Isa::kAvx512) return GemvPortable<Decoder, S>(g, mr, panel);
  switch (mr) {
    case 1: return GemvAvx512<Decoder, S, 1, 4>(g, panel);
    case 2: return GemvAvx512<Decoder, S, 2, 2>(g, panel);
    case 3: return GemvAvx512<Decoder, S, 3, 1>(g, panel);
    default: return GemvAvx512<Decoder, S, 4, 1>(g, panel);
  }
}

template <typename Decoder, typename S>
void DecodePanel(Isa isa, const Args<S>& g, int64_t panel, int64_t k0, int64_t kc, float* out) {
  if (isa == Isa::kAvx512) return DecodePanelAvx512<Decoder, S>(g, panel, k0, kc, out);
  DecodePanelPortable<Decoder, S>(g, panel, k0, kc, out);
}

inline void MicroKernel(Isa isa, int mr, const float* a, int64_t lda, const float* bp, int64_t kc, float* y,
                        int64_t ldy, int64_t nvalid, bool first) {
  if (isa != Isa::kAvx512) return MicroKernelPortable(mr, a, lda, bp, kc, y, ldy, nvalid, first);
  // Full tiles use 12 rows; the remainder is covered by 8 / 4 / 2 / 1-row tiles.
  while (mr > 0) {
    int step = mr >= 12 ? 12 : mr >= 8 ? 8 : mr >= 4 ? 4 : mr >= 2 ? 2 : 1;
    switch (step) {
      case 12: MicroKernelAvx512<12>(a, lda, bp, kc, y, ldy, nvalid, first); break;
      case 8: MicroKernelAvx512<8>(a, lda, bp, kc, y, ldy, nvalid, first); break;
      case 4: MicroKernelAvx512<4>(a, lda, bp, kc, y, ldy, nvalid, first); break;
      case 2: MicroKernelAvx512<2>(a, lda, bp, kc, y, ldy, nvalid, first); break;
      default: MicroKernelAvx512<1>(a, lda, bp, kc, y, ldy, nvalid, first); break;
    }
    a += step * lda;
    y += step * ldy;
    mr -= step;
  }
}

// ---- the kernel ----------------------------------------------------------------------------
// Format: kOp, kScaleName, kBType, kDoubleQuant, Decoder, static DequantParams Params(info).
// kDoubleQuant: the scales may be int8 with inputs 4 and 5 (scale2, offset), as for NF4MatMul.
template <typename Format, typename T>  // T: float, or uint16_t holding float16
class DequantMatMulCpuKernel {
 public:
  using Decoder = typename Format::Decoder;

  DequantMatMulCpuKernel(const OrtKernelInfo* info, Isa isa) : p_(Format::Params(Ort::ConstKernelInfo(info))), isa_(isa) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return Guard(Format::kOp, [&] { Compute(Ort::KernelContext(context)); });
  }

 private:
  void Compute(const Ort::KernelContext& ctx) {
    auto a = ctx.GetInput(0);
    auto b = ctx.GetInput(1);
    auto s = ctx.GetInput(2);
    const IoShapes io = IoShapes::Read(ctx);
    const bool has_bias = io.has_bias;
    const auto a_type = a.GetTensorTypeAndShapeInfo().GetElementType();
    const int64_t m = ValidateIo(io, p_, Decoder::kBytesPerK, a_type, Format::kScaleName, Format::kDoubleQuant);
    std::vector<int64_t> y_shape(io.a.begin(), io.a.end() - 1);
    y_shape.push_back(p_.N);
    auto y = ctx.GetOutput(0, y_shape);
    if (m == 0) return;

    // A as float32, [m, k_pad] with zeros beyond K.
    const T* a_data = a.GetTensorData<T>();
    std::vector<float> a_f(static_cast<size_t>(m * p_.k_pad), 0.0f);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t k = 0; k < p_.K; ++k) a_f[r * p_.k_pad + k] = ToFloat(a_data[r * p_.K + k]);

    std::vector<float> y_f;
    float* y32 = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      y32 = y.GetTensorMutableData<float>();
    } else {
      y_f.resize(static_cast<size_t>(m * p_.N));
      y32 = y_f.data();
    }
    const auto* b_data = static_cast<const uint8_t*>(b.GetTensorRawData());
    if (io.scale_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      Run<float>(ctx, m, a_f.data(), b_data, s.GetTensorData<float>(), y32);
    } else if (io.scale_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) {
      if constexpr (Format::kDoubleQuant) {  // ValidateIo checked inputs 4 and 5
        Run<int8_t>(ctx, m, a_f.data(), b_data, s.GetTensorData<int8_t>(), y32, ctx.GetInput(4).GetTensorData<float>(),
                    ctx.GetInput(5).GetTensorData<float>()[0]);
      }
    } else {
      Run<uint16_t>(ctx, m, a_f.data(), b_data, static_cast<const uint16_t*>(s.GetTensorRawData()), y32);
    }

    if (has_bias) {
      const T* bias = ctx.GetInput(3).GetTensorData<T>();
      for (int64_t r = 0; r < m; ++r)
        for (int64_t n = 0; n < p_.N; ++n) y32[r * p_.N + n] += ToFloat(bias[n]);
    }
    if constexpr (!std::is_same_v<T, float>) {
      T* out = y.GetTensorMutableData<T>();
      for (int64_t i = 0; i < m * p_.N; ++i) out[i] = FloatToHalf(y32[i]);
    }
  }

  static float ToFloat(T v) {
    if constexpr (std::is_same_v<T, float>) {
      return v;
    } else {
      return HalfToFloat(v);
    }
  }

  template <typename S>
  void Run(const Ort::KernelContext& ctx, int64_t m, const float* a, const uint8_t* b, const S* scales, float* y,
           const float* scale2 = nullptr, float offset = 0.0f) {
    Args<S> g;
    g.b = b;
    g.scales = scales;
    g.scale2 = scale2;
    g.offset = offset;
    g.lda = p_.k_pad;
    g.ldy = p_.N;
    g.p = p_;
    if (m <= kGemvMaxRows) {
      for (int64_t m0 = 0; m0 < m; m0 += kGemvRowGroup) {
        const int mr = static_cast<int>(std::min<int64_t>(kGemvRowGroup, m - m0));
        g.a = a + m0 * g.lda;
        g.y = y + m0 * g.ldy;
        auto task = [&](size_t panel) { Gemv<Decoder, S>(isa_, g, mr, static_cast<int64_t>(panel)); };
        ParallelFor(ctx, static_cast<size_t>(p_.panels), task);
      }
      return;
    }
    g.a = a;
    g.y = y;
    const int64_t tasks = (p_.panels + kGemmPanels - 1) / kGemmPanels;
    auto task = [&](size_t t) {
      const int64_t p0 = static_cast<int64_t>(t) * kGemmPanels, p1 = std::min(p_.panels, p0 + kGemmPanels);
      std::vector<float> panels(static_cast<size_t>((p1 - p0) * kGemmKc * kPanel));
      for (int64_t k0 = 0; k0 < p_.k_pad; k0 += kGemmKc) {
        const int64_t kc = std::min(kGemmKc, p_.k_pad - k0);
        for (int64_t pi = p0; pi < p1; ++pi)
          DecodePanel<Decoder, S>(isa_, g, pi, k0, kc, panels.data() + (pi - p0) * kGemmKc * kPanel);
        for (int64_t r0 = 0; r0 < m; r0 += kGemmMr) {
          const int mr = static_cast<int>(std::min<int64_t>(kGemmMr, m - r0));
          for (int64_t pi = p0; pi < p1; ++pi)
            MicroKernel(isa_, mr, a + r0 * g.lda + k0, g.lda, panels.data() + (pi - p0) * kGemmKc * kPanel, kc,
                        y + r0 * g.ldy + pi * kPanel, g.ldy, p_.N - pi * kPanel, k0 == 0);
        }
      }
    };
    ParallelFor(ctx, static_cast<size_t>(tasks), task);
  }

  DequantParams p_;
  Isa isa_;
};

// The ORT-facing op description; one instance per activation type (CPU execution provider).
// Inputs: A, B, scales[, bias], and with Format::kDoubleQuant [, scale2, offset] (float32).
template <typename Format, typename T, ONNXTensorElementDataType kType>
struct DequantMatMulCpuOp
    : Ort::CustomOpBase<DequantMatMulCpuOp<Format, T, kType>, DequantMatMulCpuKernel<Format, T>, true> {
  // portable: always the portable C++ kernels (a session's "onnx_compress.cpu_kernels" entry).
  explicit DequantMatMulCpuOp(bool portable = false) : portable_(portable) {}
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return Guard(Format::kOp, [&] {
      *kernel = new DequantMatMulCpuKernel<Format, T>(info, portable_ ? Isa::kScalar : DetectIsa());
    });
  }
  const char* GetName() const { return Format::kOp; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return Format::kDoubleQuant ? 6 : 4; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    if (i == 1) return Format::kBType;
    if (i == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // float32, A's type (or int8): checked in Compute
    if (i >= 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;      // scale2, offset
    return kType;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i >= 3 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*i*/) const { return kType; }

 private:
  bool portable_;
};

}  // namespace oco
