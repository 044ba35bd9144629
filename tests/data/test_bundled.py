"""xite_fast.data.bundled: spec registry, records and the sha256 of what was read."""

from __future__ import annotations

import hashlib

import pytest

from xite_fast.data.bundled import is_bundled, load_bundled, sha256_of_files

pytest.importorskip("chatterbot_corpus")


def test_chatterbot_spec_matches_loader_and_hashes_the_files():
    from xite_fast.data.chatterbot import _language_dir, load_chatterbot

    d = load_bundled("chatterbot:Korean")
    assert d.spec == "chatterbot:korean" and d.records == load_chatterbot("korean")
    files = sorted(_language_dir("korean").glob("*.yml"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\x00" + p.read_bytes() + b"\x00")
    assert d.sha256 == h.hexdigest() == sha256_of_files(files)
    sub = load_bundled("chatterbot:korean", topics=["food"])
    assert {r["label"] for r in sub.records} == {"food"} and sub.sha256 != d.sha256


def test_spec_errors():
    assert is_bundled("chatterbot:korean") and not is_bundled("corpus.txt") and not is_bundled(3)
    with pytest.raises(ValueError, match="spec must be"):
        load_bundled("nosuch:x")
    with pytest.raises(ValueError, match="unknown chatterbot language"):
        load_bundled("chatterbot:elvish")


def test_iso_codes_and_all_prefixes_registered():
    from xite_fast.data.bundled import bundled_prefixes

    assert bundled_prefixes() == ["chatterbot", "pairs", "sentiment"]
    assert load_bundled("chatterbot:ko").records == load_bundled("chatterbot:korean").records
    assert is_bundled("sentiment:zh") and is_bundled("pairs:ja")
