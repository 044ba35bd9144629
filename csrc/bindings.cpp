// The single extension module xite_fast._C. Ops register themselves (see common.h).
#include <omp.h>

#include <algorithm>

#include <pybind11/stl.h>

#include "common.h"

namespace py = pybind11;

static bool cpu_supports_avx2() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

static bool cpu_supports_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "xite_fast C++ CPU kernels (AVX2/FMA + OpenMP). Use the Python wrappers in xite_fast.";
  m.def("cpu_supports_avx2", &cpu_supports_avx2, "True when this CPU runs the AVX2/FMA kernels.");
  m.def("cpu_supports_avx512", &cpu_supports_avx512,
        "True when this CPU has AVX-512F (cosine_topk then picks its 12x32 AVX-512 micro-kernel).");
  m.def("max_threads", []() { return omp_get_max_threads(); }, "OpenMP thread count in use.");
  m.def("with_cuda", []() {
#ifdef XITE_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the module was built with XITE_ENABLE_CUDA=ON.");
  std::vector<std::string> names;
  for (auto& [name, fn] : xite::op_registry()) {
    fn(m);
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  m.attr("ops") = names;
}
