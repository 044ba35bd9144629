// Host API of the CUDA kernels (csrc/cuda/*.cu). Plain C++ declarations only -- no CUDA types --
// so bindings_cuda.cpp compiles with the host compiler and _C never links libtorch: callers pass raw
// device pointers (torch's data_ptr()) and the stream as an integer (torch's cuda_stream).
#pragma once

#include <cstddef>
#include <cstdint>

namespace xite {
namespace cuda {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// Largest k the cosine_topk kernels keep per query (per-row candidate lists live in shared memory).
constexpr int kCosineTopkMaxK = 128;

struct CosineTopkPlan {
  int splits;              // key ranges processed by independent blocks, merged exactly afterwards
  int64_t keys_per_split;  // a multiple of the key tile; splits * keys_per_split >= m, no empty split
  int kmax;                // per-row list capacity (32, 64 or 128)
  std::size_t workspace;   // bytes of device scratch the caller must provide
};

// Plan the launch for n queries, m keys, dimension d and k neighbours on `device`.
CosineTopkPlan cosine_topk_plan(int device, int64_t n, int64_t m, int64_t d, int k);

// Exact fp32 top-k cosine similarity. q: (n, d), x: (m, d) row-major of `dtype` (upcast to fp32 on
// load, fp32 FMA accumulation); out_scores: (n, k) float32 sorted descending; out_idx: (n, k) int64,
// ties to the lower key index. `workspace` holds plan.workspace bytes. Throws std::invalid_argument
// on bad sizes and std::runtime_error on CUDA errors.
void cosine_topk(int device, std::uintptr_t stream, const void* q, const void* x, DType dtype, int64_t n,
                 int64_t m, int64_t d, int k, bool assume_normalized, const CosineTopkPlan& plan,
                 void* workspace, float* out_scores, int64_t* out_idx);

// Fused LDA projection + interpolation over `rows` rows of width d (see lda_project_interp.cu).
// s, t, out: (rows, d) of `dtype`; W: (d, r) float32; lam_rows: (rows,) float32 or nullptr, in which
// case the scalar `lam` is used. mode: 0 interp, 1 proj, 2 comp, 3 shift.
void lda_project_interp(int device, std::uintptr_t stream, const void* s, const void* t, DType dtype,
                        const float* W, const float* lam_rows, float lam, int mode, int64_t rows, int64_t d,
                        int64_t r, void* out);

// Largest d + r handled (the row and its projection coefficients are staged in shared memory).
constexpr int64_t kLdaMaxSharedFloats = 12 * 1024;

}  // namespace cuda
}  // namespace xite
