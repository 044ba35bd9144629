"""Fault injection on the augment run directory (xite_fast.xite.pipeline.run_augment).

A deterministic hash "encoder" keeps every run well under a second, so each fault is tested against a
clean reference run: kill -9 at named points of every stage, corrupt files, changed inputs, two
concurrent runs, a full disk (a small tmpfs), a moved directory. After each fault the rerun must
finish byte-identical to the uninterrupted run, or fail with a clear message naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.utils import RUN_LABELS, HashEncoder, run_digests, run_opts, run_small, write_run_inputs
from xite_fast._io import DiskFullError
from xite_fast.xite.pipeline import AugmentConfig, run_augment

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
from tests.utils import HashEncoder
from xite_fast.xite.pipeline import AugmentConfig, run_augment
run_augment(AugmentConfig(**json.loads(sys.argv[1])), encoder=HashEncoder())
print("finished")
"""


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    src, tgt = write_run_inputs(d / "in")
    res = run_small(src, tgt, d / "out")
    files = run_digests(d / "out")
    assert res.report["n_synthetic"] == 29 and len(res.manifest["parts"]) == 4
    assert sum(1 for f in files if f.startswith("source_emb/shard_")) == 5
    assert not [f for f in files if ".tmp-" in f]
    return src, tgt, files


def _spawn(opts: dict, **env) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(opts)],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


KILL_POINTS = [
    "inputs",
    "config",
    "encode:source_emb:0",
    "encode:source_emb:3",
    "tmp:shard_000002.npy",
    "encode:target_emb:1",
    "encoded",
    "lda",
    "part:0:jsonl",
    "tmp:part-00001.npy",
    "part:1:npy",
    "part:2",
    "parts",
    "manifest",
]


def test_kill9_at_every_stage_then_rerun_is_byte_identical(ref, tmp_path):
    src, tgt, want = ref
    assert len(KILL_POINTS) >= 8
    for point in KILL_POINTS:
        out = tmp_path / point.replace(":", "_")
        proc = _spawn(run_opts(src, tgt, out), XITE_FAST_TEST_KILL_AT=point)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (point, err.decode()[-2000:])
        res = run_small(src, tgt, out)
        assert run_digests(out) == want, point
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name], point
        if point.startswith("part:2"):
            assert res.parts_reused == 3


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    elif how == "truncate":
        data = data[: len(data) // 2]
    elif how == "garbage":
        data = bytearray(b"{ not json")
    path.write_bytes(bytes(data))
    if how == "delete":
        path.unlink()


CORRUPTIONS = [
    ("synthetic/part-00001.npy", "truncate"),
    ("synthetic/part-00002.jsonl", "flip"),
    ("synthetic/part-00000.npy", "delete"),
    ("synthetic/part-00003.done.json", "garbage"),
    ("synthetic/manifest.json", "garbage"),
    ("source_emb/shard_000001.npy", "flip"),  # a flipped byte in a source embedding shard
    ("target_emb/shard_000002.npy", "truncate"),
    ("source_emb/manifest.json", "garbage"),
    ("lda.npy", "flip"),
    ("lda.json", "garbage"),
    ("report.json", "garbage"),
]


def test_each_corruption_is_detected_and_re_made(ref, tmp_path):
    src, tgt, want = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    for rel, how in CORRUPTIONS:
        _corrupt(out / rel, how)
        res = run_small(src, tgt, out)
        assert run_digests(out) == want, (rel, how)
        if rel.startswith("synthetic/part"):
            assert any(rel.split(".")[0] in r for r in res.remade), res.remade


def test_garbage_config_is_a_clear_error(ref, tmp_path):
    src, tgt, _ = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    (out / "config.json").write_text("garbage")
    with pytest.raises(ValueError, match=r"config\.json: the run configuration is not valid JSON.*delete it"):
        run_small(src, tgt, out)


def test_same_size_input_edit_is_refused(ref, tmp_path):
    src0, tgt0, _ = ref
    src, tgt = tmp_path / "s.jsonl", tmp_path / "t.jsonl"
    shutil.copy(src0, src)
    shutil.copy(tgt0, tgt)
    run_small(src, tgt, tmp_path / "o")
    text = src.read_text()
    src.write_text(text.replace('"food"', '"fool"', 1))  # same size, other content
    assert len(src.read_text()) == len(text)
    with pytest.raises(ValueError, match=r"different options \(source\).*source input changed"):
        run_small(src, tgt, tmp_path / "o")


def test_out_is_empty_or_a_file_and_failed_run_recovers(ref, tmp_path, monkeypatch):
    src, tgt, want = ref
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="out must be a directory path, got ''"):
        run_small(src, tgt, "")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run_small(src, tgt, tmp_path / "f")
    # a run that fails after indexing (k too large) commits nothing: other options then just work
    with pytest.raises(ValueError, match=r"k must be <= the number of source rows \(37\)"):
        run_small(src, tgt, tmp_path / "o", k=99)
    proc = _spawn(run_opts(src, tgt, tmp_path / "o", k=5), XITE_FAST_TEST_KILL_AT="config")
    proc.communicate(timeout=120)
    run_small(src, tgt, tmp_path / "o")  # options differ from the killed run's, which committed nothing
    assert run_digests(tmp_path / "o") == want


