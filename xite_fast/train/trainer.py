"""XiteTrainer (a ``transformers.Trainer``) and the one-call helpers around it.

``TrainingArguments`` give the device, fp16/bf16, learning-rate schedule, gradient accumulation, logging,
checkpoints/resume and early stopping; nothing of that is re-implemented here. What XITE adds:

* :class:`XiteTrainer` wraps the user's ``AutoModelForSequenceClassification`` in a
  :class:`~xite_fast.train.model.XiteModel` (or takes one), pads with
  :class:`~xite_fast.train.collator.XiteCollator`, gives the head its own learning rate
  (``XiteConfig.head_lr``) and saves the *user's* model with ``save_pretrained`` (plus the tokenizer).
* :func:`match_sources` embeds source and target texts with the model and matches every target to its
  cosine top-1 source with :func:`xite_fast.xite.match.match_arrays` (the one matcher).
* :func:`fit_lda` fits the LDA language basis at the mixing level.
* :func:`train_xite` is stage 1 or stage 2 in one call: labels mapped, match (or take an ``augment``
  result: :mod:`xite_fast.train.data`), LDA, evaluation data, train. :func:`predict` returns logits,
  probabilities and decoded labels, with the tokenization saved in the model's config.
* Every save (``save_model`` and each checkpoint) is a model folder: ``from_pretrained`` and ``pipeline``
  load it; the wrapper's state lies beside it (:meth:`XiteModel.save_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from xite_fast._validation import check_positive_int
from xite_fast.train.collator import XiteCollator, XiteDataset, tokenize_texts
from xite_fast.train.config import LabelMap, XiteConfig, check_label, save_tokenization, saved_tokenization
from xite_fast.train.data import (
    Matching,
    RunPairs,
    as_labels,
    as_texts,
    augment_label_values,
    pairs_of_result,
)
from xite_fast.train.model import WRAPPER_LDA, XiteModel

# rows of an augment run sampled to fit the LDA basis (each is embedded once, in memory)
_LDA_ROWS = 20_000

log = logging.getLogger("xite_fast")


def _even_rows(n: int, k: int) -> np.ndarray:
    """At most ``k`` distinct, evenly spaced rows of ``range(n)``, sorted (the sample the LDA fit and the
    stage-2 estimate take of a large stage-2 set)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


__all__ = [
    "XiteTrainer",
    "Prediction",
    "predict",
    "embed_texts",
    "match_sources",
    "fit_lda",
    "train_xite",
    "Stage2Estimate",
    "stage2_estimate",
    "classification_metrics",
    "label_map_for",
]


