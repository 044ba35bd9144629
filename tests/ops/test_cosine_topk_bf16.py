"""cosine_topk kernel='bf16' (certified bf16 screening + exact fp32 rescoring): bit-identical to the
fp32 kernels (indices and scores) and tie-aware equal to the float64 torch reference, on random,
near-tie, duplicated, zero and streamed data; the fp32 fallback; dispatch on CPUs without AVX512_BF16."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.utils import assert_topk_equal, cpu_ext, needs_cpu_ext
from tests.utils import random_data as _data
from tests.utils import ref_topk64 as _ref64
from xite_fast import _backend
from xite_fast.ops import cosine_topk as ct_mod
from xite_fast.ops.cosine_topk import cosine_topk

EXT = _backend.load_extension()
HAS_CPU = cpu_ext("cosine_topk")
HAS_BF16 = HAS_CPU and hasattr(EXT, "cpu_supports_avx512_bf16") and bool(EXT.cpu_supports_avx512_bf16())
needs_cpu = needs_cpu_ext("cosine_topk")
needs_bf16 = pytest.mark.skipif(
    not HAS_BF16, reason="this CPU lacks AVX512_BF16 (vdpbf16ps): the bf16 kernel cannot run here"
)
# the fp32 kernel bf16 must reproduce bit for bit (the AVX2 and AVX-512 packed kernels agree)
FP32 = "avx512" if HAS_CPU and EXT.cpu_supports_avx512() else "packed"
ATOL = 2e-6


def _same(a, b, msg=""):
    """Bit-identical (scores compared as their int32 bit patterns: -0.0 != 0.0)."""
    np.testing.assert_array_equal(a[1], b[1], err_msg=msg)
    np.testing.assert_array_equal(
        np.asarray(a[0]).view(np.int32), np.asarray(b[0]).view(np.int32), err_msg=msg
    )


def _bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 (round to nearest even) -> float32, numpy emulation."""
    b = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def _check(q, x, k, assume_normalized=False, atol=None, **kw):
    """bf16 == fp32 kernel bit for bit, and a correct top-k against the float64 reference."""
    exp = EXT.cosine_topk(q, x, k, assume_normalized, kernel=FP32, **kw)
    got = EXT.cosine_topk(q, x, k, assume_normalized, kernel="bf16", **kw)
    stats = EXT.cosine_topk_bf16_stats()
    _same(got, exp, str(kw))
    atol = atol or (ATOL if not assume_normalized else 2e-4)
    assert_topk_equal(
        *got,
        *_ref64(q, x, k, assume_normalized),
        atol=atol,
        queries=q,
        keys=x,
        assume_normalized=assume_normalized,
    )
    return got, stats


SHAPES = [
    (5, 123, 77, 3),
    (1, 1, 1, 1),
    (7, 50, 1, 5),  # d=1: scores are exactly +-1, all ties
    (3, 10, 16, 10),  # k == M: every key is a candidate
    (40, 301, 15, 17),  # odd d (a zero pads the last bf16 pair)
    (33, 1000, 384, 10),
    (130, 2003, 768, 8),
    (97, 1601, 383, 5),
    (10, 20011, 64, 8),  # key-split mode (few queries, many keys)
    (25, 700, 33, 64),
]


@needs_bf16
@pytest.mark.parametrize("assume_normalized", [False, True])
@pytest.mark.parametrize("n,m,d,k", SHAPES)
def test_bf16_bitwise_vs_fp32_and_reference(n, m, d, k, assume_normalized):
    q, x = _data(n, m, d, seed=n * m + d)
    if assume_normalized:
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    for threads, split in [(1, "auto"), (2, "queries"), (2, "keys"), (3, "auto")]:
        _, stats = _check(q, x, k, assume_normalized, num_threads=threads, split=split)
        assert stats["queries"] == n and stats["fallback"] == 0
        assert k * n <= stats["candidates"] <= m * n


