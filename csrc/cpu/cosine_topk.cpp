// Fused exact cosine top-k on the CPU (AVX2/FMA + OpenMP).
//
//   score[i, j] = <q_i, x_j> / (|q_i| |x_j|)      (0 when either vector is zero)
//
// The N x M score matrix is never materialised. Queries are normalised once (an O(N D) copy);
// keys are never copied: their norms are computed per key block into an O(M) vector,
// in the same pass that checks them for NaN/inf (double-precision sum of squares, so the check
// is exact and huge finite values do not overflow).
//
// Blocking (row-major along D for both operands, so no packing is needed):
//   key block   (~4 MiB, shared L3; all threads sweep it before moving on, so a memory-mapped
//                key matrix is streamed from disk once)
//   query block (~160 KiB, L2) x key group of 4 rows (L1)
//   micro-kernel 3 queries x 4 keys: 12 ymm accumulators + 3 query vectors (keys are FMA memory
//                operands): 7 loads per 12 FMAs, horizontal sums at the end.
// Each 3x4 score tile is filtered against the per-query k-th best score with one SSE compare per
// query; insertions into the per-query sorted top-k array are rare.
// That is kernel='dot'. The default kernel='packed' (see micro_6x16) packs the queries once into
// 6-row k-major panels and each key block into 16-key k-major panels (per thread, O(block) per
// sweep) and runs a 6x16 broadcast/FMA micro-kernel whose 12 accumulators hold the scores directly:
// ~1.2-1.4x the 'dot' kernel (fewer loads per FMA, no horizontal sums). The two kernels round
// differently (sequential vs 8-lane sums), each is deterministic on its own.
// kernel='avx512' (see micro_12x32; chosen by 'auto' when the CPU reports AVX-512F at run time, the
// functions are compiled with a target attribute so the module still loads on AVX2-only CPUs) is
// the packed scheme with 12-query x 32-key tiles in 24 zmm accumulators: half the loads per FMA,
// ~1.2x the AVX2 packed kernel end to end on Zen 4, and bit-identical scores to it.
// kernel='bf16' (see run_tile_bf16; chosen by 'auto' when the CPU reports AVX512_BF16 and D >= 16)
// runs the same 12x32 tiles with bf16 pairs and vdpbf16ps (twice the fp32 FMA rate) as a certified
// screen, then rescores the surviving candidates with the fp32 kernels' exact arithmetic: the
// result is bit-identical to theirs.
//
// Determinism: every (query, key) score is produced by the same instruction sequence (edge tiles
// repeat the last row instead of using a different kernel), so scores are bit-identical whatever
// the thread count or tiling. The result is the top-k under the strict total order
// (score desc, index asc), which is unique; keys are visited in increasing index order per query,
// so a strict '>' against the k-th score implements "lower index wins ties", and the per-thread
// partial results of the key-split mode are merged under the same order.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "common.h"

namespace py = pybind11;

namespace {

constexpr int QR = 3;  // query rows per micro-kernel
constexpr int KR = 4;  // key rows per micro-kernel
// Vectors whose norm is below this are treated as zero vectors (score 0): 1/norm would overflow
// fp32 and their fp32 dot products are dominated by subnormal rounding anyway.
#ifndef XITE_PF_A
#define XITE_PF_A 64
#endif
constexpr double kTinyNormSq = 1e-60;
#ifndef XITE_KC_DEFAULT
#define XITE_KC_DEFAULT 0
#endif

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

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

// Norm used as a divisor: +inf for (near-)zero vectors so that their scores are exactly 0.
// Dividing (rather than multiplying by 1/norm) reproduces x / |x| of the reference bit for bit
// in the common cases (e.g. D = 1 gives exactly +-1).
inline float norm_divisor(double sumsq) {
  return sumsq < kTinyNormSq ? std::numeric_limits<float>::infinity() : static_cast<float>(std::sqrt(sumsq));
}

// 3 queries x 4 keys dot products. out[r] = (dot(q_r,k_0), .., dot(q_r,k_3)).
__attribute__((always_inline)) inline void micro_3x4(const float* __restrict q0, const float* __restrict q1,
                                                     const float* __restrict q2, const float* __restrict k0,
                                                     const float* __restrict k1, const float* __restrict k2,
                                                     const float* __restrict k3, int64_t d8, int64_t rem,
                                                     __m128 out[3]) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c02 = _mm256_setzero_ps(),
         c03 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c12 = _mm256_setzero_ps(),
         c13 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c22 = _mm256_setzero_ps(),
         c23 = _mm256_setzero_ps();
#define XITE_STEP(LOADQ, LOADK)                                              \
  {                                                                          \
    const __m256 a0 = LOADQ(q0 + i), a1 = LOADQ(q1 + i), a2 = LOADQ(q2 + i); \
    __m256 b = LOADK(k0 + i);                                                \
    c00 = _mm256_fmadd_ps(a0, b, c00);                                       \
    c10 = _mm256_fmadd_ps(a1, b, c10);                                       \
    c20 = _mm256_fmadd_ps(a2, b, c20);                                       \
    b = LOADK(k1 + i);                                                       \
    c01 = _mm256_fmadd_ps(a0, b, c01);                                       \
    c11 = _mm256_fmadd_ps(a1, b, c11);                                       \
    c21 = _mm256_fmadd_ps(a2, b, c21);                                       \
    b = LOADK(k2 + i);                                                       \
    c02 = _mm256_fmadd_ps(a0, b, c02);                                       \
    c12 = _mm256_fmadd_ps(a1, b, c12);                                       \
    c22 = _mm256_fmadd_ps(a2, b, c22);                                       \
    b = LOADK(k3 + i);                                                       \
    c03 = _mm256_fmadd_ps(a0, b, c03);                                       \
    c13 = _mm256_fmadd_ps(a1, b, c13);                                       \
    c23 = _mm256_fmadd_ps(a2, b, c23);                                       \
  }
#ifndef XITE_UNROLL
#define XITE_UNROLL 4
#endif
  int64_t i = 0;
  // Unrolled so the loop-exit branch (mispredicted once per call) and loop overhead amortise over
  // more FMAs; the accumulation order is the same as the plain loop.
  for (; i + 8 * XITE_UNROLL <= d8; i += 8 * XITE_UNROLL) {
#pragma GCC unroll 8
    for (int u = 0; u < XITE_UNROLL; ++u) {
      const int64_t iu = i + 8 * u;
      {
        const int64_t i = iu;
        XITE_STEP(_mm256_loadu_ps, _mm256_loadu_ps)
      }
    }
  }
  for (; i < d8; i += 8) XITE_STEP(_mm256_loadu_ps, _mm256_loadu_ps)
  if (rem) {
    // masked tail: maskload never touches the masked-out bytes (safe at the end of a mapping)
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - rem));
    i = d8;
#define XITE_MLOAD(p) _mm256_maskload_ps((p), m)
    XITE_STEP(XITE_MLOAD, XITE_MLOAD)
#undef XITE_MLOAD
  }
#undef XITE_STEP
  // One reduction tree for every (query, key) position: scores do not depend on the tile slot.
  // unpack/shuffle tree (single-uop shuffles; vhaddps is several uops on Zen 2)
  auto hsum4 = [](__m256 a, __m256 b, __m256 c, __m256 e) {
    const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));  // a02 b02 a13 b13
    const __m256 ce = _mm256_add_ps(_mm256_unpacklo_ps(c, e), _mm256_unpackhi_ps(c, e));
    const __m256 t = _mm256_add_ps(_mm256_shuffle_ps(ab, ce, 0x44), _mm256_shuffle_ps(ab, ce, 0xEE));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  };
  out[0] = hsum4(c00, c01, c02, c03);
  out[1] = hsum4(c10, c11, c12, c13);
  out[2] = hsum4(c20, c21, c22, c23);
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

