"""xite_fast.data.records: the user-file readers (txt / jsonl / tsv)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xite_fast.data import records as data


def test_readers_roundtrip(tmp_path):
    src = tmp_path / "src.jsonl"
    rows = [{"text": "héllo", "label": "a"}, {"text": "  ", "label": "b"}, {"text": "world", "label": 3}]
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
    reader = data.RecordReader(txt, np.asarray([o for o, _, _ in recs]))
    assert [t for t, _ in reader.get([2, 0, 2])] == ["three", "안녕", "three"]
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
        data.read_texts(tmp_path / "x.csv") if (tmp_path / "x.csv").write_text("a") else None
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        data.read_texts(latin)
