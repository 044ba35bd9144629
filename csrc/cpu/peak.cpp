// _C.cosine_topk_fma_peak: register-only FMA (or int8 dot-product) chains per ISA (called without the GIL).
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>

#include "cpu/cosine_topk_common.h"
#include "cpu/xite_cpu.h"

namespace xite {
namespace cpu {
namespace {

using cosine::bf16_rne;

// FMA peak micro-benchmark (the denominator of "% of peak" in bench/bench_cosine_topk.py): each
// thread runs 12 independent FMA chains on registers (no memory operands; 12 chains cover the FMA
// latency on both pipes, and 12 + 2 operands fit the 16 ymm registers of an AVX2 build) for
// `iters` iterations; GFLOP/s = 2 * lanes * 12 * iters * threads / wall time of the parallel
// region (all threads start together, the slowest one ends it).
// Named variables, not an array: GCC kept an array of accumulators in memory (1/3 of the rate).
// XITE_CHAINS12: the timed loop, 12 chains c0..c11 (declared by the caller) of FMA(a, b, c), the asm
// barriers keeping every chain live and in a register. XITE_SUM12: the 12 chains added (the sink).
#define XITE_CHAINS12(FMA, a, b, iters)                                                                      \
  __asm__("" : "+x"(a), "+x"(b));                                                                           \
  for (int64_t it = 0; it < (iters); ++it) {                                                                \
    c0 = FMA(a, b, c0), c1 = FMA(a, b, c1), c2 = FMA(a, b, c2), c3 = FMA(a, b, c3);                         \
    c4 = FMA(a, b, c4), c5 = FMA(a, b, c5), c6 = FMA(a, b, c6), c7 = FMA(a, b, c7);                         \
    c8 = FMA(a, b, c8), c9 = FMA(a, b, c9), c10 = FMA(a, b, c10), c11 = FMA(a, b, c11);                     \
    __asm__("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5), "+x"(c6), "+x"(c7), "+x"(c8), \
            "+x"(c9), "+x"(c10), "+x"(c11));                                                                \
  }
#define XITE_SUM12(ADD) \
  ADD(ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7))), ADD(ADD(c8, c9), ADD(c10, c11)))

#define XITE_FMA_CHAINS(V, FMA, SET1, iters, seed, result)                                   \
  {                                                                                         \
    V c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, a = SET1(seed), b = SET1(seed);     \
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = a;                        \
    XITE_CHAINS12(FMA, a, b, iters)                                                         \
    V s_ = FMA(c0, c1, c2);                                                                 \
    s_ = FMA(s_, c3, c4), s_ = FMA(s_, c5, c6), s_ = FMA(s_, c7, c8), s_ = FMA(s_, c9, c10); \
    s_ = FMA(s_, a, c11);                                                                   \
    alignas(64) float out_[sizeof(V) / 4];                                                  \
    std::memcpy(out_, &s_, sizeof(V));                                                      \
    result = out_[0];                                                                       \
  }

double fma_chains256(int64_t iters, float seed) {
  double r;
  XITE_FMA_CHAINS(__m256, _mm256_fmadd_ps, _mm256_set1_ps, iters, seed, r)
  return r;
}
XITE_AVX512 double fma_chains512(int64_t iters, float seed) {
  double r;
  XITE_FMA_CHAINS(__m512, _mm512_fmadd_ps, _mm512_set1_ps, iters, seed, r)
  return r;
}
#undef XITE_FMA_CHAINS

// bf16 dot-product chains (vdpbf16ps: 2 products per fp32 lane, 64 FLOP per zmm instruction).
XITE_BF16 inline __m512 dpbf16_fma(__m512 a, __m512 b, __m512 c) {
  return _mm512_dpbf16_ps(c, (__m512bh)_mm512_castps_si512(a), (__m512bh)_mm512_castps_si512(b));
}
XITE_BF16 __m512 bf16_seed(float seed) {
  const uint32_t h = bf16_rne(seed);
  return _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(h | (h << 16))));
}
XITE_BF16 double fma_chains512_bf16(int64_t iters, float seed) {
  // a = b = (bf16(seed), bf16(seed)) pairs; the chains add 2 seed^2 per step
  __m512 c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, a = bf16_seed(seed), b = bf16_seed(seed);
  c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = _mm512_setzero_ps();
  XITE_CHAINS12(dpbf16_fma, a, b, iters)
  alignas(64) float out_[16];
  _mm512_store_ps(out_, XITE_SUM12(_mm512_add_ps));
  return out_[0];
}

