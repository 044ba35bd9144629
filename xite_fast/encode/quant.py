"""int8 encoders: SmoothQuant + dynamic int8 of the fused BERT ONNX graph for onnxruntime
(``Encoder(runtime="onnx", precision="int8")``), and NNCF static int8 of the raw graph for OpenVINO
(:func:`quantize_openvino_int8`, ``runtime="openvino"``). Both calibrate on :func:`calibration_texts`.

onnxruntime recipe (``_INT8_VERSION`` in :mod:`xite_fast.encode.encoder`):

1. Calibrate: run the fp32 graph on real sentences and record, per input channel j of every quantized
   matmul, ``amax_j = max |X_j|`` over all non-padding tokens.
2. Smooth (Xiao et al. 2022, SmoothQuant): ``s_j = amax_j**alpha / max_n |W_jn|**(1 - alpha)``; insert
   ``X * (1/s)`` before the matmul and scale weight row j by ``s_j``. ``(X / s) @ (s W) == X @ W``, so
   this is exact in fp32. e5/XLM-R LayerNorm outputs have one or two channels far above the median,
   which makes the per-tensor dynamic activation scale coarse; smoothing moves that range into the
   weights. The scales cannot be folded into the LayerNorm gamma here: in post-LN BERT the LayerNorm
   output is also the residual stream, so an explicit ``Mul`` is inserted (one elementwise pass).
3. ``onnxruntime.quantization.quantize_dynamic``: per-channel int8 weights, per-tensor dynamic uint8
   activations, for the fused Attention (QKV), attention-output and FFN-input matmuls. The FFN-output
   matmuls (fed by GELU) stay fp32: quantizing them costs more neighbour agreement than all the others
   together, even after smoothing.

Its accuracy and speed against fp32 are in bench/README.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CALIBRATION_LANGUAGES",
    "calibration_batches",
    "calibration_texts",
    "cpu_has_vnni",
    "import_nncf",
    "quantize_int8_smooth",
    "quantize_openvino_int8",
    "smooth_graph",
    "smooth_scales",
]

# not the benchmark's languages (Korean/English/...), so the benchmark does not grade its own calibration
CALIBRATION_LANGUAGES = ("german", "french", "turkish", "indonesian", "thai", "urdu", "portuguese", "italian")
_PER_LANGUAGE = 40
_GELU_OPS = ("Gelu", "BiasGelu", "FastGelu")
# used only when chatterbot-corpus is not installed
_BUILTIN_CALIBRATION = (
    "Das Wetter ist heute wirklich schön.",
    "Je voudrais réserver une table pour deux personnes ce soir.",
    "Bugün hava çok güzel, parka gidelim mi?",
    "Saya suka membaca buku sejarah di perpustakaan.",
    "วันนี้อากาศดีมาก",
    "کیا آپ مجھے ریلوے اسٹیشن کا راستہ بتا سکتے ہیں؟",
    "O computador quebrou e preciso de ajuda.",
    "Mi piace molto il caffè italiano.",
    "The quick brown fox jumps over the lazy dog.",
    "오늘 날씨가 정말 좋네요.",
    "Где находится ближайшая станция метро?",
    "我明天要去北京出差。",
    "मैं कल सुबह दिल्ली जाऊँगा।",
    "¿Cuál es tu libro favorito y por qué?",
    "明日は雨が降るそうです。",
    "هل يمكنك أن تخبرني أين تقع محطة القطار؟",
)


@functools.lru_cache(maxsize=1)
def calibration_texts() -> tuple[tuple[str, ...], str]:
    """Calibration sentences and a tag naming their source (part of the int8 cache key).

    Returns:
        (texts, tag): the first 40 chatterbot-corpus sentences of each of ``CALIBRATION_LANGUAGES``
        (320 texts, tag ``"cb320"``), or a built-in 16-sentence multilingual list (tag ``"builtin16"``)
        when chatterbot-corpus is not installed.
    """
    try:
        from xite_fast.data.chatterbot import load_chatterbot

        texts = [r["text"] for lang in CALIBRATION_LANGUAGES for r in load_chatterbot(lang)[:_PER_LANGUAGE]]
    except (ImportError, ValueError, FileNotFoundError):
        texts = []
    if texts:
        return tuple(texts), f"cb{len(texts)}"
    return _BUILTIN_CALIBRATION, f"builtin{len(_BUILTIN_CALIBRATION)}"


def smooth_scales(act_amax: np.ndarray, weight: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """SmoothQuant per-input-channel scales.

    Args:
        act_amax: (K,) float32, max |activation| per input channel (calibration).
        weight: (K, N) float32 right-hand side of ``X @ W``.
        alpha: migration strength in [0, 1]; 0 = no activation smoothing, 1 = all range into weights.

    Returns:
        (K,) float32 ``s_j = amax_j**alpha / max_n |W_jn|**(1-alpha)`` (both clamped to >= 1e-5 so a
        dead channel gets a finite scale).
    """
    act_amax = np.asarray(act_amax, dtype=np.float64)
    weight = np.asarray(weight)
    if weight.ndim != 2 or act_amax.shape != (weight.shape[0],):
        raise ValueError(
            f"act_amax must be (K,) and weight (K, N), got {act_amax.shape} and {tuple(weight.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = np.maximum(act_amax, 1e-5)
    w = np.maximum(np.abs(weight).max(1).astype(np.float64), 1e-5)
    return (a**alpha / w ** (1.0 - alpha)).astype(np.float32)


def _targets(graph) -> tuple[list, list]:
    """(nodes to smooth + quantize, FFN-output matmuls kept fp32): matmuls with a constant 2-D weight."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    quant, keep = [], []
    for n in graph.node:
        if n.op_type not in ("MatMul", "Attention") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if len(inits[n.input[1]].dims) != 2:
            continue
        src = producer.get(n.input[0])
        (keep if src is not None and src.op_type in _GELU_OPS else quant).append(n)
    return quant, keep


