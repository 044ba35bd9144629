"""The sentiment and pairs tasks of the experiment driver: splits, table rows/columns, label sources."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.driver import TASK_VARIANTS, load_splits, main
from experiments.tables import read_csv, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def _spy_trainer(monkeypatch, marker: str) -> dict:
    """Record, per stage-2 run, the labels / source columns / placement its XiteTrainer trains on."""
    import xite_fast.train.trainer as tr

    seen: dict = {}
    real = tr.XiteTrainer

    class Spy(real):
        def __init__(self, model, args=None, **kw):
            if marker in args.output_dir:
                ds = kw["train_dataset"]
                seen[args.output_dir.rsplit("/", 1)[-1]] = {
                    "labels": [int(x) for x in ds.columns["labels"]],
                    "src": "src_input_ids" in ds.columns,
                    "placement": model.xite.placement,
                    "input_ids": [list(map(int, x)) for x in ds.columns["input_ids"]],
                }
            super().__init__(model, args, **kw)

    monkeypatch.setattr(tr, "XiteTrainer", Spy)  # the driver imports it at call time
    return seen


def test_sentiment_splits_are_disjoint_stratified_and_sized():
    d = load_splits(
        ["zh"], 0.25, 0, task="sentiment", en_size=300, en_test_size=200, pool_size=250, test_size=500
    )
    from xite_fast.data.bundled import load_bundled
    from xite_fast.data.sentiment import LABELS, split_pool_test

    assert d["topics"] == list(LABELS)
    assert len(d["english"]["train"][0]) == 300 and len(d["english"]["test"][0]) == 200
    assert len(d["zh"]["pool"][0]) == 250 and len(d["zh"]["test"][0]) == 500
    assert not set(d["zh"]["pool"][0]) & set(d["zh"]["test"][0])
    assert not set(d["english"]["train"][0]) & set(d["english"]["test"][0])
    # exactly split_pool_test's split, labels mapped through LABELS
    pool, test = split_pool_test(load_bundled("sentiment:zh").records, 500, 0, pool_size=250)
    assert d["zh"]["test"][0] == [r["text"] for r in test]
    assert d["zh"]["pool"][1].tolist() == [LABELS.index(r["label"]) for r in pool]
    assert d["zh"]["pool_pair"] is None and d["english"]["train_pair"] is None


def test_sentiment_task_rows_oracle_gold_and_matched_labels(tmp_path, tiny_model_dir, monkeypatch):
    seen = _spy_trainer(monkeypatch, "/zh/")
    out = tmp_path / "sent"
    argv = [
        "--task",
        "sentiment",
        "--targets",
        "zh",
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--hidden-layer",
        "1",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--en-size",
        "200",
        "--en-test-size",
        "100",
        "--pool-size",
        "200",
        "--test-size",
        "100",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert main(argv) == 0
    assert set(seen) == set(TASK_VARIANTS)
    d = load_splits(
        ["zh"], 0.25, 0, 40, task="sentiment", en_size=200, en_test_size=100, pool_size=200, test_size=100
    )
    gold = d["zh"]["pool"][1].tolist()
    assert seen["oracle"]["labels"] == gold and seen["oracle"]["placement"] == "none"
    assert not seen["oracle"]["src"] and not seen["matched-only"]["src"]
    assert seen["matched-only"]["labels"] == seen["xite-sentence"]["labels"]  # the transferred labels
    assert seen["xite-sentence"]["src"] and seen["xite-sentence"]["placement"] == "sentence"
    runs = {r["variant"]: r for r in map(json.loads, (tmp_path / "sent_runs.jsonl").read_text().splitlines())}
    assert runs["oracle"]["labels"] == "gold" and runs["matched-only"]["labels"] == "matched"
    # the recorded label-transfer accuracy is that of the labels matched-only trained on
    acc = float(np.mean(np.array(seen["matched-only"]["labels"]) == np.array(gold)))
    assert runs["matched-only"]["diag"]["match_label_acc"] == pytest.approx(acc)
    # the stage-2 estimate is recorded per cell: agreement of the matched labels with the stage-1 model's
    # pseudo-labels (self-train trained on those), over every pool row
    est = runs["matched-only"]["diag"]["estimate"]
    agree = float(np.mean(np.array(seen["matched-only"]["labels"]) == np.array(seen["self-train"]["labels"])))
    assert est["rows"] == len(gold) and est["agreement"] == pytest.approx(agree)
    # the vote of the 10 nearest English rows where the two disagree (library default k)
    assert est["neighbours"] == 10 and 0 <= est["vote_matched"] <= 1 and 0 <= est["vote_stage1"] <= 1
    assert est["predicted_gain"] == pytest.approx(
        (1 - est["agreement"]) * (est["vote_matched"] - est["vote_stage1"])
    )

    rows = summarize(read_csv(f"{out}.csv"))
    assert [r["variant"] for r in rows] == ["zero-shot", *TASK_VARIANTS]
    by = {r["variant"]: r for r in rows}
    zs, orc = by["zero-shot"]["acc_mean"], by["oracle"]["acc_mean"]
    assert by["zero-shot"]["en_acc_mean"] == pytest.approx(runs["zero-shot"]["english"]["accuracy"])
    assert all(r["en_before"] == by["zero-shot"]["en_acc_mean"] for r in rows)
    for r in rows:
        if orc != zs:
            want = (r["acc_mean"] - zs) / (orc - zs)
            assert r["gap_closed"] == pytest.approx(want)
    md = (tmp_path / "sent.md").read_text()
    assert "binary sentiment" in md and "| zh | oracle |" in md and "gap closed" in md and "ΔEnglish" in md


def test_pairs_task_carries_text_pair_and_matches_on_pairs(tmp_path, tiny_model_dir, monkeypatch):
    import xite_fast.train.trainer as tr

    seen = _spy_trainer(monkeypatch, "/korean/")
    calls = []
    real_match = tr.match_sources

    def spy_match(model, tok, src, tgt, **kw):
        calls.append((kw.get("source_text_pairs"), kw.get("target_text_pairs")))
        return real_match(model, tok, src, tgt, **kw)

    monkeypatch.setattr(tr, "match_sources", spy_match)
    out = tmp_path / "pairs"
    argv = [
        "--task",
        "pairs",
        "--langs",
        "korean",
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--hidden-layer",
        "1",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--variants",
        "matched-only",
        "xite-sentence",
        "oracle",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert main(argv) == 0
    d = load_splits(["korean"], 0.25, 0, 40, task="pairs")
    assert d["topics"] == ["random", "next"] and set(d["korean"]["pool"][1].tolist()) == {0, 1}
    # matching ran on the pairs (both sides), and the training rows are the tokenized (text, text_pair)
    assert calls == [(d["english"]["train_pair"], d["korean"]["pool_pair"])]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text, pair = d["korean"]["pool"][0][0], d["korean"]["pool_pair"][0]
    want = tok("query: " + text, pair, truncation=True, max_length=32)["input_ids"]
    got = seen["oracle"]["input_ids"][0]
    assert [t for t in got if t != tok.pad_token_id] == want
    assert seen["oracle"]["labels"] == d["korean"]["pool"][1].tolist()
    assert seen["xite-sentence"]["src"]
    rows = summarize(read_csv(f"{out}.csv"))
    assert [r["variant"] for r in rows] == ["zero-shot", "matched-only", "xite-sentence", "oracle"]
    assert "response selection" in (tmp_path / "pairs.md").read_text()


def test_sentiment_multi_language_and_means_lda_rows(tmp_path, tiny_model_dir, monkeypatch):
    import xite_fast.train.trainer as tr

    calls: list = []
    real = tr.fit_lda

    def spy(xm, tok, src, tgt, **kw):
        W = real(xm, tok, src, tgt, **kw)
        calls.append(
            {"basis": xm.xite.lda_basis, "extra": kw.get("extra_languages"), "tgt": list(tgt), "W": W}
        )
        return W

    monkeypatch.setattr(tr, "fit_lda", spy)
    base = [
        "--task",
        "sentiment",
        "--targets",
        "zh",
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--en-size",
        "200",
        "--en-test-size",
        "100",
        "--pool-size",
        "200",
        "--test-size",
        "100",
        "--work-dir",
        str(tmp_path / "work"),
        "--no-stage2-english",
        "--out",
        str(tmp_path / "m"),
    ]
    with pytest.raises(ValueError, match=r"need --lda-langs with a language other than each target \['zh'\]"):
        main([*base, "--variants", "xite-sentence-mlda", "--lda-langs", "zh"])
    assert (
        main([*base, "--variants", "xite-sentence-mlda", "xite-sentence-lda-means", "--lda-langs", "fr"]) == 0
    )
    d = load_splits(
        ["zh", "fr"],
        0.25,
        0,
        40,
        task="sentiment",
        en_size=200,
        en_test_size=100,
        pool_size=200,
        test_size=100,
    )
    multi, means = calls
    assert multi["basis"] == "fisher" and multi["W"].shape[1] == 2  # source, zh, fr: r = 2
    assert list(multi["extra"]) == ["fr"] and multi["extra"]["fr"][0] == list(d["fr"]["pool"][0])
    assert multi["tgt"] == list(d["zh"]["pool"][0])
    assert means["basis"] == "means" and means["extra"] is None and means["W"].shape[1] == 1
    runs = {r["variant"]: r for r in map(json.loads, (tmp_path / "m_runs.jsonl").read_text().splitlines())}
    assert runs["xite-sentence-mlda"]["lda_languages"] == ["source", "zh", "fr"]
    assert runs["xite-sentence-mlda"]["lda_components"] == 2
    assert runs["xite-sentence-lda-means"]["config"]["lda_basis"] == "means"


def test_sentiment_ot_stage1_aligns_on_chatterbot_translations(tmp_path, tiny_model_dir, monkeypatch):
    import xite_fast.train.align as al
    from xite_fast.data.chatterbot import load_chatterbot

    seen: dict = {}
    real = al.ot_align

    def spy(xm, tok, pairs, targs, cfg):
        seen["pairs"] = pairs
        return real(xm, tok, pairs, targs, cfg)

    monkeypatch.setattr(al, "ot_align", spy)
    argv = [
        "--task",
        "sentiment",
        "--targets",
        "zh",
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--en-size",
        "200",
        "--en-test-size",
        "100",
        "--pool-size",
        "200",
        "--test-size",
        "100",
        "--stage1-variants",
        "ot",
        "--aligned-variants",
        "matched-only",
        "--align-epochs",
        "1",
        "--no-stage2-english",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0
    zh = {r["text"] for r in load_chatterbot("chinese")}
    en = {r["text"] for r in load_chatterbot("english")}
    assert list(seen["pairs"]) == ["zh"] and len(seen["pairs"]["zh"]) > 100
    assert all(e in en and t in zh for e, t in seen["pairs"]["zh"])  # English / Chinese chatterbot text
    runs = {r["variant"]: r for r in map(json.loads, (tmp_path / "o_runs.jsonl").read_text().splitlines())}
    assert runs["ot-align"]["align"]["pairs"] == {"zh": len(seen["pairs"]["zh"])}
    assert "matched-only+ot" in runs
    with pytest.raises(ValueError, match="no parallel training pairs for 'french'"):
        main([*argv[:3], "fr", *argv[4:-3], str(tmp_path / "work_fr"), "--out", str(tmp_path / "o_fr")])


def test_task_argument_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["--task", "nli", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--test-size must be >= 500"):
        main(["--task", "sentiment", "--test-size", "100", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="only with --task chatterbot or sentiment"):
        main(["--task", "pairs", "--stage1-variants", "ot", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"expected targets in \['fr', 'zh'\], got \['de'\]"):
        main(
            [
                "--task",
                "sentiment",
                "--targets",
                "de",
                "--stage1-variants",
                "ot",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    with pytest.raises(ValueError, match="task must be one of"):
        load_splits(["zh"], 0.25, 0, task="nli")


def test_pairs_pool_size_keeps_whole_balanced_couples():
    full = load_splits(["korean"], 0.4, 0, task="pairs")
    d = load_splits(["korean"], 0.4, 0, task="pairs", pool_size=100)
    texts, y = d["korean"]["pool"]
    pairs = d["korean"]["pool_pair"]
    assert len(texts) == 100 and np.bincount(y).tolist() == [50, 50]
    assert all(texts[i] == texts[i + 1] and y[i] == 1 and y[i + 1] == 0 for i in range(0, 100, 2))
    rows = set(
        zip(
            full["korean"]["pool"][0],
            full["korean"]["pool_pair"],
            full["korean"]["pool"][1].tolist(),
            strict=True,
        )
    )
    assert (
        set(zip(texts, pairs, y.tolist(), strict=True)) <= rows
    )  # a subset of the pool, pairs kept with labels
    assert d["korean"]["test"][0] == full["korean"]["test"][0]  # the gold test set is not capped
    assert d["english"]["train"][0] == full["english"]["train"][0]


def test_no_stage2_english_and_a_per_language_rerun_reuse_stage1(tmp_path, tiny_model_dir):
    out = tmp_path / "pp"
    base = [
        "--task",
        "pairs",
        "--model",
        str(tiny_model_dir),
        "--num-layers",
        "2",
        "--freeze-layers",
        "1",
        "--hidden-layer",
        "1",
        "--seeds",
        "0",
        "--limit",
        "40",
        "--stage1-epochs",
        "1",
        "--pool-size",
        "20",
        "--no-stage2-english",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    assert main([*base, "--langs", "korean", "japanese", "--variants", "matched-only"]) == 0
    runs = [json.loads(x) for x in (tmp_path / "pp_runs.jsonl").read_text().splitlines()]
    zs = next(r for r in runs if r["variant"] == "zero-shot")
    assert set(zs["targets"]) == {"korean", "japanese"} and zs["english"]["accuracy"] >= 0
    stage2 = [r for r in runs if r["variant"] == "matched-only"]
    assert len(stage2) == 2 and all(r["english"] is None for r in stage2)
    # a second invocation for one language (own runs file) reuses the stage-1 checkpoint and record
    assert (
        main(
            [
                *base,
                "--langs",
                "japanese",
                "--variants",
                "oracle",
                "--runs-file",
                str(tmp_path / "pp_runs_ja.jsonl"),
            ]
        )
        == 0
    )
    new = [json.loads(x) for x in (tmp_path / "pp_runs_ja.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in new] == ["oracle"]
    assert (
        main(
            [*base, "--langs", "korean", "japanese", "--variants", "matched-only", "oracle", "--tables-only"]
        )
        == 0
    )
    rows = {(r["lang"], r["variant"]): r for r in summarize(read_csv(f"{out}.csv"))}
    assert set(rows) == {
        (lang, v) for lang in ("korean", "japanese") for v in ("zero-shot", "matched-only")
    } | {("japanese", "oracle")}
    assert rows[("korean", "matched-only")]["en_acc_mean"] == ""
    md = out.with_suffix(".md").read_text()
    assert "| korean | matched-only | 0 |" in md and "no English evaluation after stage 2" in md
    assert "capped at 20 rows" in md