def classification_metrics(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for ``Trainer``: accuracy and macro-F1 (sklearn's definition)."""
    from sklearn.metrics import f1_score

    logits, labels = eval_pred[0], eval_pred[1]
    logits = logits[0] if isinstance(logits, tuple) else logits
    pred = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    return {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro")),
    }


class XiteTrainer(Trainer):
    """``Trainer`` for stage 1 (plain targets), XITE stage 2 (``src_*`` columns) and EAR (``pert_*``).

    Args:
        model: the user's ``AutoModelForSequenceClassification`` or a :class:`XiteModel`.
        args: ``TrainingArguments`` (``remove_unused_columns`` is set to False: the collator needs its
            columns).
        xite_config: :class:`XiteConfig` used when ``model`` is not yet wrapped.
        lda_W: (D, r) float32 LDA basis for ``xite_config.lda`` (see :func:`fit_lda`).
        **kwargs: everything else ``Trainer`` takes (train_dataset, eval_dataset, processing_class,
            compute_metrics, callbacks, ...).
    """

    def __init__(
        self,
        model: Any,
        args: Any = None,
        *,
        xite_config: XiteConfig | None = None,
        lda_W: Any = None,
        **kwargs: Any,
    ):
        if not isinstance(model, XiteModel):
            model = XiteModel(model, xite_config)
        elif xite_config is not None and xite_config.resolved(model.model) != model.xite:
            raise ValueError(
                "xite_config differs from the config of the XiteModel given as model (model.xite): pass the "
                "plain model with xite_config=..., or leave xite_config out"
            )
        if lda_W is not None:
            model.set_lda(lda_W)
        if model.xite.lda and model.xite.placement != "none" and model.lda_W is None:
            raise ValueError(
                "XiteConfig.lda=True needs an LDA basis: pass lda_W (see xite_fast.train.trainer.fit_lda)"
            )
        if args is not None and getattr(args, "remove_unused_columns", False):
            args.remove_unused_columns = False
        tok = kwargs.get("processing_class")
        if kwargs.get("data_collator") is None:
            pad = getattr(tok, "pad_token_id", None) if tok is not None else None
            kwargs["data_collator"] = XiteCollator(
                pad if pad is not None else (model.config.pad_token_id or 0), model.config.problem_type
            )
        # the tokenization travels with the model (config.json): predict() and a reloaded model use it
        ds = kwargs.get("train_dataset")
        tok_settings = getattr(ds, "tokenization", None) or {
            "max_length": model.xite.max_length,
            "prefix": model.xite.prefix,
            "text_pair": False,
            "drop_token_type_ids": False,
        }
        save_tokenization(model.config, **tok_settings)
        super().__init__(model=model, args=args, **kwargs)
        self.matching: Matching | None = None
        self.label_map: LabelMap | None = None
        self.estimate: Stage2Estimate | None = None
        self.guard_decision: str | None = None
        # L2-SP anchor: the trainable weights as they are now (stage 2: the stage-1 model)
        self._l2sp_anchor: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        if model.xite.l2sp:
            self._l2sp_anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any) -> Any:
        """The model's loss, plus ``XiteConfig.l2sp * sum ||θ - θ_start||²`` over the trainable weights."""
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if not self._l2sp_anchor:
            return out
        loss, rest = (out[0], out[1]) if return_outputs else (out, None)
        pen = sum(((p - a.to(p.device)) ** 2).sum() for p, a in self._l2sp_anchor)
        loss = loss + self.model.xite.l2sp * pen
        return (loss, rest) if return_outputs else loss

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """AdamW as ``TrainingArguments`` say, with the head (and pooler) at ``XiteConfig.head_lr``."""
        model = self.model
        if self.optimizer is None and isinstance(model, XiteModel) and model.xite.head_lr is not None:
            decay = set(self.get_decay_parameter_names(model))
            base = model.model.base_model_prefix
            groups: dict[tuple[bool, bool], list] = {}
            for n, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                is_head = not n.startswith(f"model.{base}.") or n.startswith(f"model.{base}.pooler.")
                groups.setdefault((is_head, n in decay), []).append(p)
            cls, kw = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = cls(
                [
                    {
                        "params": ps,
                        "lr": model.xite.head_lr if is_head else self.args.learning_rate,
                        "weight_decay": self.args.weight_decay if dec else 0.0,
                    }
                    for (is_head, dec), ps in groups.items()
                ],
                **kw,
            )
        return super().create_optimizer(*args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Every save (``save_model`` and each ``checkpoint-N``) is a model folder: the user's model with
        ``save_pretrained`` (its ``config.json`` and weights under its own key names, so
        ``AutoModelForSequenceClassification.from_pretrained`` and ``pipeline`` load it), the tokenizer, and
        the wrapper's own state beside them (``xite_config.json``, ``xite_lda_W.npy``)."""
        if not isinstance(self.model, XiteModel):
            return super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return None
        os.makedirs(output_dir, exist_ok=True)
        inner = None
        if state_dict is not None:
            inner = {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}
        self.model.save_pretrained(output_dir, state_dict=inner)  # + the wrapper's state beside
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # weights: Trainer's loader, through XiteModel.load_state_dict (takes the user's model's key names)
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        xm = model if model is not None else self.model
        path = os.path.join(resume_from_checkpoint, WRAPPER_LDA)
        if isinstance(xm, XiteModel) and xm.lda_W is None and os.path.isfile(path):
            xm.set_lda(np.load(path))


# ------------------------------------------------------------------------------------------- helpers
def _wrap(model: Any) -> XiteModel:
    if isinstance(model, XiteModel):
        return model
    xm = XiteModel(model, XiteConfig(placement="none"))
    xm.training = model.training  # a new wrapper must not flip the user's model into train mode
    return xm


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(
    model: XiteModel,
    tokenizer: Any,
    texts,
    text_pairs,
    max_length: int,
    prefix: str,
    batch_size: int,
    drop_types: bool,
):
    enc = tokenize_texts(tokenizer, texts, text_pairs, max_length=max_length, prefix=prefix)
    if drop_types:
        enc.pop("token_type_ids", None)
    order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    coll = XiteCollator(pad)
    dev = _device(model)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = coll([{k: v[i] for k, v in enc.items()} for i in idx])
        yield idx, {k: v.to(dev) for k, v in batch.items()}


@torch.no_grad()
def embed_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    level: str = "mean",
    max_length: int = 128,
    prefix: str = "",
    batch_size: int = 64,
    drop_token_type_ids: bool = False,
) -> np.ndarray:
    """(N, D) float32 representations of texts (or text pairs) in eval mode; ``level`` as in
    :meth:`XiteModel.representations` ("mean", "sentence", "input", "hidden")."""
    xm = _wrap(model)
    was = xm.training
    xm.eval()
    out: np.ndarray | None = None
    try:
        for idx, b in _batches(
            xm, tokenizer, texts, text_pairs, max_length, prefix, batch_size, drop_token_type_ids
        ):
            r = xm.representations(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), level=level)
            if out is None:
                out = np.empty((len(texts), r.shape[1]), dtype=np.float32)
            out[idx] = r.float().cpu().numpy()
    finally:
        xm.train(was)
    return out


