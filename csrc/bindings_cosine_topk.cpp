// Python bindings of cosine_topk (csrc/cpu/cosine_topk*.cpp) and the FMA peak probe (csrc/cpu/peak.cpp):
// structural checks of the numpy arrays, output allocation, GIL release, error reporting.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <string>

#include "bindings.h"
#include "common.h"
#include "cpu/xite_cpu.h"

namespace py = pybind11;

namespace {

py::tuple cosine_topk_py(py::array queries, py::array keys, int64_t k, bool assume_normalized, int num_threads,
                         int64_t key_offset, int64_t key_block, int64_t query_block, bool stream_keys,
                         const std::string& split, const std::string& kernel, int64_t d_block,
                         const std::string& out_of_range) {
  XITE_CHECK(queries.ndim() == 2, "cosine_topk: queries must be 2-D (N, D), got ndim " << queries.ndim());
  XITE_CHECK(keys.ndim() == 2, "cosine_topk: keys must be 2-D (M, D), got ndim " << keys.ndim());
  XITE_CHECK(queries.dtype().is(py::dtype::of<float>()),
             "cosine_topk: queries must be float32, got " << std::string(py::str(queries.dtype())));
  XITE_CHECK(keys.dtype().is(py::dtype::of<float>()),
             "cosine_topk: keys must be float32, got " << std::string(py::str(keys.dtype())));
  XITE_CHECK(queries.flags() & py::array::c_style, "cosine_topk: queries must be C-contiguous");
  XITE_CHECK(keys.flags() & py::array::c_style, "cosine_topk: keys must be C-contiguous");
  const int64_t N = queries.shape(0), D = queries.shape(1), M = keys.shape(0);
  XITE_CHECK(keys.shape(1) == D,
             "cosine_topk: keys must have the same dimension D as queries (" << D << "), got " << keys.shape(1));
  XITE_CHECK(D >= 1, "cosine_topk: D must be >= 1, got " << D);
  XITE_CHECK(k > 0, "cosine_topk: k must be > 0, got " << k);
  XITE_CHECK(M >= 1, "cosine_topk: keys must be non-empty (M >= 1), got M=" << M);
  XITE_CHECK(k <= M, "cosine_topk: k must be <= the number of keys M=" << M << ", got k=" << k);
  XITE_CHECK(k <= std::numeric_limits<int32_t>::max(), "cosine_topk: k too large: " << k);
  XITE_CHECK(num_threads >= 0, "cosine_topk: num_threads must be >= 0 (0 = all), got " << num_threads);
  XITE_CHECK(split == "auto" || split == "queries" || split == "keys",
             "cosine_topk: split must be 'auto', 'queries' or 'keys', got '" << split << "'");
  XITE_CHECK(kernel == "auto" || kernel == "fp32" || kernel == "packed" || kernel == "avx512" || kernel == "bf16" ||
                 kernel == "dot",
             "cosine_topk: kernel must be 'auto', 'fp32', 'bf16', 'avx512', 'packed' or 'dot', got '" << kernel << "'");
  XITE_CHECK(kernel != "avx512" || xite::cpu_has_avx512(), "cosine_topk: kernel='avx512' needs a CPU with AVX-512F");
  XITE_CHECK(kernel != "bf16" || xite::cpu_has_avx512_bf16(),
             "cosine_topk: kernel='bf16' needs a CPU with AVX512_BF16 (this one lacks it; use 'auto')");
  XITE_CHECK(kernel != "bf16" || M <= std::numeric_limits<uint32_t>::max(),
             "cosine_topk: kernel='bf16' takes at most 2^32 - 1 keys per call, got M=" << M);
  XITE_CHECK(out_of_range == "raise" || out_of_range == "flag",
             "cosine_topk: out_of_range must be 'raise' or 'flag', got '" << out_of_range << "'");
  XITE_CHECK(d_block >= 0, "cosine_topk: d_block must be >= 0 (0 = auto), got " << d_block);
  const xite::cpu::CosineKernel kern = xite::cpu::cosine_topk_kernel(kernel, D, k, M);
  py::array_t<float> out_s({N, k});
  py::array_t<int64_t> out_i({N, k});
  const bool flag = out_of_range == "flag";
  auto result = [&](bool range_seen) -> py::tuple {
    if (flag) return py::make_tuple(out_s, out_i, range_seen);
    return py::make_tuple(out_s, out_i);
  };
  if (N == 0) return result(false);
  const float* Qraw = static_cast<const float*>(queries.data());
  const float* K = static_cast<const float*>(keys.data());
  float* S = out_s.mutable_data();
  int64_t* I = out_i.mutable_data();
  xite::cpu::CosineTopkStatus st;
  {
    py::gil_scoped_release release;
    xite::cpu::cosine_topk(Qraw, K, N, M, D, k, assume_normalized, num_threads, key_offset, key_block, query_block,
                           stream_keys, split, kern, d_block, S, I, st);
  }
  XITE_CHECK(st.bad_query < 0, "queries contains NaN or inf (first at row " << st.bad_query << ")");
  XITE_CHECK(st.bad_key < 0, "keys contains NaN or inf (first at row " << st.bad_key + key_offset << ")");
  if (st.range_seen && flag) return result(true);
  XITE_CHECK(!st.range_seen,
             "cosine_topk: a query or key row has a norm outside the kernel's float32 range [1e-30, 2^126] "
             "(its scores would be wrong); xite_fast.cosine_topk rescales such rows by a power of two, or pass "
             "out_of_range='flag'");
  XITE_CHECK(!st.nan_seen,
             "cosine_topk: scores overflowed float32 (inf/NaN) although the inputs are finite: vector "
             "norms near 3e38, or assume_normalized=True with large unnormalised inputs");
  return result(false);
}

double fma_peak_py(const std::string& isa, int num_threads, int64_t iters) {
  py::gil_scoped_release release;
  return xite::cpu::fma_peak_gflops(isa, num_threads, iters);
}

}  // namespace

