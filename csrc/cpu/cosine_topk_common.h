// Shared parts of the cosine_topk kernels (cosine_topk*.cpp, peak.cpp): tile sizes, row norms,
// the per-query running top-k (TopK) and the bf16 kernel's candidate lists, the packing buffer,
// the target attributes of the AVX-512 / AVX512_BF16 functions, and the kernels' entry points.
// See cosine_topk.cpp for the overall scheme.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace xite {
namespace cpu {
namespace cosine {

constexpr int QR = 3;  // query rows per micro-kernel
constexpr int KR = 4;  // key rows per micro-kernel
#ifndef XITE_PF_A
#define XITE_PF_A 64
#endif
// The fp32 range of the kernels: a nonzero row whose squared norm lies outside [kTinyNormSq,
// kHugeNormSq] (norm outside [1e-30, 2^126]) cannot be scored in fp32 (1/norm or the dot product
// over/underflows, subnormal products lose the result). Such rows never reach a score: the search
// flags them (CosineTopkStatus::range_seen) and the caller (ops/cosine_topk.py) reruns it with those
// rows scaled by a power of two (exact; cosine is scale-invariant). Rows inside the range are never
// touched, so their results are unchanged bit for bit. Zero rows score 0.
constexpr double kTinyNormSq = 1e-60;
constexpr double kHugeNormSq = 0x1p252;
inline bool out_of_range(double sumsq) { return sumsq > 0 && (sumsq < kTinyNormSq || sumsq > kHugeNormSq); }
#ifndef XITE_KC_DEFAULT
#define XITE_KC_DEFAULT 0
#endif

// Sum of squares in double; non-finite iff the row holds NaN or inf.
inline double row_sumsq(const float* x, int64_t d) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  a0 = _mm256_add_pd(a0, a1);
  alignas(32) double t[4];
  _mm256_store_pd(t, a0);
  double s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < d; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

// Norm used as a divisor: +inf for zero vectors (and, until the caller rescales them, rows below the
// range) so that their scores are exactly 0.
// Dividing (rather than multiplying by 1/norm) reproduces x / |x| of the reference bit for bit
// in the common cases (e.g. D = 1 gives exactly +-1).
inline float norm_divisor(double sumsq) {
  return sumsq < kTinyNormSq ? std::numeric_limits<float>::infinity() : static_cast<float>(std::sqrt(sumsq));
}

// Candidate list of one query of the bf16 screening kernel (see run_tile_bf16): keys whose
// screened upper bound U = s~ + e reached the running k-th lower bound, compacted as it rises.
struct Cand {
  uint32_t j;  // key row (local to the call)
  float u;     // upper bound U on the exact score
};
struct CandList {
  Cand* p = nullptr;
  uint32_t n = 0, cap = 0;
  bool overflow = false;  // cap or memory budget exceeded, or a non-finite screened score: fp32 rerun
};
// Shared limits of all candidate lists of one call: entries per list and entries allocated in total.
struct CandBudget {
  uint32_t per_query;
  int64_t total;
  std::atomic<int64_t> used{0};
};

// Per-query running top-k: scores sorted descending, ties by ascending index.
// The bf16 kernel keeps its lower bounds L = s~ - e here (thr = running k-th L) and, in `cand`,
// every key whose upper bound reaches thr.
struct TopK {
  float* s;       // (n, k)
  int64_t* idx;   // (n, k)
  float* thr;     // (n,) current k-th score, -inf while fewer than k entries
  int32_t* cnt;   // (n,)
  int k;
  int* nan_seen;  // set when a score is inf/NaN (float32 overflow); shared, atomic store
  CandList* cand = nullptr;      // (n,) bf16 kernel only
  CandBudget* budget = nullptr;  // bf16 kernel only

  void cand_overflow(int64_t q) {
    CandList& c = cand[q];
    if (c.p) budget->used.fetch_sub(c.cap, std::memory_order_relaxed);
    std::free(c.p);
    c.p = nullptr;
    c.n = c.cap = 0;
    c.overflow = true;
    thr[q] = std::numeric_limits<float>::infinity();  // no finite bound passes: no more rare paths
  }

