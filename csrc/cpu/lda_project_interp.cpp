// Fused LDA projection + interpolation (AVX2/FMA + OpenMP), one pass over the rows. On AVX-512F CPUs
// the W modes run the same arithmetic in zmm registers (lda_project_interp_avx512.cpp, same bits).
//
// With P(x) = x W W^T (W (D, r) orthonormal) and g = 1 - lam:
//   interp: out = lam*s + g*t
//   proj:   out = lam*s + g*P(t)
//   comp:   out = lam*s + g*t - g*P(t)
//   shift:  out = s - g*P(s) + g*P(t) = s + g*P(t - s)      (one projection instead of two)
// Every mode is  out = init(s, t) + sum_k coef_k * Wt[k]  with coef = +-g * (x . W), x in {t, t - s},
// so one kernel does all four: phase 1 computes x . W for a block of RB rows (dot products along D,
// Wt rows reused by the RB rows held in registers), phase 2 writes RB x 16 output tiles (GEMM-style
// micro-kernel: Wt vectors are loaded once per k and shared by the RB rows). s and t of the block
// are still in L1/L2 when phase 2 re-reads them, so DRAM sees each input once and the output once
// (non-temporal stores skip the read-for-ownership of the output when it is large). Phase 2
// prefetches the next block's rows so their DRAM latency overlaps this block's FMAs; interp (no W)
// is a plain row-by-row stream instead, which the hardware prefetchers follow best, and r <= 4 runs
// the row pipeline (run_pipe: phase 1 of the next row inside phase 2 of this one, same bits).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "common.h"
#include "cpu/lda_project_interp.h"
#include "cpu/xite_cpu.h"

