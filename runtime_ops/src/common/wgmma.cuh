// NF4 and Int8 with float16 A on sm_90a tensor cores: wgmma with the weights as the A operand
// taken from registers (decoded there, as Nf4MmaKernel does for mma.sync) and A's rows as the B
// operand in shared memory (128-byte swizzle). Included by dequant_cuda.cuh (namespace oco::cuda).
//
// CTA = three warpgroups. Warpgroups 0-1 (kWgThreads threads, the consumers) decode and run the
// wgmmas on a tile of kWgPanels = 4 panels (128 channels) x BN rows of A; warpgroup 2 (the
// producers) only loads, K in stages of kWgK rows through a ring of WgLayout::kStages slots.
// Consumer warpgroup w takes panels 2w and 2w + 1; in it, warp i takes panel 2w + i / 2 and its
// channel half i % 2 (mma rows 0-7: channels 16h + 2g, rows 8-15: 16h + 2g + 1, g = lane / 4), so
// that the 64 rows of one m64nBNk16 are 2 panels. Lane (g, c) takes k-rows 2c, 2c + 1, 2c + 8,
// 2c + 9 of each 16-row step (the fragment's natural k order, as the shared B tile is read in k
// order by the hardware):
// * NF4: bytes 2g, 2g + 1 of each k-row (16 bytes: byte j = channels j and 16 + j), each looked up
//   in the per-lane pair table, its half's nibble kept;
// * Int8: bytes 16h + 2g, 16h + 2g + 1 (32 bytes: byte j = channel j), made float16 exactly by the
//   exponent trick: 0x6400 | (byte ^ 0x80) is 1024 + 128 + code, minus 1152 (HSUB2). A k-row's
//   two 16-byte halves are swapped in shared memory in rows 4-7 of every 8, so that the lanes of
//   c = 0, 1 and c = 2, 3 (64 bytes apart) read different banks.
// Then each is scaled by the channel's scale (HMUL2: the dequantized fp16 weight, as the other
// float16 kernels make it). Accumulation in fp32.
//
// Loads: A's tile of a stage is one TMA copy (a tensor map of A made on the host per launch: 128-
// byte swizzle, zeros beyond the tensor); the weights and scales are cp.async by the 128
// producer threads. A slot has a `full` mbarrier (the TMA's bytes and one arrival per producer
// thread once its cp.async are done) and an `empty` one (one arrival per consumer warp once the
// wgmmas that read the slot are complete): no CTA-wide barrier in the loop, the loads run up to
// kStages - 2 stages ahead. The producers give their registers to the consumers (setmaxnreg:
// the register file is split among the SM's four quarters, so three warpgroups cap every thread
// at 168 registers, too few for BN = 256).
//
// The grid (PlanWgGrid): one CTA per tile (and split of K), or the stream-K schedule (kSk, below
// the kernel's pieces): 132 CTAs over the tiles x stages, a CTA's range cut into segments.
//
// H100 (docs/benchmarks.md, kernel_bench WGFORM, same run): against the first form of this
// kernel (NF4), where every thread issued cp.async for A and all met at a CTA barrier each stage,
// 4096x11008 M = 256 88-90 -> 67-68 us, 11008x4096 M = 256 76-77 -> 54.5 us, M = 1024 236-239 ->
// 143-144 us, 8192x28672 M = 1024 1172 -> 771-827 us (cuBLAS fp16: 677-745 us).
// The body needs sm_90a (wgmma, setmaxnreg); other targets compile it empty and never launch it.
#pragma once

// Shared memory: NF4's pair table, then (1024-aligned) kStages slots, then the mbarriers.
template <class Dec, typename S, int BN>
struct WgLayout {
  static constexpr bool kNf4 = std::is_same_v<Dec, Nf4Decoder>;
  static constexpr int kTable = kNf4 ? kMmaTableBytes : 0;
  static constexpr int kA = BN * 128;                                      // [BN][64 k] fp16, 128B-swizzled
  static constexpr int kW = kWgPanels * kWgK * Dec::kBytesPerK;            // [panel][64 k-rows][row bytes]
  static constexpr int kRowBytes = kPanel * static_cast<int>(sizeof(S));   // a scale row as stored
  static constexpr int kS = kWgPanels * 2 * kRowBytes;                     // [panel][32-row piece][row]
  static constexpr int kS2 = std::is_same_v<S, int8_t> ? kWgPanels * 2 * 4 : 0;
  static constexpr int kStage = (kA + kW + kS + kS2 + 1023) / 1024 * 1024;
  static constexpr int kBars = 2 * 8 * 8;  // full[8], empty[8]
  static constexpr int kFit = (kMaxSmemPerCta - 1024 - kTable - 1024 - kBars) / kStage;
  // H100: NF4 4 at BN = 256, 7 at 128, 8 below; Int8 5 at 256, 8 below
  static constexpr int kStages = kFit < 8 ? kFit : 8;
  static_assert(kStages >= 3, "at least three stages fit");
  static constexpr size_t kSmem = kTable + 1024 + static_cast<size_t>(kStages) * kStage + kBars;
};

