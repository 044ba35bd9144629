"""THE record reader: one streaming parser of corpus files for ``encode``, ``augment`` and Python alike.

Formats (by suffix): ``.txt`` (one text per line), ``.jsonl`` / ``.ndjson`` (one JSON object per line,
fields ``text_field`` / ``label_field`` / ``pair_field``), ``.tsv`` / ``.csv`` (columns; the first line
is a header when one of its cells is ``text_field``, else the columns are text, label, text pair),
``.parquet`` (columns by name; needs pyarrow).

One rule for every caller, so row ``i`` is the same record everywhere (the encode store's row ``i``,
the augment index's row ``i``, the synthetic provenance's ``target_id``):

* a record is a line (a CSV record may span quoted newlines; a parquet row is a record);
* texts are stripped; blank lines and records with a blank text are skipped; a header line is skipped;
* labels keep their type (JSON ``1`` and ``"1"`` are different labels): a corpus whose labels mix
  types, or has a list/dict label, is a ValueError naming the line; a TSV/CSV label is a str;
* every error names the file and line.

:func:`index_corpus` makes the single pass over a file: byte offsets of the records (8 bytes per row),
label codes and the sha256 of the file's bytes, streamed together; :class:`RecordReader` reads any rows
back through the offsets. Nothing but the current record is held in memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "FORMATS",
    "Record",
    "CorpusIndex",
    "corpus_format",
    "iter_records",
    "iter_table_records",
    "index_corpus",
    "RecordReader",
    "read_labelled",
    "read_texts",
    "encode_labels",
    "model_input",
]

_SUFFIXES = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".tsv": "tsv",
    ".csv": "csv",
    ".parquet": "parquet",
}
FORMATS = ("txt", "jsonl", "tsv", "csv", "parquet")
_LABEL_TYPES = (str, int, float, bool)
_CHUNK = 1 << 22


class Record(NamedTuple):
    """One corpus record: its text, label (``None`` when absent) and text pair (``None`` when absent)."""

    text: str
    label: Any = None
    pair: str | None = None


def model_input(rec: Record) -> str | tuple[str, str]:
    """What the encoder gets for a record: the text, or ``(text, pair)`` for a sentence pair."""
    return rec.text if rec.pair is None else (rec.text, rec.pair)


# --------------------------------------------------------------------------------------------- helpers
def corpus_format(path: str | os.PathLike) -> str:
    """``"txt"``, ``"jsonl"``, ``"tsv"``, ``"csv"`` or ``"parquet"`` from the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"unsupported corpus file {str(path)!r}: expected one of {sorted(_SUFFIXES)}, got suffix {suffix!r}"
        )
    return _SUFFIXES[suffix]


def _check_file(path: str | os.PathLike, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{name}: file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{name} must be a file, got a directory or special file: {str(p)!r}")
    return p


def _check_label(label: Any, where: str, seen: list) -> Any:
    """The label (type kept), None when absent; ValueError on unhashable or mixed label types."""
    if label is None:
        return None
    if isinstance(label, np.generic):  # numpy scalars (np.int64, np.str_) -> their Python type
        label = label.item()
    if isinstance(label, str):
        label = label.strip()
        if not label:
            return None
    if type(label) not in _LABEL_TYPES:
        raise ValueError(
            f"{where}: label must be a str, int, float or bool, got {type(label).__name__} {label!r:.60}"
        )
    if not seen:
        seen.append(type(label))
    elif type(label) is not seen[0]:
        raise ValueError(
            f"{where}: label {label!r} is a {type(label).__name__} but earlier labels are "
            f"{seen[0].__name__}; labels keep their type (1 and '1' differ), so use one type per corpus"
        )
    return label


def _decode(raw: bytes, where: str, errors: str) -> str:
    if b"\x00" in raw:
        raise ValueError(f"{where}: NUL byte: this is not a text file (binary data?)")
    try:
        return raw.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{where}: not valid UTF-8 ({exc.reason}); fix the file or pass errors='replace'"
        ) from None


@dataclass
class _Layout:
    """Where the fields of a record are (filled from a TSV/CSV header or the JSON field names)."""

    fmt: str
    text_field: str
    label_field: str
    pair_field: str | None
    text_col: int = 0
    label_col: int | None = 1
    pair_col: int | None = 2
    header: bool = False


