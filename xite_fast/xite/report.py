"""The one report builder of :class:`~xite_fast.xite.augmenter.XiteAugmenter` and the ``augment`` pipeline:
mergeable counters (:class:`TransferCounts`, with a :class:`SimilarityHistogram`), gold accuracy, the
report dict, the provenance records of synthetic rows, the synthetic rows as a table (``to_dataset`` /
``to_pandas`` of both results) and the CLI's text summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SimilarityHistogram",
    "TransferCounts",
    "build_report",
    "correct_labels",
    "format_summary",
    "majority_baseline",
    "provenance",
    "SYNTHETIC_COLUMNS",
    "synthetic_row",
    "synthetic_rows",
    "rows_dataset",
    "rows_frame",
]


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


@dataclass
class TransferCounts:
    """Mergeable counters of label transfer over some targets (one synthetic part, or all of them).

    Attributes:
        label_counts: (C,) int64 kept targets per label code.
        hist: similarity histogram of the kept targets' matches.
        n_targets: targets seen (kept + dropped). n_dropped: targets below the threshold.
        n_correct: kept targets whose transferred label equals their gold label (None: no gold labels).
    """

    label_counts: np.ndarray
    hist: SimilarityHistogram = field(default_factory=SimilarityHistogram)
    n_targets: int = 0
    n_dropped: int = 0
    n_correct: int | None = None

    @classmethod
    def count(
        cls,
        labels: np.ndarray,
        keep: np.ndarray,
        similarity: np.ndarray,
        n_classes: int,
        correct: np.ndarray | None = None,
    ) -> TransferCounts:
        """Counters of one batch: ``labels`` (N,) int codes, ``keep`` (N,) bool, ``similarity`` (N,) float
        of every target; ``correct`` (N,) bool (transferred label == gold) or None."""
        kept = np.flatnonzero(keep)
        hist = SimilarityHistogram()
        hist.add(similarity[kept])
        return cls(
            label_counts=np.bincount(labels[kept], minlength=n_classes).astype(np.int64),
            hist=hist,
            n_targets=len(keep),
            n_dropped=int(len(keep) - len(kept)),
            n_correct=None if correct is None else int(np.count_nonzero(correct[kept])),
        )

    def merge(self, other: TransferCounts) -> None:
        self.label_counts = self.label_counts + other.label_counts
        self.hist.merge(other.hist)
        self.n_targets += other.n_targets
        self.n_dropped += other.n_dropped
        if other.n_correct is not None:
            self.n_correct = (self.n_correct or 0) + other.n_correct

    def to_dict(self) -> dict:
        """The counters as a synthetic part's ``done.json`` records them."""
        return {
            "n_targets": int(self.n_targets),
            "rows": int(self.n_targets - self.n_dropped),
            "n_dropped": int(self.n_dropped),
            "label_counts": self.label_counts.tolist(),
            "n_correct": self.n_correct,
            "similarity": self.hist.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TransferCounts:
        return cls(
            label_counts=np.asarray(d["label_counts"], np.int64),
            hist=SimilarityHistogram.from_dict(d["similarity"]),
            n_targets=int(d["n_targets"]),
            n_dropped=int(d["n_dropped"]),
            n_correct=d["n_correct"],
        )


def correct_labels(label_names: Sequence, labels: np.ndarray, gold: Sequence) -> np.ndarray:
    """(N,) bool: transferred label ``label_names[labels[i]]`` equals ``gold[i]`` (values compared as
    Python objects, so 1 and "1" differ)."""
    names = np.empty(len(label_names), dtype=object)
    names[:] = list(label_names)
    g = np.empty(len(gold), dtype=object)
    g[:] = list(gold)
    return np.asarray(names[labels] == g, dtype=bool)


def majority_baseline(gold_counts: Sequence[int]) -> float:
    """Accuracy of always answering the most frequent gold label, from the count of each gold label."""
    counts = np.asarray(gold_counts, dtype=np.int64)
    return float(counts.max() / counts.sum())


def build_report(
    *,
    label_names: Sequence,
    counts: TransferCounts,
    options: dict | None = None,
    majority: float | None = None,
) -> dict:
    """The report dict (JSON-serializable) of :class:`XiteAugmenter` and of ``report.json``.

    Label-transfer accuracy (when ``counts.n_correct`` is known, i.e. the targets have gold labels):
    ``accuracy`` over the kept targets, ``accuracy_all`` with dropped targets counted wrong,
    ``majority_baseline`` (``majority``) for comparison; ``coverage`` = kept / targets.
    """
    n_targets, n_kept = int(counts.n_targets), int(counts.n_targets - counts.n_dropped)
    report: dict = {
        "n_targets": n_targets,
        "n_synthetic": n_kept,
        "n_dropped": int(counts.n_dropped),
        "coverage": n_kept / n_targets if n_targets else None,
        "label_distribution": {
            str(name): int(c) for name, c in zip(label_names, counts.label_counts, strict=True) if c
        },
        "similarity": counts.hist.to_dict(),
    }
    if counts.n_correct is not None:
        n_correct = int(counts.n_correct)
        report["label_transfer"] = {
            "n_gold": n_targets,
            "accuracy": (n_correct / n_kept) if n_kept else None,
            "accuracy_all": (n_correct / n_targets) if n_targets else None,
            "n_correct": n_correct,
        }
        if majority is not None:
            report["label_transfer"]["majority_baseline"] = majority
    if options is not None:
        report["options"] = options
    return report


def provenance(
    target_id: np.ndarray,
    source_id: np.ndarray,
    labels: Sequence,
    similarity: np.ndarray,
    lam: np.ndarray,
    mode: str,
    *,
    gold: Sequence | None = None,
    target_records: Sequence | None = None,
    source_records: Sequence | None = None,
    digits: int | None = None,
) -> list[dict]:
    """One record per synthetic row: which target and source row it was made from, their texts (with
    ``*_records``: objects with ``.text`` and ``.pair``), the label, the match similarity, λ, the mode
    and the gold label (with ``gold``). ``digits`` rounds similarity and λ (the run directory's
    ``part-*.jsonl``: 6); None keeps them exact."""

    def num(x) -> float:
        return float(x) if digits is None else round(float(x), digits)

    out = []
    for j in range(len(target_id)):
        rec: dict = {"target_id": int(target_id[j]), "source_id": int(source_id[j])}
        if target_records is not None and source_records is not None:
            rec["target_text"] = target_records[j].text
            rec["source_text"] = source_records[j].text
        rec.update(label=labels[j], similarity=num(similarity[j]), lam=num(lam[j]), mode=mode)
        if gold is not None:
            rec["gold_label"] = gold[j]
        if target_records is not None and target_records[j].pair is not None:
            rec["target_pair"] = target_records[j].pair
        if source_records is not None and source_records[j].pair is not None:
            rec["source_pair"] = source_records[j].pair
        out.append(rec)
    return out


def format_summary(report: dict, out) -> str:
    """The human summary of an augment report (what the CLI prints)."""
    lines = [f"xite-fast augment -> {out}"]
    lines.append(
        f"  source rows {report['n_source']}, target rows {report['n_targets']}, synthetic rows "
        f"{report['n_synthetic']}, dropped (threshold) {report['n_dropped']}"
    )
    lt = report.get("label_transfer")
    if lt:
        lines.append(
            f"  label-transfer accuracy vs target gold labels: {lt['accuracy']:.3f} on kept rows "
            f"({lt['accuracy_all']:.3f} counting dropped as wrong; majority class "
            f"{lt['majority_baseline']:.3f})"
        )
    lines.append("  label distribution:")
    for name, c in sorted(report["label_distribution"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<24s} {c:>9d}")
    sim = report["similarity"]
    if sim["n"]:
        lines.append(
            f"  match similarity: mean {sim['mean']:.3f}, min {sim['min']:.3f}, max {sim['max']:.3f}"
        )
        lines.append(SimilarityHistogram.from_dict(sim).format())
    lines.append("  time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timing_s"].items()))
    lines.append(f"  wrote {out}/synthetic (manifest.json) and {out}/report.json")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- tables out
