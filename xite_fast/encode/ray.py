"""Distributed encoding and matching: corpus shards and key shards processed on Ray, merged exactly.

Two steps of the XITE pipeline scale out:

* :func:`encode_corpus_ray` — the same output folder as :func:`xite_fast.encode_corpus` (shard files +
  manifest, byte-identical), with each shard encoded by a Ray Data actor that builds its
  :class:`~xite_fast.encode.encoder.Encoder` once. File sources are planned into shard byte ranges, so a worker
  reads only its own shard; resumable like the single-process path.
* :func:`sharded_cosine_topk` — exact top-k cosine with the keys split into row shards, each searched
  independently; :func:`xite_fast.ops.cosine_topk.merge_topk` merges the partial top-``min(k, rows)``
  lists with the same (score desc, index asc) order, so the result equals one search over all keys
  (STYLE rule 2: the same tie rule everywhere).

Executors of :func:`sharded_cosine_topk`:
    ``"ray"``: Ray Data (``ray.data.from_items(shards).map(...)``) on the running Ray cluster, or one
        started by :func:`init_ray`. Keys given as a ``.npy`` path or an ``EmbeddingStore`` are
        memory-mapped by each worker, so only shard bounds travel; in-memory keys are put once in the
        object store.
    ``"local"``: the same shard tasks on a thread pool in this process (the C++ kernel releases the
        GIL); no extra dependency, and the reference behaviour of the Ray path.

Ray is optional (``pip install "xite_fast[ray]"`` or ``"ray[data]"``) and imported lazily. On a
multi-node cluster, source files, ``out_dir`` and key files must be on a filesystem every node sees
(the workers read and write them directly), and ``xite_fast`` must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from xite_fast._validation import check_positive_int

__all__ = ["sharded_cosine_topk", "plan_shards", "encode_corpus_ray", "encode_corpora_ray", "init_ray"]

_RAY_HINT = 'Ray is not installed: pip install "xite_fast[ray]" (or "ray[data]")'


# ----------------------------------------------------------------------------------------- ray setup
def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray core without the data extra is not enough)
    except ImportError as exc:
        raise ImportError(f"{_RAY_HINT} ({exc})") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``ray://host:port`` -> (host, port); ValueError naming the address otherwise."""
    rest = address[len("ray://") :] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"ray address must be 'local', 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got {address!r}"
        )
    return host.strip("[]"), int(port)


def init_ray(address: str | None = "local", *, timeout_s: float = 30.0, num_cpus: int | None = None):
    """Connect to a Ray cluster (or start a local one) unless this process is already connected.

    Args:
        address: ``"local"`` / ``None`` (start a new local instance, ``num_cpus`` CPUs; the workers get
            this checkout on their ``PYTHONPATH``), ``"auto"`` (the cluster already running on this
            machine), ``"HOST:PORT"`` (GCS address of a cluster head) or ``"ray://HOST:PORT"`` (Ray
            client).
        timeout_s: how long to wait for the head's port to accept a TCP connection, and then for
            ``ray.init`` to connect, before giving up (``ray.init`` alone retries for minutes).
        num_cpus: CPUs of a local instance (default: all).

    Returns:
        The ``ray`` module, initialized.

    Raises:
        ImportError: Ray (with Ray Data) is not installed.
        ValueError: malformed ``address``.
        RuntimeError: the cluster cannot be reached.
    """
    if address is not None and not isinstance(address, str):
        raise ValueError(f"address must be a str or None, got {type(address).__name__}")
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if address not in (None, "local", "auto"):
        host, port = _host_port(address)  # validate before importing anything
    ray = _import_ray()
    if ray.is_initialized():
        return ray  # reuse the connection (e.g. a test fixture's local instance or an earlier call)
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in (None, "local"):
        # workers must import xite_fast: put this checkout first on their path (an installed package
        # is found either way)
        root = str(Path(__file__).resolve().parents[1])
        pp = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address="local", num_cpus=num_cpus, runtime_env={"env_vars": {"PYTHONPATH": pp}}, **kw)
        return ray
    if address != "auto":
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as exc:
            raise RuntimeError(
                f"cannot reach the Ray cluster at {address!r} within {timeout_s:g} s ({exc}); "
                "start it with `ray start --head` or check the address"
            ) from None
    # ray.init retries for minutes when something listens on the port but no GCS answers: connect in a
    # daemon thread and give up after timeout_s (the thread cannot be cancelled; it dies with the process)
    outcome: dict[str, BaseException | bool] = {}

    def connect() -> None:
        try:
            ray.init(address=address, **kw)
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=connect, name="xite-fast-ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RuntimeError(
            f"the Ray cluster at {address!r} did not answer within {timeout_s:g} s "
            "(is it a Ray head's GCS port, default 6379?)"
        )
    if "error" in outcome:
        exc = outcome["error"]
        raise RuntimeError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return ray