def match_sources(
    model: Any,
    tokenizer: Any,
    source_texts: Sequence[str],
    target_texts: Sequence[str],
    *,
    source_text_pairs: Sequence[str] | None = None,
    target_text_pairs: Sequence[str] | None = None,
    level: str = "mean",
    center: bool = True,
    backend: str = "auto",
    k: int = 1,
    **embed_kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """XITE matching in the model's space: every target's cosine top-1 source (pairs: the pair's
    embedding), via :func:`xite_fast.xite.match.match_arrays` (per-language centering by default).
    ``k > 1``: the k nearest sources, best first (column 0 is the match; capped at the source count).

    Returns:
        indices (N_tgt,) int64 into ``source_texts``, scores (N_tgt,) float32; with ``k > 1`` both
        (N_tgt, k).
    """
    from xite_fast.xite.match import match_arrays

    k = check_positive_int("k", k)
    src = embed_texts(model, tokenizer, source_texts, source_text_pairs, level=level, **embed_kw)
    tgt = embed_texts(model, tokenizer, target_texts, target_text_pairs, level=level, **embed_kw)
    scores, idx = match_arrays(tgt, src, min(k, len(src)), center=center, backend=backend)
    idx, scores = np.asarray(idx).astype(np.int64), np.asarray(scores).astype(np.float32)
    return (idx[:, 0], scores[:, 0]) if k == 1 else (idx, scores)


def fit_lda(
    model: XiteModel,
    tokenizer: Any,
    source_texts: Sequence[str],
    target_texts: Sequence[str],
    *,
    source_text_pairs: Sequence[str] | None = None,
    target_text_pairs: Sequence[str] | None = None,
    extra_languages: Mapping[str, Sequence[str]] | None = None,
    **embed_kw: Any,
) -> np.ndarray:
    """LanguageLDA basis W (D, r) float32 fitted on the (distinct) source and target representations at
    the mixing level of ``model.xite.placement`` (head input / word embeddings / states entering L).

    ``extra_languages`` (``{name: texts}``, or ``{name: (texts, text_pairs)}`` for sentence pairs) adds
    unlabelled text of further languages as further LDA classes, so r can reach C − 1 > 1 (the paper's
    LDA has the languages as classes). ``model.xite.lda_components`` sets r; ``model.xite.lda_basis``
    ``"means"`` returns :meth:`xite_fast.LanguageLDA.mean_basis` (the span of the language means) instead of
    the Fisher subspace.
    """
    from xite_fast.xite.lda import fit_language_basis

    level = {"sentence": "sentence", "input": "input", "hidden": "hidden"}.get(model.xite.placement, "mean")

    def distinct(texts, pairs):
        keep = list(
            dict.fromkeys(zip(texts, pairs if pairs is not None else [None] * len(texts), strict=True))
        )
        return [k[0] for k in keep], ([k[1] for k in keep] if pairs is not None else None)

    groups = [("src", source_texts, source_text_pairs), ("tgt", target_texts, target_text_pairs)]
    for name, value in (extra_languages or {}).items():
        texts, pairs = value if isinstance(value, tuple) else (value, None)
        if name in ("src", "tgt"):
            raise ValueError(
                f"extra_languages keys must not be 'src' or 'tgt' (used for source/target), got {name!r}"
            )
        if len(texts) == 0:
            raise ValueError(f"extra_languages[{name!r}] must hold at least one text, got 0")
        groups.append((str(name), texts, pairs))
    X = [
        embed_texts(model, tokenizer, *distinct(texts, pairs), level=level, **embed_kw)
        for _, texts, pairs in groups
    ]
    return fit_language_basis(
        X, [name for name, _, _ in groups], n_components=model.xite.lda_components, basis=model.xite.lda_basis
    )


def label_map_for(
    model: Any, labels: Sequence[Any] | None = None, names: Sequence[Any] | None = None
) -> LabelMap | None:
    """The label map of a classification model: ``names`` if given, else the one in its config (non-default
    id2label), else built from ``labels``; checked against ``num_labels``. None for regression/multi-label."""
    cfg = model.config
    if cfg.problem_type in ("regression", "multi_label_classification"):
        return None
    if cfg.problem_type is None and cfg.num_labels == 1:
        return None
    if names is None and labels is None and LabelMap.from_config(cfg) is None:
        raise ValueError("no labels to build the label map from: pass the source labels (or label_names=)")
    lm = LabelMap(names=names) if names is not None else (LabelMap.from_config(cfg) or LabelMap(labels))
    if len(lm) != cfg.num_labels:
        raise ValueError(
            f"the labels have {len(lm)} classes {lm.values[:10]} but the model has "
            f"num_labels={cfg.num_labels}: load it with "
            f"AutoModelForSequenceClassification.from_pretrained(..., num_labels={len(lm)}, id2label=..., "
            "label2id=...)"
        )
    lm.apply(cfg)
    return lm


def _targets(model: Any, labels: Any, lm: LabelMap | None) -> Any:
    cfg = model.config
    if lm is not None:
        return lm.encode(list(labels))
    y = np.asarray(labels, dtype=np.float32)
    if cfg.problem_type == "multi_label_classification" and (y.ndim != 2 or y.shape[1] != cfg.num_labels):
        raise ValueError(
            f"multi-label labels must be (N, num_labels={cfg.num_labels}) 0/1 rows, got shape {y.shape}"
        )
    if cfg.problem_type != "multi_label_classification" and y.ndim != 1:
        raise ValueError(f"regression labels must be (N,) floats, got shape {y.shape}")
    return y


def _is_classification(config: Any) -> bool:
    pt = config.problem_type
    return not (pt in ("regression", "multi_label_classification") or (pt is None and config.num_labels == 1))


def _table_columns(obj: Any) -> list[str] | None:
    """The column names of a table (pandas DataFrame, datasets Dataset, dict of columns), else None."""
    from xite_fast.data.records import table_kind

    kind = table_kind(obj)
    if kind == "frame":
        return [str(c) for c in obj.columns]
    if kind == "dataset":
        return list(obj.column_names)
    if kind == "dict":
        return [str(k) for k in obj]
    return None


def _is_run(augment: Any) -> bool:
    """An :class:`~xite_fast.xite.pipeline.AugmentRun` (a run directory), not an in-memory result."""
    return hasattr(augment, "manifest") and hasattr(augment, "out")


def _augment_arg(augment: Any) -> Any:
    """``augment=`` as given: an AugmentRun, an AugmentResult, or a run directory's path (read as a run)."""
    if isinstance(augment, (str, os.PathLike)):
        from pathlib import Path

        path = Path(augment).expanduser() / "synthetic" / "manifest.json"
        if not path.is_file():
            raise ValueError(
                f"augment={str(augment)!r} is not an augment run directory (no {path}): run xf.run_augment "
                "first"
            )
        from types import SimpleNamespace

        with open(path, encoding="utf-8") as fh:
            return SimpleNamespace(out=Path(augment).expanduser(), manifest=json.load(fh))
    if _is_run(augment) or all(hasattr(augment, a) for a in ("target_id", "source_id", "labels")):
        return augment
    raise ValueError(
        "augment must be what xf.run_augment returns (an AugmentRun, or its run directory's path) or what "
        f"XiteAugmenter.augment returns (an AugmentResult), got {type(augment).__name__}"
    )


def train_xite(
    model: Any,
    tokenizer: Any,
    args: Any,
    *,
    source_texts: Sequence[str] | None = None,
    source_labels: Sequence[Any] | None = None,
    target_texts: Sequence[str] | None = None,
    source_text_pairs: Sequence[str] | None = None,
    target_text_pairs: Sequence[str] | None = None,
    augment: Any = None,
    xite_config: XiteConfig | None = None,
    label_names: Sequence[Any] | None = None,
    eval_texts: Sequence[str] | None = None,
    eval_labels: Sequence[Any] | None = None,
    eval_text_pairs: Sequence[str] | None = None,
    train: bool = True,
    **trainer_kw: Any,
) -> XiteTrainer:
    """Stage 1 or XITE stage 2 in one call; returns the (trained) :class:`XiteTrainer`.

    * **stage 1** (no ``target_texts``, no ``augment``): plain supervised training on ``source_texts`` /
      ``source_labels`` (with ``xite_config.ear``: EAR, perturbed copies made here).
    * **stage 2**: every target text is paired with a source: its cosine top-1 in the model's own space
      (:func:`match_sources`) whose label it inherits, or the pairs of ``augment``: an
      :class:`~xite_fast.xite.augmenter.AugmentResult` of :class:`~xite_fast.XiteAugmenter` (row ids into
      ``source_texts`` / ``target_texts``, which must be given and are checked), or an
      :class:`~xite_fast.xite.pipeline.AugmentRun` of :func:`~xite_fast.run_augment` (read from its run
      directory on demand, never loaded whole; the texts are the run's own, so the corpora may be left out;
      given, they are checked row by row).

    Labels are the user's values (ints, strings, ...; ``None``/NaN/dicts are errors); the classes are those
    of the SOURCE (a class no target was matched to stays a class; ``label_names`` fixes the order), mapped
    with :func:`label_map_for` into ``model.config``. ``eval_texts`` / ``eval_labels`` (``eval_text_pairs``)
    become the ``eval_dataset`` with the same map (``compute_metrics`` defaults to
    :func:`classification_metrics`); so does an ``eval_dataset`` of raw text (a pandas DataFrame,
    ``datasets.Dataset`` or dict of columns ``text``, ``label`` and optionally ``text_pair``). The
    tokenization (``xite_config.max_length`` / ``prefix``, pairs) is saved in ``model.config.xite_fast`` (so
    in ``config.json``) and :func:`predict` uses it.

    ``trainer.matching`` (a :class:`~xite_fast.train.data.Matching`: target/source ids, similarities,
    labels) says what stage 2 trained on (None for stage 1). ``trainer.estimate`` (a
    :class:`Stage2Estimate`, classifiers only; None for stage 1 or ``xite_config.estimate_rows=0``) is the
    label-free estimate of whether stage 2 beats the stage-1 model, computed before training.
    ``args.seed`` seeds training, not the classifier head, which ``from_pretrained`` initialised before
    this call: for a reproducible head call ``transformers.set_seed(seed)`` before loading the model.
    """
    if isinstance(model, XiteModel):
        if xite_config is not None and xite_config.resolved(model.model, tokenizer) != model.xite:
            raise ValueError(
                "xite_config differs from the config of the XiteModel given as model (model.xite): pass the "
                "plain model with xite_config=..., or leave xite_config out"
            )
        xm = model
    else:
        xm = XiteModel(model, (xite_config or XiteConfig()).resolved(model, tokenizer))
    cfg = xm.xite
    kw = dict(max_length=cfg.max_length, prefix=cfg.prefix)
    classes = _is_classification(xm.config)
    src = as_texts("source_texts", source_texts) if source_texts is not None else None
    tgt = as_texts("target_texts", target_texts) if target_texts is not None else None
    sp = (
        as_texts("source_text_pairs", source_text_pairs, len(src))
        if source_text_pairs is not None and src is not None
        else None
    )
    tp = (
        as_texts("target_text_pairs", target_text_pairs, len(tgt))
        if target_text_pairs is not None and tgt is not None
        else None
    )
    for name, pairs, texts in (
        ("source_text_pairs", source_text_pairs, src),
        ("target_text_pairs", target_text_pairs, tgt),
    ):
        if pairs is not None and texts is None:
            raise ValueError(f"{name} given without {name.replace('_pairs', 's')}")
    ys = None
    if source_labels is not None:
        if src is None:
            raise ValueError("source_labels given without source_texts")
        ys = as_labels("source_labels", source_labels, len(src), classes=classes)
    pick = lambda xs, ids: [xs[i] for i in ids] if xs is not None else None  # noqa: E731
    matching: Matching | None = None
    lm: LabelMap | None = None
    nid = source_label_ids = None  # matching done here: (N_tgt, k) nearest sources, source label ids
    lda_texts = None
    if augment is not None:
        augment = _augment_arg(augment)
        if not classes:
            raise ValueError(
                "augment= transfers class labels: the model must be a single-label classifier "
                f"(got problem_type={xm.config.problem_type!r}, num_labels={xm.config.num_labels})"
            )
        values = augment_label_values(augment) or (ys if ys is not None else None)
        if _is_run(augment):
            lm = label_map_for(xm, values, label_names)
            ds = RunPairs(
                augment,
                tokenizer,
                lm,
                source_texts=src,
                target_texts=tgt,
                source_text_pairs=sp,
                target_text_pairs=tp,
                source_labels=ys,
                **kw,
            )
            matching = ds.matching()
            if cfg.lda and cfg.placement != "none" and xm.lda_W is None:
                n = len(ds)
                rows = _even_rows(n, _LDA_ROWS)
                t, s, tpp, spp = ds.texts(rows)
                lda_texts = (s, t, spp, tpp)
        else:
            tid, sid, labels, sim = pairs_of_result(
                augment, None if src is None else len(src), None if tgt is None else len(tgt)
            )
            if ys is not None:
                for j, (v, i) in enumerate(zip(labels, sid, strict=True)):
                    if LabelMap._key(check_label(v, f"augment.labels[{j}]")) != LabelMap._key(ys[i]):
                        raise ValueError(
                            f"augment.labels[{j}] = {v!r} but source_labels[{i}] = {ys[i]!r}: the augment "
                            "result was made from other source labels (or other source_texts)"
                        )
            lm = label_map_for(xm, values if values is not None else labels, label_names)
            y = lm.encode(labels, name="augment.labels")
            ds = XiteDataset(
                tokenizer,
                pick(tgt, tid),
                y,
                text_pairs=pick(tp, tid),
                source_texts=pick(src, sid),
                source_text_pairs=pick(sp, sid),
                **kw,
            )
            matching = Matching(tid, sid, sim, y, list(lm.values))
            lda_texts = (pick(src, sid), pick(tgt, tid), pick(sp, sid), pick(tp, tid))
    else:
        if src is None or ys is None:
            raise ValueError(
                "source_texts and source_labels must be given (or augment=, a run_augment / XiteAugmenter "
                "result)"
            )
        lm = label_map_for(xm, ys, label_names) if classes else None
        if tgt is None:  # stage 1
            ds = XiteDataset(tokenizer, src, _targets(xm, ys, lm), text_pairs=sp, **kw)
            if cfg.ear:
                from xite_fast.train.ear import add_perturbed_copies

                add_perturbed_copies(ds, xm, tokenizer, src, seed=int(getattr(args, "seed", 0)))
        else:
            if (sp is None) != (tp is None):
                raise ValueError(
                    "source_text_pairs and target_text_pairs must be given together (sentence pairs)"
                )
            # the estimate's neighbour votes come from the same top-k pass (only when it will run)
            votes = classes and lm is not None and cfg.estimate_rows > 0
            nid, nsim = match_sources(
                xm,
                tokenizer,
                src,
                tgt,
                source_text_pairs=sp,
                target_text_pairs=tp,
                backend=cfg.backend,
                k=cfg.estimate_neighbours if votes else 1,
                **kw,
            )
            nid, nsim = nid.reshape(len(tgt), -1), nsim.reshape(len(tgt), -1)  # (N_tgt, k), k may be 1
            sid, sim = nid[:, 0], nsim[:, 0]
            if votes:
                source_label_ids = lm.encode(ys, name="source_labels")
            tid = np.arange(len(tgt))
            y = _targets(xm, [ys[i] for i in sid], lm)
            ds = XiteDataset(
                tokenizer,
                tgt,
                y,
                text_pairs=tp,
                source_texts=pick(src, sid),
                source_text_pairs=pick(sp, sid),
                **kw,
            )
            matching = Matching(tid, sid, sim, y, list(lm.values) if lm is not None else None)
            lda_texts = (pick(src, sid), tgt, pick(sp, sid), tp)
    estimate = None
    if matching is not None and classes and cfg.estimate_rows and len(matching):
        n = len(matching)
        rows = _even_rows(n, cfg.estimate_rows)
        if isinstance(ds, RunPairs):
            et, _, etp, _ = ds.texts(rows)
        else:
            et = [tgt[i] for i in matching.target_id[rows]]
            etp = None if tp is None else [tp[i] for i in matching.target_id[rows]]
        estimate = stage2_estimate(  # the rows are the sample already: max_rows keeps them all
            xm,
            tokenizer,
            et,
            matching.label_ids[rows],
            etp,
            similarity=matching.similarity[rows],
            neighbour_label_ids=None
            if source_label_ids is None
            else source_label_ids[nid[matching.target_id[rows]]],  # the sample's (rows, k) votes
            max_rows=len(rows),
            **kw,
        )
        log.info("train_xite: stage-2 estimate before training %s", estimate.as_dict())
    guard, skip = None, False
    if cfg.guard and matching is not None:
        if estimate is None:
            raise ValueError(
                "XiteConfig.guard=True needs the stage-2 estimate: a single-label classifier and "
                f"estimate_rows >= 1 (got problem_type={xm.config.problem_type!r}, "
                f"estimate_rows={cfg.estimate_rows})"
            )
        skip = not estimate.helps(cfg.guard_min_disagreement)
        what = f"disagreement {1 - estimate.agreement:.3f}"
        guard = (
            f"skipped stage 2: {what} < {cfg.guard_min_disagreement} (the model is the stage-1 model)"
            if skip
            else f"trained stage 2: {what} >= {cfg.guard_min_disagreement}"
        )
        log.info("train_xite: guard %s", guard)
    if cfg.lda and cfg.placement != "none" and xm.lda_W is None and lda_texts is not None:
        s, t, spp, tpp = lda_texts
        xm.set_lda(fit_lda(xm, tokenizer, s, t, source_text_pairs=spp, target_text_pairs=tpp, **kw))
    names = ("eval_texts", "eval_text_pairs", "eval_labels")
    cols = _table_columns(trainer_kw.get("eval_dataset"))
    if cols is not None:  # an eval_dataset of raw text: columns text, label (and text_pair)
        if eval_texts is not None or eval_labels is not None:
            raise ValueError("give eval_texts/eval_labels or eval_dataset, not both")
        if "label" not in cols:
            raise ValueError(f"eval_dataset (a table of raw text) needs a 'label' column, got columns {cols}")
        table = trainer_kw.pop("eval_dataset")
        eval_texts, eval_labels = table, table["label"]
        eval_text_pairs = table["text_pair"] if "text_pair" in cols else None
        names = ("eval_dataset", "eval_dataset['text_pair']", "eval_dataset['label']")
    if eval_texts is not None or eval_labels is not None:
        if eval_texts is None or eval_labels is None:
            raise ValueError("eval_texts and eval_labels must be given together")
        if trainer_kw.get("eval_dataset") is not None:
            raise ValueError("give eval_texts/eval_labels or eval_dataset, not both")
        et = as_texts(names[0], eval_texts)
        ep = as_texts(names[1], eval_text_pairs, len(et)) if eval_text_pairs is not None else None
        el = as_labels(names[2], eval_labels, len(et), classes=classes)
        trainer_kw["eval_dataset"] = XiteDataset(
            tokenizer,
            et,
            lm.encode(el, name=names[2]) if lm is not None else _targets(xm, el, None),
            text_pairs=ep,
            **kw,
        )
        if classes and xm.config.problem_type != "multi_label_classification":
            trainer_kw.setdefault("compute_metrics", classification_metrics)
    trainer = XiteTrainer(xm, args, train_dataset=ds, processing_class=tokenizer, **trainer_kw)
    trainer.matching = matching
    trainer.label_map = lm
    trainer.estimate = estimate
    trainer.guard_decision = guard
    if train and not skip:
        trainer.train()
    return trainer


@dataclass
class Stage2Estimate:
    """A label-free estimate, made before stage 2, of whether training on the matched labels beats the
    stage-1 model (zero-shot) on the target: :func:`stage2_estimate`, ``trainer.estimate`` of
    :func:`train_xite`.

    Where the matched (transferred) label and the stage-1 prediction agree, training on it changes
    little: :meth:`helps` says stage 2 should beat zero-shot when enough rows disagree (measured: the
    one signal with the right sign on every measured cell; README "Which stage 2 should I use?"). Where
    they disagree, exactly one of them can be right (binary) and the labels of the ``neighbours``
    sources nearest the target vote on which: ``predicted_gain``, the share of disagreeing rows times
    the vote margin of the matched label, a diagnostic (right on binary sentiment, wrong on 19-topic
    chatterbot, where the votes are diluted).

    Attributes:
        rows: target rows it was computed on (an even sample of the matched rows).
        agreement: share of them whose stage-1 prediction is the matched label.
        stage1_confidence: the stage-1 model's mean top probability on them.
        matched_accuracy: the matched labels' accuracy if they and the stage-1 model erred independently
            (a = m c + (1 - m)(1 - c) / (K - 1) solved for m; NaN when c <= 1/K). Kept for reference: the
            two err together (both come from one representation), so it runs high and is not the signal.
        neighbours: k, the sources whose labels vote (0: not known, e.g. an ``augment=`` result).
        vote_matched: mean share of the k votes for the matched label, over the disagreeing rows.
        vote_stage1: the same for the stage-1 prediction.
        predicted_gain: ``(1 - agreement) * (vote_matched - vote_stage1)`` (NaN without neighbours; 0
            when every row agrees).
        mean_similarity: mean cosine similarity of the matches (NaN where not known).
    """

    rows: int
    agreement: float
    stage1_confidence: float
    matched_accuracy: float
    neighbours: int
    vote_matched: float
    vote_stage1: float
    predicted_gain: float
    mean_similarity: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def helps(self, min_disagreement: float | None = None) -> bool:
        """Whether stage 2 is predicted to beat zero-shot: at least ``min_disagreement`` of the rows have a
        matched label other than the stage-1 prediction (``XiteConfig.guard`` uses it; None: the default
        of ``XiteConfig.guard_min_disagreement``)."""
        if min_disagreement is None:
            min_disagreement = XiteConfig.guard_min_disagreement
        return bool(1.0 - self.agreement >= min_disagreement)

    @classmethod
    def from_predictions(
        cls,
        probabilities: Any,
        matched_label_ids: Any,
        similarity: Any = None,
        neighbour_label_ids: Any = None,
    ) -> Stage2Estimate:
        """The estimate from the stage-1 model's (n, K) class probabilities on n target rows, their
        matched label ids, optionally the match similarities and the (n, k) label ids of each row's k
        nearest sources (column 0: the match)."""
        p = np.asarray(probabilities, dtype=np.float64)
        y = np.asarray(matched_label_ids).astype(np.int64)
        if p.ndim != 2 or y.shape != (p.shape[0],) or not len(y):
            raise ValueError(
                f"probabilities must be (n, K) with n >= 1 and matched_label_ids (n,), got shapes {p.shape} "
                f"and {y.shape}"
            )
        n, k = p.shape
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"matched_label_ids must be in [0, {k}) (columns of probabilities), got {y}")
        pred = p.argmax(1)
        a = float(np.mean(pred == y))
        c = float(p.max(1).mean())
        off = (1.0 - c) / max(k - 1, 1)
        m = float(np.clip((a - off) / (c - off), 0.0, 1.0)) if c - off > 1e-6 else float("nan")
        sim = np.asarray(similarity, dtype=np.float64) if similarity is not None else np.array([np.nan])
        nb, vm, vs, gain = 0, float("nan"), float("nan"), float("nan")
        if neighbour_label_ids is not None:
            nl = np.asarray(neighbour_label_ids).astype(np.int64)
            if nl.ndim != 2 or nl.shape[0] != n or nl.shape[1] < 1 or nl.min() < 0 or nl.max() >= k:
                raise ValueError(
                    f"neighbour_label_ids must be (n={n}, k >= 1) label ids in [0, {k}), got shape {nl.shape}"
                )
            nb = nl.shape[1]
            d = pred != y
            if d.any():
                vm = float((nl[d] == y[d, None]).mean(1).mean())
                vs = float((nl[d] == pred[d, None]).mean(1).mean())
                gain = float(d.mean()) * (vm - vs)
            else:
                gain = 0.0
        return cls(
            rows=n,
            agreement=a,
            stage1_confidence=c,
            matched_accuracy=m,
            neighbours=nb,
            vote_matched=vm,
            vote_stage1=vs,
            predicted_gain=gain,
            mean_similarity=float(np.nanmean(sim)) if np.isfinite(sim).any() else float("nan"),
        )


