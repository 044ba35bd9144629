"""OT alignment objective (Alqahtani et al., Findings of EMNLP 2021) and the drift penalty.

For a mini-batch of parallel sentences of one language pair: the debiased Sinkhorn divergence between the
last-layer word embeddings of each target sentence and of its English translation (a word = its last
subword, found from the tokenizer's ``word_ids()``), plus a drift penalty λ·Σ‖c − c₀‖² keeping the English
token embeddings c close to those c₀ of the frozen starting model. Every loss takes Hugging Face model
outputs (``output_hidden_states=True``) or plain tensors, so any training loop can call them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xite_fast.ops.sinkhorn import sinkhorn_divergence

__all__ = ["word_ids_tensor", "pool_words", "ot_alignment_loss", "drift_penalty", "DriftPenalty"]

_POOLINGS = ("last", "first", "mean", "subword")


# ------------------------------------------------------------------------------------- helpers
def word_ids_tensor(encoding: Any, length: int | None = None) -> torch.Tensor:
    """Tokenizer word ids as a tensor, -1 for special and padding tokens.

    Args:
        encoding: a ``BatchEncoding`` from a fast tokenizer (has ``.word_ids(i)``), or a list of
            per-sentence lists of ``int | None`` (what ``word_ids()`` returns).
        length: pad/crop to this many tokens (default: the longest sequence).

    Returns:
        (B, T) int64 tensor.
    """
    if hasattr(encoding, "word_ids") and callable(encoding.word_ids):
        n = len(encoding["input_ids"])
        rows = [encoding.word_ids(i) for i in range(n)]
    elif isinstance(encoding, (list, tuple)):
        rows = list(encoding)
    else:
        raise ValueError(
            "encoding must be a BatchEncoding from a fast tokenizer or a list of word-id lists, got "
            f"{type(encoding).__name__}"
        )
    if not rows:
        raise ValueError("encoding must hold at least one sequence, got 0")
    t = length if length is not None else max(len(r) for r in rows)
    out = torch.full((len(rows), t), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        vals = [-1 if w is None else int(w) for w in r[:t]]
        out[i, : len(vals)] = torch.tensor(vals, dtype=torch.int64)
    return out


def _hidden(out: Any, layer: int, name: str) -> torch.Tensor:
    """(B, T, H) hidden states of ``layer`` from a tensor or an HF ModelOutput."""
    if isinstance(out, torch.Tensor):
        h = out
    else:
        hs = getattr(out, "hidden_states", None)
        if hs:
            if not -len(hs) <= layer < len(hs):
                raise ValueError(f"layer must index {name}.hidden_states (length {len(hs)}), got {layer}")
            h = hs[layer]
        elif layer == -1 and getattr(out, "last_hidden_state", None) is not None:
            h = out.last_hidden_state
        else:
            raise ValueError(
                f"{name} must be a (B, T, H) tensor or a model output with hidden_states "
                "(call the model with output_hidden_states=True)"
            )
    if h.ndim != 3:
        raise ValueError(f"{name} hidden states must be 3-D (B, T, H), got shape {tuple(h.shape)}")
    return h


def pool_words(
    hidden: torch.Tensor,
    word_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    pooling: str = "last",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Word embeddings from subword hidden states.

    Args:
        hidden: (B, T, H) float hidden states.
        word_ids: (B, T) int64, word index of each token, -1 for special/padding tokens (see
            :func:`word_ids_tensor`). Required unless ``pooling="subword"``.
        attention_mask: (B, T) 0/1; used by ``pooling="subword"`` (padding excluded).
        pooling: ``"last"`` (a word is its last subword, Alqahtani et al.), ``"first"``, ``"mean"``
            over its subwords, or ``"subword"`` (every real token is a point; special tokens are
            dropped when ``word_ids`` is given).

    Returns:
        points (B, W, H) and mask (B, W) bool (False = no such word in this sentence).
    """
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    bsz, t, _ = hidden.shape
    if pooling == "subword":
        mask = torch.ones(bsz, t, dtype=torch.bool, device=hidden.device)
        if attention_mask is not None:
            _check_bt("attention_mask", attention_mask, bsz, t)
            mask &= attention_mask.to(hidden.device) != 0
        if word_ids is not None:
            _check_bt("word_ids", word_ids, bsz, t)
            mask &= word_ids.to(hidden.device) >= 0
        return hidden, mask
    if word_ids is None:
        raise ValueError(f"word_ids (B, T) is required for pooling={pooling!r}")
    _check_bt("word_ids", word_ids, bsz, t)
    wid = word_ids.to(hidden.device).long()
    if attention_mask is not None:
        _check_bt("attention_mask", attention_mask, bsz, t)
        wid = torch.where(attention_mask.to(hidden.device) != 0, wid, torch.full_like(wid, -1))
    n_words = int(wid.max().item()) + 1
    if n_words <= 0:
        raise ValueError("word_ids holds no word (all -1): nothing to align")
    valid = wid >= 0
    slot = torch.where(valid, wid, torch.full_like(wid, n_words))  # invalid tokens go to a dump slot
    pos = torch.arange(t, device=hidden.device).expand(bsz, t)
    if pooling in ("last", "first"):
        init = -1 if pooling == "last" else t
        idx = torch.full((bsz, n_words + 1), init, dtype=torch.int64, device=hidden.device)
        idx = idx.scatter_reduce(
            1, slot, pos, reduce="amax" if pooling == "last" else "amin", include_self=True
        )
        idx = idx[:, :n_words]
        mask = (idx >= 0) & (idx < t)
        idx = torch.where(mask, idx, torch.zeros_like(idx))
        points = torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return points, mask
    # mean over subwords: scatter-add then divide by counts
    sums = torch.zeros(bsz, n_words + 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    sums = sums.scatter_add(1, slot.unsqueeze(-1).expand_as(hidden), hidden)[:, :n_words]
    counts = torch.zeros(bsz, n_words + 1, dtype=hidden.dtype, device=hidden.device)
    counts = counts.scatter_add(1, slot, torch.ones_like(slot, dtype=hidden.dtype))[:, :n_words]
    mask = counts > 0
    return sums / counts.clamp_min(1).unsqueeze(-1), mask


def _check_bt(name: str, t: Any, bsz: int, length: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor (B, T), got {type(t).__name__}")
    if tuple(t.shape) != (bsz, length):
        raise ValueError(f"{name} must have shape {(bsz, length)} (B, T), got {tuple(t.shape)}")


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (target, english), got {type(value).__name__}")
    return value[0], value[1]


# ------------------------------------------------------------------------------- OT alignment
def ot_alignment_loss(
    model_out_tgt: Any,
    model_out_en: Any,
    masks: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    *,
    word_ids: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    pooling: str = "last",
    layer: int = -1,
    normalize: bool = False,
    eps: float = 0.1,
    n_iters: int = 50,
    tol: float | None = None,
    eps_schedule: str | None = "anneal",
    debias: bool = True,
    backend: str = "auto",
    reduction: str = "mean",
) -> torch.Tensor:
    """Debiased Sinkhorn divergence between word embeddings of parallel sentences.

    Row i of the target batch must be the translation of row i of the English batch (one
    language pair per mini-batch). Each sentence is a uniform point cloud of its words; the loss
    is S_ε between the two clouds (see :func:`xite_fast.sinkhorn_divergence`), averaged over pairs.

    Args:
        model_out_tgt: target-language outputs: (B, T_t, H) hidden states or an HF ModelOutput
            (``hidden_states[layer]``, else ``last_hidden_state``).
        model_out_en: English outputs, (B, T_e, H) or ModelOutput.
        masks: (attention_mask_tgt (B, T_t), attention_mask_en (B, T_e)), 0/1; None = no padding.
        word_ids: (word_ids_tgt (B, T_t), word_ids_en (B, T_e)) int64, -1 for special/padding
            tokens (:func:`word_ids_tensor`). Required unless ``pooling="subword"``.
        pooling: ``"last"`` subword per word (default, as in the paper), ``"first"``, ``"mean"``,
            or ``"subword"`` (all real tokens).
        layer: hidden-state layer when outputs are ModelOutputs (-1 = last).
        normalize: L2-normalise the word embeddings first (cost ½‖x − y‖² = 1 − cos ∈ [0, 2], so
            ε has a fixed scale whatever the hidden-state norms).
        eps, n_iters, tol, eps_schedule, debias, backend: Sinkhorn settings. ε is in units of
            ½‖·‖² of the hidden states; annealing (the default here) keeps small ε stable for
            unnormalised hidden states.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (B,).

    Returns:
        scalar (or (B,)) float tensor, differentiable w.r.t. both hidden states.
    """
    h_t = _hidden(model_out_tgt, layer, "model_out_tgt")
    h_e = _hidden(model_out_en, layer, "model_out_en")
    if h_t.shape[0] != h_e.shape[0]:
        raise ValueError(
            "model_out_tgt and model_out_en must hold the same number of parallel sentences, got "
            f"{h_t.shape[0]} and {h_e.shape[0]}"
        )
    if h_t.shape[-1] != h_e.shape[-1]:
        raise ValueError(f"hidden sizes must match, got {h_t.shape[-1]} and {h_e.shape[-1]}")
    m_t, m_e = _pair("masks", masks)
    w_t, w_e = _pair("word_ids", word_ids)
    p_t, pm_t = pool_words(h_t, w_t, m_t, pooling)
    p_e, pm_e = pool_words(h_e, w_e, m_e, pooling)
    if normalize:
        p_t, p_e = F.normalize(p_t, dim=-1), F.normalize(p_e, dim=-1)
    for name, pm in (("target", pm_t), ("english", pm_e)):
        empty = (~pm.any(-1)).nonzero()
        if len(empty):
            raise ValueError(
                f"{name} sentence {int(empty[0, 0])} has no word/token to align (check masks and word_ids)"
            )
    return sinkhorn_divergence(
        p_t,
        p_e,
        x_mask=pm_t,
        y_mask=pm_e,
        eps=eps,
        n_iters=n_iters,
        tol=tol,
        eps_schedule=eps_schedule,
        debias=debias,
        backend=backend,
        reduction=reduction,
    )


def drift_penalty(
    hidden: torch.Tensor,
    frozen_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    weight: float = 1.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """λ·Σ_t ‖c_t − c⁰_t‖² over the real (English) tokens.

    Args:
        hidden: (B, T, H) current hidden states c.
        frozen_hidden: (B, T, H) hidden states c⁰ of the frozen starting model (no gradient).
        mask: (B, T) 0/1 attention mask; None = all tokens.
        weight: λ >= 0.
        reduction: ``"sum"`` (the formula), ``"batchmean"`` (sum / B) or ``"mean"`` (per token).

    Returns:
        scalar float tensor.
    """
    if hidden.shape != frozen_hidden.shape:
        raise ValueError(
            f"frozen_hidden must have the shape of hidden {tuple(hidden.shape)}, got "
            f"{tuple(frozen_hidden.shape)}"
        )
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be 3-D (B, T, H), got shape {tuple(hidden.shape)}")
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, got {weight!r}")
    if reduction not in ("sum", "batchmean", "mean"):
        raise ValueError(f"reduction must be one of ('sum', 'batchmean', 'mean'), got {reduction!r}")
    sq = (hidden - frozen_hidden.detach()).pow(2).sum(-1)
    if mask is not None:
        _check_bt("mask", mask, hidden.shape[0], hidden.shape[1])
        m = (mask != 0).to(sq.dtype)
        sq = sq * m
        n_tok = m.sum()
    else:
        n_tok = torch.tensor(float(sq.numel()), dtype=sq.dtype)
    total = sq.sum()
    if reduction == "batchmean":
        total = total / hidden.shape[0]
    elif reduction == "mean":
        total = total / n_tok.clamp_min(1)
    return weight * total


class DriftPenalty(nn.Module):
    """Drift penalty against a frozen copy of the starting model.

    ``DriftPenalty(model, weight=λ)`` deep-copies ``model`` once (frozen, eval mode); calling it
    with the current hidden states of an English batch and that batch's inputs runs the frozen copy
    under ``no_grad`` and returns :func:`drift_penalty`.

    Example:
        drift = DriftPenalty(model, weight=0.1)
        out_en = model(**batch_en, output_hidden_states=True)
        loss = ot_alignment_loss(out_tgt, out_en, ...) + drift(out_en, **batch_en)
    """

    def __init__(self, model: nn.Module, weight: float = 1.0, *, layer: int = -1, reduction: str = "sum"):
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        self.frozen = copy.deepcopy(model).eval()
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.weight = float(weight)
        self.layer = layer
        self.reduction = reduction

    def train(self, mode: bool = True) -> DriftPenalty:
        # the frozen model stays in eval mode (no dropout) whatever the trainer does
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(
        self, model_out: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ):
        hidden = _hidden(model_out, self.layer, "model_out")
        kwargs.pop("labels", None)
        with torch.no_grad():
            ref = self.frozen(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs
            )
        frozen_hidden = _hidden(ref, self.layer, "frozen model output")
        return drift_penalty(
            hidden, frozen_hidden, attention_mask, weight=self.weight, reduction=self.reduction
        )