def _ensure_ray(address: str | None):
    ray = _import_ray()
    if not ray.is_initialized():
        init_ray(address if address is not None else "local")
    return ray


def _reraise_worker_error(exc: BaseException) -> None:
    """Ray wraps a worker's exception (RayTaskError / UserCodeException); re-raise the user-facing
    ValueError / FileNotFoundError / ImportError with its own message, not a remote traceback."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        for c in (cause, e):
            if c is not None and type(c) in (ValueError, FileNotFoundError, ImportError):
                raise type(c)(*c.args) from None
        e = cause if isinstance(cause, BaseException) else e.__cause__
    raise exc


# ----------------------------------------------------------------------------------------- matching
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
    """Key shards that already are files (an EmbeddingStore): {start: (path, rows)}; picklable."""

    def __init__(self, store):
        self.files = {
            int(start): (str(p), int(arr.shape[0]))
            for (start, arr), p in zip(store.iter_shards(), store.shard_paths, strict=True)
        }

    def open(self, start: int, stop: int) -> np.ndarray:
        path, rows = self.files[start]
        if stop - start != rows:
            raise ValueError(f"{path}: expected {stop - start} rows, the shard has {rows}")
        return np.load(path, mmap_mode="r")


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
        # the same float32 subtraction as the single-process CLI path, so scores are bit-identical
        rows = np.asarray(rows, dtype=np.float32) - key_mean[None, :]
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
        executor: ``"ray"`` (Ray Data) or ``"local"`` (threads).
        backend: backend of the per-shard :func:`xite_fast.cosine_topk`.
        assume_normalized: inputs are unit-norm.
        num_workers: local executor threads (default: number of shards, at most os.cpu_count()).
        key_mean: optional (D,) float32 subtracted from every key row before the search (language
            centering), done by the worker that reads the shard.
        address: Ray address for :func:`init_ray` if this process is not connected yet (default: start
            a local instance).

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
    parts.sort(key=lambda p: int(p[1][0, 0]) if p[1].size else 0)
    return merge_topk([p[0] for p in parts], [p[1] for p in parts], k)


def _run_ray(
    queries, source, shards: Sequence[tuple[int, int]], k, backend, assume_normalized, key_mean, address
):
    ray = _ensure_ray(address)
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
        _reraise_worker_error(exc)
    return [(np.asarray(r["scores"], np.float32), np.asarray(r["indices"], np.int64)) for r in rows]


# ----------------------------------------------------------------------------------------- encoding
class _ShardEncoder:
    """Ray Data actor: builds its Encoder once (on the first shard that needs encoding) and turns one
    shard spec per call into a shard file (in the spec's ``out_dir``) + manifest entry."""

    def __init__(self, model, encoder_kwargs, shard_size, batch_size):
        self.model, self.encoder_kwargs = model, dict(encoder_kwargs)
        self.shard_size, self.batch_size = shard_size, batch_size
        self.encoder = None

    def __call__(self, batch: dict) -> dict:
        entries = []
        for blob in batch["spec"]:
            try:
                entry = self._shard(pickle.loads(blob))
            except (ValueError, FileNotFoundError, ImportError) as exc:
                # a bad input, not a crash: sent back as data, so the caller re-raises the same error
                # type and message (Ray would wrap it into a remote traceback) after recording the
                # shards that did finish
                entry = {"error": [type(exc).__name__, str(exc)]}
            entries.append(json.dumps(entry))
        return {"job": batch["job"], "k": batch["k"], "entry": np.asarray(entries, dtype=object)}

    def _shard(self, spec: dict) -> dict:
        from xite_fast.encode import store as corpus

        k, out_dir = int(spec["k"]), Path(spec["out_dir"])
        texts = _spec_texts(spec)
        if spec.get("done") is not None:  # finished by an earlier run: same texts, intact file?
            corpus._verify_done_shard(out_dir, spec["done"], texts)
            return spec["done"]
        entry = corpus._adopt_pending(out_dir, k, self.shard_size, texts)
        if entry is None:
            if self.encoder is None:
                from xite_fast.encode.encoder import Encoder

                self.encoder = Encoder(self.model, **self.encoder_kwargs)
            entry = corpus._encode_shard(
                self.encoder, texts, out_dir, k, self.shard_size, self.batch_size, pending=True
            )
        return entry


def _spec_texts(spec: dict) -> list[str]:
    from xite_fast.encode import store as corpus

    if "reader" in spec:
        start, rows = int(spec["start"]), int(spec["rows"])
        texts = list(spec["reader"].read_rows(start, start + rows))
        if len(texts) != rows or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"source.read_rows({start}, {start + rows}) must return {rows} str")
        return texts
    return corpus._read_shard_texts(spec)