// Scores queries [qa, qb) against keys [ja, jb) and folds them into `top` (rows indexed by
// query - top_row0).
void run_tile(const Problem& P, int64_t qa, int64_t qb, int64_t ja, int64_t jb, TopK& top, int64_t top_row0) {
  const int64_t D = P.D, d8 = D & ~int64_t(7), rem = D & 7;
  const float* Q = P.Q;
  const float* K = P.K;
  const size_t row_bytes = static_cast<size_t>(D) * sizeof(float);
  for (int64_t q0 = qa; q0 < qb; q0 += P.qblock) {
    const int64_t q1 = std::min(q0 + P.qblock, qb);
    const int64_t nmicro = (q1 - q0 + QR - 1) / QR;
    for (int64_t j = ja; j < jb; j += KR) {
      const int64_t nk = std::min<int64_t>(KR, jb - j);
      const float* kp[KR];
      alignas(16) float nrm[KR];
      for (int t = 0; t < KR; ++t) {
        const int64_t jj = j + std::min<int64_t>(t, nk - 1);  // edge: repeat last key row
        kp[t] = K + jj * D;
        nrm[t] = P.knorm[jj];
      }
      const __m128 vnrm = _mm_load_ps(nrm);
      const int valid_mask = (1 << nk) - 1;
      // Spread prefetches of the next key group over the micro-kernel calls of this group.
      const char* next = reinterpret_cast<const char*>(K + (j + KR) * D);
      const int64_t next_rows = std::min<int64_t>(KR, jb - (j + KR));
      const size_t next_bytes = next_rows > 0 ? static_cast<size_t>(next_rows) * row_bytes : 0;
      const size_t lines_per_call = next_bytes ? (next_bytes / 64 + nmicro) / nmicro : 0;
      size_t pf = 0;
      for (int64_t r = q0; r < q1; r += QR) {
        const int64_t nq = std::min<int64_t>(QR, q1 - r);
        const float* qp0 = Q + r * D;
        const float* qp1 = Q + (r + std::min<int64_t>(1, nq - 1)) * D;
        const float* qp2 = Q + (r + std::min<int64_t>(2, nq - 1)) * D;
#ifndef XITE_NO_PREFETCH
        for (size_t l = 0; l < lines_per_call && pf < next_bytes; ++l, pf += 64)
          _mm_prefetch(next + pf, _MM_HINT_T0);
#endif
        __m128 out[3];
        micro_3x4(qp0, qp1, qp2, kp[0], kp[1], kp[2], kp[3], d8, rem, out);
        for (int t = 0; t < nq; ++t) {
          const int64_t row = r + t - top_row0;
          const __m128 sc = _mm_div_ps(out[t], vnrm);
          // NLE_UQ: score > threshold, or NaN (overflowed inputs) -> both take the rare path
          int m = _mm_movemask_ps(_mm_cmp_ps(sc, _mm_set1_ps(top.thr[row]), _CMP_NLE_UQ)) & valid_mask;
          if (__builtin_expect(m != 0, 0)) {
            alignas(16) float sv[4];
            _mm_store_ps(sv, sc);
            top.insert_flagged(row, m, sv, j + P.key_offset);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Packed (BLIS-style) kernel: 6 queries x 16 keys per micro-tile, operands packed k-major.
//   A~ (queries): panels of 6 rows, A~[p][d*6 + r] = q_{6p+r}[d]   (packed once per call, O(N D))
//   B~ (keys):    panels of 16 keys, B~[p][d*16 + c] = x_{16p+c}[d] (packed per key block per thread)
// Per d step: 2 aligned loads of B~, 6 broadcasts of A~, 12 FMAs into 12 ymm accumulators, so the
// accumulators hold the 96 scores directly (no horizontal sums). Every score accumulates
// sequentially over d in one lane starting from 0, so it is bit-identical whatever the tiling.
// Zero padding rows/columns are masked out and never inserted.
constexpr int PMR = 6;   // query rows per packed micro-tile
constexpr int PNR = 16;  // keys per packed micro-tile

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

// Packs keys [j0, j1) into NR-key k-major panels (zero-padded) and their divisors into nrm
// (padding: 1). dst holds ceil((j1-j0)/NR) * D * NR floats. NR = 16 (AVX2 kernel) or 32 (AVX-512).
template <int PNR>
void pack_keys(const float* K, const float* knorm, int64_t j0, int64_t j1, int64_t D, float* dst, float* nrm) {
  const int64_t np = (j1 - j0 + PNR - 1) / PNR;
  for (int64_t p = 0; p < np; ++p) {
    float* out = dst + p * D * PNR;
    const int64_t jb = j0 + p * PNR;
    const int64_t nk = std::min<int64_t>(PNR, j1 - jb);
    for (int c = 0; c < PNR; ++c) nrm[p * PNR + c] = c < nk ? knorm[jb + c] : 1.0f;
    if (nk == PNR) {
      // 8x8 in-register transposes
      int64_t d = 0;
      for (; d + 8 <= D; d += 8) {
        for (int g = 0; g < PNR / 8; ++g) {
          const float* src = K + (jb + 8 * g) * D + d;
          __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + D), r2 = _mm256_loadu_ps(src + 2 * D),
                 r3 = _mm256_loadu_ps(src + 3 * D), r4 = _mm256_loadu_ps(src + 4 * D),
                 r5 = _mm256_loadu_ps(src + 5 * D), r6 = _mm256_loadu_ps(src + 6 * D),
                 r7 = _mm256_loadu_ps(src + 7 * D);
          __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
          __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
          __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
          __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
          __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
          __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
          __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
          __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
          float* o = out + d * PNR + 8 * g;
          _mm256_store_ps(o + 0 * PNR, _mm256_permute2f128_ps(u0, u4, 0x20));
          _mm256_store_ps(o + 1 * PNR, _mm256_permute2f128_ps(u1, u5, 0x20));
          _mm256_store_ps(o + 2 * PNR, _mm256_permute2f128_ps(u2, u6, 0x20));
          _mm256_store_ps(o + 3 * PNR, _mm256_permute2f128_ps(u3, u7, 0x20));
          _mm256_store_ps(o + 4 * PNR, _mm256_permute2f128_ps(u0, u4, 0x31));
          _mm256_store_ps(o + 5 * PNR, _mm256_permute2f128_ps(u1, u5, 0x31));
          _mm256_store_ps(o + 6 * PNR, _mm256_permute2f128_ps(u2, u6, 0x31));
          _mm256_store_ps(o + 7 * PNR, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
      }
      for (; d < D; ++d)
        for (int c = 0; c < PNR; ++c) out[d * PNR + c] = K[(jb + c) * D + d];
    } else {
      for (int64_t d = 0; d < D; ++d)
        for (int c = 0; c < PNR; ++c) out[d * PNR + c] = c < nk ? K[(jb + c) * D + d] : 0.0f;
    }
  }
}

// 6 x 16 scores: c[2r], c[2r+1] = dot(q_r, keys 0..7 / 8..15).
__attribute__((always_inline)) inline void micro_6x16(const float* __restrict A, const float* __restrict B,
                                                      int64_t D, __m256 c[12]) {
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
#define XITE_PSTEP(U)                                           \
  {                                                             \
    const float* a = A + (U) * PMR;                             \
    const __m256 b0 = _mm256_load_ps(B + (U) * PNR);            \
    const __m256 b1 = _mm256_load_ps(B + (U) * PNR + 8);        \
    __m256 av = _mm256_broadcast_ss(a + 0);                     \
    c00 = _mm256_fmadd_ps(av, b0, c00);                         \
    c01 = _mm256_fmadd_ps(av, b1, c01);                         \
    av = _mm256_broadcast_ss(a + 1);                            \
    c10 = _mm256_fmadd_ps(av, b0, c10);                         \
    c11 = _mm256_fmadd_ps(av, b1, c11);                         \
    av = _mm256_broadcast_ss(a + 2);                            \
    c20 = _mm256_fmadd_ps(av, b0, c20);                         \
    c21 = _mm256_fmadd_ps(av, b1, c21);                         \
    av = _mm256_broadcast_ss(a + 3);                            \
    c30 = _mm256_fmadd_ps(av, b0, c30);                         \
    c31 = _mm256_fmadd_ps(av, b1, c31);                         \
    av = _mm256_broadcast_ss(a + 4);                            \
    c40 = _mm256_fmadd_ps(av, b0, c40);                         \
    c41 = _mm256_fmadd_ps(av, b1, c41);                         \
    av = _mm256_broadcast_ss(a + 5);                            \
    c50 = _mm256_fmadd_ps(av, b0, c50);                         \
    c51 = _mm256_fmadd_ps(av, b1, c51);                         \
  }
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    _mm_prefetch(reinterpret_cast<const char*>(A + (d + XITE_PF_A) * PMR), _MM_HINT_T0);
    XITE_PSTEP(0)
    XITE_PSTEP(1)
    XITE_PSTEP(2)
    XITE_PSTEP(3)
    A += 4 * PMR;
    B += 4 * PNR;
    // pins the 12 accumulators to registers across iterations (GCC otherwise renames them through
    // the unrolled body and spills one)
    __asm__("" : "+x"(c00), "+x"(c01), "+x"(c10), "+x"(c11), "+x"(c20), "+x"(c21), "+x"(c30), "+x"(c31),
            "+x"(c40), "+x"(c41), "+x"(c50), "+x"(c51));
  }
  for (; d < D; ++d) {
    XITE_PSTEP(0)
    A += PMR;
    B += PNR;
  }
#undef XITE_PSTEP
  c[0] = c00, c[1] = c01, c[2] = c10, c[3] = c11, c[4] = c20, c[5] = c21;
  c[6] = c30, c[7] = c31, c[8] = c40, c[9] = c41, c[10] = c50, c[11] = c51;
}

// Scores queries [qa, qb) (qa a multiple of 6; A~ = all packed query panels) against the packed
// key block Bp (keys [ja, jb), divisors nrm) and folds them into `top`.
void run_tile_packed(const float* Ap, const float* Bp, const float* nrm, int64_t D, int64_t qa, int64_t qb,
                     int64_t ja, int64_t jb, int64_t qblock, int64_t key_offset, TopK& top) {
  const int64_t npanels = (jb - ja + PNR - 1) / PNR;
  for (int64_t q0 = qa; q0 < qb; q0 += qblock) {
    const int64_t q1 = std::min(q0 + qblock, qb);
    for (int64_t p = 0; p < npanels; ++p) {
      const float* B = Bp + p * D * PNR;
      const int64_t jp = ja + p * PNR;
      const int64_t nk = std::min<int64_t>(PNR, jb - jp);
      const unsigned valid = nk == PNR ? 0xFFFFu : ((1u << nk) - 1u);
      const __m256 n0 = _mm256_loadu_ps(nrm + p * PNR), n1 = _mm256_loadu_ps(nrm + p * PNR + 8);
      for (int64_t r = q0; r < q1; r += PMR) {
        const int nq = static_cast<int>(std::min<int64_t>(PMR, q1 - r));
        __m256 c[12];
        // Whole rows: splitting D into L1-sized chunks (partial sums through a buffer) measured
        // ~3-7% slower at D=768 on this machine.
        micro_6x16(Ap + (r / PMR) * PMR * D, B, D, c);
        for (int t = 0; t < nq; ++t) {
          const int64_t row = r + t;
          const __m256 thr = _mm256_set1_ps(top.thr[row]);
          const __m256 s0 = _mm256_div_ps(c[2 * t], n0), s1 = _mm256_div_ps(c[2 * t + 1], n1);
          // NLE_UQ: score > threshold, or NaN (overflowed inputs) -> both take the rare path
          unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s0, thr, _CMP_NLE_UQ))) |
                       (static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s1, thr, _CMP_NLE_UQ))) << 8);
          m &= valid;
          if (__builtin_expect(m != 0, 0)) {
            alignas(32) float sv[PNR];
            _mm256_store_ps(sv, s0);
            _mm256_store_ps(sv + 8, s1);
            top.insert_flagged(row, m, sv, jp + key_offset);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 packed kernel (runtime-dispatched; kernel='avx512', picked by 'auto' when the CPU has
// AVX-512F): 12 queries x 32 keys per micro-tile, 24 zmm accumulators + 2 B vectors + 1 broadcast
// (of 32 registers). Per d step: 2 loads of B~, 12 broadcasts of A~, 24 FMAs. On Zen 4 a zmm FMA
// is double-pumped (same FLOP peak as AVX2), but the tile needs half the loads per FMA and
// measured ~8% faster than the 6x16 AVX2 tile with both operands in L1.
// The reduction dimension is cut into chunks of `kc` (a 32-key x kc B~ chunk stays in L1 while
// the query block's 12-row A~ chunks stream from L2); partial sums go through a small per-thread
// buffer. Every score still accumulates sequentially over d in one lane from 0 with FMAs (fp32
// loads/stores of partial sums are exact), so the scores are bit-identical to the AVX2 packed
// kernel's and independent of kc and the tiling.
constexpr int ZMR = 12;  // query rows per AVX-512 micro-tile
constexpr int ZNR = 32;  // keys per AVX-512 micro-tile

#define XITE_AVX512 __attribute__((target("avx512f,avx2,fma")))

XITE_AVX512 __attribute__((always_inline)) inline void micro_12x32(const float* __restrict A,
                                                                   const float* __restrict B, int64_t len,
                                                                   const float* __restrict cin, __m512 c[24]) {
  if (cin) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) c[i] = _mm512_load_ps(cin + 16 * i);
  } else {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) c[i] = _mm512_setzero_ps();
  }
  // Measured (CPU time, 1 thread, 2400 x 50k): 93-95% of the register-only FMA peak at d=384/768
  // as written; unrolling d by 2 or 4 and software-prefetching A~ 32-64 steps ahead changed
  // nothing beyond the noise (92.5-95.1%).
  for (int64_t d = 0; d < len; ++d) {
    const __m512 b0 = _mm512_load_ps(B + d * ZNR), b1 = _mm512_load_ps(B + d * ZNR + 16);
    const float* a = A + d * ZMR;
#pragma GCC unroll 12
    for (int r = 0; r < ZMR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r]);
      c[2 * r] = _mm512_fmadd_ps(av, b0, c[2 * r]);
      c[2 * r + 1] = _mm512_fmadd_ps(av, b1, c[2 * r + 1]);
    }
  }
}

// Scores queries [qa, qb) (qa a multiple of 12; A~ = all 12-row query panels) against the packed
// 32-key block Bp (keys [ja, jb), divisors nrm) and folds them into `top`.
XITE_AVX512 void run_tile_avx512(const float* Ap, const float* Bp, const float* nrm, int64_t D, int64_t qa,
                                 int64_t qb, int64_t ja, int64_t jb, int64_t qblock, int64_t kc,
                                 int64_t key_offset, TopK& top) {
  const int64_t npanels = (jb - ja + ZNR - 1) / ZNR;
  if (kc <= 0 || kc > D) kc = D;
  thread_local AlignedBuf cbuf;  // partial sums of one query block x 32 keys
  const int64_t tiles = (qblock + ZMR - 1) / ZMR;
  if (kc < D) cbuf.reserve(static_cast<size_t>(tiles) * ZMR * ZNR);
  for (int64_t q0 = qa; q0 < qb; q0 += qblock) {
    const int64_t q1 = std::min(q0 + qblock, qb);
    for (int64_t p = 0; p < npanels; ++p) {
      const float* B = Bp + p * D * ZNR;
      const int64_t jp = ja + p * ZNR;
      const int64_t nk = std::min<int64_t>(ZNR, jb - jp);
      const uint32_t valid = nk == ZNR ? 0xFFFFFFFFu : ((1u << nk) - 1u);
      const __m512 n0 = _mm512_loadu_ps(nrm + p * ZNR), n1 = _mm512_loadu_ps(nrm + p * ZNR + 16);
      for (int64_t c0 = 0; c0 < D; c0 += kc) {
        const int64_t len = std::min(kc, D - c0);
        const bool first = c0 == 0, last = c0 + len == D;
        for (int64_t r = q0; r < q1; r += ZMR) {
          float* cb = cbuf.p + ((r - q0) / ZMR) * ZMR * ZNR;
          __m512 c[24];
          micro_12x32(Ap + (r / ZMR) * ZMR * D + c0 * ZMR, B + c0 * ZNR, len, first ? nullptr : cb, c);
          if (!last) {
#pragma GCC unroll 24
            for (int i = 0; i < 24; ++i) _mm512_store_ps(cb + 16 * i, c[i]);
            continue;
          }
          const int nq = static_cast<int>(std::min<int64_t>(ZMR, q1 - r));
          for (int t = 0; t < nq; ++t) {
            const int64_t row = r + t;
            const __m512 thr = _mm512_set1_ps(top.thr[row]);
            const __m512 s0 = _mm512_div_ps(c[2 * t], n0), s1 = _mm512_div_ps(c[2 * t + 1], n1);
            // NLE_UQ: score > threshold, or NaN (overflowed inputs) -> both take the rare path
            uint32_t m = static_cast<uint32_t>(_mm512_cmp_ps_mask(s0, thr, _CMP_NLE_UQ)) |
                         (static_cast<uint32_t>(_mm512_cmp_ps_mask(s1, thr, _CMP_NLE_UQ)) << 16);
            m &= valid;
            if (__builtin_expect(m != 0, 0)) {
              alignas(64) float sv[ZNR];
              _mm512_store_ps(sv, s0);
              _mm512_store_ps(sv + 16, s1);
              top.insert_flagged(row, m, sv, jp + key_offset);
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Certified bf16 screening + exact fp32 rescoring (kernel='bf16'; picked by 'auto' when the CPU
// reports AVX512_BF16 and D >= kBf16MinD). The result is bit-identical to the fp32 packed kernels
// (same indices, same fp32 scores, same tie order); only the work to get there changes.
//
// Screening: the queries q^ (exactly the fp32 values the packed kernels use: q / |q|, or q with
// assume_normalized) and the keys x^ = x * (1 / n_x) (n_x the key divisor) are rounded to bf16
// (round to nearest even; fp32-subnormal inputs flushed to 0) and packed as pairs of consecutive
// d (odd D padded with a 0) into the 12 x 32 panels of the AVX-512 kernel; `vdpbf16ps` (2 products
// per fp32 lane per instruction: twice the fp32 FMA rate) accumulates s~ in fp32.
//
// Error bound, per (query, key). Let u = 2^-24 (fp32 unit roundoff), ub = 2^-8 (bf16, 8-bit
// significand: |bf16(v) - v| <= ub |v| for normal v), S the exact path's score fl(fl_fma_chain(
// sum_i q^_i x_i) / n_x), t = sum_i q^_i x_i / n_x (real arithmetic), A = sum_i |q^_i| |x_i| / n_x
// <= |q^| r with r = |x| / n_x (Cauchy-Schwarz; r <= 1 + 2^-22 when normalising, |x| otherwise):
//  * inputs: q~_i = q^_i (1 + d1), x~_i = x_i/n_x (1 + d2)(1 + d3), |d1|, |d2| <= ub, |d3| <= 2u + u^2
//    (x * fl(1/n_x): two roundings), so |q~_i x~_i - q^_i x_i / n_x| <= ((1+ub)^2 (1+3u) - 1) |q^_i x_i| / n_x;
//  * accumulation: the bf16 x bf16 products are exact in fp32; the D additions (whatever the
//    instruction's internal order, at most D roundings on any path) err by <= gamma_D sum|q~_i x~_i|,
//    gamma_D = D u / (1 - D u);
//  * exact path: |S - t| <= gamma_D A (1 + u) + u |t| (D FMAs, then one division), |t| <= A;
//  * subnormals: vdpbf16ps treats bf16 denormal inputs as 0 and flushes denormal results; each
//    lost input product is < 2^-126 (|q^_i| + |x^_i|), each flushed result < 2^-126, and the exact
//    path's gradual underflow adds < 2^-149 per operation: in total
//    <= 2^-125 (||q^||_1 + ||x^||_1) + (2D + 1) 2^-125 <= 2^-125 sqrt(D) (|q^| + r) + (2D + 1) 2^-125.
// So |s~ - S| <= e = c1 |q^| r + 2^-125 sqrt(D) (|q^| + r) + (2D + 1) 2^-125 with
//   c1 = (1+ub)^2 (1+3u) - 1 + gamma_D (1+ub)^2 (1+3u) + gamma_D (1+u) + u + 8u,
// the last 8u covering the fp32 roundings of e, s~ + e and s~ - e below (each <= u (|s~| + e)).
// c1 ~ 2 ub + 2.03 D u (7.9e-3 at D = 768); it is multiplied by a safety factor of 1.0625.
// The kernel evaluates e = a_q r_j + b_q (a_q = 1.0625 (c1 |q^| + 2^-125 sqrt(D)), b_q = 1.0625
// 2^-125 (sqrt(D) |q^| + 2D + 1)) with |q^| and r_j rounded up (x (1 + 2^-20)).
//
// Certificate: U = s~ + e >= S >= L = s~ - e for every key. The k keys with the k largest L have
// exact scores >= their L, so the exact k-th score S_k >= L_k (the k-th largest L), and every key
// of the exact top-k has U >= S >= S_k >= L_k >= the running k-th largest L at any point of the
// sweep (it only rises). So the kernel keeps the k largest L per query (TopK) and every key with
// U >= the running k-th L (CandList, compacted as the threshold rises), then rescores the
// survivors of the final threshold with exactly the fp32 kernels' arithmetic (FMA chain over d in
// order from 0, then the division by n_x) and selects the top-k under (score desc, index asc).
// With a uniform e this is "keep s~ >= S~_k - 2e". Queries whose list outgrows the cap or the
// memory budget, or whose screened score overflows, are recomputed by the fp32 kernel, so the
// result is always exact and the memory bounded.
// 'auto' picks bf16 from this D on: measured (1 thread, CPU time, 2k x 50k, random data) 1.19x the
// fp32 AVX-512 kernel at D = 8, 1.34x at 16, 1.45x at 32, 1.52x at 64, 1.65x at 128 (bench/README.md)
constexpr int64_t kBf16MinD = 16;
constexpr int64_t kBf16MaxK = 256;        // ... and up to this k (candidates grow with k)
constexpr double kBf16Safety = 1.0625;
constexpr int64_t kBf16BudgetEntries = int64_t(32) << 20;  // 256 MiB of candidate entries per call

#define XITE_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma")))

// bf16 bits (low 16) of a finite float, round to nearest even; fp32 subnormals -> signed zero.
inline uint32_t bf16_rne(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7F800000u) == 0) return (x >> 16) & 0x8000u;
  return (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
}

// Upper bounds of the bound's terms (see above): e = a r + b.
struct Bf16Bound {
  double c1, tiny_sqrt_d, tiny_const;
  explicit Bf16Bound(int64_t D) {
    const double u = std::ldexp(1.0, -24), ub = std::ldexp(1.0, -8), Dd = static_cast<double>(D);
    const double gam = Dd * u / (1.0 - Dd * u);
    const double in = (1 + ub) * (1 + ub) * (1 + 3 * u);
    c1 = (in - 1) + gam * in + gam * (1 + u) + u + 8 * u;
    tiny_sqrt_d = std::ldexp(std::sqrt(Dd), -125);
    tiny_const = (2 * Dd + 1) * std::ldexp(1.0, -125);
  }
  // qnorm: an upper bound of |q^|
  void query_terms(double qnorm, float* a, float* b) const {
    const double up = 1 + std::ldexp(1.0, -20);  // also absorbs the float rounding of a and b
    *a = static_cast<float>(kBf16Safety * (c1 * qnorm + tiny_sqrt_d) * up);
    *b = static_cast<float>(kBf16Safety * (tiny_sqrt_d * qnorm + tiny_const) * up);
  }
};

// 16 floats -> 16 bf16 (in the low halves of the lanes), the same rounding as bf16_rne.
XITE_BF16 inline __m512i cvt16_bf16(__m512 v) {
  const __m512i x = _mm512_castps_si512(v);
  const __mmask16 sub = _mm512_testn_epi32_mask(x, _mm512_set1_epi32(0x7F800000));
  const __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)),
                       _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1))),
      16);
  return _mm512_mask_and_epi32(r, sub, _mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x8000));
}

// Packs keys [j0, j1) as bf16 pairs into 32-key panels: dst[p][dp*32 + c] = (x^[2dp], x^[2dp+1])
// of key 32p + c, x^ = x * fl(1 / n_x); padding keys are zero. rv[c] = r_j (see the bound), 0 for
// padding. tmp: per-thread scratch of 32 * Dp words (row-major conversion, then a transposing copy).
XITE_BF16 void pack_keys_bf16(const float* K, const float* knorm, const float* rnorm, int64_t j0, int64_t j1,
                              int64_t D, uint32_t* dst, float* rv) {
  const int64_t Dp = (D + 1) / 2;
  const int64_t np = (j1 - j0 + ZNR - 1) / ZNR;
  thread_local std::vector<uint32_t> tmp;
  if (static_cast<int64_t>(tmp.size()) < ZNR * Dp) tmp.resize(ZNR * Dp);
  for (int64_t p = 0; p < np; ++p) {
    uint32_t* out = dst + p * Dp * ZNR;
    const int64_t jb = j0 + p * ZNR;
    const int64_t nk = std::min<int64_t>(ZNR, j1 - jb);
    for (int c = 0; c < ZNR; ++c) rv[p * ZNR + c] = c < nk ? rnorm[jb + c] : 0.0f;
    for (int c = 0; c < nk; ++c) {
      const float* x = K + (jb + c) * D;
      const float inv = 1.0f / knorm[jb + c];
      const __m512 vinv = _mm512_set1_ps(inv);
      uint32_t* t = tmp.data() + c * Dp;
      int64_t d = 0;
      for (; d + 32 <= D; d += 32) {
        const __m512i lo = cvt16_bf16(_mm512_mul_ps(_mm512_loadu_ps(x + d), vinv));
        const __m512i hi = cvt16_bf16(_mm512_mul_ps(_mm512_loadu_ps(x + d + 16), vinv));
        // 32 bf16 in d order = 16 pairs (low half = even d)
        const __m256i l16 = _mm512_cvtepi32_epi16(lo), h16 = _mm512_cvtepi32_epi16(hi);
        _mm512_storeu_si512(t + d / 2, _mm512_inserti64x4(_mm512_castsi256_si512(l16), h16, 1));
      }
      for (; d < D; d += 2) {
        const uint32_t lo = bf16_rne(x[d] * inv), hi = d + 1 < D ? bf16_rne(x[d + 1] * inv) : 0u;
        t[d / 2] = lo | (hi << 16);
      }
    }
    for (int64_t dp = 0; dp < Dp; ++dp) {
      uint32_t* o = out + dp * ZNR;
      for (int c = 0; c < nk; ++c) o[c] = tmp[c * Dp + dp];
      for (int c = static_cast<int>(nk); c < ZNR; ++c) o[c] = 0;
    }
  }
}

// 12 x 32 screened scores: c[2r], c[2r+1] = s~(q_r, keys 0..15 / 16..31); A~/B~ hold bf16 pairs.
XITE_BF16 __attribute__((always_inline)) inline void micro_12x32_bf16(const uint32_t* __restrict A,
                                                                      const uint32_t* __restrict B, int64_t Dp,
                                                                      __m512 c[24]) {
#pragma GCC unroll 24
  for (int i = 0; i < 24; ++i) c[i] = _mm512_setzero_ps();
  for (int64_t d = 0; d < Dp; ++d) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(B + d * ZNR);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(B + d * ZNR + 16);
    const uint32_t* a = A + d * ZMR;
#pragma GCC unroll 12
    for (int r = 0; r < ZMR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
      c[2 * r] = _mm512_dpbf16_ps(c[2 * r], av, b0);
      c[2 * r + 1] = _mm512_dpbf16_ps(c[2 * r + 1], av, b1);
    }
  }
}

// Screens queries [qa, qb) (qa a multiple of 12; A~ = all bf16 query panels, (aq, bq) their bound
// terms) against the packed bf16 key block Bp (keys [ja, jb), r_j in rv): every key whose upper
// bound reaches the row's running k-th lower bound takes the rare path (TopK::admit_flagged).
XITE_BF16 void run_tile_bf16(const uint32_t* Ap, const uint32_t* Bp, const float* rv, int64_t Dp, int64_t qa,
                             int64_t qb, int64_t ja, int64_t jb, int64_t qblock, const float* aq, const float* bq,
                             TopK& top) {
  const int64_t npanels = (jb - ja + ZNR - 1) / ZNR;
  for (int64_t q0 = qa; q0 < qb; q0 += qblock) {
    const int64_t q1 = std::min(q0 + qblock, qb);
    for (int64_t p = 0; p < npanels; ++p) {
      const uint32_t* B = Bp + p * Dp * ZNR;
      const int64_t jp = ja + p * ZNR;
      const int64_t nk = std::min<int64_t>(ZNR, jb - jp);
      const uint32_t valid = nk == ZNR ? 0xFFFFFFFFu : ((1u << nk) - 1u);
      const __m512 r0 = _mm512_loadu_ps(rv + p * ZNR), r1 = _mm512_loadu_ps(rv + p * ZNR + 16);
      for (int64_t r = q0; r < q1; r += ZMR) {
        __m512 c[24];
        micro_12x32_bf16(Ap + (r / ZMR) * ZMR * Dp, B, Dp, c);
        const int nq = static_cast<int>(std::min<int64_t>(ZMR, q1 - r));
        for (int t = 0; t < nq; ++t) {
          const int64_t row = r + t;
          const __m512 a = _mm512_set1_ps(aq[row]), b = _mm512_set1_ps(bq[row]);
          const __m512 e0 = _mm512_fmadd_ps(r0, a, b), e1 = _mm512_fmadd_ps(r1, a, b);
          const __m512 thr = _mm512_set1_ps(top.thr[row]);
          // NLT_UQ: U >= threshold, or NaN -> both take the rare path
          uint32_t m = static_cast<uint32_t>(_mm512_cmp_ps_mask(_mm512_add_ps(c[2 * t], e0), thr, _CMP_NLT_UQ)) |
                       (static_cast<uint32_t>(_mm512_cmp_ps_mask(_mm512_add_ps(c[2 * t + 1], e1), thr, _CMP_NLT_UQ))
                        << 16);
          m &= valid;
          if (__builtin_expect(m != 0, 0)) {
            alignas(64) float sv[ZNR], ev[ZNR];
            _mm512_store_ps(sv, c[2 * t]);
            _mm512_store_ps(sv + 16, c[2 * t + 1]);
            _mm512_store_ps(ev, e0);
            _mm512_store_ps(ev + 16, e1);
            top.admit_flagged(row, m, sv, ev, jp);
          }
        }
      }
    }
  }
}

// Exact fp32 score of the packed kernels for one query row qh (its packed fp32 values) against
// keys js[0..n): FMA chain over d in order from 0, then the division by the key divisor. Eight
// independent chains at a time (throughput, not latency); bit-identical to the kernels' lanes.
void rescore_exact(const float* qh, const float* K, const float* knorm, int64_t D, const uint32_t* js, int64_t n,
                   float* out) {
  int64_t g = 0;
  for (; g + 8 <= n; g += 8) {
    const float* x[8];
    for (int u = 0; u < 8; ++u) x[u] = K + static_cast<int64_t>(js[g + u]) * D;
    float c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0;
    for (int64_t d = 0; d < D; ++d) {
      const float a = qh[d];
      c0 = std::fma(a, x[0][d], c0), c1 = std::fma(a, x[1][d], c1), c2 = std::fma(a, x[2][d], c2);
      c3 = std::fma(a, x[3][d], c3), c4 = std::fma(a, x[4][d], c4), c5 = std::fma(a, x[5][d], c5);
      c6 = std::fma(a, x[6][d], c6), c7 = std::fma(a, x[7][d], c7);
    }
    const float cc[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
    for (int u = 0; u < 8; ++u) out[g + u] = cc[u] / knorm[js[g + u]];
  }
  for (; g < n; ++g) {
    const float* x = K + static_cast<int64_t>(js[g]) * D;
    float c = 0;
    for (int64_t d = 0; d < D; ++d) c = std::fma(qh[d], x[d], c);
    out[g] = c / knorm[js[g]];
  }
}

// Statistics of the last bf16 call (diagnostics for the bench): queries, candidates rescored, fp32 reruns.
struct Bf16Stats {
  std::atomic<int64_t> queries{0}, candidates{0}, fallback{0};
};
Bf16Stats g_bf16_stats;

// Norms of keys [ja, jb); returns the first non-finite row or -1. rnorm (bf16 kernel only): an
// upper bound of |x_j| / n_x (1 when normalising: n_x = |x_j| to within 2^-22).
int64_t key_norms(const float* K, int64_t ja, int64_t jb, int64_t D, bool assume_normalized, float* knorm,
                  float* rnorm = nullptr) {
  int64_t bad = -1;
  for (int64_t j = ja; j < jb; ++j) {
    const double ss = row_sumsq(K + j * D, D);
    if (!std::isfinite(ss)) {
      if (bad < 0) bad = j;
      knorm[j] = std::numeric_limits<float>::infinity();
      continue;
    }
    knorm[j] = assume_normalized ? 1.0f : norm_divisor(ss);
    if (rnorm)
      rnorm[j] = assume_normalized ? static_cast<float>(std::sqrt(ss) * (1 + std::ldexp(1.0, -20))) : 1.0f;
  }
  return bad;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

enum class Kernel { Dot, Packed, Avx512, Bf16 };

struct SearchStatus {
  int64_t bad_query = -1, bad_key = -1;
  int nan_seen = 0;
};

// The whole search on raw buffers (GIL released by the caller): S, I are (N, k).
void run_search(const float* Qraw, const float* K, int64_t N, int64_t M, int64_t D, int64_t k,
                bool assume_normalized, int num_threads, int64_t key_offset, int64_t key_block, int64_t query_block,
                bool stream_keys, const std::string& split, Kernel kern, int64_t d_block, float* S, int64_t* I,
                SearchStatus& st);

// Final stage of the bf16 kernel: for each query, the k-th largest lower bound over the `nparts`
// partial TopK lists (Ls (nparts, N, k), Lcnt (nparts, N)), then every candidate of every part
// whose upper bound reaches it is rescored exactly and the top-k selected under (score desc,
// index asc). Queries that overflowed in any part are returned in `fallback`.
void bf16_finish(const float* Qraw, const float* K, const float* knorm, int64_t N, int64_t D, int64_t k,
                 bool assume_normalized, int64_t key_offset, int Tq, int64_t nparts, const float* Ls,
                 const int32_t* Lcnt, CandList* cands, float* S, int64_t* I, std::vector<int64_t>& fallback,
                 int& nan_seen) {
  std::vector<uint8_t> fb(N, 0);
  int64_t total = 0;
  int bad = 0;
#pragma omp parallel num_threads(Tq) reduction(+ : total) reduction(max : bad)
  {
    std::vector<float> qh(D), lv, sc;
    std::vector<uint32_t> js;
    std::vector<std::pair<float, int64_t>> best;
#pragma omp for schedule(dynamic, 64)
    for (int64_t q = 0; q < N; ++q) {
      bool over = false;
      lv.clear();
      for (int64_t p = 0; p < nparts; ++p) {
        over |= cands[p * N + q].overflow;
        const float* l = Ls + (p * N + q) * k;
        lv.insert(lv.end(), l, l + Lcnt[p * N + q]);
      }
      if (over || static_cast<int64_t>(lv.size()) < k) {
        fb[q] = 1;
        continue;
      }
      std::nth_element(lv.begin(), lv.begin() + (k - 1), lv.end(), std::greater<float>());
      const float T = lv[k - 1];
      js.clear();
      for (int64_t p = 0; p < nparts; ++p) {
        const CandList& c = cands[p * N + q];
        for (uint32_t r = 0; r < c.n; ++r)
          if (c.p[r].u >= T) js.push_back(c.p[r].j);
      }
      if (static_cast<int64_t>(js.size()) < k) {  // cannot happen with finite bounds; stay exact anyway
        fb[q] = 1;
        continue;
      }
      total += static_cast<int64_t>(js.size());
      // the packed kernels' fp32 query values, computed the same way
      const float* qr = Qraw + q * D;
      if (assume_normalized) {
        std::copy(qr, qr + D, qh.begin());
      } else {
        const float nq = norm_divisor(row_sumsq(qr, D));
        for (int64_t t = 0; t < D; ++t) qh[t] = qr[t] / nq;
      }
      sc.resize(js.size());
      rescore_exact(qh.data(), K, knorm, D, js.data(), static_cast<int64_t>(js.size()), sc.data());
      best.clear();
      for (size_t r = 0; r < js.size(); ++r) {
        if (!(sc[r] <= std::numeric_limits<float>::max() && sc[r] >= -std::numeric_limits<float>::max())) bad = 1;
        best.emplace_back(sc[r], static_cast<int64_t>(js[r]));
      }
      std::partial_sort(best.begin(), best.begin() + k, best.end(), [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      });
      for (int64_t t = 0; t < k; ++t) {
        S[q * k + t] = best[t].first;
        I[q * k + t] = best[t].second + key_offset;
      }
    }
  }
  for (int64_t i = 0; i < nparts * N; ++i) {
    std::free(cands[i].p);
    cands[i].p = nullptr;
  }
  if (bad) nan_seen = 1;
  for (int64_t q = 0; q < N; ++q)
    if (fb[q]) fallback.push_back(q);
  g_bf16_stats.queries.fetch_add(N);
  g_bf16_stats.candidates.fetch_add(total);
  g_bf16_stats.fallback.fetch_add(static_cast<int64_t>(fallback.size()));
}

void run_search(const float* Qraw, const float* K, int64_t N, int64_t M, int64_t D, int64_t k,
                bool assume_normalized, int num_threads, int64_t key_offset, int64_t key_block, int64_t query_block,
                bool stream_keys, const std::string& split, Kernel kern, int64_t d_block, float* S, int64_t* I,
                SearchStatus& st) {
  const bool packed = kern != Kernel::Dot;
  const bool bf16 = kern == Kernel::Bf16;
  const bool z512 = kern == Kernel::Avx512 || bf16;
  const int64_t mr = z512 ? ZMR : PMR, nr = z512 ? ZNR : PNR;  // packed micro-tile
  const int64_t qr = packed ? mr : QR;
  // bf16: D is packed in pairs; A~ / B~ panels then hold Dp 32-bit words per row
  const int64_t Dp = bf16 ? (D + 1) / 2 : D;
  int64_t& bad_query = st.bad_query;
  int64_t& bad_key = st.bad_key;
  int& nan_seen = st.nan_seen;
  {
    const int T = num_threads > 0 ? num_threads : omp_get_max_threads();
    const double work = static_cast<double>(N) * M * D;
    const int Tq = work < 4e6 ? 1 : T;  // thread start-up would dominate tiny problems

    // Queries: normalise into a copy (O(N D)); with assume_normalized only check them.
    // Packed kernel: the (normalised) queries go straight into 6-row k-major panels A~ (zero rows
    // pad the last panel). bf16: the same fp32 values rounded to bf16, in pairs, plus the two terms
    // of each query's error bound.
    std::vector<float> Qn;
    if (!assume_normalized && !packed) Qn.resize(static_cast<size_t>(N) * D);
    AlignedBuf Ap;
    const int64_t npan_q = (N + mr - 1) / mr;
    if (packed) {
      Ap.reserve(static_cast<size_t>(npan_q) * mr * Dp);
      std::memset(Ap.p, 0, static_cast<size_t>(npan_q) * mr * Dp * sizeof(float));
    }
    uint32_t* Ap32 = reinterpret_cast<uint32_t*>(Ap.p);
    std::vector<float> aq(bf16 ? N : 0), bq(bf16 ? N : 0);
    const Bf16Bound bound(D);
    int64_t badq = std::numeric_limits<int64_t>::max();
#pragma omp parallel for num_threads(Tq) schedule(static, 48) reduction(min : badq)
    for (int64_t i = 0; i < N; ++i) {
      const float* q = Qraw + i * D;
      const double ss = row_sumsq(q, D);
      if (!std::isfinite(ss)) {
        badq = std::min(badq, i);
        continue;
      }
      if (bf16) {
        uint32_t* o = Ap32 + (i / mr) * mr * Dp + (i % mr);
        const float nq = assume_normalized ? 1.0f : norm_divisor(ss);
        for (int64_t t = 0; t < D; t += 2) {
          const float v0 = assume_normalized ? q[t] : q[t] / nq;
          const float v1 = t + 1 < D ? (assume_normalized ? q[t + 1] : q[t + 1] / nq) : 0.0f;
          o[(t / 2) * mr] = bf16_rne(v0) | (bf16_rne(v1) << 16);
        }
        // |q^| <= 1 + 2^-22 when normalising (0 for zero vectors, bounded by 1 all the same)
        bound.query_terms(assume_normalized ? std::sqrt(ss) * (1 + std::ldexp(1.0, -20)) : 1 + std::ldexp(1.0, -20),
                          &aq[i], &bq[i]);
      } else if (packed) {
        float* o = Ap.p + (i / mr) * mr * D + (i % mr);
        if (assume_normalized) {
          for (int64_t t = 0; t < D; ++t) o[t * mr] = q[t];
        } else {
          const float nq = norm_divisor(ss);
          for (int64_t t = 0; t < D; ++t) o[t * mr] = q[t] / nq;
        }
      } else if (!assume_normalized) {
        const float nq = norm_divisor(ss);
        float* o = Qn.data() + i * D;
        for (int64_t t = 0; t < D; ++t) o[t] = q[t] / nq;
      }
    }
    if (badq != std::numeric_limits<int64_t>::max()) {
      bad_query = badq;
    } else {
      Problem P;
      P.Q = assume_normalized ? Qraw : Qn.data();
      P.K = K;
      P.N = N;
      P.M = M;
      P.D = D;
      P.key_offset = key_offset;
      std::vector<float> knorm(M), rnorm(bf16 ? M : 0);
      P.knorm = knorm.data();
      float* rn = bf16 ? rnorm.data() : nullptr;
      const int64_t row_bytes = D * static_cast<int64_t>(sizeof(float));
      const int64_t kr = packed ? nr : KR;
      const int64_t kb = key_block > 0 ? round_up(key_block, KR)
                                        : std::max<int64_t>(64, round_up((4 << 20) / row_bytes, kr));
      // packed: the query block's A~ panels are swept by one B~ panel at a time. AVX2 6x16: ~768 KiB
      // (L2; measured: 384 KiB blocks ~10% slower, 1.5 MiB about the same). AVX-512 12x32: ~3 MiB
      // (each 32-key panel is reused by more queries; measured at N=4k, M=100k: d=768 196 vs 184
      // GFLOP/s for 768 KiB, d=384 200 vs 184; 6 MiB blocks drop to 164 at d=768). bf16: the same
      // bytes of (half as wide) panels.
      const int64_t a_bytes = z512 ? (3 << 20) : (768 << 10);
      const int64_t a_row_bytes = Dp * static_cast<int64_t>(sizeof(float));
      int64_t qb = query_block > 0 ? round_up(query_block, qr)
                   : packed        ? std::max<int64_t>(mr, a_bytes / a_row_bytes / mr * mr)
                                   : std::max<int64_t>(QR, (160 << 10) / row_bytes / QR * QR);
      // per-thread / shared packed key blocks (allocated once per call)
      const size_t kb_floats = static_cast<size_t>(round_up(kb, nr)) * Dp;
      std::vector<AlignedBuf> kbuf(packed ? Tq : 0), kbnrm(packed ? Tq : 0);
      for (int t = 0; t < (packed ? Tq : 0); ++t) {
        kbuf[t].reserve(kb_floats);
        kbnrm[t].reserve(static_cast<size_t>(round_up(kb, nr)));
      }
      // reduction chunk of the AVX-512 kernel (0 = whole rows)
      const int64_t kc = d_block > 0 ? d_block : XITE_KC_DEFAULT;
      auto pack = [&](int64_t j0, int64_t j1, float* dst, float* dnrm) {
        if (bf16)
          pack_keys_bf16(K, knorm.data(), rnorm.data(), j0, j1, D, reinterpret_cast<uint32_t*>(dst), dnrm);
        else if (z512)
          pack_keys<ZNR>(K, knorm.data(), j0, j1, D, dst, dnrm);
        else
          pack_keys<PNR>(K, knorm.data(), j0, j1, D, dst, dnrm);
      };
      auto run_packed = [&](const float* Bp, const float* bnrm, int64_t qa, int64_t qb_, int64_t ja, int64_t jb,
                            TopK& top) {
        if (bf16)
          run_tile_bf16(Ap32, reinterpret_cast<const uint32_t*>(Bp), bnrm, Dp, qa, qb_, ja, jb, qb, aq.data(),
                        bq.data(), top);
        else if (z512)
          run_tile_avx512(Ap.p, Bp, bnrm, D, qa, qb_, ja, jb, qb, kc, key_offset, top);
        else
          run_tile_packed(Ap.p, Bp, bnrm, D, qa, qb_, ja, jb, qb, key_offset, top);
      };
      // bf16: candidate lists (one per query and key part) under one memory budget
      CandBudget budget{static_cast<uint32_t>(std::min<int64_t>(std::max<int64_t>(4096, 4 * k), 1 << 30)),
                        kBf16BudgetEntries};
      std::vector<float> Ls;
      std::vector<int64_t> Li;
      std::vector<int64_t> fallback;
      // Few queries, or memory-mapped keys: split over keys (every key is read once; a few parts per
      // thread for balance). Many in-RAM queries: split over query chunks (each chunk's queries stay
      // in L3 while key blocks stream past; measured a little faster under L3 contention). Huge
      // N x k (per-part top-k lists > 256 MiB) also splits over queries.
      const int64_t per_part = std::max<int64_t>(round_up((M + 4 * Tq - 1) / (4 * Tq), KR), 256);
      const int64_t nparts = (M + per_part - 1) / per_part;
      const double part_state_bytes = static_cast<double>(nparts) * N * k * (sizeof(float) + sizeof(int64_t));
      const bool split_queries =
          split == "queries" || Tq == 1 || nparts == 1 ||
          (split == "auto" && (part_state_bytes > double(256 << 20) || (!stream_keys && N >= 512)));
      if (split_queries) {
        qb = std::min(qb, round_up((N + Tq - 1) / Tq, qr));  // balance small N
        P.qblock = qb;
        std::vector<float> thr(N, -std::numeric_limits<float>::infinity());
        std::vector<int32_t> cnt(N, 0);
        std::vector<CandList> cands(bf16 ? N : 0);
        if (bf16) {
          Ls.resize(static_cast<size_t>(N) * k);
          Li.resize(static_cast<size_t>(N) * k);
        }
        TopK top{bf16 ? Ls.data() : S, bf16 ? Li.data() : I, thr.data(), cnt.data(), static_cast<int>(k), &nan_seen};
        if (bf16) {
          top.cand = cands.data();
          top.budget = &budget;
        }
        const int64_t nqb = (N + qb - 1) / qb;
        int64_t badk = std::numeric_limits<int64_t>::max();
        if (!stream_keys) {
          // Keys in RAM: one parallel norm pass (one extra read of the keys, ~1% of the run), then
          // threads take query chunks dynamically and sweep all keys without further barriers, so
          // a thread that is descheduled on a shared machine does not stall the other one. A
          // chunk's queries (~MBs) stay in L3 while it sweeps the key blocks.
#pragma omp parallel for num_threads(Tq) schedule(static, 256) reduction(min : badk)
          for (int64_t j = 0; j < M; ++j) {
            const int64_t b = key_norms(K, j, j + 1, D, assume_normalized, knorm.data(), rn);
            if (b >= 0) badk = std::min(badk, b);
          }
          if (badk == std::numeric_limits<int64_t>::max()) {
            // packed: every chunk re-packs the keys, so fewer, larger chunks (one per call single-threaded).
            // Chunks of equal size (a multiple of the micro-tile rows) so the threads finish together
            // (whole query blocks per chunk left 7 chunks for 2 threads at N=20k with 3 MiB blocks:
            // -10%), and query blocks that split a chunk evenly.
            const int64_t cpt = packed ? (Tq == 1 ? 1 : 4 * Tq) : 8 * Tq;
            const int64_t chunk_q = round_up((N + cpt - 1) / cpt, qr);
            const int64_t nchunks = (N + chunk_q - 1) / chunk_q;
            const int64_t nblk = (chunk_q + qb - 1) / qb;
            qb = round_up((chunk_q + nblk - 1) / nblk, qr);
            P.qblock = qb;
#pragma omp parallel for num_threads(Tq) schedule(dynamic, 1)
            for (int64_t c = 0; c < nchunks; ++c) {
              const int64_t q0 = c * chunk_q, q1 = std::min(q0 + chunk_q, N);
              for (int64_t j0 = 0; j0 < M; j0 += kb) {
                const int64_t j1 = std::min(j0 + kb, M);
                if (packed) {
                  const int tid = omp_get_thread_num();
                  pack(j0, j1, kbuf[tid].p, kbnrm[tid].p);
                  run_packed(kbuf[tid].p, kbnrm[tid].p, q0, q1, j0, j1, top);
                } else {
                  run_tile(P, q0, q1, j0, j1, top, 0);
                }
              }
            }
          }
        } else {
          // Memory-mapped keys: all threads sweep one key block at a time, so the file is read from
          // disk once (and the block is shared in L3); its norms are computed just before use.
          std::atomic<int64_t> bad_shared{std::numeric_limits<int64_t>::max()};
#pragma omp parallel num_threads(Tq)
          {
            for (int64_t j0 = 0; j0 < M; j0 += kb) {
              const int64_t j1 = std::min(j0 + kb, M);
#pragma omp for schedule(static)
              for (int64_t j = j0; j < j1; j += 64) {
                if (bad_shared.load(std::memory_order_relaxed) < j0) continue;  // an earlier block failed
                const int64_t b = key_norms(K, j, std::min(j + 64, j1), D, assume_normalized, knorm.data(), rn);
                if (b >= 0) {
                  int64_t cur = bad_shared.load();
                  while (b < cur && !bad_shared.compare_exchange_weak(cur, b)) {
                  }
                }
              }
              // implicit barrier: knorm of this block is complete and bad_shared final. Every thread
              // keeps meeting the same worksharing constructs (no `break`: leaving this loop early
              // hung with torch's libgomp); the remaining blocks are skipped cheaply.
              if (bad_shared.load() != std::numeric_limits<int64_t>::max()) continue;
              if (packed) {
                // one shared packed copy of the block; the norm loop's barrier above guarantees no
                // thread still reads the previous block
#pragma omp for schedule(static)
                for (int64_t j = j0; j < j1; j += 4 * nr)
                  pack(j, std::min(j + 4 * nr, j1), kbuf[0].p + (j - j0) * Dp, kbnrm[0].p + (j - j0));
#pragma omp for schedule(static) nowait
                for (int64_t b = 0; b < nqb; ++b)
                  run_packed(kbuf[0].p, kbnrm[0].p, b * qb, std::min((b + 1) * qb, N), j0, j1, top);
                continue;
              }
              // static schedule: a query block always belongs to the same thread (no races on top)
#pragma omp for schedule(static) nowait
              for (int64_t b = 0; b < nqb; ++b) run_tile(P, b * qb, std::min((b + 1) * qb, N), j0, j1, top, 0);
            }
          }
          badk = bad_shared.load();
        }
        if (badk != std::numeric_limits<int64_t>::max()) bad_key = badk;
        if (bf16) {
          if (bad_key < 0)
            bf16_finish(Qraw, K, knorm.data(), N, D, k, assume_normalized, key_offset, Tq, 1, Ls.data(), cnt.data(),
                        cands.data(), S, I, fallback, nan_seen);
          else
            for (auto& c : cands) std::free(c.p);
        }
        // a row with fewer than k entries can only come from -inf/NaN scores (float32 overflow)
        for (int64_t q = 0; q < N && bad_key < 0 && !bf16; ++q)
          if (cnt[q] < k) nan_seen = 1;
      } else {
        P.qblock = qb;
        // Key split: the keys are cut into `nparts` contiguous ranges, each with private top-k
        // lists, taken dynamically by the threads (balanced on a shared machine; every key is read
        // from memory or disk once). The partial lists are merged under (score desc, index asc),
        // so the result does not depend on the number of parts or threads. bf16: each part also
        // keeps its own candidate lists; a true top-k key passes its part's (lower) threshold.
        std::vector<float> ps(static_cast<size_t>(nparts) * N * k);
        std::vector<int64_t> pi(static_cast<size_t>(nparts) * N * k);
        std::vector<float> pthr(static_cast<size_t>(nparts) * N, -std::numeric_limits<float>::infinity());
        std::vector<int32_t> pcnt(static_cast<size_t>(nparts) * N, 0);
        std::vector<int64_t> pbad(nparts, -1);
        std::vector<CandList> pcands(bf16 ? static_cast<size_t>(nparts) * N : 0);
#pragma omp parallel for num_threads(Tq) schedule(dynamic, 1)
        for (int64_t p = 0; p < nparts; ++p) {
          TopK top{ps.data() + p * N * k, pi.data() + p * N * k, pthr.data() + p * N, pcnt.data() + p * N,
                   static_cast<int>(k), &nan_seen};
          if (bf16) {
            top.cand = pcands.data() + p * N;
            top.budget = &budget;
          }
          const int64_t ja = p * per_part, jb = std::min(ja + per_part, M);
          for (int64_t j0 = ja; j0 < jb; j0 += kb) {
            const int64_t j1 = std::min(j0 + kb, jb);
            const int64_t b = key_norms(K, j0, j1, D, assume_normalized, knorm.data(), rn);
            if (b >= 0) {
              pbad[p] = b;  // the first bad row of this part (blocks are scanned in order)
              break;
            }
            if (packed) {
              const int tid = omp_get_thread_num();
              pack(j0, j1, kbuf[tid].p, kbnrm[tid].p);
              run_packed(kbuf[tid].p, kbnrm[tid].p, 0, N, j0, j1, top);
            } else {
              run_tile(P, 0, N, j0, j1, top, 0);
            }
          }
        }
        for (int64_t p = 0; p < nparts && bad_key < 0; ++p) bad_key = pbad[p];  // parts are in key order
        if (bf16) {
          if (bad_key < 0)
            bf16_finish(Qraw, K, knorm.data(), N, D, k, assume_normalized, key_offset, Tq, nparts, ps.data(),
                        pcnt.data(), pcands.data(), S, I, fallback, nan_seen);
          else
            for (auto& c : pcands) std::free(c.p);
        } else if (bad_key < 0) {
          int short_rows = 0;
#pragma omp parallel num_threads(Tq) reduction(max : short_rows)
          {
            std::vector<std::pair<float, int64_t>> cand;
            cand.reserve(static_cast<size_t>(nparts) * k);
#pragma omp for schedule(static)
            for (int64_t q = 0; q < N; ++q) {
              cand.clear();
              for (int64_t p = 0; p < nparts; ++p) {
                const int32_t c = pcnt[p * N + q];
                const float* sp = ps.data() + (p * N + q) * k;
                const int64_t* ip = pi.data() + (p * N + q) * k;
                for (int32_t t = 0; t < c; ++t) cand.emplace_back(sp[t], ip[t]);
              }
              if (static_cast<int64_t>(cand.size()) < k) {  // only -inf/NaN scores (float32 overflow)
                short_rows = 1;
                continue;
              }
              std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), [](const auto& a, const auto& b) {
                return a.first > b.first || (a.first == b.first && a.second < b.second);
              });
              for (int64_t t = 0; t < k; ++t) {
                S[q * k + t] = cand[t].first;
                I[q * k + t] = cand[t].second;
              }
            }
          }
          if (short_rows) nan_seen = 1;
        }
      }
      if (!fallback.empty() && bad_key < 0) {
        // bf16 queries the screening could not certify (degenerate data, overflow): the fp32 kernel
        // on just those rows, same keys and settings, so the result is exact all the same
        const int64_t nf = static_cast<int64_t>(fallback.size());
        std::vector<float> qf(static_cast<size_t>(nf) * D), sf(static_cast<size_t>(nf) * k);
        std::vector<int64_t> idf(static_cast<size_t>(nf) * k);
        for (int64_t r = 0; r < nf; ++r) std::copy(Qraw + fallback[r] * D, Qraw + (fallback[r] + 1) * D, qf.data() + r * D);
        SearchStatus fst;
        run_search(qf.data(), K, nf, M, D, k, assume_normalized, num_threads, key_offset, key_block, query_block,
                   stream_keys, split, xite::cpu_has_avx512() ? Kernel::Avx512 : Kernel::Packed, d_block, sf.data(),
                   idf.data(), fst);
        if (fst.nan_seen) nan_seen = 1;
        if (fst.bad_key >= 0) bad_key = fst.bad_key;
        for (int64_t r = 0; r < nf; ++r) {
          std::copy(sf.data() + r * k, sf.data() + (r + 1) * k, S + fallback[r] * k);
          std::copy(idf.data() + r * k, idf.data() + (r + 1) * k, I + fallback[r] * k);
        }
      }
    }
  }
}

py::tuple cosine_topk(py::array queries, py::array keys, int64_t k, bool assume_normalized, int num_threads,
                      int64_t key_offset, int64_t key_block, int64_t query_block, bool stream_keys,
                      const std::string& split, const std::string& kernel, int64_t d_block) {
  XITE_CHECK(queries.ndim() == 2, "cosine_topk: queries must be 2-D (N, D), got ndim " << queries.ndim());
  XITE_CHECK(keys.ndim() == 2, "cosine_topk: keys must be 2-D (M, D), got ndim " << keys.ndim());
  XITE_CHECK(queries.dtype().is(py::dtype::of<float>()),
             "cosine_topk: queries must be float32, got " << std::string(py::str(queries.dtype())));
  XITE_CHECK(keys.dtype().is(py::dtype::of<float>()),
             "cosine_topk: keys must be float32, got " << std::string(py::str(keys.dtype())));
  XITE_CHECK(queries.flags() & py::array::c_style, "cosine_topk: queries must be C-contiguous");
  XITE_CHECK(keys.flags() & py::array::c_style, "cosine_topk: keys must be C-contiguous");
  const int64_t N = queries.shape(0), D = queries.shape(1), M = keys.shape(0);
  XITE_CHECK(keys.shape(1) == D,
             "cosine_topk: keys must have the same dimension D as queries (" << D << "), got " << keys.shape(1));
  XITE_CHECK(D >= 1, "cosine_topk: D must be >= 1, got " << D);
  XITE_CHECK(k > 0, "cosine_topk: k must be > 0, got " << k);
  XITE_CHECK(M >= 1, "cosine_topk: keys must be non-empty (M >= 1), got M=" << M);
  XITE_CHECK(k <= M, "cosine_topk: k must be <= the number of keys M=" << M << ", got k=" << k);
  XITE_CHECK(k <= std::numeric_limits<int32_t>::max(), "cosine_topk: k too large: " << k);
  XITE_CHECK(num_threads >= 0, "cosine_topk: num_threads must be >= 0 (0 = all), got " << num_threads);
  XITE_CHECK(split == "auto" || split == "queries" || split == "keys",
             "cosine_topk: split must be 'auto', 'queries' or 'keys', got '" << split << "'");
  XITE_CHECK(kernel == "auto" || kernel == "packed" || kernel == "avx512" || kernel == "bf16" || kernel == "dot",
             "cosine_topk: kernel must be 'auto', 'bf16', 'avx512', 'packed' or 'dot', got '" << kernel << "'");
  XITE_CHECK(kernel != "avx512" || xite::cpu_has_avx512(), "cosine_topk: kernel='avx512' needs a CPU with AVX-512F");
  XITE_CHECK(kernel != "bf16" || xite::cpu_has_avx512_bf16(),
             "cosine_topk: kernel='bf16' needs a CPU with AVX512_BF16 (this one lacks it; use 'auto')");
  XITE_CHECK(kernel != "bf16" || M <= std::numeric_limits<uint32_t>::max(),
             "cosine_topk: kernel='bf16' takes at most 2^32 - 1 keys per call, got M=" << M);
  XITE_CHECK(d_block >= 0, "cosine_topk: d_block must be >= 0 (0 = auto), got " << d_block);
  Kernel kern = kernel == "dot" ? Kernel::Dot : kernel == "packed" ? Kernel::Packed
              : kernel == "avx512"                                 ? Kernel::Avx512
              : kernel == "bf16"                                   ? Kernel::Bf16
                                                                   : Kernel::Packed;
  if (kernel == "auto")
    kern = xite::cpu_has_avx512_bf16() && D >= kBf16MinD && k <= kBf16MaxK && M <= std::numeric_limits<uint32_t>::max()
               ? Kernel::Bf16
           : xite::cpu_has_avx512() ? Kernel::Avx512
                                    : Kernel::Packed;
  py::array_t<float> out_s({N, k});
  py::array_t<int64_t> out_i({N, k});
  if (N == 0) return py::make_tuple(out_s, out_i);
  const float* Qraw = static_cast<const float*>(queries.data());
  const float* K = static_cast<const float*>(keys.data());
  float* S = out_s.mutable_data();
  int64_t* I = out_i.mutable_data();
  SearchStatus st;
  {
    py::gil_scoped_release release;
    if (kern == Kernel::Bf16) {
      g_bf16_stats.queries = 0;
      g_bf16_stats.candidates = 0;
      g_bf16_stats.fallback = 0;
    }
    run_search(Qraw, K, N, M, D, k, assume_normalized, num_threads, key_offset, key_block, query_block, stream_keys,
               split, kern, d_block, S, I, st);
  }
  XITE_CHECK(st.bad_query < 0, "queries contains NaN or inf (first at row " << st.bad_query << ")");
  XITE_CHECK(st.bad_key < 0, "keys contains NaN or inf (first at row " << st.bad_key + key_offset << ")");
  XITE_CHECK(!st.nan_seen,
             "cosine_topk: scores overflowed float32 (inf/NaN) although the inputs are finite: vector "
             "norms near 3e38, or assume_normalized=True with large unnormalised inputs");
  return py::make_tuple(out_s, out_i);
}


// ---------------------------------------------------------------------------------------------
// FMA peak micro-benchmark (the denominator of "% of peak" in bench/bench_cosine_topk.py): each
// thread runs 12 independent FMA chains on registers (no memory operands; 12 chains cover the FMA
// latency on both pipes, and 12 + 2 operands fit the 16 ymm registers of an AVX2 build) for
// `iters` iterations; GFLOP/s = 2 * lanes * 12 * iters * threads / wall time of the parallel
// region (all threads start together, the slowest one ends it).
// Named variables, not an array: GCC kept an array of accumulators in memory (1/3 of the rate).
#define XITE_FMA_CHAINS(V, FMA, SET1, iters, seed, result)                                                     \
  {                                                                                                           \
    V c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, a = SET1(seed), b = SET1(seed);                       \
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = a;                                          \
    __asm__("" : "+x"(a), "+x"(b));                                                                           \
    for (int64_t it = 0; it < (iters); ++it) {                                                                \
      c0 = FMA(a, b, c0), c1 = FMA(a, b, c1), c2 = FMA(a, b, c2), c3 = FMA(a, b, c3);                         \
      c4 = FMA(a, b, c4), c5 = FMA(a, b, c5), c6 = FMA(a, b, c6), c7 = FMA(a, b, c7);                         \
      c8 = FMA(a, b, c8), c9 = FMA(a, b, c9), c10 = FMA(a, b, c10), c11 = FMA(a, b, c11);                     \
      __asm__("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5), "+x"(c6), "+x"(c7), "+x"(c8), \
              "+x"(c9), "+x"(c10), "+x"(c11));                                                                \
    }                                                                                                         \
    V s_ = FMA(c0, c1, c2);                                                                                   \
    s_ = FMA(s_, c3, c4), s_ = FMA(s_, c5, c6), s_ = FMA(s_, c7, c8), s_ = FMA(s_, c9, c10);                  \
    s_ = FMA(s_, a, c11);                                                                                     \
    alignas(64) float out_[sizeof(V) / 4];                                                                    \
    std::memcpy(out_, &s_, sizeof(V));                                                                        \
    result = out_[0];                                                                                         \
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
  __asm__("" : "+x"(a), "+x"(b));
  for (int64_t it = 0; it < iters; ++it) {
    c0 = dpbf16_fma(a, b, c0), c1 = dpbf16_fma(a, b, c1), c2 = dpbf16_fma(a, b, c2), c3 = dpbf16_fma(a, b, c3);
    c4 = dpbf16_fma(a, b, c4), c5 = dpbf16_fma(a, b, c5), c6 = dpbf16_fma(a, b, c6), c7 = dpbf16_fma(a, b, c7);
    c8 = dpbf16_fma(a, b, c8), c9 = dpbf16_fma(a, b, c9), c10 = dpbf16_fma(a, b, c10);
    c11 = dpbf16_fma(a, b, c11);
    __asm__("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5), "+x"(c6), "+x"(c7), "+x"(c8),
            "+x"(c9), "+x"(c10), "+x"(c11));
  }
  __m512 s_ = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                            _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)));
  s_ = _mm512_add_ps(s_, _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)));
  alignas(64) float out_[16];
  _mm512_store_ps(out_, s_);
  return out_[0];
}

