"""THE record reader: one streaming parser of corpus files for ``encode``, ``augment`` and Python alike.

Formats (by suffix): ``.txt`` (one text per line), ``.jsonl`` / ``.ndjson`` (one JSON object per line,
fields ``text_field`` / ``label_field`` / ``pair_field``), ``.tsv`` / ``.csv`` (columns), ``.parquet``
(columns by name; needs pyarrow).

TSV / CSV are read as ``csv`` and pandas read them (RFC 4180, the reference the tests compare against):
a ``"`` opens a quoted field only at the start of a field (elsewhere it is a literal character), a
quoted field may hold the delimiter, line breaks and doubled quotes ``""``; TSV is the same with a tab.
Whether the file has a header is said, never guessed from the data: ``header=True`` (the default, as in
pandas and ``datasets``): the first non-blank record names the columns and ``text_field`` /
``label_field`` / ``pair_field`` pick them (case-insensitive); ``header=False``: the columns are text,
label, text pair by position. A record with more fields than the header (or, without a header, than
the first record) is an error: an unquoted delimiter would shift the columns.

One rule for every caller, so row ``i`` is the same record everywhere (the encode store's row ``i``,
the augment index's row ``i``, the synthetic provenance's ``target_id``):

* a record is a line (a CSV/TSV record may span quoted line breaks; a parquet row is a record); lines
  end at ``\n``, ``\r\n`` or a lone ``\r`` (as ``open()`` reads text), ``.jsonl`` lines at ``\n`` only
  (JSON Lines); a UTF-8 byte order mark before the first line is not part of it;
* texts are stripped; blank lines and records with a blank text are skipped; a header is not a record;
* labels keep their type (JSON ``1`` and ``"1"`` are different labels): a corpus whose labels mix
  types, or has a list/dict label, is a ValueError naming the line; a TSV/CSV label is a str;
* every error names the file and line.

:func:`index_corpus` makes the single pass over a file: byte offsets of the records (8 bytes per row),
label codes and the sha256 of the file's bytes, streamed together; :class:`RecordReader` reads any rows
back through the offsets with the same parser. Nothing but the current record is held in memory.
"""

from __future__ import annotations

import csv
import hashlib
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
    "as_texts",
    "table_kind",
    "table_jsonl",
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
_READ_CHUNK = 1 << 13  # RecordReader: one record per seek
_BOM = b"\xef\xbb\xbf"
_DELIMITER = {"tsv": "\t", "csv": ","}
# csv refuses fields over 131072 characters by default, pandas has no limit: raised (never lowered, the
# setting is process-wide) so that a long document reads as pandas reads it, and still bounded, so that
# an unclosed quote does not pull a whole large file into one field
_FIELD_LIMIT = 1 << 24


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
            f"unsupported corpus file {str(path)!r}: expected one of {sorted(_SUFFIXES)}, got suffix "
            f"{suffix!r}"
        )
    return _SUFFIXES[suffix]