template <int N>
__device__ __forceinline__ void WgmmaRegA(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc);
template <>
__device__ __forceinline__ void WgmmaRegA<16>(float (&d)[8], const uint32_t (&a)[4], uint64_t desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, "
      "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
#endif
}

template <>
__device__ __forceinline__ void WgmmaRegA<32>(float (&d)[16], const uint32_t (&a)[4], uint64_t desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
#endif
}

template <>
__device__ __forceinline__ void WgmmaRegA<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
#endif
}

template <>
__device__ __forceinline__ void WgmmaRegA<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
#endif
}

template <>
__device__ __forceinline__ void WgmmaRegA<256>(float (&d)[128], const uint32_t (&a)[4], uint64_t desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "{%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
#endif
}

__device__ __forceinline__ void WgmmaFence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving reads or writes of an accumulator across the asm around it.
__device__ __forceinline__ void PinReg(float& r) { asm volatile("" : "+f"(r)::"memory"); }
// Descriptor of a K-major tile with 128-byte swizzle (8-row atoms of 1024 bytes) at shared `addr`.
__device__ __forceinline__ uint64_t WgDesc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{64} << 32) |
         (uint64_t{1} << 62);
}

// A stage's weights (one 16-byte piece per k-row and panel, NF4; two, Int8: in rows 4-7 of every 8
// the second first), scale rows (two 32-row pieces per panel) and, for double-quantized scales,
// their scale2 words: cp.async by the kNt producer threads, thread t0 taking pieces t0, t0 + kNt,
// ... Since kNt is a multiple of a panel's pieces per stage, a thread's k-row and piece are the
// same in every panel it loads, so its addresses are one base and a fixed panel stride: a few
// instructions per copy. (The producers issue every stage's copies for the whole CTA: when each
// copy recomputed its panel, row and piece by division, about 230 instructions per producer warp
// and stage, the producers were what the consumers waited for; Nsight Compute, Int8 M = 256.)
template <class Dec, typename S, int BN, int kNt>
__device__ __forceinline__ void WgIssueWeights(unsigned char* st, const KernelArgs<__half, S>& g, int p0, int k0,
                                               int t0) {
  using L = WgLayout<Dec, S, BN>;
  constexpr int kPieces = Dec::kBytesPerK / 16;   // 16-byte pieces per k-row
  constexpr int kPerPanel = kPieces * kWgK;        // pieces per panel and stage
  constexpr int kIters = kWgPanels * kPerPanel / kNt;
  constexpr int kPanelStep = kNt / kPerPanel;      // panels between a thread's copies
  static_assert(kNt % kPerPanel == 0 && kIters * kNt == kWgPanels * kPerPanel, "whole panels per round of copies");
  const int panels = static_cast<int>(g.p.panels), k_pad = static_cast<int>(g.p.k_pad);
  const int piece = t0 % kPieces, row = (t0 / kPieces) % kWgK, pi0 = t0 / kPerPanel;
  const int k = k0 + row;
  const int slot = kPieces == 2 ? piece ^ ((row >> 2) & 1) : 0;
  unsigned char* dst = st + L::kA + (pi0 * kWgK + row) * Dec::kBytesPerK + 16 * slot;
  const int64_t stride = static_cast<int64_t>(kPanelStep) * k_pad * Dec::kBytesPerK;
  const uint8_t* src = g.b + (static_cast<int64_t>(p0 + pi0) * k_pad + k) * Dec::kBytesPerK + 16 * piece;
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const bool valid = p0 + pi0 + i * kPanelStep < panels && k < k_pad;  // else zeros
    CpAsync16(dst + i * kPanelStep * kWgK * Dec::kBytesPerK, valid ? src + i * stride : g.b, valid);
  }
  const int shift = min(g.p.group_shift, 31), last_block = static_cast<int>(g.p.blocks) - 1;  // per channel: block 0
  constexpr int kSChunks = L::kRowBytes / 16;
  static_assert(kWgPanels * 2 * kSChunks <= kNt && kWgPanels * 2 <= kNt, "one scale copy per thread at most");
  if (t0 < kWgPanels * 2 * kSChunks) {
    const int pi = t0 / (2 * kSChunks), sp = (t0 / kSChunks) % 2, c = t0 % kSChunks;
    const int panel = min(p0 + pi, panels - 1);
    const int64_t r = static_cast<int64_t>(panel) * g.p.blocks + min((k0 + 32 * sp) >> shift, last_block);
    CpAsync16(st + L::kA + L::kW + (pi * 2 + sp) * L::kRowBytes + 16 * c,
              reinterpret_cast<const unsigned char*>(g.scales + r * kPanel) + 16 * c, true);
  }
  if constexpr (std::is_same_v<S, int8_t>) {
    if (t0 < kWgPanels * 2) {
      const int panel = min(p0 + t0 / 2, panels - 1);
      const int64_t r = static_cast<int64_t>(panel) * g.p.blocks + min((k0 + 32 * (t0 % 2)) >> shift, last_block);
      CpAsync4(st + L::kA + L::kW + L::kS + 4 * t0, g.scale2 + (r >> kDqRowShift));
    }
  }
}