def stage2_estimate(
    model: Any,
    tokenizer: Any,
    target_texts: Sequence[str],
    matched_label_ids: Sequence[int],
    target_text_pairs: Sequence[str] | None = None,
    *,
    similarity: Sequence[float] | None = None,
    neighbour_label_ids: Any = None,
    max_rows: int = 2000,
    max_length: int | None = None,
    prefix: str | None = None,
    batch_size: int = 64,
) -> Stage2Estimate:
    """:class:`Stage2Estimate` of a classifier (before stage 2) on target texts and their matched label
    ids (``model.config.id2label`` ids), optionally the (n, k) label ids of each text's k nearest sources
    (for ``predicted_gain``): one forward pass over at most ``max_rows`` evenly spaced rows."""
    texts = as_texts("target_texts", target_texts)
    y = np.asarray(matched_label_ids)
    if y.shape != (len(texts),):
        raise ValueError(
            f"matched_label_ids must have one id per target text ({len(texts)}), got shape {y.shape}"
        )
    if not texts:
        raise ValueError("target_texts must not be empty")
    pairs = None
    if target_text_pairs is not None:
        pairs = as_texts("target_text_pairs", target_text_pairs, len(texts))
    max_rows = check_positive_int("max_rows", max_rows)
    rows = _even_rows(len(texts), max_rows)
    pred = predict(
        model,
        tokenizer,
        [texts[i] for i in rows],
        None if pairs is None else [pairs[i] for i in rows],
        max_length=max_length,
        prefix=prefix,
        batch_size=batch_size,
    )
    if pred.label_ids is None:
        raise ValueError("stage2_estimate needs a single-label classifier (its predictions are class ids)")
    sim = None if similarity is None else np.asarray(similarity, dtype=np.float64)[rows]
    nl = None
    if neighbour_label_ids is not None:
        nl = np.asarray(neighbour_label_ids)
        if nl.ndim != 2 or nl.shape[0] != len(texts):
            raise ValueError(
                f"neighbour_label_ids must be (n={len(texts)}, k), one row per target text, got shape "
                f"{nl.shape}"
            )
        nl = nl[rows]
    return Stage2Estimate.from_predictions(pred.probabilities, y[rows], sim, nl)