  // Appends (j, u); when the list is full, first drops the entries that can no longer be in the
  // top-k (u < thr), then grows it if that freed less than half.
  void cand_push(int64_t q, uint32_t j, float u) {
    CandList& c = cand[q];
    if (c.n == c.cap) {
      const float t = thr[q];
      uint32_t w = 0;
      for (uint32_t r = 0; r < c.n; ++r)
        if (c.p[r].u >= t) c.p[w++] = c.p[r];
      c.n = w;
      if (2 * c.n >= c.cap) {
        const uint32_t grow = c.cap ? c.cap : 64;
        if (c.cap + grow > budget->per_query ||
            budget->used.fetch_add(grow, std::memory_order_relaxed) + grow > budget->total) {
          if (c.cap + grow <= budget->per_query) budget->used.fetch_sub(grow, std::memory_order_relaxed);
          cand_overflow(q);
          return;
        }
        Cand* np = static_cast<Cand*>(std::realloc(c.p, sizeof(Cand) * (c.cap + grow)));
        if (!np) {
          budget->used.fetch_sub(grow, std::memory_order_relaxed);
          cand_overflow(q);
          return;
        }
        c.p = np;
        c.cap += grow;
      }
    }
    c.p[c.n++] = Cand{j, u};
  }

  // Rare path of the bf16 kernel: bit b of m flags key j0 + b, screened score sv[b] with error
  // bound ev[b], whose upper bound reached row q's threshold (or is NaN).
  inline void admit_flagged(int64_t q, uint32_t m, const float* sv, const float* ev, int64_t j0) {
    while (m) {
      const int b = __builtin_ctz(m);
      m &= m - 1;
      if (cand[q].overflow) return;
      if (!(std::fabs(sv[b]) <= std::numeric_limits<float>::max() && ev[b] <= std::numeric_limits<float>::max())) {
        cand_overflow(q);  // overflowed screened score or bound: the fp32 rerun decides
        return;
      }
      const float u = sv[b] + ev[b], l = sv[b] - ev[b];
      if (u >= thr[q]) cand_push(q, static_cast<uint32_t>(j0 + b), u);
      if (l > thr[q] && !cand[q].overflow) insert(q, l, j0 + b);
    }
  }

  // j is larger than every index already stored, so it goes after all entries with score >= s.
  inline void insert(int64_t q, float score, int64_t j) {
    float* S = s + q * k;
    int64_t* I = idx + q * k;
    int c = cnt[q];
    int pos = c < k ? c : k - 1;
    while (pos > 0 && S[pos - 1] < score) {
      S[pos] = S[pos - 1];
      I[pos] = I[pos - 1];
      --pos;
    }
    S[pos] = score;
    I[pos] = j;
    if (c < k) cnt[q] = ++c;
    if (c == k) thr[q] = S[k - 1];
  }