class _EncoderInfo:
    """What the manifest header needs from an encoder (model id, dim, prefix), without a session."""

    def __init__(self, encoder):
        self.model_id, self.dim, self.prefix = encoder.model_id, int(encoder.dim), encoder.prefix


_INFO_CACHE: dict[str, _EncoderInfo] = {}


def _encoder_info(model, encoder_kwargs: dict) -> _EncoderInfo:
    # one driver-side Encoder per (model, kwargs) and process: it converts the model into the shared
    # cache once, before the workers load it, and gives the header of every later call
    key = json.dumps([str(model), encoder_kwargs], sort_keys=True, default=str)
    if key not in _INFO_CACHE:
        from xite_fast.encode.encoder import Encoder

        _INFO_CACHE[key] = _EncoderInfo(Encoder(model, **encoder_kwargs))
    return _INFO_CACHE[key]


def encode_corpus_ray(
    source: Any,
    out_dir: str | os.PathLike,
    model: str | os.PathLike = "e5-small",
    *,
    encoder_kwargs: dict | None = None,
    shard_size: int = 65536,
    batch_size: int = 64,
    text_field: str = "text",
    overwrite: bool = False,
    errors: str = "strict",
    num_workers: int | None = None,
    cpus_per_worker: int = 1,
    address: str | None = None,
    show_progress_bar: bool | None = None,
):
    """:func:`xite_fast.encode_corpus` with the shards encoded by Ray Data actors; same output bytes.

    Each actor builds ``Encoder(model, **encoder_kwargs)`` once and encodes whole shards (shard ``k``
    = source rows ``[k * shard_size, (k + 1) * shard_size)``, batched inside the shard exactly like the
    single-process path), writing ``shard_k.npy`` itself; this process writes the manifest, in shard
    order, as shards finish. So ``out_dir`` is byte-identical to ``encode_corpus(source, out_dir,
    Encoder(model, **encoder_kwargs), shard_size=..., batch_size=...)`` (ONNX Runtime's CPU results do
    not depend on the session's thread count; the tests compare bytes).

    Resumable: shards in the manifest are checked (texts' and file's sha256) and skipped; a shard
    finished out of order by a killed run (a hidden ``.pending-shard_k.json`` next to it) is adopted
    after the same checks, so a kill loses only the shards being encoded. Either path can resume the
    other's run.

    Args:
        source: ``.txt`` / ``.jsonl`` / ``.tsv`` / ``.parquet`` path (planned into per-shard byte or row
            ranges: each worker reads only its shard), an object with ``__len__`` and
            ``read_rows(start, stop) -> list[str]`` (picklable; read by the workers), or an iterable of
            str (materialized here and shipped shard by shard).
        out_dir: output folder; on a multi-node cluster it must be on a shared filesystem.
        model: model of the workers' :class:`~xite_fast.encode.encoder.Encoder`.
        encoder_kwargs: other ``Encoder`` arguments (``num_layers``, ``backend``, ``quantize``, ...);
            ``num_threads`` defaults to ``cpus_per_worker``.
        shard_size, batch_size, text_field, overwrite, errors: as in :func:`xite_fast.encode_corpus`.
        num_workers: encoder actors (default: cluster CPUs // ``cpus_per_worker``, at most the shards).
        cpus_per_worker: CPUs reserved per actor.
        address: Ray address for :func:`init_ray` if not connected yet (default: a local instance).
        show_progress_bar: tqdm bar over rows; ``None`` shows it when stderr is a tty.

    Returns:
        The :class:`~xite_fast.encode.store.EmbeddingStore` of ``out_dir``.

    Raises:
        ImportError: Ray is not installed. RuntimeError: unreachable cluster. Otherwise as
        :func:`xite_fast.encode_corpus` (the worker's ValueError / FileNotFoundError is re-raised here).
    """
    return encode_corpora_ray(
        [(source, out_dir)],
        model,
        encoder_kwargs=encoder_kwargs,
        shard_size=shard_size,
        batch_size=batch_size,
        text_field=text_field,
        overwrite=overwrite,
        errors=errors,
        num_workers=num_workers,
        cpus_per_worker=cpus_per_worker,
        address=address,
        show_progress_bar=show_progress_bar,
    )[0]


