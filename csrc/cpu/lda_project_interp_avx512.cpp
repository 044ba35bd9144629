// lda_project_interp's AVX-512 kernels for the W modes (proj, comp, shift), picked at run time on
// AVX-512F CPUs (compiled with a target attribute: the module still loads on AVX2-only CPUs).
//
// Same scheme and the same arithmetic as the AVX2 kernel (lda_project_interp.cpp), so the output is
// bit-identical to it: per row,
//   phase 1  coef[k] = x . W[:, k] (x = t, or t - s for shift). The AVX2 kernel sums each component
//            in 8 lanes (lane l holds d = l mod 8) and reduces them with hsum(); here a zmm holds two
//            such 8-lane sums, components 2p and 2p+1 (the row's 8 values broadcast to both halves,
//            W^T paired up the same way), so every lane sees the same FMA sequence at twice the width.
//   phase 2  out = init(s, t) + sum_k coef[k] W^T[k] in 16-column tiles: per output value the same
//            sequence (init, then one FMA per k in order) as the AVX2 tile.
// Two schedules of these phases:
//   - the row pipeline (r <= 16, the LDA case: r = languages - 1): phase 1 of the next row(s) runs in
//     the same column loop as phase 2 of the current one(s), so the memory system sees the triad's
//     three sequential streams per thread, with software prefetch a few rows ahead;
//   - the row-block kernel (r > 16): phase 1 for a block of 8 rows held in registers, then phase 2 in
//     8-row x 16-column tiles, so the W^T vectors are shared by 8 rows; it reads 8 rows at a time
//     (16 interleaved input streams), which kept it at 62-86% of the triad at r <= 16 (bench/README.md).
// At r = 16 the op does 4 r D = 49k FLOP per row: at the zmm FMA rate about 3/4 of the rows' DRAM time
// on 2 cores, so large r approaches the compute bound. Outputs larger than the L3 go out with
// streaming stores.
#include <immintrin.h>
#include <omp.h>

#include <limits>
#include <stdexcept>

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
// Row pipeline (r <= kPipeMaxR): rows per step (1 up to r = 8, then 2: halves the W^T reads per row),
// prefetch distance in steps (1-5 measured the same at r = 4 and 16). bench/README.md has the A/B.
constexpr int kPipeMaxR = 16;
constexpr int kPipeRB2FromR = 9;
constexpr int64_t kPipePrefetch = 2;

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
#pragma omp parallel num_threads(pool_threads(c.M, c.D, num_threads)) reduction(min : first_bad)
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

// ------------------------------------------------------------------------------------------------------
// Row pipeline: RB rows at a time (1 or 2), phase 1 of the next RB rows fused into phase 2 of these
// (same column loop), so each thread reads t (and s) of the next rows and s of these and writes these
// rows' output: 3 RB sequential streams, as in the triad, instead of the block kernel's 2 x 8 interleaved
// row streams; the rows kPipePrefetch ahead are prefetched in the same loop. The phase-1 dependency
// chains (one per component pair along D) overlap phase 2's independent tiles. Both phases use the
// W^T vectors of the same 16 columns, loaded once per RB rows; from r = 5 phase 1 pairs them up with
// a shuffle (below that, loading the pair layout measured faster). The arithmetic per output value is
// the block kernel's (same chains, same tile order): same bits.
template <int R, Mode MODE, int RB>
struct Pipe {
  static constexpr int NP = (R + 1) / 2;
  static constexpr bool kShuf = R > 4;

  // x (8 columns from d: t, or t - s for shift), masked past D when MASKED
  template <bool MASKED>
  XITE_LDA512_INLINE static __m512 x8(const float* t, const float* s, int64_t d, __m256i mask) {
    __m256 x = MASKED ? _mm256_maskload_ps(t + d, mask) : _mm256_loadu_ps(t + d);
    if (MODE == kShift) x = _mm256_sub_ps(x, MASKED ? _mm256_maskload_ps(s + d, mask) : _mm256_loadu_ps(s + d));
    return dup256(x);
  }

