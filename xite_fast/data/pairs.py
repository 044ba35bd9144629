"""Response selection pairs from chatterbot conversations: a sentence-pair task that ships offline.

For every consecutive (utterance, next utterance) in a conversation there are two rows:

* ``label 1``: ``text`` = the utterance, ``text_pair`` = its next utterance;
* ``label 0``: the same utterance with a random utterance from the same topic (same language) whose
  text is neither the utterance nor its true next one.

So the set is exactly balanced, and the negative is a pure function of ``(seed, conv_id, turn)``
(not of file order). Rows keep the ``conv_id`` and ``turn`` of the utterance, so
:func:`xite_fast.data.chatterbot.split_by_conversation` splits pairs by conversation in every
language alike: no test pair's English twin is trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["load_pairs"]


def _rng(seed: int, conv_id: str, turn: int) -> np.random.Generator:
    h = hashlib.blake2b(f"{seed}\x00{conv_id}\x00{turn}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(h, "little"))


def load_pairs(language: str, *, topics: Sequence[str] | None = None, seed: int = 0) -> list[dict]:
    """Balanced response-selection pairs of one chatterbot language.

    Args:
        language: chatterbot language name or ISO code (``"english"``, ``"ko"``, ``"ja"``).
        topics: restrict to these topics (``None``: all of the language's topics).
        seed: seed of the negative draws.

    Returns:
        Records ``{"text", "text_pair", "label": 1 | 0 (int), "topic", "conv_id", "turn"}``, the
        positive of each (conversation, turn) followed by its negative, in file order. An utterance
        whose topic offers no valid negative is skipped (with its positive), keeping the balance.
    """
    from xite_fast.data.chatterbot import load_chatterbot

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    sents = load_chatterbot(language, topics=topics)
    by_topic: dict[str, list[str]] = {}
    for r in sents:
        by_topic.setdefault(r["label"], []).append(r["text"])
    out: list[dict] = []
    for a, b in zip(sents, sents[1:], strict=False):
        if a["conv_id"] != b["conv_id"] or b["turn"] != a["turn"] + 1:
            continue
        cands = by_topic[a["label"]]
        rng = _rng(int(seed), a["conv_id"], a["turn"])
        neg = None
        for _ in range(64):  # rejection sampling; a topic of only duplicates of a/b has no negative
            c = cands[int(rng.integers(len(cands)))]
            if c != a["text"] and c != b["text"]:
                neg = c
                break
        if neg is None:
            valid = [c for c in cands if c != a["text"] and c != b["text"]]
            if not valid:
                continue
            neg = valid[int(rng.integers(len(valid)))]
        meta = {"topic": a["label"], "conv_id": a["conv_id"], "turn": a["turn"]}
        out.append({"text": a["text"], "text_pair": b["text"], "label": 1, **meta})
        out.append({"text": a["text"], "text_pair": neg, "label": 0, **meta})
    return out