def _read_header(layout: _Layout, cells: list[str]) -> bool:
    names = [c.strip().lower() for c in cells]  # header names are matched case-insensitively
    if layout.text_field.lower() not in names:
        if layout.pair_field is None:
            layout.pair_col = None
        return False
    layout.header = True
    layout.text_col = names.index(layout.text_field.lower())
    lf = layout.label_field.lower()
    layout.label_col = names.index(lf) if lf in names else None
    layout.pair_col = None
    if layout.pair_field is not None:
        if layout.pair_field.lower() not in names:
            raise ValueError(f"no column pair_field={layout.pair_field!r} in the header {names}")
        layout.pair_col = names.index(layout.pair_field.lower())
    return True


def _parse(line_or_cells: Any, layout: _Layout, where: str, need_label: bool, seen: list) -> Record | None:
    """One record from a decoded line (txt/jsonl) or cells (tsv/csv); None for a blank record."""
    fmt = layout.fmt
    pair = None
    if fmt == "txt":
        text, label = line_or_cells.strip(), None
    elif fmt == "jsonl":
        if not line_or_cells.strip():
            return None
        try:
            obj = json.loads(line_or_cells)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: broken JSON line ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if layout.text_field not in obj:
            raise ValueError(f"{where}: field {layout.text_field!r} missing (keys: {sorted(obj)})")
        text = obj[layout.text_field]
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError(
                f"{where}: field {layout.text_field!r} must be a string, got {type(text).__name__}"
            )
        text = text.strip()
        label = _check_label(obj.get(layout.label_field), where, seen)
        if layout.pair_field is not None:
            pair = obj.get(layout.pair_field)
            if not isinstance(pair, str):
                raise ValueError(
                    f"{where}: field pair_field={layout.pair_field!r} must be a string, got {type(pair).__name__}"
                )
            pair = pair.strip()
    else:  # tsv / csv cells
        cells = line_or_cells
        if not any(c.strip() for c in cells):
            return None
        if layout.text_col >= len(cells):
            raise ValueError(f"{where}: {len(cells)} columns, the text column {layout.text_col} is missing")
        text = cells[layout.text_col].strip()
        lc = layout.label_col
        label = _check_label(cells[lc] if lc is not None and lc < len(cells) else None, where, seen)
        if layout.pair_col is not None:
            if layout.pair_col >= len(cells):
                raise ValueError(f"{where}: {len(cells)} columns, the pair column {layout.pair_col} is missing")
            pair = cells[layout.pair_col].strip()
    if not text:
        return None
    if need_label and label is None:
        raise ValueError(f"{where}: labels missing: field/column {layout.label_field!r} absent or empty")
    return Record(text, label, pair)


class _LineSource:
    """Binary lines of a file with their byte offsets; optionally hashes every byte it reads."""

    def __init__(self, fh, offset: int, hasher=None):
        self.fh, self.pos, self.hasher = fh, offset, hasher

    def next_line(self) -> bytes:
        raw = self.fh.readline()
        if self.hasher is not None and raw:
            self.hasher.update(raw)
        self.pos += len(raw)
        return raw


def _cells(fmt: str, line: str, more_lines) -> list[str]:
    """TSV: split on tabs (no quoting). CSV: the csv module; a quoted field may continue on the next
    lines, pulled from ``more_lines`` (None at end of file)."""
    if fmt == "tsv":
        return line.rstrip("\r\n").split("\t")
    text = line
    while text.count('"') % 2 == 1:  # an open quote: the record continues on the next line
        extra = more_lines()
        if extra is None:
            raise ValueError("unterminated quoted CSV field at end of file")
        text += extra
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise ValueError(f"malformed CSV record ({exc})") from None
    return rows[0] if rows else []