namespace {

using namespace xite::cpu::lda;  // Mode, AlignedBuf, hsum, tail_mask, ... (lda_project_interp.h)

constexpr int kRowBlock = 4;  // rows per register block (phase 1: 4x2 accumulators, phase 2: 4x16 tile)
constexpr int kCompBlock = 2;  // components per phase-1 pass (Wt is zero-padded to a multiple of it)

struct Params {
  const float* s;
  const float* t;
  float* out;
  const float* wt;  // (rp, Dp) = W^T, zero-padded rows/columns, 64-byte aligned
  int64_t M, D, Dp;
  int r, rp;
  const float* lam;
  int64_t lam_len, lam_div;
  Mode mode;
  bool nt;  // non-temporal stores (out rows 32-byte aligned, large output)
};

// x_i . Wt[k] for RB rows starting at row i0 (x = t, or t - s for shift) -> coef[i * rp + k].
template <int RB>
inline void phase1(const Params& p, int64_t i0, float* coef) {
  const int64_t D = p.D, Dp = p.Dp;
  const int64_t full = D & ~int64_t(7);
  const bool shift = p.mode == kShift;
  const __m256i mask = tail_mask(D - full);
  const float* trow[RB];
  const float* srow[RB];
  for (int i = 0; i < RB; ++i) {
    trow[i] = p.t + (i0 + i) * D;
    srow[i] = p.s + (i0 + i) * D;
  }
  for (int k = 0; k < p.rp; k += kCompBlock) {
    const float* w0p = p.wt + int64_t(k) * Dp;
    const float* w1p = w0p + Dp;
    __m256 a0[RB], a1[RB];
    for (int i = 0; i < RB; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d < full; d += 8) {
      const __m256 w0 = _mm256_load_ps(w0p + d);
      const __m256 w1 = _mm256_load_ps(w1p + d);
      for (int i = 0; i < RB; ++i) {
        __m256 x = _mm256_loadu_ps(trow[i] + d);
        if (shift) x = _mm256_sub_ps(x, _mm256_loadu_ps(srow[i] + d));
        a0[i] = _mm256_fmadd_ps(x, w0, a0[i]);
        a1[i] = _mm256_fmadd_ps(x, w1, a1[i]);
      }
    }
    if (d < D) {  // masked tail: lanes past D load as 0 (and Wt is zero-padded there anyway)
      const __m256 w0 = _mm256_load_ps(w0p + d);
      const __m256 w1 = _mm256_load_ps(w1p + d);
      for (int i = 0; i < RB; ++i) {
        __m256 x = _mm256_maskload_ps(trow[i] + d, mask);
        if (shift) x = _mm256_sub_ps(x, _mm256_maskload_ps(srow[i] + d, mask));
        a0[i] = _mm256_fmadd_ps(x, w0, a0[i]);
        a1[i] = _mm256_fmadd_ps(x, w1, a1[i]);
      }
    }
    for (int i = 0; i < RB; ++i) {
      coef[i * p.rp + k] = hsum(a0[i]);
      coef[i * p.rp + k + 1] = hsum(a1[i]);
    }
  }
}

// One output tile: RB rows x NV*8 columns starting at column d. `masked` only for the last,
// partial 8-column chunk (NV == 1).
template <int RB, int NV>
inline __m256 tile(const Params& p, int64_t i0, int64_t d, const float* lam_row, const float* coef, bool masked,
                   __m256i mask, __m256 bad) {
  const int64_t D = p.D, Dp = p.Dp;
  __m256 acc[RB][NV];
  for (int i = 0; i < RB; ++i) {
    const float* srow = p.s + (i0 + i) * D + d;
    const float* trow = p.t + (i0 + i) * D + d;
    const __m256 lv = _mm256_set1_ps(lam_row[i]);
    const __m256 gv = _mm256_set1_ps(1.0f - lam_row[i]);
    for (int v = 0; v < NV; ++v) {
      const __m256 sv = masked ? _mm256_maskload_ps(srow + 8 * v, mask) : _mm256_loadu_ps(srow + 8 * v);
      if (p.mode == kShift) {
        acc[i][v] = sv;
      } else if (p.mode == kProj) {
        acc[i][v] = _mm256_mul_ps(lv, sv);
      } else {  // interp, comp: lam*s + g*t
        const __m256 tv = masked ? _mm256_maskload_ps(trow + 8 * v, mask) : _mm256_loadu_ps(trow + 8 * v);
        acc[i][v] = _mm256_fmadd_ps(gv, tv, _mm256_mul_ps(lv, sv));
      }
    }
  }
  if (p.mode != kInterp) {
    for (int k = 0; k < p.r; ++k) {
      __m256 w[NV];
      for (int v = 0; v < NV; ++v) w[v] = _mm256_load_ps(p.wt + int64_t(k) * Dp + d + 8 * v);
      for (int i = 0; i < RB; ++i) {
        const __m256 c = _mm256_broadcast_ss(coef + i * p.rp + k);
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(c, w[v], acc[i][v]);
      }
    }
  }
  if (NV == 2 && i0 + 2 * RB <= p.M) {
    // pull the next row block's inputs while this block computes (phase 1 of the next block
    // would otherwise stall on DRAM with nothing to overlap)
    for (int i = 0; i < RB; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(p.t + (i0 + RB + i) * D + d), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p.s + (i0 + RB + i) * D + d), _MM_HINT_T0);
    }
  }
  for (int i = 0; i < RB; ++i) {
    float* orow = p.out + (i0 + i) * D + d;
    for (int v = 0; v < NV; ++v) {
      // finite x gives x - x == +0 (all bits clear); inf/NaN give NaN, so OR-ing flags any of them
      bad = _mm256_or_ps(bad, _mm256_sub_ps(acc[i][v], acc[i][v]));
      if (masked) {
        _mm256_maskstore_ps(orow + 8 * v, mask, acc[i][v]);
      } else if (p.nt) {
        _mm256_stream_ps(orow + 8 * v, acc[i][v]);
      } else {
        _mm256_storeu_ps(orow + 8 * v, acc[i][v]);
      }
    }
  }
  return bad;
}

