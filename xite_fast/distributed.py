"""Sharded exact cosine top-k: keys split into row shards, searched independently, merged exactly.

Each shard ``[start, stop)`` of the keys gives a partial top-``min(k, rows)`` with global indices;
:func:`xite_fast.ops.cosine_topk.merge_topk` merges them with the same (score desc, index asc) order,
so the result equals one search over all keys (STYLE rule 2: the same tie rule everywhere).

Executors:
    ``"ray"``: Ray Data (``ray.data.from_items(shards).map(...)``) on the running Ray cluster, or a
        local one started with ``ray.init``. Keys given as a ``.npy`` path (or an ``EmbeddingStore``)
        are memory-mapped by each worker, so only shard bounds travel; in-memory keys are put once
        in the object store. Ray is optional (``pip install "ray[data]"``) and imported lazily.
    ``"local"``: the same shard tasks on a thread pool in this process (the C++ kernel releases the
        GIL); no extra dependency, and the reference behaviour of the Ray path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xite_fast._validation import check_positive_int

__all__ = ["sharded_cosine_topk", "plan_shards"]


def plan_shards(
    m: int, *, num_shards: int | None = None, shard_rows: int | None = None
) -> list[tuple[int, int]]:
    """Split ``m`` key rows into contiguous ``[start, stop)`` ranges (by count or by rows per shard)."""
    m = check_positive_int("m", m)
    if num_shards is not None and shard_rows is not None:
        raise ValueError("give num_shards or shard_rows, not both")
    if shard_rows is None:
        num_shards = check_positive_int("num_shards", num_shards if num_shards is not None else 4)
        shard_rows = -(-m // min(num_shards, m))
    shard_rows = check_positive_int("shard_rows", shard_rows)
    return [(s, min(m, s + shard_rows)) for s in range(0, m, shard_rows)]


def _keys_source(keys: Any) -> tuple[Any, int, int]:
    """(source, M, D): source is a .npy path (str), an EmbeddingStore or an in-memory 2-D array."""
    if isinstance(keys, (str, os.PathLike)):
        path = os.fspath(keys)
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"keys: cannot memory-map {path!r} as a .npy file: {exc}") from None
        if arr.ndim != 2:
            raise ValueError(f"keys must be 2-D (M, D), got shape {arr.shape} in {path!r}")
        return os.path.abspath(path), int(arr.shape[0]), int(arr.shape[1])
    if hasattr(keys, "iter_shards") and hasattr(keys, "dim"):  # xite_fast.EmbeddingStore
        return keys, len(keys), int(keys.dim)
    if hasattr(keys, "detach"):  # torch tensor -> numpy (shards are searched on CPU)
        keys = keys.detach().cpu().numpy()
    if not isinstance(keys, np.ndarray):
        raise ValueError(
            f"keys must be an array, a .npy path or an EmbeddingStore, got {type(keys).__name__}"
        )
    if keys.ndim != 2:
        raise ValueError(f"keys must be 2-D (M, D), got shape {keys.shape}")
    return keys, int(keys.shape[0]), int(keys.shape[1])


def _open_rows(source: Any, start: int, stop: int) -> np.ndarray:
    if isinstance(source, str):
        return np.load(source, mmap_mode="r")[start:stop]
    if isinstance(source, np.ndarray):
        return source[start:stop]
    return source.to_memmap()[start:stop]  # EmbeddingStore: consolidated once, then memory-mapped


def _search_shard(
    queries: np.ndarray, source: Any, start: int, stop: int, k: int, backend: str, assume_normalized: bool
):
    from xite_fast.ops.cosine_topk import cosine_topk

    rows = _open_rows(source, start, stop)
    s, i = cosine_topk(
        queries, rows, min(k, stop - start), backend=backend, assume_normalized=assume_normalized
    )
    return np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64) + start


def sharded_cosine_topk(
    queries: Any,
    keys: Any,
    k: int,
    *,
    num_shards: int | None = None,
    shard_rows: int | None = None,
    executor: str = "ray",
    backend: str = "auto",
    assume_normalized: bool = False,
    num_workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine of ``queries`` against row-sharded ``keys``, merged exactly.

    Args:
        queries: (N, D) float numpy array or torch tensor (moved to CPU float32).
        keys: (M, D) float array, path of a ``.npy`` file, or an ``EmbeddingStore``.
        k: 1 <= k <= M.
        num_shards / shard_rows: how to split the keys (default 4 shards).
        executor: ``"ray"`` (Ray Data; starts a local Ray if none is running) or ``"local"`` (threads).
        backend: backend of the per-shard :func:`xite_fast.cosine_topk`.
        assume_normalized: inputs are unit-norm.
        num_workers: local executor threads (default: number of shards, at most os.cpu_count()).

    Returns:
        scores (N, k) float32 sorted descending and indices (N, k) int64 (ties: lower index first),
        identical to ``xite_fast.cosine_topk(queries, keys, k)``.
    """
    from xite_fast.ops.cosine_topk import merge_topk

    k = check_positive_int("k", k)
    if executor not in ("ray", "local"):
        raise ValueError(f"executor must be 'ray' or 'local', got {executor!r}")
    if hasattr(queries, "detach"):
        queries = queries.detach().cpu().float().numpy()
    if not isinstance(queries, np.ndarray) or queries.ndim != 2:
        raise ValueError(
            f"queries must be a 2-D (N, D) array, got {type(queries).__name__} {getattr(queries, 'shape', '')}"
        )
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not np.isfinite(queries).all():
        raise ValueError("queries contains NaN or inf")
    source, m, d = _keys_source(keys)
    if queries.shape[1] != d:
        raise ValueError(f"keys must have the same dimension D as queries ({queries.shape[1]}), got D={d}")
    if m == 0:
        raise ValueError("keys must be non-empty (M >= 1)")
    if k > m:
        raise ValueError(f"k must be <= the number of keys M={m}, got k={k}")
    shards = plan_shards(m, num_shards=num_shards, shard_rows=shard_rows)

    if executor == "local":
        workers = num_workers or min(len(shards), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=check_positive_int("num_workers", workers)) as pool:
            parts = list(
                pool.map(
                    lambda se: _search_shard(queries, source, se[0], se[1], k, backend, assume_normalized),
                    shards,
                )
            )
    else:
        parts = _run_ray(queries, source, shards, k, backend, assume_normalized)
    parts.sort(key=lambda p: int(p[1][0, 0]) if p[1].size else 0)
    return merge_topk([p[0] for p in parts], [p[1] for p in parts], k)


def _run_ray(queries, source, shards: Sequence[tuple[int, int]], k, backend, assume_normalized):
    try:
        import ray
    except ImportError:
        raise RuntimeError('executor="ray" needs Ray Data: pip install "ray[data]"') from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    q_ref = ray.put(queries)
    # in-memory keys go to the object store once (zero-copy reads on the workers); paths travel as is
    src = ray.put(source) if isinstance(source, np.ndarray) else source

    def search(row: dict) -> dict:
        qs = ray.get(q_ref)
        keys_src = ray.get(src) if isinstance(src, ray.ObjectRef) else src
        s, i = _search_shard(qs, keys_src, int(row["start"]), int(row["stop"]), k, backend, assume_normalized)
        return {"start": int(row["start"]), "scores": s, "indices": i}

    ds = ray.data.from_items([{"start": s, "stop": e} for s, e in shards]).map(search)
    rows = ds.take_all()
    return [(np.asarray(r["scores"], np.float32), np.asarray(r["indices"], np.int64)) for r in rows]
