// lda_project_interp's AVX-512 kernel for the W modes (proj, comp, shift), picked at run time on
// AVX-512F CPUs (compiled with a target attribute: the module still loads on AVX2-only CPUs).
//
// Same scheme and the same arithmetic as the AVX2 kernel (lda_project_interp.cpp), so the output is
// bit-identical to it: per block of 8 rows,
//   phase 1  coef[i][k] = x_i . W[:, k] (x = t, or t - s for shift). The AVX2 kernel sums each
//            component in 8 lanes (lane l holds d = l mod 8) and reduces them with hsum(); here a zmm
//            holds two such 8-lane sums, components 2p and 2p+1 (the row's 8 values broadcast to both
//            halves, W^T pre-interleaved in pairs), so every lane sees the same FMA sequence at twice
//            the width. 2 pairs x 8 rows = 16 accumulators per pass over the rows (in L1/L2).
//   phase 2  out = init(s, t) + sum_k coef[i][k] W^T[k] in 8-row x 16-column tiles (the W^T vector
//            is shared by the 8 rows, the coefficients broadcast): per output value the same
//            sequence (init, then one FMA per k in order) as the AVX2 tile.
// At r = 16 the op does 4 r D = 49k FLOP per row: at the AVX2 (ymm) FMA rate that is more time than
// the rows' DRAM traffic, at the zmm rate (Zen 5: full-width 512-bit FMAs) about half of it. Phase 2
// prefetches the rows kPrefetchBlocks blocks ahead so their DRAM latency overlaps the FMAs; outputs
// larger than the L3 go out with streaming stores.
#include <immintrin.h>
#include <omp.h>

#include <limits>

#include "cpu/lda_project_interp.h"

#define XITE_LDA512 __attribute__((target("avx512f,avx2,fma")))
#define XITE_LDA512_INLINE __attribute__((target("avx512f,avx2,fma"), always_inline)) inline

namespace xite {
namespace cpu {
namespace lda {
namespace {

// Measured at 200k x 768, one thread, CPU time (Zen 5): rows x pairs x tile width 8 x 2 x 16 gave
// r = 16 68-71 ms and r = 4 57-66 ms; 4 x 4 x 64 96 / 73 ms, 4 x 4 x 16 78 / 65, 4 x 2 x 16 81 / 67,
// 12 x 2 x 16 71 / 56-60, 16 x 1 x 16 85 / 64, 2 x 4 x 16 120 / 60 (the AVX2 kernel: 114 / 55). More
// rows share each W^T load (phase 1 and 2 read all of W^T, 2 r D floats, per block from L2).
constexpr int kRB = 8;              // rows per block
constexpr int kGroup = 2;           // component pairs per phase-1 pass (8 x 2 = 16 accumulators)
constexpr int kNV = 1;              // zmm per phase-2 tile row (16 columns)
constexpr int kPrefetchBlocks = 2;  // how many row blocks ahead phase 2 prefetches the rows (1: same)

struct P {
  const Call* c;
  const float* w2;  // phase 1: (D8 / 8, npairs, 16) = [W^T[2p][8j..8j+8), W^T[2p+1][8j..8j+8)], zero-padded
  const float* wt;  // phase 2: W^T in 64-column panels, (D16 / 64 rounded up, r, 64), zero-padded
  int64_t D, D8, D16;
  int r, npairs, rp;  // rp = 2 npairs: coefficients per row in the scratch
  bool nt64, nt32;    // streaming stores: zmm (64-byte aligned rows) or 2 x ymm (32-byte aligned rows)
};

// W^T[k][d..d+16) in the phase-2 layout (d a multiple of 16)
inline const float* wt_at(const P& p, int k, int64_t d) { return p.wt + ((d >> 6) * p.r + k) * 64 + (d & 63); }

XITE_LDA512 inline __m512 dup256(__m256 x) { return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(x))); }

XITE_LDA512 inline __m256 hi256(__m512 x) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)); }

// Phase 1 for pairs [pg, pg + G) of the RB rows x (RB x D, contiguous: t, or t - s for shift).
template <int RB, int G>
XITE_LDA512_INLINE void phase1_group(const P& p, const float* x, int pg, float* coef) {
  const int64_t D = p.D, full = D & ~int64_t(7);
  const float* trow[RB];
  for (int i = 0; i < RB; ++i) trow[i] = x + i * D;
  __m512 acc[RB][G];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < G; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d < full; d += 8) {
    const float* wc = p.w2 + ((d >> 3) * p.npairs + pg) * 16;
    __m512 w[G];
    for (int j = 0; j < G; ++j) w[j] = _mm512_load_ps(wc + 16 * j);
    for (int i = 0; i < RB; ++i) {
      const __m512 xx = dup256(_mm256_loadu_ps(trow[i] + d));
      for (int j = 0; j < G; ++j) acc[i][j] = _mm512_fmadd_ps(xx, w[j], acc[i][j]);
    }
  }
  if (d < D) {  // masked tail: lanes past D load as 0 (W^T is zero-padded there anyway)
    const __m256i mask = tail_mask(D - full);
    const float* wc = p.w2 + ((d >> 3) * p.npairs + pg) * 16;
    __m512 w[G];
    for (int j = 0; j < G; ++j) w[j] = _mm512_load_ps(wc + 16 * j);
    for (int i = 0; i < RB; ++i) {
      const __m512 xx = dup256(_mm256_maskload_ps(trow[i] + d, mask));
      for (int j = 0; j < G; ++j) acc[i][j] = _mm512_fmadd_ps(xx, w[j], acc[i][j]);
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < G; ++j) {
      coef[i * p.rp + 2 * (pg + j)] = hsum(_mm512_castps512_ps256(acc[i][j]));
      coef[i * p.rp + 2 * (pg + j) + 1] = hsum(hi256(acc[i][j]));
    }
}