# The synthetic rows as a table, for the run directory (AugmentRun) and the in-memory result
# (AugmentResult) alike: one row per synthetic row, built from its provenance record.
SYNTHETIC_COLUMNS = (
    "text",
    "text_pair",
    "label",
    "source_text",
    "source_pair",
    "similarity",
    "lam",
    "target_id",
    "source_id",
    "gold_label",
    "mode",
)
_FROM_PROVENANCE = {"text": "target_text", "text_pair": "target_pair", "source_pair": "source_pair"}


def synthetic_row(rec: dict) -> dict:
    """The table row of one provenance record (:func:`provenance`): ``text`` / ``text_pair`` (the target
    text, which the synthetic row stands for), ``label`` (transferred), ``source_text`` / ``source_pair``
    (the matched source row), ``similarity``, ``lam`` (λ, the source row's weight), ``target_id``,
    ``source_id``, ``gold_label`` (when the target had gold labels) and ``mode``; absent fields are None."""
    return {c: rec.get(_FROM_PROVENANCE.get(c, c)) for c in SYNTHETIC_COLUMNS}


def synthetic_rows(parts, *, embeddings: bool = False):
    """Rows (dicts) of the synthetic table from ``parts``: an iterable of ``(records, vectors)`` with
    ``records`` an iterable of provenance dicts and ``vectors`` a (rows, D) array (or None); with
    ``embeddings`` each row gets its float32 ``embedding``. Columns that are None in the first row (no
    pairs, no gold labels, no texts) are left out. Streams: one part's records at a time."""
    columns = None
    for records, vectors in parts:
        for j, rec in enumerate(records):
            row = synthetic_row(rec)
            if columns is None:
                columns = [c for c in SYNTHETIC_COLUMNS if row[c] is not None]
            out = {c: row[c] for c in columns}
            if embeddings:
                out["embedding"] = np.asarray(vectors[j], dtype=np.float32)
            yield out


