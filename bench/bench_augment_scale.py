"""Scale benchmark of ``xite-fast augment`` end to end: wall time per stage, peak RSS, 1M x 1M extrapolation.

Builds a fixed-seed corpus from the real sentences of the bundled chatterbot data (English labelled
source; a target mixing several other languages, with gold labels so the report also has the
label-transfer accuracy), then runs the CLI in a subprocess exactly as a user would::

    xite-fast augment --source src.jsonl --target tgt.jsonl --out DIR [--ray ADDR] [extra options]

Reads the per-stage wall times from ``DIR/timings.json`` (``timing_s``), samples the RSS of the CLI
process tree (driver + children, e.g. Ray workers) every 0.2 s for the peak, and measures the matching
kernel's rate (``cosine_topk`` of the run's own stored target embeddings against its source
embeddings, tiled when the run is too small to be compute-bound) to split the match stage into its
N x M part and its linear part.

Corpus: each row is one or two base sentences of the same language and topic (the label is the
topic), drawn with ``numpy.random.default_rng(seed)``; two-sentence rows give enough distinct rows for
hundreds of thousands (English has 1,864 base sentences). Rows are therefore longer than chatterbot's
(the CSV records mean characters per row).

Extrapolation to ``--extrapolate`` rows per side (default 1M x 1M): index and encode scale with the
rows, the LDA fit with min(rows, ``--lda-max-rows``), the match kernel with N x M, the rest of the
match stage with the target rows.

Usage::

    .venv/bin/python bench/bench_augment_scale.py --quick            # 20k x 20k
    .venv/bin/python bench/bench_augment_scale.py                    # 200k x 200k (~1 h encoding on 2 cores)
    .venv/bin/python bench/bench_augment_scale.py --n-source 50000 --n-target 50000 --ray local

Holds ``/tmp/xite_bench.lock``; appends a row to ``bench/results/augment_scale.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import append_results, bench_lock, load_average, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE_LANG = "english"
TARGET_LANGS = ("korean", "japanese", "italian", "ukrainian", "chinese")


def _base(lang: str) -> dict[str, list[str]]:
    """Distinct sentences of one chatterbot language grouped by topic (label), in file order."""
    from xite_fast.data.chatterbot import load_chatterbot

    by_label: dict[str, list[str]] = {}
    for r in load_chatterbot(lang):
        texts = by_label.setdefault(r["label"], [])
        if r["text"].strip() and r["text"] not in texts:
            texts.append(r["text"])
    return by_label


def build_rows(langs: list[str], n: int, seed: int, pair_prob: float = 0.7) -> list[dict]:
    """n records {"text", "label"}: one or two same-topic sentences of one of ``langs`` (round robin)."""
    rng = np.random.default_rng(seed)
    bases = [_base(lang) for lang in langs]
    labels = [sorted(b) for b in bases]
    rows = []
    for i in range(n):
        b, labs = bases[i % len(bases)], labels[i % len(bases)]
        label = labs[int(rng.integers(len(labs)))]
        pool = b[label]
        text = pool[int(rng.integers(len(pool)))]
        if rng.random() < pair_prob:
            text = f"{text} {pool[int(rng.integers(len(pool)))]}"
        rows.append({"text": text, "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


class TreeRSS:
    """Peak of the summed RSS of a process and its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.wait(self.interval):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def _cli() -> list[str]:
    """argv prefix running the ``xite-fast`` console script declared in pyproject.toml."""
    m = re.search(r'^xite-fast\s*=\s*"([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if not m:
        raise SystemExit("pyproject.toml declares no xite-fast console script")
    module, func = m.groups()
    return [sys.executable, "-c", f"import sys; from {module} import {func} as m; sys.exit(m(sys.argv[1:]))"]


def kernel_rate(out: Path, k: int, min_flop: float = 2e11) -> tuple[float, int, str]:
    """GFLOP/s of cosine_topk(target embeddings, source embeddings, k) on the run's own stores (best of 2).

    When the run is too small for the call to be compute-bound (< ``min_flop``), the rate is measured
    on the stored target rows tiled against the source rows tiled up to that size instead (same
    vectors, same k). Returns (GFLOP/s, d, what was timed).
    """
    from xite_fast.encode.store import EmbeddingStore
    from xite_fast.ops.cosine_topk import cosine_topk

    src = np.ascontiguousarray(EmbeddingStore(out / "source_emb").to_memmap(), dtype=np.float32)
    tgt = np.ascontiguousarray(EmbeddingStore(out / "target_emb").to_memmap(), dtype=np.float32)
    d = src.shape[1]
    what = "the run's stores"
    if 2.0 * len(src) * len(tgt) * d < min_flop:
        reps_t = max(1, int(np.ceil(4000 / len(tgt))))
        tgt = np.tile(tgt, (reps_t, 1))[:4000]
        reps_s = max(1, int(np.ceil(min_flop / (2.0 * len(tgt) * d * len(src)))))
        src = np.tile(src, (reps_s, 1))
        what = f"the run's vectors tiled to {len(tgt)} x {len(src)}"
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        cosine_topk(tgt, src, min(k, len(src)), backend="cpu")
        best = min(best, time.perf_counter() - t0)
    return 2.0 * len(src) * len(tgt) * d / best / 1e9, d, what


def extrapolate(
    timing: dict[str, float], n_src: int, n_tgt: int, target: int, gflops: float, d: int, lda_max_rows: int
) -> dict[str, float]:
    """Seconds per stage at ``target`` x ``target`` rows from this run's stage times.

    The match stage is split into the kernel's share (2 N M d FLOP at the measured ``gflops``), which
    scales with N x M, and the rest (reading shards, label transfer, interpolation, writing), which
    scales with the target rows.
    """
    rows, rows_t = n_src + n_tgt, 2 * target
    out = {}
    for stage, t in timing.items():
        if stage.startswith("match"):
            quad = min(t, 2.0 * n_src * n_tgt * d / gflops / 1e9)
            out[stage] = 2.0 * target * target * d / gflops / 1e9 + (t - quad) * target / n_tgt
        elif stage == "lda":
            out[stage] = t * min(target, lda_max_rows) / max(1, min(max(n_src, n_tgt), lda_max_rows))
        else:  # index, encode, anything linear in the rows read
            out[stage] = t * rows_t / rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-source", type=int, default=None, help="source rows (default 200000; --quick 20000)")
    ap.add_argument("--n-target", type=int, default=None, help="target rows (default 200000; --quick 20000)")
    ap.add_argument("--quick", action="store_true", help="20k x 20k")
    ap.add_argument("--target-langs", default=",".join(TARGET_LANGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workdir", default=None, help="corpus + run directory (default /tmp/xite_scale_<N>x<M>)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--ray", default=None, help="pass --ray ADDRESS to the CLI")
    ap.add_argument("--k", type=int, default=8, help="--k of the CLI (used with --vote weighted)")
    ap.add_argument("--lda-max-rows", type=int, default=50_000)
    ap.add_argument("--extrapolate", type=int, default=1_000_000, help="rows per side of the extrapolation")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "augment_scale.csv"))
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--no-lock", action="store_true")
    ap.add_argument(
        "extra", nargs=argparse.REMAINDER, help="after --: more CLI options, e.g. -- --num-layers 2"
    )
    args = ap.parse_args(argv)
    n_src = args.n_source or (20000 if args.quick else 200000)
    n_tgt = args.n_target or (20000 if args.quick else 200000)
    extra = [a for a in args.extra if a != "--"]
    langs = args.target_langs.split(",")
    work = Path(args.workdir or f"/tmp/xite_scale_{n_src}x{n_tgt}")
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    src_rows = build_rows([SOURCE_LANG], n_src, args.seed)
    tgt_rows = build_rows(langs, n_tgt, args.seed + 1)
    src, tgt, out = work / "source.jsonl", work / "target.jsonl", work / "run"
    write_jsonl(src, src_rows)
    write_jsonl(tgt, tgt_rows)
    uniq_s, uniq_t = len({r["text"] for r in src_rows}), len({r["text"] for r in tgt_rows})
    chars = float(np.mean([len(r["text"]) for r in src_rows + tgt_rows]))
    print(
        f"corpus: {n_src} {SOURCE_LANG} source rows ({uniq_s} distinct), {n_tgt} target rows in {langs} "
        f"({uniq_t} distinct), {chars:.0f} chars/row, built in {time.perf_counter() - t0:.1f} s"
    )
    if out.exists():
        shutil.rmtree(out)  # a fresh run every time (the CLI would otherwise resume)

    lock = bench_lock(not args.no_lock)
    load0 = load_average()
    cmd = [
        *_cli(),
        "augment",
        "--source",
        str(src),
        "--target",
        str(tgt),
        "--out",
        str(out),
        "--k",
        str(args.k),
        "--lda-max-rows",
        str(args.lda_max_rows),
        *extra,
    ]
    if args.ray:
        cmd += ["--ray", args.ray]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    print("running:", " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    rss = TreeRSS(proc.pid)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    peak_tree = rss.stop()
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # largest single process
    load1 = load_average()
    if rc != 0:
        raise SystemExit(f"xite-fast augment exited with {rc}")
    report = json.loads((out / "report.json").read_text())
    timing = {k: float(v) for k, v in json.loads((out / "timings.json").read_text())["timing_s"].items()}
    gflops, dim, timed = kernel_rate(out, args.k)
    if lock is not None:
        lock.close()

    big = args.extrapolate
    est = extrapolate(timing, n_src, n_tgt, big, gflops, dim, args.lda_max_rows)
    print(f"\n{n_src} x {n_tgt} (d={dim}); load {load0} -> {load1}; {machine()}")
    print(f"{'stage':18s} {'seconds':>9s} {'rows/s':>9s} {f'est. {big:,} x {big:,}':>22s}")
    for stage, t in timing.items():
        print(
            f"{stage:18s} {t:9.1f} {(n_src + n_tgt) / t if t else float('nan'):9.0f} "
            f"{est[stage] / 3600:19.2f} h"
        )
    print(f"{'total (CLI wall)':18s} {wall:9.1f} {'':9s} {sum(est.values()) / 3600:19.2f} h")
    print(
        f"matching kernel alone: {gflops:.0f} GFLOP/s on {timed} "
        f"({2.0 * n_src * n_tgt * dim / gflops / 1e9:.2f} s of the match stage at this size); "
        f"peak RSS {peak_tree / 2**30:.2f} GiB (process tree), {peak_child / 2**30:.2f} GiB (largest process)"
    )
    for key in ("n_synthetic", "accuracy", "label_accuracy"):
        if key in report:
            print(f"report {key}: {report[key]}")
    if not args.no_csv:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        append_results(
            "augment_scale",
            [
                dict(
                    provider="xite_fast",
                    date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    n_source=n_src,
                    n_target=n_tgt,
                    target_langs="+".join(langs),
                    distinct_rows=uniq_s + uniq_t,
                    chars_per_row=f"{chars:.1f}",
                    cli_options=" ".join(cmd[cmd.index("augment") + 7 :]),
                    wall_s=f"{wall:.1f}",
                    timing_s=json.dumps(timing, sort_keys=True),
                    kernel_gflops=f"{gflops:.1f}",
                    peak_rss_gib=f"{peak_tree / 2**30:.3f}",
                    peak_rss_largest_gib=f"{peak_child / 2**30:.3f}",
                    extrapolated_rows=big,
                    extrapolated_s=json.dumps({k: round(v) for k, v in est.items()}, sort_keys=True),
                    extrapolated_total_h=f"{sum(est.values()) / 3600:.2f}",
                    load_avg=f"{load0} .. {load1}",
                    machine=machine(),
                    commit=commit,
                )
            ],
            args.csv,
            shape_keys=(
                "n_source",
                "n_target",
                "target_langs",
                "distinct_rows",
                "chars_per_row",
                "extrapolated_rows",
            ),
        )
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
