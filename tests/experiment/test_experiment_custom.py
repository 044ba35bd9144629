"""The custom task: the driver's protocol on the user's own labelled source and target, given as files or
in-memory tables (one adapter, xite_fast.data.records.iter_table_records)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.driver import ExperimentConfig, load_splits, main, run_experiment, write_tables
from experiments.tables import read_csv
from experiments.tasks import custom_splits

TOPICS = ("ai", "conversations", "emotion")
ROWS = ["zero-shot", "matched-only", "xite-sentence", "oracle"]  # zero-shot, lambda = 0, XITE, oracle


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(source, target): English training rows and Korean pool rows of 3 chatterbot topics, labels as
    topic names (the tiny model's vocabulary covers these words)."""
    d = load_splits(["korean"], 0.25, 0)
    names = d["topics"]

    def frame(texts, labels, per_topic: int) -> pd.DataFrame:
        rows = [(t, names[y]) for t, y in zip(texts, labels, strict=True) if names[y] in TOPICS]
        keep = [r for topic in TOPICS for r in [r for r in rows if r[1] == topic][:per_topic]]
        return pd.DataFrame(keep, columns=["sentence", "topic"])

    return frame(*d["english"]["train"], 20), frame(*d["korean"]["pool"], 16)


def _tiny(tiny_model_dir, tmp_path) -> dict:
    return {
        "model": str(tiny_model_dir),
        "num_layers": 2,
        "freeze_layers": 1,
        "hidden_layer": 1,
        "seeds": [0],
        "stage1_epochs": 1,
        "out": str(tmp_path / "exp"),
        "work_dir": str(tmp_path / "work"),
    }


def _rows_read(cfg: ExperimentConfig) -> tuple[list, list]:
    """Every (text, label name) the custom task read, source and target, sorted."""
    d = custom_splits(cfg)
    names, lang = d["topics"], cfg.langs[0]

    def rows(*parts) -> list:
        return sorted((t, names[y]) for texts, labels in parts for t, y in zip(texts, labels, strict=True))

    return rows(d["english"]["train"], d["english"]["test"]), rows(d[lang]["pool"], d[lang]["test"])


def _check_csv(out: str, lang: str) -> None:
    rows = read_csv(f"{out}.csv")
    assert {r["task"] for r in rows} == {"custom"} and {r["language"] for r in rows} == {lang}
    assert list(dict.fromkeys(r["row"] for r in rows)) == ROWS
    acc = [r for r in rows if r["metric"] == "target_accuracy"]
    assert [r["row"] for r in acc] == ROWS and all(0.0 <= float(r["value"]) <= 1.0 for r in acc)
    xite = {r["metric"] for r in rows if r["row"] == "xite-sentence"}
    assert {"match_label_accuracy", "english_accuracy"} <= xite


def test_custom_task_from_csv_files(tmp_path, tiny_model_dir, frames):
    src, tgt = frames
    src.to_csv(tmp_path / "src.csv", index=False)
    tgt.to_csv(tmp_path / "tgt.csv", index=False)
    fields = {"text_field": "sentence", "label_field": "topic"}
    cfg = ExperimentConfig(
        task="custom", source=str(tmp_path / "src.csv"), target=str(tmp_path / "tgt.csv"), **fields
    )
    # the rows read are pandas' rows, and the split covers each side exactly once (stratified)
    read_src, read_tgt = _rows_read(cfg)
    for got, path in ((read_src, "src.csv"), (read_tgt, "tgt.csv")):
        df = pd.read_csv(tmp_path / path)
        assert got == sorted(zip(df["sentence"], df["topic"], strict=True))
    t = _tiny(tiny_model_dir, tmp_path)
    argv = ["--source", str(tmp_path / "src.csv"), "--target", str(tmp_path / "tgt.csv")]
    argv += ["--text-field", "sentence", "--label-field", "topic", "--langs", "korean"]
    argv += ["--model", t["model"], "--num-layers", "2", "--freeze-layers", "1", "--hidden-layer", "1"]
    argv += ["--seeds", "0", "--stage1-epochs", "1", "--out", t["out"], "--work-dir", t["work_dir"]]
    assert main(argv) == 0  # --source without --task: the custom task
    runs = [json.loads(x) for x in (tmp_path / "exp_runs.jsonl").read_text().splitlines()]
    assert [r["key"] for r in runs] == ["s0/zero-shot", *[f"s0/korean/{v}" for v in ROWS[1:]]]
    assert runs[2]["config"]["placement"] == "sentence" and runs[1]["labels"] == "matched"
    assert runs[3]["labels"] == "gold"
    # test rows: stratified, a quarter of each topic
    n = runs[0]["targets"]["korean"]["n"]
    assert n == round(len(tgt) * 0.25) and runs[0]["english"]["n"] == round(len(src) * 0.25)
    _check_csv(t["out"], "korean")
    md = (tmp_path / "exp.md").read_text()
    assert "custom data set" in md and "| korean | xite-sentence |" in md