// Processes RB consecutive rows; returns true when an output value is not finite.
template <int RB>
inline bool rows(const Params& p, int64_t i0, float* coef) {
  float lam_row[RB];
  for (int i = 0; i < RB; ++i) {
    int64_t li = p.lam_len == 1 ? 0 : (i0 + i) / p.lam_div;
    lam_row[i] = p.lam[li];
  }
  if (p.mode != kInterp) {
    phase1<RB>(p, i0, coef);
    for (int i = 0; i < RB; ++i) {
      // comp subtracts g*P(t); proj and shift add g*P(x)
      const float g = (p.mode == kComp ? -1.0f : 1.0f) * (1.0f - lam_row[i]);
      for (int k = 0; k < p.r; ++k) coef[i * p.rp + k] *= g;
    }
  }
  const int64_t D = p.D;
  const int64_t full = D & ~int64_t(7);
  const __m256i mask = tail_mask(D - full);
  __m256 bad = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= full; d += 16) bad = tile<RB, 2>(p, i0, d, lam_row, coef, false, mask, bad);
  for (; d < full; d += 8) bad = tile<RB, 1>(p, i0, d, lam_row, coef, false, mask, bad);
  if (d < D) bad = tile<RB, 1>(p, i0, d, lam_row, coef, true, mask, bad);
  return !_mm256_testz_si256(_mm256_castps_si256(bad), _mm256_castps_si256(bad));
}

// interp needs no W: a plain row-by-row stream (2 input streams + 1 output, like a STREAM triad)
// keeps the hardware prefetchers on track better than the 4-row tiles (8 input streams).
inline bool interp_row(const Params& p, int64_t i) {
  const int64_t D = p.D;
  const float lam = p.lam[p.lam_len == 1 ? 0 : i / p.lam_div];
  const __m256 lv = _mm256_set1_ps(lam), gv = _mm256_set1_ps(1.0f - lam);
  const float* srow = p.s + i * D;
  const float* trow = p.t + i * D;
  float* orow = p.out + i * D;
  __m256 bad = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 v = _mm256_fmadd_ps(gv, _mm256_loadu_ps(trow + d), _mm256_mul_ps(lv, _mm256_loadu_ps(srow + d)));
    bad = _mm256_or_ps(bad, _mm256_sub_ps(v, v));
    if (p.nt) {
      _mm256_stream_ps(orow + d, v);
    } else {
      _mm256_storeu_ps(orow + d, v);
    }
  }
  if (d < D) {
    const __m256i mask = tail_mask(D - d);
    const __m256 v = _mm256_fmadd_ps(gv, _mm256_maskload_ps(trow + d, mask),
                                     _mm256_mul_ps(lv, _mm256_maskload_ps(srow + d, mask)));
    bad = _mm256_or_ps(bad, _mm256_sub_ps(v, v));
    _mm256_maskstore_ps(orow + d, mask, v);
  }
  return !_mm256_testz_si256(_mm256_castps_si256(bad), _mm256_castps_si256(bad));
}

inline float lam_of_row(const Params& p, int64_t i) { return p.lam[p.lam_len == 1 ? 0 : i / p.lam_div]; }

// Row pipeline (r <= kPipeMaxR): phase 1 of row i + 1 runs in the column loop of phase 2 of
// row i, so a thread reads three sequential streams (t of the next row, s of this one, the output), as
// in the triad, instead of the 4-row blocks' 8 interleaved input streams; both phases use the same W^T
// vectors of each 8 columns, and the rows kPipePrefetch ahead are prefetched. Per output value the
// arithmetic is the block kernel's (one 8-lane chain per component along D, hsum, init then one FMA per
// k in order): same bits. The AVX-512 twin is lda_project_interp_avx512.cpp. Up to r = 4 only: at
// r = 8 the ymm FMAs of one row at a time (no W^T reuse across rows) measured slower than the blocks
// (bench/README.md).
constexpr int kPipeMaxR = 4;
constexpr int64_t kPipePrefetch = 2;