def _check_file(path: str | os.PathLike, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{name}: file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{name} must be a file, got a directory or special file: {str(p)!r}")
    return p


def _check_header(header: Any) -> None:
    if not isinstance(header, bool):
        raise ValueError(
            f"header must be True (the first line of a TSV/CSV file names the columns) or False (columns "
            f"text, label, text pair by position), got {header!r}"
        )


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
    """Where the fields of a record are (TSV/CSV: from the header, or by position without one)."""

    fmt: str
    text_field: str
    label_field: str
    pair_field: str | None
    header: bool = True
    text_col: int = 0
    label_col: int | None = 1
    pair_col: int | None = None
    width: int | None = (
        None  # TSV/CSV: fields per record (the header's, or the first record's); None: not read yet
    )


def _column(names: list[str], field_name: str, what: str, where: str) -> int | None:
    """Index of ``field_name`` in the header (exact, else case-insensitive), None when absent."""
    for key in (lambda c: c.strip(), lambda c: c.strip().lower()):
        want = key(field_name)
        hits = [i for i, c in enumerate(names) if key(c) == want]
        if len(hits) > 1:
            raise ValueError(
                f"{where}: {what}={field_name!r} names {len(hits)} columns of the header {names} "
                f"(columns {hits}); rename them so that one column has the name"
            )
        if hits:
            return hits[0]
    return None


def _set_columns(layout: _Layout, cells: list[str], where: str, need_label: bool) -> None:
    """Fill ``layout`` from the header ``cells`` (header=True) or the first record ``cells``
    (header=False)."""
    layout.width = len(cells)
    if not layout.header:
        layout.text_col, layout.label_col = 0, 1
        layout.pair_col = 2 if layout.pair_field is not None else None
        return
    hint = (
        "; if the file has no header line, pass header=False (CLI: --no-header): columns text, label, "
        "text pair"
    )
    text_col = _column(cells, layout.text_field, "text_field", where)
    if text_col is None:
        raise ValueError(f"{where}: no column text_field={layout.text_field!r} in the header {cells}{hint}")
    layout.text_col = text_col
    layout.label_col = _column(cells, layout.label_field, "label_field", where)
    if need_label and layout.label_col is None:
        raise ValueError(
            f"{where}: labels missing: no column label_field={layout.label_field!r} in the header {cells}"
        )
    layout.pair_col = None
    if layout.pair_field is not None:
        layout.pair_col = _column(cells, layout.pair_field, "pair_field", where)
        if layout.pair_col is None:
            raise ValueError(f"{where}: no column pair_field={layout.pair_field!r} in the header {cells}")


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
                    f"{where}: field pair_field={layout.pair_field!r} must be a string, got "
                    f"{type(pair).__name__}"
                )
            pair = pair.strip()
    else:  # tsv / csv cells; a record shorter than the header has empty trailing fields (as pandas reads it)
        cells = line_or_cells
        if _blank(cells):
            return None
        if len(cells) > layout.width:
            raise ValueError(
                f"{where}: {len(cells)} fields, expected at most {layout.width} (as many as the "
                f"{'header' if layout.header else 'first record'}); a field holding "
                f'{_DELIMITER[fmt]!r} must be quoted whole: "..."'
            )
        if layout.text_col >= len(cells):
            raise ValueError(f"{where}: {len(cells)} fields, the text column {layout.text_col} is missing")
        text = cells[layout.text_col].strip()
        lc = layout.label_col
        label = _check_label(cells[lc] if lc is not None and lc < len(cells) else None, where, seen)
        if layout.pair_col is not None:
            if layout.pair_col >= len(cells):
                raise ValueError(
                    f"{where}: {len(cells)} fields, the pair column {layout.pair_col} is missing"
                )
            pair = cells[layout.pair_col].strip()
    if not text:
        return None
    if need_label and label is None:
        raise ValueError(f"{where}: labels missing: field/column {layout.label_field!r} absent or empty")
    return Record(text, label, pair)


def _blank(cells: list[str]) -> bool:
    return not any(c.strip() for c in cells)


class _Lines:
    """Binary lines of a file from ``offset``, with the byte offset after the last one (``pos``).

    Lines end at ``\n``, ``\r\n`` or (``cr=True``) a lone ``\r``, as ``open(newline="")`` splits text;
    the terminator stays on the line. A UTF-8 byte order mark at offset 0 is skipped; ``hasher``
    (optional) sees every byte read, in order.
    """

    def __init__(self, fh, offset: int, cr: bool, *, hasher=None, chunk: int = _CHUNK):
        self.fh, self.pos, self.cr, self.hasher, self.chunk = fh, offset, cr, hasher, chunk
        self.buf, self.i, self.eof = b"", 0, False
        if offset == 0:
            while len(self.buf) < len(_BOM) and not self.eof:
                self._fill()
            if self.buf.startswith(_BOM):
                self.i = self.pos = len(_BOM)

    def _fill(self) -> None:
        data = self.fh.read(max(self.chunk, len(self.buf) - self.i))  # doubles for a line longer than a chunk
        if self.hasher is not None and data:
            self.hasher.update(data)
        self.eof = not data
        self.buf = self.buf[self.i :] + data
        self.i = 0

    def _end(self) -> int:
        """End of the line starting at ``i`` in the buffer, or -1 when the buffer cannot tell yet."""
        buf, i = self.buf, self.i
        j = buf.find(b"\n", i)
        if not self.cr:
            return j + 1 if j >= 0 else -1
        r = buf.find(b"\r", i, j if j >= 0 else len(buf))
        if r < 0 or r == j - 1:  # no \r before the \n, or \r\n
            return j + 1 if j >= 0 else -1
        # a lone \r, unless it is the buffer's last byte: then the next byte may be the \n of a \r\n
        return r + 1 if r + 1 < len(buf) else -1

    def next_line(self) -> bytes:
        """The next line with its terminator; ``b""`` at end of file."""
        end = self._end()
        while end < 0:
            if self.eof:
                end = len(self.buf)
                break
            self._fill()
            end = self._end()
        line = self.buf[self.i : end]
        self.i = end
        self.pos += len(line)
        return line