// The lane's view of a CTA: its panel (pl), channel half, fragment row group and column pair.
struct WgLane {
  int lane, warp, lg, lc, pl, half;
  uint32_t lane4, sel, bsel;
  __device__ explicit WgLane(int tid)
      : lane(tid & 31), warp(tid >> 5), lg(lane >> 2), lc(lane & 3), pl(2 * (warp >> 2) + ((warp & 3) >> 1)),
        half(warp & 1), lane4(4 * lane), sel(half ? 0x7632u : 0x5410u), bsel(half ? 0x3232u : 0x1010u) {}
};

__device__ __forceinline__ uint32_t Hsub2(uint32_t x, uint32_t y) {
  const __half2 r = __hsub2(*reinterpret_cast<const __half2*>(&x), *reinterpret_cast<const __half2*>(&y));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// Decodes the stage at `st` into the kWgK / 16 register fragments of the lane's wgmma A operand.
template <class Dec, typename S, int BN>
__device__ __forceinline__ void WgDecode(const unsigned char* st, uint32_t tab_base, const WgLane& ln, float dq_offset,
                                         uint32_t (&frag)[kWgK / 16][4]) {
  using L = WgLayout<Dec, S, BN>;
  const unsigned char* sp = st + L::kA + L::kW + ln.pl * 2 * L::kRowBytes;
  const unsigned char* s2p = st + L::kA + L::kW + L::kS + ln.pl * 2 * 4;
  // NF4: bytes 2g, 2g + 1 of each 16-byte k-row; Int8: bytes 16h + 2g, 16h + 2g + 1 of each 32-byte
  // one, whose halves are swapped in rows 4-7 of every 8 (k-rows 2c, 2c + 1 (+ 8): when c >= 2)
  const unsigned char* wp = L::kNf4 ? st + L::kA + ln.pl * (kWgK * 16) + 2 * ln.lg
                                    : st + L::kA + ln.pl * (kWgK * 32) + 16 * (ln.half ^ (ln.lc >> 1)) + 2 * ln.lg;
  uint32_t sc0 = 0, sc1 = 0;
#pragma unroll
  for (int s = 0; s < kWgK / 16; ++s) {
    if (s % 2 == 0) {  // a 32-row scale piece per two steps
      uint32_t p0s, p1s;
      MmaScalePairs<S>(sp + (s / 2) * L::kRowBytes, s2p + (s / 2) * 4, dq_offset, ln.lg, p0s, p1s);
      sc0 = __byte_perm(p0s, 0, ln.bsel);
      sc1 = __byte_perm(p1s, 0, ln.bsel);
    }
    uint32_t(&a)[4] = frag[s];
    if constexpr (L::kNf4) {
      uint32_t v0[4], v1[4];
#pragma unroll
      for (int rr = 0; rr < 4; ++rr) {
        const int row = 16 * s + 2 * ln.lc + (rr & 1) + 8 * (rr >> 1);
        const uint32_t w = *reinterpret_cast<const unsigned short*>(wp + row * 16);
        v0[rr] = MmaPair<0>(tab_base, w, ln.lane4);
        v1[rr] = MmaPair<1>(tab_base, w, ln.lane4);
      }
      a[0] = Hmul2(__byte_perm(v0[0], v0[1], ln.sel), sc0);
      a[1] = Hmul2(__byte_perm(v1[0], v1[1], ln.sel), sc1);
      a[2] = Hmul2(__byte_perm(v0[2], v0[3], ln.sel), sc0);
      a[3] = Hmul2(__byte_perm(v1[2], v1[3], ln.sel), sc1);
    } else {
      // 0x6400 | (byte ^ 0x80) = 1152 + code as float16 (one LOP3: the byte masked, XOR 0x6480), minus 1152
      constexpr uint32_t kMagic = 0x64806480u;
      uint32_t w[4];
#pragma unroll
      for (int rr = 0; rr < 4; ++rr) {
        const int row = 16 * s + 2 * ln.lc + (rr & 1) + 8 * (rr >> 1);
        w[rr] = *reinterpret_cast<const unsigned short*>(wp + row * 32);
      }
      // bytes: (channel 0, row r), (channel 1, row r), (channel 0, row r + 1), (channel 1, row r + 1)
      const uint32_t x01 = __byte_perm(w[0], w[1], 0x5410u), x23 = __byte_perm(w[2], w[3], 0x5410u);
      a[0] = Hmul2(Hsub2((x01 & 0x00FF00FFu) ^ kMagic, kMagic), sc0);
      a[1] = Hmul2(Hsub2(((x01 >> 8) & 0x00FF00FFu) ^ kMagic, kMagic), sc1);
      a[2] = Hmul2(Hsub2((x23 & 0x00FF00FFu) ^ kMagic, kMagic), sc0);
      a[3] = Hmul2(Hsub2(((x23 >> 8) & 0x00FF00FFu) ^ kMagic, kMagic), sc1);
    }
  }
}

// The kWgK / 16 wgmmas of a stage (A tile of the stage at shared address a_tile) as one group.
template <int BN>
__device__ __forceinline__ void WgStageMma(float (&acc)[BN / 2], const uint32_t (&frag)[kWgK / 16][4], uint32_t a_tile) {
  WgmmaFence();
#pragma unroll
  for (int s = 0; s < kWgK / 16; ++s) WgmmaRegA<BN>(acc, frag[s], WgDesc(a_tile + 32 * s));
  WgmmaCommit();
}

// Y of tile (tx, ty) from the sums (plus the bias), by the kWgThreads threads that hold them.
template <typename S, int BN>
__device__ __forceinline__ void WgStoreY(const float (&acc)[BN / 2], const KernelArgs<__half, S>& g, const WgLane& ln,
                                         int tx, int ty) {
  const int panel = tx * kWgPanels + ln.pl, m0 = ty * BN, m = static_cast<int>(g.m);
  if (panel >= static_cast<int>(g.p.panels)) return;
  const int64_t ch = static_cast<int64_t>(panel) * kPanel + 16 * ln.half + 2 * ln.lg;  // mma rows g and g + 8
  const int64_t N = g.p.N;
  const bool has0 = ch < N, has1 = ch + 1 < N, pair = has1 && N % 2 == 0;
  const float b0 = g.bias && has0 ? __half2float(g.bias[ch]) : 0.0f;
  const float b1 = g.bias && has1 ? __half2float(g.bias[ch + 1]) : 0.0f;
#pragma unroll
  for (int j = 0; j < BN / 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int mi = m0 + 8 * j + 2 * ln.lc + e;
      if (mi >= m) continue;
      __half* dst = g.y + static_cast<int64_t>(mi) * N + ch;
      const float y0 = acc[4 * j + e] + b0, y1 = acc[4 * j + 2 + e] + b1;
      if (pair) {
        *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(y0, y1);
      } else {
        if (has0) dst[0] = __float2half_rn(y0);
        if (has1) dst[1] = __float2half_rn(y1);
      }
    }
}

// Split-K (gridDim.z = splits > 1, when the tiles alone would leave SMs idle): split z takes
// stages [z * n / splits, (z + 1) * n / splits); every split writes its fp32 sums to `partials`
// ([tile][split][BN / 2][thread]), the last of a tile's splits to arrive (a counter per tile in
// `counters`, left at 0) adds them up in split order (results independent of timing); then Y.
// By the kWgThreads threads that hold the sums (tid < kWgThreads); `sync` is a barrier of them.
template <typename S, int BN, typename Sync>
__device__ __forceinline__ void WgFinish(float (&acc)[BN / 2], const KernelArgs<__half, S>& g, const WgLane& ln, int tid,
                                         float* partials, unsigned* counters, int* last_flag, Sync sync) {
  const int splits = gridDim.z, z = blockIdx.z;
  if (splits > 1) {
    const int64_t tile = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    float* mine = partials + (tile * splits + z) * (BN / 2) * kWgThreads;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mine[i * kWgThreads + tid] = acc[i];
    __threadfence();
    sync();
    if (tid == 0) *last_flag = atomicAdd(counters + tile, 1u) == static_cast<unsigned>(splits - 1);
    sync();
    if (!*last_flag) return;
    __threadfence();
    const float* all = partials + tile * splits * (BN / 2) * kWgThreads;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
    for (int zz = 0; zz < splits; ++zz) {  // split order; BN / 2 independent loads per split
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] += __ldcg(all + (zz * (BN / 2) + i) * kWgThreads + tid);
    }
    if (tid == 0) counters[tile] = 0;
  }
  WgStoreY<S, BN>(acc, g, ln, blockIdx.x, blockIdx.y);
}

