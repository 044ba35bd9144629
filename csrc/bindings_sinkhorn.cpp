// Python bindings of the batched Sinkhorn solver (csrc/cpu/sinkhorn.cpp): structural checks of the
// numpy arrays, output allocation, GIL release.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "bindings.h"
#include "cpu/xite_cpu.h"

namespace py = pybind11;

namespace {

enum class DType { F32, F64 };

DType check_inputs(const char* op, const py::array& x, const py::array& y, const py::array& a, const py::array& b) {
  XITE_CHECK(x.ndim() == 3, op << ": x must be 3-D (B, n, D), got ndim " << x.ndim());
  XITE_CHECK(y.ndim() == 3, op << ": y must be 3-D (B, m, D), got ndim " << y.ndim());
  XITE_CHECK(y.shape(0) == x.shape(0) && y.shape(2) == x.shape(2),
             op << ": y must be (B, m, D) matching x (" << x.shape(0) << ", n, " << x.shape(2) << ")");
  XITE_CHECK(x.shape(0) > 0 && x.shape(1) > 0 && y.shape(1) > 0 && x.shape(2) > 0, op << ": empty input");
  XITE_CHECK(a.ndim() == 2 && a.shape(0) == x.shape(0) && a.shape(1) == x.shape(1), op << ": a must be (B, n)");
  XITE_CHECK(b.ndim() == 2 && b.shape(0) == x.shape(0) && b.shape(1) == y.shape(1), op << ": b must be (B, m)");
  const int flags = py::array::c_style;
  XITE_CHECK((x.flags() & flags) && (y.flags() & flags) && (a.flags() & flags) && (b.flags() & flags),
             op << ": inputs must be C-contiguous");
  const bool f32 = x.dtype().is(py::dtype::of<float>());
  const bool f64 = x.dtype().is(py::dtype::of<double>());
  XITE_CHECK(f32 || f64, op << ": x must be float32 or float64");
  for (const py::array* arr : {&y, &a, &b}) XITE_CHECK(arr->dtype().is(x.dtype()), op << ": all inputs must share x's dtype");
  return f32 ? DType::F32 : DType::F64;
}

bool all_items_nonempty(const py::array& w) {
  const int64_t B = w.shape(0), n = w.shape(1);
  return w.dtype().is(py::dtype::of<float>())
             ? xite::cpu::sinkhorn_items_nonempty(static_cast<const float*>(w.data()), B, n)
             : xite::cpu::sinkhorn_items_nonempty(static_cast<const double*>(w.data()), B, n);
}

template <typename T>
py::tuple sinkhorn_t(const py::array& x, const py::array& y, const py::array& a, const py::array& b,
                     const std::vector<double>& eps_list, double tol, bool symmetric) {
  const int64_t B = x.shape(0), n = x.shape(1), d = x.shape(2), m = y.shape(1);
  py::array_t<T> f_out({B, n}), g_out({B, m});
  py::array_t<double> value_out(B);
  py::array_t<int32_t> iters_out(B);
  T* fo = f_out.mutable_data();
  T* go = g_out.mutable_data();
  double* vo = value_out.mutable_data();
  int32_t* io = iters_out.mutable_data();
  {
    py::gil_scoped_release release;
    xite::cpu::sinkhorn<T>(static_cast<const T*>(x.data()), static_cast<const T*>(y.data()),
                           static_cast<const T*>(a.data()), static_cast<const T*>(b.data()), B, n, m, d,
                           eps_list.data(), static_cast<int>(eps_list.size()), tol, symmetric, fo, go, vo, io);
  }
  return py::make_tuple(f_out, g_out, value_out, iters_out);
}

template <typename T>
py::tuple sinkhorn_backward_t(const py::array& x, const py::array& y, const py::array& a, const py::array& b,
                              const py::array& f, const py::array& g, double eps, const py::array& w, bool symmetric) {
  const int64_t B = x.shape(0), n = x.shape(1), d = x.shape(2), m = y.shape(1);
  // symmetric (x is y): only gx is computed (2 gx) and gy is returned empty
  py::array_t<T> gx_out({B, n, d}), gy_out({symmetric ? int64_t(0) : B, m, d});
  T* gx = gx_out.mutable_data();
  T* gy = gy_out.mutable_data();
  {
    py::gil_scoped_release release;
    xite::cpu::sinkhorn_backward<T>(static_cast<const T*>(x.data()), static_cast<const T*>(y.data()),
                                    static_cast<const T*>(a.data()), static_cast<const T*>(b.data()),
                                    static_cast<const T*>(f.data()), static_cast<const T*>(g.data()), B, n, m, d, eps,
                                    static_cast<const T*>(w.data()), symmetric, gx, gy);
  }
  return py::make_tuple(gx_out, gy_out);
}

py::tuple sinkhorn_py(py::array x, py::array y, py::array a, py::array b, std::vector<double> eps_list, double tol,
                      bool symmetric) {
  DType dt = check_inputs("sinkhorn", x, y, a, b);
  XITE_CHECK(!eps_list.empty(), "sinkhorn: eps_list must hold at least one iteration");
  for (double e : eps_list) XITE_CHECK(e > 0 && std::isfinite(e), "sinkhorn: every eps must be finite and > 0, got " << e);
  XITE_CHECK(all_items_nonempty(a) && all_items_nonempty(b), "sinkhorn: every batch item needs a positive weight");
  if (symmetric) XITE_CHECK(x.shape(1) == y.shape(1), "sinkhorn: symmetric=True needs y == x");
  return dt == DType::F32 ? sinkhorn_t<float>(x, y, a, b, eps_list, tol, symmetric)
                          : sinkhorn_t<double>(x, y, a, b, eps_list, tol, symmetric);
}

py::tuple sinkhorn_backward_py(py::array x, py::array y, py::array a, py::array b, py::array f, py::array g,
                               double eps, py::array w, bool symmetric) {
  DType dt = check_inputs("sinkhorn_backward", x, y, a, b);
  XITE_CHECK(eps > 0 && std::isfinite(eps), "sinkhorn_backward: eps must be finite and > 0, got " << eps);
  XITE_CHECK(f.ndim() == 2 && f.shape(0) == x.shape(0) && f.shape(1) == x.shape(1), "sinkhorn_backward: f must be (B, n)");
  XITE_CHECK(g.ndim() == 2 && g.shape(0) == x.shape(0) && g.shape(1) == y.shape(1), "sinkhorn_backward: g must be (B, m)");
  XITE_CHECK(w.ndim() == 1 && w.shape(0) == x.shape(0), "sinkhorn_backward: grad_output must be (B,)");
  for (const py::array* arr : {&f, &g, &w}) {
    XITE_CHECK(arr->dtype().is(x.dtype()), "sinkhorn_backward: all inputs must share x's dtype");
    XITE_CHECK(arr->flags() & py::array::c_style, "sinkhorn_backward: inputs must be C-contiguous");
  }
  if (symmetric) XITE_CHECK(x.shape(1) == y.shape(1), "sinkhorn_backward: symmetric=True needs y == x");
  return dt == DType::F32 ? sinkhorn_backward_t<float>(x, y, a, b, f, g, eps, w, symmetric)
                          : sinkhorn_backward_t<double>(x, y, a, b, f, g, eps, w, symmetric);
}

}  // namespace

