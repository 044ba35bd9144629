// Exact top-k cosine similarity on CUDA: a tiled shared-memory SIMT GEMM fused with a per-query
// running top-k, so the N x M score matrix never exists.
//
//   score[i, j] = (sum_d q[i, d] * x[j, d]) * qinv[i] * xinv[j],   inv = 1/|row| (0 for zero rows)
//
// Block = BM queries x one key range ("split"). For every BN-key tile the block accumulates the
// BM x BN scores over D in BK chunks (fp32 FMA; fp16/bf16 inputs are upcast on load, so products are
// exact and the result is the fp32 cosine for every input dtype -- no re-rank needed), stores them in
// shared memory (aliasing the GEMM tiles) and each warp updates the sorted top-k lists of its 4 rows:
// tile entries that beat the row's k-th entry are extracted one at a time by a warp argmax
// (__shfl_xor) and inserted with a warp-parallel shift. After warm-up few tile entries beat the k-th
// score, so the selection cost is small next to the GEMM. A second kernel merges the per-split lists
// exactly (one warp per query, warp argmax over the split heads). Ties: lower key index first.
#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda_common.cuh"

namespace xite {
namespace cuda {
namespace {

constexpr int BM = 32;       // queries per block
constexpr int BN = 64;       // keys per tile (= 2 per lane in the selection)
constexpr int BK = 32;       // dimensions per GEMM step
constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr int ROWS_PER_WARP = BM / WARPS;
constexpr int MAX_SPLITS = 128;  // merge kernel: 4 split heads per lane
constexpr int kEmptyIndex = INT_MAX;
constexpr unsigned FULL = 0xffffffffu;

template <typename T>
__global__ void inv_norm_kernel(const T* __restrict__ x, int64_t rows, int64_t d, bool unit,
                                float* __restrict__ inv) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // warp-uniform
  if (unit) {
    if (lane == 0) inv[row] = 1.f;
    return;
  }
  const T* p = x + row * d;
  float acc = 0.f;
  for (int64_t j = lane; j < d; j += 32) {
    const float v = to_float(p[j]);
    acc = fmaf(v, v, acc);
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(FULL, acc, o);
  if (lane == 0) {
    const float nrm = sqrtf(acc);
    inv[row] = nrm > 0.f ? 1.f / nrm : 0.f;  // zero vectors score 0 against everything
  }
}

template <int KMAX>
struct TopkSmem {
  union {
    struct {
      float q[BM][BK + 1];  // +1: rows of a warp hit distinct banks
      float x[BN][BK + 1];
    } tiles;
    float s[BM][BN + 1];  // the tile's scores, written after the GEMM tiles are consumed
  } u;
  float top_s[BM][KMAX];  // per-row candidates sorted by (score desc, index asc)
  int top_i[BM][KMAX];
};

__device__ __forceinline__ void warp_argmax(float& s, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float os = __shfl_xor_sync(FULL, s, o);
    const int oi = __shfl_xor_sync(FULL, i, o);
    if (better(os, oi, s, i)) {
      s = os;
      i = oi;
    }
  }
}

template <typename T, int KMAX>
__global__ void __launch_bounds__(THREADS)
    cosine_topk_kernel(const T* __restrict__ q, const T* __restrict__ x, const float* __restrict__ qinv,
                       const float* __restrict__ xinv, int64_t n, int64_t m, int64_t d, int k,
                       int64_t keys_per_split, float* __restrict__ part_s, int* __restrict__ part_i) {
  __shared__ TopkSmem<KMAX> sm;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tx = tid % 16, ty = tid / 16;  // 16 x 16 threads, 2 x 4 scores each
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int split = blockIdx.y, splits = gridDim.y;
  const int64_t key_lo = static_cast<int64_t>(split) * keys_per_split;
  const int64_t key_hi = min(m, key_lo + keys_per_split);

  for (int e = tid; e < BM * KMAX; e += THREADS) {
    (&sm.top_s[0][0])[e] = -INFINITY;
    (&sm.top_i[0][0])[e] = kEmptyIndex;
  }
  float qi[2];
  for (int a = 0; a < 2; ++a) {
    const int64_t r = row0 + ty * 2 + a;
    qi[a] = r < n ? qinv[r] : 0.f;
  }
  __syncthreads();

  for (int64_t n0 = key_lo; n0 < key_hi; n0 += BN) {
    float acc[2][4] = {};
    for (int64_t d0 = 0; d0 < d; d0 += BK) {
      // coalesced tile loads: consecutive threads read consecutive dimensions
      for (int e = tid; e < BM * BK; e += THREADS) {
        const int r = e / BK, c = e % BK;
        const int64_t gr = row0 + r, gc = d0 + c;
        sm.u.tiles.q[r][c] = (gr < n && gc < d) ? to_float(q[gr * d + gc]) : 0.f;
      }
      for (int e = tid; e < BN * BK; e += THREADS) {
        const int r = e / BK, c = e % BK;
        const int64_t gr = n0 + r, gc = d0 + c;
        sm.u.tiles.x[r][c] = (gr < key_hi && gc < d) ? to_float(x[gr * d + gc]) : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < BK; ++kk) {
        const float a0 = sm.u.tiles.q[ty * 2][kk];
        const float a1 = sm.u.tiles.q[ty * 2 + 1][kk];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float b = sm.u.tiles.x[tx + 16 * j][kk];  // strided columns: conflict-free
          acc[0][j] = fmaf(a0, b, acc[0][j]);
          acc[1][j] = fmaf(a1, b, acc[1][j]);
        }
      }
      __syncthreads();
    }
    for (int a = 0; a < 2; ++a) {
      for (int j = 0; j < 4; ++j) {
        const int c = tx + 16 * j;
        const int64_t gc = n0 + c;
        sm.u.s[ty * 2 + a][c] = gc < key_hi ? acc[a][j] * qi[a] * xinv[gc] : -INFINITY;
      }
    }
    __syncthreads();

    for (int rr = 0; rr < ROWS_PER_WARP; ++rr) {
      const int r = warp * ROWS_PER_WARP + rr;
      if (row0 + r >= n) break;  // warp-uniform
      float thr = sm.top_s[r][k - 1];
      int thr_i = sm.top_i[r][k - 1];
      const float s0 = sm.u.s[r][lane], s1 = sm.u.s[r][lane + 32];
      const int i0 = static_cast<int>(n0 + lane), i1 = static_cast<int>(n0 + lane + 32);
      bool c0 = (n0 + lane < key_hi) && better(s0, i0, thr, thr_i);
      bool c1 = (n0 + lane + 32 < key_hi) && better(s1, i1, thr, thr_i);
      while (__any_sync(FULL, c0 || c1)) {
        float bs = -INFINITY;
        int bi = kEmptyIndex, which = -1;
        if (c0) {
          bs = s0;
          bi = i0;
          which = 0;
        }
        if (c1 && (which < 0 || better(s1, i1, bs, bi))) {
          bs = s1;
          bi = i1;
          which = 1;
        }
        float ws = bs;
        int wi = bi;
        warp_argmax(ws, wi);
        if (which == 0 && bi == wi) c0 = false;
        if (which == 1 && bi == wi) c1 = false;
        // insertion position = number of kept entries ranked before the winner (< k by selection)
        int pos = 0;
        for (int p0 = 0; p0 < k; p0 += 32) {
          const int p = p0 + lane;
          const bool before = p < k && better(sm.top_s[r][p], sm.top_i[r][p], ws, wi);
          pos += __popc(__ballot_sync(FULL, before));
        }
        // shift [pos, k-2] down by one (read all, sync, write); the old k-th entry drops out
        float vs[KMAX / 32];
        int vi[KMAX / 32];
#pragma unroll
        for (int j = 0; j < KMAX / 32; ++j) {
          const int p = j * 32 + lane;
          if (p >= pos && p < k - 1) {
            vs[j] = sm.top_s[r][p];
            vi[j] = sm.top_i[r][p];
          }
        }
        __syncwarp();
#pragma unroll
        for (int j = 0; j < KMAX / 32; ++j) {
          const int p = j * 32 + lane;
          if (p >= pos && p < k - 1) {
            sm.top_s[r][p + 1] = vs[j];
            sm.top_i[r][p + 1] = vi[j];
          }
        }
        if (lane == 0) {
          sm.top_s[r][pos] = ws;
          sm.top_i[r][pos] = wi;
        }
        __syncwarp();
        thr = sm.top_s[r][k - 1];
        thr_i = sm.top_i[r][k - 1];
        c0 = c0 && better(s0, i0, thr, thr_i);
        c1 = c1 && better(s1, i1, thr, thr_i);
      }
    }
    __syncthreads();  // the score tile aliases the next GEMM tiles
  }

