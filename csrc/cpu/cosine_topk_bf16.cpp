// cosine_topk's bf16 kernel.
//
// Certified bf16 screening + exact fp32 rescoring (kernel='bf16'; picked by 'auto' when the CPU
// reports AVX512_BF16 and D >= kBf16MinD). The result is bit-identical to the fp32 packed kernels
// (same indices, same fp32 scores, same tie order); only the work to get there changes.
//
// Screening: the queries q^ (exactly the fp32 values the packed kernels use: q / |q|, or q with
// assume_normalized) are rounded to bf16, q~ = bf16(q^). The keys are centred first: y = x / n_x
// (n_x the key divisor; real arithmetic), w = fl(x * fl(1 / n_x)), z = fl(w - mu) with mu a fixed
// fp32 vector (the mean of up to 4,096 evenly spaced normalised keys; any mu keeps the result exact),
// z~ = bf16(z) (round to nearest even; fp32-subnormal values flushed to 0); pairs of consecutive d
// (odd D padded with a 0) go into the 12 x 32 panels of the AVX-512 kernel and `vdpbf16ps` (2
// products per fp32 lane per instruction: twice the fp32 FMA rate) accumulates s~ = sum q~_i z~_i in
// fp32. Centering changes every score of a query by the same q^ . mu, so the ranking under
// s' = q^ . (y - mu) is the ranking under the exact score; it makes the bf16 rounding errors
// proportional to |y - mu| instead of |y| (embeddings of one model share a large mean direction:
// |mu| ~ 0.9 for e5 sentence embeddings, |y - mu| ~ 0.4).
//
// Error bound, per (query, key), with the actual rounding errors of each vector (not a worst case
// per component): let u = 2^-24 (fp32 unit roundoff), S the exact path's score fl(fl_fma_chain(
// sum_i q^_i x_i) / n_x), t = sum_i q^_i y_i (real), t' = t - q^ . mu, dq >= |q~ - q^| (computed
// exactly per query), zeta_j >= |y - mu| and rho_j >= |z~ - (y - mu)| (per key: |w - y| <= 2.0001 u
// r_j with r_j >= |y|, |z - (w - mu)| <= u |w - mu|, |z~ - z| exact in fp32; sums of squares in fp32
// with a (1 + 2 (D + 32) u) margin), qn >= |q^|, |mu| <= mun:
//  * inputs: sum q~_i z~_i - t' = dq_vec . (y - mu) + q^ . dz_vec + dq_vec . dz_vec, so its size is
//    <= dq zeta_j + qn rho_j + dq rho_j (Cauchy-Schwarz on the rounding error vectors);
//  * accumulation: the bf16 x bf16 products are exact in fp32; the D additions (whatever the
//    instruction's internal order, at most D roundings on any path) err by <= gamma_D sum|q~_i z~_i|
//    <= gamma_D (qn + dq)(zeta_j + rho_j), gamma_D = D u / (1 - D u);
//  * exact path: |S - t| <= gamma_D A (1 + u) + u |t| <= (gamma_D (1 + u) + u) qn r_j (D FMAs, one
//    division; A = sum |q^_i| |y_i| <= qn r_j), and r_j <= zeta_j + mun;
//  * subnormals: no bf16 input is subnormal (flushed above, and counted in dq / rho_j);
//    vdpbf16ps flushes denormal results (each < 2^-126) and the exact path's gradual underflow adds
//    < 2^-149 per operation: <= (2D + 1) 2^-125, plus 2^-125 sqrt(D) (qn + r_j) kept from the
//    worst-case bound as slack;
//  * the fp32 roundings of e, s~ + e and s~ - e: each <= u (|s~| + e), |s~| <= (1 + gamma_D)(qn + dq)
//    (zeta_j + rho_j): 8 u (1 + gamma_D)(qn + dq) on both coefficients.
// So |s~ - (S - q^ . mu)| <= e = a_q zeta_j + c_q rho_j + b_q (Bf16Bound::query_terms), every term
// multiplied by a safety factor of 1.0625. Typical sizes (e5-small, D = 384): dq ~ rho_j / zeta_j ~
// 0.42 * 2^-8, so e ~ 0.85 * 2^-8 |y - mu| ~ 1.3e-3 against 7.9e-3 for the worst-case bound
// 2 * 2^-8 |q^| |y| used before (which took ~150 candidates per query on real stores, ~15 now).
//
// Certificate, in the shifted frame S' = S - q^ . mu (one shift per query, so the same order):
// U = s~ + e >= S' >= L = s~ - e for every key. The k keys with the k largest L have shifted exact
// scores >= their L, so the k-th S'_k >= L_k (the k-th largest L), and every key of the exact top-k
// has U >= S' >= S'_k >= L_k >= the running k-th largest L at any point of the
// sweep (it only rises). So the kernel keeps the k largest L per query (TopK) and every key with
// U >= the running k-th L (CandList, compacted as the threshold rises), then rescores the
// survivors of the final threshold with exactly the fp32 kernels' arithmetic (FMA chain over d in
// order from 0, then the division by n_x) and selects the top-k under (score desc, index asc).
// With a uniform e this is "keep s~ >= S~_k - 2e". Queries whose list outgrows the cap or the
// memory budget, or whose screened score overflows, are recomputed by the fp32 kernel, so the
// result is always exact and the memory bounded.
// (kBf16MinD and the other constants: cosine_topk_common.h)
#include "cpu/cosine_topk_common.h"
#include "cpu/xite_cpu.h"