def encode_corpora_ray(
    jobs: Sequence[tuple[Any, str | os.PathLike]],
    model: str | os.PathLike = "e5-small",
    *,
    encoder_kwargs: dict | None = None,
    shard_size: int = 65536,
    batch_size: int = 64,
    text_field: str = "text",
    overwrite: bool = False,
    errors: str = "strict",
    num_workers: int | None = None,
    cpus_per_worker: int = 1,
    address: str | None = None,
    show_progress_bar: bool | None = None,
) -> list:
    """:func:`encode_corpus_ray` of several ``(source, out_dir)`` pairs in one Ray Data pipeline, so
    the actors (and their encoders) are started once for all corpora (e.g. source and target
    language). Arguments as :func:`encode_corpus_ray`; returns one EmbeddingStore per pair."""
    from xite_fast.encode import store as corpus

    shard_size, batch_size = corpus._check_encode_args(shard_size, batch_size, text_field, errors)
    cpus_per_worker = check_positive_int("cpus_per_worker", cpus_per_worker)
    if num_workers is not None:
        num_workers = check_positive_int("num_workers", num_workers)
    if encoder_kwargs is not None and not isinstance(encoder_kwargs, dict):
        raise ValueError(f"encoder_kwargs must be a dict or None, got {type(encoder_kwargs).__name__}")
    encoder_kwargs = dict(encoder_kwargs or {})
    jobs = list(jobs)
    if not jobs or not all(isinstance(j, (tuple, list)) and len(j) == 2 for j in jobs):
        raise ValueError("jobs must be a non-empty sequence of (source, out_dir) pairs")
    _import_ray()  # a missing Ray fails before any work
    plans = []
    for source, _ in jobs:
        specs = _plan_specs(source, text_field, errors, shard_size)  # validates before any model work
        if not specs:
            raise ValueError(
                f"source {corpus._describe(source)} has no texts; expected at least one line/row/item"
            )
        fingerprint = specs[0].pop("fingerprint")
        _spec_texts({**specs[0], "rows": 1})  # a bad first record fails here, before any model work
        plans.append((fingerprint, specs))
    ray = _ensure_ray(address)  # so does an unreachable cluster
    info = _encoder_info(model, encoder_kwargs)
    encoder_kwargs.setdefault("num_threads", cpus_per_worker)
    out_dirs = [Path(out).resolve() for _, out in jobs]
    if len(set(out_dirs)) != len(out_dirs):
        raise ValueError(f"jobs must write to distinct out_dirs, got {[str(d) for d in out_dirs]}")
    with contextlib.ExitStack() as stack:
        states, items = [], []
        for j, ((fingerprint, specs), out_dir) in enumerate(zip(plans, out_dirs, strict=True)):
            out_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(corpus._dir_lock(out_dir))
            header = corpus._make_header(info, shard_size, batch_size, fingerprint)
            manifest = corpus._resume_or_reset(out_dir, header, overwrite)
            done = manifest["shards"]
            states.append({"manifest": manifest, "verified": len(done), "finished": {}, "errors": {}})
            if manifest["complete"] and fingerprint["kind"] != "iterable":
                states[-1]["skip"] = True  # same file sha256, model and parameters: nothing to do
                continue
            if len(specs) < len(done):
                raise ValueError(
                    f"{out_dir} holds {len(done)} shards but the source now has only {len(specs)} shards "
                    f"of texts; pass overwrite=True to start over"
                )
            for spec in specs:
                spec["done"] = done[spec["k"]] if spec["k"] < len(done) else None
                spec["out_dir"] = str(out_dir)
                items.append({"job": j, "k": spec["k"], "spec": pickle.dumps(spec)})
            states[-1]["n_specs"] = len(specs)
            # rebuilt in shard order as (re)verified and new shards arrive; the manifest on disk is
            # only rewritten once the list grows past what it already held
            del done[:]
        if items:
            _run_encode_pipeline(
                ray, items, states, out_dirs, model, encoder_kwargs, shard_size, batch_size,
                num_workers, cpus_per_worker, show_progress_bar,
            )  # fmt: skip
        for state in states:  # a worker's error first (the pipeline stopped early because of it)
            if state["errors"]:
                name, msg = state["errors"][min(state["errors"])]
                exc_type = {"FileNotFoundError": FileNotFoundError, "ImportError": ImportError}.get(
                    name, ValueError
                )
                raise exc_type(msg)
        for state, out_dir in zip(states, out_dirs, strict=True):
            if state.get("skip"):
                continue
            if len(state["manifest"]["shards"]) != state["n_specs"]:
                raise RuntimeError(
                    f"encode_corpus_ray: {len(state['manifest']['shards'])} of {state['n_specs']} shards of "
                    f"{out_dir} came back from Ray"
                )
            corpus._finish(out_dir, state["manifest"])
    return [corpus.EmbeddingStore(d) for d in out_dirs]


