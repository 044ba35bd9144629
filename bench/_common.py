"""Helpers shared by the bench scripts: machine description, the benchmark lock, CSV output."""

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


def fma_peak_gflops(repeats: int = 5, iters: int = 20_000_000, cpu_iters: int = 200_000_000) -> dict[str, float]:
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
    out: dict[str, float] = {isa: max(ext.cosine_topk_fma_peak(isa, 0, iters) for _ in range(repeats)) for isa in isas}
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


def append_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append ``rows`` to ``path``, writing the header when the file is new.

    When the rows bring columns the file lacks, the file is rewritten once with the union of the
    columns (old rows keep empty cells), so a CSV never holds rows shifted under the wrong header.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    for r in rows[1:]:
        fields += [f for f in r if f not in fields]
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            old = [dict(zip(header, r, strict=False)) for r in reader]
        if set(fields) - set(header):
            fields = header + [f for f in fields if f not in header]
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields, restval="")
                w.writeheader()
                w.writerows(old)
        else:
            fields = header
    else:
        with path.open("w", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writeheader()
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, restval="").writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")
