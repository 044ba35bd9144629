"""Tiny offline models for the encoder tests: a random 2-layer BERT with a small WordPiece vocabulary
saved as a Hugging Face folder, and sentence-transformers folders built from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = (
    "the a is of and to in weather nice today book about history train station where my computer broken "
    "i like coffee sister doctor what time it are you how do go home . , ? !"
).split()


def make_bert_folder(out: Path, seed: int = 0, hidden: int = 32, type_vocab_size: int = 2) -> Path:
    """Random tiny BertModel + BertTokenizerFast saved to ``out`` (no download)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *("##" + c for c in letters)]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"))
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        type_vocab_size=type_vocab_size,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # larger weights than the init: pooling modes and pairs then differ clearly
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_st_folder(
    hf: Path, out: Path, pooling: str, normalize: bool, prompts: dict | None = None, default: str | None = None
) -> Path:
    """sentence-transformers folder (Transformer + Pooling [+ Normalize]) saved by sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    tr = Transformer(str(hf), max_seq_length=40)
    mods = [tr, Pooling(tr.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        mods.append(Normalize())
    SentenceTransformer(modules=mods, prompts=prompts or {}, default_prompt_name=default).save(str(out))
    return out


@pytest.fixture(scope="session")
def make_bert():
    """The :func:`make_bert_folder` factory (test modules here are not a package)."""
    return make_bert_folder


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    return make_bert_folder(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="session")
def st_dirs(tmp_path_factory, bert_dir):
    """{name: folder} for CLS+Normalize, mean, max and a folder with a default prompt."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("st")
    out = {
        "cls_norm": make_st_folder(bert_dir, root / "cls_norm", "cls", True),
        "mean": make_st_folder(bert_dir, root / "mean", "mean", False),
        "max": make_st_folder(bert_dir, root / "max", "max", False),
        "prompted": make_st_folder(
            bert_dir, root / "prompted", "mean", True, {"query": "what is ", "doc": ""}, "query"
        ),
    }
    json.loads((out["cls_norm"] / "modules.json").read_text())  # saved, readable
    return out
