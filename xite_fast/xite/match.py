"""The XITE matcher: for every target row, its most similar source rows by exact cosine similarity.

This module is the one implementation of matching; the augment pipeline, :class:`XiteAugmenter`,
training and the Ray path all call it, so they share one centering rule:

* **centering** (``center=True``, the default; measured best for label transfer, see the README):
  each side has its own mean subtracted before the cosine, ``q - mean(Q)`` and ``k - mean(K)``.
  Multilingual encoders put every language in its own offset cone; removing the per-language mean
  leaves the language-free direction. Means are accumulated in float64 over row blocks (so the result
  does not depend on how the rows are sharded) and cast to float32; the subtraction is float32.
* **ties** go to the lower source index (the ``cosine_topk`` rule), and results over shards are merged
  exactly with ``merge_topk``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xite_fast._validation import check_finite, check_matrix, check_positive_int
from xite_fast.ops.cosine_topk import cosine_topk

__all__ = ["embedding_mean", "center_rows", "match_arrays"]

_MEAN_BLOCK = 65536  # rows per float64 block: bounded memory for memory-mapped stores


def embedding_mean(x: Any) -> np.ndarray:
    """Column mean of ``x``: (N, D) float32 (array or memmap) -> (D,) float32, accumulated in float64."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot take the mean of 0 rows")
    total = np.zeros(x.shape[1], dtype=np.float64)
    for i0 in range(0, n, _MEAN_BLOCK):
        total += np.asarray(x[i0 : i0 + _MEAN_BLOCK], dtype=np.float64).sum(0)
    return (total / n).astype(np.float32)


def center_rows(x: Any, mean: np.ndarray | None) -> np.ndarray:
    """``x - mean`` in float32 (a copy); ``mean=None`` returns ``x`` as float32 unchanged."""
    x = np.asarray(x, dtype=np.float32)
    if mean is None:
        return x
    return x - np.asarray(mean, dtype=np.float32)[None, :]


def match_arrays(
    queries: Any,
    keys: Any,
    k: int = 1,
    *,
    center: bool = True,
    query_mean: np.ndarray | None = None,
    key_mean: np.ndarray | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of every query row among the key rows.

    Args:
        queries: (N, D) float32 target embeddings (numpy or torch).
        keys: (M, D) float32 source embeddings.
        k: neighbours per query, ``1 <= k <= M``.
        center: subtract each side's mean first (see the module docstring).
        query_mean, key_mean: (D,) float32 means to use instead of computing them (e.g. the means of
            the whole corpora when ``queries`` is one block of a larger store).
        backend: ``cosine_topk`` backend.

    Returns:
        scores (N, k) float32 (descending), ids (N, k) int64 into ``keys``.
    """
    check_matrix("queries", queries, what="(N, D)")
    check_matrix("keys", keys, what="(M, D)")
    if hasattr(queries, "detach"):
        queries = queries.detach().cpu().numpy()
    if hasattr(keys, "detach"):
        keys = keys.detach().cpu().numpy()
    k = check_positive_int("k", k)
    if k > keys.shape[0]:
        raise ValueError(f"k must be <= the number of key rows ({keys.shape[0]}), got k={k}")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"queries and keys must have the same dimension, got {queries.shape[1]} and {keys.shape[1]}"
        )
    q = np.asarray(queries, dtype=np.float32)
    kk = np.asarray(keys, dtype=np.float32)
    check_finite("queries", q)
    check_finite("keys", kk)
    if center:
        q = center_rows(q, embedding_mean(q) if query_mean is None else query_mean)
        kk = center_rows(kk, embedding_mean(kk) if key_mean is None else key_mean)
    scores, ids = cosine_topk(q, kk, k, backend=backend)
    return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)
