"""EAR runs: the model-driving half of the EAR objective (:mod:`xite_fast.objectives.ear` is the loss math).

* :func:`ear_losses`: a plain Hugging Face classifier with eager attention, run on the original and the
  perturbed batch.
* Inside :class:`~xite_fast.train.trainer.XiteTrainer`: :func:`add_perturbed_copies` gives a dataset its
  perturbed copies, and :func:`ear_forward` is :class:`~xite_fast.train.model.XiteModel`'s training forward
  when a batch carries them; :func:`attention_probs` recomputes a layer's attention probabilities from its
  own projections, so the pull works whatever attention implementation the model runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xite_fast.objectives.ear import EARLosses, ear_loss, ear_losses_from_outputs
from xite_fast.objectives.perturb import EmbeddingNeighbourPerturber, token_ids_in_texts

if TYPE_CHECKING:
    from xite_fast.train.model import XiteModel

__all__ = ["add_perturbed_copies", "attention_probs", "ear_forward", "ear_losses"]


def ear_losses(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    perturbed_batch: dict[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> EARLosses:
    """Run ``model`` on the original and the perturbed batch and return the EAR losses.

    Args:
        model: an HF sequence-classification model with eager attention.
        batch: tokenizer output (``input_ids``, ``attention_mask``, ...), optionally ``labels``.
        perturbed_batch: the perturbed copy (e.g. from
            :class:`xite_fast.objectives.perturb.EmbeddingNeighbourPerturber`).
        labels: (B,) int64; default ``batch["labels"]``.
        **kwargs: forwarded to :func:`~xite_fast.objectives.ear.ear_losses_from_outputs` (weights,
            ``attention_layer``, ...).
    """
    b = dict(batch)
    bp = dict(perturbed_batch)
    lab = labels if labels is not None else b.get("labels")
    if lab is None:
        raise ValueError("labels missing: pass labels= or include 'labels' in batch")
    # the model must not compute its own loss (we weight CE ourselves)
    b.pop("labels", None)
    bp.pop("labels", None)
    out = model(**b, output_hidden_states=True, output_attentions=True)
    out_p = model(**bp, output_hidden_states=True, output_attentions=True)
    return ear_losses_from_outputs(
        out, out_p, lab, b.get("attention_mask"), bp.get("attention_mask"), **kwargs
    )


def attention_probs(layer: nn.Module, hidden: torch.Tensor, layer_mask: Any) -> torch.Tensor:
    """Attention probabilities (B, heads, T, T) of a BERT/XLM-R (``attention.self.query/key``) or DistilBERT
    (``attention.q_lin/k_lin``) layer on its input hidden (B, T, D).

    softmax(Q Kᵀ / √d_head + mask) from the layer's own projections (before attention dropout), i.e. what
    eager attention returns with ``output_attentions=True``, whatever attention implementation the model
    runs. ``layer_mask`` is the mask the layer itself received (additive float, boolean True = attend, or
    None).
    """
    att = layer.attention
    sa = getattr(att, "self", None)
    if sa is not None and hasattr(sa, "query"):
        q_proj, k_proj = sa.query, sa.key
        heads = int(sa.num_attention_heads)
    elif hasattr(att, "q_lin"):
        q_proj, k_proj, heads = att.q_lin, att.k_lin, int(att.n_heads)
    else:
        raise ValueError(
            "EAR attention-pull needs a BERT-like (attention.self.query/key) or DistilBERT-like "
            f"(attention.q_lin/k_lin) layer, got {type(layer).__name__}"
        )
    B, T, D = hidden.shape
    dh = D // heads
    q = q_proj(hidden).view(B, T, heads, dh).transpose(1, 2)
    k = k_proj(hidden).view(B, T, heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if isinstance(layer_mask, torch.Tensor):
        m = layer_mask
        while m.ndim < 4:
            m = m.unsqueeze(1)
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
        else:
            scores = scores + m
    return scores.softmax(-1)


def add_perturbed_copies(
    dataset: Any, xm: XiteModel, tokenizer: Any, texts: Sequence[str], *, seed: int = 0
) -> None:
    """Add ``pert_input_ids``/``pert_attention_mask`` columns to an
    :class:`~xite_fast.train.collator.XiteDataset`: one embedding-neighbour-perturbed copy of every example
    (offline, seeded, same length; replacements restricted to the token ids of ``texts`` so the copies stay in
    the training language)."""
    cfg = xm.xite
    perturber = EmbeddingNeighbourPerturber(
        xm.model.get_input_embeddings(),
        tokenizer,
        rate=float(cfg.ear_rate),
        k=int(cfg.ear_k),
        seed=seed,
        candidate_ids=token_ids_in_texts(tokenizer, list(texts)),
    )
    rows = dataset.columns["input_ids"]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), int(tokenizer.pad_token_id or 0), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    out = perturber.perturb_ids(ids, mask)
    dataset.add_column("pert_input_ids", [out[i, : len(r)].tolist() for i, r in enumerate(rows)])
    dataset.add_column("pert_attention_mask", [[1] * len(r) for r in rows])


def ear_forward(
    xm: XiteModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    labels: torch.Tensor,
    pert_input_ids: torch.Tensor,
    pert_attention_mask: torch.Tensor,
) -> Any:
    """EAR loss of a :class:`~xite_fast.train.model.XiteModel` batch: originals and perturbed copies run as
    one 2B batch (through the frozen-prefix cache if on); hooks read the input of the first trainable
    layer (Embedding-Push; a constant without gradient when it is frozen) and the attention of layer
    ``ear_layer`` (Attention-Pull). Returns the model output with ``loss`` = the weighted total; the
    unweighted terms are kept in ``xm.ear_terms``."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    from xite_fast.train.model import _mask_index

    cfg = xm.xite
    B = input_ids.shape[0]
    att_idx = cfg.ear_layer(xm.num_layers) - 1
    F_ = cfg.freeze_layers if cfg.freeze_embeddings else 0
    push_idx = min(F_, xm.num_layers - 1)
    got: dict[str, Any] = {}
    name, pos = _mask_index(xm._layers[att_idx])

    def grab_push(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        got["push"] = args[0] if args else kwargs["hidden_states"]

    def grab_att(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        lm = kwargs[name] if name in kwargs else (args[pos] if len(args) > pos else None)
        got["att"] = attention_probs(mod, h, lm)

    ids = torch.cat([input_ids, pert_input_ids])
    mask = torch.cat([attention_mask, pert_attention_mask])
    types = torch.cat([token_type_ids, token_type_ids]) if token_type_ids is not None else None
    hs = [
        xm._layers[push_idx].register_forward_pre_hook(grab_push, with_kwargs=True),
        xm._layers[att_idx].register_forward_pre_hook(grab_att, with_kwargs=True),
    ]
    try:
        logits = xm._base(ids, mask, types).logits
    finally:
        for h in hs:
            h.remove()
    res = ear_loss(
        xm.loss(logits[:B], labels),
        xm.loss(logits[B:], labels),
        got["push"][:B],
        got["push"][B:],
        got["att"][:B],
        got["att"][B:],
        attention_mask,
        pert_attention_mask,
        ce_weight=cfg.ear_ce_weight,
        ce_perturbed_weight=cfg.ear_ce_perturbed_weight,
        push_weight=cfg.ear_push_weight,
        pull_weight=cfg.ear_pull_weight,
    )
    xm.ear_terms.append(
        {
            "ce": float(res.ce.detach()),
            "ce_perturbed": float(res.ce_perturbed.detach()),
            "push": float(res.embedding_push.detach()),
            "pull": float(res.attention_pull.detach()),
        }
    )
    return SequenceClassifierOutput(loss=res.total, logits=logits[:B])
