"""One dispatch point for every op (STYLE rule 3).

``Backend.AUTO`` picks the fastest available implementation and falls back quietly; an explicitly
requested backend that is unavailable raises, naming what is missing. The environment variable
``XITE_FAST_BACKEND`` overrides ``"auto"`` (never an explicit choice).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from enum import Enum

__all__ = ["Backend", "backends_available", "resolve_backend", "load_extension"]


class Backend(str, Enum):
    AUTO = "auto"
    CPU = "cpu"  # C++ AVX2/FMA + OpenMP kernels in xite_fast._C
    TRITON = "triton"  # Triton kernels (GPU; CPU only under TRITON_INTERPRET=1)
    CUDA = "cuda"  # CUDA C++ kernels in csrc/cuda (XITE_ENABLE_CUDA=ON builds)
    TORCH = "torch"  # plain-torch reference (xite_fast.reference)

    @classmethod
    def parse(cls, value: str | Backend, name: str = "backend") -> Backend:
        if isinstance(value, Backend):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(repr(b.value) for b in cls)
            raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


_EXT_ERROR: str | None = None


@functools.cache
def load_extension():
    """Return the compiled module ``xite_fast._C`` or ``None`` (import must never fail)."""
    global _EXT_ERROR
    try:
        from xite_fast import _C  # type: ignore[attr-defined]
    except ImportError as exc:  # not built: the TORCH backend still works
        _EXT_ERROR = f"{type(exc).__name__}: {exc}"
        return None
    return _C


def _cuda_device_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


def _triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return _cuda_device_available() or os.environ.get("TRITON_INTERPRET") == "1"


def backends_available() -> dict[str, bool]:
    """Which backends can run here: ``{"cpu": ..., "triton": ..., "cuda": ..., "torch": True}``."""
    ext = load_extension()
    return {
        "cpu": ext is not None and bool(ext.cpu_supports_avx2()),
        "triton": _triton_available(),
        "cuda": ext is not None and bool(ext.with_cuda()) and _cuda_device_available(),
        "torch": True,
    }


def _missing_reason(backend: Backend, op: str) -> str:
    ext = load_extension()
    if backend is Backend.CPU:
        if ext is None:
            return (
                f"the C++ extension xite_fast._C is not built ({_EXT_ERROR}); reinstall with `pip install .`"
            )
        if not ext.cpu_supports_avx2():
            return "this CPU lacks AVX2/FMA"
        return f"xite_fast._C has no kernel for {op!r}"
    if backend is Backend.TRITON:
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed (`pip install triton`)"
        return "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on CPU for testing)"
    if backend is Backend.CUDA:
        if ext is None or not ext.with_cuda():
            return "xite_fast._C was built without CUDA (rebuild with XITE_ENABLE_CUDA=ON)"
        return "no CUDA device is visible to torch"
    return "unknown"


def _has_kernel(backend: Backend, op: str) -> bool:
    avail = backends_available()
    if not avail.get(backend.value, False):
        return False
    if backend is Backend.CPU:
        return hasattr(load_extension(), op)
    if backend is Backend.CUDA:
        return hasattr(load_extension(), f"{op}_cuda")
    if backend is Backend.TRITON:
        return importlib.util.find_spec(f"xite_fast.ops.triton.{op}") is not None
    return True


def resolve_backend(op: str, backend: str | Backend = "auto", *, on_gpu: bool = False) -> Backend:
    """Pick the implementation of ``op``.

    Args:
        op: op name, e.g. ``"cosine_topk"`` (the C++ function must carry the same name).
        backend: ``"auto"`` or an explicit :class:`Backend`.
        on_gpu: inputs live on a CUDA device (AUTO then prefers CUDA, then TRITON).
    """
    requested = Backend.parse(backend)
    if requested is Backend.AUTO:
        env = os.environ.get("XITE_FAST_BACKEND")
        if env:
            requested = Backend.parse(env, name="XITE_FAST_BACKEND")
    if requested is Backend.AUTO:
        order = (Backend.CUDA, Backend.TRITON, Backend.TORCH) if on_gpu else (Backend.CPU, Backend.TORCH)
        for cand in order:
            if _has_kernel(cand, op):
                return cand
        return Backend.TORCH
    if not _has_kernel(requested, op):
        raise RuntimeError(
            f"backend={requested.value!r} was requested for {op} but {_missing_reason(requested, op)}"
        )
    return requested
