// Host API of the CPU kernels (csrc/cpu/*.cpp). Plain C++ on raw buffers -- no pybind11 -- the
// counterpart of cuda/xite_cuda.cuh: bindings_<op>.cpp checks the numpy arrays, releases the GIL
// and calls these. Argument errors throw std::invalid_argument (XITE_CHECK, check.h).
#pragma once

#include <cstdint>
#include <string>

namespace xite {
namespace cpu {

// ------------------------------------------------------------------------ cosine_topk (cosine_topk*.cpp)
// Micro-kernels of cosine_topk (see cosine_topk.cpp): 3x4 unpacked dot, AVX2 6x16 packed,
// AVX-512 12x32 packed, certified bf16 screening + exact fp32 rescoring.
enum class CosineKernel { Dot, Packed, Avx512, Bf16 };

// The kernel for kernel = 'auto' | 'fp32' | 'bf16' | 'avx512' | 'packed' | 'dot' (validated by the
// caller; the Python enumeration is xite_fast.ops.cosine_topk.CPU_KERNELS): 'auto' picks bf16 when the
// CPU has it and D >= 16, k <= 256, M < 2^32, else avx512, else packed; 'fp32' avx512, else packed.
CosineKernel cosine_topk_kernel(const std::string& kernel, int64_t D, int64_t k, int64_t M);

// Rows the caller reports as errors: first non-finite query / key row (-1: none), and whether a
// score overflowed float32 although the inputs are finite.
struct CosineTopkStatus {
  int64_t bad_query = -1, bad_key = -1;
  int nan_seen = 0;
  int range_seen = 0;  // a nonzero row outside the fp32 range (cosine_topk_common.h: out_of_range)
};

// Exact cosine top-k of Q (N, D) against K (M, D), both float32 row-major; S, I are (N, k), sorted
// (score desc, index asc), indices + key_offset. N >= 1, 1 <= k <= M. Call without the GIL.
void cosine_topk(const float* Q, const float* K, int64_t N, int64_t M, int64_t D, int64_t k, bool assume_normalized,
                 int num_threads, int64_t key_offset, int64_t key_block, int64_t query_block, bool stream_keys,
                 const std::string& split, CosineKernel kern, int64_t d_block, float* S, int64_t* I,
                 CosineTopkStatus& status);

// Diagnostics of the last kernel='bf16' call.
struct CosineTopkBf16Stats {
  int64_t queries, candidates, fallback;
};
CosineTopkBf16Stats cosine_topk_bf16_stats();

// Measured FMA peak in GFLOP/s (peak.cpp): isa = 'avx2' | 'avx512' | 'avx512_bf16'.
double fma_peak_gflops(const std::string& isa, int num_threads, int64_t iters);

// ------------------------------------------------------------------ lda_project_interp (lda_project_interp.cpp)
// mode index: 'interp' 0, 'proj' 1, 'comp' 2, 'shift' 3 (throws on anything else)
int lda_mode(const std::string& name);

// out (M, D) = the mode's formula over src/tgt (M, D); W (D, r) row-major (unused for interp, r = 0);
// lam (lam_len,) with row i using lam[i / lam_div] (lam_len == 1: one value). nt_mode: -1 auto
// streaming stores, 0 off, 1 on. simd: -1 auto (AVX-512 kernel for the W modes with r >= 8 on
// AVX-512F CPUs), 0 AVX2, 1 AVX-512 (throws without AVX-512F); both give the same bits. Returns the first row whose
// output is not finite, or -1.
int64_t lda_project_interp(const float* src, const float* tgt, const float* W, int r, const float* lam,
                           int64_t lam_len, int64_t lam_div, int mode, float* out, int64_t M, int64_t D,
                           int num_threads, int nt_mode, int simd = -1);

// Bandwidth probe a = b + scalar * c over n floats (streaming stores when a is 32-byte aligned).
void lda_project_interp_triad(float* a, const float* b, const float* c, int64_t n, float scalar, int num_threads);

// -------------------------------------------------------------------------------- sinkhorn (sinkhorn.cpp)
// T = float or double. x (B, n, d), y (B, m, d), a (B, n), b (B, m) C-contiguous.
// True when every batch item of w (B, n) has a positive weight.
template <typename T>
bool sinkhorn_items_nonempty(const T* w, int64_t B, int64_t n);

// Forward: f (B, n), g (B, m), value (B,) = <a, f> + <b, g>, iters (B,).
template <typename T>
void sinkhorn(const T* x, const T* y, const T* a, const T* b, int64_t B, int64_t n, int64_t m, int64_t d,
              const double* eps_list, int n_eps, double tol, bool symmetric, T* f, T* g, double* value,
              int32_t* iters);

// Envelope-theorem backward: gx (B, n, d), gy (B, m, d) (unused when symmetric: gx is then 2 gx).
template <typename T>
void sinkhorn_backward(const T* x, const T* y, const T* a, const T* b, const T* f, const T* g, int64_t B, int64_t n,
                       int64_t m, int64_t d, double eps, const T* w, bool symmetric, T* gx, T* gy);

}  // namespace cpu
}  // namespace xite
