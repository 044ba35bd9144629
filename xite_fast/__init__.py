"""xite_fast: fast cross-lingual transfer for multilingual encoders.

``import xite_fast`` always works: the C++ extension, triton, onnxruntime and GPUs are optional,
and heavy submodules load on first use.
"""

from __future__ import annotations

import importlib

# the default log handler and the verbosity setters: xite_fast.logging.set_verbosity_info()
from xite_fast import logging as logging
from xite_fast._backend import Backend, backends_available
from xite_fast._version import __version__

# public name -> submodule that defines it (loaded lazily, so `import xite_fast` stays cheap)
_LAZY = {
    "cosine_topk": "xite_fast.ops.cosine_topk",
    "lda_project_interp": "xite_fast.ops.lda_project_interp",
    "LanguageLDA": "xite_fast.xite.lda",
    "Encoder": "xite_fast.encode.encoder",
    "encode_corpus": "xite_fast.encode.store",
    "EmbeddingStore": "xite_fast.encode.store",
    # the one table adapter: files, DataFrames, Datasets, lists -> records
    "iter_table_records": "xite_fast.data.records",
    "XiteAugmenter": "xite_fast.xite.augmenter",
    # the whole `xite-fast augment` job over a run directory (the CLI calls the same function)
    "AugmentConfig": "xite_fast.xite.pipeline",
    "run_augment": "xite_fast.xite.pipeline",
    # `xite-fast encode`: one corpus into an EmbeddingStore
    "EncodeConfig": "xite_fast.xite.pipeline",
    "run_encode": "xite_fast.xite.pipeline",
    # fine-tuning inside Hugging Face Trainer (names chosen so no submodule shadows them)
    "XiteConfig": "xite_fast.train.config",
    "XiteModel": "xite_fast.train.model",
    "XiteDataset": "xite_fast.train.collator",
    "XiteCollator": "xite_fast.train.collator",
    "XiteTrainer": "xite_fast.train.trainer",
    "train_xite": "xite_fast.train.trainer",
    "predict": "xite_fast.train.trainer",
    "classification_metrics": "xite_fast.train.trainer",  # compute_metrics for Trainer: accuracy, macro-F1
    "label_map_for": "xite_fast.train.trainer",  # the label order train_xite writes into model.config
    "OTAlignConfig": "xite_fast.train.align",
    "ot_align": "xite_fast.train.align",
    "sinkhorn_divergence": "xite_fast.ops.sinkhorn",
}

__all__ = ["Backend", "backends_available", "__version__", *_LAZY]  # and the module xite_fast.logging


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xite_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
