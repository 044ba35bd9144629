"""Shared fixtures of the experiment tests: a tiny offline model folder."""

from __future__ import annotations

import pytest
import torch

from experiments.driver import load_splits
from tests.utils import tiny_config, word_level_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random BertModel + a whitespace word-level tokenizer over the chatterbot English/Korean
    words, saved as a local HF folder (the 250k-piece e5 tokenizer is too slow to load for CI)."""
    from transformers import BertModel

    d = load_splits(["korean"], 0.25, 0)
    words = sorted(
        {
            w
            for part in (
                d["english"]["train"],
                d["english"]["test"],
                d["korean"]["pool"],
                d["korean"]["test"],
            )
            for t in part[0]
            for w in t.split()
        }
    )
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "query:": 4}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = word_level_tokenizer(vocab, pair="<s> $A </s> </s> $B </s>", whitespace_split=True)
    torch.manual_seed(0)
    cfg = tiny_config(
        vocab_size=len(vocab), hidden=16, heads=2, intermediate=32, max_positions=64, pad_token_id=1
    )
    out = tmp_path_factory.mktemp("tiny_e5")
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    tok.save_pretrained(out)
    return out
