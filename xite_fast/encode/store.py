"""Streamed, resumable embedding of large corpora into sharded ``.npy`` files.

Layout of ``out_dir``::

    manifest.json          model id, dim, encode parameters, source fingerprint, one entry per shard
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

import codecs
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xite_fast._validation import check_positive_int

__all__ = ["EmbeddingStore", "encode_corpus"]

MANIFEST = "manifest.json"
CONSOLIDATED = "embeddings.npy"
_FORMAT = "xite_fast.embeddings"
_VERSION = 1
_SHARD_RE = re.compile(r"^shard_\d{6}\.npy$")
_HASH_CHUNK = 1 << 22


# ----------------------------------------------------------------------------- small file helpers


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    # no timestamps or timings in the manifest: an interrupted + resumed run must equal a clean one
    _atomic_write_bytes(out_dir / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def _dir_lock(out_dir: Path):
    import fcntl

    with open(out_dir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{out_dir} is being written by another encode_corpus process") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- sources


def _check_utf8(path: Path, errors: str) -> str:
    """One pass over the file: sha256 of its bytes, and (errors='strict') UTF-8 validation that
    names the first bad line, before any shard is written."""
    h = hashlib.sha256()
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    newlines_before = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            h.update(chunk)
            if errors == "strict":
                try:
                    dec.decode(chunk)
                except UnicodeDecodeError as exc:
                    line = newlines_before + chunk.count(b"\n", 0, max(exc.start, 0)) + 1
                    raise ValueError(
                        f"{path}: line {line} is not valid UTF-8 ({exc.reason}); fix the file or pass "
                        f"errors='replace' to substitute U+FFFD"
                    ) from None
            newlines_before += chunk.count(b"\n")
    if errors == "strict":
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}: line {newlines_before + 1} is not valid UTF-8 ({exc.reason}, truncated sequence at "
                f"end of file); fix the file or pass errors='replace'"
            ) from None
    return h.hexdigest()


def _iter_lines(
    path: Path, errors: str, *, offset: int = 0, first_lineno: int = 1
) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline), from byte ``offset`` (line ``first_lineno``).
    Binary read: universal-newline text mode would also split on U+2028 etc. inside a line and shift
    row numbers."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        for lineno, raw in enumerate(fh, first_lineno):
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            try:
                yield lineno, raw.decode("utf-8", errors)
            except UnicodeDecodeError as exc:  # file changed after the validation pass
                raise ValueError(f"{path}: line {lineno} is not valid UTF-8 ({exc.reason})") from None


def _texts_txt(path: Path, errors: str, **_) -> Iterator[str]:
    for _lineno, line in _iter_lines(path, errors):
        yield line


def _texts_jsonl(path: Path, errors: str, text_field: str, **_) -> Iterator[str]:
    for lineno, line in _iter_lines(path, errors):
        yield _jsonl_text(path, lineno, line, text_field)


def _jsonl_text(path: Path, lineno: int, line: str, text_field: str) -> str:
    """One .jsonl record -> its text (shared by the streaming and the per-shard readers)."""
    if not line.strip():
        raise ValueError(f"{path}: line {lineno} is empty; a .jsonl file needs one JSON object per line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or text_field not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: line {lineno} has no field text_field={text_field!r} (got {keys})")
    text = obj[text_field]
    if not isinstance(text, str):
        raise ValueError(
            f"{path}: line {lineno} field {text_field!r} must be a string, got {type(text).__name__}"
        )
    return text


def _texts_tsv(path: Path, errors: str, text_field: str, **_) -> Iterator[str]:
    lines = _iter_lines(path, errors)
    try:
        _, header_line = next(lines)
    except StopIteration:
        return
    header = header_line.split("\t")
    col = header.index(text_field) if text_field in header else 0
    for lineno, line in lines:
        yield _tsv_field(path, lineno, line, header, col)


def _tsv_field(path: Path, lineno: int, line: str, header: list[str], col: int) -> str:
    fields = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE)) if line else [""]
    if col >= len(fields):
        raise ValueError(
            f"{path}: line {lineno} has {len(fields)} columns, column {header[col]!r} (index {col}) missing"
        )
    return fields[col]


def _texts_parquet(path: Path, errors: str, text_field: str, **_) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading .parquet needs pyarrow: `pip install pyarrow`") from exc
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"{path}: no column text_field={text_field!r} (columns: {names})")
    row = 0
    for batch in pf.iter_batches(batch_size=8192, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if not isinstance(value, str):
                raise ValueError(
                    f"{path}: row {row} column {text_field!r} must be a string, got {type(value).__name__}"
                )
            yield value
            row += 1


_READERS = {".txt": _texts_txt, ".jsonl": _texts_jsonl, ".tsv": _texts_tsv, ".parquet": _texts_parquet}


def _texts_iterable(items: Iterable[Any]) -> Iterator[str]:
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise ValueError(f"source item {i} must be a str, got {type(t).__name__}: {t!r:.60}")
        yield t


def _open_source(source: Any, text_field: str, errors: str) -> tuple[dict, Iterator[str]]:
    """Return (fingerprint, iterator over texts)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"source file not found: {path}")
        if not path.is_file():
            raise ValueError(f"source must be a file or an iterable of str, got directory {path}")
        suffix = path.suffix.lower()
        if suffix not in _READERS:
            raise ValueError(f"source must end with one of {sorted(_READERS)}, got {path.name!r}")
        sha = _check_utf8(path, errors) if suffix != ".parquet" else _sha256_file(path)
        fp = {"kind": suffix[1:], "name": path.name, "size": path.stat().st_size, "sha256": sha}
        if suffix in (".jsonl", ".tsv", ".parquet"):
            fp["text_field"] = text_field
        if suffix != ".parquet":
            fp["errors"] = errors
        return fp, _READERS[suffix](path, errors=errors, text_field=text_field)
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise ValueError(
            f"source must be a path (.txt/.jsonl/.tsv/.parquet) or an iterable of str, got {type(source).__name__}"
        )
    # an iterable cannot be fingerprinted up front: each shard's text sha256 identifies it instead
    return {"kind": "iterable"}, _texts_iterable(source)


