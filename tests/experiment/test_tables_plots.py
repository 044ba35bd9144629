"""The experiment tables' plots: a PNG per task from a runs file (``--tables-only``), the values they draw,
and the hand-written sections of an existing table file surviving a regeneration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.driver import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _runs(
    path, langs=("korean", "japanese"), seeds=(0, 1, 2), variants=("matched-only", "oracle")
) -> list[dict]:
    """A tiny runs file as the driver writes it: one zero-shot record per seed, one per (seed, lang,
    variant)."""
    rng = np.random.default_rng(0)
    recs = []
    for s in seeds:
        recs.append(
            {
                "key": f"s{s}/zero-shot",
                "seed": s,
                "variant": "zero-shot",
                "seconds": 10.0,
                "english": {"accuracy": 0.8, "macro_f1": 0.8},
                "targets": {
                    lang: {"accuracy": float(rng.uniform(0.5, 0.6)), "macro_f1": 0.5} for lang in langs
                },
            }
        )
        for lang in langs:
            sim = rng.uniform(0.1, 0.9, 200)
            diag = {
                "match_label_acc": 0.7,
                "pseudo_label_acc": 0.6,
                "match_score_mean": float(sim.mean()),
                "match_center": True,
                "sim": sim.round(4).tolist(),
                "sim_ok": (rng.random(200) < sim).astype(int).tolist(),
            }
            for v in variants:
                recs.append(
                    {
                        "key": f"s{s}/{lang}/{v}",
                        "seed": s,
                        "lang": lang,
                        "variant": v,
                        "stage1": "zero-shot",
                        "seconds": 5.0,
                        "english": {"accuracy": 0.79, "macro_f1": 0.79},
                        "target": {"accuracy": float(rng.uniform(0.6, 0.7)), "macro_f1": 0.6},
                        "diag": diag,
                    }
                )
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def _argv(out, *extra) -> list[str]:
    return [
        "--task",
        "pairs",
        "--targets",
        "korean",
        "japanese",
        "--seeds",
        "0",
        "1",
        "2",
        "--variants",
        "matched-only",
        "oracle",
        "--tables-only",
        "--out",
        str(out),
        *extra,
    ]


def test_tables_only_writes_valid_pngs_and_keeps_hand_written_sections(tmp_path):
    import matplotlib.image

    out = tmp_path / "toy"
    _runs(tmp_path / "toy_runs.jsonl")
    (tmp_path / "toy.md").write_text("# old table\n\n| a |\n\n## How this run was reduced\n\nkept text\n")
    assert main(_argv(out)) == 0
    for name in ("toy.png", "toy_sim.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        img = matplotlib.image.imread(tmp_path / name)  # decodes: a valid PNG
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    md = (tmp_path / "toy.md").read_text()
    assert "# old table" not in md and "| korean | oracle |" in md  # regenerated
    assert md.endswith("## How this run was reduced\n\nkept text\n")  # the hand-written part survives
    assert "`toy.png`" in md and "`toy_sim.png`" in md
    assert main(_argv(out)) == 0  # idempotent: the kept part is not duplicated
    assert (tmp_path / "toy.md").read_text().count("## How this run was reduced") == 1


def test_plots_draw_seed_mean_std_and_the_stage1_match_similarities(tmp_path, monkeypatch):
    import experiments.transfer as transfer

    got: dict = {}
    monkeypatch.setattr(
        transfer, "plot_accuracy", lambda summary, path, title: got.setdefault("acc", summary)
    )
    monkeypatch.setattr(
        transfer, "plot_similarity", lambda analyses, path, title, xlabel="": got.setdefault("sim", analyses)
    )
    recs = _runs(tmp_path / "toy_runs.jsonl", seeds=(0, 1))
    assert main(_argv(tmp_path / "toy", "--seeds", "0", "1")) == 0
    by = {(s["target"], s["row"]): s for s in got["acc"]}
    assert set(by) == {
        (lang, v) for lang in ("korean", "japanese") for v in ("zero-shot", "matched-only", "oracle")
    }
    for (lang, v), s in by.items():
        if v == "zero-shot":
            acc = [r["targets"][lang]["accuracy"] for r in recs if r["variant"] == v]
        else:
            acc = [r["target"]["accuracy"] for r in recs if r.get("lang") == lang and r["variant"] == v]
        assert s["acc"] == pytest.approx(np.mean(acc)) and s["acc_std"] == pytest.approx(np.std(acc, ddof=1))
    for lang in ("korean", "japanese"):
        want = [next(r["diag"] for r in recs if r.get("lang") == lang and r["seed"] == s) for s in (0, 1)]
        assert [a["sim"] for a in got["sim"][lang]] == [w["sim"] for w in want]  # one entry per seed
        assert [a["sim_ok"] for a in got["sim"][lang]] == [w["sim_ok"] for w in want]


def test_tables_only_without_runs_leaves_a_committed_study_alone(tmp_path, capsys):
    # a committed study keeps its CSV, not the runs files: --tables-only must not empty its table
    (tmp_path / "toy.md").write_text("# table\n\n| a |\n")
    (tmp_path / "toy.csv").write_text("task,language\n")
    assert main(_argv(tmp_path / "toy")) == 0
    assert (tmp_path / "toy.md").read_text() == "# table\n\n| a |\n"
    assert (tmp_path / "toy.csv").read_text() == "task,language\n"
    assert "tables left as they are" in capsys.readouterr().out
