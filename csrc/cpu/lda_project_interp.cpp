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
// is a plain row-by-row stream instead, which the hardware prefetchers follow best.
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

int64_t run(const Params& p, int num_threads) {
  const int64_t nblocks = (p.M + kRowBlock - 1) / kRowBlock;
  int64_t first_bad = std::numeric_limits<int64_t>::max();
  const int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
  // tiny problems are not worth waking the thread pool
  const bool par = nt > 1 && p.M * p.D >= 32768;
#pragma omp parallel num_threads(par ? nt : 1) reduction(min : first_bad)
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
