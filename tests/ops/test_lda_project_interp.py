"""Fused LDA projection + interpolation: CPU kernel and torch backend vs the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.utils import backend_params, needs_cpu_ext, orthonormal
from xite_fast import lda_project_interp
from xite_fast._backend import load_extension
from xite_fast.ops.lda_project_interp import aligned_empty
from xite_fast.reference import lda_project_interp_ref

MODES = ("interp", "proj", "comp", "shift")
BACKENDS = backend_params()
needs_cpu = needs_cpu_ext()


def make(shape, r, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal(shape) * scale).astype(np.float32)
    t = (rng.standard_normal(shape) * scale + 0.5 * scale).astype(np.float32)
    d = shape[-1]
    W = orthonormal(d, r, rng)
    lam_rows = rng.uniform(0.0, 1.0, size=shape[0])
    return s, t, W, lam_rows


def oracle(s, t, W, lam, mode):
    """float64 reference on the float32 inputs."""
    lam_t = torch.from_numpy(np.asarray(lam, np.float64)) if np.ndim(lam) else float(lam)
    return lda_project_interp_ref(
        torch.from_numpy(np.asarray(s)).double(),
        torch.from_numpy(np.asarray(t)).double(),
        None if W is None else torch.from_numpy(np.asarray(W)).double(),
        lam_t,
        mode,
    ).numpy()


def assert_close(got, want, scale, d):
    got = np.asarray(got)
    assert got.shape == want.shape
    assert np.isfinite(got).all(), "non-finite output"
    # fp32: each output sums ~r*D products of O(scale) terms; the error grows ~ sqrt(D)
    atol = 2e-6 * scale * max(1.0, np.sqrt(d))
    err = np.abs(got.astype(np.float64) - want)
    if err.max() > atol:
        idx = np.unravel_index(int(err.argmax()), err.shape)
        raise AssertionError(
            f"max err {err.max():.3g} > atol {atol:.3g} at {idx}: got {got[idx]}, want {want[idx]}"
        )


SHAPES = [((5, 123), r) for r in range(1, 8)] + [
    ((3, 17, 77), 1),
    ((3, 17, 77), 6),
    ((7, 1), 1),  # D = 1, r = D
    ((9, 16), 16),  # r = D
    ((6, 33), 33),  # r = D, odd
    ((4, 8), 3),
    ((1, 9), 2),
    ((2, 1, 5), 2),
    ((11, 384), 4),
    ((13, 768), 16),
    ((3, 40), 12),  # r > phase-1 register block
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,r", SHAPES)
def test_matches_reference_all_modes(backend, shape, r):
    s, t, W, lam_rows = make(shape, r, seed=shape[-1] * 31 + r)
    for mode in MODES:
        for lam in (0.3, lam_rows):
            want = oracle(s, t, W, lam, mode)
            got = lda_project_interp(s, t, W, lam, mode, backend=backend)
            assert isinstance(got, np.ndarray) and got.dtype == np.float32
            assert_close(got, want, 2.0, shape[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out_and_dtypes(backend):
    s, t, W, lam_rows = make((6, 4, 50), 3, seed=3, scale=10.0)
    want = oracle(s, t, W, lam_rows, "shift")
    got = lda_project_interp(
        torch.from_numpy(s),
        torch.from_numpy(t),
        torch.from_numpy(W),
        torch.from_numpy(lam_rows),
        "shift",
        backend=backend,
    )
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (6, 4, 50)
    assert_close(got.numpy(), want, 20.0, 50)
    # float64 inputs are converted to float32 (documented): result float32, close to the float64 oracle
    got64 = lda_project_interp(
        s.astype(np.float64), t.astype(np.float64), W.astype(np.float64), 0.25, "proj", backend=backend
    )
    assert got64.dtype == np.float32
    assert_close(got64, oracle(s, t, W, 0.25, "proj"), 20.0, 50)
    got16 = lda_project_interp(
        torch.from_numpy(s).half(),
        torch.from_numpy(t).half(),
        torch.from_numpy(W),
        0.5,
        "comp",
        backend=backend,
    )
    assert got16.dtype == torch.float32
    want16 = oracle(
        torch.from_numpy(s).half().float().numpy(), torch.from_numpy(t).half().float().numpy(), W, 0.5, "comp"
    )
    assert_close(got16.numpy(), want16, 20.0, 50)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lam_edges_exact(backend):
    s, t, W, _ = make((10, 37), 4, seed=9)
    for mode in MODES:
        np.testing.assert_array_equal(lda_project_interp(s, t, W, 1.0, mode, backend=backend), s)
    np.testing.assert_array_equal(lda_project_interp(s, t, None, 0.0, "interp", backend=backend), t)
    # lam = 0: proj/comp give P(t) / t - P(t), which sum to t
    p = lda_project_interp(s, t, W, 0.0, "proj", backend=backend)
    c = lda_project_interp(s, t, W, 0.0, "comp", backend=backend)
    np.testing.assert_allclose(p + c, t, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    s, t, W, _ = make((4, 12), 2)
    for shape in ((0, 12), (0, 3, 12), (2, 0, 12)):
        out = lda_project_interp(
            np.zeros(shape, np.float32), np.zeros(shape, np.float32), W, 0.5, "proj", backend=backend
        )
        assert out.shape == shape and out.dtype == np.float32
    out = lda_project_interp(torch.zeros(0, 12), torch.zeros(0, 12), W, np.zeros(0), "shift", backend=backend)
    assert isinstance(out, torch.Tensor) and out.shape == (0, 12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_argument(backend, tmp_path):
    s, t, W, lam_rows = make((40, 3, 24), 5, seed=4)
    want = oracle(s, t, W, lam_rows, "comp")
    out = np.full(s.shape, np.nan, np.float32)
    assert lda_project_interp(s, t, W, lam_rows, "comp", out=out, backend=backend) is out
    assert_close(out, want, 2.0, 24)
    mm = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=s.shape)
    lda_project_interp(s, t, W, lam_rows, "comp", out=mm, backend=backend)
    mm.flush()
    assert_close(np.load(tmp_path / "out.npy"), want, 2.0, 24)
    ot = torch.empty(s.shape)
    assert lda_project_interp(torch.from_numpy(s), t, W, lam_rows, "comp", out=ot, backend=backend) is ot
    assert_close(ot.numpy(), want, 2.0, 24)
    # exactly in place (out is src, then out is tgt) is allowed: every row is read before written
    for mode in MODES:
        want = oracle(s, t, W, lam_rows, mode)
        s2, t2 = s.copy(), t.copy()
        lda_project_interp(s2, t2, W, lam_rows, mode, out=s2, backend=backend)
        assert_close(s2, want, 2.0, 24)
        s2, t2 = s.copy(), t.copy()
        lda_project_interp(s2, t2, W, lam_rows, mode, out=t2, backend=backend)
        assert_close(t2, want, 2.0, 24)


@needs_cpu
def test_thread_count_independent_bitwise():
    s, t, W, lam_rows = make((301, 257), 7, seed=12)
    for mode in MODES:
        one = lda_project_interp(s, t, W, lam_rows, mode, backend="cpu", num_threads=1)
        two = lda_project_interp(s, t, W, lam_rows, mode, backend="cpu", num_threads=2)
        three = lda_project_interp(s, t, W, lam_rows, mode, backend="cpu", num_threads=3)
        np.testing.assert_array_equal(one, two)
        np.testing.assert_array_equal(one, three)
        assert_close(one, oracle(s, t, W, lam_rows, mode), 2.0, 257)


@needs_cpu
@pytest.mark.parametrize("nt_mode", [0, 1])
def test_streaming_stores_path(nt_mode):
    # drive the kernel directly so the non-temporal path runs at a small size (aligned rows, D % 8 == 0)
    ext = load_extension()
    s, t, W, lam_rows = make((203, 64), 5, seed=5)
    out = aligned_empty(s.shape)
    assert out.ctypes.data % 32 == 0
    for mode in MODES:
        bad = ext.lda_project_interp(s, t, W, lam_rows.astype(np.float32), 1, mode, out, 2, nt_mode)
        assert bad == -1
        assert_close(out, oracle(s, t, W, lam_rows.astype(np.float32), mode), 2.0, 64)


HAS_AVX512 = bool(load_extension() is not None and load_extension().cpu_supports_avx512())


@needs_cpu
@pytest.mark.skipif(not HAS_AVX512, reason="CPU without AVX-512F")
@pytest.mark.parametrize(
    "M,D", [(1, 1), (3, 7), (9, 15), (13, 16), (11, 24), (23, 63), (37, 65), (41, 64), (77, 768), (300, 96)]
)
def test_avx512_bitwise_equals_avx2(M, D):
    """The AVX-512 kernel of proj/comp/shift does the AVX2 kernel's arithmetic (same 8-lane partial
    sums, same hsum, same FMA order per output): bit-identical for every r, tail, row remainder,
    lam per row, store path and thread count."""
    ext = load_extension()
    rng = np.random.default_rng(M * 1000 + D)
    s = rng.standard_normal((M, D), dtype=np.float32)
    t = rng.standard_normal((M, D), dtype=np.float32) + 0.5
    for r in sorted({1, 2, 3, 4, 5, 8, 9, 16, 17, 33} & set(range(1, D + 1))):
        W = orthonormal(D, r, rng)
        for mode in ("proj", "comp", "shift"):
            for lam, div in ((np.array([0.3], np.float32), M), (rng.uniform(0, 1, M).astype(np.float32), 1)):
                for nt_mode, threads in ((-1, 1), (0, 2), (1, 2)):
                    a, b = aligned_empty((M, D)), aligned_empty((M, D))
                    assert ext.lda_project_interp(s, t, W, lam, div, mode, a, threads, nt_mode, "avx2") == -1
                    assert (
                        ext.lda_project_interp(s, t, W, lam, div, mode, b, threads, nt_mode, "avx512") == -1
                    )
                    assert a.tobytes() == b.tobytes(), (r, mode, lam.shape, nt_mode, threads)
    # auto (AVX-512 here) equals the forced AVX2 kernel, also in place (out is src: every row
    # is read before it is written)
    W = orthonormal(D, min(D, 9), rng)
    want = lda_project_interp(s, t, W, 0.3, "shift", backend="cpu")
    s2 = s.copy()
    assert ext.lda_project_interp(s2, t, W, np.array([0.3], np.float32), M, "shift", s2, 2, -1, "avx2") == -1
    assert want.tobytes() == s2.tobytes()
    # the AVX-512 row pipeline in place too (out is src or tgt: it reads the next rows ahead of writing)
    for r in sorted({4, 9} & set(range(1, D + 1))):
        W = orthonormal(D, r, rng)
        for mode in ("proj", "comp", "shift"):
            want = aligned_empty((M, D))
            ext.lda_project_interp(s, t, W, np.array([0.3], np.float32), M, mode, want, 2, -1, "avx2")
            for which in ("src", "tgt"):
                s2, t2 = s.copy(), t.copy()
                o = s2 if which == "src" else t2
                lam = np.array([0.3], np.float32)
                assert ext.lda_project_interp(s2, t2, W, lam, M, mode, o, 2, -1, "avx512") == -1
                assert want.tobytes() == o.tobytes(), (r, mode, which)


@needs_cpu
def test_simd_argument_checked():
    ext = load_extension()
    s, t, W, _ = make((4, 8), 2)
    with pytest.raises(ValueError, match="simd must be 'auto', 'avx2' or 'avx512', got 'sse'"):
        ext.lda_project_interp(
            s, t, W, np.array([0.5], np.float32), 4, "proj", np.empty_like(s), 1, -1, "sse"
        )


@needs_cpu
def test_large_output_uses_streaming_auto():
    # 6000 x 768 float32 = 18 MB output: above the streaming-store threshold
    s, t, W, _ = make((6000, 768), 4, seed=6)
    got = lda_project_interp(s, t, W, 0.4, "shift", backend="cpu")
    sl = slice(0, 6000, 97)
    assert_close(got[sl], oracle(s[sl], t[sl], W, 0.4, "shift"), 2.0, 768)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_inputs_and_overflow(backend):
    s, t, W, _ = make((9, 3, 20), 2)
    s_bad = s.copy()
    s_bad[4, 1, 7] = np.nan
    with pytest.raises(ValueError, match=r"src contains NaN or inf \(first at row 4\)"):
        lda_project_interp(s_bad, t, W, 0.5, "proj", backend=backend)
    t_bad = t.copy()
    t_bad[2, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"tgt contains NaN or inf \(first at row 2\)"):
        lda_project_interp(s, t_bad, W, 0.5, "interp", backend=backend)
    W_bad = W.copy()
    W_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="W contains NaN or inf"):
        lda_project_interp(s, t, W_bad, 0.5, "proj", backend=backend)
    if backend == "cpu":  # finite inputs whose projection overflows float32
        big = np.full((3, 16), 3e38, np.float32)
        ones = np.full((16, 1), 0.25, np.float32)
        with pytest.raises(ValueError, match="overflowed float32: non-finite output at row 0"):
            lda_project_interp(big, big, ones, 0.5, "proj", backend=backend)


def _err_cases():
    s, t, W, _ = make((5, 8), 2)
    return [
        (([1.0], t, W, 0.5, "proj"), {}, "src must be a numpy array or torch tensor, got list"),
        ((s[0], t[0], W, 0.5, "proj"), {}, r"src must be 2-D \(N, D\) or 3-D \(N, T, D\), got shape \(8,\)"),
        ((s.astype(np.int32), t, W, 0.5, "proj"), {}, "src must have a floating dtype.*int32"),
        ((s, t.astype(np.int64), W, 0.5, "proj"), {}, "tgt must have a floating dtype.*int64"),
        ((s, t[:4], W, 0.5, "proj"), {}, r"tgt must have the shape of src \(5, 8\), got \(4, 8\)"),
        ((s, t, W[:7], 0.5, "proj"), {}, r"W must have D=8 rows.*got shape \(7, 2\)"),
        ((s, t, W[:, 0], 0.5, "proj"), {}, r"W must be 2-D \(D, r\), got shape \(8,\)"),
        (
            (s, t, np.zeros((8, 0), np.float32), 0.5, "proj"),
            {},
            r"W must have 1 <= r <= D=8 columns, got shape \(8, 0\)",
        ),
        (
            (s, t, np.zeros((8, 9), np.float32), 0.5, "proj"),
            {},
            r"W must have 1 <= r <= D=8 columns, got shape \(8, 9\)",
        ),
        ((s, t, 2.0 * W, 0.5, "proj"), {}, "W must have orthonormal columns.*scalings_"),
        ((s, t, W.astype(np.int32), 0.5, "proj"), {}, "W must have a floating dtype"),
        ((s, t, None, 0.5, "comp"), {}, r"W \(D, r\) is required for mode='comp', got None"),
        ((s, t, W, 1.5, "proj"), {}, r"lam must be in \[0, 1\], got 1.5"),
        ((s, t, W, -0.1, "proj"), {}, r"lam must be in \[0, 1\], got -0.1"),
        ((s, t, W, float("nan"), "proj"), {}, r"lam must be in \[0, 1\], got nan"),
        (
            (s, t, W, np.array([0.1, 0.2, 2.0, 0.3, 0.4]), "proj"),
            {},
            r"lam must be in \[0, 1\], got 2.0 \(first bad at index 2\)",
        ),
        (
            (s, t, W, np.full(4, 0.5), "proj"),
            {},
            r"lam must be a float or an \(N,\) array with N=5 \(src rows\), got shape \(4,\)",
        ),
        ((s, t, W, np.full((5, 1), 0.5), "proj"), {}, r"got shape \(5, 1\)"),
        ((s, t, W, True, "proj"), {}, r"lam must be a real number in \[0, 1\].*got bool True"),
        ((s, t, W, np.True_, "proj"), {}, r"lam must be a real number.*got bool"),
        ((s, t, W, "half", "proj"), {}, r"lam must be a real number.*got str 'half'"),
        # a numeric string is refused, never parsed (np.asarray('0.5', float) would accept it)
        ((s, t, W, "0.5", "proj"), {}, r"lam must be a real number.*N=5 \(src rows\), got str '0.5'"),
        ((s, t, W, b"0.5", "proj"), {}, r"lam must be a real number.*got bytes"),
        ((s, t, W, np.array("0.5"), "proj"), {}, r"lam must be a real number.*got ndarray of dtype <U3"),
        ((s, t, W, np.full(5, "0.5"), "proj"), {}, r"lam must be a real number.*dtype <U3"),
        ((s, t, W, np.ones(5, bool), "proj"), {}, r"lam must be a real number.*got ndarray of dtype bool"),
        (
            (s, t, W, [0.5, True, 0.5, 0.5, 0.5], "proj"),
            {},
            r"lam must be a real number.*list holding non-numbers",
        ),
        ((s, t, W, ["0.5"] * 5, "proj"), {}, r"lam must be a real number.*list holding non-numbers"),
        ((s, t, W, 0.5 + 0j, "proj"), {}, r"lam must be a real number.*got complex"),
        (
            (s, t, W, torch.ones(5, dtype=torch.bool), "proj"),
            {},
            r"lam must be a real number.*dtype torch.bool",
        ),
        ((s, t, W, {"lam": 0.5}, "proj"), {}, r"lam must be a real number.*got dict"),
        (
            (s, t, W, 0.5, "project"),
            {},
            r"mode must be one of \('interp', 'proj', 'comp', 'shift'\), got 'project'",
        ),
        ((s, t, W, 0.5, "proj"), {"backend": "gpu"}, "backend must be one of"),
        ((s, t, W, 0.5, "proj"), {"num_threads": 0}, "num_threads must be a positive int or None, got 0"),
        (
            (s, t, W, 0.5, "proj"),
            {"out": np.empty((5, 9), np.float32)},
            r"out must have the shape of src \(5, 8\), got \(5, 9\)",
        ),
        (
            (s, t, W, 0.5, "proj"),
            {"out": np.empty((5, 8), np.float64)},
            "out must be a writeable C-contiguous float32 array, got dtype float64",
        ),
        ((s, t, W, 0.5, "proj"), {"out": np.empty((8, 5), np.float32).T}, r"contiguous=False"),
        (
            (s, t, W, 0.5, "proj"),
            {"out": [0.0]},
            "out must be a numpy array, np.memmap or torch tensor, got list",
        ),
        (
            (s, t, W, 0.5, "proj"),
            {"out": torch.empty(5, 8, dtype=torch.float64)},
            "out must be a contiguous float32 CPU tensor",
        ),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_err_cases())))
def test_error_messages(backend, case):
    args, kwargs, match = _err_cases()[case]
    with pytest.raises(ValueError, match=match):
        lda_project_interp(*args, **{"backend": backend, **kwargs})


def test_out_partial_overlap_rejected():
    buf = np.zeros((6, 8), np.float32)
    s, t = buf[:5], np.ones((5, 8), np.float32)
    W = np.eye(8, 2, dtype=np.float32)
    with pytest.raises(ValueError, match="out partially overlaps src"):
        lda_project_interp(s, t, W, 0.5, out=buf[1:])


@needs_cpu
def test_cpp_checks_repeat_critical_validation():
    ext = load_extension()
    s, t, W, _ = make((4, 8), 2)
    lam = np.array([0.5], np.float32)
    out = np.empty_like(s)
    cases = [
        ((s.astype(np.float64), t, W, lam, 4, "proj", out), "src must be float32"),
        ((s, t[:3], W, lam, 4, "proj", out), r"tgt shape \(3, 8\) != src shape \(4, 8\)"),
        ((s, t, W[:5], lam, 4, "proj", out), "W must have 8 rows"),
        ((s, t, W, np.array([1.5], np.float32), 4, "proj", out), r"lam must be in \[0, 1\]"),
        ((s, t, W, np.full(3, 0.5, np.float32), 1, "proj", out), "expected 4 rows"),
        ((s, t, W, lam, 4, "bogus", out), "mode must be one of"),
        ((s, t, W, lam, 4, "proj", np.empty((4, 7), np.float32)), "out shape"),
        ((s, np.asfortranarray(t), W, lam, 4, "proj", out), "tgt must be C-contiguous"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            ext.lda_project_interp(*args)


@needs_cpu
def test_auto_dispatch_and_env_override(monkeypatch):
    s, t, W, _ = make((8, 16), 3)
    want = oracle(s, t, W, 0.2, "proj")
    assert_close(lda_project_interp(s, t, W, 0.2), want, 2.0, 16)
    monkeypatch.setenv("XITE_FAST_BACKEND", "torch")
    assert_close(lda_project_interp(s, t, W, 0.2), want, 2.0, 16)


# ------------------------------------------------------------------------------------- lam: real numbers
@pytest.mark.parametrize("backend", BACKENDS)
def test_lam_accepts_real_scalars_and_arrays(backend):
    s, t, W, lam_rows = make((5, 8), 2, seed=9)
    want = oracle(s, t, W, 0.5, "proj")
    for lam in (0.5, np.float32(0.5), np.float64(0.5), np.array(0.5), torch.tensor(0.5)):
        assert_close(lda_project_interp(s, t, W, lam, "proj", backend=backend), want, 2.0, 8)
    want = oracle(s, t, W, lam_rows, "proj")
    for lam in (lam_rows, list(lam_rows), torch.from_numpy(lam_rows)):
        assert_close(lda_project_interp(s, t, W, lam, "proj", backend=backend), want, 2.0, 8)
    # integers are real numbers: 0 and 1 are the edges
    got = lda_project_interp(s, t, W, 1, "proj", backend=backend)
    np.testing.assert_array_equal(got, s)
    got = lda_project_interp(s, t, W, np.ones(5, np.int64), "proj", backend=backend)
    np.testing.assert_array_equal(got, s)


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_requires_grad_inputs_take_the_differentiable_path(backend, mode):
    """Tensors that require grad are never detached silently: the result carries a grad_fn and the
    gradients equal those of the float64 reference (autograd through plain torch)."""
    s, t, W, lam_rows = make((6, 3, 8), 2, seed=21)
    for lam in (0.3, lam_rows):
        st = torch.from_numpy(s).requires_grad_(True)
        tt = torch.from_numpy(t).requires_grad_(True)
        y = lda_project_interp(st, tt, W, lam, mode, backend=backend)
        assert y.requires_grad and y.grad_fn is not None and y.dtype == torch.float32
        g = torch.from_numpy(np.random.default_rng(1).standard_normal(s.shape).astype(np.float32))
        (y * g).sum().backward()
        s64 = torch.from_numpy(s).double().requires_grad_(True)
        t64 = torch.from_numpy(t).double().requires_grad_(True)
        lam64 = torch.from_numpy(np.asarray(lam, np.float64)) if np.ndim(lam) else float(lam)
        want = lda_project_interp_ref(s64, t64, torch.from_numpy(W).double(), lam64, mode)
        np.testing.assert_allclose(y.detach().numpy(), want.detach().numpy(), atol=1e-5)
        (want * g.double()).sum().backward()
        np.testing.assert_allclose(st.grad.numpy(), s64.grad.numpy(), atol=1e-5)
        np.testing.assert_allclose(tt.grad.numpy(), t64.grad.numpy(), atol=1e-5)
    # only tgt requires grad, src numpy: still differentiable (a torch result)
    tt = torch.from_numpy(t).requires_grad_(True)
    y = lda_project_interp(s, tt, W, 0.3, mode, backend=backend)
    y.sum().backward()
    assert tt.grad is not None and tt.grad.shape == tt.shape
    # under no_grad nothing needs a graph: the plain kernel path, same values
    with torch.no_grad():
        z = lda_project_interp(torch.from_numpy(s).requires_grad_(True), t, W, 0.3, mode, backend=backend)
    assert z.grad_fn is None
    np.testing.assert_array_equal(z.numpy(), lda_project_interp(s, t, W, 0.3, mode, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_errors_name_the_argument(backend):
    s, t, W, lam_rows = make((5, 8), 2, seed=22)
    st = torch.from_numpy(s).requires_grad_(True)
    Wt = torch.from_numpy(W).requires_grad_(True)
    with pytest.raises(
        ValueError,
        match=r"W must not require grad: .*got a tensor with requires_grad=True; pass W.detach\(\)",
    ):
        lda_project_interp(s, t, Wt, 0.5, "proj", backend=backend)
    lam_t = torch.from_numpy(lam_rows).requires_grad_(True)
    with pytest.raises(ValueError, match=r"lam must not require grad.*pass lam.detach\(\)"):
        lda_project_interp(s, t, W, lam_t, "proj", backend=backend)
    with pytest.raises(ValueError, match=r"out must be None when src requires grad.*got out of type ndarray"):
        lda_project_interp(st, t, W, 0.5, "proj", backend=backend, out=np.empty_like(s))
