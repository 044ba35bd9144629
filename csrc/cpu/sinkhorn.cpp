// Batched log-domain Sinkhorn (entropic OT, cost ½‖x − y‖²) and its envelope-theorem backward.
//
//   f_i = −ε log Σ_j b_j exp((g_j − C_ij)/ε)      g_j = −ε log Σ_i a_i exp((f_i − C_ij)/ε)
//   OT_ε(α, β) = <a, f> + <b, g>                    π_ij = a_i b_j exp((f_i + g_j − C_ij)/ε)
//   ∂OT/∂x_i = Σ_j π_ij (x_i − y_j)                 ∂OT/∂y_j = Σ_i π_ij (y_j − x_i)
//
// Layout: x (B, n, D), y (B, m, D), weights a (B, n), b (B, m), C-contiguous, float32 (AVX2 path)
// or float64 (scalar path, for gradchecks). Zero weights mark padding: each batch item is
// compacted to its real points, so padded rows cost nothing. The cost matrix of one item is built
// once (and its transpose, so both half-steps stream contiguous rows) in a scratch buffer that is
// allocated once per thread per call; iterations allocate nothing.
// Threads: OpenMP over the batch when B >= threads, otherwise over the rows of each item.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"
#include "cpu/xite_cpu.h"

namespace {

#if defined(XITE_HAVE_AVX2)
// exp for 8 floats (Cephes polynomial, ~1 ulp on [-87, 88]); inputs below -87 flush to 0, which
// is what log-sum-exp needs for entries far below the running max.
inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 lo = _mm256_set1_ps(-87.3365478515625f);
  __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  // n = round(x / ln2), r = x − n ln2 (split ln2 for accuracy)
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 out = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(underflow, out);
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// −ε · log Σ_j exp(h_j − c_j/ε)   (the "softmin" of one row); two passes, no temporary buffer.
template <typename T>
inline T softmin_row(const T* c, const T* h, int len, T inv_eps, T eps) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int j = 0; j < len; ++j) mx = std::max(mx, h[j] - c[j] * inv_eps);
  T s = 0;
  for (int j = 0; j < len; ++j) s += std::exp(h[j] - c[j] * inv_eps - mx);
  return -eps * (mx + std::log(s));
}

#if defined(XITE_HAVE_AVX2)
template <>
inline float softmin_row<float>(const float* c, const float* h, int len, float inv_eps, float eps) {
  const __m256 vie = _mm256_set1_ps(inv_eps);
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int j = 0;
  for (; j + 8 <= len; j += 8)
    vmax = _mm256_max_ps(vmax, _mm256_fnmadd_ps(_mm256_loadu_ps(c + j), vie, _mm256_loadu_ps(h + j)));
  float mx = hmax8(vmax);
  for (int k = j; k < len; ++k) mx = std::max(mx, h[k] - c[k] * inv_eps);
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 vs = _mm256_setzero_ps();
  j = 0;
  for (; j + 8 <= len; j += 8) {
    __m256 t = _mm256_fnmadd_ps(_mm256_loadu_ps(c + j), vie, _mm256_loadu_ps(h + j));
    vs = _mm256_add_ps(vs, exp256(_mm256_sub_ps(t, vmx)));
  }
  float s = hsum8(vs);
  for (int k = j; k < len; ++k) s += std::exp(h[k] - c[k] * inv_eps - mx);
  return -eps * (mx + std::log(s));
}
#endif

// ½‖u − v‖² over D coordinates.
template <typename T>
inline T half_sqdist(const T* u, const T* v, int64_t d) {
  T s = 0;
  for (int64_t k = 0; k < d; ++k) {
    T t = u[k] - v[k];
    s += t * t;
  }
  return T(0.5) * s;
}

