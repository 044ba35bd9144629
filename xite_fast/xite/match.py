"""The XITE matcher: for every target row, its most similar source rows by exact cosine similarity.

This module is the one implementation of matching; the augment pipeline, :class:`XiteAugmenter`,
training and the Ray path all call it, so they share one centering rule:

* **centering** (``center=True``, the default; measured best for label transfer, see the README):
  each side has its own mean subtracted before the cosine, ``q - mean(Q)`` and ``k - mean(K)``.
  Multilingual encoders put every language in its own offset cone; removing the per-language mean
  leaves the language-free direction. Means are :func:`~xite_fast.encode.store.embedding_mean`'s
  (float64 over row blocks, so the result does not depend on how the rows are sharded, cast to
  float32); the subtraction is float32.
* **ties** go to the lower source index (the ``cosine_topk`` rule), and results over shards are merged
  exactly with ``merge_topk``.

Three entry points, one search: :func:`match_arrays` (in-memory arrays), :func:`sharded_cosine_topk`
(keys split into row shards searched by a thread pool or by Ray Data workers, merged exactly) and
:class:`StoreMatcher` (target rows against a sharded :class:`~xite_fast.encode.store.EmbeddingStore`,
via :func:`sharded_cosine_topk`; each source shard is centered once per run while the centered
source fits in ``cache_bytes``, and once per call beyond that).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xite_fast._validation import check_finite, check_matrix, check_positive_int
from xite_fast.encode.store import embedding_mean
from xite_fast.ops.cosine_topk import cosine_topk

__all__ = [
    "center_rows",
    "match_arrays",
    "plan_shards",
    "sharded_cosine_topk",
    "StoreMatcher",
]


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


# ----------------------------------------------------------------------------------------- sharded keys
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


class _ShardFiles:
    """Key shards that already are files (an EmbeddingStore): {start: (path, rows)}; picklable.

    With ``key_mean`` the shards come out centered (float32 ``rows - mean``); centered shards are kept
    in RAM while their total stays within ``cache_bytes`` (not pickled: a Ray worker centers its own).
    """

    def __init__(self, store, key_mean: np.ndarray | None = None, cache_bytes: int = 0):
        self.files = {
            int(start): (str(p), int(arr.shape[0]))
            for (start, arr), p in zip(store.iter_shards(), store.shard_paths, strict=True)
        }
        self.dim, self.key_mean, self.cache_bytes = int(store.dim), key_mean, int(cache_bytes)
        self._cache: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}

    def open(self, start: int, stop: int) -> np.ndarray:
        if start in self._cache:
            return self._cache[start]
        path, rows = self.files[start]
        if stop - start != rows:
            raise ValueError(f"{path}: expected {stop - start} rows, the shard has {rows}")
        arr = np.load(path, mmap_mode="r")
        if self.key_mean is None:
            return arr
        arr = center_rows(arr, self.key_mean)
        if sum(a.nbytes for a in self._cache.values()) + arr.nbytes <= self.cache_bytes:
            self._cache[start] = arr
        return arr


def _keys_source(keys: Any) -> tuple[Any, int, int]:
    """(source, M, D): source is a .npy path (str), _ShardFiles or an in-memory 2-D array."""
    if isinstance(keys, (str, os.PathLike)):
        path = os.fspath(keys)
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"keys: cannot memory-map {path!r} as a .npy file: {exc}") from None
        if arr.ndim != 2:
            raise ValueError(f"keys must be 2-D (M, D), got shape {arr.shape} in {path!r}")
        return os.path.abspath(path), int(arr.shape[0]), int(arr.shape[1])
    if isinstance(keys, _ShardFiles):
        return keys, sum(r for _, r in keys.files.values()), keys.dim
    if hasattr(keys, "iter_shards") and hasattr(keys, "dim"):  # xite_fast.EmbeddingStore
        if not keys.complete:
            raise ValueError(
                f"keys: the EmbeddingStore {keys.out_dir} is incomplete; finish encoding it first"
            )
        return _ShardFiles(keys), len(keys), int(keys.dim)
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
    return source.open(start, stop)


def _search_shard(
    queries: np.ndarray,
    source: Any,
    start: int,
    stop: int,
    k: int,
    backend: str,
    assume_normalized: bool,
    key_mean: np.ndarray | None = None,
):
    from xite_fast.ops.cosine_topk import cosine_topk

    rows = _open_rows(source, start, stop)
    if key_mean is not None:
        rows = center_rows(rows, key_mean)  # the one float32 subtraction: scores bit-identical everywhere
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
    key_mean: np.ndarray | None = None,
    address: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine of ``queries`` against row-sharded ``keys``, merged exactly.

    Args:
        queries: (N, D) float numpy array or torch tensor (moved to CPU float32).
        keys: (M, D) float array, path of a ``.npy`` file, or a complete ``EmbeddingStore`` (its shard
            files are the key shards: ``num_shards``/``shard_rows`` must then be None).
        k: 1 <= k <= M.
        num_shards / shard_rows: how to split array / ``.npy`` keys (default 4 shards).
        executor: ``"ray"`` (Ray Data tasks on the running cluster, or one started by
            :func:`xite_fast._ray.init_ray`; ``.npy`` / store keys are memory-mapped by each worker, so
            only shard bounds travel, in-memory keys are put once in the object store) or ``"local"``
            (the same shard tasks on a thread pool; the C++ kernel releases the GIL).
        backend: backend of the per-shard :func:`xite_fast.cosine_topk`.
        assume_normalized: inputs are unit-norm.
        num_workers: local executor threads (default: number of shards, at most os.cpu_count()).
        key_mean: optional (D,) float32 subtracted from every key row before the search (language
            centering), done by the worker that reads the shard.
        address: Ray address for :func:`~xite_fast._ray.init_ray` if this process is not connected yet
            (default: start a local instance).

    Returns:
        scores (N, k) float32 sorted descending and indices (N, k) int64 (ties: lower index first),
        identical to ``xite_fast.cosine_topk(queries, keys - key_mean, k)``.
    """
    from xite_fast.ops.cosine_topk import merge_topk

    k = check_positive_int("k", k)
    if executor not in ("ray", "local"):
        raise ValueError(f"executor must be 'ray' or 'local', got {executor!r}")
    if hasattr(queries, "detach"):
        queries = queries.detach().cpu().float().numpy()
    if not isinstance(queries, np.ndarray) or queries.ndim != 2:
        raise ValueError(
            f"queries must be a 2-D (N, D) array, got {type(queries).__name__} "
            f"{getattr(queries, 'shape', '')}"
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
    if key_mean is not None:
        key_mean = np.asarray(key_mean, dtype=np.float32)
        if key_mean.shape != (d,) or not np.isfinite(key_mean).all():
            raise ValueError(f"key_mean must be a finite (D,) = ({d},) vector, got shape {key_mean.shape}")
    if isinstance(source, _ShardFiles):
        if num_shards is not None or shard_rows is not None:
            raise ValueError(
                "keys is an EmbeddingStore: its shard files are the key shards, so num_shards and "
                f"shard_rows must be None, got num_shards={num_shards}, shard_rows={shard_rows}"
            )
        shards = [(s, s + r) for s, (_, r) in sorted(source.files.items())]
    else:
        shards = plan_shards(m, num_shards=num_shards, shard_rows=shard_rows)

    if executor == "local":
        workers = num_workers or min(len(shards), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=check_positive_int("num_workers", workers)) as pool:
            parts = list(
                pool.map(
                    lambda se: _search_shard(
                        queries, source, se[0], se[1], k, backend, assume_normalized, key_mean
                    ),
                    shards,
                )
            )
    else:
        parts = _run_ray(queries, source, shards, k, backend, assume_normalized, key_mean, address)
    if len(parts) == 1:
        return parts[0]
    parts.sort(key=lambda p: int(p[1][0, 0]) if p[1].size else 0)
    s, i = merge_topk([p[0] for p in parts], [p[1] for p in parts], k)
    return np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)


