"""Dataset loading (real chatterbot-corpus files), conversation split leakage, corpus file readers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from xite_fast.data import chatterbot as data

pytest.importorskip("chatterbot_corpus")


def _yaml_sentence_count(lang: str, topics=None) -> int:
    root = Path(__import__("chatterbot_corpus").__file__).parent / "data" / lang
    n = 0
    for p in sorted(root.glob("*.yml")):
        if topics is not None and p.stem not in topics:
            continue
        for conv in yaml.safe_load(p.read_text(encoding="utf-8"))["conversations"]:
            n += len(conv) if isinstance(conv, list) else 1
    return n


def test_counts_and_labels_per_language():
    shared = data.chatterbot_topics("english", "korean")
    assert len(shared) == 19
    assert "coding" not in shared and "tech_support" not in shared
    en = data.load_chatterbot("english", topics=shared)
    ko = data.load_chatterbot("korean")
    # ASSETS.md figures, and an independent count straight from the YAML
    assert len(en) == 1864 == _yaml_sentence_count("english", shared)
    assert len(ko) == 1150 == _yaml_sentence_count("korean")
    assert len(data.load_chatterbot("english")) == _yaml_sentence_count("english") == 4332
    assert len(data.load_chatterbot("Japanese")) == 1393
    assert len(data.load_chatterbot("ukrainian")) == 1192  # 7 conversations are plain strings
    assert {r["label"] for r in ko} == set(shared)
    for r in en + ko:
        topic, idx = r["conv_id"].split("/")
        assert (
            topic == r["label"] and int(idx) >= 0 and r["turn"] >= 0 and r["text"].strip() == r["text"] != ""
        )
    # majority class on Korean: emotion, 254 / 1150 = 0.221
    label, count = Counter(r["label"] for r in ko).most_common(1)[0]
    assert label == "emotion" and abs(count / len(ko) - 0.221) < 1e-3


def test_unknown_language_lists_available():
    with pytest.raises(ValueError, match=r"unknown chatterbot language 'klingon'.*korean"):
        data.load_chatterbot("klingon")
    with pytest.raises(ValueError, match="topics"):
        data.load_chatterbot("korean", topics=["coding"])
    with pytest.raises(ValueError, match="unknown chatterbot language"):
        data.parse_source_spec("chatterbot:elvish")
    assert data.parse_source_spec("chatterbot:Korean") == "korean"
    assert data.parse_source_spec("en.jsonl") is None


def test_conv_id_alignment_english_korean():
    stats = data.alignment_stats("english", "korean")
    assert stats["sentences_a"] == 1864 and stats["sentences_b"] == 1150
    assert stats["b_with_twin"] == 1104
    for t in data.WELL_ALIGNED_TOPICS:
        s = stats["topics"][t]
        assert s["conversations_a"] == s["conversations_b"] and s["b_with_twin"] == s["sentences_b"], t
    assert (
        stats["topics"]["trivia"]["conversations_a"] == 261
        and stats["topics"]["trivia"]["conversations_b"] == 14
    )
    pairs = data.parallel_pairs("english", "korean")
    assert len(pairs) == 1104
    en = {(r["conv_id"], r["turn"]): r["text"] for r in data.load_chatterbot("english")}
    ko = data.load_chatterbot("korean", topics=["computers"])
    good = data.parallel_pairs("english", "korean", topics=["computers"])
    assert good == [(en[(r["conv_id"], r["turn"])], r["text"]) for r in ko]


def test_split_by_conversation_no_leakage():
    topics = data.chatterbot_topics("english", "korean")
    en = data.load_chatterbot("english", topics=topics)
    ko = data.load_chatterbot("korean")
    en_train, en_test = data.split_by_conversation(en, 0.3, seed=7)
    ko_train, ko_test = data.split_by_conversation(ko, 0.3, seed=7)
    assert len(en_train) + len(en_test) == len(en) and len(ko_train) + len(ko_test) == len(ko)
    # no Korean test sentence has its English twin (same conv_id) in the English training data
    assert not {r["conv_id"] for r in ko_test} & {r["conv_id"] for r in en_train}
    assert not {r["conv_id"] for r in ko_train} & {r["conv_id"] for r in ko_test}
    convs = {r["conv_id"] for r in en}
    frac = len({r["conv_id"] for r in en_test}) / len(convs)
    assert 0.24 < frac < 0.36, frac
    # deterministic per seed, different across seeds
    assert data.split_by_conversation(en, 0.3, seed=7)[1] == en_test
    assert data.split_by_conversation(en, 0.3, seed=8)[1] != en_test
    for bad in (0, 1, -0.1, 1.5, "0.2", True):
        with pytest.raises(ValueError, match="test_fraction"):
            data.split_by_conversation(en, bad)
    with pytest.raises(ValueError, match="conv_id"):
        data.split_by_conversation([{"text": "x"}], 0.5)
