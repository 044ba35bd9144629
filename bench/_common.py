"""Helpers shared by the bench scripts: machine description, the benchmark lock, and THE writer of benchmark
results (:func:`append_results`, one CSV schema for every op: :data:`BENCH_FIELDS`)."""

from __future__ import annotations

import csv
import fcntl
import os
import platform
from pathlib import Path
from typing import IO

LOCK_PATH = "/tmp/xite_bench.lock"


def cpu_model() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def machine() -> str:
    """CPU model and core count, e.g. ``AMD EPYC x2 (x86_64, Linux)``."""
    return f"{cpu_model()} x{os.cpu_count()} ({platform.machine()}, {platform.system()})"


def bench_lock(enabled: bool = True) -> IO | None:
    """Hold LOCK_PATH (flock) so two benchmarks never run at once; close the handle to release."""
    if not enabled:
        return None
    lock = open(LOCK_PATH, "w")
    print(f"waiting for {LOCK_PATH} ...", flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def load_average() -> str:
    """1/5/15-minute load averages as ``"0.42/0.61/0.70"`` (recorded with every figure)."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def fma_peak_gflops(
    repeats: int = 5, iters: int = 20_000_000, cpu_iters: int = 200_000_000
) -> dict[str, float]:
    """Measured fp32 FMA peak of this CPU, all OpenMP threads.

    Runs ``xite_fast._C.cosine_topk_fma_peak`` (12 register FMA chains per thread, no memory
    operands). ``peak``: wall-clock GFLOP/s, best of ``repeats`` short runs per ISA (other jobs on a
    shared host only ever lower it). ``cpu_peak``: FLOP per CPU-second of the process x threads
    (the rate while the threads run, insensitive to other jobs), the median of 3 long runs
    (``cpu_iters``, ~0.7 s each): CPU time is accounted in ticks, so the best of short runs is
    biased upwards (it read 140 GFLOP/s per 117-GFLOP/s core under load). Returns
    ``{"avx2": ..., "avx512": ... (when present), "peak": ..., "cpu_peak": ...}``; empty without
    the extension. On AVX512_BF16 CPUs also ``"bf16_peak"`` / ``"bf16_cpu_peak"``: the same for
    ``vdpbf16ps`` chains (64 FLOP per instruction), the denominator of the bf16 kernel's "% of bf16
    peak" (``peak`` stays the fp32 figure).
    """
    import statistics
    import time

    import xite_fast

    ext = xite_fast._backend.load_extension()
    if ext is None or not hasattr(ext, "cosine_topk_fma_peak"):
        return {}
    threads = ext.max_threads()
    isas = ["avx2"] + (["avx512"] if ext.cpu_supports_avx512() else [])
    out: dict[str, float] = {
        isa: max(ext.cosine_topk_fma_peak(isa, 0, iters) for _ in range(repeats)) for isa in isas
    }
    out["peak"] = max(out.values())
    cpu_rates = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        g = ext.cosine_topk_fma_peak(isas[-1], 0, cpu_iters)
        cpu_rates.append(g * (time.perf_counter() - t0) / (time.process_time() - c0) * threads)
    out["cpu_peak"] = statistics.median(cpu_rates)
    if hasattr(ext, "cpu_supports_avx512_bf16") and ext.cpu_supports_avx512_bf16():
        out["bf16_peak"] = max(ext.cosine_topk_fma_peak("avx512_bf16", 0, iters) for _ in range(repeats))
        cpu_rates = []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            g = ext.cosine_topk_fma_peak("avx512_bf16", 0, cpu_iters // 2)
            cpu_rates.append(g * (time.perf_counter() - t0) / (time.process_time() - c0) * threads)
        out["bf16_cpu_peak"] = statistics.median(cpu_rates)
    return out


def int8_peak_gops(repeats: int = 5, iters: int = 20_000_000) -> float | None:
    """Measured int8 peak (GOP/s, all OpenMP threads): 12 register ``vpdpbusd`` chains per thread (128 OP per
    zmm instruction), best of ``repeats``; None without AVX512_VNNI or an extension that lacks it. The
    denominator of the int8 encoder's "% of the int8 peak" (bench_encode.py)."""
    import xite_fast

    ext = xite_fast._backend.load_extension()
    if ext is None or not hasattr(ext, "cosine_topk_fma_peak"):
        return None
    try:
        return max(ext.cosine_topk_fma_peak("avx512_vnni", 0, iters) for _ in range(repeats))
    except (ValueError, RuntimeError):  # no AVX512_VNNI here, or an older build
        return None


# THE benchmark-results schema (every op, every provider; like Liger-Kernel's all_benchmark_data.csv): one row
# per measured value. op: what is measured (cosine_topk, encode, augment_scale, lda_project_interp, sinkhorn);
# provider: ours or a peer; shape: the problem size; setting: how the provider / the run was configured
# (non-numeric facts, "k=v; k=v"); metric: what the value is, its unit in the name (median_s, gflops,
# throughput_sent_s, pct_of_peak, ...); repeats / threads; cpu, load (load averages), versions, commit, date.
BENCH_FIELDS = [
    "op",
    "provider",
    "shape",
    "setting",
    "metric",
    "value",
    "repeats",
    "threads",
    "cpu",
    "load",
    "versions",
    "commit",
    "date",
]
# the columns of a measurement that name it rather than being one of its values (old names map to the
# schema's)
_IDENTITY = {
    "op": "op",
    "provider": "provider",
    "shape": "shape",
    "setting": "setting",
    "repeats": "repeats",
    "threads": "threads",
    "machine": "cpu",
    "cpu": "cpu",
    "load": "load",
    "load_avg": "load",
    "loadavg": "load",
    "version": "versions",
    "versions": "versions",
    "commit": "commit",
    "date": "date",
    "timestamp": "date",
}
RESULTS = Path(__file__).resolve().parent / "results"


def _number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float):
        return True
    try:
        float(v)
        return str(v).strip().lower() not in ("nan", "inf", "-inf", "")
    except (TypeError, ValueError):
        return False


