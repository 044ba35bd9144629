"""Datasets and corpus readers for the XITE pipeline.

Two kinds of input:

* the offline chatterbot-corpus (``pip install chatterbot-corpus==1.3.3``): topic-labelled YAML files per
  language, where the non-English files are (loose) translations of the English ones. Nothing is
  downloaded; the files are read from the installed package.
* user files: a labelled source corpus (``.jsonl`` with fields ``text``/``label``, or ``.tsv`` with
  ``text<TAB>label``) and an unlabelled target corpus (``.txt``, one text per line, or ``.jsonl``).
  They are streamed, never loaded whole: :func:`iter_records` yields one record at a time together
  with its byte offset, so a caller can build an O(rows) offset index and read any row back later
  (:class:`RecordReader`) without keeping the texts in RAM.

How well do chatterbot translations align? (measured on chatterbot-corpus 1.3.3, ``alignment_stats``)
    ``conv_id`` is ``"<topic>/<conversation index>"``. English has 21 topic files (4,332 sentences),
    Korean 19; the 19 shared topics hold 1,864 English and 1,150 Korean sentences. The translators
    did not always keep the conversation order or count: per topic the conversation counts range
    from identical (computers, emotion, health, history, literature, movies, science) to very
    different (trivia: 261 English conversations vs 14 Korean; ai: 105 vs 32; sports 22 vs 16).
    1,104 of the 1,150 Korean sentences have an English sentence at the same ``(conv_id, turn)``,
    but where the counts differ that sentence is often not the translation (Korean greetings
    conversation 3 is a different dialogue than English conversation 3). Encoder check (full e5-small,
    is the positional English twin the nearest of all 1,864 English sentences to the Korean one?):
    in ``WELL_ALIGNED_TOPICS`` 60.7% top-1 / 74.6% top-5 (512 sentences), in the other topics only
    18.9% / 25.8% (592 sentences) - there the positions mostly do not hold translations. Consequences: :func:`split_by_conversation` keeps every ``conv_id`` on one side in
    all languages (so no test sentence's positional twin is trained on), and :func:`parallel_pairs`
    returns positional pairs as they are (noisy where counts differ; ``topics=WELL_ALIGNED_TOPICS``
    keeps the topics whose structure matches).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "chatterbot_languages",
    "chatterbot_topics",
    "load_chatterbot",
    "split_by_conversation",
    "parallel_pairs",
    "alignment_stats",
    "parse_source_spec",
    "corpus_format",
    "iter_records",
    "RecordReader",
    "read_labelled",
    "read_texts",
    "WELL_ALIGNED_TOPICS",
]

# topics whose Korean file keeps the English conversation structure (same conversation count, and every
# Korean sentence has a positional English twin)
WELL_ALIGNED_TOPICS = (
    "computers",
    "emotion",
    "health",
    "history",
    "literature",
    "movies",
    "science",
)

_TEXT_SUFFIXES = (".txt",)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TSV_SUFFIXES = (".tsv",)


# --------------------------------------------------------------------------------------------- chatterbot
def _chatterbot_root() -> Path:
    try:
        import chatterbot_corpus
    except ImportError:
        raise ImportError(
            "the chatterbot corpus is not installed; `pip install chatterbot-corpus==1.3.3` "
            "(or `pip install xite_fast[assets]`)"
        ) from None
    return Path(chatterbot_corpus.__file__).resolve().parent / "data"


def chatterbot_languages() -> list[str]:
    """Languages available in the installed chatterbot corpus (directory names, e.g. ``"korean"``)."""
    root = _chatterbot_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.yml")))


def _language_dir(language: str) -> Path:
    if not isinstance(language, str) or not language:
        raise ValueError(f"language must be a non-empty str, got {language!r}")
    available = chatterbot_languages()
    lang = language.strip().lower()
    if lang not in available:
        raise ValueError(f"unknown chatterbot language {language!r}; available: {', '.join(available)}")
    return _chatterbot_root() / lang


def chatterbot_topics(*languages: str) -> list[str]:
    """Topic names (file stems) present in *all* given languages, sorted."""
    if not languages:
        raise ValueError("chatterbot_topics needs at least one language")
    sets = [{p.stem for p in _language_dir(lang).glob("*.yml")} for lang in languages]
    return sorted(set.intersection(*sets))


def load_chatterbot(language: str, *, topics: Sequence[str] | None = None) -> list[dict]:
    """Read the chatterbot-corpus YAML files of one language.

    Args:
        language: a directory of the installed corpus, e.g. ``"english"``, ``"korean"`` (case-insensitive).
        topics: keep only these topics (file stems such as ``"greetings"``); ``None`` keeps all. Use
            ``chatterbot_topics("english", "korean")`` for the topics both languages share.

    Returns:
        One dict per sentence, in file order: ``{"text": str, "label": topic, "conv_id": "topic/i",
        "turn": j}``. ``conv_id`` + ``turn`` align a translation with its English original (see the
        module docstring for how reliable that is). A conversation written as a plain string instead
        of a list (a few in English trivia and Ukrainian) counts as a one-turn conversation.

    Raises:
        ValueError: unknown language (the message lists the available ones) or unknown topic.
    """
    import yaml

    lang_dir = _language_dir(language)
    files = sorted(lang_dir.glob("*.yml"))
    if topics is not None:
        have = {p.stem for p in files}
        topics = list(topics)
        missing = [t for t in topics if t not in have]
        if missing:
            raise ValueError(
                f"topics {missing} are not in chatterbot {language!r}; available: {', '.join(sorted(have))}"
            )
        files = [p for p in files if p.stem in set(topics)]
    records: list[dict] = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        convs = (doc or {}).get("conversations") or []
        topic = path.stem
        for ci, conv in enumerate(convs):
            turns = conv if isinstance(conv, list) else [conv]
            for ti, text in enumerate(turns):
                if text is None:
                    continue
                text = str(text).strip()
                if text:
                    records.append({"text": text, "label": topic, "conv_id": f"{topic}/{ci}", "turn": ti})
    return records


def _conv_in_test(conv_id: str, test_fraction: float, seed: int) -> bool:
    # A hash of (seed, conv_id) instead of a shuffled list: the split of a conversation depends only on
    # its id, so splitting English and Korean separately with the same seed gives matching splits.
    h = hashlib.blake2b(f"{seed}\x00{conv_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64 < test_fraction


def split_by_conversation(
    records: Sequence[dict], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split records into (train, test) by conversation, consistently across languages.

    A conversation goes to test iff ``hash(seed, conv_id) < test_fraction``, so running this on the
    English and on the Korean records with the same ``seed`` puts every ``conv_id`` on the same side in
    both languages: no test sentence's English twin (same ``conv_id``) is used for training.

    Args:
        records: dicts with at least ``conv_id`` (as returned by :func:`load_chatterbot`).
        test_fraction: expected fraction of conversations in test, in (0, 1).
        seed: split seed.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = [], []
    for i, rec in enumerate(records):
        if "conv_id" not in rec:
            raise ValueError(f"records[{i}] has no 'conv_id' field (keys: {sorted(rec)})")
        (test if _conv_in_test(str(rec["conv_id"]), float(test_fraction), int(seed)) else train).append(rec)
    return train, test


def parallel_pairs(lang_a: str, lang_b: str, *, topics: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Sentence pairs aligned by ``(conv_id, turn)`` between two chatterbot languages (e.g. for OT).

    Only positions present in both languages are returned, in ``lang_b`` file order. Alignment is
    exact only where the translators kept the conversation structure (see the module docstring);
    ``topics=WELL_ALIGNED_TOPICS`` keeps the reliable ones for english/korean.

    Returns:
        list of ``(text_a, text_b)``.
    """
    if topics is None:
        topics = chatterbot_topics(lang_a, lang_b)
    a = {(r["conv_id"], r["turn"]): r["text"] for r in load_chatterbot(lang_a, topics=topics)}
    pairs = []
    for r in load_chatterbot(lang_b, topics=topics):
        key = (r["conv_id"], r["turn"])
        if key in a:
            pairs.append((a[key], r["text"]))
    return pairs


