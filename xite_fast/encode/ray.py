"""Distributed encoding on Ray Data: :func:`encode_corpus_ray` / :func:`encode_corpora_ray`.

The output folder is the one :func:`xite_fast.encode_corpus` writes (shard files + manifest,
byte-identical), with each shard encoded by a Ray Data actor that builds its
:class:`~xite_fast.encode.encoder.Encoder` once. File sources are planned into shard byte ranges, so a
worker reads only its own shard; resumable like the single-process path. The connection (and the
unwrapping of worker errors) is :mod:`xite_fast._ray`'s, shared with the Ray matcher
:func:`xite_fast.xite.match.sharded_cosine_topk`.

Ray is optional (``pip install "xite_fast[ray]"`` or ``"ray[data]"``) and imported lazily. On a
multi-node cluster, source files and ``out_dir`` must be on a filesystem every node sees (the workers
read and write them directly), and ``xite_fast`` must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xite_fast._ray import ensure_ray, import_ray, init_ray, reraise_worker_error
from xite_fast._validation import check_positive_int
from xite_fast.logging import progress_enabled

__all__ = ["encode_corpus_ray", "encode_corpora_ray", "init_ray"]  # init_ray: re-exported from _ray


# ----------------------------------------------------------------------------------------- encoding
class _ShardEncoder:
    """Ray Data actor: builds its Encoder once (on the first shard that needs encoding) and turns one
    shard spec per call into a shard file (in the spec's ``out_dir``) + manifest entry."""

    def __init__(self, model, encoder_kwargs, shard_size, batch_size, dedupe=True):
        self.model, self.encoder_kwargs = model, dict(encoder_kwargs)
        self.shard_size, self.batch_size, self.dedupe = shard_size, batch_size, dedupe
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
            if corpus.verify_shard(out_dir, spec["done"], texts):
                return spec["done"]
        entry = corpus.adopt_pending(out_dir, k, self.shard_size, texts)
        if entry is None:
            if self.encoder is None:
                from xite_fast.encode.encoder import Encoder

                self.encoder = Encoder(self.model, **self.encoder_kwargs)
            entry = corpus.write_shard(
                self.encoder,
                texts,
                out_dir,
                k,
                self.shard_size,
                self.batch_size,
                pending=True,
                dedupe=self.dedupe,
            )
        return entry


def _spec_texts(spec: dict) -> list:
    """The encoder inputs of one shard spec: inline items, a user row source, or index rows."""
    if "texts" in spec:
        return list(spec["texts"])
    start, rows = int(spec["start"]), int(spec["rows"])
    if "reader" in spec:
        texts = list(spec["reader"].read_rows(start, start + rows))
        if len(texts) != rows or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"source.read_rows({start}, {start + rows}) must return {rows} str")
        return texts
    from xite_fast.data.records import RecordReader, model_input

    path = Path(spec["path"])
    if not path.is_file() or path.stat().st_size != spec["size"]:
        raise ValueError(f"{path} is missing or changed size since the shards were planned; rerun")
    reader = RecordReader(path, spec["offsets"], **spec["fields"])
    try:
        return [model_input(r) for r in reader.get(range(rows))]
    finally:
        reader.close()


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
    pair_field: str | None = None,
    overwrite: bool = False,
    errors: str = "strict",
    num_workers: int | None = None,
    cpus_per_worker: int = 1,
    address: str | None = None,
    show_progress_bar: bool | None = None,
    dedupe: bool = True,
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
        source: a corpus file or ``CorpusIndex`` (indexed once; each worker reads only its shard), an object
            with ``__len__`` and ``read_rows(start, stop) -> list[str]`` (picklable; read by the workers), or
            an iterable of str (materialized here and shipped shard by shard).
        out_dir: output folder; on a multi-node cluster it must be on a shared filesystem.
        model: model of the workers' :class:`~xite_fast.encode.encoder.Encoder`.
        encoder_kwargs: other ``Encoder`` arguments (``num_layers``, ``backend``, ``quantize``, ...);
            ``num_threads`` defaults to ``cpus_per_worker``.
        shard_size, batch_size, text_field, pair_field, overwrite, errors: as in
            :func:`xite_fast.encode_corpus`.
        num_workers: encoder actors (default: cluster CPUs // ``cpus_per_worker``, at most the shards).
        cpus_per_worker: CPUs reserved per actor.
        address: Ray address for :func:`init_ray` if not connected yet (default: a local instance).
        show_progress_bar: tqdm bar over rows; ``None`` shows it when stderr is a tty.
        dedupe: within each shard, run repeated texts through the encoder once (the same bytes either
            way). Actors encode shards in parallel, so repeats across shards are encoded again
            (:func:`xite_fast.encode_corpus` copies those too).

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
        pair_field=pair_field,
        overwrite=overwrite,
        errors=errors,
        num_workers=num_workers,
        cpus_per_worker=cpus_per_worker,
        address=address,
        show_progress_bar=show_progress_bar,
        dedupe=dedupe,
    )[0]


