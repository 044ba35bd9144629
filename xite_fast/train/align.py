"""OT pre-alignment (Alqahtani et al. 2021) as a ``Trainer``: run before stage 1 on parallel sentences.

loss = S_ε(words(target), words(english)) + λ·Σ_t‖c_t − c⁰_t‖²: the debiased Sinkhorn divergence
(:func:`xite_fast.objectives.ot.ot_alignment_loss`) between the last-layer word embeddings (``pooling``:
last subword per word; special tokens and the prefix's words excluded) of each target sentence and its
English translation, plus the drift penalty on the English tokens' last-layer states c against c⁰ of the
model as it was when :func:`ot_align` started. Only the trainable layers (>= ``XiteConfig.freeze_layers``)
change; the classification head does not take part. ``TrainingArguments`` give epochs, lr, schedule,
device, logging, checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from xite_fast.train.model import XiteModel

__all__ = ["OTAlignConfig", "AlignResult", "ot_align", "OTAlignTrainer", "word_ids"]


@dataclass
class OTAlignConfig:
    """OT-stage options (the rest comes from ``TrainingArguments``).

    Attributes:
        batch_size: pairs per step (overrides ``per_device_train_batch_size``; None keeps it).
        eps: final Sinkhorn ε, in units of ½‖·‖² of the hidden states (unnormalised unless ``normalize``).
        n_iters: Sinkhorn iterations per OT problem.
        eps_schedule: None (constant ε) or "anneal" (ε-scaling).
        pooling: word = its "last" subword (the paper), "first", "mean" or "subword".
        normalize: L2-normalise word embeddings before OT.
        drift_weight: λ of the drift penalty (sum over tokens and features, mean over the pairs).
        dropout: run the trainable layers with dropout (False: deterministic, the drift is 0 at step 0).
        backend: Sinkhorn backend ("auto", "cpu", "torch").
    """

    batch_size: int | None = 16
    eps: float = 0.1
    n_iters: int = 50
    eps_schedule: str | None = "anneal"
    pooling: str = "last"
    normalize: bool = False
    drift_weight: float = 1.0
    dropout: bool = False
    backend: str = "auto"

    def validate(self) -> OTAlignConfig:
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(f"OTAlignConfig.batch_size must be None or an int >= 1, got {self.batch_size!r}")
        for name in ("eps", "drift_weight"):
            v = getattr(self, name)
            if (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not np.isfinite(v)
                or v < 0
                or (name == "eps" and v == 0)
            ):
                raise ValueError(
                    f"OTAlignConfig.{name} must be a finite float {'> 0' if name == 'eps' else '>= 0'}, got "
                    f"{v!r}"
                )
        if isinstance(self.n_iters, bool) or not isinstance(self.n_iters, int) or self.n_iters < 1:
            raise ValueError(f"OTAlignConfig.n_iters must be an int >= 1, got {self.n_iters!r}")
        if self.eps_schedule not in (None, "anneal"):
            raise ValueError(
                f"OTAlignConfig.eps_schedule must be None or 'anneal', got {self.eps_schedule!r}"
            )
        if self.pooling not in ("last", "first", "mean", "subword"):
            raise ValueError(
                "OTAlignConfig.pooling must be one of ('last', 'first', 'mean', 'subword'), got "
                f"{self.pooling!r}"
            )
        return self


@dataclass
class AlignResult:
    """Per-step ``losses`` (total), ``ot`` and ``drift`` (weighted) terms, ``pairs`` per language,
    ``seconds``."""

    losses: list[float] = field(default_factory=list)
    ot: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)
    pairs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def word_ids(tokenizer: Any, texts: Sequence[str], max_length: int, prefix: str) -> list[list[int]]:
    """Per text the word index of every token (-1: special tokens and the prefix's words)."""
    enc = tokenizer(
        [prefix + t for t in texts], truncation=True, max_length=max_length, add_special_tokens=True
    )
    n_prefix = 0
    if prefix.strip():
        pw = tokenizer([prefix.strip()], add_special_tokens=False).word_ids(0)
        n_prefix = len({w for w in pw if w is not None})
    return [
        [-1 if w is None or w < n_prefix else int(w) - n_prefix for w in enc.word_ids(i)]
        for i in range(len(texts))
    ]


class _PairData(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _collate(pad_id: int):
    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for side in ("en", "tg"):
            T = max(len(f[f"{side}_ids"]) for f in features)
            ids = torch.full((len(features), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(features), T), dtype=torch.long)
            wid = torch.full((len(features), T), -1, dtype=torch.long)
            for i, f in enumerate(features):
                n = len(f[f"{side}_ids"])
                ids[i, :n] = torch.as_tensor(f[f"{side}_ids"])
                mask[i, :n] = 1
                wid[i, :n] = torch.as_tensor(f[f"{side}_words"])
            out[f"{side}_input_ids"], out[f"{side}_attention_mask"], out[f"{side}_word_ids"] = ids, mask, wid
        T = out["en_input_ids"].shape[1]
        c0 = torch.zeros((len(features), T, features[0]["c0"].shape[-1]))
        for i, f in enumerate(features):
            c0[i, : f["c0"].shape[0]] = f["c0"]
        out["c0"] = c0
        return out

    return collate


class OTAlignTrainer(Trainer):
    """``Trainer`` whose loss is the OT alignment + drift objective of a :class:`XiteModel`."""

    def __init__(self, *args: Any, ot_config: OTAlignConfig, result: AlignResult, **kwargs: Any):
        self.ot_config = ot_config
        self.result = result
        super().__init__(*args, **kwargs)

    def compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, **kwargs: Any
    ) -> Any:
        from xite_fast.objectives.ot import drift_penalty, ot_alignment_loss

        cfg = self.ot_config
        xm = model.module if hasattr(model, "module") else model
        if not cfg.dropout:
            xm.eval()  # Trainer set train(); without dropout the drift is exactly 0 at step 0
        h_e = xm.last_hidden(inputs["en_input_ids"], inputs["en_attention_mask"])
        h_t = xm.last_hidden(inputs["tg_input_ids"], inputs["tg_attention_mask"])
        ot = ot_alignment_loss(
            h_t.float(),
            h_e.float(),
            (inputs["tg_attention_mask"], inputs["en_attention_mask"]),
            word_ids=(inputs["tg_word_ids"], inputs["en_word_ids"]),
            pooling=cfg.pooling,
            normalize=cfg.normalize,
            eps=cfg.eps,
            n_iters=cfg.n_iters,
            eps_schedule=cfg.eps_schedule,
            backend=cfg.backend,
        )
        drift = drift_penalty(
            h_e.float(),
            inputs["c0"].to(h_e.device),
            inputs["en_attention_mask"],
            weight=cfg.drift_weight,
            reduction="batchmean",
        )
        loss = ot + drift
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite alignment loss {loss.item()}; lower the lr or raise eps")
        self.result.losses.append(float(loss.detach()))
        self.result.ot.append(float(ot.detach()))
        self.result.drift.append(float(drift.detach()))
        return (loss, None) if return_outputs else loss


def ot_align(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]] | dict[str, Sequence[tuple[str, str]]],
    args: Any,
    config: OTAlignConfig | None = None,
) -> AlignResult:
    """OT pre-alignment of ``model`` (a :class:`XiteModel`; its freezing and cache apply) in place.

    Args:
        model: :class:`XiteModel` (wrap the user's model first to choose frozen layers / the cache).
        tokenizer: its tokenizer (``model.xite.max_length`` / ``prefix`` apply).
        pairs: ``[(english, target), ...]`` or ``{language: [(english, target), ...]}``.
        args: ``TrainingArguments`` (epochs, lr, schedule, device, ...).
        config: :class:`OTAlignConfig`.
    """
    cfg = (config or OTAlignConfig()).validate()
    if not isinstance(model, XiteModel):
        raise ValueError(f"model must be a XiteModel (wrap the user's model), got {type(model).__name__}")
    groups = dict(pairs) if isinstance(pairs, dict) else {"target": pairs}
    if not groups:
        raise ValueError("pairs must hold at least one language, got an empty dict")
    for lang, ps in groups.items():
        if isinstance(ps, str) or not isinstance(ps, Sequence) or len(ps) == 0:
            raise ValueError(f"pairs[{lang!r}] must be a non-empty sequence of (english, target) pairs")
        for i, p in enumerate(ps):
            if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p)):
                raise ValueError(f"pairs[{lang!r}][{i}] must be a (english, target) pair of str, got {p!r}")
    t0 = time.perf_counter()
    xc = model.xite
    result = AlignResult()
    rows: list[dict[str, Any]] = []
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    for lang, ps in groups.items():
        en, tg = [p[0] for p in ps], [p[1] for p in ps]
        enc_e = tokenizer([xc.prefix + t for t in en], truncation=True, max_length=xc.max_length)["input_ids"]
        enc_t = tokenizer([xc.prefix + t for t in tg], truncation=True, max_length=xc.max_length)["input_ids"]
        w_e, w_t = (
            word_ids(tokenizer, en, xc.max_length, xc.prefix),
            word_ids(tokenizer, tg, xc.max_length, xc.prefix),
        )
        keep = [i for i in range(len(ps)) if max(w_e[i]) >= 0 and max(w_t[i]) >= 0]
        if not keep:
            raise ValueError(f"pairs[{lang!r}] hold no pair with words on both sides")
        result.pairs[lang] = len(keep)
        # c0: the English last-layer states of the start model (eval mode, no grad)
        with torch.no_grad():
            for b in range(0, len(keep), 128):
                chunk = keep[b : b + 128]
                T = max(len(enc_e[i]) for i in chunk)
                ids = torch.full((len(chunk), T), int(tokenizer.pad_token_id or 0), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for j, i in enumerate(chunk):
                    ids[j, : len(enc_e[i])] = torch.as_tensor(enc_e[i])
                    mask[j, : len(enc_e[i])] = 1
                c0 = model.last_hidden(ids.to(dev), mask.to(dev)).float().cpu()
                for j, i in enumerate(chunk):
                    rows.append(
                        {
                            "en_ids": enc_e[i],
                            "en_words": w_e[i],
                            "tg_ids": enc_t[i],
                            "tg_words": w_t[i],
                            "c0": c0[j, : len(enc_e[i])].clone(),
                        }
                    )
    # trainable: layers >= freeze_layers (and the embeddings unless frozen); the head does not take part
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    body = set()
    for i in range(model.xite.freeze_layers, model.num_layers):
        body |= {id(p) for p in model._layers[i].parameters()}
    if not model.xite.freeze_embeddings:
        body |= {id(p) for p in model.embeddings_module().parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in body)
    if cfg.batch_size is not None:
        args.per_device_train_batch_size = cfg.batch_size
    if getattr(args, "remove_unused_columns", False):
        args.remove_unused_columns = False
    try:
        trainer = OTAlignTrainer(
            model=model,
            args=args,
            train_dataset=_PairData(rows),
            data_collator=_collate(int(tokenizer.pad_token_id or 0)),
            ot_config=cfg,
            result=result,
        )
        trainer.train()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
        model.train(was)
    result.seconds = time.perf_counter() - t0
    return result