// shift: x = t - s is formed once per block into the per-thread scratch xbuf (RB x D, in L1) instead
// of once per pair group (the same fp32 subtraction, so the same bits as the AVX2 kernel's).
template <int RB, Mode MODE>
XITE_LDA512 inline void phase1(const P& p, int64_t i0, float* coef, float* xbuf) {
  static_assert(kGroup == 2, "phase1 dispatches groups of 2 pairs and a last single pair");
  const Call& c = *p.c;
  const float* x = c.t + i0 * p.D;
  if (MODE == kShift) {
    const int64_t n = RB * p.D, full = n & ~int64_t(15);
    const float* s = c.s + i0 * p.D;
    int64_t j = 0;
    for (; j < full; j += 16)
      _mm512_store_ps(xbuf + j, _mm512_sub_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(s + j)));
    if (j < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1);
      _mm512_mask_storeu_ps(xbuf + j, m, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), _mm512_maskz_loadu_ps(m, s + j)));
    }
    x = xbuf;
  }
  int pg = 0;
  for (; pg + 2 <= p.npairs; pg += 2) phase1_group<RB, 2>(p, x, pg, coef);
  if (pg < p.npairs) phase1_group<RB, 1>(p, x, pg, coef);
}

// One output tile: RB rows x NV*16 columns from column d; MASKED: the last, partial 16 columns (NV 1).
template <int RB, int NV, Mode MODE, bool MASKED>
XITE_LDA512_INLINE __m512i tile(const P& p, int64_t i0, int64_t d, const float* lam_row, const float* coef,
                                __mmask16 m, __m512i bad) {
  const Call& c = *p.c;
  const int64_t D = p.D;
  __m512 acc[RB][NV];
  for (int i = 0; i < RB; ++i) {
    const float* srow = c.s + (i0 + i) * D + d;
    const float* trow = c.t + (i0 + i) * D + d;
    const __m512 lv = _mm512_set1_ps(lam_row[i]);
    const __m512 gv = _mm512_set1_ps(1.0f - lam_row[i]);
    for (int v = 0; v < NV; ++v) {
      const __m512 sv = MASKED ? _mm512_maskz_loadu_ps(m, srow + 16 * v) : _mm512_loadu_ps(srow + 16 * v);
      if (MODE == kShift) {
        acc[i][v] = sv;
      } else if (MODE == kProj) {
        acc[i][v] = _mm512_mul_ps(lv, sv);
      } else {  // comp: lam*s + g*t
        const __m512 tv = MASKED ? _mm512_maskz_loadu_ps(m, trow + 16 * v) : _mm512_loadu_ps(trow + 16 * v);
        acc[i][v] = _mm512_fmadd_ps(gv, tv, _mm512_mul_ps(lv, sv));
      }
    }
  }
  for (int k = 0; k < p.r; ++k) {
    __m512 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = _mm512_load_ps(wt_at(p, k, d + 16 * v));
    for (int i = 0; i < RB; ++i) {
      const __m512 cf = _mm512_set1_ps(coef[i * p.rp + k]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(cf, w[v], acc[i][v]);
    }
  }
  if (RB > 1 && !MASKED && i0 + (kPrefetchBlocks + 1) * RB <= c.M) {
    // the rows kPrefetchBlocks blocks ahead, one line per zmm of this tile (measured: better than
    // prefetching each block's contiguous bytes in order, about the same as into L2)
    const int64_t ia = i0 + kPrefetchBlocks * RB;
    for (int i = 0; i < RB; ++i)
      for (int v = 0; v < NV; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(c.t + (ia + i) * D + d + 16 * v), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c.s + (ia + i) * D + d + 16 * v), _MM_HINT_T0);
      }
  }
  for (int i = 0; i < RB; ++i) {
    float* orow = c.out + (i0 + i) * D + d;
    for (int v = 0; v < NV; ++v) {
      // finite x gives x - x == +0 (all bits clear); inf/NaN give NaN, so OR-ing flags any of them
      bad = _mm512_or_si512(bad, _mm512_castps_si512(_mm512_sub_ps(acc[i][v], acc[i][v])));
      if (MASKED) {
        _mm512_mask_storeu_ps(orow + 16 * v, m, acc[i][v]);
      } else if (p.nt64) {
        _mm512_stream_ps(orow + 16 * v, acc[i][v]);
      } else if (p.nt32) {
        _mm256_stream_ps(orow + 16 * v, _mm512_castps512_ps256(acc[i][v]));
        _mm256_stream_ps(orow + 16 * v + 8, hi256(acc[i][v]));
      } else {
        _mm512_storeu_ps(orow + 16 * v, acc[i][v]);
      }
    }
  }
  return bad;
}