def test_custom_task_from_dataframes(tmp_path, tiny_model_dir, frames):
    src, tgt = frames
    cfg = ExperimentConfig(
        task="custom",
        source=src,
        target=tgt,
        text_field="sentence",
        label_field="topic",
        langs=["korean"],
        **_tiny(tiny_model_dir, tmp_path),
    ).validate()
    read_src, read_tgt = _rows_read(cfg)
    assert read_src == sorted(zip(src["sentence"], src["topic"], strict=True))
    assert read_tgt == sorted(zip(tgt["sentence"], tgt["topic"], strict=True))
    done = run_experiment(cfg)
    assert sorted(done) == sorted(["s0/zero-shot", *[f"s0/korean/{v}" for v in ROWS[1:]]])
    write_tables(done, cfg)
    _check_csv(cfg.out, "korean")


def test_custom_task_unlabelled_target(tmp_path, tiny_model_dir, frames):
    """A target without labels is all pool: no test rows (NaN accuracy), no oracle row, no matching
    accuracy; the XITE rows still train on the matched labels."""
    src, tgt = frames
    cfg = ExperimentConfig(
        task="custom",
        source=src,
        target=tgt[["sentence"]],
        text_field="sentence",
        label_field="topic",
        **_tiny(tiny_model_dir, tmp_path),
    ).validate()
    assert cfg.langs == ["target"] and cfg.variants == ROWS[1:]
    d = custom_splits(cfg)
    assert len(d["target"]["pool"][0]) == len(tgt) and d["target"]["test"][0] == []
    done = run_experiment(cfg)
    assert sorted(done) == sorted(["s0/zero-shot", "s0/target/matched-only", "s0/target/xite-sentence"])
    assert done["s0/target/xite-sentence"]["target"]["n"] == 0
    assert done["s0/target/xite-sentence"]["diag"]["match_score_mean"] > -1.0
    write_tables(done, cfg)
    assert [r["row"] for r in read_csv(f"{cfg.out}.csv") if r["metric"] == "english_accuracy"] == ROWS[:3]


def test_custom_task_bad_arguments(tmp_path, frames):
    src, tgt = frames
    with pytest.raises(ValueError, match="needs --source"):
        ExperimentConfig(task="custom", source=src).validate()
    with pytest.raises(ValueError, match="not chatterbot's"):
        ExperimentConfig(source=src, target=tgt).validate()
    with pytest.raises(ValueError, match="oracle row needs target labels"):
        ExperimentConfig(
            task="custom", source=src, target=tgt, target_labels=False, variants=["oracle"]
        ).validate()
    bad = tgt.assign(topic=["weather"] * len(tgt))
    cfg = ExperimentConfig(task="custom", source=src, target=bad, text_field="sentence", label_field="topic")
    with pytest.raises(ValueError, match=r"target: labels \['weather'\] are not source labels"):
        custom_splits(cfg)
    with pytest.raises(ValueError, match="labels missing"):
        custom_splits(
            ExperimentConfig(task="custom", source=src[["sentence"]], target=tgt, text_field="sentence")
        )


def test_custom_task_reads_datasets_like_pandas(frames):
    """A datasets.Dataset goes through the same adapter: the same rows and the same split as its
    DataFrame."""
    datasets = pytest.importorskip("datasets")
    src, tgt = frames
    fields = {"text_field": "sentence", "label_field": "topic", "langs": ["korean"]}
    from_df = custom_splits(ExperimentConfig(task="custom", source=src, target=tgt, **fields))
    ds_src, ds_tgt = (datasets.Dataset.from_pandas(f, preserve_index=False) for f in (src, tgt))
    from_ds = custom_splits(ExperimentConfig(task="custom", source=ds_src, target=ds_tgt, **fields))
    assert from_ds["topics"] == from_df["topics"] == sorted(set(src["topic"]))
    for side, parts in (("english", ("train", "test")), ("korean", ("pool", "test"))):
        for part in parts:
            assert from_ds[side][part][0] == from_df[side][part][0]
            assert from_ds[side][part][1].tolist() == from_df[side][part][1].tolist()
