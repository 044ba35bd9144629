"""A small labelled English source / Korean target on disk (chatterbot, 3 topics), for CLI and Ray tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_chatterbot_sample(tmp_path: Path, n_src: int = 60, n_tgt: int = 45, seed: int = 0) -> tuple[Path, Path, Path]:
    """``en.jsonl`` (text, label), ``ko.jsonl`` (text, gold label) and ``ko.txt`` (the Korean texts, one per
    line) under ``tmp_path``: a fixed-seed sample of the emotion / food / sports topics."""
    from xite_fast.data.chatterbot import load_chatterbot

    topics = ["emotion", "food", "sports"]
    en = load_chatterbot("english", topics=topics)
    ko = load_chatterbot("korean", topics=topics)
    rng = np.random.default_rng(seed)
    en = [en[i] for i in sorted(rng.choice(len(en), n_src, replace=False))]
    ko = [ko[i] for i in sorted(rng.choice(len(ko), n_tgt, replace=False))]
    src, tgt, txt = tmp_path / "en.jsonl", tmp_path / "ko.jsonl", tmp_path / "ko.txt"
    for path, recs in ((src, en), (tgt, ko)):
        path.write_text(
            "".join(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n" for r in recs),
            encoding="utf-8",
        )
    txt.write_text("".join(r["text"] + "\n" for r in ko), encoding="utf-8")
    return src, tgt, txt
