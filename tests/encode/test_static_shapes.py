"""Encoder(static_shapes=True): OpenVINO with one static-shape compile per padded batch shape, against the
dynamic-shape model it replaces (same embeddings within rounding), with dedupe's byte-identity kept and the
compiled shapes bounded (one per padded width at the job's batch size)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.utils import make_bert_folder, store_content
from xite_fast.encode.encoder import Encoder, EncoderConfig
from xite_fast.encode.runtime import STATIC_MAX_MODELS, STATIC_WIDTH_MULTIPLE
from xite_fast.encode.store import encode_corpus

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_bert_folder(tmp_path_factory.mktemp("bert") / "tiny-bert")


def _texts(n: int = 90) -> list[str]:
    from tests.utils import BERT_WORDS

    rng = np.random.default_rng(5)
    uniq = [" ".join(rng.choice(BERT_WORDS, rng.integers(1, 60))) for _ in range(30)]
    return [uniq[i] for i in rng.integers(0, 30, n)]


def test_static_equals_dynamic_within_rounding_and_shapes_are_bounded(tiny_bert, tmp_path):
    texts = _texts()
    dyn = Encoder(tiny_bert, runtime="openvino", num_threads=1, cache_dir=tmp_path)
    st = Encoder(tiny_bert, runtime="openvino", num_threads=1, cache_dir=tmp_path, static_shapes=True)
    assert st.runtime_name.endswith(".static-cpu") and not dyn.runtime_name.endswith(".static-cpu")
    assert st.model_id != dyn.model_id  # stores of the two never mix
    for bs in (8, 13):
        a, b = dyn.encode(texts, batch_size=bs), st.encode(texts, batch_size=bs)
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6)
    # every batch ran at the job's batch size (short batches padded with rows) and a padded width
    widths = {w for _, w in st._plan(st.tokenize([st.prefix + t for t in texts]), 13)}
    want = {(13, -(-w // STATIC_WIDTH_MULTIPLE) * STATIC_WIDTH_MULTIPLE) for w in widths}
    assert len(want) > STATIC_MAX_MODELS  # so the bound below is exercised
    rt = st._runtime
    assert len(rt._static) == STATIC_MAX_MODELS and set(rt._static) <= want
    # loaded shapes do not change a row: a fresh runtime (nothing loaded) gives the same bytes
    fresh = Encoder(tiny_bert, runtime="openvino", num_threads=1, cache_dir=tmp_path, static_shapes=True)
    np.testing.assert_array_equal(
        fresh.encode(texts[::-1], batch_size=13)[::-1].view(np.uint32), b.view(np.uint32)
    )
    assert fresh._runtime.static_compiles >= len(want)


def test_static_rows_do_not_depend_on_their_batch(tiny_bert, tmp_path):
    """Dedupe (distinct rows re-batched) gives encode's bytes, in memory and across store shards."""
    enc = Encoder(tiny_bert, runtime="openvino", num_threads=1, cache_dir=tmp_path, static_shapes=True)
    assert enc.dedupe_exact
    texts = _texts(300)
    full = enc.encode(texts, batch_size=8)
    got, n_run = enc.encode_distinct(texts, batch_size=8)
    assert n_run < len(texts) // 4
    np.testing.assert_array_equal(got.view(np.uint32), full.view(np.uint32))
    a = encode_corpus(texts, tmp_path / "a", enc, shard_size=64, batch_size=8, dedupe=True)
    b = encode_corpus(texts, tmp_path / "b", enc, shard_size=64, batch_size=8, dedupe=False)
    assert store_content(a.out_dir) == store_content(b.out_dir)
    assert a.encoded_rows < len(texts)


def test_static_int8_is_close_to_dynamic_int8(e5_tiny_dir):
    pytest.importorskip("nncf")
    texts = _texts(40) + ["오늘 날씨가 정말 좋네요.", "The weather is really nice today.", ""]
    dyn = Encoder(runtime="openvino", precision="int8", num_layers=2)
    st = Encoder(runtime="openvino", precision="int8", num_layers=2, static_shapes=True)
    st._runtime.cfg.pop("CACHE_DIR")  # this encoder's cache is the user's: no model-cache blobs from a test
    a, b = dyn.encode(texts, batch_size=16), st.encode(texts, batch_size=16)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.9995, cos  # same int8 IR, static kernels: rounding only


def test_static_shapes_errors_name_the_argument(tiny_bert):
    with pytest.raises(ValueError, match=r"static_shapes=True needs runtime 'openvino', got runtime='torch'"):
        Encoder(tiny_bert, runtime="torch", static_shapes=True)
    with pytest.raises(ValueError, match=r"static_shapes must be a bool, got 'yes'"):
        Encoder(tiny_bert, runtime="openvino", static_shapes="yes")
    with pytest.raises(ValueError, match=r"static_shapes must be a bool, got 1"):
        EncoderConfig(static_shapes=1).validate()
    assert (
        EncoderConfig(static_shapes=True, encoder_runtime="openvino").encoder_kwargs()["static_shapes"]
        is True
    )
    assert "static_shapes" not in EncoderConfig().encoder_kwargs()


def test_cli_flag_reaches_the_run_config():
    from xite_fast.cli.main import build_parser, config_from_args
    from xite_fast.xite.pipeline import AugmentConfig

    p = build_parser()
    args = p.parse_args(
        ["augment", "--source", "s.jsonl", "--target", "t.jsonl", "--out", "o", "--static-shapes"]
    )
    assert config_from_args(AugmentConfig, args).static_shapes is True
    args = p.parse_args(["augment", "--source", "s.jsonl", "--target", "t.jsonl", "--out", "o"])
    assert config_from_args(AugmentConfig, args).static_shapes is False