def _where(p: Path, lineno: int | None, start: int) -> str:
    return f"{p}:{lineno}" if lineno is not None else f"{p} (record at byte {start})"


def _table_rows(
    lines: _Lines, p: Path, fmt: str, errors: str, lineno: int | None
) -> Iterator[tuple[int, str, list[str]]]:
    """``(byte offset, location, cells)`` of each TSV/CSV record from ``lines``, parsed by ``csv``.

    ``csv`` pulls a line at a time and asks for the next one only inside a quoted field, so the first
    line pulled after a record is the start of the next. ``lineno``: the number of the line before the
    first (None: unknown, locations name the byte offset).
    """
    rec: list = [None, None]  # byte offset, location of the record being read
    eof = False

    def source() -> Iterator[str]:
        nonlocal lineno, eof
        while True:
            start = lines.pos
            raw = lines.next_line()
            if not raw:
                eof = True
                return
            if lineno is not None:
                lineno += 1
            if rec[0] is None:
                rec[0], rec[1] = start, _where(p, lineno, start)
            yield _decode(raw, _where(p, lineno, start), errors)

    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    reader = csv.reader(source(), delimiter=_DELIMITER[fmt], quotechar='"', doublequote=True, strict=False)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(
                f"{rec[1]}: malformed {fmt.upper()} record ({exc}; an unclosed quote?): a field that starts "
                f"with '\"' ends at the next lone '\"', a '\"' inside it is written '\"\"'"
            ) from None
        if eof:  # the reader reached the end of the file inside a quoted field
            raise ValueError(
                f"{rec[1]}: a quoted field opened in this record is never closed (end of file reached): a "
                f"field that starts with '\"' ends at the next lone '\"', a '\"' inside it is written '\"\"'"
            )
        yield rec[0], rec[1], cells
        rec[0] = rec[1] = None


def _iter_line_records(
    p: Path,
    fmt: str,
    layout: _Layout,
    *,
    need_label: bool,
    errors: str,
    hasher,
    seen: list,
) -> Iterator[tuple[int, Record]]:
    with open(p, "rb") as fh:
        lines = _Lines(fh, 0, fmt != "jsonl", hasher=hasher)  # JSON Lines end at \n (\r is JSON whitespace)
        if fmt in ("tsv", "csv"):
            for start, where, cells in _table_rows(lines, p, fmt, errors, 0):
                if layout.width is None:
                    if _blank(cells):
                        continue
                    _set_columns(layout, cells, where, need_label)
                    if layout.header:
                        continue
                rec = _parse(cells, layout, where, need_label, seen)
                if rec is not None:
                    yield start, rec
            return
        lineno = 0
        while True:
            start = lines.pos
            raw = lines.next_line()
            if not raw:
                return
            lineno += 1
            where = f"{p}:{lineno}"
            rec = _parse(_decode(raw, where, errors).rstrip("\r\n"), layout, where, need_label, seen)
            if rec is not None:
                yield start, rec