def encode_corpora_ray(
    jobs: Sequence[tuple[Any, str | os.PathLike]],
    model: str | os.PathLike = "e5-small",
    *,
    encoder_kwargs: dict | None = None,
    shard_size: int = 65536,
    batch_size: int = 64,
    text_field: str = "text",
    pair_field: str | None = None,
    overwrite: bool = False,
    errors: str = "strict",
    num_workers: int | None = None,
    cpus_per_worker: int = 1,
    address: str | None = None,
    show_progress_bar: bool | None = None,
    dedupe: bool = True,
) -> list:
    """:func:`encode_corpus_ray` of several ``(source, out_dir)`` pairs in one Ray Data pipeline, so
    the actors (and their encoders) are started once for all corpora (e.g. source and target
    language). Arguments as :func:`encode_corpus_ray`; returns one EmbeddingStore per pair."""
    from xite_fast.encode import store as corpus

    shard_size, batch_size = corpus.check_encode_args(shard_size, batch_size, text_field, errors)
    cpus_per_worker = check_positive_int("cpus_per_worker", cpus_per_worker)
    if num_workers is not None:
        num_workers = check_positive_int("num_workers", num_workers)
    if encoder_kwargs is not None and not isinstance(encoder_kwargs, dict):
        raise ValueError(f"encoder_kwargs must be a dict or None, got {type(encoder_kwargs).__name__}")
    encoder_kwargs = dict(encoder_kwargs or {})
    jobs = list(jobs)
    if not jobs or not all(isinstance(j, (tuple, list)) and len(j) == 2 for j in jobs):
        raise ValueError("jobs must be a non-empty sequence of (source, out_dir) pairs")
    import_ray()  # a missing Ray fails before any work
    plans = []
    for source, _ in jobs:
        specs = _plan_specs(
            source, text_field, errors, shard_size, pair_field
        )  # validates before any model work
        if not specs:
            raise ValueError(
                f"source {corpus.describe(source)} has no texts; expected at least one line/row/item"
            )
        fingerprint = specs[0].pop("fingerprint")
        _spec_texts({**specs[0], "rows": 1})  # a bad first record fails here, before any model work
        plans.append((fingerprint, specs))
    ray = ensure_ray(address)  # so does an unreachable cluster
    info = _encoder_info(model, encoder_kwargs)
    encoder_kwargs.setdefault("num_threads", cpus_per_worker)
    out_dirs = [Path(out).resolve() for _, out in jobs]
    if len(set(out_dirs)) != len(out_dirs):
        raise ValueError(f"jobs must write to distinct out_dirs, got {[str(d) for d in out_dirs]}")
    with contextlib.ExitStack() as stack:
        states, items = [], []
        for j, ((fingerprint, specs), out_dir) in enumerate(zip(plans, out_dirs, strict=True)):
            corpus.claim_store_dir(out_dir)
            stack.enter_context(corpus.store_lock(out_dir))
            header = corpus.make_header(info, shard_size, batch_size, fingerprint)
            manifest = corpus.open_manifest(out_dir, header, overwrite)
            done = manifest["shards"]
            states.append({"manifest": manifest, "verified": len(done), "finished": {}, "errors": {}})
            if (
                manifest["complete"]
                and fingerprint["kind"] != "iterable"
                and not corpus.EmbeddingStore(out_dir).verify()
            ):
                states[-1]["skip"] = True  # same file sha256, model and parameters: nothing to do
                continue
            if len(specs) < len(done):
                raise ValueError(
                    f"{out_dir} holds {len(done)} shards but the source now has only {len(specs)} shards "
                    f"of texts; delete {out_dir} and rerun (Python: overwrite=True)"
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
                ray,
                items,
                states,
                out_dirs,
                model,
                encoder_kwargs,
                shard_size,
                batch_size,
                num_workers,
                cpus_per_worker,
                show_progress_bar,
                dedupe,
            )
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
            corpus.finish_store(out_dir, state["manifest"])
    return [corpus.EmbeddingStore(d) for d in out_dirs]


