"""Token states -> sentence vectors, as sentence-transformers' ``Pooling`` module computes them.

One rule, two array libraries side by side: :func:`pool` (torch; inside the exported ONNX graph, the torch
runtime, training and the EAR loss) and :func:`pool_numpy` (runtimes whose output is token states in numpy,
e.g. CTranslate2). Modes (:data:`POOLING_MODES`): ``mean`` over the real tokens, ``cls`` (first token),
``max`` (padding set to -1e9, sentence-transformers' value, so it never wins), ``mean_sqrt_len_tokens``
(sum / sqrt(count)) and ``lasttoken`` (the last real token).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["POOLING_MODES", "pool", "pool_numpy"]

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "lasttoken")
_PAD_MAX = -1e9


def _bad_mode(mode: Any) -> ValueError:
    return ValueError(f"pooling mode must be one of {'/'.join(POOLING_MODES)}, got {mode!r}")


def pool(h, mask, mode: str):
    """Pool token states into sentence vectors (torch).

    Args:
        h: (B, S, H) float token states.
        mask: (B, S) int attention mask (1 = token).
        mode: one of :data:`POOLING_MODES`.

    Returns:
        (B, H) tensor of ``h``'s dtype.
    """
    import torch

    m = mask.unsqueeze(-1).to(h.dtype)
    if mode == "cls":
        return h[:, 0]
    if mode == "max":
        return torch.where(m > 0, h, torch.full_like(h, _PAD_MAX)).max(1).values
    if mode == "lasttoken":
        last = (mask.sum(1) - 1).clamp(min=0).long()
        return h[torch.arange(h.shape[0]), last]
    s = (h * m).sum(1)
    n = m.sum(1).clamp(min=1e-9)  # an all-padding row cannot occur (<s></s>), cheap guard
    if mode == "mean":
        return s / n
    if mode == "mean_sqrt_len_tokens":
        return s / n.sqrt()
    raise _bad_mode(mode)


def pool_numpy(h: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pool token states into sentence vectors (numpy), the same rule as :func:`pool`.

    Args:
        h: (B, S, H) float32 token states.
        mask: (B, S) int attention mask (1 = token).
        mode: one of :data:`POOLING_MODES`.

    Returns:
        (B, H) float32.
    """
    m = mask[..., None].astype(np.float32)
    if mode == "cls":
        return np.ascontiguousarray(h[:, 0])
    if mode == "max":
        return np.where(m > 0, h, np.float32(_PAD_MAX)).max(1)
    if mode == "lasttoken":
        last = np.maximum(mask.sum(1) - 1, 0)
        return h[np.arange(h.shape[0]), last]
    s = (h * m).sum(1)
    n = np.maximum(m.sum(1), 1e-9)
    if mode == "mean":
        return s / n
    if mode == "mean_sqrt_len_tokens":
        return s / np.sqrt(n)
    raise _bad_mode(mode)