def _part_rows(parts: list, embeddings: bool):
    """``datasets`` generator over run-directory parts ``[(provenance.jsonl, part.npy, sha256s), ...]``
    (module level, so the cache key is the parts' sha256s)."""
    import json

    def load(jsonl: str, npy: str):
        with open(jsonl, encoding="utf-8") as fh:
            recs = [json.loads(line) for line in fh]
        return recs, (np.load(npy, mmap_mode="r") if embeddings else None)

    yield from synthetic_rows((load(j, n) for j, n, _ in parts), embeddings=embeddings)


def _memory_rows(records: list, vectors: Any, embeddings: bool):
    yield from synthetic_rows([(records, vectors)], embeddings=embeddings)


def rows_dataset(gen: Any, gen_kwargs: dict, *, cache_dir: Any = None):
    """``datasets.Dataset.from_generator(gen, gen_kwargs=...)``: written to Arrow batch by batch (a
    million rows never sit in memory as Python objects), memory-mapped back."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("to_dataset() needs the `datasets` package: `pip install datasets`") from exc
    from xite_fast.logging import progress_enabled

    kw = {} if cache_dir is None else {"cache_dir": str(cache_dir)}
    quiet = not progress_enabled(None) and not datasets.utils.are_progress_bars_disabled()
    if quiet:  # datasets draws its own bars: only where ours would be drawn
        datasets.utils.disable_progress_bars()
    try:
        return datasets.Dataset.from_generator(gen, gen_kwargs=gen_kwargs, **kw)
    finally:
        if quiet:
            datasets.utils.enable_progress_bars()


def rows_frame(rows: Any):
    """A ``pandas.DataFrame`` of synthetic rows (see :func:`synthetic_rows`)."""
    import pandas as pd

    rows = list(rows)
    return (
        pd.DataFrame(rows)
        if rows
        else pd.DataFrame(columns=["label", "similarity", "lam", "target_id", "source_id", "mode"])
    )
