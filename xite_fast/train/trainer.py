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
* :func:`train_xite` is stage 2 in one call: labels mapped, match (or take an ``augment`` result), LDA,
  train. :func:`predict` returns logits, probabilities and decoded labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from xite_fast.train.collator import XiteCollator, XiteDataset, tokenize_texts
from xite_fast.train.config import LabelMap, XiteConfig
from xite_fast.train.model import XiteModel

__all__ = [
    "XiteTrainer",
    "Prediction",
    "predict",
    "embed_texts",
    "match_sources",
    "fit_lda",
    "train_xite",
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
    return {"accuracy": float((pred == labels).mean()), "macro_f1": float(f1_score(labels, pred, average="macro"))}


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

    def __init__(self, model: Any, args: Any = None, *, xite_config: XiteConfig | None = None, lda_W: Any = None, **kwargs: Any):
        if not isinstance(model, XiteModel):
            model = XiteModel(model, xite_config)
        elif xite_config is not None and xite_config is not model.xite:
            raise ValueError("xite_config must not be given with an already wrapped XiteModel (it has its own)")
        if lda_W is not None:
            model.set_lda(lda_W)
        if model.xite.lda and model.xite.placement != "none" and model.lda_W is None:
            raise ValueError("XiteConfig.lda=True needs an LDA basis: pass lda_W (see xite_fast.train.trainer.fit_lda)")
        if args is not None and getattr(args, "remove_unused_columns", False):
            args.remove_unused_columns = False
        tok = kwargs.get("processing_class")
        if kwargs.get("data_collator") is None:
            pad = getattr(tok, "pad_token_id", None) if tok is not None else None
            kwargs["data_collator"] = XiteCollator(pad if pad is not None else (model.config.pad_token_id or 0), model.config.problem_type)
        super().__init__(model=model, args=args, **kwargs)

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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints (``_internal_call``) keep Trainer's format (exact resume); a user's call writes the
        user's model with ``save_pretrained`` (+ tokenizer): ``AutoModelForSequenceClassification
        .from_pretrained(output_dir)`` gives the same logits."""
        if _internal_call or not isinstance(self.model, XiteModel):
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.model.model.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)


# ------------------------------------------------------------------------------------------- helpers
def _wrap(model: Any) -> XiteModel:
    if isinstance(model, XiteModel):
        return model
    xm = XiteModel(model, XiteConfig(placement="none"))
    xm.training = model.training  # a new wrapper must not flip the user's model into train mode
    return xm


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(model: XiteModel, tokenizer: Any, texts, text_pairs, max_length: int, prefix: str, batch_size: int, drop_types: bool):
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
        for idx, b in _batches(xm, tokenizer, texts, text_pairs, max_length, prefix, batch_size, drop_token_type_ids):
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
    **embed_kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """XITE matching in the model's space: every target's cosine top-1 source (pairs: the pair's
    embedding), via :func:`xite_fast.xite.match.match_arrays` (per-language centering by default).

    Returns:
        indices (N_tgt,) int64 into ``source_texts``, scores (N_tgt,) float32.
    """
    from xite_fast.xite.match import match_arrays

    src = embed_texts(model, tokenizer, source_texts, source_text_pairs, level=level, **embed_kw)
    tgt = embed_texts(model, tokenizer, target_texts, target_text_pairs, level=level, **embed_kw)
    scores, idx = match_arrays(tgt, src, 1, center=center, backend=backend)
    return np.asarray(idx)[:, 0].astype(np.int64), np.asarray(scores)[:, 0].astype(np.float32)


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
        keep = list(dict.fromkeys(zip(texts, pairs if pairs is not None else [None] * len(texts), strict=True)))
        return [k[0] for k in keep], ([k[1] for k in keep] if pairs is not None else None)

    groups = [("src", source_texts, source_text_pairs), ("tgt", target_texts, target_text_pairs)]
    for name, value in (extra_languages or {}).items():
        texts, pairs = value if isinstance(value, tuple) else (value, None)
        if name in ("src", "tgt"):
            raise ValueError(f"extra_languages keys must not be 'src' or 'tgt' (used for source/target), got {name!r}")
        if len(texts) == 0:
            raise ValueError(f"extra_languages[{name!r}] must hold at least one text, got 0")
        groups.append((str(name), texts, pairs))
    X = [embed_texts(model, tokenizer, *distinct(texts, pairs), level=level, **embed_kw) for _, texts, pairs in groups]
    return fit_language_basis(
        X, [name for name, _, _ in groups], n_components=model.xite.lda_components, basis=model.xite.lda_basis
    )


def label_map_for(model: Any, labels: Sequence[Any] | None = None, names: Sequence[Any] | None = None) -> LabelMap | None:
    """The label map of a classification model: ``names`` if given, else the one in its config (non-default
    id2label), else built from ``labels``; checked against ``num_labels``. None for regression/multi-label."""
    cfg = model.config
    if cfg.problem_type in ("regression", "multi_label_classification"):
        return None
    if cfg.problem_type is None and cfg.num_labels == 1:
        return None
    lm = LabelMap(names=names) if names is not None else (LabelMap.from_config(cfg) or LabelMap(labels))
    if len(lm) != cfg.num_labels:
        raise ValueError(
            f"the labels have {len(lm)} classes {lm.values[:10]} but the model has num_labels={cfg.num_labels}: load it "
            f"with AutoModelForSequenceClassification.from_pretrained(..., num_labels={len(lm)}, id2label=..., label2id=...)"
        )
    lm.apply(cfg)
    return lm


def _targets(model: Any, labels: Any, lm: LabelMap | None) -> Any:
    cfg = model.config
    if lm is not None:
        return lm.encode(list(labels))
    y = np.asarray(labels, dtype=np.float32)
    if cfg.problem_type == "multi_label_classification" and (y.ndim != 2 or y.shape[1] != cfg.num_labels):
        raise ValueError(f"multi-label labels must be (N, num_labels={cfg.num_labels}) 0/1 rows, got shape {y.shape}")
    if cfg.problem_type != "multi_label_classification" and y.ndim != 1:
        raise ValueError(f"regression labels must be (N,) floats, got shape {y.shape}")
    return y


def train_xite(
    model: Any,
    tokenizer: Any,
    args: Any,
    *,
    source_texts: Sequence[str],
    source_labels: Sequence[Any] | None = None,
    target_texts: Sequence[str],
    source_text_pairs: Sequence[str] | None = None,
    target_text_pairs: Sequence[str] | None = None,
    augment: Any = None,
    xite_config: XiteConfig | None = None,
    label_names: Sequence[Any] | None = None,
    train: bool = True,
    **trainer_kw: Any,
) -> XiteTrainer:
    """XITE stage 2 in one call; returns the (trained) :class:`XiteTrainer`.

    Every target text is paired with a source: its cosine top-1 in the model's own space
    (:func:`match_sources`) whose label ``source_labels[i]`` it inherits, or, with ``augment`` (an
    :class:`xite_fast.xite.augmenter.AugmentResult` over these source/target corpora), the pairs and
    transferred labels of that result. Labels are the user's values (ints, strings, the augment's label
    names); they are mapped to ids with :func:`label_map_for` (written into ``model.config``).
    """
    cfg = xite_config or XiteConfig()
    xm = model if isinstance(model, XiteModel) else XiteModel(model, cfg)
    cfg = xm.xite
    kw = dict(max_length=cfg.max_length, prefix=cfg.prefix)
    if augment is not None:
        src_idx = np.asarray(augment.source_id, dtype=np.int64)
        tgt_idx = np.asarray(augment.target_id, dtype=np.int64)
        values = list(augment.labels)
    else:
        if source_labels is None:
            raise ValueError("source_labels must be given (or an augment result)")
        if len(source_labels) != len(source_texts):
            raise ValueError(f"source_labels must have one entry per source text ({len(source_texts)}), got {len(source_labels)}")
        src_idx, _ = match_sources(
            xm, tokenizer, source_texts, target_texts, source_text_pairs=source_text_pairs,
            target_text_pairs=target_text_pairs, backend=cfg.backend, **kw,
        )
        tgt_idx = np.arange(len(target_texts))
        values = [source_labels[i] for i in src_idx]
    lm = label_map_for(xm, values if source_labels is None else list(source_labels), label_names)
    pick = lambda xs, ids: [xs[i] for i in ids] if xs is not None else None  # noqa: E731
    ds = XiteDataset(
        tokenizer,
        pick(target_texts, tgt_idx),
        _targets(xm, values, lm),
        text_pairs=pick(target_text_pairs, tgt_idx),
        source_texts=pick(source_texts, src_idx),
        source_text_pairs=pick(source_text_pairs, src_idx),
        **kw,
    )
    if cfg.lda and cfg.placement != "none" and xm.lda_W is None:
        xm.set_lda(fit_lda(xm, tokenizer, pick(source_texts, src_idx), pick(target_texts, tgt_idx),
                           source_text_pairs=pick(source_text_pairs, src_idx), target_text_pairs=pick(target_text_pairs, tgt_idx), **kw))
    trainer = XiteTrainer(xm, args, train_dataset=ds, processing_class=tokenizer, **trainer_kw)
    if train:
        trainer.train()
    return trainer


@dataclass
class Prediction:
    """What :func:`predict` returns: ``logits`` (N, K) float32; ``probabilities`` (N, K) float32 (softmax,
    or sigmoid for multi-label; None for regression); ``label_ids`` (N,) int64 argmax (None for regression /
    multi-label); ``labels``: the decoded labels from ``config.id2label`` (ints when every label is int-like)."""

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
    max_length: int = 128,
    prefix: str = "",
    batch_size: int = 64,
    drop_token_type_ids: bool = False,
) -> Prediction:
    """Logits and probabilities of a (wrapped or plain) sequence-classification model, on its device."""
    xm = _wrap(model)
    was = xm.training
    xm.eval()
    logits: np.ndarray | None = None
    try:
        for idx, b in _batches(xm, tokenizer, texts, text_pairs, max_length, prefix, batch_size, drop_token_type_ids):
            out = xm(b["input_ids"], b["attention_mask"], b.get("token_type_ids")).logits.float().cpu().numpy()
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