template <int R>
struct Pipe2 {
  // columns [d, d + 8) (masked when MASKED): phase 1 of the next row (P1) and phase 2 of this one (P2)
  template <bool P1, bool P2, bool MASKED>
  static inline __m256 step(const Params& p, int64_t d, const float* tn, const float* sn, __m256* acc,
                            const float* s, const float* t, float* o, __m256 lv, __m256 gv, const float* coef,
                            __m256i mask, __m256 bad) {
    const bool shift = p.mode == kShift;
    __m256 x = _mm256_setzero_ps(), out = _mm256_setzero_ps();
    if (P1) {
      x = MASKED ? _mm256_maskload_ps(tn + d, mask) : _mm256_loadu_ps(tn + d);
      if (shift) x = _mm256_sub_ps(x, MASKED ? _mm256_maskload_ps(sn + d, mask) : _mm256_loadu_ps(sn + d));
    }
    if (P2) {
      const __m256 sv = MASKED ? _mm256_maskload_ps(s + d, mask) : _mm256_loadu_ps(s + d);
      if (shift) {
        out = sv;
      } else if (p.mode == kProj) {
        out = _mm256_mul_ps(lv, sv);
      } else {
        const __m256 tv = MASKED ? _mm256_maskload_ps(t + d, mask) : _mm256_loadu_ps(t + d);
        out = _mm256_fmadd_ps(gv, tv, _mm256_mul_ps(lv, sv));
      }
    }
    for (int k = 0; k < R; ++k) {
      const __m256 w = _mm256_load_ps(p.wt + int64_t(k) * p.Dp + d);
      if (P1) acc[k] = _mm256_fmadd_ps(x, w, acc[k]);
      if (P2) out = _mm256_fmadd_ps(_mm256_broadcast_ss(coef + k), w, out);
    }
    if (P2) {
      bad = _mm256_or_ps(bad, _mm256_sub_ps(out, out));
      if (MASKED) {
        _mm256_maskstore_ps(o + d, mask, out);
      } else if (p.nt) {
        _mm256_stream_ps(o + d, out);
      } else {
        _mm256_storeu_ps(o + d, out);
      }
    }
    return bad;
  }

  template <bool P1, bool P2>
  static inline __m256 pass(const Params& p, const float* tn, const float* sn, __m256* acc, const float* s,
                            const float* t, float* o, float lam, const float* coef, const float* pt,
                            const float* ps) {
    const int64_t D = p.D, full = D & ~int64_t(7);
    const __m256 lv = _mm256_set1_ps(lam), gv = _mm256_set1_ps(1.0f - lam);
    const __m256i none = _mm256_setzero_si256();
    __m256 bad = _mm256_setzero_ps();
    for (int64_t d = 0; d < full; d += 8) {
      if (pt != nullptr && (d & 15) == 0) {  // one line of each stream per 16 columns
        _mm_prefetch(reinterpret_cast<const char*>(pt + d), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(ps + d), _MM_HINT_T0);
      }
      bad = step<P1, P2, false>(p, d, tn, sn, acc, s, t, o, lv, gv, coef, none, bad);
    }
    if (full < D) bad = step<P1, P2, true>(p, full, tn, sn, acc, s, t, o, lv, gv, coef, tail_mask(D - full), bad);
    return bad;
  }

  static void finish(const Params& p, const __m256* acc, float lam, float* coef) {
    const float g = (p.mode == kComp ? -1.0f : 1.0f) * (1.0f - lam);
    for (int k = 0; k < R; ++k) coef[k] = hsum(acc[k]) * g;
  }