def commit() -> str:
    """Short HEAD of the checkout, ``+dirty`` with uncommitted changes to tracked files ("" outside git)."""
    import subprocess

    def git(*a: str) -> str:
        r = subprocess.run(
            ["git", *a], cwd=RESULTS.parent.parent, capture_output=True, text=True, check=False
        )
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+dirty" if head and git("status", "--porcelain", "--untracked-files=no") else "")


def long_rows(op: str, row: dict, shape_keys: tuple[str, ...] = ()) -> list[dict]:
    """One measurement (a flat dict as the scripts build it) as :data:`BENCH_FIELDS` rows.

    Identity columns (:data:`_IDENTITY`) are copied to every row; ``shape_keys`` columns join the shape
    (``shape,k=v``); every other numeric column is one metric row (its text kept as written); a JSON object of
    numbers (``{"encode": 432.3, ...}``) or a ``a/b/c`` list of numbers gives one metric per entry
    (``timing_s.encode``, ``ratio_vs_faiss_per_repeat.1``); other text joins ``setting``.
    """
    import json

    base = {f: "" for f in BENCH_FIELDS}
    base["op"] = op
    setting, metrics, shape = [], [], []
    for k, v in row.items():
        if v is None or v == "":
            continue
        if k in shape_keys:
            shape.append(f"{k}={v}")
        elif k in _IDENTITY:
            base[_IDENTITY[k]] = str(v)
            continue
        if k in shape_keys:
            continue
        if _number(v):
            metrics.append((k, v))
            continue
        text = str(v)
        parsed = None
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        if isinstance(parsed, dict) and parsed and all(_number(x) for x in parsed.values()):
            metrics += [(f"{k}.{n}", x) for n, x in parsed.items()]
        elif "/" in text and all(_number(x) for x in text.split("/")):
            metrics += [(f"{k}.{i}", x.strip()) for i, x in enumerate(text.split("/"), 1)]
        else:
            setting.append(f"{k}={text}")
    if setting:
        base["setting"] = "; ".join(x for x in (base["setting"], *setting) if x)
    base["shape"] = ",".join(x for x in (base["shape"], *shape) if x)
    return [{**base, "metric": k, "value": v} for k, v in metrics]


def append_results(
    op: str,
    rows: list[dict],
    path: str | os.PathLike | None = None,
    *,
    shape_keys: tuple[str, ...] = (),
    dry_run: bool = False,
) -> list[dict]:
    """THE writer of benchmark results: ``rows`` (one flat dict per measurement) appended to
    ``bench/results/<op>.csv`` (or ``path``) in the :data:`BENCH_FIELDS` schema, through :func:`long_rows`.

    ``commit`` and ``date`` are filled when a row has none. ``dry_run``: return the rows, write nothing.
    Raises ValueError when ``path`` exists with another header (the file was not converted).
    """
    import time

    path = Path(path) if path is not None else RESULTS / f"{op}.csv"
    fill = {"commit": commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = [
        {**r, **{k: v for k, v in fill.items() if not r[k]}}
        for row in rows
        for r in long_rows(op, row, shape_keys)
    ]
    if dry_run:
        return out
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != BENCH_FIELDS:
            raise ValueError(f"{path} has the columns {header}, not the benchmark schema {BENCH_FIELDS}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            csv.DictWriter(f, fieldnames=BENCH_FIELDS, lineterminator="\n").writeheader()
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=BENCH_FIELDS, lineterminator="\n").writerows(out)
    print(f"wrote {len(out)} rows ({len(rows)} measurements) to {path}")
    return out
