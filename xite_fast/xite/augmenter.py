"""XITE augmentation in memory: label transfer by cross-lingual nearest neighbours + interpolation.

Steps (the CLI ``xite-fast augment`` and :func:`xite_fast.xite.pipeline.run_augment` run the same steps
streamed over files of any size, with the same options, :class:`AugmentOptions`):

1. embed the labelled source corpus and the unlabelled target corpus with a multilingual encoder (or
   take precomputed embeddings);
2. optionally center each language (subtract its mean embedding) before matching;
3. for every target row find the top-``k`` source rows by cosine similarity (:func:`xite_fast.cosine_topk`)
   and transfer a label (``vote``), dropping targets whose best similarity is below ``threshold``;
4. for modes other than ``interp`` fit the language basis (:func:`xite_fast.xite.lda.fit_language_basis`,
   classes = language) and build synthetic rows ``lda_project_interp(src_matched, tgt, W, lam, mode)``;
5. return the synthetic embeddings, their labels, provenance and a report (:mod:`xite_fast.xite.report`).

Options (defaults in :class:`AugmentOptions`; measured effects in README.md and bench/README.md):

* ``vote="top1"``, ``k=1``: label of the nearest source row. ``"weighted"`` sums per label
  ``max(similarity, 0)`` of the k nearest rows (or ``exp((s - s_top) / temperature)``); ties go to
  the label whose best neighbour ranks first (deterministic: ``cosine_topk`` orders equal scores
  by lower index). Encoders like e5 put similarities in a narrow band, so an untempered weighted vote
  behaves like a majority vote over the k rows.
* ``center=True``: subtract each language's mean embedding before matching (matching only; synthetic
  rows use the raw embeddings).
* ``threshold=None``: keep every target. A threshold on the best similarity trades coverage for
  accuracy; dropped targets are counted in the report.
* ``lam="beta"``: weight of the *source* row, per row Beta(``beta_alpha``, ``beta_alpha``) (``1.0``:
  uniform), or a fixed float in [0, 1]. The draw is a pure function of ``(seed, target row)``, so it
  does not depend on batching, sharding or resuming.
* ``mode="interp"``: plain sentence-level interpolation, no LDA fitted; ``"proj"`` (source row + the
  target's language component), ``"comp"`` or ``"shift"``: see :func:`xite_fast.lda_project_interp`.
  The LDA (classes = language) is fitted on up to ``lda_max_rows`` rows sampled from each language.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xite_fast._validation import check_finite, check_matrix, check_positive_int
from xite_fast.data.records import encode_labels
from xite_fast.encode.encoder import EncoderConfig
from xite_fast.ops.lda_project_interp import MODES, lda_project_interp
from xite_fast.xite.labels import VOTES, beta_lambdas, lambdas_for, transfer_labels
from xite_fast.xite.lda import fit_language_basis, sample_ids
from xite_fast.xite.match import match_arrays
from xite_fast.xite.report import (
    SimilarityHistogram,
    TransferCounts,
    build_report,
    correct_labels,
    majority_baseline,
    provenance,
)

__all__ = [
    "XiteAugmenter",
    "AugmentOptions",
    "AugmentResult",
    "transfer_labels",
    "beta_lambdas",
    "SimilarityHistogram",
    "build_report",
    "validate_options",
    "VOTES",
    "MODES",
]


# ----------------------------------------------------------------------------------------- options
@dataclass(kw_only=True)
class AugmentOptions:
    """The options of XITE augmentation and their defaults: the one place :class:`XiteAugmenter`,
    :class:`~xite_fast.xite.pipeline.AugmentConfig` and the CLI's flags read them from.

    Attributes:
        k: neighbours per target row (>= 1; only used by ``vote="weighted"``).
        vote: ``"top1"`` or ``"weighted"`` (one of :data:`VOTES`, see :func:`transfer_labels`).
        threshold: drop targets whose best cosine similarity is below this (in [-1, 1]); None keeps all.
        temperature: softmax temperature of the ``"weighted"`` vote (None: raw similarities).
        lam: weight of the source row, float in [0, 1], or ``"beta"`` (per row Beta(beta_alpha, beta_alpha)).
        beta_alpha: Beta shape for ``lam="beta"`` (> 0).
        mode: one of :data:`MODES` (:func:`xite_fast.lda_project_interp`; ``"interp"`` fits no LDA).
        lda_components: ``n_components`` of :class:`xite_fast.LanguageLDA` (None: its default).
        lda_max_rows: rows sampled per language to fit the LDA.
        center: subtract each language's mean embedding before matching.
        seed: seed of the LDA samples and the λ draws.
    """

    k: int = 1
    vote: str = "top1"
    threshold: float | None = None
    temperature: float | None = None
    lam: float | str = "beta"
    beta_alpha: float = 1.0
    mode: str = "interp"
    lda_components: int | None = None
    lda_max_rows: int = 50_000
    center: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        check_positive_int("k", self.k)
        if self.vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, got {self.vote!r}")
        threshold = self.threshold
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
                raise ValueError(f"threshold must be None or a float in [-1, 1], got {threshold!r}")
            if not (-1.0 <= float(threshold) <= 1.0):
                raise ValueError(f"threshold must be in [-1, 1] (a cosine similarity), got {threshold}")
        lam = self.lam
        if isinstance(lam, str):
            if lam != "beta":
                raise ValueError(f"lam must be a float in [0, 1] or 'beta', got {lam!r}")
        elif (
            isinstance(lam, bool)
            or not isinstance(lam, (int, float, np.floating))
            or not (0.0 <= float(lam) <= 1.0)
        ):
            raise ValueError(f"lam must be a float in [0, 1] or 'beta', got {lam!r}")
        beta_alpha = self.beta_alpha
        if isinstance(beta_alpha, bool) or not isinstance(beta_alpha, (int, float, np.floating)):
            raise ValueError(f"beta_alpha must be a positive float, got {beta_alpha!r}")
        if not (math.isfinite(float(beta_alpha)) and float(beta_alpha) > 0):
            raise ValueError(f"beta_alpha must be a positive float, got {beta_alpha}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lda_components is not None:
            check_positive_int("lda_components", self.lda_components)
        check_positive_int("lda_max_rows", self.lda_max_rows)
        temperature = self.temperature
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
                raise ValueError(f"temperature must be None or a positive float, got {temperature!r}")
            if not (math.isfinite(float(temperature)) and float(temperature) > 0):
                raise ValueError(f"temperature must be None or a positive float, got {temperature}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


def validate_options(**options: Any) -> None:
    """Raise ValueError naming the first bad option (``AugmentOptions(**options).validate()``)."""
    AugmentOptions(**options).validate()


# ----------------------------------------------------------------------------------------- result
@dataclass
class AugmentResult:
    """Output of :meth:`XiteAugmenter.augment` (only kept targets appear; row r describes synthetic row r).

    Attributes:
        embeddings: (n, D) float32 synthetic embeddings.
        labels: (n,) object array of label names (the transferred labels).
        target_id: (n,) int64 row of the target corpus each synthetic row was made from.
        source_id: (n,) int64 matched source row (its label == ``labels``).
        similarity: (n,) float32 cosine similarity of that match (after centering if ``center``).
        lam: (n,) float32 interpolation weight of the source row.
        mode: the ``lda_project_interp`` mode.
        report: dict (label distribution, similarity histogram, dropped count, accuracy if gold given).
        W: (D, r) float32 LDA basis (``None`` for mode ``"interp"``).
        label_names: (C,) object array: every source label, sorted (the classes, whether or not a target
            was matched to them; ``labels`` holds values of it).
    """

    embeddings: np.ndarray
    labels: np.ndarray
    target_id: np.ndarray
    source_id: np.ndarray
    similarity: np.ndarray
    lam: np.ndarray
    mode: str
    report: dict
    W: np.ndarray | None = None
    all_labels: np.ndarray | None = field(default=None, repr=False)  # (N_targets,) incl. dropped rows
    label_names: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def provenance(self) -> list[dict]:
        """One record per synthetic row: target_id, source_id, label, similarity, lam, mode
        (:func:`xite_fast.xite.report.provenance`; labels keep their type)."""
        return provenance(self.target_id, self.source_id, self.labels, self.similarity, self.lam, self.mode)

    def _table_records(self, source_texts: Any, target_texts: Any) -> list[dict]:
        from xite_fast.data.records import Record, as_texts

        source_texts = getattr(self, "source_texts", None) if source_texts is None else source_texts
        target_texts = getattr(self, "target_texts", None) if target_texts is None else target_texts
        if (source_texts is None) != (target_texts is None):
            raise ValueError(
                "pass both source_texts and target_texts (the texts given to augment), or neither"
            )
        recs: dict = {}
        for name, texts, ids in (
            ("source", source_texts, self.source_id),
            ("target", target_texts, self.target_id),
        ):
            if texts is None:
                continue
            t, p = as_texts(texts, f"{name}_texts")
            if len(ids) and int(ids.max()) >= len(t):
                raise ValueError(
                    f"{name}_texts has {len(t)} rows but the result refers to row {int(ids.max())}"
                )
            recs[name] = [Record(t[i], None, None if p is None else p[i]) for i in ids.tolist()]
        return provenance(
            self.target_id,
            self.source_id,
            self.labels,
            self.similarity,
            self.lam,
            self.mode,
            target_records=recs.get("target"),
            source_records=recs.get("source"),
        )

    def to_dataset(
        self,
        source_texts: Any = None,
        target_texts: Any = None,
        *,
        embeddings: bool = False,
        cache_dir: Any = None,
    ):
        """The synthetic rows as a ``datasets.Dataset`` (:func:`xite_fast.xite.report.synthetic_row`:
        ``text`` / ``text_pair`` = the target text, ``label``, ``source_text``, ``similarity``, ``lam``,
        ``target_id``, ``source_id``, ``mode``; ``embedding`` with ``embeddings=True``). The text columns
        need the texts given to :meth:`XiteAugmenter.augment` (lists, Series, Columns; pairs as tuples)."""
        from xite_fast.xite.report import _memory_rows, rows_dataset

        kw = {"records": self._table_records(source_texts, target_texts), "vectors": self.embeddings}
        return rows_dataset(_memory_rows, {**kw, "embeddings": embeddings}, cache_dir=cache_dir)

    def to_pandas(self, source_texts: Any = None, target_texts: Any = None, *, embeddings: bool = False):
        """The synthetic rows as a ``pandas.DataFrame`` (columns as :meth:`to_dataset`)."""
        from xite_fast.xite.report import rows_frame, synthetic_rows

        recs = self._table_records(source_texts, target_texts)
        return rows_frame(synthetic_rows([(recs, self.embeddings)], embeddings=embeddings))


def _check_embeddings(name: str, x: Any) -> np.ndarray:
    check_matrix(name, x, what="(N, D)")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    check_finite(name, x)
    return x


_DEFAULTS = AugmentOptions()


class XiteAugmenter:
    """Build XITE synthetic training data from a labelled source and an unlabelled target corpus.

    Args:
        encoder: an object with ``.encode(texts) -> (N, D) float32`` (e.g. :class:`xite_fast.Encoder`);
            optional when embeddings are passed to :meth:`augment`.
        k, vote, threshold, temperature, lam, beta_alpha, mode, lda_components, lda_max_rows, center,
            seed: the options, documented (with their defaults) in :class:`AugmentOptions`.
        backend: backend of ``cosine_topk`` / ``lda_project_interp``.
        batch_size: encoder batch size.
    """

    def __init__(
        self,
        encoder: Any = None,
        *,
        k: int = _DEFAULTS.k,
        vote: str = _DEFAULTS.vote,
        threshold: float | None = _DEFAULTS.threshold,
        temperature: float | None = _DEFAULTS.temperature,
        lam: float | str = _DEFAULTS.lam,
        beta_alpha: float = _DEFAULTS.beta_alpha,
        mode: str = _DEFAULTS.mode,
        lda_components: int | None = _DEFAULTS.lda_components,
        lda_max_rows: int = _DEFAULTS.lda_max_rows,
        center: bool = _DEFAULTS.center,
        seed: int = _DEFAULTS.seed,
        backend: str = "auto",
        batch_size: int = EncoderConfig.batch_size,
    ):
        AugmentOptions(
            k=k,
            vote=vote,
            threshold=threshold,
            temperature=temperature,
            lam=lam,
            beta_alpha=beta_alpha,
            mode=mode,
            lda_components=lda_components,
            lda_max_rows=lda_max_rows,
            center=center,
            seed=seed,
        ).validate()
        check_positive_int("batch_size", batch_size)
        self.encoder = encoder
        self.k, self.vote, self.threshold, self.temperature = int(k), vote, threshold, temperature
        self.lam, self.beta_alpha, self.mode = lam, float(beta_alpha), mode
        self.lda_components, self.lda_max_rows = lda_components, int(lda_max_rows)
        self.center, self.seed, self.backend, self.batch_size = (
            bool(center),
            int(seed),
            backend,
            int(batch_size),
        )

    def options(self) -> dict:
        return {
            "k": self.k,
            "vote": self.vote,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "lam": self.lam,
            "beta_alpha": self.beta_alpha,
            "mode": self.mode,
            "lda_components": self.lda_components,
            "center": self.center,
            "seed": self.seed,
        }

    def _embed(self, name: str, texts, embeddings) -> np.ndarray:
        if embeddings is not None:
            return _check_embeddings(f"{name}_embeddings", embeddings)
        if texts is None:
            raise ValueError(f"pass {name}_texts or {name}_embeddings")
        if self.encoder is None:
            raise ValueError(f"{name}_texts given but no encoder: pass encoder= or {name}_embeddings")
        texts = list(texts)
        if not texts:
            raise ValueError(f"{name}_texts is empty")
        return _check_embeddings(f"{name}_embeddings", self.encoder.encode(texts, batch_size=self.batch_size))

    def match(
        self,
        source_embeddings: np.ndarray,
        target_embeddings: np.ndarray,
        source_codes: np.ndarray,
        n_classes: int,
    ):
        """Top-k matching + label transfer. Returns ``transfer_labels`` output for every target row."""
        k = self.k if self.vote == "weighted" else 1
        if k > source_embeddings.shape[0]:
            raise ValueError(
                f"k must be <= the number of source rows ({source_embeddings.shape[0]}), got k={k}"
            )
        scores, idx = match_arrays(
            target_embeddings, source_embeddings, k, center=self.center, backend=self.backend
        )
        return transfer_labels(
            np.asarray(scores),
            np.asarray(idx),
            source_codes,
            vote=self.vote,
            threshold=self.threshold,
            n_classes=n_classes,
            temperature=self.temperature,
        )

    def augment(
        self,
        source_texts: Sequence[str] | None = None,
        source_labels: Sequence | None = None,
        target_texts: Sequence[str] | None = None,
        *,
        source_embeddings: np.ndarray | None = None,
        target_embeddings: np.ndarray | None = None,
        target_gold_labels: Sequence | None = None,
    ) -> AugmentResult:
        """Match, transfer labels and interpolate.

        Args:
            source_texts: M labelled source texts (or ``source_embeddings``).
            source_labels: (M,) labels, one type (str, int, float or bool; kept, so 1 and "1" differ).
            target_texts: N unlabelled target texts (or ``target_embeddings``).
            source_embeddings: (M, D) float32 precomputed source embeddings.
            target_embeddings: (N, D) float32 precomputed target embeddings.
            target_gold_labels: (N,) optional gold labels of the targets, for the accuracy in the report.

        Returns:
            :class:`AugmentResult` with one synthetic row per kept target.
        """
        if source_labels is None:
            raise ValueError("source_labels is required (one label per source row)")
        src = self._embed("source", source_texts, source_embeddings)
        tgt = self._embed("target", target_texts, target_embeddings)
        labels_in = list(source_labels)
        if len(labels_in) != src.shape[0]:
            raise ValueError(
                f"source_labels must have one label per source row ({src.shape[0]}), got {len(labels_in)}"
            )
        # labels keep their type (1 and "1" differ); mixed or unhashable types are a ValueError
        names_list, codes = encode_labels(labels_in, name="source_labels")
        names = np.empty(len(names_list), dtype=object)
        names[:] = names_list
        if src.shape[1] != tgt.shape[1]:
            raise ValueError(
                f"source and target embeddings must have the same dim, got {src.shape[1]} and {tgt.shape[1]}"
            )
        if target_gold_labels is not None and len(target_gold_labels) != tgt.shape[0]:
            raise ValueError(
                f"target_gold_labels must have one label per target row ({tgt.shape[0]}), got "
                f"{len(target_gold_labels)}"
            )
        labels, source_id, sim, keep = self.match(src, tgt, codes, len(names))

        W = None
        if self.mode != "interp":
            rng = np.random.default_rng(self.seed)
            samples = [x[sample_ids(x.shape[0], self.lda_max_rows, rng)] for x in (src, tgt)]
            W = fit_language_basis(samples, n_components=self.lda_components)
        tid = np.flatnonzero(keep).astype(np.int64)
        lam = lambdas_for(self.lam, tid, self.beta_alpha, self.seed)
        out = (
            lda_project_interp(src[source_id[tid]], tgt[tid], W, lam, self.mode, backend=self.backend)
            if tid.size
            else np.zeros((0, src.shape[1]), np.float32)
        )

        correct = majority = None
        if target_gold_labels is not None:
            gold = list(target_gold_labels)
            correct = correct_labels(names, labels, gold)
            majority = majority_baseline(list(Counter(gold).values()))
        counts = TransferCounts.count(labels, keep, sim, len(names), correct)
        report = build_report(
            label_names=list(names), counts=counts, options=self.options(), majority=majority
        )
        return AugmentResult(
            embeddings=np.ascontiguousarray(out, dtype=np.float32),
            labels=names[labels[tid]].astype(object),
            target_id=tid,
            source_id=source_id[tid],
            similarity=sim[tid],
            lam=lam,
            mode=self.mode,
            report=report,
            W=W,
            all_labels=names[labels].astype(object),
            label_names=names,
        )
