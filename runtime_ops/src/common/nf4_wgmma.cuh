// NF4 with float16 A on sm_90a tensor cores: wgmma with the weights as the A operand taken from
// registers (decoded there, as Nf4MmaKernel does for mma.sync) and A's rows as the B operand in
// shared memory (cp.async, 128-byte swizzle). Included by dequant_cuda.cuh (namespace oco::cuda).
//
// CTA = two warpgroups, kWgPanels = 4 panels (128 channels) x BN rows of A, K in stages of kWgK
// rows through a kWgStages-deep cp.async ring. Warpgroup w takes panels 2w and 2w + 1; in it,
// warp i takes panel 2w + i / 2 and its channel half i % 2 (mma rows 0-7: channels 16h + 2g, rows
// 8-15: 16h + 2g + 1, g = lane / 4), so that the 64 rows of one m64nBNk16 are 2 panels. Lane (g, c)
// reads bytes 2g, 2g + 1 of k-rows 2c, 2c + 1, 2c + 8, 2c + 9 of each 16-row step (the fragment's
// natural k order, as the shared B tile is read in k order by the hardware), looks each byte up in
// the per-lane pair table, keeps its half's nibble and scales by the channel's scale (HMUL2:
// the dequantized fp16 weight, as the other float16 kernels make it). Accumulation in fp32.
// The body needs sm_90a (wgmma); other targets compile it empty and never launch it.
#pragma once

constexpr int kWgStages = 4;  // (kWgThreads, kWgPanels, kWgK, the grid: dequant_cuda.h)
constexpr int kWgDist = kWgStages - 2;  // stages in flight ahead: a slot is refilled two stages after its last wgmma
static_assert(kWgPanels * kWgK == kWgThreads, "one 16-byte piece of weights per thread and stage");

template <typename S, int BN>
struct WgLayout {
  static constexpr int kA = BN * 128;                                      // [BN][64 k] fp16, 128B-swizzled
  static constexpr int kW = kWgPanels * kWgK * 16;                         // [panel][64 k-rows][16 bytes]
  static constexpr int kRowBytes = kPanel * static_cast<int>(sizeof(S));   // a scale row as stored
  static constexpr int kS = kWgPanels * 2 * kRowBytes;                     // [panel][32-row piece][row]
  static constexpr int kS2 = std::is_same_v<S, int8_t> ? kWgPanels * 2 * 4 : 0;
  static constexpr int kStage = (kA + kW + kS + kS2 + 1023) / 1024 * 1024;
  static constexpr size_t kSmem = kMmaTableBytes + 1024 + static_cast<size_t>(kWgStages) * kStage;
};

template <int N>
__device__ __forceinline__ void WgmmaRegA(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc);
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
// cp.async writes (generic proxy) made visible to wgmma's reads (async proxy).
__device__ __forceinline__ void FenceProxyAsync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Descriptor of a K-major tile with 128-byte swizzle (8-row atoms of 1024 bytes) at shared `addr`.
__device__ __forceinline__ uint64_t WgDesc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{64} << 32) |
         (uint64_t{1} << 62);
}

