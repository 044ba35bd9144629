"""Boundary validation shared by all ops (STYLE rule 6): clear ValueErrors naming the argument."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_torch", "check_matrix", "check_finite", "check_positive_int"]


def is_torch(x: Any) -> bool:
    t = type(x)
    return t.__module__.startswith("torch") and t.__name__ in ("Tensor", "Parameter")


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def check_matrix(name: str, x: Any, *, dim: int | None = None, ndim: int = 2, what: str = "(N, D)") -> None:
    """Raise ValueError unless ``x`` is an ``ndim``-D floating numpy array or torch tensor."""
    if not (isinstance(x, np.ndarray) or is_torch(x)):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {_shape(x)}")
    if is_torch(x):
        if not x.dtype.is_floating_point:
            raise ValueError(f"{name} must have a floating dtype (float32 preferred), got {x.dtype}")
    elif not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must have a floating dtype (float32 preferred), got {x.dtype}")
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(f"{name} must have last dimension {dim}, got shape {_shape(x)}")


def check_finite(name: str, x: Any) -> None:
    """Raise ValueError if ``x`` holds NaN or inf (reports the first bad row)."""
    if is_torch(x):
        import torch

        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            row = int(bad.reshape(x.shape[0], -1).any(dim=1).nonzero()[0, 0]) if x.ndim else 0
            raise ValueError(f"{name} contains NaN or inf (first at row {row})")
        return
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(x.shape[0], -1).any(axis=1))[0]) if x.ndim else 0
        raise ValueError(f"{name} contains NaN or inf (first at row {row})")


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value