def test_two_concurrent_runs(ref, tmp_path):
    src, tgt, want = ref
    out, flag = tmp_path / "o", tmp_path / "go"
    proc = _spawn(run_opts(src, tgt, out), XITE_FAST_TEST_PAUSE_AT=f"part:0={flag}")
    try:
        deadline = time.monotonic() + 60
        while not flag.with_suffix(".reached").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match="is in use by another running process"):
            run_small(src, tgt, out)
        flag.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    run_small(src, tgt, out)
    assert run_digests(out) == want


def test_moved_run_directory_resumes(tmp_path):
    """Bundled inputs live inside the run directory under relative paths: a killed run, moved, resumes."""
    opts = run_opts("chatterbot:english", "chatterbot:korean", tmp_path / "ref", shard_size=512)
    run_augment(AugmentConfig(**opts), encoder=HashEncoder())
    want = run_digests(tmp_path / "ref")
    proc = _spawn({**opts, "out": str(tmp_path / "a")}, XITE_FAST_TEST_KILL_AT="part:0")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    shutil.move(tmp_path / "a", tmp_path / "b")
    _corrupt(tmp_path / "b" / "inputs" / "target.jsonl", "flip")  # a materialized input is re-made too
    res = run_augment(AugmentConfig(**{**opts, "out": str(tmp_path / "b")}), encoder=HashEncoder())
    assert res.parts_reused == 1 and run_digests(tmp_path / "b") == want


def test_disk_full_is_a_clean_error_and_the_rerun_completes(ref, tmp_path):
    src, tgt, want = ref
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        out = mnt / "o"
        with pytest.raises(DiskFullError, match="no space left on the device"):
            run_small(src, tgt, out)
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        run_small(src, tgt, out)
        assert run_digests(out) == want
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_encode_and_augment_number_rows_identically(tmp_path):
    """The one record reader: blank lines and a TSV header are skipped the same way by both."""
    from xite_fast.encode.store import EmbeddingStore, encode_corpus

    tgt = tmp_path / "t.tsv"
    tgt.write_text(
        "label\ttext\n\n"
        + "".join(f"{RUN_LABELS[i % 4]}\t text {i} \n" + ("\n" if i % 3 else "") for i in range(20))
    )
    src, _ = write_run_inputs(tmp_path / "in")
    res = run_small(src, tgt, tmp_path / "o")
    encode_corpus(tgt, tmp_path / "e", HashEncoder(), shard_size=8, batch_size=3)
    a, b = EmbeddingStore(tmp_path / "o" / "target_emb"), EmbeddingStore(tmp_path / "e")
    assert len(a) == len(b) == 20
    for p, q in zip(a.shard_paths, b.shard_paths, strict=True):
        assert p.read_bytes() == q.read_bytes()
    assert a.manifest["source"] == b.manifest["source"]
    prov = res.provenance()
    assert [r["target_text"] for r in prov] == [f"text {i}" for i in range(20)]
    emb = np.concatenate([x for _, x in a.iter_shards()])
    np.testing.assert_array_equal(emb, HashEncoder().encode([f"text {i}" for i in range(20)]))


def test_int_and_str_labels_are_different_types(tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n')
    tgt = tmp_path / "t.txt"
    tgt.write_text("x\n")
    with pytest.raises(ValueError, match="label '1' is a str but earlier labels are int"):
        run_small(src, tgt, tmp_path / "o")
    src.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 2}\n')
    res = run_small(src, tgt, tmp_path / "o2", vote="top1", k=1, mode="interp")
    assert res.manifest["label_names"] == [1, 2] and isinstance(res.provenance()[0]["label"], int)
