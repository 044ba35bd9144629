"""xite_fast.data.records: the one record reader (txt / jsonl / tsv / csv / parquet, pairs, label types)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xite_fast.data import records as data


def test_readers_roundtrip(tmp_path):
    src = tmp_path / "src.jsonl"
    rows = [{"text": "héllo", "label": "a"}, {"text": "  ", "label": "b"}, {"text": "world", "label": "3"}]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    texts, labels = data.read_labelled(src)
    assert texts == ["héllo", "world"] and labels == ["a", "3"]
    tsv = tmp_path / "src.tsv"
    tsv.write_text("text\tlabel\none\tx\n\ntwo\ty\r\n", encoding="utf-8")
    assert data.read_labelled(tsv) == (["one", "two"], ["x", "y"])
    txt = tmp_path / "tgt.txt"
    txt.write_text("안녕\n\n  둘 \nthree", encoding="utf-8")
    assert data.read_texts(txt) == ["안녕", "둘", "three"]
    assert data.read_texts(txt, max_rows=2) == ["안녕", "둘"]
    recs = list(data.iter_records(txt))
    reader = data.RecordReader(txt, np.asarray([o for o, _ in recs]))
    assert [r.text for r in reader.get([2, 0, 2])] == ["three", "안녕", "three"]
    reader.close()


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        data.read_labelled(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: broken JSON"):
        data.read_labelled(bad)
    nolab = tmp_path / "nolab.jsonl"
    nolab.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="labels missing"):
        data.read_labelled(nolab)
    assert data.read_texts(nolab) == ["a"]
    notext = tmp_path / "notext.jsonl"
    notext.write_text('{"sentence": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="field 'text' missing"):
        data.read_texts(notext)
    tsv = tmp_path / "nolab.tsv"
    tsv.write_text("only text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="labels missing"):
        data.read_labelled(tsv, header=False)
    with pytest.raises(
        ValueError,
        match=r"nolab\.tsv:1: no column text_field='text' in the header \['only text'\].*header=False",
    ):
        data.read_labelled(tsv)
    txt = tmp_path / "t.txt"
    txt.write_text("a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="labels missing"):
        data.read_labelled(txt)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty corpus"):
        data.read_texts(empty)
    with pytest.raises(ValueError, match="unsupported corpus file"):
        data.read_texts(tmp_path / "x.xml") if (tmp_path / "x.xml").write_text("a") else None
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        data.read_texts(latin)


def test_labels_keep_their_type_mixed_and_unhashable_are_errors(tmp_path):
    ints = tmp_path / "i.jsonl"
    ints.write_text('{"text": "a", "label": 2}\n{"text": "b", "label": 1}\n{"text": "c", "label": 2}\n')
    idx = data.index_corpus(ints, need_label=True)
    assert idx.label_names == [1, 2] and idx.codes.tolist() == [1, 0, 1]
    assert [r.label for r in idx.reader().get([0, 1])] == [2, 1]
    mixed = tmp_path / "m.jsonl"
    mixed.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: label '1' is a str but earlier labels are int"):
        data.index_corpus(mixed, need_label=True)
    boolint = tmp_path / "b.jsonl"
    boolint.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": true}\n')
    with pytest.raises(ValueError, match="is a bool but earlier labels are int"):
        data.index_corpus(boolint)
    bad = tmp_path / "u.jsonl"
    bad.write_text('{"text": "a", "label": ["x"]}\n')
    with pytest.raises(ValueError, match=r"u\.jsonl:1: label must be a str, int, float or bool, got list"):
        data.index_corpus(bad)
    names, codes = data.encode_labels([3, 1, 3])
    assert names == [1, 3] and codes.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match=r"labels\[1\]: label '1' is a str"):
        data.encode_labels([1, "1"])
    with pytest.raises(ValueError, match="got dict"):
        data.encode_labels([{"a": 1}])


def _same(*indexes):
    ref = [r for r in indexes[0].reader().get(range(len(indexes[0])))]
    for idx in indexes[1:]:
        assert [r for r in idx.reader().get(range(len(idx)))] == ref


def test_all_formats_give_the_same_records_pairs_and_headers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [("one", "x", "p1"), ("two, with comma", "y", "p2"), ('th"ree', "x", "p3")]
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": lab, "text_pair": p}) + "\n\n" for t, lab, p in rows)
    )
    (tmp_path / "a.tsv").write_text(
        "label\ttext\ttext_pair\n" + "".join(f"{lab}\t{t}\t{p}\n" for t, lab, p in rows)
    )
    (tmp_path / "h.tsv").write_text("".join(f"{t}\t{lab}\t{p}\n\n" for t, lab, p in rows))  # no header
    import csv as _csv

    with open(tmp_path / "a.csv", "w", newline="") as fh:
        w = _csv.writer(fh)
        w.writerow(["text", "label", "text_pair"])
        w.writerows(rows)
    pq.write_table(
        pa.table(
            {"text": [r[0] for r in rows], "label": [r[1] for r in rows], "text_pair": [r[2] for r in rows]}
        ),
        tmp_path / "a.parquet",
    )
    idx = {
        n: data.index_corpus(tmp_path / n, need_label=True, pair_field="text_pair", header=n != "h.tsv")
        for n in ("a.jsonl", "a.tsv", "h.tsv", "a.csv", "a.parquet")
    }
    _same(*idx.values())
    assert idx["a.csv"].reader().get([1])[0] == data.Record("two, with comma", "y", "p2")
    assert data.model_input(idx["a.tsv"].reader().get([0])[0]) == ("one", "p1")
    assert all(len(i) == 3 and i.label_names == ["x", "y"] for i in idx.values())
    # sha256 of the whole file, streamed while indexing (also past max_rows)
    import hashlib

    for name in ("a.jsonl", "a.tsv", "a.csv"):
        want = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert data.index_corpus(tmp_path / name, max_rows=1).sha256 == want


def test_binary_and_non_utf8_inputs_are_rejected_naming_the_line(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"fine\n\x00\x01\x02binary\n")
    with pytest.raises(ValueError, match=r"b\.txt:2: NUL byte"):
        data.index_corpus(tmp_path / "b.txt")
    (tmp_path / "c.txt").write_bytes(b"ok\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"c\.txt:2: not valid UTF-8"):
        data.index_corpus(tmp_path / "c.txt")
    assert (
        data.index_corpus(tmp_path / "c.txt", errors="replace").reader().get([1])[0].text == "bad \ufffd byte"
    )


def test_table_adapters_match_the_parquet_reader(tmp_path):
    """pandas / datasets / dict-of-columns tables read with the same rules as the same table in .parquet."""
    import pandas as pd

    from xite_fast.data.records import iter_table_records

    cols = {"text": [" a ", "", "b", None, "c"], "label": [1, 2, 3, 4, 5], "hyp": ["x", "y", " z", "w", "v"]}
    df = pd.DataFrame(cols)
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    want = list(data.iter_records(path, need_label=True, pair_field="hyp"))
    assert [r for _, r in want] == [("a", 1, "x"), ("b", 3, "z"), ("c", 5, "v")]
    got_pd = list(iter_table_records(df, need_label=True, pair_field="hyp"))
    got_dict = list(iter_table_records(cols, need_label=True, pair_field="hyp"))
    datasets = pytest.importorskip("datasets")
    got_ds = list(iter_table_records(datasets.Dataset.from_pandas(df), need_label=True, pair_field="hyp"))
    assert got_pd == got_dict == got_ds == want  # parquet locators are row numbers, as here
    mixed = pd.DataFrame({"text": ["a", "b"], "label": [1, "1"]}, dtype=object)
    with pytest.raises(ValueError, match="labels keep their type"):
        list(iter_table_records(mixed))
    with pytest.raises(ValueError, match="no column text_field='sentence'"):
        list(iter_table_records(df, text_field="sentence"))
    with pytest.raises(
        ValueError, match=r"table\[0\] must be a str or a \(text, text_pair\) 2-tuple of str, got tuple"
    ):
        list(iter_table_records([("a", 1)]))
    with pytest.raises(ValueError, match="must be a file path, a pandas DataFrame/Series"):
        list(iter_table_records(3))


def test_one_adapter_for_files_and_tables_rows_as_pandas_and_datasets_read_them(tmp_path):
    """iter_table_records reads a file, a DataFrame, a Dataset / IterableDataset, a dict and one column
    (Series, Column, list) with the same rules; the rows equal what pandas and datasets read."""
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    from xite_fast.data.records import iter_table_records

    df = pd.DataFrame(
        {
            "sentence": [" first ", "second, with comma", "", 'fourth "quoted"', "fifth", "  "],
            "y": ["a", "b", "a", "b", "a", "b"],
            "hyp": ["h1", "h2", "h3", "h4", "h5", "h6"],
        }
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True, force_ascii=False)
    df.to_parquet(tmp_path / "t.parquet")
    kw = {"text_field": "sentence", "label_field": "y", "pair_field": "hyp", "need_label": True}
    ref = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)  # what pandas reads back
    want = [
        data.Record(t.strip(), y, p.strip())
        for t, y, p in zip(ref.sentence, ref.y, ref.hyp, strict=True)
        if t.strip()
    ]
    ds = datasets.Dataset.from_pandas(df)
    assert [
        r["sentence"] for r in datasets.load_dataset("csv", data_files=str(tmp_path / "t.csv"), split="train")
    ] == [
        s if s else None for s in df.sentence
    ]  # datasets reads the same cells (an empty cell as None: skipped like a blank one)
    sources = {
        "csv": tmp_path / "t.csv",
        "jsonl": str(tmp_path / "t.jsonl"),
        "parquet": tmp_path / "t.parquet",
        "DataFrame": df,
        "Dataset": ds,
        "IterableDataset": ds.to_iterable_dataset(),
        "dict": df.to_dict("list"),
    }
    for what, src in sources.items():
        assert [r for _, r in iter_table_records(src, **kw)] == want, what
    rows = [i for i, _ in iter_table_records(df, **kw)]
    assert rows == [0, 1, 3, 4]  # positional rows of the table
    assert [r for _, r in iter_table_records(df, max_rows=2, **kw)] == want[:2]
    # one column: texts only, the same rules
    texts = [r.text for r in want]
    for col in (df["sentence"], ds["sentence"], list(df["sentence"])):
        assert [r.text for _, r in iter_table_records(col)] == texts
    pairs = list(zip(df.sentence, df.hyp, strict=True))
    assert [(r.text, r.pair) for _, r in iter_table_records(pairs)] == [(r.text, r.pair) for r in want]
    # errors name the argument
    with pytest.raises(
        ValueError, match=r"source: no column text_field='text'; columns: \['sentence', 'y', 'hyp'\]"
    ):
        list(iter_table_records(df, name="source"))
    with pytest.raises(ValueError, match="source: labels missing: a Series of texts has no labels"):
        list(iter_table_records(df["sentence"], name="source", need_label=True))
    with pytest.raises(ValueError, match=r"source is a DatasetDict with splits \['train'\]: pass one split"):
        list(iter_table_records(datasets.DatasetDict({"train": ds}), name="source"))
    with pytest.raises(ValueError, match=r"source: row 1: label 1 is a int but earlier labels are str"):
        list(
            iter_table_records(
                pd.DataFrame({"text": ["a", "b"], "label": ["x", 1]}, dtype=object), name="source"
            )
        )


def test_as_texts_one_text_per_row_verbatim():
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    from xite_fast.data.records import as_texts

    texts = [" a ", "", "b"]
    df = pd.DataFrame({"text": texts, "other": ["x", "y", "z"]})
    ds = datasets.Dataset.from_pandas(df)
    for obj in (
        texts,
        tuple(texts),
        np.asarray(texts),
        (t for t in texts),
        df,
        df["text"],
        ds,
        ds["text"],
        {"text": texts},
    ):
        assert as_texts(obj, "texts") == (texts, None)
    assert as_texts(df, "texts", text_field="other", pair_field="text") == (["x", "y", "z"], texts)
    assert as_texts([("a", "b"), ("c", "d")], "texts") == (["a", "c"], ["b", "d"])
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str .*got NoneType"):
        as_texts(pd.Series(["a", None]), "texts")
    with pytest.raises(ValueError, match=r"texts: row 1, column 'text' is missing \(None / NaN\)"):
        as_texts(pd.DataFrame({"text": ["a", None]}), "texts")
    with pytest.raises(
        ValueError,
        match=r"texts: no column text_field='text' in the DataFrame .*pass texts=<table>\[<column>\]",
    ):
        as_texts(df.rename(columns={"text": "t"}), "texts")
    with pytest.raises(ValueError, match="texts must be a sequence of texts .* got a single str"):
        as_texts("abc", "texts")
    with pytest.raises(ValueError, match=r"texts\[1\]: mix of single texts and \(text, text_pair\) tuples"):
        as_texts(["a", ("b", "c")], "texts")
    with pytest.raises(ValueError, match="texts must hold single texts"):
        as_texts([("b", "c")], "texts", allow_pairs=False)
