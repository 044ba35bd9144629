"""Tokenized XITE examples (:class:`XiteDataset`) and the padding collator a plain ``Trainer`` accepts.

An example is the target text (or text pair) with its label and, for XITE stage 2, the matched source
text (or pair) whose label it inherits. Texts are tokenized once, when the data set is built (the frozen
-prefix cache keys on these token ids); :class:`XiteCollator` pads the target and source rows of a batch
to ONE length (the placements mix them position by position) on the right, with the tokenizer's pad id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["XiteDataset", "XiteCollator", "tokenize_texts"]

_FAMILIES = ("", "src_", "pert_")


def _check_texts(name: str, texts: Any, n: int | None = None) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a sequence of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} must not be empty, got 0 texts")
    if n is not None and len(texts) != n:
        raise ValueError(f"{name} must have one entry per text ({n}), got {len(texts)}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be str, got {type(t).__name__}")
    return list(texts)


def tokenize_texts(
    tokenizer: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    max_length: int = 128,
    prefix: str = "",
) -> dict[str, list[list[int]]]:
    """Token ids (special tokens added, truncated to ``max_length``; pairs through ``text_pair``) of every
    text; ``prefix`` goes before the first text of each example. Keys: input_ids, attention_mask and, if the
    tokenizer returns them, token_type_ids."""
    texts = _check_texts("texts", texts)
    pairs = _check_texts("text_pairs", text_pairs, len(texts)) if text_pairs is not None else None
    enc = tokenizer(
        [prefix + t for t in texts],
        text_pair=pairs,
        truncation=True,
        max_length=max_length,
        add_special_tokens=True,
    )
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in enc else [])
    return {k: [list(x) for x in enc[k]] for k in keys}


class XiteDataset(torch.utils.data.Dataset):
    """Tokenized examples for :class:`XiteCollator` (a torch Dataset: any ``Trainer`` takes it).

    Args:
        tokenizer: the model's (fast) tokenizer.
        texts: N target texts (stage 1: the labelled texts).
        labels: N class ids (int, already mapped by a :class:`xite_fast.train.config.LabelMap`), floats
            (regression) or (N, K) 0/1 rows (multi-label); None for prediction.
        text_pairs: N second texts (sentence pairs), or None.
        source_texts, source_text_pairs: N matched source texts (XITE stage 2), or None.
        max_length, prefix: see :func:`tokenize_texts`.
        drop_token_type_ids: drop token_type_ids (e5 usage) even if the tokenizer returns them.
    """

    def __init__(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        labels: Any = None,
        *,
        text_pairs: Sequence[str] | None = None,
        source_texts: Sequence[str] | None = None,
        source_text_pairs: Sequence[str] | None = None,
        max_length: int = 128,
        prefix: str = "",
        drop_token_type_ids: bool = False,
    ):
        tok = dict(max_length=max_length, prefix=prefix)
        # what the model is trained with (XiteTrainer saves it in the model's config.json)
        self.tokenization = dict(
            max_length=int(max_length),
            prefix=str(prefix),
            text_pair=text_pairs is not None,
            drop_token_type_ids=bool(drop_token_type_ids),
        )
        self.columns: dict[str, list] = {}
        for k, v in tokenize_texts(tokenizer, texts, text_pairs, **tok).items():
            self.columns[k] = v
        n = len(self.columns["input_ids"])
        if source_texts is not None:
            _check_texts("source_texts", source_texts, n)
            if (source_text_pairs is None) != (text_pairs is None):
                raise ValueError(
                    "source_text_pairs must be given exactly when text_pairs is (sentence-pair XITE)"
                )
            for k, v in tokenize_texts(tokenizer, source_texts, source_text_pairs, **tok).items():
                self.columns["src_" + k] = v
        if drop_token_type_ids:
            for k in [k for k in self.columns if k.endswith("token_type_ids")]:
                del self.columns[k]
        if labels is not None:
            y = np.asarray(labels)
            if len(y) != n:
                raise ValueError(f"labels must have one entry per text ({n}), got {len(y)}")
            if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
                raise ValueError(
                    f"labels must be class ids, floats or 0/1 rows, got dtype {y.dtype} (e.g. {y[0]!r}): map "
                    "your label values with xite_fast.train.trainer.label_map_for(model, "
                    "labels).encode(labels)"
                )
            self.columns["labels"] = list(y)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.columns.items()}

    def add_column(self, name: str, values: Sequence[Any]) -> None:
        if len(values) != len(self):
            raise ValueError(f"column {name!r} must have {len(self)} entries, got {len(values)}")
        self.columns[name] = list(values)


class XiteCollator:
    """Pads a list of :class:`XiteDataset` items into tensors: every id family (target, ``src_``,
    ``pert_``) to ONE common length T (right padding), ``labels`` as int64 (single-label) or float32
    (regression / multi-label, from ``problem_type``)."""

    def __init__(self, pad_id: int = 0, problem_type: str | None = None):
        self.pad_id = int(pad_id)
        self.problem_type = problem_type

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        f0 = features[0]
        fams = [p for p in _FAMILIES if p + "input_ids" in f0]
        T = max(len(f[p + "input_ids"]) for f in features for p in fams)
        out: dict[str, torch.Tensor] = {}
        for p in fams:
            for key, fill in (("input_ids", self.pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
                if p + key not in f0:
                    continue
                t = torch.full((len(features), T), fill, dtype=torch.long)
                for i, f in enumerate(features):
                    row = f[p + key]
                    t[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
                out[p + key] = t
        if "labels" in f0:
            y = np.asarray([f["labels"] for f in features])
            float_task = self.problem_type in ("regression", "multi_label_classification")
            out["labels"] = torch.as_tensor(y, dtype=torch.float32 if float_task else torch.long)
        if "lam" in f0:
            out["lam"] = torch.as_tensor([float(f["lam"]) for f in features], dtype=torch.float32)
        return out
