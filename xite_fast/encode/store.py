"""Streamed, resumable embedding of large corpora into sharded ``.npy`` files.

Layout of ``out_dir``::

    manifest.json          model id, dim, encode parameters, source fingerprint, one entry per shard
                           (its sha256, float64 column sum and the rows the model ran), the (D,)
                           float32 mean and ``encoded_rows`` once complete
    shard_000000.npy       rows [0, shard_size) as (rows, D) float32
    shard_000001.npy       rows [shard_size, 2 * shard_size) ...
    embeddings.npy         only after EmbeddingStore.to_memmap(): all rows, (N, D) float32

Shard k always holds source rows ``[k * shard_size, (k + 1) * shard_size)`` and batching happens inside
a shard only, so a shard's bytes do not depend on where a run was interrupted: killed at any point, a
rerun skips the shards listed in the manifest (checking their sha256 and the sha256 of their texts) and
the final directory is byte-identical to an uninterrupted run. Every file is written to a temporary
name and renamed; the manifest is rewritten after each shard. At most one shard of texts and
embeddings is held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xite_fast._io import (
    TMP_MARK,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    bare_name,
    check_owned_dir,
    digest_of,
    exclusive_lock,
    fault_point,
    prepare_dir,
    sha256_file,
    tmp_path,
    with_digest,
)
from xite_fast._validation import check_positive_int
from xite_fast.data.records import CorpusIndex, index_corpus, iter_table_records, model_input, table_kind
from xite_fast.logging import progress_enabled

__all__ = [
    "EmbeddingStore",
    "embedding_mean",
    "embedding_sum",
    "encode_corpus",
    "reusable_store",
    "store_problem",
]

log = logging.getLogger("xite_fast")

MANIFEST = "manifest.json"
CONSOLIDATED = "embeddings.npy"
_FORMAT = "xite_fast.embeddings"
_VERSION = 2
_SHARD_RE = re.compile(r"^shard_\d{6}\.npy$")
_SUM_BLOCK = 65536  # rows per float64 block: bounded memory for memory-mapped shards


# ----------------------------------------------------------------------------- statistics
# A store's mean is computed where the rows pass anyway: each shard's float64 column sum goes into the
# manifest when the shard is written, and the mean is the sum of those sums (in shard order) over N.


def embedding_sum(x: Any) -> np.ndarray:
    """Column sum of ``x``: (N, D) float (array or memmap) -> (D,) float64, over blocks of 65536 rows."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    for i0 in range(0, x.shape[0], _SUM_BLOCK):
        total += np.asarray(x[i0 : i0 + _SUM_BLOCK], dtype=np.float64).sum(0)
    return total


def mean_of_sums(sums: Iterable[Any], dim: int, n: int) -> np.ndarray:
    """(D,) float32 mean of ``n`` rows from the (D,) float64 column sums of their blocks, added in order."""
    total = np.zeros(dim, dtype=np.float64)
    for s in sums:
        total += np.asarray(s, dtype=np.float64)
    return (total / max(n, 1)).astype(np.float32)


