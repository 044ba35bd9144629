// Shared helpers of the xite_fast CPU kernels: the argument check and the run-time CPU features.
// Plain C++: the pybind11 side lives in bindings.h / bindings*.cpp.
#pragma once

#include <cstdlib>
#include <string>

#include "check.h"

namespace xite {

// CPU features checked at run time (the AVX-512 kernels are compiled with target attributes, so
// the module loads on any x86-64 CPU and dispatches on these). Cached after the first call.
inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

inline bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
#else
  return false;
#endif
}

// AVX512_BF16 (vdpbf16ps): the bf16 screening kernel of cosine_topk. XITE_FAST_NO_AVX512_BF16=1
// (read once per process) hides it, so the AVX-512-only dispatch and errors are testable here.
inline bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = [] {
    const char* off = std::getenv("XITE_FAST_NO_AVX512_BF16");
    if (off && *off && std::string(off) != "0") return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

// AVX512_VNNI (vpdpbusd): only the int8 peak micro-benchmark (the denominator of the int8 encoder's
// "% of peak" in bench/bench_encode.py).
inline bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace xite