// Split-K (gridDim.z = splits > 1, when the tiles alone would leave SMs idle): split z takes
// stages [z * n / splits, (z + 1) * n / splits); every split writes its fp32 sums to `partials`
// ([tile][split][BN / 2][thread]), the last of a tile's splits to arrive (a counter per tile in
// `counters`, left at 0) adds them up in split order (results independent of timing) and writes Y.
template <typename S, int BN>
__global__ void __launch_bounds__(kWgThreads, 1)
    Nf4WgmmaKernel(KernelArgs<__half, S> g, float* partials, unsigned* counters) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = WgLayout<S, BN>;
  extern __shared__ __align__(16) unsigned char wg_smem[];
  const uint32_t tab_base = static_cast<uint32_t>(__cvta_generic_to_shared(wg_smem));
  const uint32_t st_base = (tab_base + kMmaTableBytes + 1023) & ~1023u;
  unsigned char* stages = wg_smem + (st_base - tab_base);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lg = lane >> 2, lc = lane & 3;
  const int pl = 2 * (warp >> 2) + ((warp & 3) >> 1), half = warp & 1;
  const int p0 = blockIdx.x * kWgPanels, m0 = blockIdx.y * BN;
  const int K = static_cast<int>(g.p.K), k_pad = static_cast<int>(g.p.k_pad), m = static_cast<int>(g.m);
  const int panels = static_cast<int>(g.p.panels), shift = g.p.group_shift;
  const int last_block = static_cast<int>(g.p.blocks) - 1;
  const int all_stages = (K + kWgK - 1) / kWgK, splits = gridDim.z, z = blockIdx.z;
  const int kt_begin = static_cast<int>(static_cast<int64_t>(all_stages) * z / splits);
  const int kt_end = static_cast<int>(static_cast<int64_t>(all_stages) * (z + 1) / splits);
  __shared__ int last_flag;
  float dq_offset = 0.0f;
  if constexpr (std::is_same_v<S, int8_t>) dq_offset = __ldg(g.offset);

  auto issue = [&](int kt, int slot) {
    unsigned char* st = stages + slot * L::kStage;
    const int k0 = kt * kWgK;
#pragma unroll
    for (int t = tid; t < BN * 8; t += kWgThreads) {  // A: BN rows x 8 pieces of 8 k
      const int r = t >> 3, j = t & 7, row = m0 + r, k = k0 + 8 * j;
      const bool valid = row < m && k < K;
      CpAsync16(st + r * 128 + ((j ^ (r & 7)) << 4), valid ? g.a + static_cast<int64_t>(row) * K + k : g.a, valid);
    }
    {
      const int pi = tid / kWgK, row = tid % kWgK, panel = p0 + pi, k = k0 + row;
      const bool valid = panel < panels && k < k_pad;
      CpAsync16(st + L::kA + pi * (kWgK * 16) + row * 16,
                valid ? g.b + (static_cast<int64_t>(panel) * k_pad + k) * 16 : g.b, valid);
    }
    constexpr int kSChunks = L::kRowBytes / 16;
    for (int t = tid; t < kWgPanels * 2 * kSChunks; t += kWgThreads) {
      const int pi = t / (2 * kSChunks), piece = (t / kSChunks) % 2, c = t % kSChunks;
      const int panel = min(p0 + pi, panels - 1);
      const int64_t r = static_cast<int64_t>(panel) * g.p.blocks + min((k0 + 32 * piece) >> shift, last_block);
      CpAsync16(st + L::kA + L::kW + (pi * 2 + piece) * L::kRowBytes + 16 * c,
                reinterpret_cast<const unsigned char*>(g.scales + r * kPanel) + 16 * c, true);
    }
    if constexpr (std::is_same_v<S, int8_t>) {
      for (int t = tid; t < kWgPanels * 2; t += kWgThreads) {
        const int panel = min(p0 + t / 2, panels - 1);
        const int64_t r = static_cast<int64_t>(panel) * g.p.blocks + min((k0 + 32 * (t % 2)) >> shift, last_block);
        CpAsync4(st + L::kA + L::kW + L::kS + 4 * t, g.scale2 + (r >> kDqRowShift));
      }
    }
  };

  FillPairTable<256>(wg_smem);  // (visible after the loop's first barrier)
  GridDependencyWait();
  AllowDependentLaunch();
#pragma unroll
  for (int s = 0; s < kWgDist; ++s) {
    if (kt_begin + s < kt_end) issue(kt_begin + s, (kt_begin + s) % kWgStages);
    CpAsyncCommit();
  }
  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
  const uint32_t lane4 = 4 * lane;
  const uint32_t sel = half ? 0x7632u : 0x5410u, bsel = half ? 0x3232u : 0x1010u;
  constexpr int kSteps = kWgK / 16;
  uint32_t frag[2][kSteps][4];  // two stages' fragments: one decoded while the other's wgmmas run
  // Stage kt: wait for it, refill the slot of stage kt - 2, decode its kSteps fragments into
  // frag[set], then its kSteps wgmmas as one group; the previous stage's group is then waited for
  // (its fragments and its slot become free).
  auto stage = [&](int kt, auto set_c) {
    constexpr int set = decltype(set_c)::value;
    const int slot = kt % kWgStages;
    CpAsyncWait<kWgDist - 1>();
    FenceProxyAsync();
    __syncthreads();  // stage kt landed for all; the slot refilled next was last read two stages ago
    if (kt + kWgDist < kt_end) issue(kt + kWgDist, (kt + kWgDist) % kWgStages);
    CpAsyncCommit();
    const unsigned char* st = stages + slot * L::kStage;
    const unsigned char* wp = st + L::kA + pl * (kWgK * 16) + 2 * lg;
    const unsigned char* sp = st + L::kA + L::kW + pl * 2 * L::kRowBytes;
    const unsigned char* s2p = st + L::kA + L::kW + L::kS + pl * 2 * 4;
    const uint32_t a_tile = st_base + slot * L::kStage;
    uint32_t sc0 = 0, sc1 = 0;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (s % 2 == 0) {
        uint32_t p0s, p1s;
        MmaScalePairs<S>(sp + (s / 2) * L::kRowBytes, s2p + (s / 2) * 4, dq_offset, lg, p0s, p1s);
        sc0 = __byte_perm(p0s, 0, bsel);
        sc1 = __byte_perm(p1s, 0, bsel);
      }
      uint32_t v0[4], v1[4];
#pragma unroll
      for (int rr = 0; rr < 4; ++rr) {
        const int row = 16 * s + 2 * lc + (rr & 1) + 8 * (rr >> 1);
        const uint32_t w = *reinterpret_cast<const unsigned short*>(wp + row * 16);
        v0[rr] = MmaPair<0>(tab_base, w, lane4);
        v1[rr] = MmaPair<1>(tab_base, w, lane4);
      }
      uint32_t(&a)[4] = frag[set][s];
      a[0] = Hmul2(__byte_perm(v0[0], v0[1], sel), sc0);
      a[1] = Hmul2(__byte_perm(v1[0], v1[1], sel), sc1);
      a[2] = Hmul2(__byte_perm(v0[2], v0[3], sel), sc0);
      a[3] = Hmul2(__byte_perm(v1[2], v1[3], sel), sc1);
    }
    WgmmaFence();