  // Columns [d, d + 16) (d a multiple of 16): phase 1 of the next RB rows (P1; NB = 1 or 2 of their
  // 8-column chunks, the last one masked when MB) and one output tile of each of these RB rows (P2;
  // masked by m when MASKED). tn/sn/s/t/o point at the first row of each group (rows are D apart).
  template <bool P1, bool P2, bool MASKED, int NB, bool MB>
  XITE_LDA512_INLINE static __m512i step(const P& p, int64_t d, const float* tn, const float* sn, __m512 (*acc)[NP],
                                         __m256i mask8, const float* s, const float* t, float* o, const float* lam,
                                         const float (*coef)[R], __mmask16 m, __m512i bad) {
    const int64_t D = p.D;
    __m512 xa[RB], xb[RB], o16[RB];
    for (int q = 0; q < RB; ++q) {
      xa[q] = xb[q] = o16[q] = _mm512_setzero_ps();
      if (P1) {
        if (NB >= 1) xa[q] = x8<(MB && NB == 1)>(tn + q * D, sn + q * D, d, mask8);
        if (NB >= 2) xb[q] = x8<MB>(tn + q * D, sn + q * D, d + 8, mask8);
      }
      if (P2) {
        const float* sq = s + q * D;
        const __m512 sv = MASKED ? _mm512_maskz_loadu_ps(m, sq + d) : _mm512_loadu_ps(sq + d);
        if (MODE == kShift) {
          o16[q] = sv;
        } else if (MODE == kProj) {
          o16[q] = _mm512_mul_ps(_mm512_set1_ps(lam[q]), sv);
        } else {
          const float* tq = t + q * D;
          const __m512 tv = MASKED ? _mm512_maskz_loadu_ps(m, tq + d) : _mm512_loadu_ps(tq + d);
          o16[q] = _mm512_fmadd_ps(_mm512_set1_ps(1.0f - lam[q]), tv, _mm512_mul_ps(_mm512_set1_ps(lam[q]), sv));
        }
      }
    }
    for (int j = 0; j < NP; ++j) {
      const __m512 w0 = _mm512_load_ps(wt_at(p, 2 * j, d));
      const __m512 w1 = 2 * j + 1 < R ? _mm512_load_ps(wt_at(p, 2 * j + 1, d)) : _mm512_setzero_ps();
      if (P2) {
        for (int q = 0; q < RB; ++q) {
          o16[q] = _mm512_fmadd_ps(_mm512_set1_ps(coef[q][2 * j]), w0, o16[q]);
          if (2 * j + 1 < R) o16[q] = _mm512_fmadd_ps(_mm512_set1_ps(coef[q][2 * j + 1]), w1, o16[q]);
        }
      }
      if (P1) {
        // [W^T[2j][d..d+8), W^T[2j+1][d..d+8)] and the same for [d+8, d+16): the block kernel's pairs
        __m512 lo, hi;
        if (kShuf) {
          lo = _mm512_shuffle_f32x4(w0, w1, 0x44);
          hi = _mm512_shuffle_f32x4(w0, w1, 0xEE);
        } else {
          lo = _mm512_load_ps(p.w2 + ((d >> 3) * p.npairs + j) * 16);
          hi = NB >= 2 ? _mm512_load_ps(p.w2 + (((d >> 3) + 1) * p.npairs + j) * 16) : lo;
        }
        for (int q = 0; q < RB; ++q) {
          if (NB >= 1) acc[q][j] = _mm512_fmadd_ps(xa[q], lo, acc[q][j]);
          if (NB >= 2) acc[q][j] = _mm512_fmadd_ps(xb[q], hi, acc[q][j]);
        }
      }
    }
    if (P2) {
      for (int q = 0; q < RB; ++q) {
        float* oq = o + q * D;
        bad = _mm512_or_si512(bad, _mm512_castps_si512(_mm512_sub_ps(o16[q], o16[q])));
        if (MASKED) {
          _mm512_mask_storeu_ps(oq + d, m, o16[q]);
        } else if (p.nt64) {
          _mm512_stream_ps(oq + d, o16[q]);
        } else if (p.nt32) {
          _mm256_stream_ps(oq + d, _mm512_castps512_ps256(o16[q]));
          _mm256_stream_ps(oq + d + 8, hi256(o16[q]));
        } else {
          _mm512_storeu_ps(oq + d, o16[q]);
        }
      }
    }
    return bad;
  }

