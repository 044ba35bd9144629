"""Plain-torch reference implementations of every op (STYLE rule 1).

They are the TORCH backend, the test oracle and the benchmark baseline. They favour clarity and
exactness over speed, but stay chunked so they never hold an N x M matrix for large inputs.
"""

from __future__ import annotations

import torch

__all__ = ["cosine_topk_ref"]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    # Zero vectors stay zero (their cosine with anything is 0), matching the C++ kernel.
    norm = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def cosine_topk_ref(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    assume_normalized: bool = False,
    chunk: int = 4096,
    key_chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine similarity, chunked over queries and keys.

    score[i, j] = <q_i, x_j> / (|q_i| |x_j|); zero vectors score 0 against everything.
    Ties are broken by the lower key index, like the C++ kernel.

    Args:
        queries: (N, D) float tensor.
        keys: (M, D) float tensor.
        k: number of neighbours, 1 <= k <= M.
        assume_normalized: skip normalization (inputs are unit-norm).

    Returns:
        scores (N, k) float32 sorted descending, indices (N, k) int64.
    """
    q = queries if assume_normalized else _normalize(queries)
    n, m = q.shape[0], keys.shape[0]
    out_s = torch.empty((n, k), dtype=torch.float32)
    out_i = torch.empty((n, k), dtype=torch.int64)
    for i0 in range(0, n, chunk):
        qb = q[i0 : i0 + chunk]
        best_s = torch.full((qb.shape[0], 0), float("-inf"), dtype=qb.dtype)
        best_i = torch.empty((qb.shape[0], 0), dtype=torch.int64)
        for j0 in range(0, m, key_chunk):
            kb = keys[j0 : j0 + key_chunk]
            kb = kb if assume_normalized else _normalize(kb)
            s = qb @ kb.T
            kk = min(k, s.shape[1])
            # stable sort: equal scores keep ascending key order, so lower indices win ties
            ts, ti = torch.sort(s, dim=1, descending=True, stable=True)
            cand_s = torch.cat([best_s, ts[:, :kk]], dim=1)
            cand_i = torch.cat([best_i, ti[:, :kk] + j0], dim=1)
            # candidates are ordered (old, lower indices first) so a stable sort keeps tie order
            order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]
            best_s = torch.gather(cand_s, 1, order)
            best_i = torch.gather(cand_i, 1, order)
        out_s[i0 : i0 + chunk] = best_s.to(torch.float32)
        out_i[i0 : i0 + chunk] = best_i
    return out_s, out_i
