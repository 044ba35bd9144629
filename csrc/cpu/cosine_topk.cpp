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
//
// Files: cosine_topk_common.h (shared parts), cosine_topk_avx2.cpp ('dot', 'packed'),
// cosine_topk_avx512.cpp ('avx512'), cosine_topk_bf16.cpp ('bf16'), this file (norms, blocking,
// parallel decomposition, dispatch); bindings_cosine_topk.cpp checks the arrays and calls it.
#include <omp.h>

#include <string>

#include "cpu/cosine_topk_common.h"
#include "cpu/xite_cpu.h"

namespace xite {
namespace cpu {
namespace cosine {
namespace {

// Norms of keys [ja, jb); returns the first non-finite row or -1 and sets *range_seen for a row
// outside the fp32 range (see out_of_range). rnorm (bf16 kernel only): an upper bound of |x_j| / n_x
// (1 when normalising: n_x = |x_j| to within 2^-22).
int64_t key_norms(const float* K, int64_t ja, int64_t jb, int64_t D, bool assume_normalized, float* knorm,
                  float* rnorm, int* range_seen) {
  int64_t bad = -1;
  for (int64_t j = ja; j < jb; ++j) {
    const double ss = row_sumsq(K + j * D, D);
    if (!std::isfinite(ss)) {
      if (bad < 0) bad = j;
      knorm[j] = std::numeric_limits<float>::infinity();
      continue;
    }
    if (!assume_normalized && out_of_range(ss)) {
      __atomic_store_n(range_seen, 1, __ATOMIC_RELAXED);
      knorm[j] = std::numeric_limits<float>::infinity();  // scores 0 until the caller rescales the row
      if (rnorm) rnorm[j] = 1.0f;
      continue;
    }
    knorm[j] = assume_normalized ? 1.0f : norm_divisor(ss);
    if (rnorm)
      rnorm[j] = assume_normalized ? static_cast<float>(std::sqrt(ss) * (1 + std::ldexp(1.0, -20))) : 1.0f;
  }
  return bad;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The bf16 kernel's centering vector: mu = the mean of up to 4,096 evenly spaced keys, each as the
// kernels normalise it (x * fl(1 / n_x); x with assume_normalized), skipping non-finite rows and rows
// outside the fp32 range. Any mu keeps the result exact; a mean direction makes the screening bound
// tight (cosine_topk_bf16.cpp). Returns an upper bound of |mu| (mu rounded to fp32 as stored).
double key_mean(const float* K, int64_t M, int64_t D, bool assume_normalized, float* mu) {
  std::vector<double> acc(D, 0.0);
  const int64_t step = std::max<int64_t>(1, M / 4096);
  int64_t n = 0;
  for (int64_t j = 0; j < M; j += step) {
    const float* x = K + j * D;
    const double ss = row_sumsq(x, D);
    if (!std::isfinite(ss) || out_of_range(ss) || ss == 0.0) continue;
    const float inv = assume_normalized ? 1.0f : 1.0f / norm_divisor(ss);
    for (int64_t t = 0; t < D; ++t) acc[t] += static_cast<double>(x[t] * inv);
    ++n;
  }
  double s2 = 0.0;
  for (int64_t t = 0; t < D; ++t) {
    mu[t] = n ? static_cast<float>(acc[t] / static_cast<double>(n)) : 0.0f;
    s2 += static_cast<double>(mu[t]) * mu[t];
  }
  return std::sqrt(s2) * (1 + std::ldexp(1.0, -20));
}

// The whole search on raw buffers (GIL released by the caller): S, I are (N, k).
void run_search(const float* Qraw, const float* K, int64_t N, int64_t M, int64_t D, int64_t k,
                bool assume_normalized, int num_threads, int64_t key_offset, int64_t key_block, int64_t query_block,
                bool stream_keys, const std::string& split, CosineKernel kern, int64_t d_block, float* S, int64_t* I,
                CosineTopkStatus& st) {
  const bool packed = kern != CosineKernel::Dot;
  const bool bf16 = kern == CosineKernel::Bf16;
  const bool z512 = kern == CosineKernel::Avx512 || bf16;
  const int64_t mr = z512 ? ZMR : PMR, nr = z512 ? ZNR : PNR;  // packed micro-tile
  const int64_t qr = packed ? mr : QR;
  // bf16: D is packed in pairs; A~ / B~ panels then hold Dp 32-bit words per row
  const int64_t Dp = bf16 ? (D + 1) / 2 : D;
  int64_t& bad_query = st.bad_query;
  int64_t& bad_key = st.bad_key;
  int& nan_seen = st.nan_seen;
  int& range_seen = st.range_seen;
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
    std::vector<float> aq(bf16 ? N : 0), cq(bf16 ? N : 0), bq(bf16 ? N : 0);
    const Bf16Bound bound(D);
    // bf16: the keys' centering vector mu and an upper bound of |mu| (see cosine_topk_bf16.cpp)
    std::vector<float> mu(bf16 ? D : 0, 0.0f);
    double mun = 0.0;
    if (bf16) mun = key_mean(K, M, D, assume_normalized, mu.data());
    int64_t badq = std::numeric_limits<int64_t>::max();
#pragma omp parallel for num_threads(Tq) schedule(static, 48) reduction(min : badq)
    for (int64_t i = 0; i < N; ++i) {
      const float* q = Qraw + i * D;
      const double ss = row_sumsq(q, D);
      if (!std::isfinite(ss)) {
        badq = std::min(badq, i);
        continue;
      }
      if (!assume_normalized && out_of_range(ss)) __atomic_store_n(&range_seen, 1, __ATOMIC_RELAXED);
      if (bf16) {
        uint32_t* o = Ap32 + (i / mr) * mr * Dp + (i % mr);
        const float nq = assume_normalized ? 1.0f : norm_divisor(ss);
        double dss = 0.0;  // |q~ - q^|^2, each difference exact in fp32
        for (int64_t t = 0; t < D; t += 2) {
          const float v0 = assume_normalized ? q[t] : q[t] / nq;
          const float v1 = t + 1 < D ? (assume_normalized ? q[t + 1] : q[t + 1] / nq) : 0.0f;
          const uint32_t b0 = bf16_rne(v0), b1 = bf16_rne(v1);
          const double d0 = bf16_value(b0) - v0, d1 = bf16_value(b1) - v1;
          dss += d0 * d0 + d1 * d1;
          o[(t / 2) * mr] = b0 | (b1 << 16);
        }
        // |q^| <= 1 + 2^-22 when normalising (0 for zero vectors, bounded by 1 all the same)
        const double up = 1 + std::ldexp(1.0, -20);
        bound.query_terms(assume_normalized ? std::sqrt(ss) * up : up, std::sqrt(dss) * up, mun, &aq[i], &cq[i], &bq[i]);
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
        kbnrm[t].reserve(static_cast<size_t>(round_up(kb, nr)) * (bf16 ? 2 : 1));  // bf16: zeta_j, rho_j
      }
      // reduction chunk of the AVX-512 kernel (0 = whole rows)
      const int64_t kc = d_block > 0 ? d_block : XITE_KC_DEFAULT;
      auto pack = [&](int64_t j0, int64_t j1, float* dst, float* dnrm) {
        if (bf16)
          pack_keys_bf16(K, knorm.data(), rnorm.data(), mu.data(), j0, j1, D, reinterpret_cast<uint32_t*>(dst), dnrm);
        else if (z512)
          pack_keys<ZNR>(K, knorm.data(), j0, j1, D, dst, dnrm);
        else
          pack_keys<PNR>(K, knorm.data(), j0, j1, D, dst, dnrm);
      };
      auto run_packed = [&](const float* Bp, const float* bnrm, int64_t qa, int64_t qb_, int64_t ja, int64_t jb,
                            TopK& top) {
        if (bf16)
          run_tile_bf16(Ap32, reinterpret_cast<const uint32_t*>(Bp), bnrm, Dp, qa, qb_, ja, jb, qb, aq.data(),
                        cq.data(), bq.data(), top);
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
            const int64_t b = key_norms(K, j, j + 1, D, assume_normalized, knorm.data(), rn, &range_seen);
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
                const int64_t b = key_norms(K, j, std::min(j + 64, j1), D, assume_normalized, knorm.data(), rn, &range_seen);
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
                  pack(j, std::min(j + 4 * nr, j1), kbuf[0].p + (j - j0) * Dp, kbnrm[0].p + (j - j0) * (bf16 ? 2 : 1));
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
            const int64_t b = key_norms(K, j0, j1, D, assume_normalized, knorm.data(), rn, &range_seen);
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
        CosineTopkStatus fst;
        run_search(qf.data(), K, nf, M, D, k, assume_normalized, num_threads, key_offset, key_block, query_block,
                   stream_keys, split, xite::cpu_has_avx512() ? CosineKernel::Avx512 : CosineKernel::Packed, d_block, sf.data(),
                   idf.data(), fst);
        if (fst.nan_seen) nan_seen = 1;
        if (fst.range_seen) range_seen = 1;
        if (fst.bad_key >= 0) bad_key = fst.bad_key;
        for (int64_t r = 0; r < nf; ++r) {
          std::copy(sf.data() + r * k, sf.data() + (r + 1) * k, S + fallback[r] * k);
          std::copy(idf.data() + r * k, idf.data() + (r + 1) * k, I + fallback[r] * k);
        }
      }
    }
  }
}

}  // namespace
}  // namespace cosine
}  // namespace cpu
}  // namespace xite