def _read_columns(p: Path, layout: _Layout, errors: str) -> None:
    """Fill a TSV/CSV ``layout`` as :func:`_iter_line_records` does, from the first non-blank record."""
    with open(p, "rb") as fh:
        for _, where, cells in _table_rows(_Lines(fh, 0, True, chunk=_READ_CHUNK), p, layout.fmt, errors, 0):
            if not _blank(cells):
                _set_columns(layout, cells, where, False)
                return
    raise ValueError(f"{p}: no records (empty or blank file); it changed since it was indexed?")


def _parquet(p: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading .parquet needs pyarrow: `pip install pyarrow`") from exc
    import pyarrow as pa

    try:
        return pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as exc:  # pyarrow's message does not name the file
        raise ValueError(
            f"{p}: not a readable Parquet file ({exc}); expected a .parquet file written by pyarrow/pandas"
        ) from None


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
    header: bool = True,
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
        header: TSV/CSV only: ``True`` (default): the first non-blank record names the columns;
            ``False``: there is no header, the columns are text, label, text pair by position.
        hasher: internal (:func:`index_corpus`): updated with every byte of the file (not parquet).
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    for arg, v in (("text_field", text_field), ("label_field", label_field)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{arg} must be a non-empty str, got {v!r}")
    if pair_field is not None and (not isinstance(pair_field, str) or not pair_field):
        raise ValueError(f"pair_field must be None or a non-empty str, got {pair_field!r}")
    _check_header(header)
    p = _check_file(path, name)
    fmt = corpus_format(p)
    if need_label and fmt == "txt":
        raise ValueError(
            f"{name}: labels missing: a labelled corpus must be .jsonl/.tsv/.csv/.parquet, got {str(p)!r}"
        )
    layout = _Layout(fmt, text_field, label_field, pair_field, header)
    seen: list = []
    if fmt == "parquet":
        it = _iter_parquet(p, layout, need_label, seen)
    else:
        it = _iter_line_records(
            p, fmt, layout, need_label=need_label, errors=errors, hasher=hasher, seen=seen
        )
    n = 0
    if max_rows is None or max_rows > 0:
        for loc, rec in it:  # stops at max_rows without parsing the record after it
            yield loc, rec
            n += 1
            if max_rows is not None and n >= max_rows:
                break
    if hasher is not None and fmt != "parquet" and max_rows is not None and n >= max_rows:
        # the fingerprint covers the whole file, also the rows past max_rows
        it.close()
        with open(p, "rb") as fh:
            fh.seek(hasher.n_bytes)
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                hasher.update(chunk)


# --------------------------------------------------------------------------------------------- tables
# The one adapter of in-memory tables (pandas DataFrame / Series, datasets Dataset / IterableDataset /
# Column, a dict of columns, a plain sequence) and files: every caller that takes "a corpus" or "texts"
# from Python goes through iter_table_records (corpus rows, the file rules) or as_texts (one text per
# input row, verbatim), so a DataFrame reads as the same table written to .parquet and read back.
_TABLE_BATCH = 8192
TABLE_TYPES = (
    "a file path, a pandas DataFrame/Series, a datasets Dataset/Column, a dict of columns or a list of str"
)


def table_kind(obj: Any) -> str | None:
    """``"frame"``, ``"series"``, ``"dataset"``, ``"iterable_dataset"``, ``"column"``, ``"dataset_dict"``,
    ``"dict"`` or None (not a table). pandas and datasets are looked up, never imported."""
    import sys

    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(obj, pd.DataFrame):
            return "frame"
        if isinstance(obj, pd.Series):
            return "series"
    ds = sys.modules.get("datasets")
    if ds is not None:
        if isinstance(obj, ds.Dataset):
            return "dataset"
        if isinstance(obj, ds.IterableDataset):
            return "iterable_dataset"
        if isinstance(obj, tuple(getattr(ds, n) for n in ("Column", "IterableColumn") if hasattr(ds, n))):
            return "column"
        if isinstance(obj, (ds.DatasetDict, ds.IterableDatasetDict)):
            return "dataset_dict"
    if isinstance(obj, dict):
        return "dict"
    return None


def _pandas_values(s: Any) -> list:
    """A pandas column as Python values, a missing cell (NaN / pd.NA / None) as None."""
    return s.astype(object).where(s.notna(), None).tolist()


def _table_batches(table: Any, kind: str, name: str) -> tuple[list[str] | None, Any]:
    """(column names or None when unknown before reading, ``batches(keep)``: an iterator of
    ``{column: list}`` over the columns ``keep``, in row order)."""
    if kind == "frame":
        by_name = {str(c): c for c in table.columns}
        n = len(table)

        def batches(keep):
            for i0 in range(0, n, _TABLE_BATCH):
                part = table.iloc[i0 : i0 + _TABLE_BATCH]
                yield {c: _pandas_values(part[by_name[c]]) for c in keep}

        return list(by_name), batches
    if kind == "dataset":

        def batches(keep):
            yield from table.select_columns(keep).with_format(None).iter(batch_size=_TABLE_BATCH)

        return list(table.column_names), batches
    if kind == "iterable_dataset":

        def batches(keep):
            for b in table.with_format(None).iter(batch_size=_TABLE_BATCH):
                missing = [c for c in keep if c not in b]
                if missing:
                    raise ValueError(f"{name}: no column {missing[0]!r} (columns: {sorted(b)})")
                yield {c: b[c] for c in keep}

        return (list(table.column_names) if table.column_names else None), batches
    if kind == "dict":
        cols = {str(k): v for k, v in table.items()}
        lens = {len(v) for v in cols.values()}
        if len(lens) > 1:
            raise ValueError(f"{name}: columns must have equal lengths, got {sorted(lens)}")

        def batches(keep):
            yield {c: list(cols[c]) for c in keep}

        return list(cols), batches
    if kind == "dataset_dict":
        raise ValueError(
            f"{name} is a DatasetDict with splits {list(table)}: pass one split, e.g. {name}['train']"
        )
    raise ValueError(f"{name} must be {TABLE_TYPES}, got {type(table).__name__}")


def _sequence_items(obj: Any, name: str) -> Iterator[tuple[int, str | None, str | None]]:
    """``(i, text, pair)`` of a one-column table or a plain sequence: str items, or ``(text, text_pair)``
    2-tuples; a missing cell (None, NaN) gives ``text=None``. Anything else is a ValueError naming
    ``name[i]``."""
    kind = table_kind(obj)
    if kind == "series":
        obj = _pandas_values(obj)
    elif kind == "column":
        obj = iter(obj)
    elif kind is None and isinstance(obj, np.ndarray):
        obj = obj.tolist()
    for i, t in enumerate(obj):
        if t is None or (isinstance(t, float) and t != t):
            yield i, None, None
        elif isinstance(t, str):
            yield i, t, None
        elif isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(x, str) for x in t):
            yield i, t[0], t[1]
        else:
            raise ValueError(
                f"{name}[{i}] must be a str or a (text, text_pair) 2-tuple of str, got {type(t).__name__}: "
                f"{t!r:.60}"
            )


def _is_text_sequence(obj: Any) -> bool:
    return isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, bytearray, dict))