XITE_REGISTER_OP("sinkhorn", [](py::module_& m) {
  m.def("sinkhorn", &sinkhorn_py, py::arg("x"), py::arg("y"), py::arg("a"), py::arg("b"), py::arg("eps_list"),
        py::arg("tol") = 0.0, py::arg("symmetric") = false,
        "Batched log-domain Sinkhorn, cost ½|x−y|². x (B,n,D), y (B,m,D), a (B,n), b (B,m) float32/float64 "
        "C-contiguous (zero weight = padding); eps_list: ε per iteration; tol > 0 stops an item once max|Δf| < tol "
        "at the final ε. Returns (f (B,n), g (B,m), value (B,) float64 = <a,f>+<b,g>, iterations (B,) int32).");
  m.def("sinkhorn_backward", &sinkhorn_backward_py, py::arg("x"), py::arg("y"), py::arg("a"), py::arg("b"), py::arg("f"),
        py::arg("g"), py::arg("eps"), py::arg("grad_output"), py::arg("symmetric") = false,
        "Envelope-theorem gradient of the Sinkhorn value: gx_i = w Σ_j π_ij (x_i − y_j), gy_j = w Σ_i π_ij (y_j − x_i), "
        "π from the potentials f, g at the final ε; grad_output w (B,). Returns (gx (B,n,D), gy (B,m,D)); with "
        "symmetric=True (x is y) returns (2 gx, empty) — the whole gradient of OT(α, α).");
});
