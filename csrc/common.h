// Shared helpers for the xite_fast C++ core: argument checks and op registration.
#pragma once

#include <pybind11/pybind11.h>

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