  for (int e = tid; e < BM * k; e += THREADS) {
    const int r = e / k, p = e % k;
    const int64_t gr = row0 + r;
    if (gr < n) {
      const int64_t o = (gr * splits + split) * k + p;
      part_s[o] = sm.top_s[r][p];
      part_i[o] = sm.top_i[r][p];
    }
  }
}

// One warp per query: k rounds of a warp argmax over the heads of the sorted split lists.
__global__ void merge_splits_kernel(const float* __restrict__ part_s, const int* __restrict__ part_i,
                                    int64_t n, int splits, int k, float* __restrict__ out_s,
                                    int64_t* __restrict__ out_i) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;  // warp-uniform
  const float* ps = part_s + row * splits * k;
  const int* pi = part_i + row * splits * k;
  int head[MAX_SPLITS / 32];
#pragma unroll
  for (int j = 0; j < MAX_SPLITS / 32; ++j) head[j] = 0;
  for (int o = 0; o < k; ++o) {
    float bs = -INFINITY;
    int bi = kEmptyIndex, bj = -1;
#pragma unroll
    for (int j = 0; j < MAX_SPLITS / 32; ++j) {
      const int sp = lane + 32 * j;
      if (sp < splits && head[j] < k) {
        const float s = ps[sp * k + head[j]];
        const int i = pi[sp * k + head[j]];
        if (bj < 0 || better(s, i, bs, bi)) {
          bs = s;
          bi = i;
          bj = j;
        }
      }
    }
    float ws = bs;
    int wi = bi;
    warp_argmax(ws, wi);
#pragma unroll
    for (int j = 0; j < MAX_SPLITS / 32; ++j) {
      if (j == bj && bi == wi) ++head[j];  // real key indices are unique across splits
    }
    if (lane == 0) {
      out_s[row * k + o] = ws;
      out_i[row * k + o] = wi;
    }
  }
}

struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    XITE_CUDA_OK(cudaGetDevice(&prev));
    if (prev != device) XITE_CUDA_OK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev) cudaSetDevice(prev);
  }
};

inline std::size_t align_up(std::size_t v) { return (v + 255) / 256 * 256; }

template <typename T, int KMAX>
void launch_topk(cudaStream_t stream, const T* q, const T* x, const float* qinv, const float* xinv, int64_t n,
                 int64_t m, int64_t d, int k, int64_t keys_per_split, int splits, float* part_s, int* part_i) {
  const dim3 grid(static_cast<unsigned>((n + BM - 1) / BM), static_cast<unsigned>(splits));
  cosine_topk_kernel<T, KMAX><<<grid, THREADS, 0, stream>>>(q, x, qinv, xinv, n, m, d, k, keys_per_split,
                                                            part_s, part_i);
}

template <typename T>
void run(cudaStream_t stream, const void* qv, const void* xv, int64_t n, int64_t m, int64_t d, int k,
         bool assume_normalized, const CosineTopkPlan& plan, void* workspace, float* out_s, int64_t* out_i) {
  const T* q = static_cast<const T*>(qv);
  const T* x = static_cast<const T*>(xv);
  char* ws = static_cast<char*>(workspace);
  float* qinv = reinterpret_cast<float*>(ws);
  ws += align_up(sizeof(float) * n);
  float* xinv = reinterpret_cast<float*>(ws);
  ws += align_up(sizeof(float) * m);
  float* part_s = reinterpret_cast<float*>(ws);
  ws += align_up(sizeof(float) * n * plan.splits * k);
  int* part_i = reinterpret_cast<int*>(ws);

  constexpr int kNormWarps = 8;
  inv_norm_kernel<T><<<static_cast<unsigned>((n + kNormWarps - 1) / kNormWarps), 32 * kNormWarps, 0, stream>>>(
      q, n, d, assume_normalized, qinv);
  inv_norm_kernel<T><<<static_cast<unsigned>((m + kNormWarps - 1) / kNormWarps), 32 * kNormWarps, 0, stream>>>(
      x, m, d, assume_normalized, xinv);
  const int64_t keys_per_split = plan.keys_per_split;
  switch (plan.kmax) {
    case 32:
      launch_topk<T, 32>(stream, q, x, qinv, xinv, n, m, d, k, keys_per_split, plan.splits, part_s, part_i);
      break;
    case 64:
      launch_topk<T, 64>(stream, q, x, qinv, xinv, n, m, d, k, keys_per_split, plan.splits, part_s, part_i);
      break;
    default:
      launch_topk<T, 128>(stream, q, x, qinv, xinv, n, m, d, k, keys_per_split, plan.splits, part_s, part_i);
      break;
  }
  constexpr int kMergeWarps = 4;
  merge_splits_kernel<<<static_cast<unsigned>((n + kMergeWarps - 1) / kMergeWarps), 32 * kMergeWarps, 0,
                        stream>>>(part_s, part_i, n, plan.splits, k, out_s, out_i);
  XITE_CUDA_OK(cudaGetLastError());
}

}  // namespace