def _run_encode_pipeline(
    ray,
    items,
    states,
    out_dirs,
    model,
    encoder_kwargs,
    shard_size,
    batch_size,
    num_workers,
    cpus_per_worker,
    show_progress_bar,
    dedupe=True,
) -> None:
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
            "dedupe": dedupe,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
    )
    bar = None
    if progress_enabled(show_progress_bar):
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
                        corpus.write_manifest(out_dir, st["manifest"])
                        pending = corpus.pending_path(out_dir, len(done) - 1)
                        if pending.exists():
                            pending.unlink()
            if any(st["errors"] and min(st["errors"]) <= len(st["manifest"]["shards"]) for st in states):
                break  # every shard before a job's first bad one is recorded: stop the pipeline
    except Exception as exc:  # noqa: BLE001 - unwrapped to the worker's own error
        reraise_worker_error(exc)
    finally:
        if bar is not None:
            bar.close()


def _plan_specs(source: Any, text_field: str, errors: str, shard_size: int, pair_field=None) -> list[dict]:
    """Shard specs; the first carries the source fingerprint under ``"fingerprint"``. A file (or a
    ``CorpusIndex``) is indexed once here; each spec carries its rows' byte offsets, so a worker reads
    only its own shard with the same reader as the single-process path."""
    from xite_fast.encode import store as corpus

    index = corpus.index_of(source, text_field, errors, pair_field)
    if index is not None:
        fingerprint = index.fingerprint()
        fields = index.read_options()  # the worker's RecordReader reads the rows as they were indexed
        path = str(Path(index.path).resolve())  # absolute: a worker's working directory may differ
        specs = [
            {
                "k": k,
                "start": s,
                "rows": min(shard_size, len(index) - s),
                "path": path,
                "size": index.size,
                "fields": fields,
                "offsets": np.asarray(index.offsets[s : s + shard_size], dtype=np.int64),
            }
            for k, s in enumerate(range(0, len(index), shard_size))
        ]
    elif hasattr(source, "read_rows") and hasattr(source, "__len__"):
        n = len(source)
        fingerprint = {"kind": "iterable"}  # as encode_corpus fingerprints an iterable of the same texts
        specs = [
            {"k": k, "start": s, "rows": min(shard_size, n - s), "reader": source}
            for k, s in enumerate(range(0, n, shard_size))
        ]
    else:
        fingerprint, texts = corpus.open_source(source, text_field, errors)
        specs = []
        while chunk := corpus.take(texts, shard_size):
            specs.append(
                {"k": len(specs), "start": len(specs) * shard_size, "rows": len(chunk), "texts": chunk}
            )
    if specs:
        specs[0]["fingerprint"] = fingerprint
    return specs
