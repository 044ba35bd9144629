"""The layer order of the package: the one place it is written down (``tests/test_layers.py`` enforces it).

A module may import from its own subpackage and from the layers below its own, never from a layer above:
a lower layer that needs something from a higher one means that thing lives in the wrong layer. Lowest
first; each entry names top-level modules or subpackages of ``xite_fast`` (``__init__`` is the package's
own ``__init__.py``, so ``from xite_fast import X`` counts as an import of the top layer).

Private names stay inside their subpackage: no module imports a ``_name`` (or a ``_module``) of another
subpackage. The bottom layer's private modules (:data:`SHARED_PRIVATE`) are shared by the whole package,
but their own ``_names`` are not.
"""

from __future__ import annotations

__all__ = ["LAYERS", "SHARED_PRIVATE"]

LAYERS: tuple[tuple[str, ...], ...] = (
    # the version, logging and progress-bar policy, file plumbing (hashing, atomic writes, locks, cache root),
    # boundary checks, the op dispatch point, the one Ray connection/error helper, plain-torch references of
    # the ops, the extension
    ("_version", "logging", "_io", "_validation", "_backend", "_ray", "_layers", "reference", "_C"),
    ("ops",),  # Python faces of the kernels
    ("data",),  # the record reader and the bundled data sets
    ("encode",),  # encoders, pooling, embedding stores
    ("xite",),  # LDA, matching, label transfer, the augment pipeline
    ("objectives",),  # training losses: tensors in, tensors out
    ("train",),  # Hugging Face Trainer integration
    ("cli",),  # argument parsing around one library call per subcommand
    ("__init__", "__main__"),
)

SHARED_PRIVATE: frozenset[str] = frozenset(n for n in LAYERS[0] if n.startswith("_"))
