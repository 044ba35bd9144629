"""XITE augmentation: label transfer by cross-lingual nearest neighbours + LDA-guided interpolation.

Pipeline (in-memory; the CLI ``xite-fast augment`` runs the same steps streamed over files of any size):

1. embed the labelled source corpus (English) and the unlabelled target corpus with a multilingual
   encoder (or take precomputed embeddings);
2. optionally center each language (subtract its mean embedding) before matching;
3. for every target row find the top-``k`` source rows by cosine similarity (:func:`xite_fast.cosine_topk`)
   and transfer a label (``vote``), dropping targets whose best similarity is below ``threshold``;
4. fit :class:`xite_fast.LanguageLDA` on source + target embeddings (classes = language) and build
   synthetic rows ``lda_project_interp(src_matched, tgt, W, lam, mode)``;
5. return the synthetic embeddings, their labels, provenance and a report.

Options and the defaults we chose. Label-transfer accuracy on chatterbot English -> Korean (19 shared
topics), real e5-small encoder (ONNX, full 12 layers unless noted), ``mode`` irrelevant for labels:

==========================================  ===============  ================  ==========
setting                                      all en -> all ko  held-out (5 seeds) 2 layers,
                                             (1864 -> 1150)    en train -> ko     held-out
                                                               test, mean
==========================================  ===============  ================  ==========
majority class                               0.221             0.219             0.219
top1                                         0.730             0.553             0.253
top1, center (default)                       0.752             0.561             0.325
weighted k=5                                 0.619             0.513             0.245
weighted k=5, center                         0.669             0.550             0.304
weighted k=10, temperature=0.01              0.746             0.571             0.275
weighted k=10, temperature=0.01, center      0.764             0.563             0.325
top1, center, threshold=q25 of similarity    0.868 (75% kept)
top1, center, threshold=q50                  0.932 (50% kept)
==========================================  ===============  ================  ==========

("held-out": ``split_by_conversation(..., 0.3, seed)``; source = English training conversations,
targets = Korean test conversations, so no target's English twin is a candidate.)

* ``vote="top1"``, ``k=1`` (default): label of the nearest source row. ``"weighted"`` sums per label
  ``max(similarity, 0)`` of the k nearest rows (or ``exp((s - s_top) / temperature)``); ties go to
  the label whose best neighbour ranks first (deterministic: ``cosine_topk`` orders equal scores
  by lower index). Plain weighted voting is *worse* than top1 (0.619 vs 0.730): e5 similarities
  sit in a narrow band, so it degenerates into a majority vote over k rows that favours large
  topics (trivia, emotion). A small temperature fixes that but gains only ~0-2 points, within the
  split-to-split spread, so top1 stays the default.
* ``center=True`` (default): subtract each language's mean embedding before matching (matching
  only; synthetic rows use the raw embeddings). +1-2 points on the full model, +7 on a 2-layer one.
* ``threshold=None`` (default): keep every target. A threshold on the best similarity trades
  coverage for accuracy (table); dropped targets are counted in the report.
* ``lam="beta"`` (default) weight of the *source* row: per-row Beta(``beta_alpha``, ``beta_alpha``)
  with ``beta_alpha=1.0`` (uniform), or a fixed float in [0, 1]. The draw is a pure function of
  ``(seed, target row)``, so it does not depend on batching, sharding or resuming.
* ``mode="interp"`` (default: plain sentence-level interpolation, no LDA fitted), ``"proj"`` (source
  row + the target's language component), ``"comp"`` or ``"shift"``; see
  :func:`xite_fast.lda_project_interp`. The LDA (classes = language) is fitted on up to
  ``lda_max_rows`` rows sampled from each language.
* Why these defaults: in the fine-tuning experiment (bench/results/experiment_e5s12.md, 3 seeds,
  chatterbot English -> Korean / Japanese) sentence-level interpolation with lam ~ Beta(1, 1) and no
  LDA was the best variant (+7.2 / +3.7 accuracy points over zero-shot); the LDA ``shift`` variants
  scored 2-3 points lower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xite_fast._validation import check_finite, check_matrix, check_positive_int
from xite_fast.ops.lda_project_interp import lda_project_interp
from xite_fast.xite.match import match_arrays

__all__ = [
    "XiteAugmenter",
    "AugmentResult",
    "transfer_labels",
    "beta_lambdas",
    "SimilarityHistogram",
    "build_report",
    "validate_options",
    "VOTES",
    "MODES",
]

VOTES = ("top1", "weighted")
MODES = ("proj", "comp", "shift", "interp")
DEFAULT_K = 1
DEFAULT_VOTE = "top1"
DEFAULT_CENTER = True


# ----------------------------------------------------------------------------------------- ops
def fit_language_lda(
    src_sample: np.ndarray, tgt_sample: np.ndarray, n_components: int | None = None
) -> np.ndarray:
    """Fit :class:`xite_fast.LanguageLDA` with classes = language; return ``W`` (D, r) float32 orthonormal.

    Args:
        src_sample: (Ns, D) float32 source-language rows.
        tgt_sample: (Nt, D) float32 target-language rows.
        n_components: ``LanguageLDA(n_components=...)`` (``None``: its default; 2 languages give r = 1).
    """
    from xite_fast.xite.lda import LanguageLDA

    X = np.concatenate([src_sample, tgt_sample]).astype(np.float32, copy=False)
    y = np.concatenate([np.zeros(len(src_sample), np.int64), np.ones(len(tgt_sample), np.int64)])
    return np.asarray(LanguageLDA(n_components=n_components).fit(X, y).components_, dtype=np.float32)


# ----------------------------------------------------------------------------------------- validation
def validate_options(
    *,
    k: Any,
    vote: Any,
    threshold: Any,
    lam: Any,
    beta_alpha: Any,
    mode: Any,
    lda_components: Any = None,
    temperature: Any = None,
) -> None:
    """Raise ValueError naming the first bad option (shared by :class:`XiteAugmenter` and the CLI)."""
    check_positive_int("k", k)
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
            raise ValueError(f"threshold must be None or a float in [-1, 1], got {threshold!r}")
        if not (-1.0 <= float(threshold) <= 1.0):
            raise ValueError(f"threshold must be in [-1, 1] (a cosine similarity), got {threshold}")
    if isinstance(lam, str):
        if lam != "beta":
            raise ValueError(f"lam must be a float in [0, 1] or 'beta', got {lam!r}")
    elif (
        isinstance(lam, bool)
        or not isinstance(lam, (int, float, np.floating))
        or not (0.0 <= float(lam) <= 1.0)
    ):
        raise ValueError(f"lam must be a float in [0, 1] or 'beta', got {lam!r}")
    if isinstance(beta_alpha, bool) or not isinstance(beta_alpha, (int, float, np.floating)):
        raise ValueError(f"beta_alpha must be a positive float, got {beta_alpha!r}")
    if not (math.isfinite(float(beta_alpha)) and float(beta_alpha) > 0):
        raise ValueError(f"beta_alpha must be a positive float, got {beta_alpha}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if lda_components is not None:
        check_positive_int("lda_components", lda_components)
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
            raise ValueError(f"temperature must be None or a positive float, got {temperature!r}")
        if not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ValueError(f"temperature must be None or a positive float, got {temperature}")


# ----------------------------------------------------------------------------------------- label transfer
def transfer_labels(
    scores: np.ndarray,
    indices: np.ndarray,
    source_codes: np.ndarray,
    *,
    vote: str = "top1",
    threshold: float | None = None,
    n_classes: int | None = None,
    temperature: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Transfer labels from the top-k source neighbours of each target row.

    Args:
        scores: (N, k) float32 cosine similarities, sorted descending per row.
        indices: (N, k) int64 source row ids (ties ordered by lower id, as ``cosine_topk`` returns).
        source_codes: (M,) int label code of every source row, in [0, n_classes).
        vote: ``"top1"``: label of the nearest row (only column 0 is used). ``"weighted"``: per label
            the sum of ``max(score, 0)`` over the k rows; highest sum wins, a tie goes to the label
            whose best-ranked neighbour comes first.
        threshold: drop targets whose best score (column 0) is below it.
        n_classes: number of label codes (default ``source_codes.max() + 1``).
        temperature: ``"weighted"`` only: weigh neighbour j by ``exp((score_j - score_0) / temperature)``
            instead of ``max(score_j, 0)``. Encoders like e5 squeeze cosines into a narrow band
            (0.7-0.95), so raw-similarity weights behave like a plain majority vote over the k rows
            and favour large classes; a small temperature keeps the vote close to the nearest rows.

    Returns:
        labels (N,) int64 transferred code; source_id (N,) int64 the best-ranked neighbour carrying
        that label (its label always equals the transferred one); similarity (N,) float32 its score;
        keep (N,) bool (False = dropped by ``threshold``).
    """
    scores = np.asarray(scores, dtype=np.float32)
    indices = np.asarray(indices, dtype=np.int64)
    codes = np.asarray(source_codes)
    n = scores.shape[0]
    if scores.ndim != 2 or indices.shape != scores.shape:
        raise ValueError(f"scores and indices must both be (N, k), got {scores.shape} and {indices.shape}")
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
    neigh = codes[indices].astype(np.int64)  # (N, k)
    if vote == "top1" or scores.shape[1] == 1:
        labels = neigh[:, 0].copy()
        pos = np.zeros(n, dtype=np.int64)
    else:
        s64 = scores.astype(np.float64)  # fp64 sums: ties must be exact, not rounding noise
        w = np.maximum(s64, 0.0) if temperature is None else np.exp((s64 - s64[:, :1]) / float(temperature))
        # Vote of the label at each neighbour position: sum over the k positions carrying the same label.
        # O(N k^2) and independent of the number of classes (no (N, C) table); every position of one
        # label gets the bit-identical sum (same terms, same order), so argmax picks the first
        # (best-ranked) position among all tied winners.
        kk = scores.shape[1]
        pos = np.empty(n, dtype=np.int64)
        step = max(1, (1 << 22) // (kk * kk))
        for r0 in range(0, n, step):
            nb = neigh[r0 : r0 + step]
            same = nb[:, :, None] == nb[:, None, :]  # (b, k, k)
            votes = np.where(same, w[r0 : r0 + step, None, :], 0.0).sum(axis=2)
            pos[r0 : r0 + step] = votes.argmax(axis=1)
        labels = neigh[np.arange(n), pos]
    source_id = indices[np.arange(n), pos]
    similarity = scores[np.arange(n), pos]
    keep = np.ones(n, dtype=bool) if threshold is None else scores[:, 0] >= np.float32(threshold)
    return labels, source_id, similarity.astype(np.float32), keep


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def beta_lambdas(row_ids: np.ndarray, alpha: float, seed: int = 0) -> np.ndarray:
    """Per-row λ ~ Beta(alpha, alpha), a pure function of ``(seed, row id)``.

    A counter-based hash (splitmix64) gives a uniform per row id and the Beta inverse CDF maps it, so
    the λ of target row ``i`` is the same however the rows are batched, sharded or resumed.

    Args:
        row_ids: (N,) int global row ids.
        alpha: Beta shape (> 0); small alpha pushes λ toward 0 and 1.
        seed: int seed.

    Returns:
        (N,) float32 in [0, 1].
    """
    from scipy.special import betaincinv

    ids = np.asarray(row_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        h = _splitmix64(ids ^ key)
    # 53 high bits -> uniform in (0, 1) (the +0.5 keeps it away from exactly 0)
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    lam = betaincinv(float(alpha), float(alpha), u)
    return np.clip(lam, 0.0, 1.0).astype(np.float32)


def lambdas_for(lam: float | str, row_ids: np.ndarray, beta_alpha: float, seed: int) -> np.ndarray:
    """(N,) float32 λ per row: the constant ``lam`` or Beta draws."""
    if isinstance(lam, str):
        return beta_lambdas(row_ids, beta_alpha, seed)
    return np.full(len(row_ids), float(lam), dtype=np.float32)


# ----------------------------------------------------------------------------------------- report
class SimilarityHistogram:
    """Streaming histogram of match similarities on fixed bins (mergeable across shards).

    50 bins of width 0.04 on [-1, 1]; also tracks count, sum, min and max.
    """

    EDGES = np.linspace(-1.0, 1.0, 51)

    def __init__(self):
        self.counts = np.zeros(len(self.EDGES) - 1, dtype=np.int64)
        self.n, self.total, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def add(self, sims: np.ndarray) -> None:
        sims = np.asarray(sims, dtype=np.float64).ravel()
        if sims.size == 0:
            return
        idx = np.clip(np.searchsorted(self.EDGES, sims, side="right") - 1, 0, len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.n += sims.size
        self.total += float(sims.sum())
        self.min, self.max = min(self.min, float(sims.min())), max(self.max, float(sims.max()))

    def merge(self, other: SimilarityHistogram | dict) -> None:
        if isinstance(other, dict):
            other = SimilarityHistogram.from_dict(other)
        self.counts += other.counts
        self.n += other.n
        self.total += other.total
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def to_dict(self) -> dict:
        return {
            "edges": [round(float(e), 6) for e in self.EDGES],
            "counts": [int(c) for c in self.counts],
            "n": int(self.n),
            "mean": self.total / self.n if self.n else None,
            "min": self.min if self.n else None,
            "max": self.max if self.n else None,
            "sum": self.total,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SimilarityHistogram:
        h = cls()
        h.counts = np.asarray(d["counts"], dtype=np.int64)
        h.n, h.total = int(d["n"]), float(d.get("sum", 0.0))
        h.min = d["min"] if d.get("min") is not None else math.inf
        h.max = d["max"] if d.get("max") is not None else -math.inf
        return h

    def format(self, width: int = 40) -> str:
        """Text rendering of the non-empty bin range."""
        nz = np.flatnonzero(self.counts)
        if nz.size == 0:
            return "  (empty)"
        lines, peak = [], self.counts.max()
        for b in range(nz[0], nz[-1] + 1):
            bar = "#" * int(round(width * self.counts[b] / peak))
            lines.append(f"  [{self.EDGES[b]:+.2f}, {self.EDGES[b + 1]:+.2f}) {self.counts[b]:>9d} {bar}")
        return "\n".join(lines)


def build_report(
    *,
    label_names: Sequence[str],
    label_counts: np.ndarray,
    hist: SimilarityHistogram,
    n_targets: int,
    n_dropped: int,
    n_correct: int | None = None,
    n_gold: int | None = None,
    n_correct_all: int | None = None,
    options: dict | None = None,
) -> dict:
    """Assemble the report dict (JSON-serializable) from streaming counters.

    Label-transfer accuracy (if gold target labels were given): ``accuracy`` over the kept targets,
    ``accuracy_all`` with dropped targets counted wrong, ``coverage`` = kept / targets.
    """
    n_kept = int(n_targets - n_dropped)
    report: dict = {
        "n_targets": int(n_targets),
        "n_synthetic": n_kept,
        "n_dropped": int(n_dropped),
        "coverage": n_kept / n_targets if n_targets else None,
        "label_distribution": {
            str(name): int(c) for name, c in zip(label_names, label_counts, strict=True) if c
        },
        "similarity": hist.to_dict(),
    }
    if n_gold is not None:
        report["label_transfer"] = {
            "n_gold": int(n_gold),
            "accuracy": (n_correct / n_kept) if n_kept else None,
            "accuracy_all": (n_correct_all / n_gold) if n_gold else None,
            "n_correct": int(n_correct or 0),
        }
    if options is not None:
        report["options"] = options
    return report


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

    def __len__(self) -> int:
        return len(self.labels)

    def provenance(self) -> list[dict]:
        """One record per synthetic row: target_id, source_id, similarity, label, lam, mode."""
        return [
            {
                "target_id": int(t),
                "source_id": int(s),
                "similarity": float(sim),
                "label": str(lab),
                "lam": float(la),
                "mode": self.mode,
            }
            for t, s, sim, lab, la in zip(
                self.target_id, self.source_id, self.similarity, self.labels, self.lam, strict=True
            )
        ]


def _check_embeddings(name: str, x: Any) -> np.ndarray:
    check_matrix(name, x, what="(N, D)")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    check_finite(name, x)
    return x



class XiteAugmenter:
    """Build XITE synthetic training data from a labelled source and an unlabelled target corpus.

    Args:
        encoder: an object with ``.encode(texts) -> (N, D) float32`` (e.g. :class:`xite_fast.Encoder`);
            optional when embeddings are passed to :meth:`augment`.
        k: neighbours per target row (>= 1; only used by ``vote="weighted"``).
        vote: ``"top1"`` or ``"weighted"`` (see :func:`transfer_labels`).
        temperature: softmax temperature of the ``"weighted"`` vote (``None``: raw similarities).
        threshold: drop targets whose best cosine similarity is below this (in [-1, 1]); ``None`` keeps all.
        lam: weight of the source row, float in [0, 1], or ``"beta"`` (per row Beta(beta_alpha, beta_alpha)).
        beta_alpha: Beta shape for ``lam="beta"`` (> 0).
        mode: ``"proj"`` | ``"comp"`` | ``"shift"`` | ``"interp"`` (``"interp"`` fits no LDA).
        lda_components: ``n_components`` of :class:`xite_fast.LanguageLDA` (``None``: its default).
        lda_max_rows: rows sampled per language to fit the LDA.
        center: subtract each language's mean embedding before matching.
        seed: seed for LDA sampling and Beta λ.
        backend: backend of ``cosine_topk`` / ``lda_project_interp``.
        batch_size: encoder batch size.
    """

    def __init__(
        self,
        encoder: Any = None,
        *,
        k: int = DEFAULT_K,
        vote: str = DEFAULT_VOTE,
        threshold: float | None = None,
        temperature: float | None = None,
        lam: float | str = "beta",
        beta_alpha: float = 1.0,
        mode: str = "interp",
        lda_components: int | None = None,
        lda_max_rows: int = 50_000,
        center: bool = True,
        seed: int = 0,
        backend: str = "auto",
        batch_size: int = 64,
    ):
        validate_options(
            k=k,
            vote=vote,
            threshold=threshold,
            lam=lam,
            beta_alpha=beta_alpha,
            mode=mode,
            lda_components=lda_components,
            temperature=temperature,
        )
        check_positive_int("lda_max_rows", lda_max_rows)
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
            raise ValueError(f"k must be <= the number of source rows ({source_embeddings.shape[0]}), got k={k}")
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
            source_labels: (M,) labels (any hashable; reported as str).
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
        labels_in = [str(x) for x in source_labels]
        if len(labels_in) != src.shape[0]:
            raise ValueError(
                f"source_labels must have one label per source row ({src.shape[0]}), got {len(labels_in)}"
            )
        if src.shape[1] != tgt.shape[1]:
            raise ValueError(
                f"source and target embeddings must have the same dim, got {src.shape[1]} and {tgt.shape[1]}"
            )
        if target_gold_labels is not None and len(target_gold_labels) != tgt.shape[0]:
            raise ValueError(
                f"target_gold_labels must have one label per target row ({tgt.shape[0]}), got {len(target_gold_labels)}"
            )
        names, codes = np.unique(np.asarray(labels_in, dtype=object).astype(str), return_inverse=True)
        labels, source_id, sim, keep = self.match(src, tgt, codes, len(names))

        W = None
        if self.mode != "interp":
            rng = np.random.default_rng(self.seed)

            def sample(x):
                if x.shape[0] <= self.lda_max_rows:
                    return x
                return x[np.sort(rng.choice(x.shape[0], self.lda_max_rows, replace=False))]

            W = fit_language_lda(sample(src), sample(tgt), self.lda_components)
        tid = np.flatnonzero(keep).astype(np.int64)
        lam = lambdas_for(self.lam, tid, self.beta_alpha, self.seed)
        out = (
            lda_project_interp(src[source_id[tid]], tgt[tid], W, lam, self.mode, backend=self.backend)
            if tid.size
            else np.zeros((0, src.shape[1]), np.float32)
        )

        hist = SimilarityHistogram()
        hist.add(sim[tid])
        counts = np.bincount(labels[tid], minlength=len(names))
        acc_kw: dict = {}
        if target_gold_labels is not None:
            gold = np.asarray([str(x) for x in target_gold_labels], dtype=object)
            pred = names[labels].astype(object)
            correct = pred == gold
            acc_kw = {
                "n_correct": int(correct[tid].sum()),
                "n_gold": len(gold),
                "n_correct_all": int(correct[tid].sum()),
            }
        report = build_report(
            label_names=list(names),
            label_counts=counts,
            hist=hist,
            n_targets=tgt.shape[0],
            n_dropped=int((~keep).sum()),
            options=self.options(),
            **acc_kw,
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
        )
