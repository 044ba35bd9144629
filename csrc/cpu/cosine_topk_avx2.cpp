// cosine_topk's AVX2/FMA kernels: kernel='dot' (3 queries x 4 keys, unpacked rows, horizontal sums)
// and kernel='packed' (6 x 16 BLIS-style micro-tile on k-major packed panels), and the key packing
// shared with the AVX-512 kernel.
#include "cpu/cosine_topk_common.h"

namespace xite {
namespace cpu {
namespace cosine {

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

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
template void pack_keys<PNR>(const float*, const float*, int64_t, int64_t, int64_t, float*, float*);
template void pack_keys<ZNR>(const float*, const float*, int64_t, int64_t, int64_t, float*, float*);

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

}  // namespace cosine
}  // namespace cpu
}  // namespace xite