def embedding_mean(x: Any) -> np.ndarray:
    """Column mean of ``x``: (N, D) float32 (array or memmap) -> (D,) float32, accumulated in float64.

    A store's mean (:attr:`EmbeddingStore.mean`) is the same rule over its shards."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot take the mean of 0 rows")
    return mean_of_sums([embedding_sum(x)], x.shape[1], n)


# ----------------------------------------------------------------------------- sources (store protocol)


def write_manifest(out_dir: Path, manifest: dict) -> None:
    # no timestamps or timings in the manifest: an interrupted + resumed run must equal a clean one;
    # its digest covers the fields that drive results (mean, shard sums, shard list)
    manifest.pop("digest", None)
    atomic_write_json(out_dir / MANIFEST, with_digest(manifest))


def check_manifest(mpath: Path, manifest: Any) -> dict:
    """``manifest`` (parsed from ``mpath``) if it is a store manifest of ours, unedited (its ``digest``;
    a manifest of an older version has none), whose shard files are plain names inside the folder;
    ValueError naming the file and the recovery otherwise."""
    recover = f"delete {mpath.parent} and rerun (Python: encode_corpus(..., overwrite=True))"
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{mpath}: not an xite_fast embedding manifest (format={fmt!r})")
    if "digest" in manifest and manifest["digest"] != digest_of(manifest):
        raise ValueError(f"{mpath} was edited after it was written (its digest does not match); {recover}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(e, dict) for e in shards):
        raise ValueError(f"{mpath}: 'shards' must be a list of objects; {recover}")
    for k, e in enumerate(shards):
        bare_name(e.get("file"), _SHARD_RE.pattern[1:-1], str(mpath), _shard_name(0))
        if e["file"] != _shard_name(k):
            raise ValueError(f"{mpath}: shard {k} is {e['file']!r}, expected {_shard_name(k)!r}; {recover}")
    return manifest


def store_problem(out_dir: str | os.PathLike) -> str | None:
    """Why the store folder ``out_dir`` cannot be resumed as it is (its manifest is missing while shard
    files are there, unreadable, edited, or names paths outside it), or None (fine, or no store)."""
    out_dir = Path(out_dir)
    mpath = out_dir / MANIFEST
    if not mpath.is_file():
        shards = out_dir.is_dir() and any(_SHARD_RE.match(p.name) for p in out_dir.iterdir())
        return "is missing (shard files are present)" if shards else None
    try:
        check_manifest(mpath, json.loads(mpath.read_text()))
    except (OSError, ValueError) as exc:
        return f"cannot be used ({exc})"
    return None


def _is_store(out_dir: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        m = json.loads((out_dir / MANIFEST).read_text())
        return isinstance(m, dict) and m.get("format") == _FORMAT
    return False


def _store_file(name: str) -> bool:
    return (
        bool(_SHARD_RE.match(name))
        or name in (CONSOLIDATED, ".lock")
        or name.startswith(".pending-")
        or (TMP_MARK in name)
    )


def claim_store_dir(out_dir: str | os.PathLike, what: str = "out_dir") -> Path:
    """Create the store folder ``out_dir``; ValueError naming it (as ``what``) when it is a non-empty
    folder that is not a store (a foreign ``manifest.json`` is never replaced), a file, or under one."""
    out_dir = Path(out_dir).expanduser()
    check_owned_dir(out_dir, what, _is_store, _store_file)
    return prepare_dir(out_dir, what)


@contextlib.contextmanager
def store_lock(out_dir: Path):
    with exclusive_lock(out_dir / ".lock", f"the embedding store {out_dir}"):
        yield


def _iter_items(items: Iterable[Any]) -> Iterator[Any]:
    for i, t in enumerate(items):
        if isinstance(t, str):
            yield t
        elif isinstance(t, tuple) and len(t) == 2 and all(isinstance(x, str) for x in t):
            yield t  # a sentence pair (text, text_pair)
        else:
            raise ValueError(
                f"source item {i} must be a str, got {type(t).__name__}: {t!r:.60} (or a (str, str) sentence "
                "pair)"
            )


def index_of(source: Any, text_field: str, errors: str, pair_field: str | None) -> CorpusIndex | None:
    """The :class:`CorpusIndex` of a file source (one validating pass, before any model work)."""
    if isinstance(source, CorpusIndex):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"source file not found: {path}")
        if not path.is_file():
            raise ValueError(f"source must be a file or an iterable of str, got directory {path}")
        if path.suffix.lower() not in (".txt", ".jsonl", ".ndjson", ".tsv", ".csv", ".parquet"):
            raise ValueError(
                "source must end with one of ['.csv', '.jsonl', '.ndjson', '.parquet', '.tsv', '.txt'], got "
                f"{path.name!r}"
            )
        try:
            return index_corpus(
                path, text_field=text_field, pair_field=pair_field, errors=errors, name="source"
            )
        except ValueError as exc:
            if "empty corpus" in str(exc):
                raise ValueError(
                    f"source {str(path)!r} has no texts; expected at least one non-blank record"
                ) from None
            raise
    return None


def _indexed_inputs(index: CorpusIndex, start: int = 0, stop: int | None = None) -> Iterator[Any]:
    """The encoder inputs of rows [start, stop) of an indexed corpus, in order (read block by block)."""
    stop = len(index) if stop is None else stop
    reader = index.reader()
    try:
        for b0 in range(start, stop, 4096):
            for rec in reader.get(range(b0, min(b0 + 4096, stop))):
                yield model_input(rec)
    finally:
        reader.close()


def open_source(
    source: Any, text_field: str, errors: str, pair_field: str | None = None
) -> tuple[dict, Iterator[Any]]:
    """Return (fingerprint, iterator over encoder inputs: str, or (text, pair) tuples)."""
    index = index_of(source, text_field, errors, pair_field)
    if index is not None:
        return index.fingerprint(), _indexed_inputs(index)
    if table_kind(source) is not None:
        return _table_source(source, text_field, pair_field)
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise ValueError(
            "source must be a path (.txt/.jsonl/.tsv/.csv/.parquet) or an iterable of str, got "
            f"{type(source).__name__}"
        )
    # an iterable cannot be fingerprinted up front: each shard's text sha256 identifies it instead
    return {"kind": "iterable"}, _iter_items(source)


def _table_inputs(table: Any, text_field: str, pair_field: str | None) -> Iterator[Any]:
    recs = iter_table_records(table, text_field=text_field, pair_field=pair_field, name="source")
    return (model_input(rec) for _, rec in recs)


def _table_source(table: Any, text_field: str, pair_field: str | None) -> tuple[dict, Iterator[Any]]:
    """A DataFrame / Series / Dataset / Column / dict of columns read as a file is read (its rows, the
    text_field / pair_field columns, blank rows skipped): fingerprinted by content in a first pass (the
    sha256 of the encoder inputs), like a file by its bytes, then streamed again."""
    h, n = hashlib.sha256(), 0
    for item in _table_inputs(table, text_field, pair_field):
        _hash_texts(h, (item,))
        n += 1
    fp = {
        "kind": "table",
        "sha256": h.hexdigest(),
        "rows": n,
        "text_field": text_field,
        "pair_field": pair_field,
    }
    return fp, _table_inputs(table, text_field, pair_field)


def take(it: Iterator[Any], n: int) -> list:
    out = []
    for t in it:
        out.append(t)
        if len(out) == n:
            break
    return out


def _texts_sha256(texts: list) -> str:
    h = hashlib.sha256()
    _hash_texts(h, texts)
    return h.hexdigest()


def _hash_texts(h: Any, texts: Iterable[Any]) -> None:
    for t in texts:
        parts = (t,) if isinstance(t, str) else (b"\x00pair", *t)
        for x in parts:
            b = x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))  # length prefix: ["ab", "c"] != ["a", "bc"]
            h.update(b)


# ----------------------------------------------------------------------------- store


class EmbeddingStore:
    """Read side of an ``encode_corpus`` output folder.

    Args:
        out_dir: folder holding ``manifest.json`` and the ``shard_*.npy`` files.

    Attributes:
        dim: embedding width D. ``complete``: False while a run is unfinished (only finished shards
        are visible). ``model_id``, ``manifest``: as written by :func:`encode_corpus`.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        mpath = self.out_dir / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"no embedding store at {self.out_dir}: {MANIFEST} not found")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{mpath}: unreadable manifest ({exc})") from None
        check_manifest(mpath, self.manifest)
        self.dim = int(self.manifest["dim"])
        self.model_id = self.manifest["model_id"]
        self.complete = bool(self.manifest.get("complete"))
        self._shards = self.manifest["shards"]

    def __len__(self) -> int:
        return sum(int(s["rows"]) for s in self._shards)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"EmbeddingStore({str(self.out_dir)!r}, rows={len(self)}, dim={self.dim}, "
            f"shards={len(self._shards)}, {state})"
        )

    @property
    def shard_paths(self) -> list[Path]:
        return [self.out_dir / s["file"] for s in self._shards]

    @property
    def encoded_rows(self) -> int | None:
        """Rows the model ran when the store was written (< ``len(self)`` where repeated texts were
        encoded once, see :func:`encode_corpus`'s ``dedupe``); None if unknown (an older store)."""
        enc = [s.get("encoded") for s in self._shards]
        return None if None in enc else int(sum(enc))

    @property
    def mean(self) -> np.ndarray:
        """(D,) float32 mean of all rows, written to the manifest at encode time (float64 sums of
        every shard, added in shard order); computed from the shards for an older manifest."""
        if self.manifest.get("mean") is not None:
            return np.asarray(self.manifest["mean"], dtype=np.float32)
        return mean_of_sums((embedding_sum(arr) for _, arr in self.iter_shards()), self.dim, len(self))

    def verify(self) -> list[str]:
        """Names of the shard files that are missing or whose sha256 differs from the manifest."""
        return [
            s["file"] for s in self._shards if sha256_file_or_none(self.out_dir / s["file"]) != s["sha256"]
        ]

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, (rows, D) float32 read-only memmap)`` per shard, in row order."""
        for s, path in zip(self._shards, self.shard_paths, strict=True):
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"{path}: unreadable shard ({exc}); rerun the command that wrote {self.out_dir} to "
                    "re-make it"
                ) from None
            if arr.shape != (int(s["rows"]), self.dim) or arr.dtype != np.float32:
                raise ValueError(
                    f"{path}: expected ({s['rows']}, {self.dim}) float32 per the manifest, got {arr.shape} "
                    f"{arr.dtype}"
                )
            yield int(s["start"]), arr

    def to_memmap(self) -> np.memmap:
        """All rows as one (N, D) float32 read-only memmap, consolidated once into ``embeddings.npy``
        (shard by shard: O(shard) RAM; tmp file + rename). Later calls reopen the file."""
        if not self.complete:
            raise ValueError(
                f"{self.out_dir}: the run is incomplete ({len(self)} rows so far); rerun encode_corpus first"
            )
        final = self.out_dir / CONSOLIDATED
        n = len(self)
        if final.is_file():
            arr = np.load(final, mmap_mode="r")
            if arr.shape == (n, self.dim) and arr.dtype == np.float32:
                return arr
        tmp = tmp_path(final)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, self.dim))
            for start, shard in self.iter_shards():
                out[start : start + len(shard)] = shard
            out.flush()
            del out
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return np.load(final, mmap_mode="r")


# ----------------------------------------------------------------------------- writer


def encode_corpus(
    source: str | os.PathLike | CorpusIndex | Iterable[str],
    out_dir: str | os.PathLike,
    encoder: Any = None,
    *,
    shard_size: int = 65536,
    batch_size: int = 64,
    text_field: str = "text",
    pair_field: str | None = None,
    show_progress_bar: bool | None = None,
    overwrite: bool = False,
    errors: str = "strict",
    dedupe: bool = True,
) -> EmbeddingStore:
    """Embed a corpus into ``out_dir`` as fixed-size ``.npy`` shards; resumable.

    Args:
        source: a corpus file read by :mod:`xite_fast.data.records` (``.txt`` / ``.jsonl`` / ``.tsv`` /
            ``.csv`` / ``.parquet``; row i = the i-th non-blank record, the same rows ``augment``
            numbers), a :class:`~xite_fast.data.records.CorpusIndex` of one, a table read as a file is
            read (:func:`~xite_fast.data.records.iter_table_records`: a pandas DataFrame / Series, a
            ``datasets`` Dataset / Column, a dict of columns; the ``text_field`` / ``pair_field``
            columns, blank rows skipped, fingerprinted by content), or another iterable of str or
            ``(text, text_pair)`` tuples (taken verbatim; must yield the same items on a rerun,
            checked per shard).
        out_dir: output folder (created).
        encoder: an :class:`~xite_fast.encode.encoder.Encoder` (default: ``Encoder()``, ONNX e5-small),
            or a zero-argument factory of one (called after the source was validated). Sentence pairs reach it
            as ``(text, text_pair)`` tuples.
        shard_size: rows per shard (fixed row ranges; part of the identity of the output).
        batch_size: texts per forward pass (within a shard).
        text_field, pair_field: field / column of the text and (optional) text pair of a file source.
        show_progress_bar: tqdm bar over rows; ``None``: when the caller is interactive (a terminal or a
            notebook, :func:`xite_fast.logging.progress_enabled`).
        overwrite: replace an existing output made from another source/model/parameters.
        errors: ``"strict"`` (non-UTF-8 line -> ValueError naming file and line) or ``"replace"``.
        dedupe: run repeated texts through the model once and copy their rows, within a shard and
            from earlier shards (:class:`RowIndex`); the files are byte-identical to ``dedupe=False``
            (:func:`encode_rows` says for which encoders; others encode every row). Each shard's
            manifest entry counts the rows ``encoded``, the manifest their total (``encoded_rows``).
            A resumed run re-derives the earlier shards' row keys (tokenization only).

    Returns:
        The :class:`EmbeddingStore` of ``out_dir`` (its manifest holds every shard's sha256 and the
        mean embedding). A shard whose file is missing or corrupt is re-encoded.

    Raises:
        FileNotFoundError: missing source file.
        ValueError: empty or binary source, non-UTF-8 line, bad JSON / missing field (all before the
            encoder is built), or ``out_dir`` already holds the output of a different source, model or
            parameters (and ``overwrite`` is False).
    """
    shard_size, batch_size = check_encode_args(shard_size, batch_size, text_field, errors)
    fingerprint, texts = open_source(source, text_field, errors, pair_field)  # validates first
    first = take(texts, 1)  # an empty iterable or a bad first item fails before anything is written
    if not first:
        raise ValueError(f"source {describe(source)} has no texts; expected at least one line/row/item")
    texts = itertools.chain(first, texts)
    out_dir = claim_store_dir(out_dir)  # never someone else's folder; before the model is loaded
    if encoder is None:
        from xite_fast.encode.encoder import Encoder

        encoder = Encoder()
    elif callable(encoder) and not hasattr(encoder, "encode"):
        encoder = encoder()  # a factory: the model is loaded only once the source passed its checks
    header = make_header(encoder, shard_size, batch_size, fingerprint)
    with store_lock(out_dir):
        manifest = open_manifest(out_dir, header, overwrite)
        done = manifest["shards"]
        if manifest["complete"] and fingerprint["kind"] != "iterable":
            if not EmbeddingStore(out_dir).verify():
                return EmbeddingStore(out_dir)  # same source sha256, model, parameters; files intact
            manifest["complete"] = False
        bar = None
        if progress_enabled(show_progress_bar):
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"encode {out_dir.name}", unit="text", total=fingerprint.get("rows"))
        # repeats of earlier shards' rows are copied from them (dedupe across shards, not just within)
        known = RowIndex(out_dir, shard_size) if dedupe else None
        opts = {"dedupe": dedupe, "known": known}
        try:
            k = 0
            while True:
                chunk = take(texts, shard_size)
                if not chunk:
                    break
                if k < len(done):  # finished in an earlier run: check it is the same data
                    if verify_shard(out_dir, done[k], chunk):
                        if known is not None:
                            known.add(row_keys(encoder, chunk, batch_size), k * shard_size)
                        if bar is not None:
                            bar.update(len(chunk))
                        k += 1
                        continue
                    log.warning("%s: %s is missing or corrupt; re-encoding it", out_dir, done[k]["file"])
                    entry = write_shard(encoder, chunk, out_dir, k, shard_size, batch_size, **opts)
                    done[k] = entry
                    with contextlib.suppress(FileNotFoundError):
                        (out_dir / CONSOLIDATED).unlink()  # built from the corrupt shard
                else:
                    # a shard finished by a killed distributed run but not yet in the manifest is kept
                    entry = adopt_pending(out_dir, k, shard_size, chunk)
                    if entry is None:
                        entry = write_shard(encoder, chunk, out_dir, k, shard_size, batch_size, **opts)
                    elif known is not None:
                        known.add(row_keys(encoder, chunk, batch_size), k * shard_size)
                    done.append(entry)
                manifest["num_rows"] = sum(s["rows"] for s in done)
                write_manifest(out_dir, manifest)  # the shard counts as done only from here on
                fault_point(f"encode:{out_dir.name}:{k}")
                if bar is not None:
                    bar.update(len(chunk))
                k += 1
                del chunk
        finally:
            if bar is not None:
                bar.close()
        if k < len(done):
            raise ValueError(
                f"{out_dir} holds {len(done)} shards but the source now has only {k} shards of texts; "
                f"delete {out_dir} and rerun (Python: encode_corpus(..., overwrite=True))"
            )
        finish_store(out_dir, manifest)
    log.info("encode_corpus: %d rows in %s", manifest["num_rows"], out_dir)
    return EmbeddingStore(out_dir)


def reusable_store(out_dir: str | os.PathLike, fingerprint: dict, shard_size: int, batch_size: int):
    """The store in ``out_dir`` if it is complete, made from the source with ``fingerprint`` with these
    parameters, and every shard file matches its sha256 (then no encoder is needed); else None."""
    try:
        store = EmbeddingStore(out_dir)
    except (FileNotFoundError, ValueError, KeyError):
        return None
    m = store.manifest
    if not (
        store.complete
        and m.get("version") == _VERSION
        and m.get("source") == fingerprint
        and m.get("shard_size") == shard_size
        and (m.get("params") or {}).get("batch_size") == batch_size
        and m.get("mean") is not None
    ):
        return None
    return None if store.verify() else store


# ------------------------------------------------- the store protocol
# The write protocol of a store directory, shared by encode_corpus and xite_fast.encode.ray (whose
# workers run verify_shard / adopt_pending / write_shard): open_manifest under store_lock, then for
# shard k verify_shard (recorded) or adopt_pending / write_shard (new), write_manifest after each
# recorded shard, finish_store at the end. Not part of the public API (not in __all__).


def check_encode_args(shard_size: Any, batch_size: Any, text_field: Any, errors: Any) -> tuple[int, int]:
    shard_size = check_positive_int("shard_size", shard_size)
    batch_size = check_positive_int("batch_size", batch_size)
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"text_field must be a non-empty str, got {text_field!r}")
    return shard_size, batch_size


def make_header(encoder: Any, shard_size: int, batch_size: int, fingerprint: dict) -> dict:
    """Everything that makes two runs' shards interchangeable (compared on resume)."""
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "model_id": str(getattr(encoder, "model_id", type(encoder).__name__)),
        "dim": int(encoder.dim),
        "dtype": "float32",
        "shard_size": shard_size,
        "params": {
            "batch_size": batch_size,
            "prefix": getattr(encoder, "prefix", None),
            "normalize": True,
        },
        "source": fingerprint,
    }