#pragma unroll
    for (int s = 0; s < kSteps; ++s) WgmmaRegA<BN>(acc, frag[set][s], WgDesc(a_tile + 32 * s));
    WgmmaCommit();
    WgmmaWait<1>();
  };
  int kt = kt_begin;
  for (; kt + 1 < kt_end; kt += 2) {
    stage(kt, std::integral_constant<int, 0>{});
    stage(kt + 1, std::integral_constant<int, 1>{});
  }
  if (kt < kt_end) stage(kt, std::integral_constant<int, 0>{});
  WgmmaWait<0>();
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) PinReg(acc[i]);
  if (splits > 1) {
    const int64_t tile = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    float* mine = partials + (tile * splits + z) * (BN / 2) * kWgThreads;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mine[i * kWgThreads + tid] = acc[i];
    __threadfence();
    __syncthreads();
    if (tid == 0) last_flag = atomicAdd(counters + tile, 1u) == static_cast<unsigned>(splits - 1);
    __syncthreads();
    if (!last_flag) return;
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
  const int panel = p0 + pl;
  if (panel >= panels) return;
  const int64_t ch = static_cast<int64_t>(panel) * kPanel + 16 * half + 2 * lg;  // mma rows g and g + 8
  const int64_t N = g.p.N;
  const bool has0 = ch < N, has1 = ch + 1 < N, pair = has1 && N % 2 == 0;
  const float b0 = g.bias && has0 ? __half2float(g.bias[ch]) : 0.0f;
  const float b1 = g.bias && has1 ? __half2float(g.bias[ch + 1]) : 0.0f;
#pragma unroll
  for (int j = 0; j < BN / 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int mi = m0 + 8 * j + 2 * lc + e;
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
#endif
}

template <typename S, int BN>
cudaError_t LaunchNf4WgmmaBn(const KernelArgs<__half, S>& g, const WgGrid& w, float* partials, unsigned* counters,
                             cudaStream_t stream) {
  using L = WgLayout<S, BN>;
  static const cudaError_t attr = AllowSmem(Nf4WgmmaKernel<S, BN>, L::kSmem);
  if (attr != cudaSuccess) return attr;
  if (g.p.K % 8 != 0 || g.p.K >= (int64_t{1} << 30) || w.tiles_y > 65535 ||
      (w.splits > 1 && (partials == nullptr || counters == nullptr)))
    return cudaErrorInvalidValue;  // never planned
  const dim3 grid(static_cast<unsigned>(w.tiles_x), static_cast<unsigned>(w.tiles_y), static_cast<unsigned>(w.splits));
  return LaunchKernel(Nf4WgmmaKernel<S, BN>, grid, dim3(kWgThreads), L::kSmem, stream, g.pdl, g, partials, counters);
}

template <typename S>
cudaError_t LaunchNf4Wgmma(const KernelArgs<__half, S>& g, int bn, const WgGrid& w, int sm_count, void* workspace,
                           void* gemv_workspace, cudaStream_t stream) {
  float* partials = static_cast<float*>(workspace);
  unsigned* counters =
      gemv_workspace ? reinterpret_cast<unsigned*>(static_cast<float*>(gemv_workspace) + SkPartialFloats(sm_count))
                     : nullptr;
  switch (bn) {
    case 64: return LaunchNf4WgmmaBn<S, 64>(g, w, partials, counters, stream);
    case 128: return LaunchNf4WgmmaBn<S, 128>(g, w, partials, counters, stream);
    case 256: return LaunchNf4WgmmaBn<S, 256>(g, w, partials, counters, stream);
    default: return cudaErrorInvalidValue;
  }
}