XITE_REGISTER_OP("cosine_topk", [](py::module_& m) {
  m.def("cosine_topk", &cosine_topk_py, py::arg("queries"), py::arg("keys"), py::arg("k"),
        py::arg("assume_normalized") = false, py::arg("num_threads") = 0, py::arg("key_offset") = 0,
        py::arg("key_block") = 0, py::arg("query_block") = 0, py::arg("stream_keys") = false,
        py::arg("split") = "auto", py::arg("kernel") = "auto", py::arg("d_block") = 0,
        py::arg("out_of_range") = "raise",
        R"doc(Exact cosine top-k: (scores (N, k) float32, indices (N, k) int64), sorted descending,
ties -> lower index. queries (N, D) and keys (M, D) must be C-contiguous float32 (keys may be a
memory map: they are read in place). num_threads=0 uses all OpenMP threads; key_offset is added to
the returned indices (for callers streaming key chunks); key_block/query_block override the cache
blocking (rows, 0 = auto); stream_keys=True (for memory-mapped keys) makes all threads sweep one
key block at a time so the keys are read from disk once (query split); split='auto'|'queries'|'keys'
forces the parallel decomposition (for tests); kernel='auto'|'fp32'|'bf16'|'avx512'|'packed'|'dot' picks
the micro-kernel: 'bf16' (certified bf16 screening + exact fp32 rescoring, bit-identical to the fp32 packed
kernels; AVX512_BF16 CPUs), 'fp32' (avx512 when present, else packed), 'avx512' (12x32 fp32), 'packed'
(AVX2 6x16 fp32), 'dot' (unpacked 3x4);
'auto' picks bf16 when the CPU has it and D >= 16, k <= 256, else avx512 when present, else packed.
d_block: reduction chunk of the avx512 kernel (0 = whole rows). A nonzero row with a norm outside
[1e-30, 2^126] (without assume_normalized) cannot be scored in float32: out_of_range='raise' (default)
raises, 'flag' returns (scores, indices, True) so the caller can rescale the rows and rerun ((.., False)
otherwise). The GIL is released during the computation.)doc");
  m.def(
      "cosine_topk_bf16_stats",
      []() {
        const xite::cpu::CosineTopkBf16Stats s = xite::cpu::cosine_topk_bf16_stats();
        py::dict d;
        d["queries"] = s.queries;
        d["candidates"] = s.candidates;
        d["fallback"] = s.fallback;
        return d;
      },
      "Diagnostics of the last kernel='bf16' call: queries screened, candidates rescored exactly (sum over "
      "queries), queries recomputed by the fp32 kernel.");
  m.def("cosine_topk_fma_peak", &fma_peak_py, py::arg("isa") = "avx2", py::arg("num_threads") = 0,
        py::arg("iters") = 20000000,
        "Measured FMA peak in GFLOP/s: 12 register FMA chains per thread, isa='avx2' (ymm fp32), 'avx512' "
        "(zmm fp32), 'avx512_bf16' (zmm vdpbf16ps, 64 FLOP per instruction) or 'avx512_vnni' (zmm vpdpbusd, "
        "128 int8 OP per instruction: GOP/s).");
});