def _run_encode_pipeline(
    ray, items, states, out_dirs, model, encoder_kwargs, shard_size, batch_size, num_workers,
    cpus_per_worker, show_progress_bar,
) -> None:  # fmt: skip
    """Run the actors over ``items``; record finished shards into each job's manifest in order."""
    from xite_fast.encode import store as corpus

    todo = sum(pickle.loads(it["spec"])["done"] is None for it in items)
    if num_workers is None:
        num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)
    num_workers = max(1, min(num_workers, todo or 1))
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _ShardEncoder,
        fn_constructor_kwargs={
            "model": str(model),
            "encoder_kwargs": encoder_kwargs,
            "shard_size": shard_size,
            "batch_size": batch_size,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
    )
    bar = None
    if show_progress_bar is None:
        show_progress_bar = corpus._stderr_isatty()
    if show_progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(desc="encode_corpus_ray", unit="shard", total=len(items))
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for j, k, entry in zip(batch["job"], batch["k"], batch["entry"], strict=True):
                st, out_dir, entry = states[int(j)], out_dirs[int(j)], json.loads(entry)
                if bar is not None:
                    bar.update(1)
                if "error" in entry:
                    st["errors"][int(k)] = entry["error"]
                    continue
                st["finished"][int(k)] = entry
                done = st["manifest"]["shards"]
                # the manifest lists a prefix of shards: record every shard that now extends it
                while len(done) in st["finished"]:
                    done.append(st["finished"].pop(len(done)))
                    if len(done) > st["verified"]:
                        st["manifest"]["num_rows"] = sum(s["rows"] for s in done)
                        corpus._write_manifest(out_dir, st["manifest"])
                        pending = corpus._pending_path(out_dir, len(done) - 1)
                        if pending.exists():
                            pending.unlink()
            if any(st["errors"] and min(st["errors"]) <= len(st["manifest"]["shards"]) for st in states):
                break  # every shard before a job's first bad one is recorded: stop the pipeline
    except Exception as exc:  # noqa: BLE001 - unwrapped to the worker's own error
        _reraise_worker_error(exc)
    finally:
        if bar is not None:
            bar.close()


def _plan_specs(source: Any, text_field: str, errors: str, shard_size: int) -> list[dict]:
    """Shard specs; the first carries the source fingerprint under ``"fingerprint"``."""
    from xite_fast.encode import store as corpus

    if isinstance(source, (str, os.PathLike)):
        fingerprint, specs = corpus._plan_file_shards(source, text_field, errors, shard_size)
    elif hasattr(source, "read_rows") and hasattr(source, "__len__"):
        n = len(source)
        fingerprint = {"kind": "iterable"}  # as encode_corpus fingerprints an iterable of the same texts
        specs = [
            {"k": k, "start": s, "rows": min(shard_size, n - s), "reader": source}
            for k, s in enumerate(range(0, n, shard_size))
        ]
    else:
        fingerprint, texts = corpus._open_source(source, text_field, errors)
        specs = []
        while chunk := corpus._take(texts, shard_size):
            specs.append(
                {"k": len(specs), "start": len(specs) * shard_size, "rows": len(chunk), "texts": chunk}
            )
    if specs:
        specs[0]["fingerprint"] = fingerprint
    return specs