  // a row's coefficients from its phase-1 sums, times +-(1 - lam)
  XITE_LDA512_INLINE static void finish(const __m512* acc, float lam, float* coef) {
    float c[2 * NP];
    for (int j = 0; j < NP; ++j) {
      c[2 * j] = hsum(_mm512_castps512_ps256(acc[j]));
      c[2 * j + 1] = hsum(hi256(acc[j]));
    }
    const float g = (MODE == kComp ? -1.0f : 1.0f) * (1.0f - lam);
    for (int k = 0; k < R; ++k) coef[k] = c[k] * g;
  }

  // One pass over the columns: phase 2 of these RB rows (P2) and phase 1 of the next RB (P1).
  template <bool P1, bool P2>
  XITE_LDA512_INLINE static __m512i pass(const P& p, const float* tn, const float* sn, __m512 (*acc)[NP],
                                         const float* s, const float* t, float* o, const float* lam,
                                         const float (*coef)[R], const float* pt, const float* ps) {
    const int64_t D = p.D, full16 = D & ~int64_t(15), rem = D - full16;
    const __m256i none = _mm256_setzero_si256();
    __m512i bad = _mm512_setzero_si512();
    for (int64_t d = 0; d < full16; d += 16) {
      if (pt != nullptr) {
        for (int q = 0; q < RB; ++q) {
          _mm_prefetch(reinterpret_cast<const char*>(pt + q * D + d), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(ps + q * D + d), _MM_HINT_T0);
        }
      }
      bad = step<P1, P2, false, 2, false>(p, d, tn, sn, acc, none, s, t, o, lam, coef, 0, bad);
    }
    if (rem > 0) {  // the last, partial 16 columns: chunks as the block kernel (full 8, then masked)
      const __mmask16 m = static_cast<__mmask16>((1u << rem) - 1);
      if (rem == 8) {
        bad = step<P1, P2, true, 1, false>(p, full16, tn, sn, acc, none, s, t, o, lam, coef, m, bad);
      } else if (rem < 8) {
        bad = step<P1, P2, true, 1, true>(p, full16, tn, sn, acc, tail_mask(rem), s, t, o, lam, coef, m, bad);
      } else {
        bad = step<P1, P2, true, 2, true>(p, full16, tn, sn, acc, tail_mask(rem - 8), s, t, o, lam, coef, m, bad);
      }
    }
    return bad;
  }

