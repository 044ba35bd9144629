"""Readers of the user's corpus files: a labelled source corpus (``.jsonl`` with fields ``text``/``label``,
or ``.tsv`` with ``text<TAB>label``) and an unlabelled target corpus (``.txt``, one text per line, or
``.jsonl``). They are streamed, never loaded whole: :func:`iter_records` yields one record at a time
together with its byte offset, so a caller can build an O(rows) offset index and read any row back later
(:class:`RecordReader`) without keeping the texts in RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "corpus_format",
    "iter_records",
    "RecordReader",
    "read_labelled",
    "read_texts",
]


_TEXT_SUFFIXES = (".txt",)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TSV_SUFFIXES = (".tsv",)


# --------------------------------------------------------------------------------------------- user files
def corpus_format(path: str | os.PathLike) -> str:
    """``"txt"``, ``"jsonl"`` or ``"tsv"`` from the file suffix (ValueError otherwise)."""
    suffix = Path(path).suffix.lower()
    if suffix in _TEXT_SUFFIXES:
        return "txt"
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _TSV_SUFFIXES:
        return "tsv"
    raise ValueError(
        f"unsupported corpus file {str(path)!r}: expected .txt, .jsonl or .tsv, got suffix {suffix!r}"
    )


def _check_file(path: str | os.PathLike, name: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: file not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{name} must be a file, got a directory or special file: {str(p)!r}")
    return p


def _parse_line(
    raw: bytes, fmt: str, lineno: int, path: Path, *, text_field: str, label_field: str, need_label: bool
) -> tuple[str, str | None] | None:
    """Parse one line; ``None`` for a blank line / blank text (skipped consistently everywhere)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({exc})") from None
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if fmt == "txt":
        if need_label:
            raise ValueError(f"{path}: a .txt file has no labels; a labelled source must be .jsonl or .tsv")
        return line.strip(), None
    if fmt == "tsv":
        cols = line.split("\t")
        text = cols[0].strip()
        label = cols[1].strip() if len(cols) > 1 else ""
        if need_label and not label:
            raise ValueError(f"{path}:{lineno}: labels missing: expected 'text<TAB>label', got {line[:80]!r}")
        return (text, label or None) if text else None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: broken JSON line ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    if text_field not in obj:
        raise ValueError(f"{path}:{lineno}: field {text_field!r} missing (keys: {sorted(obj)})")
    text = str(obj[text_field]).strip() if obj[text_field] is not None else ""
    label = obj.get(label_field)
    label = None if label is None else str(label).strip() or None
    if need_label and label is None:
        raise ValueError(f"{path}:{lineno}: labels missing: field {label_field!r} absent or empty")
    return (text, label) if text else None


def _is_tsv_header(raw: bytes, text_field: str, label_field: str) -> bool:
    """A first TSV line ``text`` or ``text<TAB>label`` (the field names) is a header, not a record."""
    cols = [c.strip().lower() for c in raw.decode("utf-8", "replace").rstrip("\r\n").split("\t")]
    return cols[0] == text_field.lower() and (len(cols) == 1 or cols[1] == label_field.lower())


def iter_records(
    path: str | os.PathLike,
    *,
    need_label: bool = False,
    text_field: str = "text",
    label_field: str = "label",
    max_rows: int | None = None,
    name: str = "corpus",
) -> Iterator[tuple[int, str, str | None]]:
    """Stream ``(byte_offset, text, label_or_None)`` from a .txt/.jsonl/.tsv file.

    Blank lines and records with blank text are skipped (the same way in :class:`RecordReader`), as is
    a TSV header line ``text<TAB>label`` (the field names), so
    row ``i`` here is row ``i`` of any embedding store built from this iterator. Nothing but the current
    line is held in memory.

    Args:
        path: the file.
        need_label: require a label on every record (ValueError naming the line otherwise).
        text_field, label_field: JSONL field names (a TSV's first/second column).
        max_rows: stop after this many records.
        name: argument name used in error messages.
    """
    p = _check_file(path, name)
    fmt = corpus_format(p)
    if need_label and fmt == "txt":
        raise ValueError(
            f"{name}: labels missing: a labelled source must be .jsonl (text, label) or .tsv, got {p}"
        )
    n = 0
    with open(p, "rb") as fh:
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            if fmt == "tsv" and lineno == 1 and _is_tsv_header(raw, text_field, label_field):
                offset += len(raw)
                continue
            rec = _parse_line(
                raw, fmt, lineno, p, text_field=text_field, label_field=label_field, need_label=need_label
            )
            if rec is not None:
                if max_rows is not None and n >= max_rows:
                    return
                yield offset, rec[0], rec[1]
                n += 1
            offset += len(raw)


class RecordReader:
    """Random access to the records of a corpus file through a byte-offset index.

    Args:
        path: the file given to :func:`iter_records`.
        offsets: (N,) int64 byte offsets of the records, as yielded by :func:`iter_records`.
    """

    def __init__(
        self, path: str | os.PathLike, offsets, *, text_field: str = "text", label_field: str = "label"
    ):
        self.path = Path(path)
        self.fmt = corpus_format(self.path)
        self.offsets = offsets
        self.text_field, self.label_field = text_field, label_field
        self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()/__del__

    def __len__(self) -> int:
        return len(self.offsets)

    def get(self, rows) -> list[tuple[str, str | None]]:
        """``(text, label)`` for each row index in ``rows`` (any order, repeats allowed)."""
        import numpy as np

        out = []
        # one vectorized gather from the (possibly memory-mapped) offset index, not one lookup per row
        offs = np.asarray(self.offsets)[np.asarray(rows, dtype=np.int64)] if len(rows) else []
        for r, off in zip(rows, offs, strict=True):
            self._fh.seek(int(off))
            rec = _parse_line(
                self._fh.readline(),
                self.fmt,
                -1,
                self.path,
                text_field=self.text_field,
                label_field=self.label_field,
                need_label=False,
            )
            if rec is None:
                raise ValueError(f"{self.path}: row {r} is blank; the file changed since it was indexed")
            out.append(rec)
        return out

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def read_labelled(
    path: str | os.PathLike,
    *,
    text_field: str = "text",
    label_field: str = "label",
    max_rows: int | None = None,
) -> tuple[list[str], list[str]]:
    """Load a labelled source file (.jsonl ``text``/``label`` or .tsv ``text<TAB>label``) into memory.

    For files of any size use :func:`iter_records` (the CLI does). Raises ValueError on an empty
    corpus or a record without label.
    """
    texts, labels = [], []
    for _, t, lab in iter_records(
        path,
        need_label=True,
        text_field=text_field,
        label_field=label_field,
        max_rows=max_rows,
        name="source",
    ):
        texts.append(t)
        labels.append(lab)
    if not texts:
        raise ValueError(f"source: empty corpus (no non-blank records) in {str(path)!r}")
    return texts, labels


def read_texts(
    path: str | os.PathLike, *, text_field: str = "text", max_rows: int | None = None
) -> list[str]:
    """Load an unlabelled target file (.txt one text per line, or .jsonl field ``text_field``)."""
    texts = [t for _, t, _ in iter_records(path, text_field=text_field, max_rows=max_rows, name="target")]
    if not texts:
        raise ValueError(f"target: empty corpus (no non-blank records) in {str(path)!r}")
    return texts
