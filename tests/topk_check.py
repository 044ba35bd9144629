"""Tie-aware comparison of top-k results (after faiss's ``check_ref_knn_with_draws``).

Two exact top-k searches may legitimately differ where scores tie (within rounding): inside a group
of tied reference scores the indices must match as sets, outside such groups they must match
exactly. The last group of a row may continue past position k, so there the kernel may pick other
members of the tie: pass the data (queries, keys) so every returned index is re-scored in float64
to prove it belongs there; without the data the last group must match as a set too. Failures print the first mismatching rows.

Importable by other tests: ``from tests.topk_check import assert_topk_equal, exact_topk``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["assert_topk_equal", "exact_topk", "cosine_scores64", "random_data", "ref_topk64"]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def cosine_scores64(queries: Any, keys: Any, *, assume_normalized: bool = False) -> np.ndarray:
    """(N, M) float64 cosine scores; zero vectors score 0 (small inputs only)."""
    q = _np(queries).astype(np.float64)
    x = _np(keys).astype(np.float64)
    if not assume_normalized:
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        xn = np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.where(qn > 0, qn, 1.0)
        x = x / np.where(xn > 0, xn, 1.0)
    return q @ x.T


def exact_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a dense (N, M) score matrix: descending, ties -> lower index (stable sort)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order.astype(np.int64)


def _fmt_row(r: int, s, i, rs, ri) -> str:
    return f"  row {r}:\n    got idx {i.tolist()}\n    ref idx {ri.tolist()}\n    got s {s.tolist()}\n    ref s {rs.tolist()}"


def assert_topk_equal(
    scores: Any,
    indices: Any,
    ref_scores: Any,
    ref_indices: Any,
    *,
    atol: float = 1e-5,
    queries: Any = None,
    keys: Any = None,
    assume_normalized: bool = False,
    max_rows: int = 3,
) -> None:
    """Assert that (scores, indices) is a correct top-k given the reference (ref_scores, ref_indices).

    Args:
        scores, indices: (N, k) result under test.
        ref_scores, ref_indices: (N, k) oracle result.
        atol: score tolerance; reference scores closer than ``2 * atol`` count as tied.
        queries, keys: optional (N, D) / (M, D) data to re-score returned indices in float64.
        assume_normalized: how to re-score (raw inner products when True).
        max_rows: how many failing rows to print.
    """
    s, i, rs, ri = _np(scores), _np(indices), _np(ref_scores), _np(ref_indices)
    if s.shape != rs.shape or i.shape != ri.shape or s.shape != i.shape:
        raise AssertionError(
            f"shape mismatch: scores {s.shape} indices {i.shape} vs ref {rs.shape} {ri.shape}"
        )
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s).all(axis=1))
        raise AssertionError(f"scores contain NaN/inf in rows {bad[:max_rows].tolist()}")
    n, k = s.shape
    problems: list[str] = []
    if k and (np.diff(s, axis=1) > 0).any():
        r = int(np.flatnonzero((np.diff(s, axis=1) > 0).any(axis=1))[0])
        problems.append("scores not sorted descending\n" + _fmt_row(r, s[r], i[r], rs[r], ri[r]))
    sorted_i = np.sort(i, axis=1)
    if k > 1 and (np.diff(sorted_i, axis=1) == 0).any():
        r = int(np.flatnonzero((np.diff(sorted_i, axis=1) == 0).any(axis=1))[0])
        problems.append("duplicate indices in a row\n" + _fmt_row(r, s[r], i[r], rs[r], ri[r]))
    diff = np.abs(s.astype(np.float64) - rs.astype(np.float64))
    if (diff > atol).any():
        rows = np.flatnonzero((diff > atol).any(axis=1))
        problems.append(
            f"scores differ by up to {diff.max():.3g} > atol={atol} in {len(rows)} rows\n"
            + "\n".join(_fmt_row(int(r), s[r], i[r], rs[r], ri[r]) for r in rows[:max_rows])
        )
    if queries is not None and keys is not None:
        q = _np(queries).astype(np.float64)
        x = _np(keys).astype(np.float64)
        if i.min(initial=0) < 0 or i.max(initial=0) >= x.shape[0]:
            raise AssertionError(f"indices out of range [0, {x.shape[0]})")
        true = np.einsum("nd,nkd->nk", q, x[i]) if assume_normalized else None
        if true is None:
            qn = np.linalg.norm(q, axis=1)
            xn = np.linalg.norm(x, axis=1)[i]
            dots = np.einsum("nd,nkd->nk", q, x[i])
            denom = qn[:, None] * xn
            true = np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), 0.0)
        tdiff = np.abs(true - s)
        if (tdiff > atol).any():
            rows = np.flatnonzero((tdiff > atol).any(axis=1))
            problems.append(
                f"returned scores differ from the float64 re-score of their indices by {tdiff.max():.3g}\n"
                + "\n".join(_fmt_row(int(r), s[r], i[r], true[r], ri[r]) for r in rows[:max_rows])
            )
    rescored = queries is not None and keys is not None
    bad_rows: list[int] = []
    for r in range(n):
        # tie groups of the reference: consecutive scores within 2*atol are chained together
        breaks = np.flatnonzero(np.abs(np.diff(rs[r].astype(np.float64))) > 2 * atol) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [k]])
        ok = True
        for a, b in zip(starts, ends, strict=True):
            if b == k and rescored:
                # the last group may continue past k, so other members of the tie are valid too;
                # their membership was proven by the float64 re-score above
                continue
            if b - a == 1:
                ok = i[r, a] == ri[r, a]
            else:
                ok = set(i[r, a:b].tolist()) == set(ri[r, a:b].tolist())
            if not ok:
                break
        if not ok:
            bad_rows.append(r)
    if bad_rows:
        problems.append(
            f"indices differ outside tie groups in {len(bad_rows)} rows\n"
            + "\n".join(_fmt_row(r, s[r], i[r], rs[r], ri[r]) for r in bad_rows[:max_rows])
        )
    if problems:
        raise AssertionError("top-k mismatch:\n" + "\n".join(problems))


def random_data(n: int, m: int, d: int, seed: int = 0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal queries (n, d) and keys (m, d) from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((m, d)).astype(dtype)


def ref_topk64(q: Any, x: Any, k: int, assume_normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) of the float64 torch reference ``xite_fast.reference.cosine_topk_ref``."""
    import torch

    from xite_fast.reference import cosine_topk_ref

    s, i = cosine_topk_ref(
        torch.from_numpy(np.asarray(q, np.float64)),
        torch.from_numpy(np.asarray(x, np.float64)),
        k,
        assume_normalized=assume_normalized,
    )
    return s.numpy(), i.numpy()