#if defined(XITE_HAVE_AVX2)
template <>
inline float half_sqdist<float>(const float* u, const float* v, int64_t d) {
  // Direct differences instead of |u|²+|v|²−2u·v: no cancellation, so C_ii = 0 exactly and the
  // self-transport terms of the debiased divergence cancel to rounding.
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(u + k), _mm256_loadu_ps(v + k));
    __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(u + k + 8), _mm256_loadu_ps(v + k + 8));
    a0 = _mm256_fmadd_ps(t0, t0, a0);
    a1 = _mm256_fmadd_ps(t1, t1, a1);
  }
  for (; k + 8 <= d; k += 8) {
    __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(u + k), _mm256_loadu_ps(v + k));
    a0 = _mm256_fmadd_ps(t0, t0, a0);
  }
  float s = hsum8(_mm256_add_ps(a0, a1));
  for (; k < d; ++k) {
    float t = u[k] - v[k];
    s += t * t;
  }
  return 0.5f * s;
}
#endif

// ½‖x_r − y_c‖² for a block of up to 4 rows × 3 columns (pointers; short blocks repeat the last
// pointer and the extra results are dropped). Each loaded x/y chunk feeds 3/4 pair updates, so the
// loop is compute- rather than load-bound, while keeping the exact difference form.
template <typename T>
inline void half_sqdist_block(const T* const* xs, const T* const* ys, int64_t d, T out[4][3]) {
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c) out[r][c] = half_sqdist<T>(xs[r], ys[c], d);
}