// RB consecutive rows from i0; true when an output value is not finite.
template <int RB, Mode MODE>
XITE_LDA512 bool rows(const P& p, int64_t i0, float* coef, float* xbuf) {
  const Call& c = *p.c;
  float lam_row[RB];
  for (int i = 0; i < RB; ++i) lam_row[i] = lam_of(c, i0 + i);
  phase1<RB, MODE>(p, i0, coef, xbuf);
  for (int i = 0; i < RB; ++i) {
    // comp subtracts g*P(t); proj and shift add g*P(x)
    const float g = (MODE == kComp ? -1.0f : 1.0f) * (1.0f - lam_row[i]);
    for (int k = 0; k < p.r; ++k) coef[i * p.rp + k] *= g;
  }
  const int64_t D = p.D, full = D & ~int64_t(15);
  __m512i bad = _mm512_setzero_si512();
  int64_t d = 0;
  for (; d + 16 * kNV <= full; d += 16 * kNV) bad = tile<RB, kNV, MODE, false>(p, i0, d, lam_row, coef, 0, bad);
  for (; d < full; d += 16) bad = tile<RB, 1, MODE, false>(p, i0, d, lam_row, coef, 0, bad);
  if (d < D) {
    const __mmask16 m = static_cast<__mmask16>((1u << (D - d)) - 1);
    bad = tile<RB, 1, MODE, true>(p, i0, d, lam_row, coef, m, bad);
  }
  return _mm512_test_epi32_mask(bad, bad) != 0;
}

template <Mode MODE>
XITE_LDA512 int64_t run_mode(const P& p, int num_threads) {
  const Call& c = *p.c;
  const int64_t nblocks = c.M / kRB;
  int64_t first_bad = std::numeric_limits<int64_t>::max();
  const int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
  const bool par = nt > 1 && c.M * c.D >= 32768;  // tiny problems are not worth waking the thread pool
#pragma omp parallel num_threads(par ? nt : 1) reduction(min : first_bad)
  {
    AlignedBuf coef = aligned_floats(size_t(kRB) * p.rp);
    AlignedBuf xbuf = aligned_floats(MODE == kShift ? size_t(kRB) * c.D : 0);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * kRB;
      if (rows<kRB, MODE>(p, i0, coef.get(), xbuf.get())) {  // locate the exact row only on the error path
        const int64_t i = first_bad_row(c.out, c.D, i0, i0 + kRB);
        if (i >= 0) first_bad = std::min(first_bad, i);
      }
    }
#pragma omp single nowait
    for (int64_t i = nblocks * kRB; i < c.M; ++i)
      if (rows<1, MODE>(p, i, coef.get(), xbuf.get())) first_bad = std::min(first_bad, i);
    if (p.nt64 || p.nt32) _mm_sfence();
  }
  return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

}  // namespace

int64_t run_avx512(const Call& c, int num_threads) {
  P p{};
  p.c = &c;
  p.D = c.D;
  p.D8 = (c.D + 7) & ~int64_t(7);
  p.D16 = (c.D + 15) & ~int64_t(15);
  p.r = c.r;
  p.npairs = (c.r + 1) / 2;
  p.rp = 2 * p.npairs;
  const uintptr_t o = reinterpret_cast<uintptr_t>(c.out);
  p.nt64 = c.nt && o % 64 == 0 && c.D % 16 == 0;
  p.nt32 = c.nt && !p.nt64 && o % 32 == 0 && c.D % 8 == 0;
  // W^T twice per call (O(r D)): pair-interleaved for phase 1, row-major for phase 2
  AlignedBuf w2 = aligned_floats(size_t(p.D8) * p.npairs * 2);
  AlignedBuf wt = aligned_floats(size_t((p.D16 + 63) / 64) * 64 * p.r);
  for (int64_t d = 0; d < c.D; ++d)
    for (int k = 0; k < c.r; ++k) {
      const float w = c.W[d * c.r + k];
      w2[size_t(((d >> 3) * p.npairs + k / 2) * 16 + (k % 2) * 8 + (d & 7))] = w;
      wt[size_t(((d >> 6) * p.r + k) * 64 + (d & 63))] = w;
    }
  p.w2 = w2.get();
  p.wt = wt.get();
  switch (c.mode) {
    case kProj: return run_mode<kProj>(p, num_threads);
    case kComp: return run_mode<kComp>(p, num_threads);
    default: return run_mode<kShift>(p, num_threads);
  }
}

}  // namespace lda
}  // namespace cpu
}  // namespace xite