CosineTopkPlan cosine_topk_plan(int device, int64_t n, int64_t m, int64_t d, int k) {
  XITE_CHECK(n > 0 && m > 0 && d > 0,
             "cosine_topk_cuda: empty input (n=" << n << ", m=" << m << ", d=" << d << ")");
  XITE_CHECK(k > 0 && k <= m, "cosine_topk_cuda: k must be in [1, M=" << m << "], got " << k);
  XITE_CHECK(k <= kCosineTopkMaxK, "cosine_topk_cuda: k must be <= " << kCosineTopkMaxK << ", got " << k
                                                                     << " (use the triton or torch backend)");
  XITE_CHECK(m < INT_MAX, "cosine_topk_cuda: at most 2^31-2 keys per call, got " << m);
  int sms = 80;
  {
    DeviceGuard guard(device);
    XITE_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  }
  const int64_t blocks = (n + BM - 1) / BM;
  // enough blocks for ~4 per SM even with few queries, but >= 4 key tiles per split
  int64_t splits = std::max<int64_t>(1, (4 * sms + blocks - 1) / blocks);
  splits = std::min<int64_t>({splits, MAX_SPLITS, std::max<int64_t>(1, m / (4 * BN))});
  // round each range up to whole tiles, then drop ranges that would start past the last key
  const int64_t per = (m + splits - 1) / splits;
  const int64_t keys_per_split = (per + BN - 1) / BN * BN;
  splits = (m + keys_per_split - 1) / keys_per_split;
  CosineTopkPlan plan;
  plan.splits = static_cast<int>(splits);
  plan.keys_per_split = keys_per_split;
  plan.kmax = k <= 32 ? 32 : (k <= 64 ? 64 : 128);
  plan.workspace = align_up(sizeof(float) * n) + align_up(sizeof(float) * m) +
                   align_up(sizeof(float) * n * splits * k) + align_up(sizeof(int) * n * splits * k);
  return plan;
}

void cosine_topk(int device, std::uintptr_t stream, const void* q, const void* x, DType dtype, int64_t n,
                 int64_t m, int64_t d, int k, bool assume_normalized, const CosineTopkPlan& plan,
                 void* workspace, float* out_scores, int64_t* out_idx) {
  XITE_CHECK(k > 0 && k <= m && k <= kCosineTopkMaxK, "cosine_topk_cuda: bad k=" << k);
  XITE_CHECK(plan.splits >= 1 && plan.splits <= MAX_SPLITS && plan.keys_per_split % BN == 0 &&
                 plan.keys_per_split * plan.splits >= m,
             "cosine_topk_cuda: bad plan");
  DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::F32:
      run<float>(s, q, x, n, m, d, k, assume_normalized, plan, workspace, out_scores, out_idx);
      break;
    case DType::F16:
      run<__half>(s, q, x, n, m, d, k, assume_normalized, plan, workspace, out_scores, out_idx);
      break;
    case DType::BF16:
      run<__nv_bfloat16>(s, q, x, n, m, d, k, assume_normalized, plan, workspace, out_scores, out_idx);
      break;
  }
}

}  // namespace cuda
}  // namespace xite