namespace xite {
namespace cpu {
namespace cosine {

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

// bf16 bits in the low halves of the lanes -> the fp32 values they stand for.
XITE_BF16 inline __m512 bf16_to_ps(__m512i b) { return _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)); }

// Writes zeta_j and rho_j (see the bound) from the fp32 sums of squares of z and of z~ - z.
inline void key_terms(double ssz, double ssd, double r, int64_t D, float* zeta, float* rho) {
  const double u = std::ldexp(1.0, -24), g = 1 + 2 * (static_cast<double>(D) + 32) * u;
  const double up = 1 + std::ldexp(1.0, -20);  // and the float rounding of the results
  const double zf = std::sqrt(ssz * g) / (1 - u);  // >= |w - mu|
  const double wy = 2.0001 * u * r * up;           // >= |w - y|
  *zeta = static_cast<float>((zf + wy) * up);
  *rho = static_cast<float>((std::sqrt(ssd * g) + u * zf + wy) * up);
}

// Packs keys [j0, j1) centred by mu as bf16 pairs into 32-key panels with their bound terms
// (cosine_topk_common.h). tmp: per-thread scratch of 32 * Dp words (row-major conversion, then a
// transposing copy).
XITE_BF16 void pack_keys_bf16(const float* K, const float* knorm, const float* rnorm, const float* mu, int64_t j0,
                              int64_t j1, int64_t D, uint32_t* dst, float* rv) {
  const int64_t Dp = (D + 1) / 2;
  const int64_t np = (j1 - j0 + ZNR - 1) / ZNR;
  thread_local std::vector<uint32_t> tmp;
  if (static_cast<int64_t>(tmp.size()) < ZNR * Dp) tmp.resize(ZNR * Dp);
  for (int64_t p = 0; p < np; ++p) {
    uint32_t* out = dst + p * Dp * ZNR;
    float* zv = rv + p * 2 * ZNR;
    float* pv = zv + ZNR;
    const int64_t jb = j0 + p * ZNR;
    const int64_t nk = std::min<int64_t>(ZNR, j1 - jb);
    for (int c = static_cast<int>(nk); c < ZNR; ++c) zv[c] = pv[c] = 0.0f;
    for (int c = 0; c < nk; ++c) {
      const float* x = K + (jb + c) * D;
      const float inv = 1.0f / knorm[jb + c];
      const __m512 vinv = _mm512_set1_ps(inv);
      uint32_t* t = tmp.data() + c * Dp;
      __m512 sz = _mm512_setzero_ps(), sd = _mm512_setzero_ps();
      int64_t d = 0;
      for (; d + 32 <= D; d += 32) {
        const __m512 zlo = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(x + d), vinv), _mm512_loadu_ps(mu + d));
        const __m512 zhi =
            _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(x + d + 16), vinv), _mm512_loadu_ps(mu + d + 16));
        const __m512i lo = cvt16_bf16(zlo), hi = cvt16_bf16(zhi);
        const __m512 dlo = _mm512_sub_ps(bf16_to_ps(lo), zlo), dhi = _mm512_sub_ps(bf16_to_ps(hi), zhi);  // exact
        sz = _mm512_fmadd_ps(zlo, zlo, _mm512_fmadd_ps(zhi, zhi, sz));
        sd = _mm512_fmadd_ps(dlo, dlo, _mm512_fmadd_ps(dhi, dhi, sd));
        // 32 bf16 in d order = 16 pairs (low half = even d)
        const __m256i l16 = _mm512_cvtepi32_epi16(lo), h16 = _mm512_cvtepi32_epi16(hi);
        _mm512_storeu_si512(t + d / 2, _mm512_inserti64x4(_mm512_castsi256_si512(l16), h16, 1));
      }
      double ssz = _mm512_reduce_add_ps(sz), ssd = _mm512_reduce_add_ps(sd);
      for (; d < D; d += 2) {
        const float z0 = x[d] * inv - mu[d], z1 = d + 1 < D ? x[d + 1] * inv - mu[d + 1] : 0.0f;
        const uint32_t lo = bf16_rne(z0), hi = d + 1 < D ? bf16_rne(z1) : 0u;
        const float d0 = bf16_value(lo) - z0, d1 = bf16_value(hi) - z1;
        ssz += static_cast<double>(z0) * z0 + static_cast<double>(z1) * z1;
        ssd += static_cast<double>(d0) * d0 + static_cast<double>(d1) * d1;
        t[d / 2] = lo | (hi << 16);
      }
      key_terms(ssz, ssd, rnorm[jb + c], D, zv + c, pv + c);
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

