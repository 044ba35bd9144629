"""Experiment driver: leak-free splits, an end-to-end tiny run (tables + resume), argument errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.driver import STAGE1_ROWS, VARIANTS, alignment_pairs, load_splits, main, row_names
from experiments.tables import read_csv, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def test_splits_do_not_leak_test_conversations():
    d = load_splits(["korean", "japanese"], 0.25, 0)
    from xite_fast.data.chatterbot import chatterbot_topics

    assert d["topics"] == chatterbot_topics("english", "korean", "japanese")
    en_train = set(d["english"]["train_conv"])
    for lang in ("korean", "japanese"):
        test_conv = set(d[lang]["test_conv"])
        pool_conv = set(d[lang]["pool_conv"])
        # no test sentence's English twin (same conversation) is trained on, and the pool is disjoint
        assert not (en_train & test_conv)
        assert not (pool_conv & test_conv)
        assert not (pool_conv & set(d["english"]["test_conv"]))
        texts, labels = d[lang]["test"]
        assert len(texts) == len(labels) > 100
        assert labels.min() >= 0 and labels.max() < len(d["topics"])
        # labels are topics: every test label's topic name matches its conversation id
        assert all(
            d["topics"][y] == c.split("/")[0] for y, c in zip(labels, d[lang]["test_conv"], strict=True)
        )
    n_en = len(d["english"]["train"][0]) + len(d["english"]["test"][0])
    assert 0.6 < len(d["english"]["train"][0]) / n_en < 0.9


def test_end_to_end_tiny_run_and_resume(tmp_path, tiny_model_dir):
    out = tmp_path / "exp"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--hidden-layer",
        "1",
        "--langs",
        "korean",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--variants",
        "self-train",
        "xite-hidden-lda",
        "xite-input",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert main(argv) == 0
    runs = [json.loads(x) for x in (tmp_path / "exp_runs.jsonl").read_text().splitlines()]
    assert [r["key"] for r in runs] == [
        "s0/zero-shot",
        "s0/korean/self-train",
        "s0/korean/xite-hidden-lda",
        "s0/korean/xite-input",
    ]
    rows = summarize(read_csv(f"{out}.csv"))
    assert [r["variant"] for r in rows] == ["zero-shot", "self-train", "xite-hidden-lda", "xite-input"]
    for r, run in zip(rows, runs, strict=True):
        tgt = run["targets"]["korean"] if r["variant"] == "zero-shot" else run["target"]
        assert r["acc_mean"] == tgt["accuracy"]  # the CSV keeps every digit
        assert r["_f1"] == [tgt["macro_f1"]] and r["seeds"] == "0"
    # every run is on the Trainer engine and logged its training losses
    assert all(r["engine"] == "trainer" and np.isfinite(r["loss_history"]["train_loss"]) for r in runs)
    # XITE rows trained on the transferred labels of matched sources; diag is recorded
    assert 0.0 <= runs[2]["diag"]["match_label_acc"] <= 1.0
    assert runs[2]["config"]["lda"] and runs[2]["config"]["placement"] == "hidden"
    md = (tmp_path / "exp.md").read_text()
    assert "truncated to its first 2 layers" in md and "| korean | xite-input |" in md
    # rerun: everything is cached, no new runs, same table
    assert main(argv) == 0
    assert len((tmp_path / "exp_runs.jsonl").read_text().splitlines()) == 4
    assert summarize(read_csv(f"{out}.csv")) == rows


def test_matched_only_ablation_trains_on_matched_labels(tmp_path, tiny_model_dir, monkeypatch):
    """The lambda = 0 row fine-tunes on the XITE-matched labels (those the xite rows use), no mixing;
    self-train uses the stage-1 pseudo-labels."""
    import xite_fast.train.trainer as tr

    seen = {}
    real = tr.XiteTrainer

    class Spy(real):
        def __init__(self, model, args=None, **kw):
            if "/korean/" in args.output_dir:
                ds = kw["train_dataset"]
                seen[args.output_dir.rsplit("/", 1)[-1]] = (
                    [int(x) for x in ds.columns["labels"]],
                    "src_input_ids" in ds.columns,
                    model.xite.placement,
                )
            super().__init__(model, args, **kw)

    monkeypatch.setattr(tr, "XiteTrainer", Spy)  # the driver imports it at call time
    argv = [
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--hidden-layer",
        "1",
        "--langs",
        "korean",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--variants",
        "self-train",
        "matched-only",
        "xite-sentence",
        "--out",
        str(tmp_path / "exp"),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert main(argv) == 0
    assert set(seen) == {"self-train", "matched-only", "xite-sentence"}
    matched, src, placement = seen["matched-only"]
    assert placement == "none" and not src  # no source texts: nothing to mix with
    assert matched == seen["xite-sentence"][0]  # the transferred labels
    runs = {r["variant"]: r for r in map(json.loads, (tmp_path / "exp_runs.jsonl").read_text().splitlines())}
    assert runs["matched-only"]["labels"] == "matched" and runs["self-train"]["labels"] == "pseudo"
    # the stage-1 pseudo-labels and the matched labels are different label sets on this pool
    assert seen["self-train"][0] != matched


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--variants / --aligned-variants must be from"):
        main(["--variants", "xite-magic", "--out", str(tmp_path / "x"), "--limit", "10"])
    with pytest.raises(SystemExit, match="--freeze-layers must be in"):
        main(["--num-layers", "2", "--freeze-layers", "3", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--stage1-epochs must be > 0"):
        main(["--stage1-epochs", "0", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="not in chatterbot|unknown|available"):
        load_splits(["klingon"], 0.25, 0)
    assert set(VARIANTS) >= {"self-train", "xite-sentence-lda", "xite-input-lda", "xite-hidden-lda"}


def test_alignment_pairs_are_train_only_and_structure_matched():
    from xite_fast.data.chatterbot import WELL_ALIGNED_TOPICS, load_chatterbot, split_by_conversation

    pairs = alignment_pairs(["korean", "japanese"], 0.25, 0)
    d = load_splits(["korean", "japanese"], 0.25, 0)
    en_test = set(d["english"]["test"][0])
    en_train = set(d["english"]["train"][0])
    for lang in ("korean", "japanese"):
        assert len(pairs[lang]) > 200
        tgt_test = set(d[lang]["test"][0])
        pool = set(d[lang]["pool"][0])
        assert all(e in en_train and t in pool for e, t in pairs[lang])
        # texts shared by train and test conversations (e.g. "Hello") may occur; none comes from a test twin
        assert sum(e in en_test and e not in en_train for e, _ in pairs[lang]) == 0
        assert sum(t in tgt_test and t not in pool for _, t in pairs[lang]) == 0
    # Korean: matched topics are exactly WELL_ALIGNED_TOPICS; the pair is the positional twin
    ko = load_chatterbot("korean", topics=list(WELL_ALIGNED_TOPICS))
    en = {
        (r["conv_id"], r["turn"]): r["text"]
        for r in load_chatterbot("english", topics=list(WELL_ALIGNED_TOPICS))
    }
    tr, _ = split_by_conversation(ko, 0.25, 0)
    assert pairs["korean"] == [(en[(r["conv_id"], r["turn"])], r["text"]) for r in tr]
    assert len(alignment_pairs(["korean"], 0.25, 0, "all")["korean"]) > len(pairs["korean"])


def test_row_keys_for_ot_and_ear():
    from experiments.driver import ExperimentConfig

    args = ExperimentConfig(
        variants=["self-train", "xite-sentence"],
        stage1_variants=["plain", "ot", "ear"],
        aligned_variants=["xite-sentence"],
    )
    assert STAGE1_ROWS == {"plain": "zero-shot", "ot": "ot-align", "ear": "ear"}
    assert row_names(args) == [
        "zero-shot",
        "self-train",
        "xite-sentence",
        "ot-align",
        "xite-sentence+ot",
        "ear",
        "xite-sentence+ear",
    ]


def test_end_to_end_ot_and_ear_rows(tmp_path, tiny_model_dir):
    out = tmp_path / "exp"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--hidden-layer",
        "1",
        "--langs",
        "korean",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--variants",
        "self-train",
        "--stage1-variants",
        "ot",
        "ear",
        "--aligned-variants",
        "xite-sentence",
        "--align-epochs",
        "1",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert main(argv) == 0
    runs = {
        json.loads(x)["key"]: json.loads(x) for x in (tmp_path / "exp_runs.jsonl").read_text().splitlines()
    }
    assert list(runs) == [
        "s0/ot-align",
        "s0/korean/xite-sentence+ot",
        "s0/ear",
        "s0/korean/xite-sentence+ear",
    ]
    al = runs["s0/ot-align"]["align"]
    assert al["pairs"]["korean"] > 100 and al["steps"] > 0 and al["config"]["freeze_layers"] == 1
    assert runs["s0/ear"]["ear"]["attention_layer"] == 2  # 6 > 2 layers: the first trainable one
    assert runs["s0/korean/xite-sentence+ot"]["stage1"] == "ot-align"
    rows = summarize(read_csv(f"{out}.csv"))
    assert [r["variant"] for r in rows] == ["ot-align", "xite-sentence+ot", "ear", "xite-sentence+ear"]
    assert rows[0]["acc_mean"] == pytest.approx(runs["s0/ot-align"]["targets"]["korean"]["accuracy"])
    # --tables-only never trains and reproduces the table
    assert main([*argv, "--tables-only"]) == 0
    assert len((tmp_path / "exp_runs.jsonl").read_text().splitlines()) == 4
    assert summarize(read_csv(f"{out}.csv")) == rows
