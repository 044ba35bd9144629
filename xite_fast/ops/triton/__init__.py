"""Triton kernels (GPU; on CPU only under ``TRITON_INTERPRET=1`` for testing).

Each module mirrors an op in :mod:`xite_fast.ops` and exposes the op's kernels on torch tensors:
``cosine_topk.cosine_topk``, ``lda_project_interp.lda_project_interp`` and
``sinkhorn.sinkhorn`` / ``sinkhorn.sinkhorn_backward`` (the contract of ``xite_fast._C.sinkhorn``).
This package imports nothing at import time, so ``importlib.util.find_spec`` on its submodules is
cheap and works without triton installed.
"""

from __future__ import annotations
