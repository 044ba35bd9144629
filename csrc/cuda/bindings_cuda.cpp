// Python bindings of the CUDA kernels: registers `cosine_topk_cuda` and `lda_project_interp_cuda` in
// xite_fast._C when built with XITE_ENABLE_CUDA=ON (XITE_WITH_CUDA). The functions take torch CUDA
// tensors but only through Python attribute access (data_ptr(), shape, dtype, device, the current
// stream), and allocate outputs with torch.empty, so _C never links libtorch. The Python wrappers
// validate values (NaN/inf) before calling; these repeat the structural checks.
#ifdef XITE_WITH_CUDA

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings.h"
#include "cuda/xite_cuda.cuh"

namespace py = pybind11;

namespace {

using xite::cuda::DType;

DType dtype_of(const char* fn, const char* name, const py::object& t) {
  const std::string s = py::str(t.attr("dtype"));
  if (s == "torch.float32") return DType::F32;
  if (s == "torch.float16") return DType::F16;
  if (s == "torch.bfloat16") return DType::BF16;
  XITE_CHECK(false, fn << ": " << name << " must be float32, float16 or bfloat16, got " << s);
  return DType::F32;
}

std::string shape_str(const py::object& t) { return py::str(py::tuple(t.attr("shape"))); }

// Contiguous CUDA tensor of ndim dimensions (made contiguous if needed; the copy is returned).
py::object cuda_tensor(const char* fn, const char* name, const py::object& t, int ndim) {
  XITE_CHECK(py::hasattr(t, "data_ptr") && py::hasattr(t, "is_cuda"),
             fn << ": " << name << " must be a torch tensor, got " << std::string(py::str(py::type::of(t))));
  XITE_CHECK(t.attr("is_cuda").cast<bool>(), fn << ": " << name << " must be a CUDA tensor, got device "
                                                 << std::string(py::str(t.attr("device"))));
  XITE_CHECK(t.attr("dim")().cast<int>() == ndim,
             fn << ": " << name << " must be " << ndim << "-D, got shape " << shape_str(t));
  return t.attr("contiguous")();
}

int64_t dim(const py::object& t, int i) { return py::tuple(t.attr("shape"))[i].cast<int64_t>(); }
std::uintptr_t ptr(const py::object& t) { return t.attr("data_ptr")().cast<std::uintptr_t>(); }

std::uintptr_t current_stream(const py::module_& torch, const py::object& device) {
  return torch.attr("cuda").attr("current_stream")(device).attr("cuda_stream").cast<std::uintptr_t>();
}

py::tuple cosine_topk_cuda(py::object queries, py::object keys, int k, bool assume_normalized) {
  const char* fn = "cosine_topk_cuda";
  py::module_ torch = py::module_::import("torch");
  py::object q = cuda_tensor(fn, "queries", queries, 2);
  py::object x = cuda_tensor(fn, "keys", keys, 2);
  const DType dt = dtype_of(fn, "queries", q);
  XITE_CHECK(dtype_of(fn, "keys", x) == dt, fn << ": queries and keys must share a dtype, got "
                                               << std::string(py::str(q.attr("dtype"))) << " and "
                                               << std::string(py::str(x.attr("dtype"))));
  XITE_CHECK(q.attr("device").equal(x.attr("device")), fn << ": queries and keys must be on the same device");
  const int64_t n = dim(q, 0), d = dim(q, 1), m = dim(x, 0);
  XITE_CHECK(dim(x, 1) == d, fn << ": keys must have last dimension " << d << ", got shape " << shape_str(x));
  XITE_CHECK(k > 0, fn << ": k must be > 0, got " << k);
  XITE_CHECK(k <= m, fn << ": k must be <= number of keys M=" << m << ", got k=" << k);
  py::object device = q.attr("device");
  const int dev = device.attr("index").cast<int>();
  const xite::cuda::CosineTopkPlan plan = xite::cuda::cosine_topk_plan(dev, n, m, d, k);
  py::object ws = torch.attr("empty")(py::make_tuple(static_cast<int64_t>(plan.workspace)),
                                      py::arg("dtype") = torch.attr("uint8"), py::arg("device") = device);
  py::object scores = torch.attr("empty")(py::make_tuple(n, k), py::arg("dtype") = torch.attr("float32"),
                                          py::arg("device") = device);
  py::object idx = torch.attr("empty")(py::make_tuple(n, k), py::arg("dtype") = torch.attr("int64"),
                                       py::arg("device") = device);
  const std::uintptr_t stream = current_stream(torch, device);
  const std::uintptr_t qp = ptr(q), xp = ptr(x), wsp = ptr(ws), sp = ptr(scores), ip = ptr(idx);
  {
    py::gil_scoped_release release;
    xite::cuda::cosine_topk(dev, stream, reinterpret_cast<const void*>(qp), reinterpret_cast<const void*>(xp), dt,
                            n, m, d, k, assume_normalized, plan, reinterpret_cast<void*>(wsp),
                            reinterpret_cast<float*>(sp), reinterpret_cast<int64_t*>(ip));
  }
  // ws must outlive the launch: torch's caching allocator reuses freed blocks only in stream order
  return py::make_tuple(scores, idx);
}

int mode_id(const std::string& mode) {
  if (mode == "interp") return 0;
  if (mode == "proj") return 1;
  if (mode == "comp") return 2;
  if (mode == "shift") return 3;
  XITE_CHECK(false, "lda_project_interp_cuda: mode must be one of 'interp', 'proj', 'comp', 'shift', got '"
                        << mode << "'");
  return -1;
}

py::object lda_project_interp_cuda(py::object src, py::object tgt, py::object W, py::object lam,
                                   const std::string& mode) {
  const char* fn = "lda_project_interp_cuda";
  py::module_ torch = py::module_::import("torch");
  const int mid = mode_id(mode);
  const int nd = src.attr("dim")().cast<int>();
  XITE_CHECK(nd == 2 || nd == 3, fn << ": src must be 2-D (N, D) or 3-D (N, T, D), got shape " << shape_str(src));
  py::object s = cuda_tensor(fn, "src", src, nd);
  py::object t = cuda_tensor(fn, "tgt", tgt, nd);
  XITE_CHECK(py::tuple(s.attr("shape")).equal(py::tuple(t.attr("shape"))),
             fn << ": tgt must have the shape of src " << shape_str(s) << ", got " << shape_str(t));
  const DType dt = dtype_of(fn, "src", s);
  t = t.attr("to")(s.attr("dtype"));
  py::object device = s.attr("device");
  XITE_CHECK(py::object(t.attr("device")).equal(device), fn << ": src and tgt must be on the same device");
  const int64_t n = dim(s, 0), d = dim(s, nd - 1);
  const int64_t per = nd == 3 ? dim(s, 1) : 1;
  int64_t r = 1;
  py::object w;
  if (W.is_none()) {
    XITE_CHECK(mid == 0, fn << ": W (D, r) is required for mode='" << mode << "'");
    w = torch.attr("zeros")(py::make_tuple(d, 1), py::arg("dtype") = torch.attr("float32"),
                            py::arg("device") = device);
  } else {
    w = cuda_tensor(fn, "W", W, 2);
    XITE_CHECK(dim(w, 0) == d && dim(w, 1) >= 1, fn << ": W must be (D=" << d << ", r), got shape " << shape_str(w));
    r = dim(w, 1);
    w = w.attr("to")(torch.attr("float32")).attr("contiguous")();
  }
  float lam_scalar = 0.f;
  py::object lam_rows = py::none();
  if (py::hasattr(lam, "ndim") && lam.attr("ndim").cast<int>() > 0) {  // torch tensor or numpy array
    XITE_CHECK(lam.attr("ndim").cast<int>() == 1 && dim(lam, 0) == n,
               fn << ": lam must be a float or a (N,) tensor with N=" << n << ", got shape " << shape_str(lam));
    lam_rows = torch.attr("as_tensor")(lam, py::arg("dtype") = torch.attr("float32"), py::arg("device") = device);
    if (per > 1) lam_rows = lam_rows.attr("repeat_interleave")(per);
    lam_rows = lam_rows.attr("contiguous")();
  } else {
    lam_scalar = py::float_(lam).cast<float>();
  }
  py::object out = torch.attr("empty_like")(s);
  const std::uintptr_t stream = current_stream(torch, device);
  const int dev = device.attr("index").cast<int>();
  const std::uintptr_t sp = ptr(s), tp = ptr(t), wp = ptr(w), op = ptr(out);
  const std::uintptr_t lp = lam_rows.is_none() ? 0 : ptr(lam_rows);
  {
    py::gil_scoped_release release;
    xite::cuda::lda_project_interp(dev, stream, reinterpret_cast<const void*>(sp), reinterpret_cast<const void*>(tp),
                                   dt, reinterpret_cast<const float*>(wp), reinterpret_cast<const float*>(lp),
                                   lam_scalar, mid, n * per, d, r, reinterpret_cast<void*>(op));
  }
  return out;
}

}  // namespace

XITE_REGISTER_OP("cosine_topk_cuda", [](py::module_& m) {
  m.def("cosine_topk_cuda", &cosine_topk_cuda, py::arg("queries"), py::arg("keys"), py::arg("k"),
        py::kw_only(), py::arg("assume_normalized") = false,
        "Exact top-k cosine on CUDA tensors: (N, D), (M, D) float32/float16/bfloat16 -> (scores (N, k) "
        "float32 descending, indices (N, k) int64; ties to the lower index). k <= 128. Inputs must be "
        "finite (validated by the Python wrapper).");
});

XITE_REGISTER_OP("lda_project_interp_cuda", [](py::module_& m) {
  m.def("lda_project_interp_cuda", &lda_project_interp_cuda, py::arg("src"), py::arg("tgt"), py::arg("W"),
        py::arg("lam"), py::arg("mode") = "proj",
        "Fused LDA projection + interpolation on CUDA tensors: src/tgt (N, D) or (N, T, D), W (D, r), lam "
        "float or (N,) tensor, mode in interp/proj/comp/shift -> tensor like src. Requires D + r <= 12288.");
});

#endif  // XITE_WITH_CUDA
