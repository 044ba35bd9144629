"""xite_fast.data.pairs: response-selection pairs from chatterbot conversations."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("chatterbot_corpus")

from xite_fast.data.bundled import load_bundled  # noqa: E402
from xite_fast.data.chatterbot import load_chatterbot, split_by_conversation  # noqa: E402
from xite_fast.data.pairs import load_pairs  # noqa: E402


@pytest.mark.parametrize("lang", ["english", "ko", "ja"])
def test_pairs_are_balanced_and_true_next_utterances(lang):
    sents = load_chatterbot(lang)
    by_pos = {(r["conv_id"], r["turn"]): r for r in sents}
    n_consecutive = sum((r["conv_id"], r["turn"] + 1) in by_pos for r in sents)
    pairs = load_pairs(lang)
    c = Counter(p["label"] for p in pairs)
    assert c[1] == c[0] == n_consecutive
    topic_texts: dict[str, set] = {}
    for r in sents:
        topic_texts.setdefault(r["label"], set()).add(r["text"])
    for pos, neg in zip(pairs[0::2], pairs[1::2], strict=True):
        assert (pos["label"], neg["label"]) == (1, 0) and pos["text"] == neg["text"]
        key = (pos["conv_id"], pos["turn"])
        assert by_pos[key]["text"] == pos["text"]
        assert by_pos[(pos["conv_id"], pos["turn"] + 1)]["text"] == pos["text_pair"]
        assert neg["text_pair"] not in (pos["text"], pos["text_pair"])
        assert neg["text_pair"] in topic_texts[pos["topic"]]


def test_pairs_fixed_seed_and_split_by_conversation():
    a, b = load_pairs("korean", seed=0), load_pairs("korean", seed=0)
    assert a == b and a != load_pairs("korean", seed=1)
    en_tr, en_te = split_by_conversation(load_pairs("english"), 0.3, seed=2)
    ko_tr, ko_te = split_by_conversation(a, 0.3, seed=2)
    assert not {r["conv_id"] for r in ko_te} & {r["conv_id"] for r in en_tr}


def test_pairs_spec():
    d = load_bundled("pairs:ko", topics=["food", "emotion"])
    assert d.spec == "pairs:korean" and d.records == load_pairs("korean", topics=["food", "emotion"])
    assert d.sha256 == load_bundled("chatterbot:korean", topics=["food", "emotion"]).sha256
    assert all(set(r) >= {"text", "text_pair", "label"} and isinstance(r["label"], int) for r in d.records)
    with pytest.raises(ValueError, match="seed must be an int"):
        load_pairs("korean", seed="0")
