// The single extension module xite_fast._C. Ops register themselves (see bindings.h).
#include <omp.h>

#include <algorithm>

#include <pybind11/stl.h>

#include "bindings.h"
#include "common.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "xite_fast C++ CPU kernels (AVX2/FMA + OpenMP). Use the Python wrappers in xite_fast.";
  m.def("cpu_supports_avx2", &xite::cpu_has_avx2_fma, "True when this CPU runs the AVX2/FMA kernels.");
  m.def("cpu_supports_avx512", &xite::cpu_has_avx512,
        "True when this CPU has AVX-512F (cosine_topk then picks its 12x32 AVX-512 micro-kernel).");
  m.def("cpu_supports_avx512_bf16", &xite::cpu_has_avx512_bf16,
        "True when this CPU has AVX512_BF16 (cosine_topk's certified bf16 screening kernel).");
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
