"""The corpus jobs as library functions: :func:`run_augment` (the whole ``augment`` job over a run
directory) and :func:`run_encode` (one corpus into an embedding store).

``xite-fast augment`` is ``run_augment(AugmentConfig(...))`` plus printing (``xite-fast encode``:
``run_encode(EncodeConfig(...))``); Python callers get the same run directory and the same
:class:`AugmentRun`. The configs compose the option groups that have one home each:
:class:`~xite_fast.xite.augmenter.AugmentOptions`, :class:`CorpusConfig` and
:class:`~xite_fast.encode.encoder.EncoderConfig`. Stages of ``augment`` (each reads what the one
before wrote, once):

1. **inputs**: a bundled spec (``chatterbot:korean``, see :mod:`xite_fast.data.bundled`) is written to
   ``OUT/inputs/<name>.jsonl`` (rewritten if its bytes differ); a file is read where it is.
2. **index**: one pass per input (:func:`xite_fast.data.records.index_corpus`): record offsets, label
   codes and the sha256 of the bytes. The index is rebuilt on every run (it is cheap next to
   encoding), so it cannot go stale; ``OUT/config.json`` holds the options and each input's sha256.
3. **encode**: ``OUT/source_emb`` and ``OUT/target_emb`` (:func:`xite_fast.encode_corpus`, or Ray);
   a complete store is reused only if its source fingerprint matches and every shard's sha256 checks;
   a missing or corrupt shard is re-encoded. Each store's mean is in its manifest.
4. **lda** (modes other than ``interp``): ``OUT/lda.npy`` with its sha256 in ``OUT/lda.json``.
5. **match + synthesize** per target shard: :class:`xite_fast.xite.match.StoreMatcher`, label transfer,
   λ, :func:`xite_fast.lda_project_interp`; ``OUT/synthetic/part-XXXXX.{jsonl,npy}``, then
   ``part-XXXXX.done.json`` (counters + both files' sha256). A part is reused only if both files match.
6. ``OUT/synthetic/manifest.json`` and ``OUT/report.json`` from the parts' counters.

The directory can be trusted: all writes are atomic (temporary file + rename), paths inside it are
relative (a moved or copied directory resumes), one process at a time holds ``OUT/.lock``, a killed or
failed run is resumed by rerunning the same command (byte-identical to an uninterrupted run), a full
disk is a :class:`xite_fast._io.DiskFullError`, and a rerun with other options or changed inputs is
refused once work was committed (before that, the new options simply replace the old).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xite_fast._io import (
    TMP_MARK,
    DiskFullError,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    bare_name,
    check_owned_dir,
    digest_of,
    exclusive_lock,
    fault_point,
    file_matches,
    prepare_dir,
    read_json,
    remove_stale_temps,
    sha256_file,
    with_digest,
)
from xite_fast._validation import check_positive_int
from xite_fast.encode.encoder import EncoderConfig
from xite_fast.xite.augmenter import AugmentOptions

__all__ = [
    "AugmentConfig",
    "AugmentRun",
    "CorpusConfig",
    "EncodeConfig",
    "run_augment",
    "run_encode",
    "synthetic_part_path",
]

log = logging.getLogger("xite_fast")
_CONFIG_VERSION = 2
# written first into a new run directory: what makes it recognisably ours (a directory of an older version
# is recognised by its config.json instead, see _is_run_dir)
RUN_MARKER = ".xite_fast_run"
_MARKER = {"format": "xite_fast.run", "version": 1}
_PART_RE = r"part-\d{5}\.(npy|jsonl)"
# options that do not change any output byte (so not part of config.json); ``header`` changes the rows of a
# TSV/CSV input only, and is in that input's fingerprint (config.json's source/target) instead
# identity options added after config version 2 was written, with the value every earlier run had
_ADDED_OPTIONS = {"precision": "fp32", "static_shapes": False}
_NOT_IDENTITY = ("out", "ray", "match_chunk", "backend", "progress", "encoder_runtime", "header", "dedupe")


@dataclass(kw_only=True)
class CorpusConfig(EncoderConfig):
    """How corpora are read and encoded into stores: the options ``xite-fast augment`` and ``xite-fast
    encode`` share (defaults as in ``--help``), on top of the encoder's (:class:`EncoderConfig`).

    Attributes:
        shard_size: rows per embedding shard (and per synthetic part).
        text_field, label_field, pair_field: field / column names (``pair_field``: sentence pairs).
        header: TSV/CSV: the first line names the columns (False: columns text, label, text pair by
            position; :func:`~xite_fast.data.records.iter_records`).
        ray: Ray address (encode, and match, on Ray; same bytes). progress: tqdm bars (None: on a tty).
        dedupe: run repeated texts through the encoder once, within and across shards (the same bytes
            as without: :func:`~xite_fast.encode.store.encode_corpus`; on Ray within each shard);
            ``report.json``'s ``dedupe`` counts the rows encoded.
    """

    shard_size: int = 65536
    text_field: str = "text"
    label_field: str = "label"
    pair_field: str | None = None
    header: bool = True
    ray: str | None = None
    progress: bool | None = None
    dedupe: bool = True

    def validate(self) -> None:
        """ValueError naming the first bad option."""
        super().validate()
        check_positive_int("shard_size", self.shard_size)


@dataclass
class AugmentConfig(AugmentOptions, CorpusConfig):
    """Everything an augment run needs (the CLI flags, one to one; defaults as in ``--help``).

    The options are those of :class:`AugmentOptions` (matching, label transfer, interpolation),
    :class:`CorpusConfig` (fields, shards, Ray) and :class:`EncoderConfig` (``model``, ``num_layers``,
    ``encoder_runtime``, ``precision``, ``batch_size``; ``precision`` changes the embeddings, so it is
    part of the run's identity (``config.json``) and a resume with another one is refused), plus:

    Attributes:
        source: labelled corpus file (.jsonl / .tsv / .csv / .parquet), a bundled spec, or a table: a
            pandas DataFrame, a ``datasets.Dataset`` or a dict of columns (``text_field`` /
            ``label_field`` / ``pair_field``, read as a file is:
            :func:`~xite_fast.data.records.iter_table_records`), written to
            ``OUT/inputs/source-<sha256[:12]>.jsonl`` and fingerprinted by its content.
        target: corpus file (labels, if present, are used as gold), a bundled spec, or a table as above
            (also a Series / Column / list of texts).
        out: run directory (created; resumable).
        backend: backend of the ops. match_chunk: target rows per search call.
        max_rows: read at most this many records of each input.
        encoder_backend: deprecated name of ``encoder_runtime`` (warns once).
    """

    source: str
    target: str
    out: str | os.PathLike
    backend: str = "auto"
    max_rows: int | None = None
    match_chunk: int = 65536
    encoder_backend: InitVar[str | None] = None

    def __post_init__(self, encoder_backend: str | None) -> None:
        if encoder_backend is not None:
            warnings.warn(
                "AugmentConfig(encoder_backend=...) is deprecated; use encoder_runtime=",
                FutureWarning,
                stacklevel=3,
            )
            self.encoder_runtime = encoder_backend

    def validate(self) -> None:
        """ValueError naming the first bad option."""
        AugmentOptions.validate(self)
        CorpusConfig.validate(self)
        check_positive_int("match_chunk", self.match_chunk)
        if self.lda_components is not None and self.lda_components > 1:  # positive: AugmentOptions checked it
            raise ValueError(
                "lda_components must be 1 or None: the LDA separates two languages (source and target), so "
                f"it has at most 1 component; got {self.lda_components}"
            )
        if self.max_rows is not None:
            check_positive_int("max_rows", self.max_rows)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        for name in ("source", "target"):
            v = getattr(self, name)
            if isinstance(v, (str, os.PathLike)) and str(v):
                continue
            if not _is_table(v):
                raise ValueError(
                    f"{name} must be a file path, a bundled spec or a table (pandas DataFrame, datasets "
                    f"Dataset{', a list of texts' if name == 'target' else ''}), got {type(v).__name__}: "
                    f"{v!r:.60}"
                )


@dataclass
class EncodeConfig(CorpusConfig):
    """Everything ``xite-fast encode`` needs: one corpus into one :class:`~xite_fast.EmbeddingStore`.

    Attributes:
        input: corpus file (.txt / .jsonl / .tsv / .csv / .parquet) or a bundled spec.
        out: store directory (resumable).
    """

    input: str
    out: str | os.PathLike

    def validate(self) -> None:
        super().validate()
        if not str(self.out).strip():
            raise ValueError(f"out must be a directory path, got {self.out!r}")


def synthetic_part_path(out: str | os.PathLike, part: dict, key: str) -> Path:
    """The file ``part[key]`` (``"provenance"`` / ``"embeddings"``) of one entry of
    ``OUT/synthetic/manifest.json``'s ``parts``: a plain ``part-XXXXX.{jsonl,npy}`` name inside
    ``OUT/synthetic`` (ValueError for any other path: a manifest never leads outside its directory)."""
    name = bare_name(part.get(key), _PART_RE, "synthetic/manifest.json", "part-00000.npy")
    return Path(out) / "synthetic" / name


@dataclass
class AugmentRun:
    """What :func:`run_augment` returns.

    Attributes:
        out: the run directory. report: the dict in ``OUT/report.json`` (the same bytes for a resumed
        and an uninterrupted run). manifest: the dict in ``OUT/synthetic/manifest.json`` (parts, label
        names, config). parts_reused: synthetic parts kept from an earlier run. remade: files found
        missing/corrupt and re-made in this run. timings: the dict in ``OUT/timings.json`` (facts of this
        process: ``timing_s`` per stage, ``shards_skipped_on_resume``, ``remade``).
    """

    out: Path
    report: dict
    manifest: dict
    parts_reused: int = 0
    remade: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def _part_path(self, p: dict, key: str) -> Path:
        return synthetic_part_path(self.out, p, key)

    def embeddings(self) -> np.ndarray:
        """All synthetic rows, (rows, D) float32 (loaded into memory)."""
        arrs = [np.load(self._part_path(p, "embeddings")) for p in self.manifest["parts"]]
        return np.concatenate(arrs) if arrs else np.zeros((0, self.manifest["dim"]), np.float32)

    def provenance(self) -> list[dict]:
        return [
            json.loads(x) for p in self.manifest["parts"] for x in self._part_path(p, "provenance").open()
        ]

    def _parts(self) -> list:
        return [
            (str(self._part_path(p, "provenance")), str(self._part_path(p, "embeddings")), p["sha256"])
            for p in self.manifest["parts"]
        ]

    def to_dataset(self, *, embeddings: bool = False, cache_dir: str | os.PathLike | None = None):
        """The synthetic rows as a ``datasets.Dataset``, streamed part by part through
        ``Dataset.from_generator`` (a million rows never sit in memory; cached by the parts' sha256).

        Columns (:func:`xite_fast.xite.report.synthetic_row`): ``text`` (+ ``text_pair``) = the target
        text the synthetic row stands for, ``label`` (transferred), ``source_text`` (+ ``source_pair``),
        ``similarity``, ``lam`` (λ), ``target_id``, ``source_id``, ``gold_label`` (a target with gold
        labels), ``mode``; ``embedding`` ((D,) float32) with ``embeddings=True``."""
        from xite_fast.xite.report import _part_rows, rows_dataset

        return rows_dataset(
            _part_rows, {"parts": self._parts(), "embeddings": embeddings}, cache_dir=cache_dir
        )

    def to_pandas(self, *, embeddings: bool = False):
        """The synthetic rows as a ``pandas.DataFrame`` (columns as :meth:`to_dataset`)."""
        from xite_fast.xite.report import _part_rows, rows_frame

        return rows_frame(_part_rows(self._parts(), embeddings))


# ----------------------------------------------------------------------------------------- entry point
def run_augment(
    config: AugmentConfig, *, encoder: Any = None, show_progress_bar: bool | None = None
) -> AugmentRun:
    """Run (or resume) the augment job of ``config`` in ``config.out``.

    Args:
        config: the options.
        encoder: an encoder object to use instead of ``Encoder(config.model, ...)`` (tests, custom
            models); it must have ``encode``, ``dim`` and ``model_id``.
        show_progress_bar: tqdm bars of the encode and match stages (``config.progress`` when None; both
            None: in a terminal or a notebook, :func:`xite_fast.logging.progress_enabled`).

    Raises:
        ValueError: a bad option or input (the message names it), ``out`` holds a different run, or
            ``out`` is a non-empty directory that is not a run directory (nothing is written there).
        FileNotFoundError: a missing input. RuntimeError: another process is running in ``out``, or an
            input was modified during the run. PermissionError / OSError: ``out`` cannot be written.
        DiskFullError: no space left (rerun once space is back: the run resumes).
    """
    config.validate()
    out = _check_out(config.out)
    check_owned_dir(out, "out", _is_run_dir, _ours_anyway)  # before anything is written in it
    if config.ray is not None:
        from xite_fast._ray import init_ray_for_run

        init_ray_for_run(config.ray)
    try:
        prepare_dir(out, "out")
        with exclusive_lock(out / ".lock", f"the run directory {out}"):
            check_owned_dir(out, "out", _is_run_dir, _ours_anyway)  # again, now that no one else writes
            if not (out / RUN_MARKER).is_file():
                atomic_write_json(out / RUN_MARKER, _MARKER)
            n = remove_stale_temps(out)
            if n:
                log.info("removed %d temporary file(s) left by an interrupted run", n)
            if show_progress_bar is not None:
                config = dataclasses.replace(config, progress=bool(show_progress_bar))
            return _Run(config, out, encoder).run()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, DiskFullError):
            raise DiskFullError(
                exc.errno,
                f"no space left on the device under {out} ({exc}); free some space and rerun: the run "
                "resumes",
            ) from None
        raise


def run_encode(config: EncodeConfig, *, encoder: Any = None):
    """Embed ``config.input`` into the store ``config.out`` (resumable; on Ray with ``config.ray``).

    Args:
        config: the options.
        encoder: an encoder object to use instead of ``Encoder(config.model, ...)``.

    Returns:
        the :class:`~xite_fast.EmbeddingStore`.
    """
    from xite_fast.data.bundled import is_bundled, load_bundled
    from xite_fast.data.records import Record, index_corpus, model_input

    config.validate()
    if config.ray is not None:
        from xite_fast._ray import init_ray_for_run

        init_ray_for_run(config.ray)
    if is_bundled(config.input):
        recs = load_bundled(config.input).records
        source: Any = [model_input(Record(r["text"], None, r.get("text_pair"))) for r in recs]
    else:
        # one validating pass (empty, binary, non-UTF-8, bad JSON) before the model is loaded
        source = index_corpus(
            config.input,
            text_field=config.text_field,
            label_field=config.label_field,
            pair_field=config.pair_field,
            name="input",
            header=config.header,
        )
    from xite_fast.encode.store import claim_store_dir

    out = claim_store_dir(config.out, "out")  # a bad --out is named as the flag, before the model loads
    return _encode_store(config, source, out, encoder, encoder or config.make_encoder)


def _encode_store(
    cfg: CorpusConfig, source: Any, out_dir: Path, encoder: Any, make_encoder: Any, *, overwrite=False
):
    """One corpus into a store: on Ray when ``cfg.ray`` is set and no encoder object was given (each
    worker builds ``Encoder(cfg.model, **cfg.encoder_kwargs())``), else here with ``make_encoder()``."""
    if cfg.ray is not None and encoder is None:
        from xite_fast.encode.ray import encode_corpus_ray

        return encode_corpus_ray(
            source,
            out_dir,
            cfg.model,
            encoder_kwargs=cfg.encoder_kwargs(),
            shard_size=cfg.shard_size,
            batch_size=cfg.batch_size,
            overwrite=overwrite,
            show_progress_bar=cfg.progress,
            dedupe=cfg.dedupe,
        )
    from xite_fast.encode.store import encode_corpus

    return encode_corpus(
        source,
        out_dir,
        make_encoder,
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        overwrite=overwrite,
        show_progress_bar=cfg.progress,
        dedupe=cfg.dedupe,
    )


def _check_out(out: Any) -> Path:
    if out is None or not str(out).strip():
        raise ValueError(f"out must be a directory path, got {out!r}")
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"out must be a directory, but {str(p)!r} is a file; pass a new directory path")
    return p


def _is_our_config(conf: Any) -> bool:
    """``conf`` (a parsed config.json) has the structure this package writes: an int ``version`` and
    ``source`` / ``target`` objects holding the inputs' sha256."""
    return (
        isinstance(conf, dict)
        and isinstance(conf.get("version"), int)
        and all(isinstance(conf.get(k), dict) and "sha256" in conf[k] for k in ("source", "target"))
    )


def _is_run_dir(out: Path) -> bool:
    """``out`` holds our marker, or (a run directory of an older version, made before the marker) a
    config.json of our structure."""
    with contextlib.suppress(OSError, ValueError):
        if read_json(out / RUN_MARKER) == _MARKER:
            return True
    with contextlib.suppress(OSError, ValueError):
        return _is_our_config(read_json(out / "config.json"))
    return False


def _ours_anyway(name: str) -> bool:
    """Names an empty-but-started run directory may hold (our lock, temporaries of a killed write)."""
    return name == ".lock" or TMP_MARK in name


def _is_table(obj: Any) -> bool:
    """An in-memory input: a table (:func:`~xite_fast.data.records.table_kind`) or a list / tuple of texts."""
    from xite_fast.data.records import table_kind

    return table_kind(obj) is not None or isinstance(obj, (list, tuple))


def _bar(progress: bool | None, **kw):
    from tqdm.auto import tqdm

    from xite_fast.logging import progress_enabled

    return tqdm(disable=not progress_enabled(progress), **kw)


# ----------------------------------------------------------------------------------------- the run
class _Run:
    def __init__(self, cfg: AugmentConfig, out: Path, encoder: Any):
        self.cfg, self.out, self.encoder = cfg, out, encoder
        self.times: dict[str, float] = {}
        self.remade: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        log.info("%s ...", name)
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 3)

    def remake(self, path: Path, why: str) -> None:
        log.warning("%s %s; re-making it", path, why)
        self.remade.append(str(path.relative_to(self.out)))

    def run(self) -> AugmentRun:
        cfg = self.cfg
        with self.stage("index"):
            src_path, tgt_path, inputs = self.resolve_inputs()
            fault_point("inputs")
            stats = {"source": _stat_or_none(src_path), "target": _stat_or_none(tgt_path)}
            self.src = self.index("source", src_path, need_label=True)
            self.tgt = self.index("target", tgt_path, need_label=False)
            self.input_stats = stats
            if cfg.vote == "weighted" and cfg.k > len(self.src):
                raise ValueError(f"k must be <= the number of source rows ({len(self.src)}), got {cfg.k}")
            self.config = self.config_of(inputs)
            self.check_config()
            fault_point("config")
        with self.stage("encode"):
            stores = self.encode()
            fault_point("encoded")
        with self.stage("lda"):
            W = self.lda(stores)
        with self.stage("match+synthesize"):
            reused = self.synthesize(stores, W)
        fault_point("parts")
        self.check_inputs_unchanged(full=True)
        return self.finish(stores, reused)

    def check_inputs_unchanged(self, full: bool) -> None:
        """RuntimeError naming an input file rewritten since it was indexed (its text would be paired with
        the labels and embeddings of the old one). ``full``: compare the sha256 (before the run's
        manifest); else size and mtime only (cheap, before each synthetic part is committed)."""
        for name, idx in (("source", self.src), ("target", self.tgt)):
            st = _stat_or_none(idx.path)
            changed = st != self.input_stats[name]
            if not changed and full:
                changed = sha256_file(idx.path) != idx.sha256
            if changed:
                raise RuntimeError(
                    f"the {name} input {str(idx.path)!r} was modified during the run (it no longer matches "
                    "the content read at the start); nothing built from the new content was committed. "
                    "Restore the file and rerun, or delete the out directory to start over with the new file"
                )

    # ------------------------------------------------------------------------------------- inputs
    def resolve_inputs(self) -> tuple[Path, Path, dict]:
        from xite_fast.data.bundled import is_bundled, load_bundled
        from xite_fast.data.records import corpus_format

        cfg = self.cfg
        topics = None
        if all(isinstance(s, str) and s.lower().startswith("chatterbot:") for s in (cfg.source, cfg.target)):
            # English has topics (coding, tech_support) Korean lacks: matching onto labels the target
            # never uses only adds errors, so two chatterbot corpora are restricted to shared topics
            from xite_fast.data.chatterbot import chatterbot_topics

            topics = chatterbot_topics(str(cfg.source).split(":", 1)[1], str(cfg.target).split(":", 1)[1])
        paths, inputs, self.pair_fields = [], {}, {}
        for name in ("source", "target"):
            spec = getattr(cfg, name)
            if is_bundled(spec):
                data = load_bundled(spec, topics=topics)
                p = self.out / "inputs" / f"{name}.jsonl"
                blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data.records).encode("utf-8")
                if not file_matches(p, hashlib.sha256(blob).hexdigest()):
                    if p.exists():
                        self.remake(p, "differs from the bundled data")
                    p.parent.mkdir(exist_ok=True)
                    atomic_write_bytes(p, blob)
                inputs[name] = {"spec": data.spec, "bundled_sha256": data.sha256}
                has_pair = bool(data.records) and "text_pair" in data.records[0]
                self.pair_fields[name] = "text_pair" if has_pair else None
            elif _is_table(spec):
                p, inputs[name] = (
                    self.write_table(name, spec),
                    {"spec": None, "table": True},
                )  # identity: the content
                self.pair_fields[name] = cfg.pair_field
            else:
                p = Path(spec).expanduser()
                if not p.exists():
                    raise FileNotFoundError(f"{name}: file not found: {str(spec)!r}")
                if not p.is_file():
                    raise ValueError(
                        f"{name} must be a file or a bundled spec (chatterbot:<language>), got {str(spec)!r}"
                    )
                corpus_format(p)
                inputs[name] = {"spec": None}
                self.pair_fields[name] = cfg.pair_field
            paths.append(p)
        return paths[0], paths[1], inputs

    def write_table(self, name: str, table: Any) -> Path:
        """A DataFrame / Dataset / list input as ``OUT/inputs/<name>-<sha256[:12]>.jsonl`` (the configured
        field names; :func:`~xite_fast.data.records.table_jsonl`): read, fingerprinted by content and
        resumed as a file. The name holds the content hash, so a changed table never overwrites the file
        of the run it would be compared against."""
        from xite_fast._io import atomic_write
        from xite_fast.data.records import table_jsonl

        cfg = self.cfg
        kw = {
            "need_label": name == "source",
            "text_field": cfg.text_field,
            "label_field": cfg.label_field,
            "pair_field": cfg.pair_field,
            "name": name,
        }
        h = hashlib.sha256()
        for line in table_jsonl(table, **kw):  # pass 1: the content hash (nothing held in memory)
            h.update(line)
        sha = h.hexdigest()
        p = self.out / "inputs" / f"{name}-{sha[:12]}.jsonl"
        if not file_matches(p, sha):
            p.parent.mkdir(exist_ok=True)
            with atomic_write(p) as fh:  # pass 2: the bytes
                for line in table_jsonl(table, **kw):
                    fh.write(line)
        return p

    def index(self, name: str, path: Path, need_label: bool):
        from xite_fast.data.records import index_corpus

        cfg = self.cfg
        return index_corpus(
            path,
            need_label=need_label,
            text_field=cfg.text_field,
            label_field=cfg.label_field,
            pair_field=self.pair_fields[name],
            max_rows=cfg.max_rows,
            name=name,
            header=cfg.header,
        )

    def config_of(self, inputs: dict) -> dict:
        # not dataclasses.asdict: it would deep-copy a DataFrame / Dataset input
        skip = (*_NOT_IDENTITY, "source", "target")
        conf = {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(self.cfg) if f.name not in skip}
        conf["version"] = _CONFIG_VERSION
        if self.encoder is not None:
            conf["model"] = str(getattr(self.encoder, "model_id", type(self.encoder).__name__))
            conf["precision"] = str(getattr(self.encoder, "precision", self.cfg.precision))
            conf["static_shapes"] = bool(getattr(self.encoder, "static_shapes", self.cfg.static_shapes))
        for name, idx in (("source", self.src), ("target", self.tgt)):
            conf[name] = {**inputs[name], **idx.fingerprint()}
        return conf

    def committed(self) -> bool:
        """Work beyond the index exists (embedding shards or synthetic parts)."""
        for name in ("source_emb", "target_emb"):
            with contextlib.suppress(OSError, ValueError):
                if read_json(self.out / name / "manifest.json").get("shards"):
                    return True
        return any((self.out / "synthetic").glob("part-*.done.json"))

    def check_config(self) -> None:
        path = self.out / "config.json"
        if path.exists():
            try:
                old = read_json(path, what="run configuration")
                if not isinstance(old, dict):
                    raise ValueError(f"{path}: the run configuration is not a JSON object")
            except ValueError as exc:
                raise ValueError(
                    f"{exc}; {self.out} cannot be trusted: delete it (or use a new out directory) and rerun"
                ) from None
            if not _is_our_config(old) or old["version"] != _CONFIG_VERSION:
                raise ValueError(
                    f"{path} is not a run configuration of this xite_fast version (expected an object with "
                    f"version {_CONFIG_VERSION}, source and target; got {json.dumps(old)[:80]}); "
                    f"{self.out} cannot be trusted: delete it (or use a new out directory) and rerun"
                )
            for name, value in _ADDED_OPTIONS.items():  # written before the option existed
                old.setdefault(name, value)
            if old != self.config:
                diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
                if self.committed():
                    changed = [d for d in diff if d in ("source", "target")]
                    what = (
                        f" (the {' and '.join(changed)} input changed: its content sha256 differs)"
                        if changed
                        else ""
                    )
                    raise ValueError(
                        f"out {str(self.out)!r} holds a run with different options "
                        f"({', '.join(diff)}){what}; use a new out directory or delete the old one"
                    )
                log.info(
                    "%s: replacing the options of a run that committed no work (%s)", path, ", ".join(diff)
                )
            else:
                return
        atomic_write_json(path, self.config)

    # ------------------------------------------------------------------------------------- encode
    def make_encoder(self):
        if self.encoder is None:
            self.encoder = self.cfg.make_encoder()
        return self.encoder

    def encode(self) -> dict:
        from xite_fast.encode.store import reusable_store, store_problem

        cfg, stores, todo = self.cfg, {}, []
        for name, idx in (("source", self.src), ("target", self.tgt)):
            d = self.out / f"{name}_emb"
            st = reusable_store(d, idx.fingerprint(), cfg.shard_size, cfg.batch_size)
            if st is None:
                todo.append((name, idx, d))
            else:
                stores[name] = st
        for name, idx, d in todo:
            overwrite = False
            why = store_problem(
                d
            )  # inside our run directory a store is ours: an untrustworthy one is re-made
            if why:
                self.remake(d / "manifest.json", why)
                with contextlib.suppress(FileNotFoundError):
                    (d / "manifest.json").unlink()  # not a store manifest to keep: the folder is re-made
                overwrite = True
            stores[name] = _encode_store(cfg, idx, d, self.encoder, self.make_encoder, overwrite=overwrite)
        for name, idx in (("source", self.src), ("target", self.tgt)):
            if len(stores[name]) != len(idx):
                raise RuntimeError(
                    f"{stores[name].out_dir} holds {len(stores[name])} rows but the {name} has {len(idx)}; "
                    "delete the directory and rerun"
                )
        if stores["source"].dim != stores["target"].dim:
            raise RuntimeError(
                f"source and target dims differ: {stores['source'].dim} vs {stores['target'].dim}"
            )
        return stores

    # ------------------------------------------------------------------------------------- lda
    def lda(self, stores) -> np.ndarray | None:
        cfg = self.cfg
        if cfg.mode == "interp":
            return None
        from xite_fast.xite.lda import fit_language_basis

        w_path, meta_path = self.out / "lda.npy", self.out / "lda.json"
        with contextlib.suppress(OSError, ValueError):
            meta = read_json(meta_path)
            if file_matches(w_path, meta.get("sha256")):
                return np.load(w_path)
        if w_path.exists() or meta_path.exists():
            self.remake(w_path, "is missing, corrupt or unrecorded")
        dim = stores["source"].dim
        W = fit_language_basis(
            [
                _sample_rows(
                    list(stores["source"].iter_shards()), len(self.src), cfg.lda_max_rows, dim, cfg.seed
                ),
                _sample_rows(
                    list(stores["target"].iter_shards()), len(self.tgt), cfg.lda_max_rows, dim, cfg.seed + 1
                ),
            ],
            n_components=cfg.lda_components,
        )
        sha = atomic_save_npy(w_path, W)
        fault_point("lda")
        atomic_write_json(meta_path, {"sha256": sha, "shape": list(W.shape)})
        return np.load(w_path)

    # ------------------------------------------------------------------------------------- synthesize
    def part_ok(self, syn: Path, stem: str) -> bool:
        done = syn / f"{stem}.done.json"
        if not done.exists():
            return False
        try:
            d = read_json(done)
            ok = (
                d.get("digest") == digest_of(d)  # the counters (label_counts, ...) as written
                and file_matches(syn / f"{stem}.jsonl", d["sha256"]["provenance"])
                and file_matches(syn / f"{stem}.npy", d["sha256"]["embeddings"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.remake(syn / stem, "(a synthetic part) is missing, corrupt or edited")
        return ok

    def synthesize(self, stores, W) -> int:
        from xite_fast.ops.lda_project_interp import lda_project_interp
        from xite_fast.xite.labels import lambdas_for, transfer_labels
        from xite_fast.xite.match import StoreMatcher
        from xite_fast.xite.report import TransferCounts, correct_labels, provenance

        cfg, src, tgt = self.cfg, self.src, self.tgt
        syn = self.out / "synthetic"
        syn.mkdir(exist_ok=True)
        names = src.label_names
        gold_names = tgt.label_names if tgt.has_labels else None
        k = cfg.k if cfg.vote == "weighted" else 1
        src_mean = stores["source"].mean if cfg.center else None
        tgt_mean = stores["target"].mean if cfg.center else None
        matcher = StoreMatcher(
            stores["source"],
            k,
            key_mean=src_mean,
            executor="ray" if cfg.ray else "local",
            backend=cfg.backend,
            chunk=cfg.match_chunk,
        )
        src_shards = list(stores["source"].iter_shards())
        tgt_shards = list(stores["target"].iter_shards())
        dim = stores["source"].dim
        src_reader, tgt_reader = src.reader(), tgt.reader()
        reused = 0
        bar = _bar(cfg.progress, total=len(tgt_shards), desc="match+synthesize", unit="part")
        try:
            for part, (t0, tmm) in enumerate(tgt_shards):
                stem = f"part-{part:05d}"
                if self.part_ok(syn, stem):
                    reused += 1
                    bar.update(1)
                    continue
                n = tmm.shape[0]
                s, i = matcher.match(tmm, tgt_mean)
                labels, sid, sim, keep = transfer_labels(
                    s,
                    i,
                    src.codes,
                    vote=cfg.vote,
                    threshold=cfg.threshold,
                    n_classes=len(names),
                    temperature=cfg.temperature,
                )
                kept = np.flatnonzero(keep)
                tid = kept + t0
                lam = lambdas_for(cfg.lam, tid, cfg.beta_alpha, cfg.seed)
                if len(kept):
                    syn_rows = lda_project_interp(
                        _gather_rows(src_shards, sid[kept], dim),
                        np.asarray(tmm[kept], dtype=np.float32),
                        W,
                        lam,
                        cfg.mode,
                        backend=cfg.backend,
                    )
                else:
                    syn_rows = np.zeros((0, dim), np.float32)
                gold = correct = None
                if gold_names is not None:
                    gold = [gold_names[c] for c in tgt.codes[t0 : t0 + n]]
                    correct = correct_labels(names, labels, gold)
                counts = TransferCounts.count(labels, keep, sim, len(names), correct)
                records = provenance(
                    tid,
                    sid[kept],
                    [names[c] for c in labels[kept]],
                    sim[kept],
                    lam,
                    cfg.mode,
                    gold=None if gold is None else [gold[j] for j in kept],
                    target_records=tgt_reader.get(tid),
                    source_records=src_reader.get(sid[kept]),
                    digits=6,
                )
                lines = [json.dumps(rec, ensure_ascii=False) for rec in records]
                sha_p = atomic_write_bytes(
                    syn / f"{stem}.jsonl", ("\n".join(lines) + ("\n" if lines else "")).encode()
                )
                fault_point(f"part:{part}:jsonl")
                sha_e = atomic_save_npy(syn / f"{stem}.npy", np.ascontiguousarray(syn_rows, dtype=np.float32))
                fault_point(f"part:{part}:npy")
                self.check_inputs_unchanged(full=False)
                atomic_write_json(
                    syn / f"{stem}.done.json",
                    with_digest(
                        {
                            "part": part,
                            "target_start": int(t0),
                            **counts.to_dict(),
                            "sha256": {"provenance": sha_p, "embeddings": sha_e},
                        }
                    ),
                )
                log.debug("%s: %d/%d rows", stem, len(kept), n)
                bar.update(1)
                fault_point(f"part:{part}")
        finally:
            bar.close()
            src_reader.close()
            tgt_reader.close()
        return reused

    # ------------------------------------------------------------------------------------- manifest, report
    def finish(self, stores, reused: int) -> AugmentRun:
        from xite_fast.xite.report import TransferCounts, build_report, majority_baseline

        cfg, syn = self.cfg, self.out / "synthetic"
        names = self.src.label_names
        parts, counts = [], TransferCounts(np.zeros(len(names), np.int64))
        n_parts = len(stores["target"].shard_paths)
        for part in range(n_parts):
            d = read_json(syn / f"part-{part:05d}.done.json", what="synthetic part record")
            parts.append(
                {
                    "embeddings": f"part-{part:05d}.npy",
                    "provenance": f"part-{part:05d}.jsonl",
                    "rows": d["rows"],
                    "target_start": d["target_start"],
                    "n_targets": d["n_targets"],
                    "sha256": d["sha256"],
                }
            )
            counts.merge(TransferCounts.from_dict(d))
        manifest = {
            "rows": int(counts.label_counts.sum()),
            "dim": int(stores["source"].dim),
            "dtype": "float32",
            "mode": cfg.mode,
            "label_names": names,
            "parts": parts,
            "config": self.config,
        }
        atomic_write_json(syn / "manifest.json", manifest)
        fault_point("manifest")
        options = {k: v for k, v in self.config.items() if k not in ("source", "target")}
        majority = majority_baseline(np.bincount(self.tgt.codes)) if self.tgt.has_labels else None
        report = build_report(label_names=names, counts=counts, options=options, majority=majority)
        report["n_source"] = len(self.src)
        # rows the encoder ran per store (repeats encoded once); recorded in the store manifests
        report["dedupe"] = {
            name: {"rows": len(stores[name]), "encoded": stores[name].encoded_rows}
            for name in ("source", "target")
        }
        atomic_write_json(self.out / "report.json", report)  # deterministic: a resume writes the same bytes
        # the facts of this process (differ between a resumed and an uninterrupted run) live beside it
        timings = {"timing_s": self.times, "shards_skipped_on_resume": reused, "remade": self.remade}
        atomic_write_json(self.out / "timings.json", timings)
        return AugmentRun(self.out, report, manifest, reused, self.remade, timings)


def _stat_or_none(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------------------- rows of stores
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