def alignment_stats(lang_a: str = "english", lang_b: str = "korean") -> dict:
    """Per-topic conversation/sentence counts and how many ``lang_b`` sentences have a ``lang_a`` twin."""
    topics = chatterbot_topics(lang_a, lang_b)
    ra, rb = load_chatterbot(lang_a, topics=topics), load_chatterbot(lang_b, topics=topics)
    keys_a = {(r["conv_id"], r["turn"]) for r in ra}
    out: dict = {"topics": {}, "sentences_a": len(ra), "sentences_b": len(rb)}
    for t in topics:
        a_t = [r for r in ra if r["label"] == t]
        b_t = [r for r in rb if r["label"] == t]
        out["topics"][t] = {
            "conversations_a": len({r["conv_id"] for r in a_t}),
            "conversations_b": len({r["conv_id"] for r in b_t}),
            "sentences_a": len(a_t),
            "sentences_b": len(b_t),
            "b_with_twin": sum((r["conv_id"], r["turn"]) in keys_a for r in b_t),
        }
    out["b_with_twin"] = sum(v["b_with_twin"] for v in out["topics"].values())
    return out


def parse_source_spec(spec: str) -> str | None:
    """``"chatterbot:korean"`` -> ``"korean"``; anything else (a file path) -> ``None``."""
    if isinstance(spec, str) and spec.lower().startswith("chatterbot:"):
        lang = spec.split(":", 1)[1]
        _language_dir(lang)  # raises on unknown language
        return lang.strip().lower()
    return None


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
