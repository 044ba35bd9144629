// Shared parts of lda_project_interp's kernels: lda_project_interp.cpp (AVX2 kernel, dispatch, triad)
// and lda_project_interp_avx512.cpp (AVX-512 kernel of the W modes). Internal to csrc/cpu.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace xite {
namespace cpu {
namespace lda {

enum Mode : int { kInterp = 0, kProj = 1, kComp = 2, kShift = 3 };

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<float[], AlignedFree>;

// n zeroed floats, 64-byte aligned.
inline AlignedBuf aligned_floats(size_t n) {
  size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  if (bytes == 0) bytes = 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return AlignedBuf(static_cast<float*>(p));
}

// The call's arguments (see xite_cpu.h), shared by both kernels.
struct Call {
  const float* s;
  const float* t;
  const float* W;  // (D, r) row-major; null for interp
  int r;
  const float* lam;
  int64_t lam_len, lam_div;
  Mode mode;
  float* out;
  int64_t M, D;
  bool nt;  // non-temporal stores (the kernel checks the alignment it needs)
};

// Horizontal sum of 8 lanes in one fixed order (both kernels use it: same bits).
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  lo = _mm_add_ss(lo, sh);
  return _mm_cvtss_f32(lo);
}

// Lanes [0, rem) set (rem in 0..8).
inline __m256i tail_mask(int64_t rem) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// OpenMP threads for an M x D call: num_threads (0: OpenMP's default), or 1 when the problem is too small
// to be worth waking the thread pool.
inline int pool_threads(int64_t M, int64_t D, int num_threads) {
  const int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
  return nt > 1 && M * D >= 32768 ? nt : 1;
}

// Inside a parallel region: this thread's contiguous share [i0, i1) of M rows (the row pipelines).
inline void thread_rows(int64_t M, int64_t& i0, int64_t& i1) {
  const int64_t T = omp_get_num_threads(), id = omp_get_thread_num();
  i0 = M * id / T;
  i1 = M * (id + 1) / T;
}

inline float lam_of(const Call& c, int64_t row) { return c.lam[c.lam_len == 1 ? 0 : row / c.lam_div]; }

// The first row of [i0, i1) with a non-finite output value, or -1 (error path only).
inline int64_t first_bad_row(const float* out, int64_t D, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t d = 0; d < D; ++d)
      if (!std::isfinite(out[i * D + d])) return i;
  return -1;
}

// AVX-512 kernel of proj / comp / shift (lda_project_interp_avx512.cpp); bit-identical to the AVX2
// kernel. Returns the first row whose output is not finite, or -1.
int64_t run_avx512(const Call& c, int num_threads);

}  // namespace lda
}  // namespace cpu
}  // namespace xite