def _plan_file_shards(
    source: str | os.PathLike, text_field: str, errors: str, shard_size: int
) -> tuple[dict, list[dict]]:
    """(fingerprint, shard specs) of a file source, for workers that each read only their own shard.

    One pass over the file (after the validating pass of :func:`_open_source`) records the byte offset
    and line number where every shard starts, so a worker seeks there and parses ``rows`` records with
    the same readers as the streaming path (:func:`_read_shard_texts`): shard ``k`` holds exactly the
    texts the single-process run puts into it. Specs are small picklable dicts.
    """
    fingerprint, _ = _open_source(source, text_field, errors)  # validation, sha256; the iterator is unused
    path = Path(source).expanduser().resolve()  # absolute: a worker's working directory may differ
    kind = fingerprint["kind"]
    common = {
        "path": str(path),
        "kind": kind,
        "errors": errors,
        "text_field": text_field,
        "size": path.stat().st_size,
    }
    specs: list[dict] = []
    if kind == "parquet":
        pf = _parquet_file(path, text_field)
        n = int(pf.metadata.num_rows)
        for k, start in enumerate(range(0, n, shard_size)):
            specs.append({**common, "k": k, "start": start, "rows": min(shard_size, n - start)})
        return fingerprint, specs
    if kind == "tsv":
        first = next(_iter_lines(path, errors), None)
        if first is None:
            return fingerprint, []
        header = first[1].split("\t")
        common["header"] = header
        common["col"] = header.index(text_field) if text_field in header else 0
    with open(path, "rb") as fh:
        pos = lineno = row = 0
        if kind == "tsv":
            pos, lineno = len(fh.readline()), 1
        for raw in fh:
            lineno += 1
            if row % shard_size == 0:
                specs.append(
                    {**common, "k": len(specs), "start": row, "rows": 0, "offset": pos, "lineno": lineno}
                )
            specs[-1]["rows"] += 1
            row += 1
            pos += len(raw)
    return fingerprint, specs


def _parquet_file(path: Path, text_field: str):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading .parquet needs pyarrow: `pip install pyarrow`") from exc
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no column text_field={text_field!r} (columns: {pf.schema_arrow.names})")
    return pf