@needs_bf16
def test_bf16_unnormalised_inner_products():
    """assume_normalized=True on raw vectors (norms 0.01 .. 100): the bound scales with |q| |x|."""
    q, x = _data(31, 900, 96, seed=4)
    rng = np.random.default_rng(4)
    q *= rng.uniform(0.01, 100, (31, 1)).astype(np.float32)
    x *= rng.uniform(0.01, 100, (900, 1)).astype(np.float32)
    for split in ("queries", "keys"):
        # raw inner products up to ~3e5: fp32 rounding vs the float64 reference is ~0.1 absolute
        _check(q, x, 9, True, atol=0.5, num_threads=2, split=split)


@needs_bf16
@pytest.mark.parametrize("d", [384, 768])
def test_bf16_near_ties_exact_where_plain_bf16_is_not(d):
    """Clustered keys (scores of a cluster within ~1e-3, below bf16's resolution): plain bf16 top-k gets
    rows wrong, the certified kernel returns the fp32 kernel's result bit for bit."""
    rng = np.random.default_rng(d)
    centers = rng.standard_normal((12, d)).astype(np.float32)
    owner = rng.integers(0, 12, size=2400)
    x = centers[owner] + 2e-3 * rng.standard_normal((2400, d)).astype(np.float32)
    q = centers[rng.integers(0, 12, size=60)] + 2e-3 * rng.standard_normal((60, d)).astype(np.float32)
    k = 10
    (s, i), stats = _check(q, x, k, num_threads=2)
    # many scores within 1e-3 of the k-th: the candidates are whole clusters
    assert (s[:, 0] - s[:, -1] < 1e-3).mean() > 0.9
    assert stats["candidates"] / 60 > 5 * k and stats["fallback"] == 0
    # not vacuous: top-k by bf16-rounded unit vectors differs from the exact top-k
    qn = _bf16(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float64)
    xn = _bf16(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float64)
    plain = np.argsort(-(qn @ xn.T), axis=1, kind="stable")[:, :k]
    assert (np.sort(plain, 1) != np.sort(i, 1)).any(axis=1).mean() > 0.5


