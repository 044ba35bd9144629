"""Tiny offline models for the encoder tests: a random 2-layer BERT with a small WordPiece vocabulary saved as
a Hugging Face folder, and sentence-transformers folders built from it (helpers in ``tests/utils.py``)."""

from __future__ import annotations

import json

import pytest

from tests.utils import make_bert_folder, make_st_folder


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