def _iter_line_records(
    p: Path, fmt: str, layout: _Layout, *, need_label: bool, errors: str, hasher, seen: list,
    offset: int = 0, first_lineno: int = 1,
) -> Iterator[tuple[int, Record]]:  # fmt: skip
    with open(p, "rb") as fh:
        fh.seek(offset)
        src = _LineSource(fh, offset, hasher)
        lineno = first_lineno - 1
        header_checked = offset != 0 or fmt in ("txt", "jsonl")
        while True:
            start = src.pos
            raw = src.next_line()
            if not raw:
                return
            lineno += 1
            where = f"{p}:{lineno}"
            line = _decode(raw, where, errors)
            if fmt in ("tsv", "csv"):
                n0 = lineno

                def more() -> str | None:
                    nonlocal lineno
                    nxt = src.next_line()
                    if not nxt:
                        return None
                    lineno += 1
                    return _decode(nxt, f"{p}:{lineno}", errors)

                try:
                    cells = _cells(fmt, line, more)
                except ValueError as exc:
                    raise ValueError(f"{p}:{n0}: {exc}") from None
                if not header_checked:
                    header_checked = True
                    try:
                        if _read_header(layout, cells):
                            continue
                    except ValueError as exc:
                        raise ValueError(f"{p}:1: {exc}") from None
                rec = _parse(cells, layout, f"{p}:{n0}", need_label, seen)
            else:
                rec = _parse(line.rstrip("\r\n"), layout, where, need_label, seen)
            if rec is not None:
                yield start, rec


