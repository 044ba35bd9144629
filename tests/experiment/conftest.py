"""Shared fixtures of the experiment tests: a tiny offline model folder."""

from __future__ import annotations

import pytest
import torch

from experiments.driver import load_splits


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random BertModel + a whitespace word-level tokenizer over the chatterbot English/Korean
    words, saved as a local HF folder (the 250k-piece e5 tokenizer is too slow to load for CI)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

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
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    out = tmp_path_factory.mktemp("tiny_e5")
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    tok.save_pretrained(out)
    return out
