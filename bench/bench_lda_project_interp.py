"""Benchmark: fused LDA projection + interpolation (ours, C++) vs torch and numpy formulations.

Run (one benchmark at a time on the shared machine):
    flock /tmp/xite_bench.lock .venv/bin/python bench/bench_lda_project_interp.py [--quick]

For each shape/mode it prints the median wall time of repeated runs, the achieved bandwidth
(bytes = read src + read tgt + write out), the percentage of the memory bandwidth measured in the
same run by a STREAM-triad-like kernel (a = b + s*c, 2 reads + 1 write, C++/OpenMP with streaming
stores; numpy's two-pass triad is printed for reference), and the speed-up over the best torch
formulation. Rows are appended to bench/results/lda_project_interp.csv (the benchmark schema).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import append_results, cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import xite_fast  # noqa: E402
from xite_fast import lda_project_interp  # noqa: E402
from xite_fast._backend import load_extension  # noqa: E402
from xite_fast.ops.lda_project_interp import aligned_empty  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "lda_project_interp.csv"


def machine() -> str:
    return f"{cpu_model()} x{os.cpu_count()} cores"


def median_time(fn, repeats: int, warmup: int = 1, cpu: bool = False):
    """Median wall time (and, with ``cpu=True``, median process CPU time summed over threads)."""
    for _ in range(warmup):
        fn()
    wall, proc = [], []
    for _ in range(repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        proc.append(time.process_time() - c0)
    if cpu:
        return statistics.median(wall), statistics.median(proc)
    return statistics.median(wall)


# ----------------------------------------------------------------------------- torch formulations
def torch_naive(s, t, W, lam, g, mode):
    """Direct transcription of the formula (what a user writes first)."""
    if mode == "interp":
        return lam * s + g * t
    P = lambda x: (x @ W) @ W.T  # noqa: E731
    if mode == "proj":
        return lam * s + g * P(t)
    if mode == "comp":
        return lam * s + g * (t - P(t))
    return s - g * P(s) + g * P(t)


def torch_addmm(s, t, W, lam, g, mode, out=None):
    """BLAS-fused: small GEMMs for the coefficients (no (N, D) temporaries), then one addmm/lerp
    writing the output (into ``out`` when given, so no allocation/page faults either)."""
    per_row = torch.is_tensor(lam)
    if mode == "interp":
        return torch.lerp(t, s, lam, out=out)  # t + lam (s - t)
    if mode == "shift":
        c = t @ W - s @ W  # P(t) - P(s) = (t W - s W) Wᵀ
        if per_row:
            return torch.addmm(s, c * g, W.T, out=out)
        return torch.addmm(s, c, W.T, alpha=g, out=out)
    c = t @ W
    if mode == "proj":
        if per_row:
            base = torch.mul(s, lam, out=out)
            return base.addmm_(c * g, W.T)
        return torch.addmm(s, c, W.T, beta=lam, alpha=g, out=out)
    base = torch.lerp(t, s, lam, out=out)  # comp: lam s + g t - g P(t)
    return base.addmm_(c * g, W.T, alpha=-1.0) if per_row else base.addmm_(c, W.T, alpha=-g)


def numpy_formula(s, t, W, lam, g, mode):
    if mode == "interp":
        out = s * lam
        out += g * t
        return out
    x = t - s if mode == "shift" else t
    out = (x @ W) @ W.T
    if mode == "shift":
        out *= g
        out += s
    elif mode == "proj":
        out *= g
        out += lam * s
    else:
        out *= -g
        out += lam * s
        out += g * t
    return out


def _ours(s, t, W, lam, mode, out):
    return lda_project_interp(s, t, W, lam, mode, backend="cpu", out=out)


def measure_bandwidth(n_floats: int, repeats: int) -> tuple[float, float]:
    """GB/s of a triad a = b + s*c (3 arrays of n_floats): C++ streaming kernel, numpy two-pass."""
    rng = np.random.default_rng(0)
    a = aligned_empty((n_floats,))
    b = rng.standard_normal(n_floats, dtype=np.float32)
    c = rng.standard_normal(n_floats, dtype=np.float32)
    nbytes = 3 * 4 * n_floats
    ext = load_extension()
    cpp = float("nan")
    if ext is not None and hasattr(ext, "lda_project_interp_triad"):
        cpp = nbytes / median_time(lambda: ext.lda_project_interp_triad(a, b, c, 0.5), repeats) / 1e9

    def np_triad():
        np.multiply(c, np.float32(0.5), out=a)
        a.__iadd__(b)

    npy = nbytes / median_time(np_triad, repeats) / 1e9
    return cpp, npy


def _ours_simd(s, t, W, mode, out, simd):
    """The C++ kernel with one SIMD path forced (``simd="avx2"``: the pre-AVX-512 kernel, same bits)."""
    lam = np.array([0.4], np.float32)
    return load_extension().lda_project_interp(s, t, W, lam, s.shape[0], mode, out, 0, -1, simd)


def paired_ratio(fn, refs: dict, pairs: int) -> tuple[float, dict]:
    """Median time of ``fn`` and, per reference, the median of ref_time / fn_time over ``pairs``
    interleaved runs (ref, ..., fn). On a shared host the attainable bandwidth drifts by ±30% within a
    minute; a ratio taken from back-to-back runs cancels the drift that two separate medians keep."""
    fn()
    for ref in refs.values():
        ref()
    times, ratios = [], {name: [] for name in refs}
    for _ in range(pairs):
        ref_t = {}
        for name, ref in refs.items():
            t0 = time.perf_counter()
            ref()
            ref_t[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        sec = time.perf_counter() - t0
        times.append(sec)
        for name in refs:
            ratios[name].append(ref_t[name] / sec)
    return statistics.median(times), {name: statistics.median(v) for name, v in ratios.items()}


def spot(repeats: int = 9) -> list[dict]:
    """Spot check: ours (``out=``; allocating; AVX2 kernel forced) vs torch addmm (``out=``), N = 200k,
    D = 768, r = 4 / 8 / 16, every mode, scalar λ, 2 threads. Each case runs ``repeats`` times
    interleaved with the C++ triad (paired ratios, :func:`paired_ratio`): ``out=`` against the triad
    into a reused (already faulted-in) array, the allocating path against both that and a triad into a
    fresh array (the same first-touch cost: the operating system zero-fills every new page before the
    kernel writes it). Returns the rows."""
    N, D = 200_000, 768
    rng = np.random.default_rng(0)
    s = rng.standard_normal((N, D), dtype=np.float32)
    t = rng.standard_normal((N, D), dtype=np.float32)
    ext = load_extension()
    tri_out = aligned_empty((N * D,))
    tri_out[:] = 0
    s1, t1 = s.reshape(-1), t.reshape(-1)
    refs = {
        "triad": lambda: ext.lda_project_interp_triad(tri_out, s1, t1, 0.5),
        "triad_fresh": lambda: ext.lda_project_interp_triad(aligned_empty((N * D,)), s1, t1, 0.5),
    }
    nbytes = 3 * N * D * 4
    rows = []
    common = {
        "shape": f"{N}x{D}",
        "lam": "scalar",
        "threads": os.cpu_count() or 1,
        "machine": machine(),
        "version": xite_fast.__version__,
        "setting": f"spot check, {repeats} runs paired with the triad (--spot)",
    }
    for r in (4, 8, 16):
        W = np.linalg.qr(rng.standard_normal((D, r)))[0].astype(np.float32)
        for mode in ("interp", "proj", "comp", "shift"):
            out = aligned_empty((N, D))
            out[:] = 0
            st, tt, Wt = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(W)
            o = torch.empty_like(st)
            o.zero_()
            at = {
                "r": r,
                "mode": mode,
                "loadavg": round(os.getloadavg()[0], 2),
                "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            ours = {
                "ours (cpu, out=)": (lambda: lda_project_interp(s, t, W, 0.4, mode, out=out), ("triad",)),  # noqa: B023
                "ours (cpu)": (lambda: lda_project_interp(s, t, W, 0.4, mode), ("triad", "triad_fresh")),  # noqa: B023
                "torch addmm (out=)": (
                    lambda: torch_addmm(st, tt, Wt, 0.4, 0.6, mode, out=o),  # noqa: B023
                    ("triad",),
                ),
            }
            if mode != "interp":
                ours["ours (cpu avx2, out=)"] = (
                    lambda: _ours_simd(s, t, W, mode, out, "avx2"),  # noqa: B023
                    ("triad",),
                )
            res = {}
            for name, (fn, which) in ours.items():
                res[name] = paired_ratio(fn, {k: refs[k] for k in which}, repeats)
            tsec = res["torch addmm (out=)"][0]
            line = f"r={r:2d} {mode:6s}"
            for name, (sec, ratio) in res.items():
                row = {
                    **common,
                    **at,
                    "provider": name,
                    "median_ms": round(sec * 1e3, 1),
                    "throughput_gbps": round(nbytes / sec / 1e9, 1),
                    "pct_triad_bw": round(100 * ratio["triad"]),
                }
                line += f" | {name} {sec * 1e3:6.1f} ms {100 * ratio['triad']:4.0f}%"
                if "triad_fresh" in ratio:
                    row["pct_fresh_triad_bw"] = round(100 * ratio["triad_fresh"])
                    line += f" (fresh-triad {100 * ratio['triad_fresh']:4.0f}%)"
                if not name.startswith("torch"):
                    row["speedup_vs_best_torch"] = round(tsec / sec, 2)
                rows.append(row)
            print(line, flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke test)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--spot", action="store_true", help="only the spot check (N=200k, D=768, paired with the triad)"
    )
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    if args.spot:
        rows = spot(args.repeats or 9)
        if not args.no_csv:
            append_results("lda_project_interp", rows, RESULTS, shape_keys=("r",))
        return
    repeats = args.repeats or (3 if args.quick else 7)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    n = 20_000 if args.quick else 200_000
    # (N, T, D, r, modes, per-row lam); T > 1: token-level (N, T, D), lam broadcast over T
    cases = [
        (n, 1, 384, 4, ("proj", "shift"), False),
        (n, 1, 384, 16, ("proj",), False),
        (n, 1, 768, 4, ("interp", "proj", "comp", "shift"), False),
        (n, 1, 768, 16, ("proj", "comp", "shift"), False),
        (n, 1, 768, 16, ("proj",), True),
        (n // 100, 128, 384, 4, ("proj",), True),
    ]
    rng = np.random.default_rng(0)
    print(
        f"machine: {machine()}, threads={threads}, xite_fast {xite_fast.__version__}, torch "
        f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    hdr = (
        f"{'shape':>22} {'mode':>6} {'lam':>4} {'provider':>19} {'ms':>9} {'GB/s':>7} {'%bw':>5} "
        f"{'vs torch':>8} {'cpu ms':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    rows = []
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for N, T, D, r, modes, per_row in cases:
        shape = (N, D) if T == 1 else (N, T, D)
        s = rng.standard_normal(shape, dtype=np.float32)
        t = rng.standard_normal(shape, dtype=np.float32)
        W = np.linalg.qr(rng.standard_normal((D, r)))[0].astype(np.float32)
        lam_np = rng.uniform(0, 1, N).astype(np.float32) if per_row else 0.3
        out = aligned_empty(shape)
        tout = torch.empty((N * T, D))
        # bandwidth probe right before the case: the shared machine's load drifts during a run
        bw_cpp, bw_np = measure_bandwidth(N * T * D, 3)
        bw = bw_cpp if np.isfinite(bw_cpp) else bw_np
        load = os.getloadavg()[0]
        print(
            f"triad a=b+s*c on {3 * 4 * N * T * D / 1e9:.2f} GB: C++ {bw_cpp:.1f} GB/s, numpy {bw_np:.1f} "
            f"GB/s (load average {load:.1f})"
        )
        ts, tt, tW = (
            torch.from_numpy(s).reshape(-1, D),
            torch.from_numpy(t).reshape(-1, D),
            torch.from_numpy(W),
        )
        s2, t2 = s.reshape(-1, D), t.reshape(-1, D)
        if per_row:
            lam_rows = np.repeat(lam_np, T)[:, None]
            tlam, tg = torch.from_numpy(lam_rows), torch.from_numpy(1 - lam_rows)
            nlam, ng = lam_rows, 1 - lam_rows
        else:
            tlam, tg, nlam, ng = 0.3, 0.7, np.float32(0.3), np.float32(0.7)
        nbytes = 3 * s.nbytes
        for mode in modes:
            # name -> (function, args); no closures over loop variables
            providers = {
                "ours (cpu, out=)": (_ours, (s, t, W, lam_np, mode, out)),
                "ours (cpu)": (_ours, (s, t, W, lam_np, mode, None)),
                "torch naive": (torch_naive, (ts, tt, tW, tlam, tg, mode)),
                "torch addmm": (torch_addmm, (ts, tt, tW, tlam, tg, mode)),
                "torch addmm (out=)": (torch_addmm, (ts, tt, tW, tlam, tg, mode, tout)),
                "numpy": (numpy_formula, (s2, t2, W, nlam, ng, mode)),
            }
            # sanity: every provider computes the same thing
            ref = lda_project_interp(
                s[:64], t[:64], W, lam_np[:64] if per_row else lam_np, mode, backend="torch"
            )
            sl = slice(0, 64 * T)
            sub = (tlam[sl], tg[sl], nlam[sl], ng[sl]) if per_row else (tlam, tg, nlam, ng)
            for g in (torch_naive, torch_addmm):
                got = g(ts[sl], tt[sl], tW, sub[0], sub[1], mode).numpy()
                np.testing.assert_allclose(got.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4)
            got = numpy_formula(s2[sl], t2[sl], W, sub[2], sub[3], mode)
            np.testing.assert_allclose(got.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4)
            both = {
                name: median_time(functools.partial(fn, *a), repeats, cpu=True)
                for name, (fn, a) in providers.items()
            }
            times = {name: v[0] for name, v in both.items()}
            cpu_times = {name: v[1] for name, v in both.items()}
            np.testing.assert_allclose(
                out.reshape(-1, D)[: 64 * T].reshape(ref.shape), ref, atol=1e-4, rtol=1e-4
            )
            best_torch = min(v for k, v in times.items() if k.startswith("torch"))
            shape_s = "x".join(map(str, shape)) + f" r={r}"
            for name, sec in times.items():
                gbps = nbytes / sec / 1e9
                ratio = best_torch / sec
                print(
                    f"{shape_s:>22} {mode:>6} {'row' if per_row else 'sc':>4} {name:>19} {sec * 1e3:9.1f} "
                    f"{gbps:7.1f} {100 * gbps / bw:5.0f} {ratio:7.2f}x {cpu_times[name] * 1e3:9.1f}"
                )
                rows.append(
                    {
                        "timestamp": stamp,
                        "shape": "x".join(map(str, shape)),
                        "r": r,
                        "mode": mode,
                        "lam": "per_row" if per_row else "scalar",
                        "provider": name,
                        "median_ms": round(sec * 1e3, 3),
                        # CPU time over all threads: less sensitive to other processes on a shared box
                        "median_cpu_ms": round(cpu_times[name] * 1e3, 3),
                        "throughput_gbps": round(gbps, 2),
                        "pct_triad_bw": round(100 * gbps / bw, 1),
                        "speedup_vs_best_torch": round(ratio, 3),
                        "triad_gbps": round(bw, 2),
                        "threads": threads,
                        "loadavg": round(load, 1),
                        "machine": machine(),
                        "version": xite_fast.__version__,
                    }
                )
        print()
        del s, t, out, ts, tt, tout
    if not args.no_csv:
        append_results("lda_project_interp", rows, RESULTS, shape_keys=("r",))


if __name__ == "__main__":
    main()
