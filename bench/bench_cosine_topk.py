"""Benchmark exact cosine top-k: xite_fast C++ kernel vs faiss IndexFlatIP and torch mm+topk, each at
its best.

Providers run side by side in one process on the same data, interleaved (repeat 1 of every
provider, then repeat 2, ...) so host drift on a shared machine lands in every provider alike:

* ``xite_fast``   - ``xite_fast.cosine_topk(..., backend="cpu")`` on raw (unnormalised) float32 data
  (its time includes normalising the queries and the key-norm pass).
* ``xite_bf16`` / ``xite_fp32`` / ``xite_avx512`` / ``xite_packed`` / ``xite_dot`` - the same call with
  ``kernel=`` one micro-kernel (``bf16``: certified bf16 screening + exact fp32 rescoring, what ``auto`` picks
  on AVX512_BF16 CPUs; its average candidates rescored per query and fp32 fallbacks are recorded).
* ``faiss``       - ``faiss.IndexFlatIP.search`` on pre-normalised data (normalisation and ``add``
  excluded from the time: favourable to faiss). faiss-cpu's bundled OpenBLAS may mis-detect the core
  (on an Intel Xeon it picked "Prescott", SSE3): before loading faiss the script times it in one
  subprocess per ``OPENBLAS_CORETYPE`` of ``--faiss-coretypes`` (``default`` = unset), reads the core
  OpenBLAS actually uses with threadpoolctl, and loads faiss with the fastest one (recorded in the
  ``setting`` column). The other OpenBLAS tuning variables (``OPENBLAS_L2_SIZE``: an inherited value
  slowed faiss by up to ~15%) are cleared with it, in the probes and in this process only.
* ``torch_mm``    - ``torch.mm`` on pre-normalised tensors + ``torch.topk``, chunked over queries and
  keys (the partial top-k merged by a second ``topk``), all torch threads.
* ``numpy``       - normalised matmul + ``argpartition`` in (query, key) chunks (slow; off by default).
* ``torch_ref``   - ``xite_fast.reference.cosine_topk_ref`` (chunked matmul + stable sort; off by default).

Reported per provider: median seconds over ``--repeats`` runs, queries/s, effective GFLOP/s
(2 N M D / t), % of the fp32 FMA peak measured in the same run (``_C.cosine_topk_fma_peak``: register
FMA chains on all threads, best of 5, before and after the cases; for the bf16 kernel also % of the
``vdpbf16ps`` peak measured the same way), extra peak RSS during the call
(sampled from /proc every 5 ms) and the ratio of q/s vs faiss. On a shared host, wall time moves with the
other jobs; "CPU-s GFLOP/s" is FLOP per CPU-second of the process x threads (the rate while it runs,
spin-waits included), the figure to hold against the peak when the load average is above ~0.5. numpy and
torch_ref run once on the first ``--slow-queries`` queries against all M keys (q/s is per query at fixed M, so
it is comparable).

Usage::

    .venv/bin/python bench/bench_cosine_topk.py            # N=20k, M=200k, d=384 and 768, k=8
    .venv/bin/python bench/bench_cosine_topk.py --quick    # N=2k, M=20k
    .venv/bin/python bench/bench_cosine_topk.py --stores RUN_DIR --n 20000 --m 200000  # real embeddings

``--stores`` reads the embeddings of an ``xite-fast augment`` run (``RUN_DIR/target_emb`` as queries,
``RUN_DIR/source_emb`` as keys): sentence embeddings are anisotropic and clustered, which random data is
not, and the bf16 kernel's candidate count depends on that (rows marked ``data=real`` in ``shape``).

Runs hold ``/tmp/xite_bench.lock`` (flock) so benchmarks on the shared machine do not overlap.
Rows are appended to ``bench/results/cosine_topk.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import append_results, bench_lock, fma_peak_gflops, load_average, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xite_fast  # noqa: E402
from xite_fast.ops.cosine_topk import KERNEL_ENV, cosine_topk, merge_topk  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
# OpenBLAS variables that tune faiss's bundled OpenBLAS: cleared together for its runs (CORETYPE is then
# set to the probed best), so an inherited value (OPENBLAS_L2_SIZE=512 cost faiss up to ~15%) never
# handicaps the peer
OPENBLAS_TUNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


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


def torch_mm_topk(qn, xn, k: int, qchunk: int = 4096, kchunk: int = 16384):
    """torch.mm on pre-normalised (N, d) / (M, d) float32 tensors + topk per (query, key) chunk."""
    import torch

    dev = qn.device  # CPU here; scripts/gpu_check.sh runs the same function on CUDA tensors
    out_s = torch.empty((qn.shape[0], k), dtype=torch.float32, device=dev)
    out_i = torch.empty((qn.shape[0], k), dtype=torch.int64, device=dev)
    buf = torch.empty((min(qchunk, qn.shape[0]), min(kchunk, xn.shape[0])), dtype=torch.float32, device=dev)
    for i0 in range(0, qn.shape[0], qchunk):
        qc = qn[i0 : i0 + qchunk]
        ps, pi = [], []
        for j0 in range(0, xn.shape[0], kchunk):
            xc = xn[j0 : j0 + kchunk]
            s = buf[: qc.shape[0], : xc.shape[0]]
            torch.mm(qc, xc.T, out=s)
            v, ix = torch.topk(s, min(k, xc.shape[0]), dim=1)
            ps.append(v)
            pi.append(ix + j0)
        v, pos = torch.topk(torch.cat(ps, 1), k, dim=1)
        out_s[i0 : i0 + qchunk] = v
        out_i[i0 : i0 + qchunk] = torch.gather(torch.cat(pi, 1), 1, pos)
    return out_s, out_i


def _normalised(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _provider(prov: str, q: np.ndarray, x: np.ndarray, k: int, slow_n: int, repeats: int, normed):
    """(callable returning (scores, indices), queries it handles, repeats) for one provider."""
    if prov == "xite_fast":
        return (lambda: cosine_topk(q, x, k, backend="cpu")), q.shape[0], repeats
    if prov.startswith("xite_"):  # xite_bf16 / xite_fp32 / xite_avx512 / xite_packed / xite_dot
        kernel = prov[len("xite_") :]
        return (lambda: cosine_topk(q, x, k, backend="cpu", kernel=kernel)), q.shape[0], repeats
    if prov == "faiss":
        import faiss

        qn, xn = normed()
        index = faiss.IndexFlatIP(q.shape[1])
        index.add(xn)
        return (lambda: index.search(qn, k)), q.shape[0], repeats
    if prov == "torch_mm":
        import torch

        qn, xn = (torch.from_numpy(a) for a in normed())
        return (lambda: torch_mm_topk(qn, xn, k)), q.shape[0], repeats
    if prov == "numpy":
        return (lambda: numpy_topk(q[:slow_n], x, k)), slow_n, 1
    if prov == "torch_ref":
        return (lambda: cosine_topk(q[:slow_n], x, k, backend="torch")), slow_n, 1
    raise SystemExit(f"unknown provider {prov!r}")


def _blas_core(module_part: str) -> str:
    """Core type (``architecture``) threadpoolctl reports for the loaded OpenBLAS whose path contains
    module_part."""
    try:
        import threadpoolctl
    except ImportError:
        return "?"
    for info in threadpoolctl.threadpool_info():
        if info.get("internal_api") == "openblas" and module_part in info.get("filepath", ""):
            return str(info.get("architecture"))
    return "?"


def _faiss_probe(n: int, m: int, dims: list[int], k: int) -> None:
    """Subprocess body: time faiss IndexFlatIP (best of 2) per d under this process's OPENBLAS_CORETYPE."""
    import faiss

    out = {"core": _blas_core("faiss"), "seconds": {}}
    for d in dims:
        rng = np.random.default_rng(d)
        qn = _normalised(rng.standard_normal((n, d), dtype=np.float32))
        index = faiss.IndexFlatIP(d)
        index.add(_normalised(rng.standard_normal((m, d), dtype=np.float32)))
        index.search(qn[:64], k)  # warm-up
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            index.search(qn, k)
            times.append(time.perf_counter() - t0)
        out["seconds"][str(d)] = min(times)
    print("PROBE " + json.dumps(out), flush=True)


