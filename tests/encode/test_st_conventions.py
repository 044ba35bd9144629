"""Encoder speaks sentence-transformers: encode keywords (output_value, precision, convert_to_*), similarity,
get_sentence_embedding_dimension, max_seq_length, calling the model, device=; compared against
sentence-transformers on a tiny local folder (tests/encode/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

st = pytest.importorskip("sentence_transformers")

from xite_fast.encode.encoder import OUTPUT_PRECISIONS, Encoder, quantize_embeddings  # noqa: E402

TEXTS = [
    "the weather is nice today",
    "where is the train station ?",
    "my computer is broken",
    "i like coffee",
    "a book about history",
    "what time is it",
    "how do you go home",
    "my sister is a doctor",
]


@pytest.fixture(scope="module")
def pair(st_dirs):
    from sentence_transformers import SentenceTransformer

    folder = st_dirs["mean"]
    return Encoder(folder, runtime="torch", device="cpu"), SentenceTransformer(str(folder), device="cpu")


def test_precision_matches_quantize_embeddings(pair):
    from sentence_transformers.util.quantization import quantize_embeddings as st_quantize

    enc, model = pair
    x = enc.encode(TEXTS, normalize_embeddings=False)
    for p in OUTPUT_PRECISIONS:  # the same function on the same floats: the same bytes
        want = st_quantize(x, precision=p)
        got = quantize_embeddings(x, p)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), p
        assert np.array_equal(enc.encode(TEXTS, normalize_embeddings=False, precision=p), got), p
    ours = enc.encode(TEXTS, normalize_embeddings=False, precision="ubinary")
    theirs = model.encode(TEXTS, precision="ubinary")
    assert ours.shape == theirs.shape == (len(TEXTS), 4) and ours.dtype == np.uint8
    bits = np.unpackbits(ours, axis=1) != np.unpackbits(theirs, axis=1)
    assert bits.mean() < 0.01  # a sign may flip only for a value within float noise of 0
    i8 = enc.encode(TEXTS, normalize_embeddings=False, precision="int8").astype(int)
    assert np.abs(i8 - model.encode(TEXTS, precision="int8").astype(int)).max() <= 1
    with pytest.raises(
        ValueError, match=r"precision must be one of .*the model's precision is Encoder\(precision"
    ):
        enc.encode(TEXTS, precision="fp32")
    with pytest.raises(ValueError, match="encode at least 2 texts"):
        enc.encode("one", precision="int8")


def test_token_embeddings_match_sentence_transformers(pair):
    enc, model = pair
    ours = enc.encode(TEXTS[:3], output_value="token_embeddings")
    theirs = model.encode(TEXTS[:3], output_value="token_embeddings")
    assert len(ours) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(a, np.ndarray) and a.shape == tuple(b.shape)
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    one = enc.encode("i like coffee", output_value="token_embeddings", convert_to_tensor=True)
    assert one.shape[1] == enc.dim and one.ndim == 2
    with pytest.raises(ValueError, match="output_value must be one of"):
        enc.encode(TEXTS, output_value=None)


def test_sentence_embeddings_similarity_and_attributes(pair):
    enc, model = pair
    ours = enc.encode(TEXTS, normalize_embeddings=False)
    theirs = model.encode(TEXTS)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    sim = enc.similarity(ours, ours[:3])
    np.testing.assert_allclose(sim.numpy(), model.similarity(theirs, theirs[:3]).numpy(), atol=1e-5)
    assert tuple(sim.shape) == (len(TEXTS), 3)
    assert enc.get_sentence_embedding_dimension() == enc.get_embedding_dimension() == enc.dim
    assert model.get_embedding_dimension() == enc.dim
    assert enc.max_seq_length == model.max_seq_length == 40
    np.testing.assert_array_equal(enc(TEXTS), enc.encode(TEXTS))  # calling the model encodes
    t = enc.encode(TEXTS, convert_to_tensor=True)
    assert tuple(t.shape) == (len(TEXTS), enc.dim) and str(t.device) == "cpu" == enc.device
    long = "the weather is nice today and i like coffee"  # 11 tokens with [CLS] and [SEP]
    full = enc.encode(long)
    enc.max_seq_length = 8
    try:
        assert len(enc.tokenize([long])[0]) == 8
        assert not np.allclose(enc.encode(long), full)
    finally:
        enc.max_seq_length = 40
    with pytest.raises(ValueError, match="max_seq_length must be <= 64"):
        enc.max_seq_length = 65


def test_tables_in_one_row_out_per_row(pair):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    enc, _ = pair
    want = enc.encode(TEXTS)
    df = pd.DataFrame({"text": TEXTS, "label": range(len(TEXTS))})
    for obj in (
        df["text"],
        df,
        datasets.Dataset.from_pandas(df)["text"],
        datasets.Dataset.from_pandas(df),
        tuple(TEXTS),
    ):
        np.testing.assert_array_equal(enc.encode(obj), want)
    with pytest.raises(ValueError, match=r"sentences: no column text_field='text'"):
        enc.encode(df.rename(columns={"text": "sentence"}))
    with pytest.raises(ValueError, match=r"sentences\[1\] must be a str .* got NoneType"):
        enc.encode(pd.Series(["a", None]))


def test_device_argument(st_dirs):
    enc = Encoder(st_dirs["mean"], runtime="torch", device="cpu")
    assert enc.device == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        Encoder(st_dirs["mean"], runtime="onnx", device="meta")