def _read_shard_texts(spec: dict) -> list[str]:
    """The texts of one shard spec of :func:`_plan_file_shards` (or its inline ``texts``)."""
    if "texts" in spec:
        return list(spec["texts"])
    path, kind, rows = Path(spec["path"]), spec["kind"], int(spec["rows"])
    if not path.is_file() or path.stat().st_size != spec["size"]:
        raise ValueError(f"{path} is missing or changed size since the shards were planned; rerun")
    out: list[str] = []
    if kind == "parquet":
        pf = _parquet_file(path, spec["text_field"])
        start, stop, g0 = int(spec["start"]), int(spec["start"]) + rows, 0
        for g in range(pf.num_row_groups):
            g1 = g0 + pf.metadata.row_group(g).num_rows
            if g1 > start and g0 < stop:  # only the row groups that overlap the shard
                col = pf.read_row_group(g, columns=[spec["text_field"]]).column(0).to_pylist()
                for r in range(max(start, g0), min(stop, g1)):
                    value = col[r - g0]
                    if not isinstance(value, str):
                        raise ValueError(
                            f"{path}: row {r} column {spec['text_field']!r} must be a string, got {type(value).__name__}"
                        )
                    out.append(value)
            g0 = g1
    else:
        lines = _iter_lines(
            path, spec["errors"], offset=int(spec["offset"]), first_lineno=int(spec["lineno"])
        )
        for lineno, line in itertools.islice(lines, rows):
            if kind == "txt":
                out.append(line)
            elif kind == "jsonl":
                out.append(_jsonl_text(path, lineno, line, spec["text_field"]))
            else:
                out.append(_tsv_field(path, lineno, line, spec["header"], spec["col"]))
    if len(out) != rows:
        raise ValueError(f"{path}: shard {spec['k']} has {len(out)} rows, planned {rows}; the file changed")
    return out


def _take(it: Iterator[str], n: int) -> list[str]:
    out = []
    for t in it:
        out.append(t)
        if len(out) == n:
            break
    return out