def pick_faiss_coretype(
    coretypes: list[str], n: int, m: int, dims: list[int], k: int
) -> tuple[str, list[str]]:
    """Times faiss in one subprocess per OPENBLAS_CORETYPE; returns (best, lines describing every probe)."""
    best, best_t, lines = "default", float("inf"), []
    for ct in coretypes:
        env = {key: v for key, v in os.environ.items() if key not in OPENBLAS_TUNING}
        if ct != "default":
            env["OPENBLAS_CORETYPE"] = ct
        cmd = [sys.executable, __file__, "--faiss-probe", "--n", str(n), "--m", str(m), "--k", str(k)]
        cmd += ["--dims", ",".join(map(str, dims)), "--no-lock"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        res = next((json.loads(ln[6:]) for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
        if res is None:
            lines.append(f"{ct}: failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
            continue
        total = sum(res["seconds"].values())
        flops = {d: 2.0 * n * m * int(d) / t / 1e9 for d, t in res["seconds"].items()}
        lines.append(
            f"OPENBLAS_CORETYPE={ct}: OpenBLAS core {res['core']}, "
            + ", ".join(f"d={d} {g:.1f} GFLOP/s" for d, g in flops.items())
        )
        if total < best_t:
            best, best_t = ct, total
    return best, lines


def _datasets(stores: str | None, n: int, m: int, dims: list[int]):
    """(d, queries, keys) per case: standard-normal float32 per d, or real embeddings from a run directory
    (target_emb rows as queries, source_emb rows as keys, evenly spaced, float32 in RAM)."""
    if stores is None:
        for d in dims:
            rng = np.random.default_rng(d)
            q = rng.standard_normal((n, d), dtype=np.float32)
            yield d, q, rng.standard_normal((m, d), dtype=np.float32)
        return
    from xite_fast.encode.store import EmbeddingStore

    out = []
    for name, rows in (("target_emb", n), ("source_emb", m)):
        emb = EmbeddingStore(Path(stores) / name).to_memmap()
        if rows > len(emb):
            raise SystemExit(f"--stores: {name} holds {len(emb)} rows, fewer than the {rows} asked")
        pick = np.linspace(0, len(emb) - 1, rows).astype(np.int64)
        out.append(np.ascontiguousarray(emb[pick], dtype=np.float32))
    yield out[0].shape[1], out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=2000, M=20000 (smoke run)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--m", type=int, default=None)
    ap.add_argument("--dims", default="384,768")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-queries", type=int, default=None, help="queries used by numpy/torch_ref")
    ap.add_argument("--providers", default="xite_fast,xite_avx512,faiss,torch_mm")
    ap.add_argument(
        "--faiss-coretypes",
        default="default,Zen,Haswell,SkylakeX",
        help="OPENBLAS_CORETYPE values probed for faiss ('default' = unset); one value skips the probe",
    )
    ap.add_argument("--probe-queries", type=int, default=1000, help="queries per faiss core-type probe")
    ap.add_argument("--faiss-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--stores",
        default=None,
        help="a run directory of `xite-fast augment`: real embeddings instead of random data (queries: N "
        "evenly spaced rows of target_emb, keys: M evenly spaced rows of source_emb; d from the store)",
    )
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "cosine_topk.csv"))
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--no-lock", action="store_true", help="do not take /tmp/xite_bench.lock")
    args = ap.parse_args(argv)
    n = args.n or (2000 if args.quick else 20000)
    m = args.m or (20000 if args.quick else 200000)
    dims = [int(v) for v in args.dims.split(",")]
    if args.stores is not None:  # the store's own d
        from xite_fast.encode.store import EmbeddingStore

        dims = [int(EmbeddingStore(Path(args.stores) / "source_emb").to_memmap().shape[1])]
    if args.faiss_probe:
        _faiss_probe(n, m, dims, args.k)
        return 0
    slow_n = min(n, args.slow_queries or (n if args.quick else 2048))
    providers = args.providers.split(",")

    lock = bench_lock(not args.no_lock)
    settings = {p: "" for p in providers}
    versions = {"xite_fast": xite_fast.__version__, "numpy": np.__version__}
    if "faiss" in providers:
        coretypes = args.faiss_coretypes.split(",")
        if len(coretypes) > 1:
            best, lines = pick_faiss_coretype(coretypes, min(n, args.probe_queries), m, dims, args.k)
            print("faiss OpenBLAS core-type probe (subprocesses):\n  " + "\n  ".join(lines))
        else:
            best = coretypes[0]
        inherited = {key: os.environ.pop(key) for key in OPENBLAS_TUNING if key in os.environ}
        if best != "default":
            os.environ["OPENBLAS_CORETYPE"] = best  # read by faiss's OpenBLAS when it loads, below
        try:
            import faiss

            versions["faiss"] = faiss.__version__
            cleared = "".join(
                f"; {key} unset (was {v})" for key, v in inherited.items() if key != "OPENBLAS_CORETYPE"
            )
            settings["faiss"] = f"OPENBLAS_CORETYPE={best}; OpenBLAS core {_blas_core('faiss')}{cleared}"
            print(f"faiss {faiss.__version__}: {settings['faiss']}")
        except ImportError:
            providers = [p for p in providers if p != "faiss"]
    import torch

    versions["torch_mm"] = versions["torch_ref"] = torch.__version__
    ext = xite_fast._backend.load_extension()
    threads = ext.max_threads() if ext is not None else os.cpu_count()
    kernel = os.environ.get(KERNEL_ENV, "auto")
    has_bf16 = ext is not None and hasattr(ext, "cpu_supports_avx512_bf16") and ext.cpu_supports_avx512_bf16()
    fp32_auto = "avx512" if ext is not None and ext.cpu_supports_avx512() else "packed"
    # what the C++ 'auto' dispatch picks at every d of this run (bf16 from D = 16, k <= 256)
    auto = "bf16" if has_bf16 and min(dims) >= 16 and args.k <= 256 else fp32_auto
    for p in providers:
        if p.startswith("xite_"):
            settings[p] = (
                f"kernel={p[5:] if p != 'xite_fast' else kernel + (f' ({auto})' if kernel == 'auto' else '')}"
            )
    if "torch_mm" in providers:
        settings["torch_mm"] = f"torch threads {torch.get_num_threads()}, chunks 4096 x 16384, pre-normalised"
    machine_s = machine()
    peak0 = fma_peak_gflops()
    print(
        f"machine: {machine_s}; OpenMP threads {threads}; torch threads {torch.get_num_threads()}; "
        f"load {load_average()}"
    )
    cases = []
    data = "random" if args.stores is None else "real"
    for d, q, x in _datasets(args.stores, n, m, dims):
        cache: list = []

        def normed(q=q, x=x, cache=cache):
            if not cache:
                cache.extend([_normalised(q), _normalised(x)])
            return cache[0], cache[1]

        fns = {p: _provider(p, q, x, args.k, slow_n, args.repeats, normed) for p in providers}
        times = {p: [] for p in providers}
        cpu = {p: [] for p in providers}
        extra = dict.fromkeys(providers, 0)
        cands = {p: [] for p in providers}  # bf16 kernel: candidates rescored per query, fp32 fallbacks
        outs = {}
        loads = []
        for rep in range(args.repeats):
            for prov in providers:  # interleaved: host drift lands in every provider alike
                fn, nq, reps = fns[prov]
                if rep >= reps:
                    continue
                with PeakRSS() as mem:
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = fn()
                    times[prov].append(time.perf_counter() - t0)
                    cpu[prov].append(time.process_time() - c0)
                extra[prov] = max(extra[prov], mem.extra)
                if prov.startswith("xite_") and has_bf16:
                    st = ext.cosine_topk_bf16_stats()
                    if st["queries"] == nq and (
                        prov == "xite_bf16" or (prov == "xite_fast" and auto == "bf16")
                    ):
                        cands[prov].append((st["candidates"] / st["queries"], st["fallback"]))
                outs[prov] = np.asarray(out[1])[: min(64, nq)]
                print(f"  d={d} {prov:11s} repeat {rep + 1}: {times[prov][-1]:8.3f} s", flush=True)
            loads.append(load_average())
        del fns, cache
        cases.append((d, times, cpu, extra, cands, outs, loads))
    peak1 = fma_peak_gflops()
    peak = max(peak0.get("peak", 0.0), peak1.get("peak", 0.0)) or float("nan")
    cpu_peak = max(peak0.get("cpu_peak", 0.0), peak1.get("cpu_peak", 0.0)) or float("nan")  # conservative
    bf16_peak = max(peak0.get("bf16_peak", 0.0), peak1.get("bf16_peak", 0.0)) or float("nan")
    bf16_cpu_peak = max(peak0.get("bf16_cpu_peak", 0.0), peak1.get("bf16_cpu_peak", 0.0)) or float("nan")
    fmt = lambda p: ", ".join(f"{k} {v:.1f}" for k, v in p.items())  # noqa: E731
    print(
        f"\nFMA peak (best of 5, {threads} threads), GFLOP/s: before {fmt(peak0)}; after {fmt(peak1)} -> "
        f"wall {peak:.1f}, per CPU-second {cpu_peak:.1f}"
        + (f"; bf16 (vdpbf16ps) wall {bf16_peak:.1f}, per CPU-second {bf16_cpu_peak:.1f}" if has_bf16 else "")
    )
    rows = []
    for d, times, cpu, extra, cands, outs, loads in cases:
        flop_per_query = 2.0 * m * d
        ref_idx = next(iter(outs.values()))
        results = {}
        for prov in providers:
            nq = slow_n if prov in ("numpy", "torch_ref") else n
            med = statistics.median(times[prov])
            idx = outs[prov]
            agree = float((np.sort(idx, 1)[: len(ref_idx)] == np.sort(ref_idx, 1)[: len(idx)]).mean())
            qps = nq / med
            # per CPU-second of this process (all threads; spin-waits count): the rate a core gives while
            # the process runs on it, so other jobs on the host do not move it (they move wall time)
            cpu_rate = nq * flop_per_query / statistics.median(cpu[prov]) / 1e9 * threads
            results[prov] = dict(
                seconds=med,
                qps=qps,
                gflops=qps * flop_per_query / 1e9,
                n=nq,
                agree=agree,
                cpu_gflops=cpu_rate,
            )
        base = results.get("faiss", {}).get("qps")
        print(f"\nN={n} M={m} d={d} k={args.k} ({data} data); load during the case {loads[0]} .. {loads[-1]}")
        print(
            f"{'provider':11s} {'N run':>6s} {'runs':>4s} {'median s':>9s} {'q/s':>9s} {'GFLOP/s':>8s} "
            f"{'% peak':>6s} {'CPU-s GFLOP/s':>13s} {'+MiB':>7s} {'vs faiss':>8s}  setting"
        )
        for prov, r in results.items():
            ratio = r["qps"] / base if base else float("nan")
            pct = 100 * r["gflops"] / peak
            print(
                f"{prov:11s} {r['n']:6d} {len(times[prov]):4d} {r['seconds']:9.3f} {r['qps']:9.1f} "
                f"{r['gflops']:8.1f} {pct:5.1f}% {r['cpu_gflops']:8.1f} "
                f"({100 * r['cpu_gflops'] / cpu_peak:3.0f}%) {extra[prov] / 2**20:7.1f} {ratio:7.2f}x  "
                f"{settings.get(prov, '')}" + (f" (agree {r['agree']:.3f})" if r["agree"] < 1 else "")
            )
            if cands[prov]:
                cpq = statistics.mean(c for c, _ in cands[prov])
                fb = max(f for _, f in cands[prov])
                print(
                    f"{'':11s} bf16: {100 * r['gflops'] / bf16_peak:.1f}% of the bf16 peak wall, "
                    f"{100 * r['cpu_gflops'] / bf16_cpu_peak:.1f}% per CPU-second; {cpq:.1f} candidates "
                    f"rescored per query, {fb} fp32 fallback queries; per repeat vs faiss: "
                    + " / ".join(
                        f"{tf / t:.2f}x" for t, tf in zip(times[prov], times.get("faiss", []), strict=False)
                    )
                )
            rows.append(
                dict(
                    date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    op="cosine_topk",
                    shape=f"N={n},M={m},d={d},k={args.k}" + ("" if data == "random" else f",data={data}"),
                    n_measured=r["n"],
                    provider=prov,
                    repeats=len(times[prov]),
                    median_s=f"{r['seconds']:.4f}",
                    queries_per_s=f"{r['qps']:.1f}",
                    gflops=f"{r['gflops']:.1f}",
                    extra_rss_mib=f"{extra[prov] / 2**20:.1f}",
                    ratio_vs_faiss=f"{ratio:.3f}",
                    threads=threads,
                    machine=machine_s,
                    version=versions.get(prov, versions["xite_fast"] if prov.startswith("xite_") else ""),
                    setting=settings.get(prov, ""),
                    fma_peak_gflops=f"{peak:.1f}",
                    pct_of_peak=f"{pct:.1f}",
                    cpu_gflops=f"{r['cpu_gflops']:.1f}",
                    cpu_fma_peak_gflops=f"{cpu_peak:.1f}",
                    cpu_pct_of_peak=f"{100 * r['cpu_gflops'] / cpu_peak:.1f}",
                    load_avg=f"{loads[0]} .. {loads[-1]}",
                    ratio_vs_faiss_per_repeat=" / ".join(
                        f"{tf / t:.3f}" for t, tf in zip(times[prov], times.get("faiss", []), strict=False)
                    ),
                    bf16_peak_gflops=f"{bf16_peak:.1f}" if cands[prov] else "",
                    pct_of_bf16_peak=f"{100 * r['gflops'] / bf16_peak:.1f}" if cands[prov] else "",
                    cpu_pct_of_bf16_peak=f"{100 * r['cpu_gflops'] / bf16_cpu_peak:.1f}"
                    if cands[prov]
                    else "",
                    candidates_per_query=f"{statistics.mean(c for c, _ in cands[prov]):.2f}"
                    if cands[prov]
                    else "",
                    fallback_queries=str(max(f for _, f in cands[prov])) if cands[prov] else "",
                )
            )
    print(flush=True)
    if not args.no_csv:
        append_results("cosine_topk", rows, args.csv, shape_keys=("n_measured",))
    if lock is not None:
        lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
