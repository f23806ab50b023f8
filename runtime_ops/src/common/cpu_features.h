// Which vector instruction set the CPU kernels may use, decided once at run time.
#pragma once

namespace oco {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best ISA this CPU supports among those compiled in (AVX-512F+BW+VL, AVX2+FMA+F16C).
// A session can ask for the portable kernels instead with the session config entry
// "onnx_compress.cpu_kernels" = "portable" (register.cc), for tests and comparisons.
Isa DetectIsa();
const char* IsaName(Isa isa);

}  // namespace oco
