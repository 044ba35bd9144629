"""Every error message of cosine_topk / merge_topk (Python boundary and the C++ XITE_CHECKs)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tests.utils import backend_params, needs_cpu_ext
from xite_fast import _backend
from xite_fast.ops import cosine_topk as ct_mod
from xite_fast.ops.cosine_topk import cosine_topk, merge_topk

BACKENDS = backend_params("cosine_topk")
needs_cpu = needs_cpu_ext("cosine_topk")

Q = np.ones((3, 4), np.float32)
X = np.arange(20, dtype=np.float32).reshape(5, 4)


@pytest.mark.parametrize(
    "queries,keys,k,match",
    [
        (np.ones(4, np.float32), X, 1, "queries must be 2-D (N, D), got shape (4,)"),
        (Q, np.ones((2, 3, 4), np.float32), 1, "keys must be 2-D (M, D), got shape (2, 3, 4)"),
        (
            Q,
            np.ones((5, 3), np.float32),
            1,
            "keys must have the same dimension D as queries (4), got keys shape (5, 3)",
        ),
        (Q.astype(np.int32), X, 1, "queries must have a floating dtype (float32 preferred), got int32"),
        (Q, X.astype(np.int64), 1, "keys must have a floating dtype (float32 preferred), got int64"),
        (
            torch.ones(3, 4, dtype=torch.int32),
            X,
            1,
            "queries must have a floating dtype (float32 preferred), got torch.int32",
        ),
        ([[1.0, 2.0]], X, 1, "queries must be a numpy array or torch tensor, got list"),
        (Q, X, 0, "k must be a positive int, got 0"),
        (Q, X, -2, "k must be a positive int, got -2"),
        (Q, X, 2.0, "k must be a positive int, got 2.0"),
        (Q, X, True, "k must be a positive int, got True"),
        (Q, X, 6, "k must be <= the number of keys M=5, got k=6"),
        (Q, np.ones((0, 4), np.float32), 1, "keys must be non-empty (M >= 1), got shape (0, 4)"),
        (
            np.ones((3, 0), np.float32),
            np.ones((5, 0), np.float32),
            1,
            "queries and keys must have D >= 1, got D=0",
        ),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_messages(backend, queries, keys, k, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        cosine_topk(queries, keys, k, backend=backend)


def test_unknown_backend():
    with pytest.raises(
        ValueError,
        match=re.escape("backend must be one of 'auto', 'cpu', 'triton', 'cuda', 'torch', got 'gpu9'"),
    ):
        cosine_topk(Q, X, 1, backend="gpu9")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite(backend, bad):
    q = np.ones((6, 9), np.float32)
    q[4, 2] = bad
    with pytest.raises(ValueError, match=re.escape("queries contains NaN or inf (first at row 4)")):
        cosine_topk(q, np.ones((7, 9), np.float32), 2, backend=backend)
    x = np.ones((300, 9), np.float32)
    x[[123, 250], 0] = bad
    with pytest.raises(ValueError, match=re.escape("keys contains NaN or inf (first at row 123)")):
        cosine_topk(np.ones((6, 9), np.float32), x, 2, backend=backend)
    with pytest.raises(ValueError, match=re.escape("keys contains NaN or inf (first at row 123)")):
        cosine_topk(np.ones((6, 9), np.float32), x, 2, backend=backend, assume_normalized=True)


@needs_cpu
def test_large_finite_values_are_not_flagged():
    """1e30 squared overflows fp32 but not the kernel's double-precision norms and NaN/inf check.

    (The fp32 torch reference returns 0 here because its norm overflows; the C++ kernel is exact.)
    """
    backend = "cpu"
    x = np.full((4, 8), 1e30, np.float32)
    x[1] = -1e30
    s, i = cosine_topk(np.ones((2, 8), np.float32), x, 4, backend=backend)
    np.testing.assert_allclose(s[0], [1, 1, 1, -1], atol=1e-6)
    np.testing.assert_array_equal(i[0], [0, 2, 3, 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_in_chunked_memmap(backend, tmp_path, monkeypatch):
    x = np.ones((3000, 8), np.float64)
    x[2500, 3] = np.nan
    np.save(tmp_path / "k.npy", x)
    monkeypatch.setattr(ct_mod, "_CHUNK_BYTES", 8 * 4 * 512)
    with pytest.raises(ValueError, match=re.escape("keys contains NaN or inf (first at row 2500)")):
        cosine_topk(np.ones((2, 8), np.float32), str(tmp_path / "k.npy"), 3, backend=backend)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=re.escape("keys given as a path must name a .npy file, got")):
        cosine_topk(Q, str(tmp_path / "keys.txt"), 1)
    with pytest.raises(ValueError, match=re.escape("keys: .npy file not found:")):
        cosine_topk(Q, tmp_path / "missing.npy", 1)
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(ValueError, match=re.escape("keys: could not memory-map .npy file")):
        cosine_topk(Q, broken, 1)


def test_merge_topk_errors():
    s = np.zeros((2, 3), np.float32)
    i = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match=re.escape("must be non-empty and of equal length, got 1 and 2")):
        merge_topk([s], [i, i], 1)
    with pytest.raises(
        ValueError, match=re.escape("scores_list[1] must be 2-D (N, k_i) with N=2, got shape (3, 3)")
    ):
        merge_topk([s, np.zeros((3, 3), np.float32)], [i, i], 1)
    with pytest.raises(
        ValueError,
        match=re.escape("indices_list[0] must have the shape of scores_list[0] (2, 3), got (2, 2)"),
    ):
        merge_topk([s], [np.zeros((2, 2), np.int64)], 1)
    with pytest.raises(
        ValueError, match=re.escape("indices_list[0] must have an integer dtype, got float32")
    ):
        merge_topk([s], [s], 1)
    with pytest.raises(ValueError, match=re.escape("k must be <= the total number of candidates 6, got k=7")):
        merge_topk([s, s], [i, i], 7)
    with pytest.raises(ValueError, match=re.escape("k must be a positive int, got 0")):
        merge_topk([s], [i], 0)


def test_merge_topk_refuses_nan_scores():
    """A NaN score must never win (np.lexsort on -score put NaN first): refused like NaN inputs of
    cosine_topk, naming the list entry, row and column; +-inf scores keep their order."""
    s = np.array([[0.9, 0.1], [0.8, 0.7]], np.float32)
    i = np.array([[0, 1], [0, 1]], np.int64)
    bad = np.array([[0.5, np.nan], [0.2, 0.1]], np.float32)
    for scores in ([s, bad], [torch.from_numpy(s), torch.from_numpy(bad)]):
        with pytest.raises(
            ValueError,
            match=re.escape(
                "scores_list[1] must hold no NaN (scores are compared), got NaN at row 0, column 1"
            ),
        ):
            merge_topk(scores, [i, i + 2], 2)
    inf = np.array([[-np.inf, np.inf], [-np.inf, -np.inf]], np.float32)
    ms, mi = merge_topk([s, inf], [i, i + 2], 3)
    np.testing.assert_array_equal(ms, np.array([[np.inf, 0.9, 0.1], [0.8, 0.7, -np.inf]], np.float32))
    np.testing.assert_array_equal(mi, [[3, 0, 1], [0, 1, 2]])


@needs_cpu
@pytest.mark.parametrize(
    "args,match",
    [
        ((Q.astype(np.float64), X, 1), "cosine_topk: queries must be float32, got float64"),
        ((Q, X.astype(np.float16), 1), "cosine_topk: keys must be float32, got float16"),
        ((np.ones(4, np.float32), X, 1), "cosine_topk: queries must be 2-D (N, D), got ndim 1"),
        ((Q, np.ones(4, np.float32), 1), "cosine_topk: keys must be 2-D (M, D), got ndim 1"),
        ((np.asfortranarray(np.ones((3, 4), np.float32)), X, 1), "cosine_topk: queries must be C-contiguous"),
        ((Q, X[:, ::2], 1), "cosine_topk: keys must be C-contiguous"),
        ((Q, X[:, :3].copy(), 1), "cosine_topk: keys must have the same dimension D as queries (4), got 3"),
        ((Q, X, 0), "cosine_topk: k must be > 0, got 0"),
        ((Q, X, 6), "cosine_topk: k must be <= the number of keys M=5, got k=6"),
        ((Q, X[:0], 1), "cosine_topk: keys must be non-empty (M >= 1), got M=0"),
        ((Q, X, 1, False, -1), "cosine_topk: num_threads must be >= 0 (0 = all), got -1"),
        (
            (Q, X, 1, False, 0, 0, 0, 0, False, "rows"),
            "cosine_topk: split must be 'auto', 'queries' or 'keys', got 'rows'",
        ),
    ],
)
def test_cpp_checks(args, match):
    ext = _backend.load_extension()
    with pytest.raises(ValueError, match=re.escape(match)):
        ext.cosine_topk(*args)


@needs_cpu
@pytest.mark.parametrize("n,m,d", [(60, 3000, 32), (5, 100000, 16)])
@pytest.mark.parametrize("as_memmap", [False, True])
@pytest.mark.parametrize("split", ["queries", "keys"])
def test_nonfinite_key_all_cpu_modes(n, m, d, as_memmap, split, tmp_path):
    """The first bad key row is reported whatever the thread split (NaN found during the norm pass)."""
    x = np.ones((m, d), np.float32)
    x[[m - 1, m * 7 // 10, m * 9 // 10], 1] = np.nan
    if as_memmap:
        np.save(tmp_path / "k.npy", x)
        x = np.load(tmp_path / "k.npy", mmap_mode="r")
    q = np.ones((n, d), np.float32)
    for num_threads in (1, 2):
        with pytest.raises(
            ValueError, match=re.escape(f"keys contains NaN or inf (first at row {m * 7 // 10})")
        ):
            _backend.load_extension().cosine_topk(
                q, x, 3, False, num_threads, stream_keys=as_memmap, split=split
            )
    with pytest.raises(ValueError, match=re.escape(f"keys contains NaN or inf (first at row {m * 7 // 10})")):
        cosine_topk(q, x, 3, backend="cpu")


@needs_cpu
@pytest.mark.parametrize("sign", [1.0, -1.0])  # +inf / -inf raw inner products
@pytest.mark.parametrize("n", [3, 60])  # key-split / query-split modes
def test_float32_overflow_is_an_error_not_garbage(sign, n):
    q = np.full((n, 8), 1e20, np.float32)
    x = np.full((300, 8), sign * 1e20, np.float32)
    match = "cosine_topk: scores overflowed float32 (inf/NaN) although the inputs are finite"
    for t, split in [(1, "auto"), (2, "queries"), (2, "keys")]:
        with pytest.raises(ValueError, match=re.escape(match)):
            _backend.load_extension().cosine_topk(q, x, 3, True, t, split=split)
    with pytest.raises(ValueError, match=re.escape(match)):
        cosine_topk(q, x, 3, backend="cpu", assume_normalized=True)
    # normalising makes the same data well defined
    s, _ = cosine_topk(q, x, 3, backend="cpu")
    np.testing.assert_allclose(s, np.full((n, 3), sign, np.float32), atol=1e-6)


@needs_cpu
@pytest.mark.parametrize(
    "args,match",
    [
        (
            ("sse", 0, 1000),
            "cosine_topk_fma_peak: isa must be 'avx2', 'avx512', 'avx512_bf16' or 'avx512_vnni', got 'sse'",
        ),
        (("avx2", 0, 0), "cosine_topk_fma_peak: iters must be > 0, got 0"),
    ],
)
def test_fma_peak_checks(args, match):
    """The FMA peak micro-benchmark behind the bench's "% of peak" validates its arguments."""
    ext = _backend.load_extension()
    with pytest.raises(ValueError, match=re.escape(match)):
        ext.cosine_topk_fma_peak(*args)
    if not ext.cpu_supports_avx512():
        with pytest.raises(ValueError, match=re.escape("isa='avx512' needs a CPU with AVX-512F")):
            ext.cosine_topk_fma_peak("avx512", 1, 1000)
    assert ext.cosine_topk_fma_peak("avx2", 1, 1000) > 0


