"""The offline chatterbot-corpus (``pip install chatterbot-corpus==1.3.3``): topic-labelled YAML files per
language, where the non-English files are (loose) translations of the English ones. Nothing is downloaded;
the files are read from the installed package.

How well do chatterbot translations align? (measured on chatterbot-corpus 1.3.3, ``alignment_stats``)
    ``conv_id`` is ``"<topic>/<conversation index>"``. English has 21 topic files (4,332 sentences),
    Korean 19; the 19 shared topics hold 1,864 English and 1,150 Korean sentences. The translators
    did not always keep the conversation order or count: per topic the conversation counts range
    from identical (computers, emotion, health, history, literature, movies, science) to very
    different (trivia: 261 English conversations vs 14 Korean; ai: 105 vs 32; sports 22 vs 16).
    1,104 of the 1,150 Korean sentences have an English sentence at the same ``(conv_id, turn)``,
    but where the counts differ that sentence is often not the translation (Korean greetings
    conversation 3 is a different dialogue than English conversation 3; bench/README.md measures how
    often the positional twin is the encoder's nearest English sentence, in and outside
    ``WELL_ALIGNED_TOPICS``). Consequences: :func:`split_by_conversation` keeps every ``conv_id`` on
    one side in all languages (so no test sentence's positional twin is trained on), and
    :func:`parallel_pairs` returns positional pairs as they are (noisy where counts differ;
    ``topics=WELL_ALIGNED_TOPICS`` keeps the topics whose structure matches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "chatterbot_languages",
    "language_name",
    "chatterbot_topics",
    "load_chatterbot",
    "split_by_conversation",
    "parallel_pairs",
    "alignment_stats",
    "parse_source_spec",
    "WELL_ALIGNED_TOPICS",
    "LANGUAGE_CODES",
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


# ISO 639-1 codes accepted wherever a chatterbot language name is (``"ko"`` == ``"korean"``)
LANGUAGE_CODES = {
    "bn": "bengali",
    "de": "german",
    "en": "english",
    "es": "spanish",
    "fa": "persian",
    "fr": "french",
    "he": "hebrew",
    "hi": "hindi",
    "id": "indonesian",
    "it": "italian",
    "ja": "japanese",
    "ko": "korean",
    "mr": "marathi",
    "nl": "dutch",
    "pt": "portuguese",
    "ru": "russian",
    "sv": "swedish",
    "ta": "tamil",
    "te": "telugu",
    "th": "thai",
    "tr": "turkish",
    "uk": "ukrainian",
    "ur": "urdu",
    "yo": "yoruba",
    "zh": "chinese",
}


def _chatterbot_root() -> Path:
    try:
        import chatterbot_corpus
    except ImportError:
        raise ImportError(
            "the chatterbot corpus is not installed; `pip install chatterbot-corpus==1.3.3` "
            "(or `pip install xite_fast[assets]`)"
        ) from None
    return Path(chatterbot_corpus.__file__).resolve().parent / "data"


def language_name(language: str) -> str:
    """Normalised chatterbot directory name of a language name or ISO code (``"KO"`` -> ``"korean"``)."""
    return _language_dir(language).name


def chatterbot_languages() -> list[str]:
    """Languages available in the installed chatterbot corpus (directory names, e.g. ``"korean"``)."""
    root = _chatterbot_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.yml")))


def _language_dir(language: str) -> Path:
    if not isinstance(language, str) or not language:
        raise ValueError(f"language must be a non-empty str, got {language!r}")
    available = chatterbot_languages()
    lang = language.strip().lower()
    lang = LANGUAGE_CODES.get(lang, lang)
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
        language: a directory of the installed corpus, e.g. ``"english"``, ``"korean"`` (case-insensitive),
            or its ISO 639-1 code (``"ko"``, see :data:`LANGUAGE_CODES`).
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
        return language_name(lang)  # raises on unknown language
    return None