// ---- the stream-K schedule (WgGrid::sk_ctas) -------------------------------------------------
// Units u = tile * stages + stage (tile = ty * tiles_x + tx); CTA c takes [c * U / C, (c + 1) * U / C).
// A CTA's range is cut at tile boundaries into segments: full tiles (Y at once), the first
// tile's end (its owner: the CTA holding a tile's last stage adds the partial sums of the CTAs
// before it that share the tile, in CTA order, then writes Y), and a last tile it does not finish
// (or, with a range inside one tile, the whole range): partial sums, at most one per CTA, written
// to partials[c] and flagged in flags[c] (set to 1 with release, reset to 0 by the owner, so
// every launch leaves them at 0). The partial segment is done first and the owned tile's end
// last, so the partial sums an owner waits for were, as a rule, written long before. An owner
// waits only for CTAs of lower index (launched before it; at most one CTA per SM and sm_count
// CTAs, so they are running or done).
struct WgSk {
  int tiles_x = 0, tiles = 0, stages = 0, ctas = 0;  // ctas = 0: one CTA per tile instead
};
struct WgSeg {
  int tile, s0, s1;
  int kind;  // kWgSegY, kWgSegOwner, kWgSegPartial
};
inline constexpr int kWgSegY = 0, kWgSegOwner = 1, kWgSegPartial = 2;
struct WgRange {  // (trivial: it lives in shared memory)
  int u0, u1, t_first, t_last;
  bool pre;                 // a partial segment of t_last first
  int full_begin, full_end;  // then full tiles [full_begin, full_end)
  int count;                 // segments in all
  __device__ static int64_t Start(const WgSk& sk, int c) {
    return static_cast<int64_t>(sk.tiles) * sk.stages * c / sk.ctas;
  }
  __device__ static WgRange Make(const WgSk& sk, int c) {
    const int S = sk.stages;
    WgRange r;
    r.u0 = static_cast<int>(Start(sk, c));
    r.u1 = max(static_cast<int>(Start(sk, c + 1)), r.u0 + 1);  // (every CTA has a unit: LaunchWgmmaBn)
    r.t_first = r.u0 / S;
    r.t_last = (r.u1 - 1) / S;
    r.pre = r.t_last > r.t_first && r.u1 % S != 0;
    r.full_begin = r.t_first + 1;
    r.full_end = r.t_last > r.t_first ? (r.pre ? r.t_last : r.t_last + 1) : r.t_first + 1;
    r.count = (r.pre ? 1 : 0) + (r.full_end - r.full_begin) + 1;
    return r;
  }
  // Segment j in the order the CTA runs them.
  __device__ WgSeg At(const WgSk& sk, int j) const {
    const int S = sk.stages;
    if (pre) {
      if (j == 0) return {t_last, 0, u1 - t_last * S, kWgSegPartial};
      --j;
    }
    if (j < full_end - full_begin) return {full_begin + j, 0, S, kWgSegY};
    const int s0 = u0 - t_first * S, s1 = min(u1 - t_first * S, S);
    return {t_first, s0, s1, s1 < S ? kWgSegPartial : s0 > 0 ? kWgSegOwner : kWgSegY};
  }
};
// The first CTA whose range holds unit u.
__device__ __forceinline__ int WgSkCtaOf(const WgSk& sk, int u) {
  int c = static_cast<int>(static_cast<int64_t>(u) * sk.ctas / (static_cast<int64_t>(sk.tiles) * sk.stages));
  while (c + 1 < sk.ctas && WgRange::Start(sk, c + 1) <= u) ++c;
  while (c > 0 && WgRange::Start(sk, c) > u) --c;
  return c;
}

