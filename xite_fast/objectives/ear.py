"""EAR (Ding et al., COLING 2022): CE on the original and on a perturbed copy of each English example,
−Embedding-Push (mean-pooled embedding-layer outputs pushed apart, weight 0.1) and Attention-Pull (attention
probabilities of one layer pulled together, weight 1). Takes HF model outputs or plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EARLosses",
    "embedding_push",
    "attention_pull",
    "ear_losses_from_outputs",
    "ear_losses",
    "attention_probs",
    "add_perturbed_copies",
    "ear_forward",
]

class EARLosses(NamedTuple):
    """Weighted total and the unweighted parts of the EAR objective (all scalar tensors)."""

    total: torch.Tensor
    ce: torch.Tensor
    ce_perturbed: torch.Tensor
    embedding_push: torch.Tensor  # −MSE (minimising it pushes the embeddings apart)
    attention_pull: torch.Tensor  # MSE


def _masked_mean_pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # the one masked mean-pool (the encoder's), so EAR pools exactly as the embeddings do
    from xite_fast.encode.onnx import pool

    return h.mean(1) if mask is None else pool(h, (mask != 0).long(), "mean")


def embedding_push(
    emb: torch.Tensor,
    emb_perturbed: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_perturbed: torch.Tensor | None = None,
) -> torch.Tensor:
    """−MSE between mean-pooled embedding-layer outputs of original and perturbed inputs.

    Args:
        emb: (B, T, H) embedding-layer outputs (``hidden_states[0]``) of the originals.
        emb_perturbed: (B, T', H) of the perturbed copies (T' may differ: each side is pooled
            over its own real tokens).
        mask, mask_perturbed: (B, T) / (B, T') attention masks, 0/1.

    Returns:
        scalar: −mean over (B, H) of (pool(emb) − pool(emb_perturbed))².
    """
    if emb.ndim != 3 or emb_perturbed.ndim != 3 or emb.shape[0] != emb_perturbed.shape[0]:
        raise ValueError(
            f"emb and emb_perturbed must be (B, T, H) with the same B, got {tuple(emb.shape)} and {tuple(emb_perturbed.shape)}"
        )
    return -F.mse_loss(_masked_mean_pool(emb, mask), _masked_mean_pool(emb_perturbed, mask_perturbed))


def attention_pull(
    att: torch.Tensor,
    att_perturbed: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_perturbed: torch.Tensor | None = None,
    *,
    length_mismatch: str = "skip",
) -> torch.Tensor:
    """MSE between attention probabilities of original and perturbed inputs.

    Tokens are compared position by position (token t of the original with token t of the copy),
    which is exact for token-for-token substitutions (:mod:`xite_fast.objectives.perturb` keeps lengths).
    Both maps are zero-padded to the longer T and the MSE is taken over (query, key) pairs real in
    both inputs. ``length_mismatch="skip"`` drops pairs whose numbers of real tokens differ (their
    positions no longer correspond); ``"pad"`` keeps them (compares the common positions).

    Args:
        att: (B, heads, T, T) attention probabilities of one layer for the originals.
        att_perturbed: (B, heads, T', T') for the perturbed copies.
        mask, mask_perturbed: (B, T) / (B, T') attention masks, 0/1 (None = all real).
        length_mismatch: ``"skip"`` or ``"pad"``.

    Returns:
        scalar MSE (0 when no pair qualifies).
    """
    if length_mismatch not in ("skip", "pad"):
        raise ValueError(f"length_mismatch must be 'skip' or 'pad', got {length_mismatch!r}")
    if att.ndim != 4 or att_perturbed.ndim != 4 or att.shape[:2] != att_perturbed.shape[:2]:
        raise ValueError(
            "att and att_perturbed must be (B, heads, T, T) with the same B and heads, "
            f"got {tuple(att.shape)} and {tuple(att_perturbed.shape)}"
        )
    bsz, _, t1, _ = att.shape
    t2 = att_perturbed.shape[-1]
    t = max(t1, t2)

    def _prep(a, m, tt):
        mm = torch.ones(bsz, tt, dtype=torch.bool, device=a.device) if m is None else (m.to(a.device) != 0)
        if tuple(mm.shape) != (bsz, tt):
            raise ValueError(f"attention mask must have shape {(bsz, tt)}, got {tuple(mm.shape)}")
        a = F.pad(a, (0, t - tt, 0, t - tt))
        mm = F.pad(mm, (0, t - tt), value=False)
        return a, mm

    a1, m1 = _prep(att, mask, t1)
    a2, m2 = _prep(att_perturbed, mask_perturbed, t2)
    both = m1 & m2
    keep = torch.ones(bsz, dtype=torch.bool, device=att.device)
    if length_mismatch == "skip":
        keep = m1.sum(-1) == m2.sum(-1)
    pair = (both.unsqueeze(-1) & both.unsqueeze(-2)) & keep.view(-1, 1, 1)  # (B, T, T)
    weight = pair.unsqueeze(1).to(a1.dtype).expand_as(a1)
    count = weight.sum()
    if count == 0:
        return (a1.sum() + a2.sum()) * 0.0  # keeps the graph/device, contributes nothing
    return ((a1 - a2).pow(2) * weight).sum() / count


def _resolve_layer(n_layers: int, attention_layer: int) -> int:
    if isinstance(attention_layer, bool) or not isinstance(attention_layer, int):
        raise ValueError(
            f"attention_layer must be an int (1-based, or -1 for the last), got {attention_layer!r}"
        )
    if attention_layer == -1:
        return n_layers - 1
    if not 1 <= attention_layer <= n_layers:
        raise ValueError(f"attention_layer must be in 1..{n_layers} (1-based) or -1, got {attention_layer}")
    return attention_layer - 1


def ear_losses_from_outputs(
    out: Any,
    out_perturbed: Any,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    attention_mask_perturbed: torch.Tensor | None = None,
    *,
    ce_weight: float = 1.0,
    ce_perturbed_weight: float = 1.0,
    push_weight: float = 0.1,
    pull_weight: float = 1.0,
    attention_layer: int = 6,
    length_mismatch: str = "skip",
    logits: torch.Tensor | None = None,
    logits_perturbed: torch.Tensor | None = None,
) -> EARLosses:
    """EAR objective from two HF outputs (original and perturbed batch).

    total = ce_weight·CE + ce_perturbed_weight·CE′ + push_weight·(−MSE_emb) + pull_weight·MSE_att,
    with MSE_emb between mean-pooled ``hidden_states[0]`` and MSE_att between the attention
    probabilities of ``attention_layer`` (1-based; 6 as in Ding et al.; -1 = last).

    Args:
        out, out_perturbed: outputs of the same model called with ``output_hidden_states=True``
            and ``output_attentions=True`` (eager attention), with ``.logits`` (B, C) unless
            ``logits``/``logits_perturbed`` are passed (e.g. from a separate head).
        labels: (B,) int64 class labels (shared by both copies).
        attention_mask, attention_mask_perturbed: (B, T) / (B, T') 0/1.
        ce_weight, ce_perturbed_weight, push_weight, pull_weight: term weights.
        attention_layer: layer whose attention is pulled.
        length_mismatch: see :func:`attention_pull`.

    Returns:
        :class:`EARLosses` (total, ce, ce_perturbed, embedding_push, attention_pull).
    """
    lg = logits if logits is not None else getattr(out, "logits", None)
    lg_p = logits_perturbed if logits_perturbed is not None else getattr(out_perturbed, "logits", None)
    if lg is None or lg_p is None:
        raise ValueError(
            "logits missing: pass a classification model output (with .logits) or logits=/logits_perturbed="
        )
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != lg.shape[0]:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a (B,) int64 tensor with B={lg.shape[0]}, got {got}")
    for name, o in (("out", out), ("out_perturbed", out_perturbed)):
        if not getattr(o, "hidden_states", None):
            raise ValueError(f"{name} has no hidden_states: call the model with output_hidden_states=True")
        if not getattr(o, "attentions", None):
            raise ValueError(
                f"{name} has no attentions: call the model with output_attentions=True and eager attention "
                "(load it with attn_implementation='eager'; sdpa/flash attention do not return probabilities)"
            )
    layer = _resolve_layer(len(out.attentions), attention_layer)
    ce = F.cross_entropy(lg, labels)
    ce_p = F.cross_entropy(lg_p, labels)
    push = embedding_push(
        out.hidden_states[0], out_perturbed.hidden_states[0], attention_mask, attention_mask_perturbed
    )
    pull = attention_pull(
        out.attentions[layer],
        out_perturbed.attentions[layer],
        attention_mask,
        attention_mask_perturbed,
        length_mismatch=length_mismatch,
    )
    total = ce_weight * ce + ce_perturbed_weight * ce_p + push_weight * push + pull_weight * pull
    return EARLosses(total, ce, ce_p, push, pull)


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
        perturbed_batch: the perturbed copy (e.g. from :class:`xite_fast.objectives.perturb.EmbeddingNeighbourPerturber`).
        labels: (B,) int64; default ``batch["labels"]``.
        **kwargs: forwarded to :func:`ear_losses_from_outputs` (weights, ``attention_layer``, ...).
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


# ------------------------------------------------------------------------- EAR inside XiteTrainer
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
            f"EAR attention-pull needs a BERT-like (attention.self.query/key) or DistilBERT-like (attention.q_lin/"
            f"k_lin) layer, got {type(layer).__name__}"
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


def add_perturbed_copies(dataset: Any, xm: Any, tokenizer: Any, texts: Sequence[str], *, seed: int = 0) -> None:
    """Add ``pert_input_ids``/``pert_attention_mask`` columns to an :class:`~xite_fast.train.collator.XiteDataset`:
    one embedding-neighbour-perturbed copy of every example (offline, seeded, same length; replacements
    restricted to the token ids of ``texts`` so the copies stay in the training language)."""
    from xite_fast.objectives.perturb import EmbeddingNeighbourPerturber, token_ids_in_texts

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
    xm: Any,
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

    cfg = xm.xite
    B = input_ids.shape[0]
    att_idx = cfg.ear_layer(xm.num_layers) - 1
    F_ = cfg.freeze_layers if cfg.freeze_embeddings else 0
    push_idx = min(F_, xm.num_layers - 1)
    got: dict[str, Any] = {}
    from xite_fast.train.model import _mask_index

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
    ce = xm.loss(logits[:B], labels)
    ce_p = xm.loss(logits[B:], labels)
    push = embedding_push(got["push"][:B], got["push"][B:], attention_mask, pert_attention_mask)
    pull = attention_pull(got["att"][:B], got["att"][B:], attention_mask, pert_attention_mask)
    total = (
        cfg.ear_ce_weight * ce
        + cfg.ear_ce_perturbed_weight * ce_p
        + cfg.ear_push_weight * push
        + cfg.ear_pull_weight * pull
    )
    xm.ear_terms.append(
        {"ce": float(ce.detach()), "ce_perturbed": float(ce_p.detach()), "push": float(push.detach()), "pull": float(pull.detach())}
    )
    return SequenceClassifierOutput(loss=total, logits=logits[:B])