  // rows [i0, i1), (i1 - i0) a multiple of RB; returns the first row with a non-finite output, or -1
  XITE_LDA512 static int64_t run_rows(const P& p, int64_t i0, int64_t i1) {
    const Call& c = *p.c;
    const int64_t D = p.D;
    alignas(64) float coef[2][RB][R];
    float lam[RB];
    __m512 acc[RB][NP];
    int64_t first_bad = -1;
    for (int q = 0; q < RB; ++q)
      for (int j = 0; j < NP; ++j) acc[q][j] = _mm512_setzero_ps();
    pass<true, false>(p, c.t + i0 * D, c.s + i0 * D, acc, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                      nullptr);
    for (int q = 0; q < RB; ++q) finish(acc[q], lam_of(c, i0 + q), coef[0][q]);
    for (int64_t i = i0; i < i1; i += RB) {
      const float* s = c.s + i * D;
      const float* t = c.t + i * D;
      float* o = c.out + i * D;
      const int cur = ((i - i0) / RB) & 1;
      for (int q = 0; q < RB; ++q) lam[q] = lam_of(c, i + q);
      __m512i bad;
      if (i + RB < i1) {
        for (int q = 0; q < RB; ++q)
          for (int j = 0; j < NP; ++j) acc[q][j] = _mm512_setzero_ps();
        // prefetch: the streams kPipePrefetch rows further on (t of the next rows; s of these rows,
        // or of the next rows for shift, which reads s in phase 1)
        const bool pf = i + RB * (1 + kPipePrefetch) <= c.M;
        const float* pt = pf ? t + RB * (1 + kPipePrefetch) * D : nullptr;
        const float* ps = pf ? (MODE == kShift ? s + RB * D : s) + RB * kPipePrefetch * D : nullptr;
        bad = pass<true, true>(p, t + RB * D, s + RB * D, acc, s, t, o, lam, coef[cur], pt, ps);
        for (int q = 0; q < RB; ++q) finish(acc[q], lam_of(c, i + RB + q), coef[cur ^ 1][q]);
      } else {
        bad = pass<false, true>(p, nullptr, nullptr, acc, s, t, o, lam, coef[cur], nullptr, nullptr);
      }
      if (first_bad < 0 && _mm512_test_epi32_mask(bad, bad) != 0)
        first_bad = RB == 1 ? i : first_bad_row(c.out, D, i, i + RB);
    }
    return first_bad;
  }
};

template <int R, Mode MODE>
XITE_LDA512 int64_t run_pipe_r(const P& p, int num_threads) {
  const Call& c = *p.c;
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel num_threads(pool_threads(c.M, c.D, num_threads)) reduction(min : first_bad)
  {
    int64_t i0, i1;
    thread_rows(c.M, i0, i1);
    if (i0 < i1) {
      int64_t bad;
      if (R >= kPipeRB2FromR) {  // pairs of rows; an odd last row alone
        const int64_t i2 = i0 + (i1 - i0) / 2 * 2;
        bad = i2 > i0 ? Pipe<R, MODE, 2>::run_rows(p, i0, i2) : -1;
        if (bad < 0 && i2 < i1) bad = Pipe<R, MODE, 1>::run_rows(p, i2, i1);
      } else {
        bad = Pipe<R, MODE, 1>::run_rows(p, i0, i1);
      }
      if (bad >= 0) first_bad = bad;
    }
    if (p.nt64 || p.nt32) _mm_sfence();
  }
  return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

template <Mode MODE>
int64_t run_pipe(const P& p, int num_threads) {
  switch (p.r) {
#define XITE_LDA_PIPE_CASE(R) \
  case R: return run_pipe_r<R, MODE>(p, num_threads);
    XITE_LDA_PIPE_CASE(1) XITE_LDA_PIPE_CASE(2) XITE_LDA_PIPE_CASE(3) XITE_LDA_PIPE_CASE(4)
    XITE_LDA_PIPE_CASE(5) XITE_LDA_PIPE_CASE(6) XITE_LDA_PIPE_CASE(7) XITE_LDA_PIPE_CASE(8)
    XITE_LDA_PIPE_CASE(9) XITE_LDA_PIPE_CASE(10) XITE_LDA_PIPE_CASE(11) XITE_LDA_PIPE_CASE(12)
    XITE_LDA_PIPE_CASE(13) XITE_LDA_PIPE_CASE(14) XITE_LDA_PIPE_CASE(15) XITE_LDA_PIPE_CASE(16)
#undef XITE_LDA_PIPE_CASE
    default: throw std::logic_error("lda_project_interp: row pipeline called with r > kPipeMaxR");
  }
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
  if (c.r <= kPipeMaxR) {
    switch (c.mode) {
      case kProj: return run_pipe<kProj>(p, num_threads);
      case kComp: return run_pipe<kComp>(p, num_threads);
      default: return run_pipe<kShift>(p, num_threads);
    }
  }
  switch (c.mode) {
    case kProj: return run_mode<kProj>(p, num_threads);
    case kComp: return run_mode<kComp>(p, num_threads);
    default: return run_mode<kShift>(p, num_threads);
  }
}

}  // namespace lda
}  // namespace cpu
}  // namespace xite