  // rows [i0, i1): the first row with a non-finite output, or -1
  static int64_t run_rows(const Params& p, int64_t i0, int64_t i1) {
    const int64_t D = p.D;
    alignas(32) float coef[2][R];
    __m256 acc[R];
    int64_t first_bad = -1;
    for (int k = 0; k < R; ++k) acc[k] = _mm256_setzero_ps();
    pass<true, false>(p, p.t + i0 * D, p.s + i0 * D, acc, nullptr, nullptr, nullptr, 0.0f, nullptr, nullptr,
                      nullptr);
    finish(p, acc, lam_of_row(p, i0), coef[0]);
    for (int64_t i = i0; i < i1; ++i) {
      const float* s = p.s + i * D;
      const float* t = p.t + i * D;
      float* o = p.out + i * D;
      const int cur = (i - i0) & 1;
      __m256 bad;
      if (i + 1 < i1) {
        for (int k = 0; k < R; ++k) acc[k] = _mm256_setzero_ps();
        const bool pf = i + 1 + kPipePrefetch < p.M;
        const float* pt = pf ? t + (1 + kPipePrefetch) * D : nullptr;
        const float* ps = pf ? (p.mode == kShift ? s + D : s) + kPipePrefetch * D : nullptr;
        bad = pass<true, true>(p, t + D, s + D, acc, s, t, o, lam_of_row(p, i), coef[cur], pt, ps);
        finish(p, acc, lam_of_row(p, i + 1), coef[cur ^ 1]);
      } else {
        bad = pass<false, true>(p, nullptr, nullptr, acc, s, t, o, lam_of_row(p, i), coef[cur], nullptr, nullptr);
      }
      if (first_bad < 0 && !_mm256_testz_si256(_mm256_castps_si256(bad), _mm256_castps_si256(bad)))
        first_bad = i;
    }
    return first_bad;
  }
};

int64_t run_pipe(const Params& p, int num_threads) {
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel num_threads(pool_threads(p.M, p.D, num_threads)) reduction(min : first_bad)
  {
    int64_t i0, i1;
    thread_rows(p.M, i0, i1);
    if (i0 < i1) {
      int64_t bad = -1;
      switch (p.r) {
        case 1: bad = Pipe2<1>::run_rows(p, i0, i1); break;
        case 2: bad = Pipe2<2>::run_rows(p, i0, i1); break;
        case 3: bad = Pipe2<3>::run_rows(p, i0, i1); break;
        default: bad = Pipe2<4>::run_rows(p, i0, i1); break;  // r == 4
      }
      if (bad >= 0) first_bad = bad;
    }
    if (p.nt) _mm_sfence();
  }
  return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

int64_t run(const Params& p, int num_threads) {
  const int64_t nblocks = (p.M + kRowBlock - 1) / kRowBlock;
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel num_threads(pool_threads(p.M, p.D, num_threads)) reduction(min : first_bad)
  {
    AlignedBuf coef = aligned_floats(size_t(kRowBlock) * std::max(p.rp, 1));
    if (p.mode == kInterp) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < p.M; ++i)
        if (interp_row(p, i)) first_bad = std::min(first_bad, i);
    } else {
#pragma omp for schedule(static)
      for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t i0 = b * kRowBlock;
        if (i0 + kRowBlock <= p.M) {
          if (rows<kRowBlock>(p, i0, coef.get())) {  // locate the exact row only on the error path
            const int64_t i = first_bad_row(p.out, p.D, i0, i0 + kRowBlock);
            if (i >= 0) first_bad = std::min(first_bad, i);
          }
        } else {
          for (int64_t i = i0; i < p.M; ++i)
            if (rows<1>(p, i, coef.get())) first_bad = std::min(first_bad, i);
        }
      }
    }
    if (p.nt) _mm_sfence();
  }
  return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

}  // namespace

