"""The public surface: ``xite_fast.__all__`` is pinned, every name is the callable/class it claims, and no
public name is also a submodule (``import xite_fast.train`` must not shadow a function)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import xite_fast

EXPECTED = {
    "Backend",
    "backends_available",
    "__version__",
    "cosine_topk",
    "lda_project_interp",
    "sinkhorn_divergence",
    "LanguageLDA",
    "Encoder",
    "encode_corpus",
    "EmbeddingStore",
    "XiteAugmenter",
    "AugmentConfig",
    "run_augment",
    "EncodeConfig",
    "run_encode",
    "XiteConfig",
    "XiteModel",
    "XiteDataset",
    "XiteCollator",
    "XiteTrainer",
    "train_xite",
    "predict",
    "classification_metrics",
    "label_map_for",
    "OTAlignConfig",
    "ot_align",
    "iter_table_records",
}
CLASSES = {
    "Backend",
    "LanguageLDA",
    "Encoder",
    "EmbeddingStore",
    "XiteAugmenter",
    "AugmentConfig",
    "EncodeConfig",
    "XiteConfig",
    "XiteModel",
    "XiteDataset",
    "XiteCollator",
    "XiteTrainer",
    "OTAlignConfig",
}


def test_all_is_pinned():
    assert set(xite_fast.__all__) == EXPECTED
    assert len(xite_fast.__all__) == len(EXPECTED)
    assert isinstance(xite_fast.__version__, str)


def test_logging_module_is_public_and_set_up_on_import():
    import logging

    assert inspect.ismodule(xite_fast.logging) and xite_fast.logging.__name__ == "xite_fast.logging"
    assert callable(xite_fast.logging.set_verbosity_info) and callable(xite_fast.logging.get_logger)
    assert logging.getLogger("xite_fast").handlers  # the default handler, from `import xite_fast` on


def test_no_public_name_is_a_submodule():
    subs = {m.name for m in pkgutil.iter_modules(xite_fast.__path__)}
    assert {"train", "ops", "xite", "encode"} <= subs
    assert not (set(xite_fast.__all__) & subs)


def test_each_name_is_its_callable_or_class_even_after_submodule_imports():
    for sub in ("xite_fast.train", "xite_fast.train.trainer", "xite_fast.train.align", "xite_fast.ops"):
        importlib.import_module(sub)
    for name in sorted(EXPECTED - {"__version__"}):
        obj = getattr(xite_fast, name)
        assert not inspect.ismodule(obj), name
        assert inspect.isclass(obj) == (name in CLASSES), name
        assert callable(obj), name
    from transformers import Trainer

    assert issubclass(xite_fast.XiteTrainer, Trainer)
    assert xite_fast.train_xite.__module__ == "xite_fast.train.trainer"
    assert (
        xite_fast.label_map_for.__module__
        == xite_fast.classification_metrics.__module__
        == "xite_fast.train.trainer"
    )
    assert xite_fast.run_augment.__module__ == "xite_fast.xite.pipeline"