// A stream-K segment's end (by the kWgThreads threads that hold the sums; `sync`: their barrier).
template <typename S, int BN, typename Sync>
__device__ __forceinline__ void WgSkFinish(float (&acc)[BN / 2], const KernelArgs<__half, S>& g, const WgLane& ln,
                                           int tid, const WgSk& sk, const WgSeg& sg, float* partials, unsigned* flags,
                                           Sync sync) {
  const int c = blockIdx.x;
  if (sg.kind == kWgSegPartial) {
    float* mine = partials + static_cast<int64_t>(c) * (BN / 2) * kWgThreads;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mine[i * kWgThreads + tid] = acc[i];
    __threadfence();
    sync();
    if (tid == 0) StoreRelease(flags + c, 1u);
    return;
  }
  if (sg.kind == kWgSegOwner) {
    for (int cc = WgSkCtaOf(sk, sg.tile * sk.stages); cc < c; ++cc) {  // CTA order
      if (tid == 0) {
        while (LoadAcquire(flags + cc) == 0u) __nanosleep(64);
        flags[cc] = 0u;  // (read by this CTA only)
      }
      sync();
      __threadfence();
      const float* theirs = partials + static_cast<int64_t>(cc) * (BN / 2) * kWgThreads;
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] += __ldcg(theirs + i * kWgThreads + tid);
    }
  }
  WgStoreY<S, BN>(acc, g, ln, sg.tile % sk.tiles_x, sg.tile / sk.tiles_x);
}