def _parquet(p: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading .parquet needs pyarrow: `pip install pyarrow`") from exc
    return pq.ParquetFile(p)


def _parquet_columns(pf, p: Path, layout: _Layout, need_label: bool) -> list[str]:
    names = pf.schema_arrow.names
    if layout.text_field not in names:
        raise ValueError(f"{p}: no column text_field={layout.text_field!r} (columns: {names})")
    cols = [layout.text_field]
    if layout.label_field in names:
        cols.append(layout.label_field)
    elif need_label:
        raise ValueError(f"{p}: labels missing: no column {layout.label_field!r} (columns: {names})")
    if layout.pair_field is not None:
        if layout.pair_field not in names:
            raise ValueError(f"{p}: no column pair_field={layout.pair_field!r} (columns: {names})")
        cols.append(layout.pair_field)
    return cols


def _parquet_record(row: dict, layout: _Layout, where: str, need_label: bool, seen: list) -> Record | None:
    text = row[layout.text_field]
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{where}: column {layout.text_field!r} must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        return None
    label = _check_label(row.get(layout.label_field), where, seen)
    if need_label and label is None:
        raise ValueError(f"{where}: labels missing: column {layout.label_field!r} empty")
    pair = row.get(layout.pair_field) if layout.pair_field is not None else None
    if layout.pair_field is not None and not isinstance(pair, str):
        raise ValueError(f"{where}: column {layout.pair_field!r} must be a string, got {type(pair).__name__}")
    return Record(text, label, None if pair is None else pair.strip())


def _iter_parquet(p: Path, layout: _Layout, need_label: bool, seen: list) -> Iterator[tuple[int, Record]]:
    pf = _parquet(p)
    cols = _parquet_columns(pf, p, layout, need_label)
    row = 0
    for batch in pf.iter_batches(batch_size=8192, columns=cols):
        for rec in batch.to_pylist():
            r = _parquet_record(rec, layout, f"{p}: row {row}", need_label, seen)
            if r is not None:
                yield row, r
            row += 1


def iter_records(
    path: str | os.PathLike,
    *,
    need_label: bool = False,
    text_field: str = "text",
    label_field: str = "label",
    pair_field: str | None = None,
    max_rows: int | None = None,
    name: str = "corpus",
    errors: str = "strict",
    hasher=None,
) -> Iterator[tuple[int, Record]]:
    """Stream ``(locator, Record)`` of a corpus file (locator: byte offset, or row for parquet).

    Args:
        path: the file (format by suffix, see the module docstring).
        need_label: require a label on every record (ValueError naming the line otherwise).
        text_field, label_field, pair_field: field / column names (``pair_field=None``: no text pair).
        max_rows: stop after this many records (a ``hasher`` still sees the whole file).
        name: argument name used in error messages.
        errors: ``"strict"`` (a non-UTF-8 line is a ValueError naming file and line) or ``"replace"``.
        hasher: internal (:func:`index_corpus`): updated with every byte of the file (not parquet).
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    for arg, v in (("text_field", text_field), ("label_field", label_field)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{arg} must be a non-empty str, got {v!r}")
    if pair_field is not None and (not isinstance(pair_field, str) or not pair_field):
        raise ValueError(f"pair_field must be None or a non-empty str, got {pair_field!r}")
    p = _check_file(path, name)
    fmt = corpus_format(p)
    if need_label and fmt == "txt":
        raise ValueError(
            f"{name}: labels missing: a labelled corpus must be .jsonl/.tsv/.csv/.parquet, got {str(p)!r}"
        )
    layout = _Layout(fmt, text_field, label_field, pair_field)
    if fmt in ("tsv", "csv") and pair_field is None:
        layout.pair_col = None
    seen: list = []
    if fmt == "parquet":
        it = _iter_parquet(p, layout, need_label, seen)
    else:
        it = _iter_line_records(p, fmt, layout, need_label=need_label, errors=errors, hasher=hasher, seen=seen)
    n = 0
    for loc, rec in it:
        if max_rows is not None and n >= max_rows:
            break
        yield loc, rec
        n += 1
    if hasher is not None and fmt != "parquet" and max_rows is not None and n >= max_rows:
        # the fingerprint covers the whole file, also the rows past max_rows
        it.close()
        with open(p, "rb") as fh:
            fh.seek(hasher.n_bytes)
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                hasher.update(chunk)


def iter_table_records(
    table: Any,
    *,
    need_label: bool = False,
    text_field: str = "text",
    label_field: str = "label",
    pair_field: str | None = None,
    name: str = "table",
) -> Iterator[tuple[int, Record]]:
    """Stream ``(row, Record)`` of an in-memory table with the file reader's rules.

    The adapter for a ``pandas.DataFrame``, a Hugging Face ``datasets.Dataset`` or a dict of equal-length
    columns: the same column names, stripping, blank-row skipping and label-type checks as a ``.parquet``
    file (it shares :func:`_parquet_record`), so ``df.to_parquet(p)`` + :func:`iter_records` gives the same
    records. ``row`` is the table's positional row number.
    """
    if hasattr(table, "to_dict") and hasattr(table, "columns") and hasattr(table, "iloc"):  # pandas
        columns = [str(c) for c in table.columns]
        n = len(table)
        # pandas spells a missing cell NaN / pd.NA; the reader's rule is "missing = None"
        col = {str(c): table[c].astype(object).where(table[c].notna(), None).tolist() for c in table.columns}
    elif hasattr(table, "column_names") and hasattr(table, "num_rows"):  # datasets.Dataset
        columns, n = list(table.column_names), table.num_rows
        col = {c: table[c] for c in columns}
    elif isinstance(table, dict):
        columns = [str(c) for c in table]
        lens = {len(v) for v in table.values()}
        if len(lens) > 1:
            raise ValueError(f"{name}: columns must have equal lengths, got {sorted(lens)}")
        n, col = (lens.pop() if lens else 0), {str(k): list(v) for k, v in table.items()}
    else:
        raise ValueError(
            f"{name} must be a pandas.DataFrame, a datasets.Dataset or a dict of columns, got {type(table).__name__}"
        )
    layout = _Layout("parquet", text_field, label_field, pair_field)
    if text_field not in columns:
        raise ValueError(f"{name}: no column text_field={text_field!r} (columns: {columns})")
    if need_label and label_field not in columns:
        raise ValueError(f"{name}: labels missing: no column {label_field!r} (columns: {columns})")
    if pair_field is not None and pair_field not in columns:
        raise ValueError(f"{name}: no column pair_field={pair_field!r} (columns: {columns})")
    keep = [c for c in (text_field, label_field, pair_field) if c is not None and c in columns]
    seen: list = []
    for i in range(n):
        r = _parquet_record({c: col[c][i] for c in keep}, layout, f"{name}: row {i}", need_label, seen)
        if r is not None:
            yield i, r


class _CountingHasher:
    """sha256 that also counts the bytes it saw (to finish hashing a file after ``max_rows``)."""

    def __init__(self):
        self.h, self.n_bytes = hashlib.sha256(), 0

    def update(self, b: bytes) -> None:
        self.h.update(b)
        self.n_bytes += len(b)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


# --------------------------------------------------------------------------------------------- index
def encode_labels(labels: Iterable[Any], *, name: str = "labels") -> tuple[list, np.ndarray]:
    """Labels -> (sorted distinct labels, (N,) int64 codes); types kept, mixed/unhashable types rejected."""
    seen: list = []
    vocab: dict = {}
    codes = []
    for i, lab in enumerate(labels):
        if lab is None:
            raise ValueError(f"{name}[{i}] is None; every row needs a label")
        lab = _check_label(lab, f"{name}[{i}]", seen)
        if lab is None:
            raise ValueError(f"{name}[{i}] is an empty label")
        codes.append(vocab.setdefault(lab, len(vocab)))
    names = sorted(vocab)
    rank = np.asarray([names.index(n) for n in vocab], dtype=np.int64) if vocab else np.zeros(0, np.int64)
    return names, rank[np.asarray(codes, dtype=np.int64)] if codes else np.zeros(0, np.int64)


@dataclass
class CorpusIndex:
    """The single pass over a corpus file: what every later stage needs, without the texts.

    Attributes:
        path: the file. ``fmt``: its format. ``offsets``: (N,) int64 locator of every record (byte
        offset; row for parquet). ``sha256``: of the file's bytes. ``size``: bytes. ``label_names``:
        sorted distinct labels (types kept) or ``[]``. ``codes``: (N,) int32 label code per row, -1
        where the record has no label. ``text_field`` / ``label_field`` / ``pair_field`` / ``errors``:
        as read.
    """

    path: Path
    fmt: str
    offsets: np.ndarray
    sha256: str
    size: int
    label_names: list = field(default_factory=list)
    codes: np.ndarray | None = None
    text_field: str = "text"
    label_field: str = "label"
    pair_field: str | None = None
    errors: str = "strict"

    def __len__(self) -> int:
        return int(len(self.offsets))

    @property
    def has_labels(self) -> bool:
        """Every row has a label (a target with labels is used as gold)."""
        return self.codes is not None and len(self.codes) > 0 and bool((self.codes >= 0).all())

    def fingerprint(self) -> dict:
        """What identifies the rows by content (the encode store's and the run's input identity)."""
        fp = {"kind": self.fmt, "sha256": self.sha256, "size": self.size, "rows": len(self)}
        fp.update(text_field=self.text_field, pair_field=self.pair_field, errors=self.errors)
        return fp

    def reader(self) -> RecordReader:
        return RecordReader(
            self.path, self.offsets, text_field=self.text_field, label_field=self.label_field,
            pair_field=self.pair_field, errors=self.errors,
        )  # fmt: skip


def index_corpus(
    path: str | os.PathLike,
    *,
    need_label: bool = False,
    text_field: str = "text",
    label_field: str = "label",
    pair_field: str | None = None,
    max_rows: int | None = None,
    name: str = "corpus",
    errors: str = "strict",
) -> CorpusIndex:
    """One streaming pass over a corpus file: offsets, label codes and sha256 (see :class:`CorpusIndex`).

    Raises:
        ValueError: empty corpus (no non-blank record), or anything :func:`iter_records` rejects.
    """
    p = _check_file(path, name)
    fmt = corpus_format(p)
    hasher = _CountingHasher() if fmt != "parquet" else None
    offsets = array("q")
    codes = array("i")
    vocab: dict = {}
    for loc, rec in iter_records(
        p, need_label=need_label, text_field=text_field, label_field=label_field,
        pair_field=pair_field, max_rows=max_rows, name=name, errors=errors, hasher=hasher,
    ):  # fmt: skip
        offsets.append(loc)
        codes.append(-1 if rec.label is None else vocab.setdefault(rec.label, len(vocab)))
    if not offsets:
        raise ValueError(f"{name}: empty corpus (no non-blank records) in {str(p)!r}")
    from xite_fast._io import sha256_file

    sha = hasher.hexdigest() if hasher is not None else sha256_file(p)
    names = sorted(vocab)
    raw = np.frombuffer(codes, dtype=np.int32)
    if names:
        # codes in sorted-label order, so a label's code does not depend on the file's row order
        rank = np.asarray([names.index(n) for n in vocab] + [-1], dtype=np.int32)
        code_arr = rank[raw]  # -1 indexes the appended -1
    else:
        code_arr = raw.copy()
    return CorpusIndex(
        path=p, fmt=fmt, offsets=np.frombuffer(offsets, dtype=np.int64).copy(), sha256=sha,
        size=p.stat().st_size, label_names=names, codes=code_arr, text_field=text_field,
        label_field=label_field, pair_field=pair_field, errors=errors,
    )  # fmt: skip


class RecordReader:
    """Random access to the records of a corpus file through its locators (:func:`index_corpus`).

    Args:
        path: the indexed file. offsets: (N,) int64 locators, as :func:`iter_records` yields them.
    """

    def __init__(
        self, path: str | os.PathLike, offsets, *, text_field: str = "text", label_field: str = "label",
        pair_field: str | None = None, errors: str = "strict",
    ):  # fmt: skip
        self.path = Path(path)
        self.fmt = corpus_format(self.path)
        self.offsets = offsets
        self.layout = _Layout(self.fmt, text_field, label_field, pair_field)
        self.errors = errors
        self._fh = None
        self._pq = None
        if self.fmt in ("tsv", "csv"):
            # the header (if any) decides the columns: parse it the way iter_records did
            with open(self.path, "rb") as fh:
                first = fh.readline()
            if first:
                line = _decode(first, f"{self.path}:1", errors)
                try:
                    _read_header(self.layout, _cells(self.fmt, line, lambda: None))
                except ValueError:
                    pass  # a multi-line first CSV record is not a header
            if pair_field is None:
                self.layout.pair_col = None

    def __len__(self) -> int:
        return len(self.offsets)

    def _one(self, r: int, off: int) -> Record | None:
        if self.fmt == "parquet":
            if self._pq is None:
                pf = _parquet(self.path)
                cols = _parquet_columns(pf, self.path, self.layout, False)
                self._pq = pf.read(columns=cols).to_pylist()  # random access: the needed columns
            return _parquet_record(self._pq[off], self.layout, f"{self.path}: row {off}", False, [])
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()/__del__
        self._fh.seek(off)
        src = _LineSource(self._fh, off)
        where = f"{self.path} (row {r})"
        line = _decode(src.next_line(), where, self.errors)
        if self.fmt in ("tsv", "csv"):

            def more() -> str | None:
                nxt = src.next_line()
                return _decode(nxt, where, self.errors) if nxt else None

            return _parse(_cells(self.fmt, line, more), self.layout, where, False, [])
        return _parse(line.rstrip("\r\n"), self.layout, where, False, [])

    def get(self, rows) -> list[Record]:
        """The :class:`Record` of each row index in ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        offs = np.asarray(self.offsets)[rows] if len(rows) else []
        out = []
        for r, off in zip(rows.tolist(), offs, strict=True):
            rec = self._one(r, int(off))
            if rec is None:
                raise ValueError(f"{self.path}: row {r} is blank; the file changed since it was indexed")
            out.append(rec)
        return out

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        self._pq = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------- in memory
def read_labelled(
    path: str | os.PathLike,
    *,
    text_field: str = "text",
    label_field: str = "label",
    max_rows: int | None = None,
) -> tuple[list[str], list]:
    """Load a labelled corpus into memory: (texts, labels). For files of any size use :func:`index_corpus`."""
    texts, labels = [], []
    for _, rec in iter_records(
        path, need_label=True, text_field=text_field, label_field=label_field, max_rows=max_rows, name="source"
    ):
        texts.append(rec.text)
        labels.append(rec.label)
    if not texts:
        raise ValueError(f"source: empty corpus (no non-blank records) in {str(path)!r}")
    return texts, labels


def read_texts(path: str | os.PathLike, *, text_field: str = "text", max_rows: int | None = None) -> list[str]:
    """Load the texts of a corpus file (labels ignored)."""
    texts = [r.text for _, r in iter_records(path, text_field=text_field, max_rows=max_rows, name="target")]
    if not texts:
        raise ValueError(f"target: empty corpus (no non-blank records) in {str(path)!r}")
    return texts
