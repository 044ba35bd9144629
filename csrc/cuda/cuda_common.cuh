// Device helpers shared by the CUDA kernels (compiled by nvcc only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>

#include "check.h"
#include "xite_cuda.cuh"

namespace xite {
namespace cuda {

#define XITE_CUDA_OK(expr)                                                                     \
  do {                                                                                         \
    cudaError_t xite_err_ = (expr);                                                            \
    if (xite_err_ != cudaSuccess) {                                                            \
      std::ostringstream xite_oss_;                                                            \
      xite_oss_ << "CUDA error in " << #expr << ": " << cudaGetErrorString(xite_err_);         \
      throw std::runtime_error(xite_oss_.str());                                               \
    }                                                                                          \
  } while (0)

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Ranking order of (score, index) pairs: higher score first, lower index on ties.
__device__ __forceinline__ bool better(float sa, int ia, float sb, int ib) {
  return sa > sb || (sa == sb && ia < ib);
}

}  // namespace cuda
}  // namespace xite