@dataclass
class Prediction:
    """What :func:`predict` returns: ``logits`` (N, K) float32; ``probabilities`` (N, K) float32 (softmax,
    or sigmoid for multi-label; None for regression); ``label_ids`` (N,) int64 argmax (None for regression /
    multi-label); ``labels``: the decoded labels from ``config.id2label`` (ints when every label is
    int-like)."""

    logits: np.ndarray
    probabilities: np.ndarray | None
    label_ids: np.ndarray | None
    labels: list[Any] | None


@torch.no_grad()
def predict(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    max_length: int | None = None,
    prefix: str | None = None,
    batch_size: int = 64,
    drop_token_type_ids: bool | None = None,
) -> Prediction:
    """Logits and probabilities of a (wrapped or plain) sequence-classification model, on its device.

    ``max_length`` / ``prefix`` / ``drop_token_type_ids`` left at None are those the model was trained with
    (``model.config.xite_fast``, saved in ``config.json`` by :class:`XiteTrainer`), else 128 and the
    backbone's default prefix (``"query: "`` for e5). ``texts`` is any sequence of str (a list, a pandas
    Series, a datasets Column)."""
    xm = _wrap(model)
    saved = saved_tokenization(xm.model)
    max_length = saved["max_length"] if max_length is None else max_length
    prefix = saved["prefix"] if prefix is None else prefix
    drop_token_type_ids = saved["drop_token_type_ids"] if drop_token_type_ids is None else drop_token_type_ids
    texts = as_texts("texts", texts)
    text_pairs = as_texts("text_pairs", text_pairs, len(texts)) if text_pairs is not None else None
    if saved["text_pair"] and text_pairs is None:
        raise ValueError(
            "the model was trained on sentence pairs (config.xite_fast.text_pair): pass text_pairs="
        )
    was = xm.training
    xm.eval()
    logits: np.ndarray | None = None
    try:
        for idx, b in _batches(
            xm, tokenizer, texts, text_pairs, max_length, prefix, batch_size, drop_token_type_ids
        ):
            out = (
                xm(b["input_ids"], b["attention_mask"], b.get("token_type_ids")).logits.float().cpu().numpy()
            )
            if logits is None:
                logits = np.empty((len(texts), out.shape[1]), dtype=np.float32)
            logits[idx] = out
    finally:
        xm.train(was)
    cfg = xm.config
    pt = cfg.problem_type or ("regression" if cfg.num_labels == 1 else "single_label_classification")
    if pt == "regression":
        return Prediction(logits, None, None, None)
    if pt == "multi_label_classification":
        return Prediction(logits, 1.0 / (1.0 + np.exp(-logits)), None, None)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    ids = logits.argmax(1).astype(np.int64)
    id2label = {int(k): v for k, v in (cfg.id2label or {}).items()}
    names = [id2label.get(int(i), str(int(i))) for i in ids]
    lm = LabelMap(names=[id2label[i] for i in sorted(id2label)]) if id2label else None
    if lm is not None and all(str(v).lstrip("+-").isdigit() for v in lm.values):
        names = [int(n) for n in names]
    return Prediction(logits, p.astype(np.float32), ids, names)