  // Rare path of the kernels' filters: bit b of m flags score sv[b] (of key j0 + b) as above row
  // `q`'s threshold or NaN/inf. Re-checked in key order: the threshold rises with every insertion.
  inline void insert_flagged(int64_t q, uint32_t m, const float* sv, int64_t j0) {
    while (m) {
      const int b = __builtin_ctz(m);
      m &= m - 1;
      if (!(sv[b] <= std::numeric_limits<float>::max())) {  // NaN or +inf: float32 overflow
        __atomic_store_n(nan_seen, 1, __ATOMIC_RELAXED);
      } else if (sv[b] > thr[q]) {
        insert(q, sv[b], j0 + b);
      }
    }
  }
};

struct Problem {
  const float* Q;  // (N, D) unit-norm (or zero) queries
  const float* K;  // (M, D) raw keys
  const float* knorm;  // (M,) key norms (1 when assume_normalized), +inf for zero keys
  int64_t N, M, D;
  int64_t key_offset;  // added to reported indices (chunked callers)
  int64_t qblock;      // queries per L2 block (multiple of QR)
};

// Packed kernels' micro-tiles (see cosine_topk_avx2.cpp and cosine_topk_avx512.cpp).
constexpr int PMR = 6;   // query rows per packed micro-tile
constexpr int PNR = 16;  // keys per packed micro-tile
constexpr int ZMR = 12;  // query rows per AVX-512 micro-tile
constexpr int ZNR = 32;  // keys per AVX-512 micro-tile

// AVX-512 / AVX512_BF16 functions are compiled with these target attributes (the rest of the module
// with -mavx2 -mfma), so the module loads on any x86-64 CPU and dispatches on the CPU's features.
#define XITE_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define XITE_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma")))

struct AlignedBuf {
  float* p = nullptr;
  size_t n = 0;
  void reserve(size_t count) {
    if (count <= n) return;
    std::free(p);
    p = static_cast<float*>(std::aligned_alloc(64, round_bytes(count)));
    XITE_CHECK(p != nullptr, "cosine_topk: out of memory allocating a packing buffer");
    n = count;
  }
  static size_t round_bytes(size_t count) { return (count * sizeof(float) + 63) / 64 * 64; }
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  ~AlignedBuf() { std::free(p); }
};

// bf16 kernel (see cosine_topk_bf16.cpp for the error bound and the certificate).
// 'auto' picks bf16 from this D on: measured (1 thread, CPU time, 2k x 50k, random data) 1.19x the
// fp32 AVX-512 kernel at D = 8, 1.34x at 16, 1.45x at 32, 1.52x at 64, 1.65x at 128 (bench/README.md)
constexpr int64_t kBf16MinD = 16;
constexpr int64_t kBf16MaxK = 256;        // ... and up to this k (candidates grow with k)
constexpr double kBf16Safety = 1.0625;
constexpr int64_t kBf16BudgetEntries = int64_t(32) << 20;  // 256 MiB of candidate entries per call

// bf16 bits (low 16) of a finite float, round to nearest even; fp32 subnormals -> signed zero.
inline uint32_t bf16_rne(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7F800000u) == 0) return (x >> 16) & 0x8000u;
  return (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
}

// The fp32 value of bf16 bits (low 16).
inline float bf16_value(uint32_t b) {
  const uint32_t x = b << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Upper bounds of the bound's terms (see cosine_topk_bf16.cpp): e = a zeta_j + c rho_j + b.
struct Bf16Bound {
  double u, gam, tiny_sqrt_d, tiny_const;
  explicit Bf16Bound(int64_t D) {
    const double Dd = static_cast<double>(D);
    u = std::ldexp(1.0, -24);
    gam = Dd * u / (1.0 - Dd * u);
    tiny_sqrt_d = std::ldexp(std::sqrt(Dd), -125);
    tiny_const = (2 * Dd + 1) * std::ldexp(1.0, -125);
  }
  // qn: an upper bound of |q^|; dq: of |q~ - q^| (the query's bf16 rounding); mun: of |mu| (the
  // centering vector of the keys).
  void query_terms(double qn, double dq, double mun, float* a, float* c, float* b) const {
    const double up = kBf16Safety * (1 + std::ldexp(1.0, -20));  // also absorbs the float rounding of a, b, c
    const double qt = qn + dq;                                    // >= |q~|
    const double g = (gam * (1 + u) + u) * qn;                    // the exact path, times r_j <= zeta_j + |mu|
    const double rnd = gam * qt + 8 * u * (1 + gam) * qt;         // accumulation; roundings of e, s~ +- e
    *a = static_cast<float>(up * (dq + rnd + g + tiny_sqrt_d));
    *c = static_cast<float>(up * (qt + rnd));
    *b = static_cast<float>(up * ((g + tiny_sqrt_d) * mun + tiny_sqrt_d * qn + tiny_const));
  }
};

// ---------------------------------------------------------------- kernels (one file per family)
// cosine_topk_avx2.cpp: 'dot' (3x4, unpacked) and 'packed' (AVX2 6x16) kernels, key packing.
// Scores queries [qa, qb) against keys [ja, jb) and folds them into `top` (rows indexed by
// query - top_row0).
void run_tile(const Problem& P, int64_t qa, int64_t qb, int64_t ja, int64_t jb, TopK& top, int64_t top_row0);
// Packs keys [j0, j1) into NR-key k-major panels (zero-padded) and their divisors into nrm
// (padding: 1). dst holds ceil((j1-j0)/NR) * D * NR floats. NR = 16 (AVX2 kernel) or 32 (AVX-512).
template <int PNR>
void pack_keys(const float* K, const float* knorm, int64_t j0, int64_t j1, int64_t D, float* dst, float* nrm);
// Scores queries [qa, qb) (qa a multiple of 6; A~ = all packed query panels) against the packed
// key block Bp (keys [ja, jb), divisors nrm) and folds them into `top`.
void run_tile_packed(const float* Ap, const float* Bp, const float* nrm, int64_t D, int64_t qa, int64_t qb,
                     int64_t ja, int64_t jb, int64_t qblock, int64_t key_offset, TopK& top);

// cosine_topk_avx512.cpp: 'avx512' (12x32) kernel.
// Scores queries [qa, qb) (qa a multiple of 12; A~ = all 12-row query panels) against the packed
// 32-key block Bp (keys [ja, jb), divisors nrm) and folds them into `top`.
XITE_AVX512 void run_tile_avx512(const float* Ap, const float* Bp, const float* nrm, int64_t D, int64_t qa,
                                 int64_t qb, int64_t ja, int64_t jb, int64_t qblock, int64_t kc,
                                 int64_t key_offset, TopK& top);

// cosine_topk_bf16.cpp: 'bf16' screening kernel, exact rescoring, final selection.
// Packs keys [j0, j1) centred by mu (z = x * fl(1 / n_x) - mu) as bf16 pairs into 32-key panels:
// dst[p][dp*32 + c] = (z~[2dp], z~[2dp+1]) of key 32p + c; padding keys are zero. rv[p*64 + c] =
// zeta_j >= |x / n_x - mu|, rv[p*64 + 32 + c] = rho_j >= |z~ - (x / n_x - mu)| (see the bound), 0 for padding.
XITE_BF16 void pack_keys_bf16(const float* K, const float* knorm, const float* rnorm, const float* mu, int64_t j0,
                              int64_t j1, int64_t D, uint32_t* dst, float* rv);
// Screens queries [qa, qb) (qa a multiple of 12; A~ = all bf16 query panels, (aq, cq, bq) their bound
// terms) against the packed bf16 key block Bp (keys [ja, jb), zeta_j / rho_j in rv): every key whose
// upper bound reaches the row's running k-th lower bound takes the rare path (TopK::admit_flagged).
XITE_BF16 void run_tile_bf16(const uint32_t* Ap, const uint32_t* Bp, const float* rv, int64_t Dp, int64_t qa,
                             int64_t qb, int64_t ja, int64_t jb, int64_t qblock, const float* aq, const float* cq,
                             const float* bq, TopK& top);
// Exact fp32 score of the packed kernels for one query row qh (its packed fp32 values) against
// keys js[0..n): FMA chain over d in order from 0, then the division by the key divisor. Eight
// independent chains at a time (throughput, not latency); bit-identical to the kernels' lanes.
void rescore_exact(const float* qh, const float* K, const float* knorm, int64_t D, const uint32_t* js, int64_t n,
                   float* out);
// Final stage of the bf16 kernel: for each query, the k-th largest lower bound over the `nparts`
// partial TopK lists (Ls (nparts, N, k), Lcnt (nparts, N)), then every candidate of every part
// whose upper bound reaches it is rescored exactly and the top-k selected under (score desc,
// index asc). Queries that overflowed in any part are returned in `fallback`.
void bf16_finish(const float* Qraw, const float* K, const float* knorm, int64_t N, int64_t D, int64_t k,
                 bool assume_normalized, int64_t key_offset, int Tq, int64_t nparts, const float* Ls,
                 const int32_t* Lcnt, CandList* cands, float* S, int64_t* I, std::vector<int64_t>& fallback,
                 int& nan_seen);

// Statistics of the last bf16 call (diagnostics for the bench): queries, candidates rescored, fp32 reruns.
struct Bf16Stats {
  std::atomic<int64_t> queries{0}, candidates{0}, fallback{0};
};
extern Bf16Stats g_bf16_stats;

}  // namespace cosine
}  // namespace cpu
}  // namespace xite
