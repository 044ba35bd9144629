// Shared helpers for the xite_fast C++ core: argument checks and op registration.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdlib>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace xite {

// Critical checks repeated on the C++ side (the Python boundary validates first). Raises
// std::invalid_argument, which pybind11 turns into a Python ValueError.
#define XITE_CHECK(cond, msg)                                                  \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::ostringstream xite_oss_;                                            \
      xite_oss_ << msg;                                                        \
      throw std::invalid_argument(xite_oss_.str());                            \
    }                                                                          \
  } while (0)

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

// Each csrc/cpu/<op>.cpp registers its bindings with XITE_REGISTER_OP, so adding an op never
// edits a shared file. Registration runs during static initialisation of the one shared
// library, before PYBIND11_MODULE executes.
using RegisterFn = std::function<void(pybind11::module_&)>;

inline std::vector<std::pair<std::string, RegisterFn>>& op_registry() {
  static std::vector<std::pair<std::string, RegisterFn>> registry;
  return registry;
}

struct OpRegistrar {
  OpRegistrar(const char* name, RegisterFn fn) { op_registry().emplace_back(name, std::move(fn)); }
};

#define XITE_CONCAT_INNER(a, b) a##b
#define XITE_CONCAT(a, b) XITE_CONCAT_INNER(a, b)
#define XITE_REGISTER_OP(name, fn) \
  static ::xite::OpRegistrar XITE_CONCAT(xite_registrar_, __LINE__)(name, fn)

}  // namespace xite