namespace xite {
namespace cpu {

CosineKernel cosine_topk_kernel(const std::string& kernel, int64_t D, int64_t k, int64_t M) {
  if (kernel == "dot") return CosineKernel::Dot;
  if (kernel == "packed") return CosineKernel::Packed;
  if (kernel == "avx512") return CosineKernel::Avx512;
  if (kernel == "bf16") return CosineKernel::Bf16;
  if (kernel == "fp32") return xite::cpu_has_avx512() ? CosineKernel::Avx512 : CosineKernel::Packed;
  // 'auto'
  return xite::cpu_has_avx512_bf16() && D >= cosine::kBf16MinD && k <= cosine::kBf16MaxK &&
                 M <= std::numeric_limits<uint32_t>::max()
             ? CosineKernel::Bf16
         : xite::cpu_has_avx512() ? CosineKernel::Avx512
                                  : CosineKernel::Packed;
}

void cosine_topk(const float* Q, const float* K, int64_t N, int64_t M, int64_t D, int64_t k, bool assume_normalized,
                 int num_threads, int64_t key_offset, int64_t key_block, int64_t query_block, bool stream_keys,
                 const std::string& split, CosineKernel kern, int64_t d_block, float* S, int64_t* I,
                 CosineTopkStatus& status) {
  if (kern == CosineKernel::Bf16) {
    cosine::g_bf16_stats.queries = 0;
    cosine::g_bf16_stats.candidates = 0;
    cosine::g_bf16_stats.fallback = 0;
  }
  cosine::run_search(Q, K, N, M, D, k, assume_normalized, num_threads, key_offset, key_block, query_block,
                     stream_keys, split, kern, d_block, S, I, status);
}

}  // namespace cpu
}  // namespace xite
