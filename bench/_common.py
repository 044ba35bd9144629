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


def append_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append ``rows`` to ``path``, writing the header when the file is new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")
