"""Label transfer from matched source rows, and the per-row interpolation weights λ.

:func:`transfer_labels` turns top-k matches into one label per target row (``top1`` or a weighted vote;
ties by rank, so deterministic); :func:`beta_lambdas` draws λ ~ Beta(a, a) as a pure function of
``(seed, row id)``, so it does not depend on batching, sharding or resuming.
"""

from __future__ import annotations

import numpy as np

__all__ = ["VOTES", "transfer_labels", "beta_lambdas", "lambdas_for"]

VOTES = ("top1", "weighted")


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