def iter_table_records(
    table: Any,
    *,
    need_label: bool = False,
    text_field: str = "text",
    label_field: str = "label",
    pair_field: str | None = None,
    name: str = "table",
    header: bool = True,
    errors: str = "strict",
    max_rows: int | None = None,
) -> Iterator[tuple[int, Record]]:
    """Stream ``(locator, Record)`` of a corpus given as a file or an in-memory table: THE adapter.

    ``table`` may be a file path (read by :func:`iter_records`; the locator is its byte offset, or the
    row for parquet), a ``pandas.DataFrame``, a ``datasets.Dataset`` / ``IterableDataset``, a dict of
    equal-length columns (columns ``text_field`` / ``label_field`` / ``pair_field``, as in a file), or
    one column of texts: a ``pandas.Series``, a ``datasets`` ``Column``, or a plain list of str or
    ``(text, text_pair)`` tuples (no labels). In-memory tables follow the file rules: texts stripped,
    blank or missing texts skipped, labels keep their type (mixed types are a ValueError naming the row),
    so ``df.to_parquet(p)`` + :func:`iter_records` gives the same records; the locator is the table's
    positional row. Read batch by batch (8192 rows): a ``datasets.Dataset`` is never loaded whole.

    Args:
        name: the user's argument name, used in every error message.
        need_label, text_field, label_field, pair_field, header, errors, max_rows: as in :func:`iter_records`.
    """
    if isinstance(table, (str, os.PathLike)):
        yield from iter_records(
            table,
            need_label=need_label,
            text_field=text_field,
            label_field=label_field,
            pair_field=pair_field,
            max_rows=max_rows,
            name=name,
            errors=errors,
            header=header,
        )
        return
    for arg, v in (("text_field", text_field), ("label_field", label_field)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{arg} must be a non-empty str, got {v!r}")
    if pair_field is not None and (not isinstance(pair_field, str) or not pair_field):
        raise ValueError(f"pair_field must be None or a non-empty str, got {pair_field!r}")
    kind = table_kind(table)
    n_out = 0
    if kind in ("series", "column") or (kind is None and _is_text_sequence(table)):
        if need_label:
            raise ValueError(
                f"{name}: labels missing: a {type(table).__name__} of texts has no labels; pass a DataFrame "
                f"/ Dataset with a {label_field!r} column (label_field=)"
            )
        for i, text, pair in _sequence_items(table, name):
            if max_rows is not None and n_out >= max_rows:
                return
            text = text.strip() if text is not None else None
            if text:
                yield i, Record(text, None, None if pair is None else pair.strip())
                n_out += 1
        return
    columns, batches = _table_batches(table, kind, name)
    if columns is not None:
        hint = f"; columns: {columns}"
        if text_field not in columns:
            raise ValueError(f"{name}: no column text_field={text_field!r}{hint}")
        if need_label and label_field not in columns:
            raise ValueError(f"{name}: labels missing: no column label_field={label_field!r}{hint}")
        if pair_field is not None and pair_field not in columns:
            raise ValueError(f"{name}: no column pair_field={pair_field!r}{hint}")
        keep = [c for c in (text_field, label_field, pair_field) if c is not None and c in columns]
    else:  # an IterableDataset of unknown columns: checked on the first batch
        keep = [c for c in (text_field, label_field if need_label else None, pair_field) if c is not None]
    layout = _Layout("parquet", text_field, label_field, pair_field)
    seen: list = []
    row = 0
    for batch in batches(keep):
        cols = [batch[c] for c in keep]
        for values in zip(*cols, strict=True):
            if max_rows is not None and n_out >= max_rows:
                return
            r = _parquet_record(
                dict(zip(keep, values, strict=True)), layout, f"{name}: row {row}", need_label, seen
            )
            if r is not None:
                yield row, r
                n_out += 1
            row += 1


def as_texts(
    obj: Any,
    argname: str,
    *,
    text_field: str = "text",
    pair_field: str | None = None,
    allow_pairs: bool = True,
) -> tuple[list[str], list[str] | None]:
    """``(texts, text_pairs or None)``: one entry per input row, verbatim (nothing stripped or skipped).

    For callers that return one result per input (``Encoder.encode``, ``predict``, training texts):
    ``obj`` is a list / tuple / numpy array / generator of str or ``(text, text_pair)`` 2-tuples, a
    ``pandas.Series``, a ``datasets`` ``Column``, or a table (``pandas.DataFrame``, ``datasets.Dataset``,
    dict of columns) read through its ``text_field`` (and ``pair_field``) column as
    :func:`iter_table_records` reads it. ``argname`` is the user's argument name: every error names it
    (``texts[3] must be a str ...``, ``texts: no column text_field='text' ...``).
    """
    if isinstance(obj, (str, bytes, bytearray)):
        raise ValueError(
            f"{argname} must be a sequence of texts ({TABLE_TYPES}), got a single {type(obj).__name__}; "
            f"wrap it in a list"
        )
    kind = table_kind(obj)
    texts: list[str] = []
    pairs: list[str] = []
    if kind in (None, "series", "column"):
        if kind is None and not _is_text_sequence(obj):
            raise ValueError(f"{argname} must be {TABLE_TYPES}, got {type(obj).__name__}")
        for i, text, pair in _sequence_items(obj, argname):
            if text is None:
                raise ValueError(
                    f"{argname}[{i}] must be a str or a (text, text_pair) 2-tuple of str, got NoneType "
                    "(a missing value: None / NaN); every row needs a text"
                )
            if (pair is not None) != bool(pairs) and i > 0:
                raise ValueError(
                    f"{argname}[{i}]: mix of single texts and (text, text_pair) tuples; use one kind"
                )
            texts.append(text)
            if pair is not None:
                pairs.append(pair)
    else:
        columns, batches = _table_batches(obj, kind, argname)
        want = [text_field] + ([pair_field] if pair_field is not None else [])
        for what, col in zip(("text_field", "pair_field"), want, strict=False):
            if columns is not None and col not in columns:
                raise ValueError(
                    f"{argname}: no column {what}={col!r} in the {type(obj).__name__} (columns: {columns}); "
                    f"name the column with {what}=, or pass {argname}=<table>[<column>]"
                )
        row = 0
        for batch in batches(want):
            for values in zip(*(batch[c] for c in want), strict=True):
                for what, col, v in zip(("text", "pair"), want, values, strict=False):
                    if not isinstance(v, str):
                        got = "missing (None / NaN)" if v is None else f"a {type(v).__name__}"
                        raise ValueError(
                            f"{argname}: row {row}, column {col!r} is {got}; every row needs a str {what}"
                        )
                texts.append(values[0])
                if pair_field is not None:
                    pairs.append(values[1])
                row += 1
    if pairs and not allow_pairs:
        raise ValueError(f"{argname} must hold single texts, got (text, text_pair) tuples")
    return texts, (pairs if pairs else None)


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
        where the record has no label. ``text_field`` / ``label_field`` / ``pair_field`` / ``errors`` /
        ``header``: as read.
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
    header: bool = True

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
        if self.fmt in ("tsv", "csv"):
            fp["header"] = self.header  # decides the rows; only TSV/CSV have one
        return fp

    def read_options(self) -> dict:
        """The keyword arguments of :class:`RecordReader` that read the rows as they were indexed."""
        return {
            "text_field": self.text_field,
            "label_field": self.label_field,
            "pair_field": self.pair_field,
            "errors": self.errors,
            "header": self.header,
        }

    def reader(self) -> RecordReader:
        return RecordReader(self.path, self.offsets, **self.read_options())


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
    header: bool = True,
) -> CorpusIndex:
    """One streaming pass over a corpus file: offsets, label codes and sha256 (see :class:`CorpusIndex`).

    Arguments as in :func:`iter_records`.

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
        p,
        need_label=need_label,
        text_field=text_field,
        label_field=label_field,
        pair_field=pair_field,
        max_rows=max_rows,
        name=name,
        errors=errors,
        header=header,
        hasher=hasher,
    ):
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
        path=p,
        fmt=fmt,
        offsets=np.frombuffer(offsets, dtype=np.int64).copy(),
        sha256=sha,
        size=p.stat().st_size,
        label_names=names,
        codes=code_arr,
        text_field=text_field,
        label_field=label_field,
        pair_field=pair_field,
        errors=errors,
        header=header,
    )


class RecordReader:
    """Random access to the records of a corpus file through its locators (:func:`index_corpus`).

    Args:
        path: the indexed file. offsets: (N,) int64 locators, as :func:`iter_records` yields them.
        text_field, label_field, pair_field, errors, header: as the file was indexed
            (:meth:`CorpusIndex.read_options`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        offsets,
        *,
        text_field: str = "text",
        label_field: str = "label",
        pair_field: str | None = None,
        errors: str = "strict",
        header: bool = True,
    ):
        _check_header(header)
        self.path = Path(path)
        self.fmt = corpus_format(self.path)
        self.offsets = offsets
        self.layout = _Layout(self.fmt, text_field, label_field, pair_field, header)
        self.errors = errors
        self._fh = None
        self._pq = None
        self._lines = self._rows = None  # kept: the next row is read on without a seek when it follows

    def __len__(self) -> int:
        return len(self.offsets)

    def _one(self, r: int, off: int) -> Record | None:
        if self.fmt == "parquet":
            if self._pq is None:
                pf = _parquet(self.path)
                cols = _parquet_columns(pf, self.path, self.layout, False)
                self._pq = pf.read(columns=cols).to_pylist()  # random access: the needed columns
            return _parquet_record(self._pq[off], self.layout, f"{self.path}: row {off}", False, [])
        if self.fmt in ("tsv", "csv") and self.layout.width is None:
            _read_columns(
                self.path, self.layout, self.errors
            )  # the header (or first record) decides the columns
        if self._fh is None:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()/__del__
        if self._lines is None or self._lines.pos != off:
            self._fh.seek(off)
            self._lines = _Lines(self._fh, off, self.fmt != "jsonl", chunk=_READ_CHUNK)
            self._rows = None
        if self.fmt in ("tsv", "csv"):
            if self._rows is None:
                self._rows = _table_rows(self._lines, self.path, self.fmt, self.errors, None)
            _, where, cells = next(self._rows, (None, None, None))
            return None if cells is None else _parse(cells, self.layout, f"{where} (row {r})", False, [])
        where = f"{self.path} (row {r}, byte {off})"
        line = _decode(self._lines.next_line(), where, self.errors)
        return _parse(line.rstrip("\r\n"), self.layout, where, False, [])

    def get(self, rows) -> list[Record]:
        """The :class:`Record` of each row index in ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        offs = np.asarray(self.offsets)[rows] if len(rows) else []
        out = []
        for r, off in zip(rows.tolist(), offs, strict=True):
            try:
                rec = self._one(r, int(off))
            except BaseException:
                self._lines = self._rows = None  # read the next row afresh
                raise
            if rec is None:
                raise ValueError(f"{self.path}: row {r} is blank; the file changed since it was indexed")
            out.append(rec)
        return out

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        self._fh = self._lines = self._rows = self._pq = None

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
    header: bool = True,
) -> tuple[list[str], list]:
    """Load a labelled corpus into memory: (texts, labels). For files of any size use :func:`index_corpus`.
    Arguments as in :func:`iter_records`."""
    texts, labels = [], []
    for _, rec in iter_records(
        path,
        need_label=True,
        text_field=text_field,
        label_field=label_field,
        max_rows=max_rows,
        name="source",
        header=header,
    ):
        texts.append(rec.text)
        labels.append(rec.label)
    if not texts:
        raise ValueError(f"source: empty corpus (no non-blank records) in {str(path)!r}")
    return texts, labels


def read_texts(
    path: str | os.PathLike, *, text_field: str = "text", max_rows: int | None = None, header: bool = True
) -> list[str]:
    """Load the texts of a corpus file (labels ignored). Arguments as in :func:`iter_records`."""
    recs = iter_records(path, text_field=text_field, max_rows=max_rows, name="target", header=header)
    texts = [r.text for _, r in recs]
    if not texts:
        raise ValueError(f"target: empty corpus (no non-blank records) in {str(path)!r}")
    return texts


def table_jsonl(
    table: Any,
    *,
    need_label: bool = False,
    text_field: str = "text",
    label_field: str = "label",
    pair_field: str | None = None,
    name: str = "table",
) -> Iterator[bytes]:
    """The records of an in-memory table (:func:`iter_table_records`) as JSON Lines, one ``bytes`` line per
    record with the fields ``text_field`` / ``label_field`` (when labelled) / ``pair_field``: what a run
    directory stores for a DataFrame / Dataset input, so it is read, fingerprinted and resumed as a file.
    Reading the lines back with the same field names gives the same records."""
    for _, rec in iter_table_records(
        table,
        need_label=need_label,
        text_field=text_field,
        label_field=label_field,
        pair_field=pair_field,
        name=name,
    ):
        obj: dict = {text_field: rec.text}
        if rec.label is not None:
            obj[label_field] = rec.label
        if pair_field is not None:
            obj[pair_field] = rec.pair
        yield (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