def _shard_name(k: int) -> str:
    return f"shard_{k:06d}.npy"


def pending_path(out_dir: Path, k: int) -> Path:
    return out_dir / f".pending-{_shard_name(k)[:-4]}.json"


def write_shard(
    encoder: Any,
    texts: list[str],
    out_dir: Path,
    k: int,
    shard_size: int,
    batch_size: int,
    *,
    pending: bool = False,
    dedupe: bool = True,
    known: RowIndex | None = None,
) -> dict:
    """Encode shard ``k`` (``texts`` = source rows ``[k * shard_size, ...)``), write ``shard_k.npy``
    atomically and return its manifest entry.

    Args:
        encoder: object with ``encode(texts, batch_size=, show_progress_bar=, normalize=)`` and ``dim``.
        texts: the shard's texts (1 <= len <= shard_size).
        pending: also write the entry to a hidden ``.pending-shard_k.json`` next to the shard (for a
            writer that finishes shards out of order: a rerun adopts them, see :func:`adopt_pending`).
        dedupe: run repeated texts through the model once (:func:`encode_rows`; the same bytes).
        known: the rows of the store's earlier shards: repeats of them are copied, and this shard's
            rows are added to it once written.

    Returns:
        ``{"file", "start", "rows", "sha256", "text_sha256", "sum", "encoded"}`` (``encoded``: rows
        the model ran).
    """
    dim = int(encoder.dim)
    emb, encoded, keys = encode_rows(encoder, texts, batch_size, dedupe, known)
    if emb.shape != (len(texts), dim):
        raise ValueError(f"encoder returned shape {emb.shape}, expected ({len(texts)}, {dim})")
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if len(bad):
        rows = ", ".join(str(k * shard_size + int(i)) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        name = getattr(encoder, "model_id", type(encoder).__name__)
        runtime = getattr(encoder, "runtime_name", None) or getattr(encoder, "runtime", None)
        raise RuntimeError(
            f"the encoder {name!r}{f' (runtime {runtime})' if runtime else ''} returned NaN or inf "
            f"embeddings for {len(bad)} of {len(texts)} input rows (rows {rows}; first: "
            f"{texts[int(bad[0])]!r:.80}); nothing was written for this shard: try precision='fp32' or "
            "another runtime"
        )
    name = _shard_name(k)
    if known is not None:
        known.forget(k)
    sha = atomic_save_npy(out_dir / name, emb)
    if known is not None:
        known.add(keys, k * shard_size)
    entry = {
        "file": name,
        "start": k * shard_size,
        "rows": len(texts),
        "sha256": sha,
        "text_sha256": _texts_sha256(texts),
        # float64 column sum, so the store's mean is known without reading the shards again
        "sum": embedding_sum(emb).tolist(),
        "encoded": encoded,
    }
    if pending:
        atomic_write_bytes(pending_path(out_dir, k), json.dumps(entry, sort_keys=True).encode())
    return entry


def encode_rows(
    encoder: Any, texts: list, batch_size: int, dedupe: bool = True, known: RowIndex | None = None
) -> tuple[np.ndarray, int, np.ndarray | None]:
    """The normalized (N, D) float32 embeddings of ``texts``, how many rows the model ran, and the rows'
    (N, 16) uint8 keys (None when repeats are not recognised).

    With ``dedupe``, repeats are run once where that leaves every byte as it is: an encoder with
    ``encode_distinct`` (:meth:`~xite_fast.encode.encoder.Encoder.encode_distinct`: the batches of the
    whole shard are planned, each distinct input runs once per padded width), or one that declares
    ``batch_invariant = True`` (a row does not depend on its batch: each distinct text, by a 16-byte
    blake2b of its UTF-8 bytes, is encoded once). Rows whose key is in ``known`` (earlier shards of the
    store) are copied from there instead. Any other encoder encodes every row."""
    if dedupe and hasattr(encoder, "encode_distinct"):
        emb, encoded, keys = encoder.encode_distinct(
            texts, batch_size=batch_size, known=known, return_keys=True
        )
        return np.asarray(emb, dtype=np.float32), int(encoded), keys
    if dedupe and getattr(encoder, "batch_invariant", False):
        keys = text_keys(texts)
        found = known.find(keys) if known is not None else np.full(len(texts), -1, np.int64)
        first: dict[bytes, int] = {}
        inv = np.empty(len(texts), dtype=np.int64)
        for i in range(len(texts)):
            inv[i] = first.setdefault(keys[i].tobytes(), len(first))
        heads = np.unique(inv, return_index=True)[1]  # first row of each distinct text
        new = found[heads] < 0  # heads no earlier shard holds: the model runs these
        run = heads[new]
        emb = np.zeros((len(heads), int(encoder.dim)), dtype=np.float32)
        if len(run):
            got = encoder.encode(
                [texts[i] for i in run], batch_size=batch_size, show_progress_bar=False, normalize=True
            )
            emb[new] = np.asarray(got, dtype=np.float32)
        if not new.all():
            emb[~new] = known.fetch(found[heads[~new]])
        return emb[inv], len(run), keys
    emb = encoder.encode(texts, batch_size=batch_size, show_progress_bar=False, normalize=True)
    return np.asarray(emb, dtype=np.float32), len(texts), None


def text_keys(texts: list) -> np.ndarray:
    """(N, 16) uint8: a 16-byte blake2b of each text (or text pair), the row key of a batch-invariant
    encoder."""
    keys = np.empty((len(texts), 16), dtype=np.uint8)
    for i, t in enumerate(texts):
        h = hashlib.blake2b(digest_size=16)
        _hash_texts(h, (t,))
        keys[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return keys


def row_keys(encoder: Any, texts: list, batch_size: int) -> np.ndarray | None:
    """The keys :func:`encode_rows` gives ``texts`` (without running the model), or None."""
    if hasattr(encoder, "encode_distinct"):
        return encoder.row_keys(texts, batch_size) if hasattr(encoder, "row_keys") else None
    if getattr(encoder, "batch_invariant", False):
        return text_keys(texts)
    return None


class RowIndex:
    """Where the distinct rows of a store's finished shards are, by row key: a repeat in a later shard
    is copied from its first occurrence instead of being run again (``encode_corpus(dedupe=True)``).

    Keys come from the encoder (:meth:`~xite_fast.encode.encoder.Encoder.row_keys`: planned batch width
    and token ids, so a copied row has the bytes the model would give it there). Held as sorted numpy
    arrays (24 bytes a distinct row), not a dict: 1M distinct rows take 24 MB. Rows are read back from
    the shard files (memory-mapped), which the store has verified or just written."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir, self.shard_size = Path(out_dir), shard_size
        self._k0 = np.zeros(0, np.uint64)  # first 8 key bytes, sorted
        self._k1 = np.zeros(0, np.uint64)  # last 8
        self._pos = np.zeros(0, np.int64)  # global row
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._pos)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64: the global row of each key, -1 where it is not known."""
        q = np.ascontiguousarray(keys, dtype=np.uint8).view("<u8")
        out = np.full(len(q), -1, np.int64)
        if not len(q) or not len(self._k0):
            return out
        lo = np.searchsorted(self._k0, q[:, 0], side="left")
        hi = np.searchsorted(self._k0, q[:, 0], side="right")
        one = np.flatnonzero(hi - lo == 1)  # the usual hit: one candidate, its second half decides
        ok = one[self._k1[lo[one]] == q[one, 1]]
        out[ok] = self._pos[lo[ok]]
        for i in np.flatnonzero(hi - lo > 1).tolist():  # first halves shared by several known keys
            for j in range(lo[i], hi[i]):
                if self._k1[j] == q[i, 1]:
                    out[i] = self._pos[j]
                    break
        return out

    def add(self, keys: np.ndarray | None, start: int) -> None:
        """Record rows ``start + i`` under ``keys[i]`` (the first row of each key not known yet)."""
        if keys is None or not len(keys):
            return
        q = np.ascontiguousarray(keys, dtype=np.uint8).view("<u8")
        new = self.find(keys) < 0
        _, first = np.unique(np.ascontiguousarray(keys), axis=0, return_index=True)
        rows = np.sort(first[new[first]])
        if not len(rows):
            return
        k0 = np.concatenate([self._k0, q[rows, 0]])
        k1 = np.concatenate([self._k1, q[rows, 1]])
        pos = np.concatenate([self._pos, start + rows.astype(np.int64)])
        order = np.argsort(k0, kind="stable")
        self._k0, self._k1, self._pos = k0[order], k1[order], pos[order]

    def fetch(self, pos: np.ndarray) -> np.ndarray:
        """(n, D) float32: the stored rows at global rows ``pos``."""
        pos = np.asarray(pos, dtype=np.int64)
        shard = pos // self.shard_size
        out = None
        for k in np.unique(shard).tolist():
            if k not in self._maps:
                self._maps[k] = np.load(self.out_dir / _shard_name(k), mmap_mode="r")
            m = self._maps[k]
            sel = np.flatnonzero(shard == k)
            if out is None:
                out = np.empty((len(pos), m.shape[1]), dtype=np.float32)
            out[sel] = m[pos[sel] - k * self.shard_size]
        return out

    def forget(self, k: int) -> None:
        """Drop the memory map of shard ``k`` (about to be rewritten)."""
        self._maps.pop(k, None)


def adopt_pending(out_dir: Path, k: int, shard_size: int, texts: list[str]) -> dict | None:
    """The entry of shard ``k`` if an interrupted run already wrote it (pending file, same texts, shard
    bytes matching its sha256), else None. Pending files only exist for the current header: a reset
    (:func:`open_manifest`) deletes them."""
    path = pending_path(out_dir, k)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(entry, dict)
        or entry.get("file") != _shard_name(k)
        or entry.get("start") != k * shard_size
        or entry.get("rows") != len(texts)
        or entry.get("text_sha256") != _texts_sha256(texts)
    ):
        return None
    shard = out_dir / entry["file"]
    if not shard.is_file() or sha256_file(shard) != entry.get("sha256"):
        return None
    return entry


def finish_store(out_dir: Path, manifest: dict) -> None:
    """Mark the run complete; pending files of shards now in the manifest are no longer needed."""
    manifest["complete"] = True
    manifest["num_rows"] = n = sum(s["rows"] for s in manifest["shards"])
    # in shard order: the same float64 sum however the run was split
    manifest["mean"] = mean_of_sums((s["sum"] for s in manifest["shards"]), int(manifest["dim"]), n).tolist()
    # rows the model ran (repeats encoded once, see encode_rows); None if a shard predates the count
    enc = [s.get("encoded") for s in manifest["shards"]]
    manifest["encoded_rows"] = None if None in enc else int(sum(enc))
    write_manifest(out_dir, manifest)
    for p in out_dir.glob(".pending-shard_*.json"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    return f"<{type(source).__name__}>"


def verify_shard(out_dir: Path, shard: dict, chunk: list) -> bool:
    """True if shard ``shard`` (a manifest entry) holds ``chunk``'s embeddings intact; False if its file
    is missing or corrupt (re-encode it); ValueError if the texts differ (another source)."""
    if len(chunk) != shard["rows"] or _texts_sha256(chunk) != shard["text_sha256"]:
        raise ValueError(
            f"{out_dir}: the texts of {shard['file']} (rows {shard['start']}..) differ from the source; "
            f"out_dir holds the output of another source: use a new out directory, or delete {out_dir} "
            "(Python: encode_corpus(..., overwrite=True))"
        )
    return sha256_file_or_none(out_dir / shard["file"]) == shard["sha256"]


def sha256_file_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def open_manifest(out_dir: Path, header: dict, overwrite: bool) -> dict:
    mpath = out_dir / MANIFEST
    if mpath.is_file() and not overwrite:
        try:
            old = json.loads(mpath.read_text())
        except ValueError:
            raise ValueError(
                f"{mpath}: unreadable manifest; delete {out_dir} and rerun (Python: encode_corpus(..., "
                "overwrite=True))"
            ) from None
        check_manifest(mpath, old)
        diffs = [k for k in header if old.get(k) != header[k]]
        if diffs and not old.get("shards") and not old.get("complete"):
            diffs = []  # an earlier run failed before its first shard: nothing to protect
            old = None
        if diffs:
            detail = "; ".join(f"{k}: existing {old.get(k)!r} vs now {header[k]!r}" for k in diffs)
            raise ValueError(
                f"{out_dir} already holds embeddings of a different run ({detail}); use a new out directory, "
                f"or delete {out_dir} (Python: encode_corpus(..., overwrite=True))"
            )
        if old is not None:
            return old
    if not mpath.is_file() and not overwrite:
        stray = [p.name for p in out_dir.iterdir() if _SHARD_RE.match(p.name) or p.name == CONSOLIDATED]
        if stray:
            raise ValueError(
                f"{out_dir} holds shard files but no {MANIFEST} ({stray[:3]}...); delete {out_dir} and rerun "
                "(Python: encode_corpus(..., overwrite=True)) or use a new out directory"
            )
    # start over: remove only files this module writes
    for p in out_dir.iterdir():
        if (
            _SHARD_RE.match(p.name)
            or p.name in (CONSOLIDATED, MANIFEST)
            or p.name.startswith(".pending-")
            or TMP_MARK in p.name
        ):
            p.unlink()
    manifest = {**header, "shards": [], "complete": False, "num_rows": 0}
    write_manifest(out_dir, manifest)
    return manifest
