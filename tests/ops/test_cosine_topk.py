"""cosine_topk: C++ kernel and torch backend vs the float64 reference, faiss, ties, memmaps, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import xite_fast
from tests.utils import assert_topk_equal, backend_params, cosine_scores64, cpu_ext, exact_topk, needs_cpu_ext
from tests.utils import random_data as _data
from tests.utils import ref_topk64 as _ref64
from xite_fast import _backend
from xite_fast.ops import cosine_topk as ct_mod
from xite_fast.ops.cosine_topk import cosine_topk, merge_topk

HAS_CPU = cpu_ext("cosine_topk")
BACKENDS = backend_params("cosine_topk")
needs_cpu = needs_cpu_ext("cosine_topk")
HAS_AVX512 = HAS_CPU and bool(_backend.load_extension().cpu_supports_avx512())
HAS_BF16 = HAS_CPU and bool(_backend.load_extension().cpu_supports_avx512_bf16())
# packed micro-kernels this CPU runs: AVX2 6x16 always, AVX-512 12x32 and the certified bf16 kernel
# (tests/ops/test_cosine_topk_bf16.py) when present
PACKED = ["packed"] + (["avx512"] if HAS_AVX512 else []) + (["bf16"] if HAS_BF16 else [])
ATOL = 2e-6


def _assert_scores_equal(s, expect, backend):
    # the C++ kernel computes every score with one instruction sequence (bit-identical whatever the
    # chunking); torch's BLAS may round a score differently in a differently shaped matmul
    if backend == "cpu":
        np.testing.assert_array_equal(s, expect)
    else:
        np.testing.assert_allclose(s, expect, rtol=0, atol=1e-6)


def _check(q, x, k, backend, atol=ATOL, assume_normalized=False):
    s, i = cosine_topk(q, x, k, backend=backend, assume_normalized=assume_normalized)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (q.shape[0], k) == i.shape
    rs, ri = _ref64(q, x, k, assume_normalized)
    assert_topk_equal(s, i, rs, ri, atol=atol, queries=q, keys=x, assume_normalized=assume_normalized)
    return s, i


SHAPES = [
    (5, 123, 77, 3),
    (1, 1, 1, 1),
    (33, 1000, 384, 10),
    (7, 50, 1, 5),  # d=1: scores are exactly +-1, all ties
    (3, 10, 16, 10),  # N < k, k == M
    (2, 9, 9, 9),
    (100, 999, 33, 64),
    (50, 257, 8, 1),
    (40, 301, 15, 17),
    (130, 2003, 768, 8),  # query-split mode on 2 threads
    (10, 20011, 64, 8),  # key-split mode (few queries, many keys)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m,d,k", SHAPES)
def test_vs_reference_grid(backend, n, m, d, k):
    q, x = _data(n, m, d, seed=n + m + d)
    _check(q, x, k, backend)


@needs_cpu
def test_all_k_1_to_64():
    q, x = _data(20, 300, 37, seed=1)
    rs, ri = _ref64(q, x, 64)
    for k in range(1, 65):
        s, i = cosine_topk(q, x, k, backend="cpu")
        # the top-k is a prefix of the top-64 (same total order)
        assert_topk_equal(s, i, rs[:, :k], ri[:, :k], atol=ATOL, queries=q, keys=x)


@needs_cpu
@pytest.mark.parametrize("kernel", [*PACKED, "dot"])
@pytest.mark.parametrize("n,m,d", [(7, 50, 1), (31, 517, 13), (64, 3001, 96)])
def test_blocking_and_threads_bitwise_identical(n, m, d, kernel):
    """Every tiling/thread count yields bit-identical output (same instruction sequence per score)."""
    ext = _backend.load_extension()
    q, x = _data(n, m, d, seed=3)
    x[::7] = x[3]  # exact duplicate keys: tie order must not depend on the split
    k = min(16, m)
    base_s, base_i = ext.cosine_topk(q, x, k, False, 1, kernel=kernel)
    for kw in [
        # packed kernel: key blocks that are not multiples of its 16-key panels, 6-row query panels
        dict(num_threads=1, key_block=20, query_block=6),
        dict(num_threads=2, key_block=36, query_block=12, split="queries"),
        dict(num_threads=2, stream_keys=True, key_block=20, query_block=6, split="queries"),
        dict(num_threads=2, split="keys", key_block=44, query_block=18),
        dict(num_threads=2),
        dict(num_threads=3),
        dict(num_threads=2, key_block=8, query_block=3),
        dict(num_threads=1, key_block=4, query_block=6),
        dict(num_threads=4, key_block=12),
        dict(num_threads=2, stream_keys=True, split="queries"),
        dict(num_threads=3, stream_keys=True, key_block=8, query_block=3, split="queries"),
        dict(num_threads=2, split="queries"),
        dict(num_threads=3, split="queries", key_block=8),
        dict(num_threads=2, split="keys"),
        dict(num_threads=3, split="keys", key_block=4, query_block=3),
        # AVX-512 kernel: reduction chunks (partial sums through memory), incl. ragged last chunk
        dict(num_threads=1, d_block=7),
        dict(num_threads=2, d_block=32, key_block=40, query_block=24, split="keys"),
    ]:
        s, i = ext.cosine_topk(q, x, k, False, kernel=kernel, **kw)
        np.testing.assert_array_equal(i, base_i, err_msg=str(kw))
        np.testing.assert_array_equal(s, base_s, err_msg=str(kw))
    assert_topk_equal(base_s, base_i, *_ref64(q, x, k), atol=ATOL, queries=q, keys=x)


@needs_cpu
def test_omp_num_threads_subprocess(tmp_path):
    """OMP_NUM_THREADS=1 vs 2 in fresh processes give identical results (both split modes)."""
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from xite_fast.ops.cosine_topk import cosine_topk
        rng = np.random.default_rng(0)
        x = rng.standard_normal((6000, 48)).astype(np.float32)
        x[1::5] = x[0]
        out = {}
        for n in (5, 200):
            q = rng.standard_normal((n, 48)).astype(np.float32)
            out[f"s{n}"], out[f"i{n}"] = cosine_topk(q, x, 12, backend="cpu")
        np.savez(sys.argv[1], **out)
        """
    )
    res = {}
    for t in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=t)
        path = tmp_path / f"out{t}.npz"
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=120)
        res[t] = np.load(path)
    for key in res["1"].files:
        np.testing.assert_array_equal(res["1"][key], res["2"][key], err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_keys_lower_index_wins(backend):
    """Exact ties (duplicate keys): the lower index comes first and beats higher ones for the last slots."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 24)).astype(np.float32)
    owner = rng.integers(0, 40, size=400)
    x = base[owner]  # each base row appears ~10 times at scattered indices
    q = rng.standard_normal((25, 24)).astype(np.float32)
    k = 23
    s, i = cosine_topk(q, x, k, backend=backend)
    scores = cosine_scores64(q, x)
    for r in range(q.shape[0]):
        # duplicates score bit-identically in our kernel, so their order must be by index
        for a in range(k - 1):
            if owner[i[r, a]] == owner[i[r, a + 1]]:
                assert s[r, a] == s[r, a + 1] and i[r, a] < i[r, a + 1], (r, a, i[r].tolist())
        # a duplicate group cut by k keeps its lowest indices
        last = owner[i[r, -1]]
        members = np.flatnonzero(owner == last)
        chosen = sorted(int(j) for j in i[r] if owner[j] == last)
        assert chosen == members[: len(chosen)].tolist(), (r, chosen, members.tolist())
    rs, ri = exact_topk(scores, k)
    assert_topk_equal(s, i, rs, ri, atol=ATOL, queries=q, keys=x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_dyadic_ties_match_reference_exactly(backend):
    """Small dyadic values make every dot product exact: indices must equal the oracle's bit for bit."""
    rng = np.random.default_rng(9)
    x = (rng.integers(-2, 3, size=(500, 20)) / 4).astype(np.float32)  # many exactly equal scores
    q = (rng.integers(-2, 3, size=(31, 20)) / 4).astype(np.float32)
    s, i = cosine_topk(q, x, 40, backend=backend, assume_normalized=True)
    rs, ri = exact_topk(q.astype(np.float64) @ x.astype(np.float64).T, 40)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_vectors(backend):
    q, x = _data(9, 200, 21, seed=2)
    q[3] = 0
    x[[0, 17, 150]] = 0
    s, i = _check(q, x, 12, backend)
    np.testing.assert_array_equal(s[3], np.zeros(12, np.float32))
    np.testing.assert_array_equal(i[3], np.arange(12))  # all tied at 0 -> lowest indices
    # zero keys score exactly 0 wherever they appear
    for r in range(9):
        for a in range(12):
            if i[r, a] in (0, 17, 150):
                assert s[r, a] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_keys(backend):
    q, _ = _data(4, 1, 10)
    s, i = cosine_topk(q, np.zeros((6, 10), np.float32), 6, backend=backend)
    np.testing.assert_array_equal(s, np.zeros((4, 6), np.float32))
    np.testing.assert_array_equal(i, np.tile(np.arange(6), (4, 1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_assume_normalized(backend):
    q, x = _data(17, 700, 50, seed=4)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s1, i1 = cosine_topk(qn, xn, 9, backend=backend, assume_normalized=True)
    rs, ri = _ref64(q, x, 9)
    assert_topk_equal(s1, i1, rs, ri, atol=ATOL, queries=q, keys=x)
    # unnormalised inputs with assume_normalized=True: raw inner products
    s2, i2 = cosine_topk(q, x, 9, backend=backend, assume_normalized=True)
    rs2, ri2 = exact_topk(q.astype(np.float64) @ x.astype(np.float64).T, 9)
    assert_topk_equal(s2, i2, rs2, ri2, atol=2e-4, queries=q, keys=x, assume_normalized=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_and_numpy_io(backend):
    q, x = _data(11, 300, 40, seed=6)
    sn, in_ = cosine_topk(q, x, 5, backend=backend)
    assert isinstance(sn, np.ndarray) and isinstance(in_, np.ndarray)
    st, it = cosine_topk(torch.from_numpy(q), torch.from_numpy(x), 5, backend=backend)
    assert isinstance(st, torch.Tensor) and isinstance(it, torch.Tensor)
    assert st.dtype == torch.float32 and it.dtype == torch.int64
    np.testing.assert_array_equal(it.numpy(), in_)
    np.testing.assert_allclose(st.numpy(), sn, rtol=0, atol=1e-6)
    # mixed: the output type follows the queries; requires_grad inputs are fine (no gradient)
    sm, im = cosine_topk(torch.from_numpy(q).requires_grad_(), x, 5, backend=backend)
    assert isinstance(sm, torch.Tensor) and not sm.requires_grad
    np.testing.assert_array_equal(im.numpy(), in_)
    # non-contiguous views are accepted
    sv, iv = cosine_topk(np.asfortranarray(q), x[:, :], 5, backend=backend)
    np.testing.assert_array_equal(iv, in_)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_are_converted(backend, dtype):
    q, x = _data(8, 150, 24, seed=7, dtype=dtype)
    s, i = cosine_topk(q, x, 6, backend=backend)
    assert s.dtype == np.float32 and i.dtype == np.int64
    s32, i32 = cosine_topk(q.astype(np.float32), x.astype(np.float32), 6, backend=backend)
    np.testing.assert_array_equal(i, i32)
    np.testing.assert_array_equal(s, s32)
    st, _ = cosine_topk(torch.from_numpy(q.astype(np.float32)).to(torch.bfloat16), x, 6, backend=backend)
    assert st.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_queries(backend):
    _, x = _data(1, 30, 8)
    s, i = cosine_topk(np.zeros((0, 8), np.float32), x, 4, backend=backend)
    assert s.shape == (0, 4) and i.shape == (0, 4) and s.dtype == np.float32 and i.dtype == np.int64
    st, it = cosine_topk(torch.zeros(0, 8), x, 4, backend=backend)
    assert isinstance(st, torch.Tensor) and tuple(st.shape) == (0, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key_dtype", [np.float32, np.float64])
def test_memmap_and_npy_path(backend, key_dtype, tmp_path, monkeypatch):
    q, x = _data(23, 3001, 40, seed=8)
    x[2000:2100] = x[5]  # ties that straddle chunk boundaries
    xk = x.astype(key_dtype)
    path = tmp_path / "keys.npy"
    np.save(path, xk)
    # force several chunks on the converting paths
    monkeypatch.setattr(ct_mod, "_CHUNK_BYTES", 40 * 4 * 700)
    expect = cosine_topk(q, x, 15, backend=backend)
    for keys in (str(path), path, np.load(path, mmap_mode="r")):
        s, i = cosine_topk(q, keys, 15, backend=backend)
        np.testing.assert_array_equal(i, expect[1])
        _assert_scores_equal(s, expect[0], backend)
    assert_topk_equal(*expect, *_ref64(q, x, 15), atol=ATOL, queries=q, keys=x)


@needs_cpu
def test_memmap_float32_is_zero_copy(tmp_path, monkeypatch):
    """A float32 C-contiguous memmap goes to C++ as is (no chunking, no conversion)."""
    q, x = _data(5, 500, 16, seed=10)
    path = tmp_path / "k.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    calls = []
    real = ct_mod.load_extension()

    class Spy:
        def cosine_topk(self, qq, kk, *a, **kw):
            calls.append(kk)
            return real.cosine_topk(qq, kk, *a, **kw)

    monkeypatch.setattr(ct_mod, "load_extension", lambda: Spy())
    s, i = cosine_topk(q, mm, 3, backend="cpu")
    assert len(calls) == 1 and np.shares_memory(calls[0], mm)
    assert_topk_equal(s, i, *_ref64(q, x, 3), atol=ATOL, queries=q, keys=x)


def test_vs_faiss_normalized():
    faiss = pytest.importorskip("faiss")
    q, x = _data(64, 5000, 96, seed=11)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(96)
    index.add(x)
    fs, fi = index.search(q, 10)
    for backend in ["torch"] + (["cpu"] if HAS_CPU else []):
        s, i = cosine_topk(q, x, 10, backend=backend, assume_normalized=True)
        assert_topk_equal(s, i, fs, fi, atol=1e-5, queries=q, keys=x, assume_normalized=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_topk_equals_single_search(backend):
    q, x = _data(13, 900, 20, seed=12)
    x[400:700:3] = x[10]
    k = 14
    full = cosine_topk(q, x, k, backend=backend)
    bounds = [0, 5, 300, 301, 650, 900]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        s, i = cosine_topk(q, x[a:b], min(k, b - a), backend=backend)
        parts.append((s, i + a))
    # chunk order must not matter
    for order in (parts, parts[::-1]):
        ms, mi = merge_topk([p[0] for p in order], [p[1] for p in order], k)
        np.testing.assert_array_equal(mi, full[1])
        _assert_scores_equal(ms, full[0], backend)
    ts, ti = merge_topk([torch.from_numpy(p[0]) for p in parts], [torch.from_numpy(p[1]) for p in parts], k)
    assert isinstance(ts, torch.Tensor) and ti.dtype == torch.int64
    np.testing.assert_array_equal(ti.numpy(), full[1])


def test_public_api_and_auto_backend():
    assert xite_fast.cosine_topk is cosine_topk
    q, x = _data(6, 90, 12, seed=13)
    s, i = xite_fast.cosine_topk(q, x, 4)
    assert_topk_equal(s, i, *_ref64(q, x, 4), atol=ATOL, queries=q, keys=x)
    expected = "cpu" if HAS_CPU else "torch"
    assert _backend.resolve_backend("cosine_topk", "auto").value == expected


@pytest.mark.triton
def test_triton_backend_dispatch():
    """backend="triton" reaches the Triton kernel (runs under TRITON_INTERPRET=1 on CPU)."""
    q, x = _data(4, 64, 32, seed=14)
    s, i = cosine_topk(torch.from_numpy(q), torch.from_numpy(x), 5, backend="triton")
    assert isinstance(s, torch.Tensor)
    assert_topk_equal(s, i, *_ref64(q, x, 5), atol=1e-4, queries=q, keys=x)


@needs_cpu
@pytest.mark.parametrize("kernel", [*PACKED, "dot", "auto"])
@pytest.mark.parametrize("assume_normalized", [False, True])
@pytest.mark.parametrize("n,m,d,k", SHAPES + [(13, 4099, 768, 8), (6, 33, 17, 33), (97, 1601, 384, 5)])
def test_cpp_kernels_vs_reference(kernel, assume_normalized, n, m, d, k):
    """Both micro-kernels (packed 6x16 default, unpacked 3x4 'dot') against the float64 reference."""
    ext = _backend.load_extension()
    q, x = _data(n, m, d, seed=n * m + d)
    if assume_normalized:
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    for threads, split in [(1, "auto"), (2, "queries"), (2, "keys")]:
        s, i = ext.cosine_topk(q, x, k, assume_normalized, threads, split=split, kernel=kernel)
        rs, ri = _ref64(q, x, k, assume_normalized)
        assert_topk_equal(s, i, rs, ri, atol=ATOL, queries=q, keys=x, assume_normalized=assume_normalized)


@needs_cpu
@pytest.mark.parametrize("kernel", [*PACKED, "dot"])
def test_cpp_kernels_zero_vectors_and_errors(kernel):
    ext = _backend.load_extension()
    q, x = _data(8, 40, 24, seed=5)
    q[2] = 0
    x[[0, 17, 39]] = 0  # zero keys score exactly 0
    s, i = ext.cosine_topk(q, x, 40, False, 1, kernel=kernel)
    rs, ri = _ref64(q, x, 40)
    assert_topk_equal(s, i, rs, ri, atol=ATOL, queries=q, keys=x)
    np.testing.assert_array_equal(s[2], np.zeros(40, np.float32))
    np.testing.assert_array_equal(i[2], np.arange(40))
    x[23, 5] = np.inf
    with pytest.raises(ValueError, match=r"keys contains NaN or inf \(first at row 23\)"):
        ext.cosine_topk(q, x, 3, False, 2, kernel=kernel)
    big_q, big_x = np.full((7, 8), 1e20, np.float32), np.full((50, 8), 1e20, np.float32)
    with pytest.raises(ValueError, match="scores overflowed float32"):
        ext.cosine_topk(big_q, big_x, 3, True, 1, kernel=kernel)
    with pytest.raises(
        ValueError, match="kernel must be 'auto', 'fp32', 'bf16', 'avx512', 'packed' or 'dot', got 'gemm'"
    ):
        ext.cosine_topk(q, x, 3, kernel="gemm")
    with pytest.raises(ValueError, match="d_block must be >= 0"):
        ext.cosine_topk(q, x, 3, kernel=kernel, d_block=-1)


@needs_cpu
@pytest.mark.skipif(not HAS_AVX512, reason="CPU without AVX-512F")
@pytest.mark.parametrize("n,m,d", [(5, 40, 1), (37, 1000, 768), (100, 3001, 97), (251, 2049, 384)])
def test_avx512_bitwise_equals_avx2_packed(n, m, d):
    """Both packed kernels accumulate each score sequentially over d in one fp32 lane with FMAs, so
    the AVX-512 12x32 tile (with or without reduction chunks) reproduces the AVX2 6x16 tile bit for bit."""
    ext = _backend.load_extension()
    q, x = _data(n, m, d, seed=d)
    x[::5] = x[2]  # ties
    k = min(8, m)
    ref_s, ref_i = ext.cosine_topk(q, x, k, kernel="packed")
    for kw in [dict(), dict(d_block=64), dict(d_block=5, num_threads=1), dict(split="keys")]:
        s, i = ext.cosine_topk(q, x, k, kernel="avx512", **kw)
        np.testing.assert_array_equal(s, ref_s, err_msg=str(kw))
        np.testing.assert_array_equal(i, ref_i, err_msg=str(kw))
    assert ext.cosine_topk(q, x, k)[0].tobytes() == ref_s.tobytes()  # "auto" picks AVX-512 here


def _runnable_kernels() -> list[str]:
    return [k for k in ct_mod.CPU_KERNELS if k not in ("avx512", "bf16") or k in PACKED]


@needs_cpu
@pytest.mark.parametrize("assume_normalized", [False, True])
@pytest.mark.parametrize(
    "n,m,d,k", [(37, 3001, 96, 10), (5, 400, 17, 33), (64, 2000, 768, 5), (9, 120, 8, 3)]
)
def test_kernel_argument_every_value(n, m, d, k, assume_normalized):
    """cosine_topk(kernel=...): every kernel this CPU runs is exact vs the float64 reference, and
    fp32 / avx512 / packed / bf16 / auto agree bit for bit (dot sums in another order)."""
    q, x = _data(n, m, d, seed=n + m + d)
    x[::9] = x[4]  # duplicate keys: the tie rule must hold for every kernel
    if assume_normalized:
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    rs, ri = _ref64(q, x, k, assume_normalized)
    got = {}
    for kernel in _runnable_kernels():
        s, i = cosine_topk(q, x, k, backend="cpu", kernel=kernel, assume_normalized=assume_normalized)
        assert_topk_equal(s, i, rs, ri, atol=ATOL, queries=q, keys=x, assume_normalized=assume_normalized)
        got[kernel] = (s, i)
    for kernel in ("auto", "avx512", "packed", "bf16"):
        if kernel in got:
            np.testing.assert_array_equal(got[kernel][1], got["fp32"][1], err_msg=kernel)
            assert got[kernel][0].tobytes() == got["fp32"][0].tobytes(), kernel
    # torch queries, memmapped keys and the kernel names in any case take the same path
    s, i = cosine_topk(
        torch.from_numpy(q), x, k, backend="cpu", kernel="FP32", assume_normalized=assume_normalized
    )
    assert s.numpy().tobytes() == got["fp32"][0].tobytes()


@needs_cpu
def test_kernel_argument_memmap_and_chunks(tmp_path, monkeypatch):
    """kernel= reaches the C++ call for float32 memmaps (in place) and converted chunks (float64)."""
    q, x = _data(11, 900, 40, seed=21)
    exp = cosine_topk(q, x, 6, backend="cpu", kernel="fp32")
    np.save(tmp_path / "k32.npy", x)
    np.save(tmp_path / "k64.npy", x.astype(np.float64))
    monkeypatch.setattr(ct_mod, "_CHUNK_BYTES", 40 * 8 * 128)  # several chunks
    for kernel in _runnable_kernels():
        for path in ("k32.npy", "k64.npy"):
            s, i = cosine_topk(q, str(tmp_path / path), 6, backend="cpu", kernel=kernel)
            if kernel == "dot":
                assert_topk_equal(s, i, *_ref64(q, x, 6), atol=ATOL, queries=q, keys=x)
            else:
                np.testing.assert_array_equal(i, exp[1], err_msg=f"{kernel} {path}")
                np.testing.assert_array_equal(s, exp[0], err_msg=f"{kernel} {path}")


@needs_cpu
def test_cpu_kernel_env_override(monkeypatch):
    """XITE_FAST_CPU_KERNEL overrides kernel='auto' only (an explicit kernel wins); unknown names
    are a clear error naming the variable."""
    q, x = _data(20, 300, 33, seed=9)
    base = cosine_topk(q, x, 4, backend="cpu")
    seen = []
    real = _backend.load_extension().cosine_topk

    def spy(*a, **kw):
        seen.append(kw.get("kernel"))
        return real(*a, **kw)

    monkeypatch.setattr(_backend.load_extension(), "cosine_topk", spy)
    for name in [*PACKED, "dot", "fp32"]:
        monkeypatch.setenv("XITE_FAST_CPU_KERNEL", name)
        s, i = cosine_topk(q, x, 4, backend="cpu")
        assert_topk_equal(s, i, *base, atol=ATOL, queries=q, keys=x)
        expected = ("avx512" if HAS_AVX512 else "packed") if name == "fp32" else name
        assert seen[-1] == expected
        cosine_topk(q, x, 4, backend="cpu", kernel="packed")
        assert seen[-1] == "packed"  # explicit beats the environment
    monkeypatch.setenv("XITE_FAST_CPU_KERNEL", "sse9")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "XITE_FAST_CPU_KERNEL must be one of 'auto', 'fp32', 'bf16', 'avx512', 'packed', 'dot', got "
            "'sse9'"
        ),
    ):
        cosine_topk(q, x, 4, backend="cpu")
    cosine_topk(q, x, 4, backend="cpu", kernel="dot")  # an explicit kernel never reads the variable
    assert seen[-1] == "dot"


# ------------------------------------------------------------------------- magnitudes: 1e-45 .. 3.4e38
def _extreme_rows(n, d, seed):
    """(n, d) float32 rows of random directions at norms from 1e-30 to 3e38, rows whose entries are
    near the float32 maximum (norm > 3.4e38: the norm itself is not a float32), subnormal rows and
    zero rows; and the unscaled directions (for the ordinary-row check)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    norms = np.geomspace(1e-30, 3e38, n)
    x = (u * norms[:, None]).astype(np.float32)
    x[1::7] = (np.sign(u[1::7]) * 3e38 * rng.uniform(0.5, 1.0, u[1::7].shape)).astype(np.float32)
    x[2::7] = (u[2::7] * 1e-41).astype(np.float32)  # subnormal entries (a few bits of precision)
    x[3::11] = 0.0
    assert np.isfinite(x).all() and (np.abs(x[2::7]) < np.finfo(np.float32).tiny).all()
    return x


def _check_extreme(s, i, q, x, k):
    rs, ri = exact_topk(cosine_scores64(q, x), k)
    assert_topk_equal(s, i, rs, ri, atol=ATOL, queries=q, keys=x)
    assert (np.abs(s) <= 1.0 + 4e-7).all()  # float32 rounding only, never the > 1 of an underflowed norm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [1, 7, 64])
def test_extreme_magnitudes_vs_float64(backend, d):
    """Every finite nonzero vector gets its cosine, at any magnitude: before, the torch reference returned
    0 from norm 1e20 up (its float32 norm overflowed) and > 1 for tiny ones, and the C++ kernel returned
    0 for norms >= 3.4e38 and for every vector below 1e-30."""
    q = _extreme_rows(40, d, seed=d)
    x = np.concatenate([_extreme_rows(300, d, seed=d + 1), _data(1, 200, d, seed=d)[1]])
    for k in (1, 10):
        s, i = cosine_topk(q, x, k, backend=backend)
        _check_extreme(s, i, q, x, k)
    zero = ~q.any(axis=1)
    s, i = cosine_topk(q, x, 10, backend=backend)
    np.testing.assert_array_equal(s[zero], 0.0)  # zero queries: all keys tie at 0, lowest indices
    np.testing.assert_array_equal(i[zero], np.broadcast_to(np.arange(10), i[zero].shape))


@needs_cpu
@pytest.mark.parametrize("kernel", [*PACKED, "dot"])
def test_cpp_kernels_extreme_magnitudes(kernel):
    q = _extreme_rows(30, 40, seed=3)
    x = np.concatenate([_extreme_rows(500, 40, seed=4), _data(1, 300, 40, seed=9)[1]])
    s, i = cosine_topk(q, x, 8, kernel=kernel)
    _check_extreme(s, i, q, x, 8)
    # one scale per row: a query and a key of the same direction score exactly 1 at any magnitude
    u = _data(1, 1, 40, seed=5)[1][0]
    for c in (1e-40, 1e-35, 1e-30, 1e-3, 1e30, 1e37):
        s, _ = cosine_topk(
            (u * np.float32(c))[None], (u * np.float32(1 / c if c > 1e-38 else 1))[None], 1, kernel=kernel
        )
        assert abs(float(s[0, 0]) - 1.0) < 1e-6, c


@needs_cpu
def test_cpp_out_of_range_rows_are_flagged_then_rescaled(tmp_path, monkeypatch):
    """The kernel flags a row it cannot score in float32 (norm outside [1e-30, 2^126]) instead of
    scoring it 0; cosine_topk reruns with such rows scaled by a power of two, also for streamed
    memmaps (key chunk by key chunk) and converted (float64) memmaps."""
    ext = _backend.load_extension()
    q, x = _data(6, 700, 24, seed=11)
    s0, i0 = ext.cosine_topk(q, x, 5)
    s1, i1, flagged = ext.cosine_topk(q, x, 5, out_of_range="flag")
    assert flagged is False and s0.tobytes() == s1.tobytes() and i0.tobytes() == i1.tobytes()
    for rows, scale in (("keys", 1e38), ("keys", 1e-32), ("queries", 3e37), ("queries", 1e-40)):
        qq, xx = q.copy(), x.copy()
        tgt = xx if rows == "keys" else qq
        tgt[3] = np.clip(tgt[3] * np.float32(scale), -3e38, 3e38)
        assert ext.cosine_topk(qq, xx, 5, out_of_range="flag")[2] is True
        with pytest.raises(
            ValueError, match=re.escape("has a norm outside the kernel's float32 range [1e-30, 2^126]")
        ):
            ext.cosine_topk(qq, xx, 5)
        if scale < 1:  # assume_normalized: raw inner products, never rescaled nor flagged
            assert ext.cosine_topk(qq, xx, 5, True, out_of_range="flag")[2] is False
        s, i = cosine_topk(qq, xx, 5)
        _check_extreme(s, i, qq, xx, 5)
        monkeypatch.setattr(ct_mod, "_CHUNK_BYTES", 24 * 4 * 128)
        for dt in (np.float32, np.float64):
            path = tmp_path / f"k_{dt.__name__}.npy"
            np.save(path, xx.astype(dt))
            ms, mi = cosine_topk(qq, np.load(path, mmap_mode="r"), 5)
            np.testing.assert_array_equal(mi, i)
            np.testing.assert_array_equal(ms, s)
        monkeypatch.undo()
    with pytest.raises(ValueError, match="out_of_range must be 'raise' or 'flag', got 'clip'"):
        ext.cosine_topk(q, x, 5, out_of_range="clip")


def test_rescale_rows_twins_agree():
    """The numpy (C++ rerun) and torch (reference, GPU) rescaling are one rule: same range, same bits;
    rows inside the range are returned untouched (the same object when none needs scaling)."""
    from xite_fast import reference

    assert ct_mod._NORM_SQ_RANGE == reference.NORM_SQ_RANGE
    x = np.concatenate([_extreme_rows(60, 9, seed=1), _data(1, 20, 9, seed=2)[1]])
    a = ct_mod._rescale_rows(x)
    b = reference.rescale_rows(torch.from_numpy(x)).numpy()
    assert a.tobytes() == b.tobytes()
    ss = np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64))
    inside = (ss >= 2.0**-120) & (ss <= 2.0**120)
    np.testing.assert_array_equal(a[inside], x[inside])
    scaled = np.linalg.norm(a[~inside & (ss > 0)].astype(np.float64), axis=1)
    assert ((scaled > 0.49) & (scaled < 1.0)).all()
    ordinary = _data(1, 50, 9, seed=3)[1]
    assert ct_mod._rescale_rows(ordinary) is ordinary