def _run_ray(
    queries, source, shards: Sequence[tuple[int, int]], k, backend, assume_normalized, key_mean, address
):
    from xite_fast._ray import ensure_ray, reraise_worker_error

    ray = ensure_ray(address)
    q_ref = ray.put(queries)
    # in-memory keys go to the object store once (zero-copy reads on the workers); paths travel as is
    src = ray.put(source) if isinstance(source, np.ndarray) else source

    def search(row: dict) -> dict:
        qs = ray.get(q_ref)
        keys_src = ray.get(src) if isinstance(src, ray.ObjectRef) else src
        s, i = _search_shard(
            qs, keys_src, int(row["start"]), int(row["stop"]), k, backend, assume_normalized, key_mean
        )
        return {"start": int(row["start"]), "scores": s, "indices": i}

    ds = ray.data.from_items([{"start": s, "stop": e} for s, e in shards]).map(search)
    try:
        rows = ds.take_all()
    except Exception as exc:  # noqa: BLE001 - unwrapped to the worker's own error
        reraise_worker_error(exc)
    return [(np.asarray(r["scores"], np.float32), np.asarray(r["indices"], np.int64)) for r in rows]


class StoreMatcher:
    """Top-k source rows of target rows, the source being a complete ``EmbeddingStore``.

    Args:
        source: the source ``EmbeddingStore`` (its shard files are the key shards).
        k: neighbours per target row.
        key_mean: (D,) float32 source mean (centering; ``None``: no centering of the keys).
        executor: ``"local"`` (this process, one shard at a time: RAM = one source shard) or ``"ray"``.
        backend: ``cosine_topk`` backend.
        chunk: target rows per search call.
        cache_bytes: RAM for centered source shards kept across calls (default 1 GiB).
    """

    def __init__(
        self,
        source,
        k: int,
        *,
        key_mean: np.ndarray | None = None,
        executor: str = "local",
        backend: str = "auto",
        chunk: int = 65536,
        cache_bytes: int = 1 << 30,
    ):
        if executor not in ("ray", "local"):
            raise ValueError(f"executor must be 'ray' or 'local', got {executor!r}")
        self.k, self.executor, self.backend = check_positive_int("k", k), executor, backend
        self.chunk = check_positive_int("chunk", chunk)
        self.keys = _ShardFiles(
            source, None if key_mean is None else np.asarray(key_mean, np.float32), cache_bytes
        )
        self.rows = len(source)
        if self.k > self.rows:
            raise ValueError(f"k must be <= the number of source rows ({self.rows}), got k={self.k}")

    def match(self, targets: Any, query_mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """targets: (n, D) float32 rows (a memmapped shard is fine). Returns scores (n, k) float32
        descending and source ids (n, k) int64 (ties: lower id first)."""
        n = targets.shape[0]
        out_s, out_i = np.empty((n, self.k), np.float32), np.empty((n, self.k), np.int64)
        for c0 in range(0, n, self.chunk):
            q = center_rows(targets[c0 : c0 + self.chunk], query_mean)
            s, i = sharded_cosine_topk(
                q, self.keys, self.k, executor=self.executor, backend=self.backend, num_workers=1
            )
            out_s[c0 : c0 + len(q)], out_i[c0 : c0 + len(q)] = s, i
        return out_s, out_i
