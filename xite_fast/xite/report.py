"""The augment report: a mergeable similarity histogram and the report dict built from shard counters."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SimilarityHistogram", "build_report", "format_summary"]


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
            f"({lt['accuracy_all']:.3f} counting dropped as wrong; majority class {lt['majority_baseline']:.3f})"
        )
    lines.append("  label distribution:")
    for name, c in sorted(report["label_distribution"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<24s} {c:>9d}")
    sim = report["similarity"]
    if sim["n"]:
        lines.append(f"  match similarity: mean {sim['mean']:.3f}, min {sim['min']:.3f}, max {sim['max']:.3f}")
        lines.append(SimilarityHistogram.from_dict(sim).format())
    lines.append("  time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timing_s"].items()))
    lines.append(f"  wrote {out}/synthetic (manifest.json) and {out}/report.json")
    return "\n".join(lines)