KERNEL_CHOICES = "'auto', 'fp32', 'bf16', 'avx512', 'packed', 'dot'"


@pytest.mark.parametrize("kernel", ["gemm", "", "avx-512", None, 3])
def test_unknown_kernel(kernel):
    """Checked at the boundary, before the backend is resolved: the message names the argument,
    the allowed values and what was given."""
    with pytest.raises(
        ValueError, match=re.escape(f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    ):
        cosine_topk(Q, X, 1, kernel=kernel)


@pytest.mark.parametrize("kernel", ["bf16", "avx512", "fp32", "dot"])
def test_kernel_needs_cpu_backend(kernel):
    with pytest.raises(
        ValueError,
        match=re.escape(f"kernel={kernel!r} selects a micro-kernel of the C++ backend, got backend 'torch'"),
    ):
        cosine_topk(Q, X, 1, backend="torch", kernel=kernel)
    cosine_topk(Q, X, 1, backend="torch", kernel="auto")  # auto is every backend's default


@needs_cpu
@pytest.mark.parametrize(
    "kernel,probe,isa",
    [("bf16", "cpu_supports_avx512_bf16", "AVX512_BF16"), ("avx512", "cpu_supports_avx512", "AVX-512F")],
)
def test_kernel_missing_isa(monkeypatch, kernel, probe, isa):
    """An explicit kernel the CPU cannot run names the missing instruction set; 'auto' and 'fp32'
    fall back to what the CPU runs (the CPU's features are faked here)."""
    ext = _backend.load_extension()
    monkeypatch.setattr(ext, probe, lambda: False)
    msg = f"kernel={kernel!r} needs a CPU with {isa}, which this CPU lacks; use kernel='auto' or 'fp32'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        cosine_topk(Q, X, 1, backend="cpu", kernel=kernel)
    monkeypatch.setenv("XITE_FAST_CPU_KERNEL", kernel)
    with pytest.raises(ValueError, match=re.escape(msg)):
        cosine_topk(Q, X, 1, backend="cpu")
    monkeypatch.delenv("XITE_FAST_CPU_KERNEL")
    assert ct_mod._resolve_kernel("fp32") == ("avx512" if ext.cpu_supports_avx512() else "packed")
    cosine_topk(Q, X, 1, backend="cpu", kernel="fp32")