double fma_peak_gflops(const std::string& isa, int num_threads, int64_t iters) {
  XITE_CHECK(isa == "avx2" || isa == "avx512" || isa == "avx512_bf16",
             "cosine_topk_fma_peak: isa must be 'avx2', 'avx512' or 'avx512_bf16', got '" << isa << "'");
  XITE_CHECK(isa != "avx512" || xite::cpu_has_avx512(), "cosine_topk_fma_peak: isa='avx512' needs a CPU with AVX-512F");
  XITE_CHECK(isa != "avx512_bf16" || xite::cpu_has_avx512_bf16(),
             "cosine_topk_fma_peak: isa='avx512_bf16' needs a CPU with AVX512_BF16");
  XITE_CHECK(iters > 0, "cosine_topk_fma_peak: iters must be > 0, got " << iters);
  const int T = num_threads > 0 ? num_threads : omp_get_max_threads();
  // FLOP per instruction / 2: fp32 lanes, or bf16 elements (2 products per fp32 lane)
  const int lanes = isa == "avx512_bf16" ? 32 : isa == "avx512" ? 16 : 8;
  double sink = 0, t = 0;
  {
    py::gil_scoped_release release;
    // 1e-8 keeps the chains finite (c grows by 1e-16 per step) without denormals
    const float seed = 1e-8f;
    double t0 = 0;
#pragma omp parallel num_threads(T) reduction(+ : sink)
    {
#pragma omp barrier
#pragma omp master
      t0 = omp_get_wtime();
      sink += isa == "avx512_bf16" ? fma_chains512_bf16(iters, seed)
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

}  // namespace

XITE_REGISTER_OP("cosine_topk", [](py::module_& m) {
  m.def("cosine_topk", &cosine_topk, py::arg("queries"), py::arg("keys"), py::arg("k"),
        py::arg("assume_normalized") = false, py::arg("num_threads") = 0, py::arg("key_offset") = 0,
        py::arg("key_block") = 0, py::arg("query_block") = 0, py::arg("stream_keys") = false,
        py::arg("split") = "auto", py::arg("kernel") = "auto", py::arg("d_block") = 0,
        R"doc(Exact cosine top-k: (scores (N, k) float32, indices (N, k) int64), sorted descending,
ties -> lower index. queries (N, D) and keys (M, D) must be C-contiguous float32 (keys may be a
memory map: they are read in place). num_threads=0 uses all OpenMP threads; key_offset is added to
the returned indices (for callers streaming key chunks); key_block/query_block override the cache
blocking (rows, 0 = auto); stream_keys=True (for memory-mapped keys) makes all threads sweep one
key block at a time so the keys are read from disk once (query split); split='auto'|'queries'|'keys'
forces the parallel decomposition (for tests); kernel='auto'|'bf16'|'avx512'|'packed'|'dot' picks the
micro-kernel: 'bf16' (certified bf16 screening + exact fp32 rescoring, bit-identical to the fp32 packed
kernels; AVX512_BF16 CPUs), 'avx512' (12x32 fp32), 'packed' (AVX2 6x16 fp32), 'dot' (unpacked 3x4);
'auto' picks bf16 when the CPU has it and D >= 16, k <= 256, else avx512 when present, else packed.
d_block: reduction chunk of the avx512 kernel (0 = whole rows). The GIL is released during the computation.)doc");
  m.def(
      "cosine_topk_bf16_stats",
      []() {
        py::dict d;
        d["queries"] = g_bf16_stats.queries.load();
        d["candidates"] = g_bf16_stats.candidates.load();
        d["fallback"] = g_bf16_stats.fallback.load();
        return d;
      },
      "Diagnostics of the last kernel='bf16' call: queries screened, candidates rescored exactly (sum over "
      "queries), queries recomputed by the fp32 kernel.");
  m.def("cosine_topk_fma_peak", &fma_peak_gflops, py::arg("isa") = "avx2", py::arg("num_threads") = 0,
        py::arg("iters") = 20000000,
        "Measured FMA peak in GFLOP/s: 12 register FMA chains per thread, isa='avx2' (ymm fp32), 'avx512' "
        "(zmm fp32) or 'avx512_bf16' (zmm vdpbf16ps, 64 FLOP per instruction).");
});
