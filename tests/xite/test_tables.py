"""DataFrames and Datasets in and out of the augment job: AugmentConfig(source=df) / encode_corpus(df) read
the table as the same rows in a file are read; AugmentRun / AugmentResult .to_dataset() / .to_pandas()."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.utils import HashEncoder
from xite_fast.encode.store import encode_corpus
from xite_fast.xite.pipeline import AugmentConfig, run_augment

pd = pytest.importorskip("pandas")
datasets = pytest.importorskip("datasets")

LABELS = ["food", "sports", "music", "weather"]


def _frames():
    src = pd.DataFrame(
        {"text": [f"source sentence {i}" for i in range(37)], "label": [LABELS[i % 4] for i in range(37)]}
    )
    src.loc[5, "text"] = "   "  # a blank row is skipped, as in a file
    tgt = pd.DataFrame(
        {"text": [f"목표 문장 {i}" for i in range(29)], "label": [LABELS[(i * 3) % 4] for i in range(29)]}
    )
    return src, tgt


def _cfg(src, tgt, out, **kw):
    return AugmentConfig(
        source=src,
        target=tgt,
        out=str(out),
        shard_size=8,
        batch_size=3,
        mode="proj",
        vote="weighted",
        k=3,
        progress=False,
        **kw,
    )


def test_augment_from_a_dataframe_equals_the_same_rows_from_files(tmp_path):
    src, tgt = _frames()
    files = tmp_path / "files"
    files.mkdir()
    src.to_json(files / "src.jsonl", orient="records", lines=True, force_ascii=False)
    tgt.to_parquet(files / "tgt.parquet")
    ref = run_augment(
        _cfg(str(files / "src.jsonl"), str(files / "tgt.parquet"), tmp_path / "ref"), encoder=HashEncoder()
    )
    run = run_augment(_cfg(src, datasets.Dataset.from_pandas(tgt), tmp_path / "df"), encoder=HashEncoder())
    assert run.report["n_source"] == 36 and run.report["n_targets"] == 29
    strip = ("options",)
    assert {k: v for k, v in run.report.items() if k not in strip} == {
        k: v for k, v in ref.report.items() if k not in strip
    }
    np.testing.assert_array_equal(run.embeddings(), ref.embeddings())
    assert run.provenance() == ref.provenance()
    written = sorted(p.name for p in (tmp_path / "df" / "inputs").iterdir())
    assert [n.split("-")[0] for n in written] == ["source", "target"] and all(
        n.endswith(".jsonl") for n in written
    )
    conf = json.loads((tmp_path / "df" / "config.json").read_text())
    assert conf["source"]["table"] is True is conf["target"]["table"]
    assert conf["source"]["rows"] == 36
    # a rerun with the same table reuses everything; a changed table is refused and leaves the old input alone
    again = run_augment(_cfg(src, tgt, tmp_path / "df"), encoder=HashEncoder())
    assert again.parts_reused == len(run.manifest["parts"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "df" / "inputs").iterdir()}
    changed = src.copy()
    changed.loc[0, "label"] = "music"
    with pytest.raises(ValueError, match=r"different options .*the source input changed"):
        run_augment(_cfg(changed, tgt, tmp_path / "df"), encoder=HashEncoder())
    assert all((tmp_path / "df" / "inputs" / n).read_bytes() == b for n, b in before.items())


def test_bad_table_inputs_name_the_argument(tmp_path):
    src, tgt = _frames()
    with pytest.raises(ValueError, match="source: labels missing: no column label_field='label'"):
        run_augment(_cfg(src.drop(columns="label"), tgt, tmp_path / "a"), encoder=HashEncoder())
    with pytest.raises(ValueError, match="source must be a file path, a bundled spec or a table"):
        run_augment(_cfg(3, tgt, tmp_path / "b"), encoder=HashEncoder())
    with pytest.raises(ValueError, match="source: no column text_field='sentence'"):
        run_augment(_cfg(src, tgt, tmp_path / "c", text_field="sentence"), encoder=HashEncoder())


def test_tables_out_of_a_run_and_of_the_in_memory_result(tmp_path):
    src, tgt = _frames()
    run = run_augment(_cfg(src, tgt, tmp_path / "run"), encoder=HashEncoder())
    prov = run.provenance()
    ds = run.to_dataset(embeddings=True, cache_dir=tmp_path / "hf")
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == len(prov) == run.manifest["rows"]
    assert ds.column_names == [
        "text",
        "label",
        "source_text",
        "similarity",
        "lam",
        "target_id",
        "source_id",
        "gold_label",
        "mode",
        "embedding",
    ]
    assert ds["text"] == [p["target_text"] for p in prov] and ds["label"] == [p["label"] for p in prov]
    assert ds["source_text"] == [p["source_text"] for p in prov] and ds["lam"] == pytest.approx(
        [p["lam"] for p in prov]
    )
    np.testing.assert_allclose(np.asarray(ds["embedding"], dtype=np.float32), run.embeddings())
    df = run.to_pandas()
    assert list(df.columns) == ds.column_names[:-1] and len(df) == len(prov)
    assert df["target_id"].tolist() == [p["target_id"] for p in prov]
    # the in-memory augmenter: the same columns once the texts are given
    from xite_fast.xite.augmenter import XiteAugmenter

    s = src[src.text.str.strip() != ""]
    res = XiteAugmenter(HashEncoder(), mode="interp").augment(s.text.tolist(), s.label.tolist(), tgt.text)
    mem = res.to_dataset(s.text, tgt.text, cache_dir=tmp_path / "hf")
    assert mem.num_rows == len(res)
    assert mem["text"] == [tgt.text[i] for i in res.target_id] and mem["source_text"] == [
        s.text.iloc[i] for i in res.source_id
    ]
    assert mem["label"] == list(res.labels)
    bare = res.to_pandas(embeddings=True)
    assert "text" not in bare.columns and np.array_equal(np.stack(bare["embedding"]), res.embeddings)
    with pytest.raises(ValueError, match="pass both source_texts and target_texts"):
        res.to_pandas(s.text)


def test_encode_corpus_reads_a_dataframe_as_its_rows_not_its_column_names(tmp_path):
    df = pd.DataFrame({"text": [f"sentence {i}" for i in range(150)], "label": ["a", "b"] * 75})
    store = encode_corpus(df, tmp_path / "emb", HashEncoder(), shard_size=64, show_progress_bar=False)
    assert len(store) == 150 and store.manifest["source"]["kind"] == "table"
    df.to_parquet(tmp_path / "t.parquet")
    ref = encode_corpus(tmp_path / "t.parquet", tmp_path / "ref", HashEncoder(), shard_size=64)
    np.testing.assert_array_equal(store.to_memmap(), ref.to_memmap())
    for obj in (df["text"], datasets.Dataset.from_pandas(df), datasets.Dataset.from_pandas(df)["text"]):
        again = encode_corpus(obj, tmp_path / f"e{type(obj).__name__}", HashEncoder(), shard_size=64)
        np.testing.assert_array_equal(again.to_memmap(), ref.to_memmap())
    with pytest.raises(ValueError, match="source: no column text_field='text'"):
        encode_corpus(df.rename(columns={"text": "t"}), tmp_path / "bad", HashEncoder())


def test_run_augment_show_progress_bar(tmp_path, capsys):
    src, tgt = _frames()
    run_augment(_cfg(src, tgt, tmp_path / "run"), encoder=HashEncoder(), show_progress_bar=True)
    err = capsys.readouterr().err
    assert "match+synthesize: 100%" in err and "encode source_emb" in err, err
    run_augment(_cfg(src, tgt, tmp_path / "run"), encoder=HashEncoder(), show_progress_bar=False)
    # no bar ("match+synthesize: 12%|..."); a log line "[xite-fast] match+synthesize ..." may be there when an
    # earlier test (the CLI's) left the package logger at INFO
    assert "match+synthesize:" not in capsys.readouterr().err


@pytest.mark.slow
def test_to_dataset_streams_part_by_part(tmp_path):
    """200k synthetic rows (4 parts) into a Dataset with embeddings: memory grows with one part, not the
    run."""
    psutil = pytest.importorskip("psutil")
    from xite_fast.xite.report import _part_rows, rows_dataset

    parts, per = [], 50_000
    for k in range(4):
        j, npy = tmp_path / f"part-{k:05d}.jsonl", tmp_path / f"part-{k:05d}.npy"
        with open(j, "w") as fh:
            for r in range(k * per, (k + 1) * per):
                rec = {
                    "target_id": r,
                    "source_id": r % 97,
                    "target_text": f"target {r}",
                    "source_text": f"source {r % 97}",
                    "label": "abc"[r % 3],
                    "similarity": 0.5,
                    "lam": 0.25,
                    "mode": "proj",
                }
                fh.write(json.dumps(rec) + "\n")
        np.save(npy, np.full((per, 16), k, np.float32))
        parts.append((str(j), str(npy), {"part": k}))
    rss0 = psutil.Process().memory_info().rss
    ds = rows_dataset(_part_rows, {"parts": parts, "embeddings": True}, cache_dir=tmp_path / "hf")
    grown = (psutil.Process().memory_info().rss - rss0) / 2**20
    assert (
        ds.num_rows == 4 * per
        and ds[per * 3]["embedding"] == [3.0] * 16
        and ds[-1]["text"] == f"target {4 * per - 1}"
    )
    assert grown < 150, f"RSS grew {grown:.0f} MiB"