def _texts_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))  # length prefix: ["ab", "c"] != ["a", "bc"]
        h.update(b)
    return h.hexdigest()


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
        if self.manifest.get("format") != _FORMAT:
            raise ValueError(
                f"{mpath}: not an xite_fast embedding manifest (format={self.manifest.get('format')!r})"
            )
        self.dim = int(self.manifest["dim"])
        self.model_id = self.manifest["model_id"]
        self.complete = bool(self.manifest.get("complete"))
        self._shards = self.manifest["shards"]

    def __len__(self) -> int:
        return sum(int(s["rows"]) for s in self._shards)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"EmbeddingStore({str(self.out_dir)!r}, rows={len(self)}, dim={self.dim}, shards={len(self._shards)}, {state})"

    @property
    def shard_paths(self) -> list[Path]:
        return [self.out_dir / s["file"] for s in self._shards]

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, (rows, D) float32 read-only memmap)`` per shard, in row order."""
        for s, path in zip(self._shards, self.shard_paths, strict=True):
            arr = np.load(path, mmap_mode="r")
            if arr.shape != (int(s["rows"]), self.dim) or arr.dtype != np.float32:
                raise ValueError(
                    f"{path}: expected ({s['rows']}, {self.dim}) float32 per the manifest, got {arr.shape} {arr.dtype}"
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
        tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
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
    source: str | os.PathLike | Iterable[str],
    out_dir: str | os.PathLike,
    encoder: Any = None,
    *,
    shard_size: int = 65536,
    batch_size: int = 64,
    text_field: str = "text",
    show_progress_bar: bool | None = None,
    overwrite: bool = False,
    errors: str = "strict",
) -> EmbeddingStore:
    """Embed a corpus into ``out_dir`` as fixed-size ``.npy`` shards; resumable.

    Args:
        source: ``.txt`` (one text per line; empty lines are empty texts, so row i is line i+1),
            ``.jsonl`` (field ``text_field``), ``.tsv`` (header row; column ``text_field``, else the
            first column), ``.parquet`` (column ``text_field``; needs pyarrow), or an iterable of str
            (must yield the same texts on a rerun; checked per shard).
        out_dir: output folder (created).
        encoder: an :class:`~xite_fast.encode.encoder.Encoder` (default: ``Encoder()``, ONNX e5-small).
        shard_size: rows per shard (fixed line ranges; part of the identity of the output).
        batch_size: texts per forward pass (within a shard).
        show_progress_bar: tqdm bar over rows; ``None`` shows it when stderr is a tty.
        overwrite: replace an existing output made from another source/model/parameters.
        errors: ``"strict"`` (non-UTF-8 line -> ValueError naming file and line) or ``"replace"``.

    Returns:
        The :class:`EmbeddingStore` of ``out_dir``.

    Raises:
        FileNotFoundError: missing source file.
        ValueError: empty source, non-UTF-8 line, bad JSON / missing field, or ``out_dir`` already holds
            the output of a different source, model or parameters (and ``overwrite`` is False).
    """
    shard_size, batch_size = _check_encode_args(shard_size, batch_size, text_field, errors)
    fingerprint, texts = _open_source(source, text_field, errors)  # validates before any model work
    first = _take(texts, 1)  # surfaces an empty source or a bad first record before anything is written
    if not first:
        raise ValueError(f"source {_describe(source)} has no texts; expected at least one line/row/item")
    texts = itertools.chain(first, texts)
    if encoder is None:
        from xite_fast.encode.encoder import Encoder

        encoder = Encoder()
    header = _make_header(encoder, shard_size, batch_size, fingerprint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _dir_lock(out_dir):
        manifest = _resume_or_reset(out_dir, header, overwrite)
        done = manifest["shards"]
        if manifest["complete"] and fingerprint["kind"] != "iterable":
            return EmbeddingStore(out_dir)  # same file sha256, model and parameters: nothing to do
        bar = None
        if show_progress_bar is None:
            show_progress_bar = _stderr_isatty()
        if show_progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(desc="encode_corpus", unit="text", initial=sum(s["rows"] for s in done))
        try:
            k = 0
            while True:
                chunk = _take(texts, shard_size)
                if not chunk:
                    break
                if k < len(done):  # finished in an earlier run: check it is the same data, skip it
                    _verify_done_shard(out_dir, done[k], chunk)
                    k += 1
                    continue
                # a shard finished by a killed distributed run but not yet in the manifest is kept
                entry = _adopt_pending(out_dir, k, shard_size, chunk)
                if entry is None:
                    entry = _encode_shard(encoder, chunk, out_dir, k, shard_size, batch_size)
                done.append(entry)
                manifest["num_rows"] = sum(s["rows"] for s in done)
                _write_manifest(out_dir, manifest)  # the shard counts as done only from here on
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
                f"pass overwrite=True to start over"
            )
        _finish(out_dir, manifest)
    return EmbeddingStore(out_dir)


# ------------------------------------------------- pieces shared with xite_fast.encode.ray.encode_corpus_ray


def _check_encode_args(shard_size: Any, batch_size: Any, text_field: Any, errors: Any) -> tuple[int, int]:
    shard_size = check_positive_int("shard_size", shard_size)
    batch_size = check_positive_int("batch_size", batch_size)
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"text_field must be a non-empty str, got {text_field!r}")
    return shard_size, batch_size


def _make_header(encoder: Any, shard_size: int, batch_size: int, fingerprint: dict) -> dict:
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


def _pending_path(out_dir: Path, k: int) -> Path:
    return out_dir / f".pending-{_shard_name(k)[:-4]}.json"


def _encode_shard(
    encoder: Any,
    texts: list[str],
    out_dir: Path,
    k: int,
    shard_size: int,
    batch_size: int,
    *,
    pending: bool = False,
) -> dict:
    """Encode shard ``k`` (``texts`` = source rows ``[k * shard_size, ...)``), write ``shard_k.npy``
    atomically and return its manifest entry.

    Args:
        encoder: object with ``encode(texts, batch_size=, show_progress_bar=, normalize=)`` and ``dim``.
        texts: the shard's texts (1 <= len <= shard_size).
        pending: also write the entry to a hidden ``.pending-shard_k.json`` next to the shard (for a
            writer that finishes shards out of order: a rerun adopts them, see :func:`_adopt_pending`).

    Returns:
        ``{"file", "start", "rows", "sha256", "text_sha256"}``.
    """
    dim = int(encoder.dim)
    emb = encoder.encode(texts, batch_size=batch_size, show_progress_bar=False, normalize=True)
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape != (len(texts), dim):
        raise ValueError(f"encoder returned shape {emb.shape}, expected ({len(texts)}, {dim})")
    data = _npy_bytes(emb)
    name = _shard_name(k)
    _atomic_write_bytes(out_dir / name, data)
    entry = {
        "file": name,
        "start": k * shard_size,
        "rows": len(texts),
        "sha256": hashlib.sha256(data).hexdigest(),
        "text_sha256": _texts_sha256(texts),
    }
    if pending:
        _atomic_write_bytes(_pending_path(out_dir, k), json.dumps(entry, sort_keys=True).encode())
    return entry


def _adopt_pending(out_dir: Path, k: int, shard_size: int, texts: list[str]) -> dict | None:
    """The entry of shard ``k`` if an interrupted run already wrote it (pending file, same texts, shard
    bytes matching its sha256), else None. Pending files only exist for the current header: a reset
    (:func:`_resume_or_reset`) deletes them."""
    path = _pending_path(out_dir, k)
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
    if not shard.is_file() or _sha256_file(shard) != entry.get("sha256"):
        return None
    return entry


def _finish(out_dir: Path, manifest: dict) -> None:
    """Mark the run complete; pending files of shards now in the manifest are no longer needed."""
    manifest["complete"] = True
    manifest["num_rows"] = sum(s["rows"] for s in manifest["shards"])
    _write_manifest(out_dir, manifest)
    for p in out_dir.glob(".pending-shard_*.json"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    return f"<{type(source).__name__}>"


def _stderr_isatty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _verify_done_shard(out_dir: Path, shard: dict, chunk: list[str]) -> None:
    if len(chunk) != shard["rows"] or _texts_sha256(chunk) != shard["text_sha256"]:
        raise ValueError(
            f"{out_dir}: the texts of {shard['file']} (rows {shard['start']}..) differ from the source; "
            f"out_dir holds the output of another source: use a new out_dir or overwrite=True"
        )
    path = out_dir / shard["file"]
    if not path.is_file() or _sha256_file(path) != shard["sha256"]:
        raise ValueError(
            f"{path} is missing or corrupted (sha256 differs from the manifest); pass overwrite=True to re-encode"
        )


def _resume_or_reset(out_dir: Path, header: dict, overwrite: bool) -> dict:
    mpath = out_dir / MANIFEST
    if mpath.is_file() and not overwrite:
        try:
            old = json.loads(mpath.read_text())
        except ValueError:
            raise ValueError(f"{mpath}: unreadable manifest; pass overwrite=True to start over") from None
        diffs = [k for k in header if old.get(k) != header[k]]
        if diffs and not old.get("shards") and not old.get("complete"):
            diffs = []  # an earlier run failed before its first shard: nothing to protect
            old = None
        if diffs:
            detail = "; ".join(f"{k}: existing {old.get(k)!r} vs now {header[k]!r}" for k in diffs)
            raise ValueError(
                f"{out_dir} already holds embeddings of a different run ({detail}); use a new out_dir or "
                f"pass overwrite=True"
            )
        if old is not None:
            return old
    if not mpath.is_file() and not overwrite:
        stray = [p.name for p in out_dir.iterdir() if _SHARD_RE.match(p.name) or p.name == CONSOLIDATED]
        if stray:
            raise ValueError(
                f"{out_dir} holds shard files but no {MANIFEST} ({stray[:3]}...); pass overwrite=True or use a new out_dir"
            )
    # start over: remove only files this module writes
    for p in out_dir.iterdir():
        if (
            _SHARD_RE.match(p.name)
            or p.name in (CONSOLIDATED, MANIFEST)
            or p.name.startswith((".tmp-", ".pending-"))
        ):
            p.unlink()
    manifest = {**header, "shards": [], "complete": False, "num_rows": 0}
    _write_manifest(out_dir, manifest)
    return manifest
