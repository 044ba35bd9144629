// The one argument check of the xite_fast C++ and CUDA sources. Plain C++ (no pybind11, no CUDA
// types), so kernels, bindings and nvcc-compiled host code share it.
#pragma once

#include <sstream>
#include <stdexcept>

// Critical checks repeated on the C++ side (the Python boundary validates first). `msg` is an
// ostream expression (`"k must be > 0, got " << k`). Throws std::invalid_argument, which pybind11
// turns into a Python ValueError.
#define XITE_CHECK(cond, msg)                                                  \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::ostringstream xite_oss_;                                            \
      xite_oss_ << msg;                                                        \
      throw std::invalid_argument(xite_oss_.str());                            \
    }                                                                          \
  } while (0)
