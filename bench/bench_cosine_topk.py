"""Benchmark exact cosine top-k: xite_fast C++ kernel vs torch reference, faiss IndexFlatIP, numpy.

Providers run side by side in one process on the same data:

* ``xite_fast``   - ``xite_fast.cosine_topk(..., backend="cpu")`` on raw (unnormalised) float32 data
  (its time includes normalising the queries and the key-norm pass).
* ``faiss``       - ``faiss.IndexFlatIP.search`` on pre-normalised data (normalisation and ``add``
  excluded from the time: favourable to faiss).
* ``numpy``       - normalised matmul + ``argpartition`` in (query, key) chunks that fit RAM.
* ``torch_ref``   - ``xite_fast.reference.cosine_topk_ref`` (chunked matmul + stable sort).

Reported per provider: median seconds over ``--repeats`` runs, queries/s, effective GFLOP/s
(2 N M D / t), extra peak RSS during the call (sampled from /proc every 5 ms) and the ratio of q/s
vs faiss. The slow providers (numpy, torch_ref) run once on the first ``--slow-queries`` queries
against all M keys (q/s is per query at fixed M, so it is comparable); the table says so.

Usage::

    .venv/bin/python bench/bench_cosine_topk.py            # N=20k, M=200k, d=384 and 768, k=8
    .venv/bin/python bench/bench_cosine_topk.py --quick    # N=2k, M=20k

Runs hold ``/tmp/xite_bench.lock`` (flock) so benchmarks on the shared machine do not overlap.
Rows are appended to ``bench/results/cosine_topk.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import append_csv, bench_lock, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xite_fast  # noqa: E402
from xite_fast.ops.cosine_topk import cosine_topk, merge_topk  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples RSS in a thread; ``extra`` = peak during the block minus RSS at entry (bytes)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.base


def _machine() -> str:
    return machine()


def numpy_topk(q: np.ndarray, x: np.ndarray, k: int, qchunk: int = 1024, kchunk: int = 32768):
    """Normalised matmul + argpartition per (query, key) chunk; partial results merged exactly."""
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    out_s = np.empty((q.shape[0], k), np.float32)
    out_i = np.empty((q.shape[0], k), np.int64)
    xnorm = np.linalg.norm(x, axis=1)
    xnorm[xnorm == 0] = np.inf
    for i0 in range(0, q.shape[0], qchunk):
        ps, pi = [], []
        for j0 in range(0, x.shape[0], kchunk):
            s = qn[i0 : i0 + qchunk] @ x[j0 : j0 + kchunk].T
            s /= xnorm[j0 : j0 + kchunk]
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            ps.append(np.take_along_axis(s, part, 1))
            pi.append(part + j0)
        out_s[i0 : i0 + qchunk], out_i[i0 : i0 + qchunk] = merge_topk(ps, pi, k)
    return out_s, out_i


def _provider(prov: str, q: np.ndarray, x: np.ndarray, k: int, slow_n: int, repeats: int):
    """(callable returning (scores, indices), queries it handles, repeats) for one provider."""
    if prov == "xite_fast":
        return (lambda: cosine_topk(q, x, k, backend="cpu")), q.shape[0], repeats
    if prov.startswith("xite_"):  # xite_avx512 / xite_packed / xite_dot: one forced micro-kernel

        def run():
            os.environ["XITE_FAST_CPU_KERNEL"] = prov[len("xite_") :]
            try:
                return cosine_topk(q, x, k, backend="cpu")
            finally:
                del os.environ["XITE_FAST_CPU_KERNEL"]

        return run, q.shape[0], repeats
    if prov == "faiss":
        import faiss

        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(q.shape[1])
        index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
        return (lambda: index.search(qn, k)), q.shape[0], repeats
    if prov == "numpy":
        return (lambda: numpy_topk(q[:slow_n], x, k)), slow_n, 1
    if prov == "torch_ref":
        return (lambda: cosine_topk(q[:slow_n], x, k, backend="torch")), slow_n, 1
    raise SystemExit(f"unknown provider {prov!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=2000, M=20000 (smoke run)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--m", type=int, default=None)
    ap.add_argument("--dims", default="384,768")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-queries", type=int, default=None, help="queries used by numpy/torch_ref")
    ap.add_argument("--providers", default="xite_fast,faiss,numpy,torch_ref")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "cosine_topk.csv"))
    ap.add_argument("--no-lock", action="store_true", help="do not take /tmp/xite_bench.lock")
    args = ap.parse_args(argv)
    n = args.n or (2000 if args.quick else 20000)
    m = args.m or (20000 if args.quick else 200000)
    slow_n = min(n, args.slow_queries or (n if args.quick else 2048))
    providers = args.providers.split(",")

    lock = bench_lock(not args.no_lock)

    import torch

    versions = {"xite_fast": xite_fast.__version__, "numpy": np.__version__, "torch_ref": torch.__version__}
    try:
        import faiss

        versions["faiss"] = faiss.__version__
    except ImportError:
        faiss = None
        providers = [p for p in providers if p != "faiss"]
    ext = xite_fast._backend.load_extension()
    threads = ext.max_threads() if ext is not None else os.cpu_count()
    machine = _machine()
    print(f"machine: {machine}; OpenMP threads {threads}; torch threads {torch.get_num_threads()}")
    rows = []
    for d in [int(v) for v in args.dims.split(",")]:
        rng = np.random.default_rng(d)
        q = rng.standard_normal((n, d), dtype=np.float32)
        x = rng.standard_normal((m, d), dtype=np.float32)
        flop_per_query = 2.0 * m * d
        results = {}
        ref_idx = None
        for prov in providers:
            fn, nq, reps = _provider(prov, q, x, args.k, slow_n, args.repeats)
            times, extra = [], 0
            for _ in range(reps):
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    out = fn()
                    times.append(time.perf_counter() - t0)
                extra = max(extra, mem.extra)
            del fn
            med = statistics.median(times)
            # cross-check the providers' neighbours on the first rows (cheap sanity, not a test)
            idx = np.asarray(out[1])[: min(64, nq)]
            if ref_idx is None:
                ref_idx = idx
            agree = float((np.sort(idx, 1)[: len(ref_idx)] == np.sort(ref_idx, 1)[: len(idx)]).mean())
            qps = nq / med
            results[prov] = dict(
                seconds=med,
                qps=qps,
                gflops=qps * flop_per_query / 1e9,
                extra_mb=extra / 2**20,
                repeats=reps,
                n=nq,
                agree=agree,
            )
            print(
                f"  d={d} {prov:10s} {med:8.3f} s  {qps:9.1f} q/s  {qps * flop_per_query / 1e9:6.1f} GFLOP/s  "
                f"+{extra / 2**20:7.1f} MiB  (N={nq}, {reps} run{'s' if reps > 1 else ''}, agree {agree:.3f})",
                flush=True,
            )
        base = results.get("faiss", {}).get("qps")
        print(f"\nN={n} M={m} d={d} k={args.k}")
        print(
            f"{'provider':10s} {'N run':>6s} {'runs':>4s} {'median s':>9s} {'q/s':>9s} {'GFLOP/s':>8s} {'+MiB':>8s} {'vs faiss':>8s}"
        )
        for prov, r in results.items():
            ratio = r["qps"] / base if base else float("nan")
            print(
                f"{prov:10s} {r['n']:6d} {r['repeats']:4d} {r['seconds']:9.3f} {r['qps']:9.1f} {r['gflops']:8.1f} "
                f"{r['extra_mb']:8.1f} {ratio:8.2f}x"
            )
            rows.append(
                dict(
                    date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    op="cosine_topk",
                    shape=f"N={n},M={m},d={d},k={args.k}",
                    n_measured=r["n"],
                    provider=prov,
                    repeats=r["repeats"],
                    median_s=f"{r['seconds']:.4f}",
                    queries_per_s=f"{r['qps']:.1f}",
                    gflops=f"{r['gflops']:.1f}",
                    extra_rss_mib=f"{r['extra_mb']:.1f}",
                    ratio_vs_faiss=f"{ratio:.3f}",
                    threads=threads,
                    machine=machine,
                    version=versions.get(prov, versions["xite_fast"] if prov.startswith("xite_") else ""),
                )
            )
        print(flush=True)
    append_csv(args.csv, rows)
    if lock is not None:
        lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
