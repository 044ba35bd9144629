// Fused LDA projection + interpolation on CUDA. With P(x) = x W W^T (W: (D, r) orthonormal, fp32):
//
//   mode     out
//   interp   lam*s + (1-lam)*t
//   proj     lam*s + (1-lam)*P(t)
//   comp     lam*s + (1-lam)*(t - P(t))
//   shift    s + (1-lam)*P(t - s)          (= s - (1-lam) P(s) + (1-lam) P(t))
//
// i.e. out = a*s + b*t + g*(u W) W^T. One block per row (grid-stride): stage u in shared memory,
// each warp reduces c_j = u . W[:, j] for its columns, then every thread writes its dimensions. The op
// is memory-bound (2 reads + 1 write per element); W (D x r, small) stays in L1/L2 across rows. All
// math in fp32, output in the input dtype.
#include <algorithm>

#include "cuda_common.cuh"

namespace xite {
namespace cuda {
namespace {

constexpr unsigned FULL = 0xffffffffu;

__device__ __forceinline__ void lda_coeffs(int mode, float lam, float& a, float& b, float& g) {
  const float h = 1.f - lam;
  switch (mode) {
    case 0: a = lam; b = h; g = 0.f; break;
    case 1: a = lam; b = 0.f; g = h; break;
    case 2: a = lam; b = h; g = -h; break;
    default: a = 1.f; b = 0.f; g = h; break;
  }
}

template <typename T>
__global__ void lda_project_interp_kernel(const T* __restrict__ s, const T* __restrict__ t,
                                          const float* __restrict__ W, const float* __restrict__ lam_rows,
                                          float lam_scalar, int mode, int64_t rows, int64_t d, int64_t r,
                                          T* __restrict__ out) {
  extern __shared__ float smem[];
  float* u = smem;      // (d,)  t or t - s
  float* c = smem + d;  // (r,)  u W
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* sp = s + row * d;
    const T* tp = t + row * d;
    T* op = out + row * d;
    float a, b, g;
    lda_coeffs(mode, lam_rows ? lam_rows[row] : lam_scalar, a, b, g);
    if (mode != 0) {
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        const float tv = to_float(tp[j]);
        u[j] = mode == 3 ? tv - to_float(sp[j]) : tv;
      }
      __syncthreads();
      for (int64_t j = warp; j < r; j += nwarps) {
        float acc = 0.f;
        for (int64_t e = lane; e < d; e += 32) acc = fmaf(u[e], W[e * r + j], acc);
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(FULL, acc, o);
        if (lane == 0) c[j] = acc;
      }
      __syncthreads();
    }
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) {
      float v = a * to_float(sp[e]) + b * to_float(tp[e]);
      if (mode != 0) {
        const float* wr = W + e * r;
        float p = 0.f;
        for (int64_t j = 0; j < r; ++j) p = fmaf(c[j], wr[j], p);
        v = fmaf(g, p, v);
      }
      op[e] = from_float<T>(v);
    }
    __syncthreads();  // u and c are reused by the next row
  }
}

template <typename T>
void launch(cudaStream_t stream, const void* s, const void* t, const float* W, const float* lam_rows, float lam,
            int mode, int64_t rows, int64_t d, int64_t r, void* out) {
  const int threads = d >= 512 ? 256 : 128;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(rows, 1 << 20));
  const std::size_t shmem = sizeof(float) * static_cast<std::size_t>(d + r);
  lda_project_interp_kernel<T><<<grid, threads, shmem, stream>>>(static_cast<const T*>(s), static_cast<const T*>(t),
                                                                 W, lam_rows, lam, mode, rows, d, r,
                                                                 static_cast<T*>(out));
}

}  // namespace

void lda_project_interp(int device, std::uintptr_t stream, const void* s, const void* t, DType dtype,
                        const float* W, const float* lam_rows, float lam, int mode, int64_t rows, int64_t d,
                        int64_t r, void* out) {
  XITE_CHECK(rows > 0 && d > 0, "lda_project_interp_cuda: empty input (rows=" << rows << ", D=" << d << ")");
  XITE_CHECK(r >= 1 && r <= d,
             "lda_project_interp_cuda: W must be (D=" << d << ", r) with 1 <= r <= D, got r=" << r);
  XITE_CHECK(mode >= 0 && mode <= 3, "lda_project_interp_cuda: mode must be 0..3, got " << mode);
  XITE_CHECK(d + r <= kLdaMaxSharedFloats,
             "lda_project_interp_cuda: D + r must be <= " << kLdaMaxSharedFloats << ", got " << d + r);
  int prev = -1;
  XITE_CUDA_OK(cudaGetDevice(&prev));
  if (prev != device) XITE_CUDA_OK(cudaSetDevice(device));
  auto st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::F32:
      launch<float>(st, s, t, W, lam_rows, lam, mode, rows, d, r, out);
      break;
    case DType::F16:
      launch<__half>(st, s, t, W, lam_rows, lam, mode, rows, d, r, out);
      break;
    case DType::BF16:
      launch<__nv_bfloat16>(st, s, t, W, lam_rows, lam, mode, rows, d, r, out);
      break;
  }
  const cudaError_t err = cudaGetLastError();
  if (prev != device) cudaSetDevice(prev);
  XITE_CUDA_OK(err);
}

}  // namespace cuda
}  // namespace xite