// ---- the kernel ------------------------------------------------------------------------------
inline constexpr int kWgCtaThreads = kWgThreads + 128;
inline constexpr int kWgProducers = kWgCtaThreads - kWgThreads;

__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// The mbarrier gets one arrival (counted in its init) once the thread's earlier cp.async are done.
__device__ __forceinline__ void CpAsyncMbarArrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}
// 2-D tile of the tensor map (coordinates: k, row) to shared `dst`, completing bytes on `bar`.
__device__ __forceinline__ void TmaLoad2d(uint32_t dst, const void* tmap, int k, int row, uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(k), "r"(row), "r"(bar)
      : "memory");
#endif
}

// kSk: the stream-K schedule (sk.ctas CTAs); else one CTA per tile and split z of K (grid x, y, z).
template <class Dec, typename S, int BN, bool kSk>
__global__ void __launch_bounds__(kWgCtaThreads, 1)
    WgmmaKernel(const __grid_constant__ CUtensorMap tmap, KernelArgs<__half, S> g, float* partials,
                unsigned* counters, WgSk sk) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = WgLayout<Dec, S, BN>;
  constexpr int kStages = L::kStages;
  extern __shared__ __align__(16) unsigned char wg_smem[];
  const uint32_t tab_base = static_cast<uint32_t>(__cvta_generic_to_shared(wg_smem));
  const uint32_t st_base = (tab_base + L::kTable + 1023) & ~1023u;
  unsigned char* stages = wg_smem + (st_base - tab_base);
  const uint32_t full0 = st_base + kStages * L::kStage, empty0 = full0 + 8 * 8;
  const int tid = threadIdx.x;
  // The CTA's segments: stream-K (the range in shared memory: the consumers' registers are taken
  // by the sums), or one, its tile (x, y) and split z of K.
  __shared__ WgRange range;
  const auto segment = [&](int j) -> WgSeg {
    if constexpr (kSk) {
      return range.At(sk, j);
    } else {
      const int all_stages = (static_cast<int>(g.p.K) + kWgK - 1) / kWgK, splits = gridDim.z, z = blockIdx.z;
      return {static_cast<int>(blockIdx.y * gridDim.x + blockIdx.x),
              static_cast<int>(static_cast<int64_t>(all_stages) * z / splits),
              static_cast<int>(static_cast<int64_t>(all_stages) * (z + 1) / splits), kWgSegY};
    }
  };
  const int tiles_x = kSk ? sk.tiles_x : static_cast<int>(gridDim.x);
  __shared__ int last_flag;

  if (tid == kWgThreads) {
    for (int i = 0; i < kStages; ++i) {
      MbarInit(full0 + 8 * i, 1 + kWgProducers);  // the TMA's expect_tx arrival + the producers' cp.async
      MbarInit(empty0 + 8 * i, kWgThreads / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    if constexpr (kSk) range = WgRange::Make(sk, blockIdx.x);
  }
  if constexpr (L::kNf4) FillPairTable<256>(wg_smem);
  __syncthreads();  // table, barriers and range ready
  const int segments = kSk ? range.count : 1;
  GridDependencyWait();
  AllowDependentLaunch();

  if (tid >= kWgThreads) {  // the producers: the stages of every segment in turn, one ring
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    const int pt = tid - kWgThreads;
    int slot = 0;
    uint32_t phase = 0;
    for (int j = 0; j < segments; ++j) {
      const WgSeg sg = segment(j);
      const int p0 = (sg.tile % tiles_x) * kWgPanels, m0 = (sg.tile / tiles_x) * BN;
      for (int st_i = sg.s0; st_i < sg.s1; ++st_i) {
        MbarWait(empty0 + 8 * slot, phase ^ 1);  // (a fresh barrier's previous phase counts as done)
        const int k0 = st_i * kWgK;
        unsigned char* st = stages + slot * L::kStage;
        if (pt == 0) {
          MbarArriveExpectTx(full0 + 8 * slot, BN * 128);
          TmaLoad2d(st_base + slot * L::kStage, &tmap, k0, m0, full0 + 8 * slot);
        }
        WgIssueWeights<Dec, S, BN, kWgProducers>(st, g, p0, k0, pt);
        CpAsyncMbarArrive(full0 + 8 * slot);
        if (++slot == kStages) {
          slot = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
  const WgLane ln(tid);
  float dq_offset = 0.0f;
  if constexpr (std::is_same_v<S, int8_t>) dq_offset = __ldg(g.offset);
  float acc[BN / 2];
  uint32_t frag[2][kWgK / 16][4];  // two stages' fragments: one decoded while the other's wgmmas run
  int slot = 0, prev = kStages - 1;
  uint32_t phase = 0;
  bool held = false;  // slot `prev` still to be handed back
  // A stage: wait for its slot, decode, its wgmmas as one group, then wait for the previous
  // stage's group and hand that slot back to the producers.
  auto stage = [&](auto set_c) {
    constexpr int set = decltype(set_c)::value;
    MbarWait(full0 + 8 * slot, phase);
    WgDecode<Dec, S, BN>(stages + slot * L::kStage, tab_base, ln, dq_offset, frag[set]);
    WgStageMma<BN>(acc, frag[set], st_base + slot * L::kStage);
    WgmmaWait<1>();
    if (held && ln.lane == 0) MbarArrive(empty0 + 8 * prev);
    held = true;
    prev = slot;
    if (++slot == kStages) {
      slot = 0;
      phase ^= 1;
    }
  };
  const auto sync = [] { asm volatile("bar.sync 1, %0;\n" ::"n"(kWgThreads) : "memory"); };
  for (int j = 0; j < segments; ++j) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
    int n;
    {
      const WgSeg sg = segment(j);  // (again after the loop: fewer registers live in it)
      n = sg.s1 - sg.s0;
    }
    int i = 0;
    for (; i + 1 < n; i += 2) {
      stage(std::integral_constant<int, 0>{});
      stage(std::integral_constant<int, 1>{});
    }
    if (i < n) stage(std::integral_constant<int, 0>{});
    WgmmaWait<0>();
    if (held && ln.lane == 0) MbarArrive(empty0 + 8 * prev);  // (the producers may need it for the next one)
    held = false;
#pragma unroll
    for (int jj = 0; jj < BN / 2; ++jj) PinReg(acc[jj]);
    if constexpr (kSk)
      WgSkFinish<S, BN>(acc, g, ln, tid, sk, segment(j), partials, counters, sync);
    else
      WgFinish<S, BN>(acc, g, ln, tid, partials, counters, &last_flag, sync);
  }
#endif
}

// cuTensorMapEncodeTiled from the driver (through the runtime: the library does not link
// libcuda); null where the driver has none.
inline PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A (m x K float16, row-major) as TMA sees it: tiles of kWgK k x bn rows, 128-byte swizzle.
inline cudaError_t EncodeATensorMap(CUtensorMap* tmap, const __half* a, int64_t m, int64_t K, int bn) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(K) * 2};
  const cuuint32_t box[2] = {kWgK, static_cast<cuuint32_t>(bn)};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = encode(tmap, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<__half*>(a), dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

template <class Dec, typename S, int BN, bool kSk>
cudaError_t LaunchWgmmaBn(const KernelArgs<__half, S>& g, const WgGrid& w, float* partials, unsigned* counters,
                             cudaStream_t stream) {
  using L = WgLayout<Dec, S, BN>;
  static const cudaError_t attr = AllowSmem(WgmmaKernel<Dec, S, BN, kSk>, L::kSmem);
  if (attr != cudaSuccess) return attr;
  if (g.p.K % 8 != 0 || g.p.K >= (int64_t{1} << 30) || w.tiles_y > 65535 ||
      ((w.splits > 1 || kSk) && (partials == nullptr || counters == nullptr)))
    return cudaErrorInvalidValue;  // never planned
  WgSk sk;
  if constexpr (kSk) {
    sk.tiles_x = static_cast<int>(w.tiles_x);
    sk.tiles = static_cast<int>(w.tiles_x * w.tiles_y);
    sk.stages = static_cast<int>((g.p.K + kWgK - 1) / kWgK);
    sk.ctas = w.sk_ctas;
    if (static_cast<int64_t>(sk.tiles) * sk.stages >= (int64_t{1} << 31) ||
        static_cast<int64_t>(sk.tiles) * sk.stages < sk.ctas)
      return cudaErrorInvalidValue;  // never planned (every CTA has a unit)
  }
  CUtensorMap tmap;
  const cudaError_t e = EncodeATensorMap(&tmap, g.a, g.m, g.p.K, BN);
  if (e != cudaSuccess) return e;
  const dim3 grid = kSk ? dim3(static_cast<unsigned>(w.sk_ctas))
                        : dim3(static_cast<unsigned>(w.tiles_x), static_cast<unsigned>(w.tiles_y),
                               static_cast<unsigned>(w.splits));
  return LaunchKernel(WgmmaKernel<Dec, S, BN, kSk>, grid, dim3(kWgCtaThreads), L::kSmem, stream, g.pdl, tmap, g,
                      partials, counters, sk);
}
template <class Dec, typename S, int BN>
cudaError_t LaunchWgmmaBn(const KernelArgs<__half, S>& g, const WgGrid& w, float* partials, unsigned* counters,
                             cudaStream_t stream) {
  return w.sk_ctas > 0 ? LaunchWgmmaBn<Dec, S, BN, true>(g, w, partials, counters, stream)
                       : LaunchWgmmaBn<Dec, S, BN, false>(g, w, partials, counters, stream);
}

template <class Dec, typename S>
cudaError_t LaunchWgmma(const KernelArgs<__half, S>& g, int bn, const WgGrid& w, int sm_count, void* workspace,
                           void* gemv_workspace, cudaStream_t stream) {
  float* partials = static_cast<float*>(workspace);
  unsigned* counters =
      gemv_workspace ? reinterpret_cast<unsigned*>(static_cast<float*>(gemv_workspace) + SkPartialFloats(sm_count))
                     : nullptr;
  switch (bn) {
    case 16: return LaunchWgmmaBn<Dec, S, 16>(g, w, partials, counters, stream);
    case 32: return LaunchWgmmaBn<Dec, S, 32>(g, w, partials, counters, stream);
    case 64: return LaunchWgmmaBn<Dec, S, 64>(g, w, partials, counters, stream);
    case 128: return LaunchWgmmaBn<Dec, S, 128>(g, w, partials, counters, stream);
    case 256: return LaunchWgmmaBn<Dec, S, 256>(g, w, partials, counters, stream);
    default: return cudaErrorInvalidValue;
  }
}