#if defined(XITE_HAVE_AVX2)
template <>
inline void half_sqdist_block<float>(const float* const* xs, const float* const* ys, int64_t d, float out[4][3]) {
  __m256 acc[4][3];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= d; k += 8) {
    __m256 yv0 = _mm256_loadu_ps(ys[0] + k), yv1 = _mm256_loadu_ps(ys[1] + k), yv2 = _mm256_loadu_ps(ys[2] + k);
    for (int r = 0; r < 4; ++r) {
      __m256 xv = _mm256_loadu_ps(xs[r] + k);
      __m256 t0 = _mm256_sub_ps(xv, yv0), t1 = _mm256_sub_ps(xv, yv1), t2 = _mm256_sub_ps(xv, yv2);
      acc[r][0] = _mm256_fmadd_ps(t0, t0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(t1, t1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(t2, t2, acc[r][2]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c) {
      float sum = hsum8(acc[r][c]);
      for (int64_t q = k; q < d; ++q) {
        float t = xs[r][q] - ys[c][q];
        sum += t * t;
      }
      out[r][c] = 0.5f * sum;
    }
}
#endif

// Parallel over batch items, or (few large items) over the rows of each item. Row-parallel
// regions synchronise twice per iteration, which only pays off for large items.
inline bool batch_parallel(int64_t B, int64_t n, int64_t m) {
  const int threads = omp_get_max_threads();
  return B >= threads || threads == 1 || n * m < 128 * 128;
}

// Tiny problems run on the calling thread: waking a team costs more than it saves (and much
// more when the cores are oversubscribed).
inline bool worth_threads(int64_t B, int64_t n, int64_t m, int64_t d, int64_t iters) {
  return B * n * m * (2 * iters + d / 8) >= (int64_t(1) << 18);
}

// Per-item working set, sized for the largest item of the call and reused for every item.
template <typename T>
struct Scratch {
  std::vector<T> cost, cost_t, la, lb, ha, hb, f, g;
  std::vector<int64_t> ix, iy;
  Scratch(int64_t n, int64_t m)
      : cost(n * m), cost_t(n * m), la(n), lb(m), ha(n), hb(m), f(n), g(m), ix(n), iy(m) {}
};

template <typename T>
struct Problem {
  const T *x, *y, *a, *b;
  int64_t n, m, d;
};

// Compact the real points of item `bi`, build C and Cᵀ. Returns (n_real, m_real).
template <typename T>
std::pair<int, int> prepare_item(const Problem<T>& p, int64_t bi, Scratch<T>& s, bool par) {
  const T* a = p.a + bi * p.n;
  const T* b = p.b + bi * p.m;
  int nb = 0, mb = 0;
  for (int64_t i = 0; i < p.n; ++i)
    if (a[i] > 0) {
      s.ix[nb] = i;
      s.la[nb] = std::log(a[i]);
      ++nb;
    }
  for (int64_t j = 0; j < p.m; ++j)
    if (b[j] > 0) {
      s.iy[mb] = j;
      s.lb[mb] = std::log(b[j]);
      ++mb;
    }
  const T* xb = p.x + bi * p.n * p.d;
  const T* yb = p.y + bi * p.m * p.d;
  T* cost = s.cost.data();
  T* cost_t = s.cost_t.data();
  const int n_iblk = (nb + 3) / 4;
#pragma omp parallel for schedule(static) if (par)
  for (int ib = 0; ib < n_iblk; ++ib) {
    const int i0 = ib * 4, ni = std::min(4, nb - i0);
    const T* xs[4];
    for (int r = 0; r < 4; ++r) xs[r] = xb + s.ix[i0 + std::min(r, ni - 1)] * p.d;
    for (int j0 = 0; j0 < mb; j0 += 3) {
      const int nj = std::min(3, mb - j0);
      const T* ys[3];
      for (int c = 0; c < 3; ++c) ys[c] = yb + s.iy[j0 + std::min(c, nj - 1)] * p.d;
      T blk[4][3];
      half_sqdist_block<T>(xs, ys, p.d, blk);
      for (int r = 0; r < ni; ++r)
        for (int c = 0; c < nj; ++c) {
          cost[(int64_t)(i0 + r) * mb + j0 + c] = blk[r][c];
          cost_t[(int64_t)(j0 + c) * nb + i0 + r] = blk[r][c];
        }
    }
  }
  return {nb, mb};
}

// Sinkhorn iterations on the prepared item. Writes f, g (compact) into the scratch, returns the
// number of iterations run.
template <typename T>
int iterate_item(Scratch<T>& s, int nb, int mb, const double* eps_list, int n_eps, double tol, bool symmetric,
                 bool par) {
  const T* cost = s.cost.data();
  const T* cost_t = s.cost_t.data();
  T* f = s.f.data();
  T* g = s.g.data();
  T* ha = s.ha.data();
  T* hb = s.hb.data();
  const T* la = s.la.data();
  const T* lb = s.lb.data();
  std::fill(f, f + nb, T(0));
  std::fill(g, g + mb, T(0));
  const double final_eps = eps_list[n_eps - 1];
  int done = 0;
  for (int it = 0; it < n_eps; ++it) {
    const T eps = (T)eps_list[it];
    const T inv_eps = T(1) / eps;
    T change = 0;
    if (symmetric) {
      // f ← ½(f + T(f)); ha holds the old f so the whole row update uses one consistent f
      for (int i = 0; i < nb; ++i) ha[i] = la[i] + f[i] * inv_eps;
#pragma omp parallel for schedule(static) reduction(max : change) if (par)
      for (int i = 0; i < nb; ++i) {
        T t = softmin_row<T>(cost + (int64_t)i * nb, ha, nb, inv_eps, eps);
        T fn = T(0.5) * (f[i] + t);
        change = std::max(change, std::abs(fn - f[i]));
        hb[i] = fn;
      }
      std::copy(hb, hb + nb, f);
    } else {
      for (int j = 0; j < mb; ++j) hb[j] = lb[j] + g[j] * inv_eps;
#pragma omp parallel for schedule(static) reduction(max : change) if (par)
      for (int i = 0; i < nb; ++i) {
        T fn = softmin_row<T>(cost + (int64_t)i * mb, hb, mb, inv_eps, eps);
        change = std::max(change, std::abs(fn - f[i]));
        f[i] = fn;
      }
      for (int i = 0; i < nb; ++i) ha[i] = la[i] + f[i] * inv_eps;
#pragma omp parallel for schedule(static) if (par)
      for (int j = 0; j < mb; ++j) g[j] = softmin_row<T>(cost_t + (int64_t)j * nb, ha, nb, inv_eps, eps);
    }
    ++done;
    if (tol > 0 && (double)eps == (double)(T)final_eps && (double)change < tol) break;
  }
  if (symmetric) {
    // final plain step (no averaging), as in geomloss: sharper estimate of the fixed point
    const T eps = (T)final_eps;
    const T inv_eps = T(1) / eps;
    for (int i = 0; i < nb; ++i) ha[i] = la[i] + f[i] * inv_eps;
#pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < nb; ++i) hb[i] = softmin_row<T>(cost + (int64_t)i * nb, ha, nb, inv_eps, eps);
    std::copy(hb, hb + nb, f);
    std::copy(f, f + nb, g);
  }
  return done;
}

template <typename T>
void sinkhorn_impl(const T* x, const T* y, const T* a, const T* b, int64_t B, int64_t n, int64_t m, int64_t d,
                   const double* eps_list, int n_eps, double tol, bool symmetric, T* fo, T* go, double* vo,
                   int32_t* io) {
  Problem<T> p{x, y, a, b, n, m, d};
  {
    auto solve = [&](int64_t bi, Scratch<T>& s, bool par) {
      auto [nb, mb] = prepare_item<T>(p, bi, s, par);
      int done = iterate_item<T>(s, nb, mb, eps_list, n_eps, tol, symmetric, par);
      T* fb = fo + bi * n;
      T* gb = go + bi * m;
      std::fill(fb, fb + n, T(0));
      std::fill(gb, gb + m, T(0));
      double val = 0;
      const T* a = p.a + bi * n;
      const T* b = p.b + bi * m;
      for (int i = 0; i < nb; ++i) {
        fb[s.ix[i]] = s.f[i];
        val += (double)a[s.ix[i]] * (double)s.f[i];
      }
      for (int j = 0; j < mb; ++j) {
        gb[s.iy[j]] = s.g[j];
        val += (double)b[s.iy[j]] * (double)s.g[j];
      }
      vo[bi] = val;
      io[bi] = done;
    };
    if (batch_parallel(B, n, m)) {
#pragma omp parallel if (worth_threads(B, n, m, d, n_eps))
      {
        Scratch<T> s(n, m);
#pragma omp for schedule(dynamic, 1)
        for (int64_t bi = 0; bi < B; ++bi) solve(bi, s, false);
      }
    } else {
      Scratch<T> s(n, m);
      for (int64_t bi = 0; bi < B; ++bi) solve(bi, s, true);
    }
  }
}

// gx_i = w_b (r_i x_i − Σ_j π_ij y_j), gy_j = w_b (c_j y_j − Σ_i π_ij x_i) with r, c the row /
// column sums of π (exactly a, b only at convergence, so use the actual sums: this is the exact
// gradient of <π, C> at fixed π, the envelope-theorem gradient of the dual value).
// out[io_r] = w (Σ_c P_rc · self[io_r] − Σ_c P_rc · src[is_c]) for the rows r of a plan P
// (rows × cols, row-major) — one half of the envelope gradient: a small GEMM P · Y.
template <typename T>
inline void plan_apply_rows(const T* P, int r0, int nr, int cols, const T* src, const int64_t* is, const T* self,
                            const int64_t* io, int64_t d, T w, T* out) {
  for (int r = r0; r < r0 + nr; ++r) {
    T* o = out + io[r] * d;
    const T* row = P + (int64_t)r * cols;
    T rs = 0;
    for (int c = 0; c < cols; ++c) {
      const T pc = row[c];
      rs += pc;
      const T* sc = src + is[c] * d;
      for (int64_t k = 0; k < d; ++k) o[k] -= pc * sc[k];
    }
    const T* me = self + io[r] * d;
    for (int64_t k = 0; k < d; ++k) o[k] = w * (o[k] + rs * me[k]);
  }
}

template <typename T>
void plan_apply(const T* P, int rows, int cols, const T* src, const int64_t* is, const T* self, const int64_t* io,
                int64_t d, T w, T* out, bool par) {
#pragma omp parallel for schedule(static) if (par)
  for (int r0 = 0; r0 < rows; r0 += 4) plan_apply_rows<T>(P, r0, std::min(4, rows - r0), cols, src, is, self, io, d, w, out);
}

#if defined(XITE_HAVE_AVX2)
template <>
void plan_apply<float>(const float* P, int rows, int cols, const float* src, const int64_t* is, const float* self,
                       const int64_t* io, int64_t d, float w, float* out, bool par) {
  const int64_t d16 = d / 16 * 16;
#pragma omp parallel for schedule(static) if (par)
  for (int r0 = 0; r0 < rows; r0 += 4) {
    if (rows - r0 < 4 || d16 == 0) {
      plan_apply_rows<float>(P, r0, std::min(4, rows - r0), cols, src, is, self, io, d, w, out);
      continue;
    }
    // 4 plan rows × 16 coordinates in 8 registers; each source chunk is loaded once for 4 rows
    float rs[4] = {0, 0, 0, 0};
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < cols; ++c) rs[r] += P[(int64_t)(r0 + r) * cols + c];
    for (int64_t k = 0; k < d16; k += 16) {
      __m256 acc[4][2];
      for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      for (int c = 0; c < cols; ++c) {
        const float* sc = src + is[c] * d + k;
        __m256 s0 = _mm256_loadu_ps(sc), s1 = _mm256_loadu_ps(sc + 8);
        for (int r = 0; r < 4; ++r) {
          __m256 pv = _mm256_broadcast_ss(P + (int64_t)(r0 + r) * cols + c);
          acc[r][0] = _mm256_fmadd_ps(pv, s0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(pv, s1, acc[r][1]);
        }
      }
      const __m256 vw = _mm256_set1_ps(w);
      for (int r = 0; r < 4; ++r) {
        const float* me = self + io[r0 + r] * d + k;
        float* o = out + io[r0 + r] * d + k;
        __m256 vr = _mm256_set1_ps(rs[r]);
        _mm256_storeu_ps(o, _mm256_mul_ps(vw, _mm256_fmsub_ps(vr, _mm256_loadu_ps(me), acc[r][0])));
        _mm256_storeu_ps(o + 8, _mm256_mul_ps(vw, _mm256_fmsub_ps(vr, _mm256_loadu_ps(me + 8), acc[r][1])));
      }
    }
    for (int r = 0; r < 4; ++r) {
      const float* row = P + (int64_t)(r0 + r) * cols;
      float* o = out + io[r0 + r] * d;
      const float* me = self + io[r0 + r] * d;
      for (int64_t k = d16; k < d; ++k) {
        float acc = 0;
        for (int c = 0; c < cols; ++c) acc += row[c] * src[is[c] * d + k];
        o[k] = w * (rs[r] * me[k] - acc);
      }
    }
  }
}
#endif

template <typename T>
void sinkhorn_backward_impl(const T* x, const T* y, const T* a, const T* b, const T* fp, const T* gp, int64_t B,
                            int64_t n, int64_t m, int64_t d, double eps, const T* wp, bool symmetric, T* gx, T* gy) {
  Problem<T> p{x, y, a, b, n, m, d};
  // symmetric (x is y, π = πᵀ): gx + gy = 2 gx, so only gx is computed and gy is unused
  {
    const T inv_eps = T(1) / (T)eps;
    auto run = [&](int64_t bi, Scratch<T>& s, bool par) {
      auto [nb, mb] = prepare_item<T>(p, bi, s, par);
      const T* xb = p.x + bi * n * d;
      const T* yb = p.y + bi * m * d;
      const T* fb = fp + bi * n;
      const T* gb = gp + bi * m;
      const T w = symmetric ? T(2) * wp[bi] : wp[bi];
      T* gxb = gx + bi * n * d;
      T* gyb = symmetric ? nullptr : gy + bi * m * d;
      std::fill(gxb, gxb + n * d, T(0));
      if (!symmetric) std::fill(gyb, gyb + m * d, T(0));
      // π overwrites the cost in place (row-major), then its transpose overwrites cost_t
      T* pi = s.cost.data();
      T* pi_t = s.cost_t.data();
#pragma omp parallel for schedule(static) if (par)
      for (int i = 0; i < nb; ++i) {
        const T fi = s.la[i] + fb[s.ix[i]] * inv_eps;
        for (int j = 0; j < mb; ++j) {
          T v = std::exp(fi + s.lb[j] + (gb[s.iy[j]] - pi[(int64_t)i * mb + j]) * inv_eps);
          pi[(int64_t)i * mb + j] = v;
          pi_t[(int64_t)j * nb + i] = v;
        }
      }
      plan_apply<T>(pi, nb, mb, yb, s.iy.data(), xb, s.ix.data(), d, w, gxb, par);
      if (!symmetric) plan_apply<T>(pi_t, mb, nb, xb, s.ix.data(), yb, s.iy.data(), d, w, gyb, par);
    };
    if (batch_parallel(B, n, m)) {
#pragma omp parallel if (worth_threads(B, n, m, d, 1))
      {
        Scratch<T> s(n, m);
#pragma omp for schedule(dynamic, 1)
        for (int64_t bi = 0; bi < B; ++bi) run(bi, s, false);
      }
    } else {
      Scratch<T> s(n, m);
      for (int64_t bi = 0; bi < B; ++bi) run(bi, s, true);
    }
  }
}

}  // namespace

namespace xite {
namespace cpu {

template <typename T>
bool sinkhorn_items_nonempty(const T* w, int64_t B, int64_t n) {
  // every batch item needs at least one real point (positive weight)
  for (int64_t bi = 0; bi < B; ++bi) {
    bool any = false;
    for (int64_t i = 0; i < n && !any; ++i) any = w[bi * n + i] > 0;
    if (!any) return false;
  }
  return true;
}

template <typename T>
void sinkhorn(const T* x, const T* y, const T* a, const T* b, int64_t B, int64_t n, int64_t m, int64_t d,
              const double* eps_list, int n_eps, double tol, bool symmetric, T* f, T* g, double* value,
              int32_t* iters) {
  sinkhorn_impl<T>(x, y, a, b, B, n, m, d, eps_list, n_eps, tol, symmetric, f, g, value, iters);
}

template <typename T>
void sinkhorn_backward(const T* x, const T* y, const T* a, const T* b, const T* f, const T* g, int64_t B, int64_t n,
                       int64_t m, int64_t d, double eps, const T* w, bool symmetric, T* gx, T* gy) {
  sinkhorn_backward_impl<T>(x, y, a, b, f, g, B, n, m, d, eps, w, symmetric, gx, gy);
}

#define XITE_SINKHORN_INSTANTIATE(T)                                                                                \
  template bool sinkhorn_items_nonempty<T>(const T*, int64_t, int64_t);                                          \
  template void sinkhorn<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,         \
                            const double*, int, double, bool, T*, T*, double*, int32_t*);                       \
  template void sinkhorn_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, int64_t,       \
                                     int64_t, int64_t, int64_t, double, const T*, bool, T*, T*);
XITE_SINKHORN_INSTANTIATE(float)
XITE_SINKHORN_INSTANTIATE(double)
#undef XITE_SINKHORN_INSTANTIATE

}  // namespace cpu
}  // namespace xite
