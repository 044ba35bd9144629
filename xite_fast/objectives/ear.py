"""EAR (Ding et al., COLING 2022): CE on the original and on a perturbed copy of each English example,
−Embedding-Push (mean-pooled embedding-layer outputs pushed apart, weight 0.1) and Attention-Pull (attention
probabilities of one layer pulled together, weight 1).

Tensors in, tensors out: :func:`ear_loss` takes the two CE terms, the embedding-layer outputs and the
attention probabilities; :func:`ear_losses_from_outputs` reads them from two Hugging Face outputs. Running
a model (a plain HF model, or :class:`~xite_fast.train.model.XiteModel` inside the trainer) is
:mod:`xite_fast.train.ear`'s.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from xite_fast.encode.pooling import pool

__all__ = [
    "ATTENTION_LAYER",
    "EARLosses",
    "attention_layer_index",
    "attention_pull",
    "ear_loss",
    "ear_losses_from_outputs",
    "embedding_push",
]

ATTENTION_LAYER = 6  # the layer whose attention Ding et al. pull (1-based)


class EARLosses(NamedTuple):
    """Weighted total and the unweighted parts of the EAR objective (all scalar tensors)."""

    total: torch.Tensor
    ce: torch.Tensor
    ce_perturbed: torch.Tensor
    embedding_push: torch.Tensor  # −MSE (minimising it pushes the embeddings apart)
    attention_pull: torch.Tensor  # MSE


def _masked_mean_pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # the one masked mean-pool (the encoder's), so EAR pools exactly as the embeddings do
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
            f"emb and emb_perturbed must be (B, T, H) with the same B, got {tuple(emb.shape)} and "
            f"{tuple(emb_perturbed.shape)}"
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


def attention_layer_index(
    n_layers: int, attention_layer: int | None = ATTENTION_LAYER, *, frozen: int = 0
) -> int:
    """0-based index of the layer whose attention EAR pulls: the one layer rule.

    Args:
        n_layers: layers of the model.
        attention_layer: 1-based layer, ``-1`` for the last, or ``None``: :data:`ATTENTION_LAYER` if it
            trains (``frozen < 6 <= n_layers``), else the first trainable layer (the last when all are
            frozen).
        frozen: how many leading layers are frozen (their attention cannot be pulled).
    """
    if attention_layer is None:
        a = ATTENTION_LAYER
        attention_layer = a if frozen < a <= n_layers else min(frozen + 1, n_layers)
    if isinstance(attention_layer, bool) or not isinstance(attention_layer, int):
        raise ValueError(
            f"attention_layer must be an int (1-based, or -1 for the last), got {attention_layer!r}"
        )
    if attention_layer == -1:
        return n_layers - 1
    if not 1 <= attention_layer <= n_layers:
        raise ValueError(f"attention_layer must be in 1..{n_layers} (1-based) or -1, got {attention_layer}")
    return attention_layer - 1


def ear_loss(
    ce: torch.Tensor,
    ce_perturbed: torch.Tensor,
    emb: torch.Tensor,
    emb_perturbed: torch.Tensor,
    att: torch.Tensor,
    att_perturbed: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_perturbed: torch.Tensor | None = None,
    *,
    ce_weight: float = 1.0,
    ce_perturbed_weight: float = 1.0,
    push_weight: float = 0.1,
    pull_weight: float = 1.0,
    length_mismatch: str = "skip",
) -> EARLosses:
    """The EAR objective from its tensors (the one weighted total).

    total = ce_weight·CE + ce_perturbed_weight·CE′ + push_weight·(−MSE_emb) + pull_weight·MSE_att.

    Args:
        ce, ce_perturbed: scalar task losses of the originals and of the perturbed copies.
        emb, emb_perturbed: (B, T, H) / (B, T', H) embedding-layer outputs (see :func:`embedding_push`).
        att, att_perturbed: (B, heads, T, T) / (B, heads, T', T') attention probabilities of the pulled
            layer (see :func:`attention_pull`).
        mask, mask_perturbed: (B, T) / (B, T') attention masks, 0/1.
        ce_weight, ce_perturbed_weight, push_weight, pull_weight: term weights.
        length_mismatch: see :func:`attention_pull`.

    Returns:
        :class:`EARLosses` (total, ce, ce_perturbed, embedding_push, attention_pull).
    """
    push = embedding_push(emb, emb_perturbed, mask, mask_perturbed)
    pull = attention_pull(att, att_perturbed, mask, mask_perturbed, length_mismatch=length_mismatch)
    total = ce_weight * ce + ce_perturbed_weight * ce_perturbed + push_weight * push + pull_weight * pull
    return EARLosses(total, ce, ce_perturbed, push, pull)


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
    attention_layer: int = ATTENTION_LAYER,
    length_mismatch: str = "skip",
    logits: torch.Tensor | None = None,
    logits_perturbed: torch.Tensor | None = None,
) -> EARLosses:
    """EAR objective from two HF outputs (original and perturbed batch).

    :func:`ear_loss` with CE = cross-entropy of the logits, the embedding-layer outputs
    ``hidden_states[0]`` and the attention probabilities of ``attention_layer`` (1-based; 6 as in Ding
    et al.; -1 = last; see :func:`attention_layer_index`).

    Args:
        out, out_perturbed: outputs of the same model called with ``output_hidden_states=True``
            and ``output_attentions=True`` (eager attention), with ``.logits`` (B, C) unless
            ``logits``/``logits_perturbed`` are passed (e.g. from a separate head).
        labels: (B,) int64 class labels (shared by both copies).
        attention_mask, attention_mask_perturbed: (B, T) / (B, T') 0/1.
        ce_weight, ce_perturbed_weight, push_weight, pull_weight: term weights.
        attention_layer: layer whose attention is pulled.
        length_mismatch: see :func:`attention_pull`.
        logits, logits_perturbed: (B, C) logits to use instead of ``out.logits``.

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
    layer = attention_layer_index(len(out.attentions), attention_layer)
    return ear_loss(
        F.cross_entropy(lg, labels),
        F.cross_entropy(lg_p, labels),
        out.hidden_states[0],
        out_perturbed.hidden_states[0],
        out.attentions[layer],
        out_perturbed.attentions[layer],
        attention_mask,
        attention_mask_perturbed,
        ce_weight=ce_weight,
        ce_perturbed_weight=ce_perturbed_weight,
        push_weight=push_weight,
        pull_weight=pull_weight,
        length_mismatch=length_mismatch,
    )