namespace xite {
namespace cpu {

int lda_mode(const std::string& m) {
  if (m == "interp") return kInterp;
  if (m == "proj") return kProj;
  if (m == "comp") return kComp;
  if (m == "shift") return kShift;
  XITE_CHECK(false, "lda_project_interp: mode must be one of 'interp', 'proj', 'comp', 'shift', got '" << m << "'");
  return -1;
}

int64_t lda_project_interp(const float* src, const float* tgt, const float* W, int r, const float* lam,
                           int64_t lam_len, int64_t lam_div, int mode, float* out, int64_t M, int64_t D,
                           int num_threads, int nt_mode, int simd) {
  Params p{};
  p.s = src;
  p.t = tgt;
  p.out = out;
  p.M = M;
  p.D = D;
  p.Dp = (D + 7) & ~int64_t(7);
  p.r = r;
  p.rp = (r + kCompBlock - 1) / kCompBlock * kCompBlock;
  p.lam = lam;
  p.lam_len = lam_len;
  p.lam_div = lam_div;
  p.mode = static_cast<Mode>(mode);
  const bool aligned = (reinterpret_cast<uintptr_t>(p.out) % 32 == 0) && (D % 8 == 0);
  // nt_mode: -1 auto (outputs larger than ~L3 bypass the cache), 0 off, 1 on when aligned
  const bool big = M * D * int64_t(sizeof(float)) >= (int64_t(16) << 20);
  p.nt = aligned && (nt_mode == 1 || (nt_mode < 0 && big));
  // simd: -1 auto, 0 AVX2, 1 AVX-512 (bit-identical). auto: AVX-512 for the W modes on AVX-512F CPUs
  // (its row pipeline streams like the triad; the A/B is in bench/README.md).
  XITE_CHECK(simd != 1 || xite::cpu_has_avx512(), "lda_project_interp: simd='avx512' needs a CPU with AVX-512F");
  const bool use512 = simd == 1 || (simd < 0 && xite::cpu_has_avx512());
  if (p.mode != kInterp && use512) {
    const bool nt_any = (nt_mode == 1 || (nt_mode < 0 && big)) && D % 8 == 0;
    const Call c{src, tgt, W, r, lam, lam_len, lam_div, p.mode, out, M, D, nt_any};
    return run_avx512(c, num_threads);
  }

  // W^T once per call: (rp, Dp), zero-padded so phase 1 needs no masks on W and odd r is free
  AlignedBuf wt = aligned_floats(size_t(std::max(p.rp, 1)) * p.Dp);
  if (r > 0) {
    for (int64_t d = 0; d < D; ++d)
      for (int k = 0; k < r; ++k) wt[size_t(k) * p.Dp + d] = W[d * r + k];
  }
  p.wt = wt.get();
  if (p.mode != kInterp && r <= kPipeMaxR) return run_pipe(p, num_threads);
  return run(p, num_threads);
}

// STREAM-triad-like a = b + s*c (same traffic pattern as the op: 2 reads + 1 streamed write),
// used by the benchmark to measure the attainable memory bandwidth in the same run.
void lda_project_interp_triad(float* pa, const float* pb, const float* pc, int64_t n, float scalar, int num_threads) {
  const bool nt = reinterpret_cast<uintptr_t>(pa) % 32 == 0;
  const int nth = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel num_threads(nth)
  {
    const __m256 sv = _mm256_set1_ps(scalar);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < (n + 4095) / 4096; ++blk) {
      const int64_t lo = blk * 4096, hi = std::min(n, lo + 4096);
      int64_t i = lo;
      for (; i + 8 <= hi; i += 8) {
        const __m256 v = _mm256_fmadd_ps(sv, _mm256_loadu_ps(pc + i), _mm256_loadu_ps(pb + i));
        if (nt) {
          _mm256_stream_ps(pa + i, v);
        } else {
          _mm256_storeu_ps(pa + i, v);
        }
      }
      for (; i < hi; ++i) pa[i] = pb[i] + scalar * pc[i];
    }
    _mm_sfence();
  }
}

}  // namespace cpu
}  // namespace xite