def _anisotropic(n, m, d, seed, spread=0.35, clusters=20, jitter=2e-3):
    """Sentence-embedding-like data: a shared mean direction (|mean| ~ 0.9 after normalising), clusters
    around it, near-ties inside each cluster (scores within ~1e-3, below bf16's resolution)."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(d)
    mean /= np.linalg.norm(mean)
    centers = mean + spread * rng.standard_normal((clusters, d)) / np.sqrt(d)
    x = centers[rng.integers(0, clusters, m)] + jitter * rng.standard_normal((m, d)) / np.sqrt(d)
    q = centers[rng.integers(0, clusters, n)] + 0.2 * rng.standard_normal((n, d)) / np.sqrt(d)
    return q.astype(np.float32), x.astype(np.float32)


def _emulated_bound(q, x):
    """(shifted screened scores s~, exact shifted scores S', bound e without the safety factor), float64,
    emulating the kernel's centred per-vector bound (csrc/cpu/cosine_topk_bf16.cpp) in numpy."""
    d = q.shape[1]
    u = 2.0**-24
    gam = d * u / (1 - d * u)
    qh = (q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
    nx = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True).astype(np.float32)
    w = x * (np.float32(1) / nx)
    step = max(1, len(x) // 4096)
    mu = w[::step].astype(np.float64).mean(0).astype(np.float32)
    z = w - mu
    qt, zt = _bf16(qh).astype(np.float64), _bf16(z).astype(np.float64)
    dq = np.linalg.norm(qt - qh, axis=1)[:, None]
    y = x.astype(np.float64) / nx.astype(np.float64)
    zeta = np.linalg.norm(y - mu, axis=1)[None, :]
    rho = np.linalg.norm(zt - (y - mu), axis=1)[None, :]
    qn, r = 1.0, 1.0
    e = dq * zeta + qn * rho + dq * rho + gam * (qn + dq) * (zeta + rho) + (gam * (1 + u) + u) * qn * r
    exact = qh.astype(np.float64) @ y.T
    return qt @ zt.T, exact - (qh.astype(np.float64) @ mu.astype(np.float64))[:, None], e


@needs_bf16
@pytest.mark.parametrize("d", [64, 384])
def test_bf16_centred_per_vector_bound_holds_and_is_tight(d):
    """The centred per-vector bound holds for every pair without its safety factor (numpy emulation, float64
    sums), is several times tighter than the worst-case 2 * 2^-8 |q| |y| bound on anisotropic data,
    and the kernel rescores correspondingly few candidates while matching the fp32 kernel bit for bit."""
    q, x = _anisotropic(64, 3000, d, seed=d, jitter=0.2)  # clusters spread over ~1e-2 in score
    s_t, s_exact, e = _emulated_bound(q, x)
    assert (np.abs(s_t - s_exact) <= e).all()
    worst = 2 * 2.0**-8 + 2.03 * d * 2.0**-24
    assert e.mean() < worst / 3
    k = 8
    for split in ("queries", "keys"):
        (_, _), stats = _check(q, x, k, num_threads=2, split=split)
        assert stats["fallback"] == 0
        # keys the worst-case bound would have kept: within 2 * worst of the exact k-th score
        kth = -np.sort(-s_exact, axis=1)[:, k - 1 : k]
        kept_worst = (s_exact >= kth - 2 * worst).sum(1).mean()
        assert stats["candidates"] / len(q) < kept_worst / 2, (stats, kept_worst)


@needs_bf16
@pytest.mark.parametrize("seed", range(6))
def test_bf16_anisotropic_near_ties_exact(seed):
    """Embedding-like data with near-ties at every scale and a mean the strided sample misjudges (the
    sampled rows point elsewhere than the rest): exact whatever the centering vector, threads, split,
    streaming or assume_normalized."""
    d = [16, 33, 96, 384, 768, 128][seed]
    q, x = _anisotropic(50, 2500, d, seed=seed, jitter=[2e-3, 1e-4, 1e-2, 2e-3, 5e-4, 0.0][seed])
    if seed % 2:
        x[:: max(1, len(x) // 4096)] *= -1  # the sampled rows (every row here) flipped: mean ~ -mean
        x[1::2] *= -1  # ... and half of them back: the sample's mean is ~0 while the data is anisotropic
    for threads, split in [(1, "auto"), (2, "queries"), (2, "keys")]:
        _check(q, x, 10, num_threads=threads, split=split)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    _check(qn, xn, 10, True, num_threads=2)


@needs_bf16
def test_bf16_duplicates_fall_back_to_fp32_exactly():
    """More exact ties than the candidate cap (4096): those queries are recomputed by the fp32 kernel,
    the others are screened, both kinds in one call; exact whatever the threads and split."""
    rng = np.random.default_rng(7)
    d = 64
    a = rng.standard_normal(d).astype(np.float32)
    rand = rng.standard_normal((3000, d)).astype(np.float32)
    x = np.concatenate([rand, np.tile(a, (4500, 1))])  # 4,500 identical keys after 3,000 random ones
    q = np.concatenate(
        [
            a + 1e-3 * rng.standard_normal((20, d)).astype(np.float32),
            rng.standard_normal((30, d)).astype(np.float32),
        ]
    )
    for threads, split in [(1, "auto"), (2, "queries"), (2, "keys")]:
        (s, i), stats = _check(q, x, 16, num_threads=threads, split=split)
        if split == "keys":  # the cap is per key part (~940 keys here): no part overflows, all rescored
            assert stats["fallback"] == 0 and stats["candidates"] >= 20 * 4500, stats
        else:
            assert stats["fallback"] == 20, stats
        np.testing.assert_array_equal(
            i[:20], np.tile(np.arange(3000, 3016), (20, 1))
        )  # lower index wins ties
    # all keys equal: every query falls back
    xe = np.tile(a, (5000, 1))
    (_, i), stats = _check(q[:7], xe, 5, num_threads=2)
    assert stats["fallback"] == 7
    np.testing.assert_array_equal(i, np.tile(np.arange(5), (7, 1)))


@needs_bf16
def test_bf16_zero_vectors():
    q, x = _data(9, 500, 96, seed=2)
    q[3] = 0
    x[[0, 17, 150]] = 0
    for split in ("queries", "keys"):
        (s, i), _ = _check(q, x, 12, num_threads=2, split=split)
        np.testing.assert_array_equal(s[3], np.zeros(12, np.float32))
        np.testing.assert_array_equal(i[3], np.arange(12))  # all tied at 0 -> lowest indices
    (s, i), _ = _check(q[:4], np.zeros((20, 96), np.float32), 20)
    np.testing.assert_array_equal(i, np.tile(np.arange(20), (4, 1)))


@needs_bf16
@pytest.mark.parametrize("n,m,d", [(31, 517, 13), (64, 3001, 96), (50, 2000, 768)])
def test_bf16_blocking_threads_and_streaming(n, m, d, tmp_path):
    """Every tiling, thread count, split and streamed memory-mapped keys give the fp32 kernel's bits."""
    q, x = _data(n, m, d, seed=3)
    x[::7] = x[3]  # exact duplicate keys: tie order must not depend on the split
    np.save(tmp_path / "k.npy", x)
    mm = np.load(tmp_path / "k.npy", mmap_mode="r")
    k = 16
    base = EXT.cosine_topk(q, x, k, False, 1, kernel=FP32)
    for keys, kw in [
        (x, dict(num_threads=1, key_block=20, query_block=12)),
        (x, dict(num_threads=2, key_block=36, query_block=24, split="queries")),
        (x, dict(num_threads=3, split="keys", key_block=44, query_block=12)),
        (x, dict(num_threads=2, key_offset=1000)),
        (mm, dict(num_threads=2, stream_keys=True, key_block=20, query_block=12, split="queries")),
        (mm, dict(num_threads=2, stream_keys=True, split="keys")),
        (mm, dict(num_threads=3, stream_keys=True)),
    ]:
        got = EXT.cosine_topk(q, keys, k, False, kernel="bf16", **kw)
        off = kw.get("key_offset", 0)
        _same((got[0], got[1] - off), base, str(kw))
    assert_topk_equal(*base, *_ref64(q, x, k), atol=ATOL, queries=q, keys=x)


@needs_bf16
def test_bf16_python_api_and_auto_dispatch(tmp_path, monkeypatch):
    """kernel='bf16' (and XITE_FAST_CPU_KERNEL=bf16) through cosine_topk (arrays and a .npy path);
    'auto' picks bf16 from D=16."""
    q, x = _data(40, 3000, 96, seed=5)
    np.save(tmp_path / "k.npy", x)
    exp = EXT.cosine_topk(q, x, 7, kernel=FP32)
    for keys in (x, str(tmp_path / "k.npy"), torch.from_numpy(x)):
        _same(cosine_topk(q, keys, 7, backend="cpu", kernel="bf16"), exp)
        assert EXT.cosine_topk_bf16_stats()["queries"] == 40
    monkeypatch.setenv("XITE_FAST_CPU_KERNEL", "bf16")
    for keys in (x, str(tmp_path / "k.npy"), torch.from_numpy(x)):
        _same(cosine_topk(q, keys, 7, backend="cpu"), exp)
    monkeypatch.delenv("XITE_FAST_CPU_KERNEL")
    EXT.cosine_topk(q[:3], x, 7, kernel="bf16")
    assert EXT.cosine_topk_bf16_stats()["queries"] == 3
    _same(cosine_topk(q, x, 7, backend="cpu"), exp)  # auto at D=96: bf16
    assert EXT.cosine_topk_bf16_stats()["queries"] == 40
    q2, x2 = _data(5, 300, 8, seed=6)
    cosine_topk(q2, x2, 7, backend="cpu")  # auto at D=8: fp32, stats untouched
    assert EXT.cosine_topk_bf16_stats()["queries"] == 40


@needs_bf16
def test_bf16_overflow_is_an_error_like_fp32():
    q = np.full((5, 64), 1e20, np.float32)
    x = np.full((300, 64), 1e20, np.float32)
    match = "cosine_topk: scores overflowed float32 (inf/NaN) although the inputs are finite"
    for split in ("queries", "keys"):
        with pytest.raises(ValueError, match=re.escape(match)):
            EXT.cosine_topk(q, x, 3, True, 2, split=split, kernel="bf16")
    x[123, 4] = np.inf
    with pytest.raises(ValueError, match=re.escape("keys contains NaN or inf (first at row 123)")):
        EXT.cosine_topk(q, x, 3, False, 2, kernel="bf16")


@needs_bf16
def test_bf16_peak_is_about_twice_fp32():
    """The bf16 peak micro-benchmark (the bench's '% of bf16 peak') counts 64 FLOP per vdpbf16ps."""
    bf = EXT.cosine_topk_fma_peak("avx512_bf16", 1, 200_000)
    assert bf > 0


@needs_cpu
def test_int8_peak_microbenchmark():
    """'avx512_vnni' (the int8 encoder's ceiling in bench_encode.py): GOP/s on VNNI CPUs, else an error
    naming the missing instruction set; an unknown isa is named in the error."""
    if EXT.cpu_supports_avx512() and "avx512_vnni" in open("/proc/cpuinfo").read():
        g = EXT.cosine_topk_fma_peak("avx512_vnni", 1, 200_000)
        assert np.isfinite(g) and g > 0
    else:
        with pytest.raises(ValueError, match="avx512_vnni"):
            EXT.cosine_topk_fma_peak("avx512_vnni", 1, 1000)
    with pytest.raises(
        ValueError, match="isa must be 'avx2', 'avx512', 'avx512_bf16' or 'avx512_vnni', got 'amx'"
    ):
        EXT.cosine_topk_fma_peak("amx", 1, 1000)


@needs_cpu
def test_bf16_unavailable_raises_and_auto_falls_back(tmp_path):
    """Without AVX512_BF16 (hidden here with XITE_FAST_NO_AVX512_BF16=1 in a fresh process, or a CPU
    that lacks it) kernel='bf16' raises a clear ValueError and 'auto' runs the fp32 kernel."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from xite_fast import _backend
        ext = _backend.load_extension()
        assert not ext.cpu_supports_avx512_bf16()
        rng = np.random.default_rng(0)
        q = rng.standard_normal((20, 96)).astype(np.float32)
        x = rng.standard_normal((500, 96)).astype(np.float32)
        try:
            ext.cosine_topk(q, x, 4, kernel="bf16")
        except ValueError as e:
            print("ERR", e)
        s, i = ext.cosine_topk(q, x, 4)
        np.save(sys.argv[1], i)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, XITE_FAST_NO_AVX512_BF16="1")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    path = tmp_path / "out.npy"
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (
        "ERR cosine_topk: kernel='bf16' needs a CPU with AVX512_BF16 (this one lacks it; use 'auto')"
        in out.stdout
    )
    i = np.load(path)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((20, 96)).astype(np.float32)
    x = rng.standard_normal((500, 96)).astype(np.float32)
    np.testing.assert_array_equal(i, EXT.cosine_topk(q, x, 4, kernel=FP32)[1])
    if not HAS_BF16:
        with pytest.raises(ValueError, match=re.escape("kernel='bf16' needs a CPU with AVX512_BF16")):
            EXT.cosine_topk(q, x, 4, kernel="bf16")


@needs_cpu
def test_kernel_env_accepts_bf16(monkeypatch):
    monkeypatch.setattr(EXT, "cpu_supports_avx512_bf16", lambda: True)
    monkeypatch.setenv("XITE_FAST_CPU_KERNEL", "BF16")
    assert ct_mod._resolve_kernel("auto") == "bf16"
