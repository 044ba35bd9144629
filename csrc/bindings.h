// Op registration of the one extension module xite_fast._C (the only pybind11 header of csrc/).
// Each csrc/bindings_<op>.cpp (and csrc/cuda/bindings_cuda.cpp) registers its functions with
// XITE_REGISTER_OP, so adding an op never edits a shared file. Registration runs during static
// initialisation of the one shared library, before PYBIND11_MODULE (bindings.cpp) executes.
#pragma once

#include <pybind11/pybind11.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "check.h"

namespace xite {

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