// Screens queries [qa, qb) (qa a multiple of 12; A~ = all bf16 query panels, (aq, cq, bq) their bound
// terms) against the packed bf16 key block Bp (keys [ja, jb), zeta_j / rho_j in rv): every key whose upper
// bound reaches the row's running k-th lower bound takes the rare path (TopK::admit_flagged).
XITE_BF16 void run_tile_bf16(const uint32_t* Ap, const uint32_t* Bp, const float* rv, int64_t Dp, int64_t qa,
                             int64_t qb, int64_t ja, int64_t jb, int64_t qblock, const float* aq, const float* cq,
                             const float* bq, TopK& top) {
  const int64_t npanels = (jb - ja + ZNR - 1) / ZNR;
  for (int64_t q0 = qa; q0 < qb; q0 += qblock) {
    const int64_t q1 = std::min(q0 + qblock, qb);
    for (int64_t p = 0; p < npanels; ++p) {
      const uint32_t* B = Bp + p * Dp * ZNR;
      const int64_t jp = ja + p * ZNR;
      const int64_t nk = std::min<int64_t>(ZNR, jb - jp);
      const uint32_t valid = nk == ZNR ? 0xFFFFFFFFu : ((1u << nk) - 1u);
      const float* zp = rv + p * 2 * ZNR;
      const __m512 z0 = _mm512_loadu_ps(zp), z1 = _mm512_loadu_ps(zp + 16);
      const __m512 p0 = _mm512_loadu_ps(zp + ZNR), p1 = _mm512_loadu_ps(zp + ZNR + 16);
      for (int64_t r = q0; r < q1; r += ZMR) {
        __m512 c[24];
        micro_12x32_bf16(Ap + (r / ZMR) * ZMR * Dp, B, Dp, c);
        const int nq = static_cast<int>(std::min<int64_t>(ZMR, q1 - r));
        for (int t = 0; t < nq; ++t) {
          const int64_t row = r + t;
          const __m512 a = _mm512_set1_ps(aq[row]), cc = _mm512_set1_ps(cq[row]), b = _mm512_set1_ps(bq[row]);
          const __m512 e0 = _mm512_fmadd_ps(z0, a, _mm512_fmadd_ps(p0, cc, b));
          const __m512 e1 = _mm512_fmadd_ps(z1, a, _mm512_fmadd_ps(p1, cc, b));
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
Bf16Stats g_bf16_stats;

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

}  // namespace cosine
}  // namespace cpu
}  // namespace xite

namespace xite {
namespace cpu {

CosineTopkBf16Stats cosine_topk_bf16_stats() {
  const auto& s = cosine::g_bf16_stats;
  return {s.queries.load(), s.candidates.load(), s.fallback.load()};
}

}  // namespace cpu
}  // namespace xite
