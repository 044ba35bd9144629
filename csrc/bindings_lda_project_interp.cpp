// Python bindings of lda_project_interp (csrc/cpu/lda_project_interp.cpp): structural checks of the
// numpy arrays, GIL release.
#include <pybind11/numpy.h>

#include <cstdint>
#include <string>

#include "bindings.h"
#include "cpu/xite_cpu.h"

namespace py = pybind11;

namespace {

void check_f32_matrix(const py::array& a, const char* name) {
  XITE_CHECK(a.ndim() == 2, "lda_project_interp: " << name << " must be 2-D, got ndim " << a.ndim());
  XITE_CHECK(a.dtype().is(py::dtype::of<float>()),
             "lda_project_interp: " << name << " must be float32, got " << std::string(py::str(a.dtype())));
  XITE_CHECK(a.flags() & py::array::c_style, "lda_project_interp: " << name << " must be C-contiguous");
}

// Returns the first row whose output is not finite, or -1.
int64_t lda_project_interp_py(const py::array& src, const py::array& tgt, const py::array& W, const py::array& lam,
                              int64_t lam_div, const std::string& mode_name, py::array& out, int num_threads,
                              int nt_mode, const std::string& simd) {
  const int mode = xite::cpu::lda_mode(mode_name);
  XITE_CHECK(simd == "auto" || simd == "avx2" || simd == "avx512",
             "lda_project_interp: simd must be 'auto', 'avx2' or 'avx512', got '" << simd << "'");
  const int simd_i = simd == "auto" ? -1 : simd == "avx2" ? 0 : 1;
  check_f32_matrix(src, "src");
  check_f32_matrix(tgt, "tgt");
  check_f32_matrix(out, "out");
  XITE_CHECK(out.writeable(), "lda_project_interp: out must be writeable");
  const int64_t M = src.shape(0), D = src.shape(1);
  XITE_CHECK(tgt.shape(0) == M && tgt.shape(1) == D, "lda_project_interp: tgt shape (" << tgt.shape(0) << ", "
                                                       << tgt.shape(1) << ") != src shape (" << M << ", " << D << ")");
  XITE_CHECK(out.shape(0) == M && out.shape(1) == D, "lda_project_interp: out shape (" << out.shape(0) << ", "
                                                       << out.shape(1) << ") != src shape (" << M << ", " << D << ")");
  XITE_CHECK(D >= 1, "lda_project_interp: D must be >= 1, got " << D);
  int r = 0;
  if (mode != 0) {  // every mode but interp projects onto W
    check_f32_matrix(W, "W");
    XITE_CHECK(W.shape(0) == D, "lda_project_interp: W must have " << D << " rows (D), got " << W.shape(0));
    XITE_CHECK(W.shape(1) >= 1 && W.shape(1) <= D,
               "lda_project_interp: W must have 1 <= r <= D columns, got " << W.shape(1));
    r = static_cast<int>(W.shape(1));
  }
  XITE_CHECK(lam.ndim() == 1 && lam.dtype().is(py::dtype::of<float>()) && (lam.flags() & py::array::c_style),
             "lda_project_interp: lam must be a 1-D contiguous float32 array");
  const int64_t L = lam.shape(0);
  XITE_CHECK(L >= 1, "lda_project_interp: lam must have at least one value");
  XITE_CHECK(lam_div >= 1, "lda_project_interp: lam_div must be >= 1, got " << lam_div);
  XITE_CHECK(L == 1 || L * lam_div == M,
             "lda_project_interp: lam has " << L << " values x lam_div " << lam_div << ", expected " << M << " rows");
  XITE_CHECK(num_threads >= 0, "lda_project_interp: num_threads must be >= 0, got " << num_threads);
  const float* lp = static_cast<const float*>(lam.data());
  for (int64_t i = 0; i < L; ++i)
    XITE_CHECK(lp[i] >= 0.0f && lp[i] <= 1.0f, "lda_project_interp: lam must be in [0, 1], got " << lp[i]);
  if (M == 0) return -1;
  const float* s = static_cast<const float*>(src.data());
  const float* t = static_cast<const float*>(tgt.data());
  const float* w = r > 0 ? static_cast<const float*>(W.data()) : nullptr;
  float* o = static_cast<float*>(out.mutable_data());
  py::gil_scoped_release release;
  return xite::cpu::lda_project_interp(s, t, w, r, lp, L, lam_div, mode, o, M, D, num_threads, nt_mode, simd_i);
}

void triad_py(py::array& a, const py::array& b, const py::array& c, float scalar, int num_threads) {
  for (const py::array* x : {static_cast<const py::array*>(&a), &b, &c}) {
    XITE_CHECK(x->dtype().is(py::dtype::of<float>()) && (x->flags() & py::array::c_style),
               "lda_project_interp_triad: arrays must be contiguous float32");
    XITE_CHECK(x->size() == a.size(), "lda_project_interp_triad: arrays must have the same size");
  }
  float* pa = static_cast<float*>(a.mutable_data());
  const float* pb = static_cast<const float*>(b.data());
  const float* pc = static_cast<const float*>(c.data());
  const int64_t n = a.size();
  py::gil_scoped_release release;
  xite::cpu::lda_project_interp_triad(pa, pb, pc, n, scalar, num_threads);
}

}  // namespace

XITE_REGISTER_OP("lda_project_interp", [](py::module_& m) {
  m.def("lda_project_interp", &lda_project_interp_py, py::arg("src"), py::arg("tgt"), py::arg("W"), py::arg("lam"),
        py::arg("lam_div"), py::arg("mode"), py::arg("out"), py::arg("num_threads") = 0, py::arg("nt_mode") = -1,
        py::arg("simd") = "auto",
        "Fused LDA projection + interpolation over (M, D) float32 rows, written into `out`.\n"
        "lam: (L,) float32 with L == 1 or L * lam_div == M (row i uses lam[i // lam_div]).\n"
        "nt_mode: -1 auto streaming stores, 0 off, 1 on. simd: 'auto' (AVX-512 for proj/comp/shift with\n"
        "r >= 8 on AVX-512F CPUs), 'avx2' or 'avx512' (same bits; for tests and benchmarks).\n"
        "Returns the first row whose output is not finite, or -1. Use xite_fast.lda_project_interp.");
  m.def("lda_project_interp_triad", &triad_py, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("scalar"),
        py::arg("num_threads") = 0, "Bandwidth probe a = b + scalar * c (float32, streaming stores).");
});