// int8 dot-product chains (vpdpbusd: 4 u8 x s8 products per int32 lane, 128 OP per zmm instruction).
#define XITE_VNNI __attribute__((target("avx512f,avx512vnni")))
XITE_VNNI inline __m512i vnni_fma(__m512i a, __m512i b, __m512i c) { return _mm512_dpbusd_epi32(c, a, b); }
XITE_VNNI double vnni_chains512(int64_t iters, float seed) {
  __m512i c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11;
  __m512i a = _mm512_set1_epi8(static_cast<char>(seed > 0 ? 1 : 2)), b = a;
  c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = _mm512_setzero_si512();
  XITE_CHAINS12(vnni_fma, a, b, iters)
  alignas(64) int32_t out_[16];
  _mm512_store_si512(out_, XITE_SUM12(_mm512_add_epi32));
  return static_cast<double>(out_[0]);
}
#undef XITE_VNNI
#undef XITE_SUM12
#undef XITE_CHAINS12

}  // namespace

double fma_peak_gflops(const std::string& isa, int num_threads, int64_t iters) {
  XITE_CHECK(isa == "avx2" || isa == "avx512" || isa == "avx512_bf16" || isa == "avx512_vnni",
             "cosine_topk_fma_peak: isa must be 'avx2', 'avx512', 'avx512_bf16' or 'avx512_vnni', got '" << isa
                                                                                                      << "'");
  XITE_CHECK(isa != "avx512_vnni" || xite::cpu_has_avx512_vnni(),
             "cosine_topk_fma_peak: isa='avx512_vnni' needs a CPU with AVX512_VNNI");
  XITE_CHECK(isa != "avx512" || xite::cpu_has_avx512(), "cosine_topk_fma_peak: isa='avx512' needs a CPU with AVX-512F");
  XITE_CHECK(isa != "avx512_bf16" || xite::cpu_has_avx512_bf16(),
             "cosine_topk_fma_peak: isa='avx512_bf16' needs a CPU with AVX512_BF16");
  XITE_CHECK(iters > 0, "cosine_topk_fma_peak: iters must be > 0, got " << iters);
  const int T = num_threads > 0 ? num_threads : omp_get_max_threads();
  // FLOP per instruction / 2: fp32 lanes, or bf16 elements (2 products per fp32 lane)
  // (avx512_vnni: int8 OP, 4 multiply-adds per int32 lane)
  const int lanes = isa == "avx512_vnni" ? 64 : isa == "avx512_bf16" ? 32 : isa == "avx512" ? 16 : 8;
  double sink = 0, t = 0;
  {
    // 1e-8 keeps the chains finite (c grows by 1e-16 per step) without denormals
    const float seed = 1e-8f;
    double t0 = 0;
#pragma omp parallel num_threads(T) reduction(+ : sink)
    {
#pragma omp barrier
#pragma omp master
      t0 = omp_get_wtime();
      sink += isa == "avx512_vnni" ? vnni_chains512(iters, seed)
              : isa == "avx512_bf16" ? fma_chains512_bf16(iters, seed)
              : isa == "avx512"      ? fma_chains512(iters, seed)
                                     : fma_chains256(iters, seed);
#pragma omp barrier
#pragma omp master
      t = omp_get_wtime() - t0;
    }
  }
  XITE_CHECK(std::isfinite(sink), "cosine_topk_fma_peak: chains overflowed");
  return 2.0 * lanes * 12 * static_cast<double>(iters) * T / t / 1e9;
}

}  // namespace cpu
}  // namespace xite