def calibration_batches(
    ids_list: Sequence[Sequence[int]], pad_id: int, batch_size: int, token_types: bool = False
) -> list[dict[str, np.ndarray]]:
    """Padded feeds over the calibration texts, sorted by length (little padding), in a fixed order.

    Returns:
        list of ``{"input_ids", "attention_mask"[, "token_type_ids"]}`` (B, S) int64 dicts (zeros for
        the segment ids).
    """
    if len(ids_list) == 0:
        raise ValueError("calib_ids must hold at least one tokenized text, got 0")
    out = []
    order = np.argsort([len(x) for x in ids_list], kind="stable")
    for b0 in range(0, len(order), batch_size):
        chunk = [ids_list[i] for i in order[b0 : b0 + batch_size]]
        width = max(len(x) for x in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, seq in enumerate(chunk):
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        out.append(feeds)
    return out


def _calibrate(
    model, names: list[str], ids_list: Sequence[Sequence[int]], pad_id: int, token_types: bool = False
) -> dict:
    """max |x| per last-axis channel of each tensor in ``names``, over non-padding tokens."""
    import onnx
    import onnxruntime as ort

    cal = onnx.ModelProto()
    cal.CopyFrom(model)
    for name in names:
        cal.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(cal.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax: dict[str, np.ndarray] = {}
    for feeds in calibration_batches(ids_list, pad_id, 32, token_types):
        outs = sess.run(names, feeds)
        keep = feeds["attention_mask"].astype(bool).reshape(-1)
        for name, out in zip(names, outs, strict=True):
            rows = np.abs(out.reshape(keep.shape[0], -1)[keep]).max(0)
            amax[name] = rows if name not in amax else np.maximum(amax[name], rows)
    return amax


def quantize_int8_smooth(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    calib_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    alpha: float = 0.5,
    reduce_range: bool = False,
    token_types: bool = False,
) -> dict:
    """Write the SmoothQuant + dynamic int8 version of the fp32 graph ``src`` to ``dest``.

    Args:
        src: fp32 ONNX graph with inputs ``input_ids``/``attention_mask`` (B, S) int64.
        dest: output path (written via a temporary file in the same folder, then renamed).
        calib_ids: token ids of the calibration texts (with special tokens), at least one.
        pad_id: padding token id.
        alpha: SmoothQuant migration strength (the default was the best of those tried on e5-small).
        reduce_range: 7-bit weights (needed where u8*s8 pair sums saturate int16: AVX2 without VNNI).
        token_types: the graph also takes ``token_type_ids`` (fed zeros during calibration).

    Returns:
        ``{"smoothed": [node names], "kept_fp32": [node names]}``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dest = Path(dest)
    model = onnx.load(str(src))
    quant, keep = smooth_graph(model, calib_ids, pad_id, alpha=alpha, token_types=token_types)
    tmp_fp32 = dest.with_name(f".tmp-smooth-{os.getpid()}-{dest.name}")
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    inferred = tmp_fp32.with_name(tmp_fp32.stem + "-inferred.onnx")  # quantize_dynamic's scratch file
    try:
        onnx.save(model, str(tmp_fp32))
        del model
        from xite_fast.logging import quiet_logger

        with warnings.catch_warnings(), quiet_logger("root"):
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(tmp_fp32),
                str(tmp),
                op_types_to_quantize=["MatMul", "Attention"],
                nodes_to_exclude=keep,
                per_channel=True,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                # fused contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape inference
                extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
            )
        os.replace(tmp, dest)
    finally:
        for p in (tmp_fp32, tmp, inferred):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return {"smoothed": quant, "kept_fp32": keep}


def smooth_graph(
    model, calib_ids: Sequence[Sequence[int]], pad_id: int, *, alpha: float = 0.5, token_types: bool = False
) -> tuple[list[str], list[str]]:
    """Calibrate and apply SmoothQuant in place (exact in fp32: the graph computes the same function).

    Args:
        model: onnx.ModelProto of the fp32 graph (inputs ``input_ids``/``attention_mask`` (B, S) int64).
        calib_ids: token ids of the calibration texts (with special tokens), at least one.
        pad_id: padding token id.
        alpha: SmoothQuant migration strength.

    Returns:
        (smoothed, kept_fp32): names of the matmul/Attention nodes that got a ``Mul(1/s)`` in front
        (to be quantized) and of the GELU-fed FFN-output matmuls (to stay fp32).
    """
    from onnx import helper, numpy_helper

    if len(calib_ids) == 0:
        raise ValueError("calib_ids must hold at least one tokenized text, got 0")
    graph = model.graph
    quant, keep = _targets(graph)
    amax = _calibrate(model, sorted({n.input[0] for n in quant}), calib_ids, pad_id, token_types)
    inits = {i.name: i for i in graph.initializer}
    qset = {id(n) for n in quant}
    nodes = []
    for n in graph.node:
        if id(n) in qset:
            w_init = inits[n.input[1]]
            w = numpy_helper.to_array(w_init)
            s = smooth_scales(amax[n.input[0]], w, alpha)
            w_init.CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), w_init.name))
            inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{n.name}_smooth_inv")
            graph.initializer.append(inv)
            out = f"{n.input[0]}_smoothed_for_{n.name}"
            nodes.append(helper.make_node("Mul", [n.input[0], inv.name], [out], name=f"{n.name}_smooth"))
            n.input[0] = out
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    return [n.name for n in quant], [n.name for n in keep]


def cpu_has_vnni() -> bool:
    """True when /proc/cpuinfo lists AVX512-VNNI or AVX-VNNI (u8*s8 dot products without int16 saturation)."""
    from xite_fast.encode.runtime import cpu_flags

    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags


# ----------------------------------------------------------------------------- OpenVINO + NNCF


def import_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise ImportError(
            "precision='int8' on runtime='openvino' needs NNCF: `pip install nncf`; or use runtime='onnx'"
        ) from exc
    return nncf


def quantize_openvino_int8(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    calib_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    token_types: bool = False,
    smooth_alpha: float | None = None,
    fast_bias_correction: bool = True,
    ignored_types: Sequence[str] = (),
) -> None:
    """NNCF post-training static int8 quantization of the fp32 graph ``src``, written as OpenVINO IR.

    ``nncf.quantize`` with ``model_type=TRANSFORMER`` (SmoothQuant on the matmuls, then min-max
    statistics for per-channel int8 weights and per-tensor int8 activations, FakeQuantize nodes that
    the CPU plugin runs as VNNI int8 GEMMs) and preset ``MIXED`` (asymmetric activations: GELU outputs
    are one-sided). Calibration runs the graph over :func:`calibration_batches` of ``calib_ids``
    (batches of 16 sorted by length; one NNCF sample per batch, all of them used).

    Args:
        src: fp32 ONNX graph with inputs ``input_ids``/``attention_mask`` (B, S) int64 (pooling inside).
        dest: ``.xml`` path; the weights go to ``dest`` with suffix ``.bin`` (fp32 constants kept fp32).
        calib_ids: token ids of the calibration texts (with special tokens), at least one.
        pad_id: padding token id.
        token_types: the graph also takes ``token_type_ids`` (fed zeros during calibration).
        smooth_alpha: SmoothQuant migration strength for matmuls; ``None`` = NNCF's default for
            transformers, a negative value turns SmoothQuant off.
        fast_bias_correction: NNCF's fast bias correction (``False``: the slower full one).
        ignored_types: OpenVINO op types left unquantized (``nncf.IgnoredScope(types=...)``).
    """
    import logging

    import openvino as ov

    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    items = calibration_batches(calib_ids, pad_id, 16, token_types)
    kw: dict = {}
    if smooth_alpha is not None:
        kw["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=float(smooth_alpha))
        )
    if ignored_types:
        kw["ignored_scope"] = nncf.IgnoredScope(types=list(ignored_types))
    model = ov.Core().read_model(str(src))
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)  # its INFO lines
    # its progress bars (rich, on stdout) go to stderr: stdout holds the CLI's --json summary
    try:
        with contextlib.redirect_stdout(sys.stderr):
            q = nncf.quantize(
                model,
                nncf.Dataset(items),
                model_type=nncf.ModelType.TRANSFORMER,
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(items),
                fast_bias_correction=fast_bias_correction,
                **kw,
            )
    finally:
        nncf_log.setLevel(level)
    ov.save_model(q, str(dest), compress_to_fp16=False)
