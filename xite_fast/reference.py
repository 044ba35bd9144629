"""Plain-torch reference implementations of every op (STYLE rule 1).

They are the TORCH backend, the test oracle and the benchmark baseline. They favour clarity and
exactness over speed, but stay chunked so they never hold an N x M matrix for large inputs.
"""

from __future__ import annotations

import torch

__all__ = [
    "cosine_topk_ref",
    "rescale_rows",
    "NORM_SQ_RANGE",
    "lda_project_interp_ref",
    "LDA_PROJECT_INTERP_MODES",
    "sq_euclidean_cost_ref",
    "sinkhorn_eps_list_ref",
    "sinkhorn_ref",
    "sinkhorn_diameter_ref",
    "sinkhorn_divergence_ref",
]


# Squared row norms inside this range are normalised as they are; a nonzero row outside it (norm
# outside [2^-60, 2^60]) is first scaled by a power of two, since its float32 norm would overflow
# (1e20 -> inf: cosine 0) or underflow (1e-25 -> subnormal sums: cosine > 1). Exact: a power of two
# scales every value without rounding and the cosine is scale-invariant; rows inside the range are
# not touched, so their results are unchanged. (ops/cosine_topk.py holds the numpy twin.)
NORM_SQ_RANGE = (2.0**-120, 2.0**120)


def rescale_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every nonzero row whose norm is outside [2^-60, 2^60] scaled by a power of two to a
    norm in [0.5, 1) (a copy; ``x`` itself when no row needs it). Any float dtype and device."""
    if x.numel() == 0:
        return x
    ss = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64).square()
    bad = (ss > 0) & ((ss < NORM_SQ_RANGE[0]) | (ss > NORM_SQ_RANGE[1]))
    if not bool(bad.any()):
        return x
    _, e = torch.frexp(ss[bad].sqrt())
    x = x.clone()
    x[bad] = (x[bad].to(torch.float64) * torch.exp2(-e.to(torch.float64)).unsqueeze(-1)).to(x.dtype)
    return x


def _normalize(x: torch.Tensor) -> torch.Tensor:
    # Zero vectors stay zero (their cosine with anything is 0), matching the C++ kernel.
    x = rescale_rows(x)
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

    score[i, j] = <q_i, x_j> / (|q_i| |x_j|); zero vectors score 0 against everything. Rows are
    normalised first, any finite nonzero magnitude included (:func:`rescale_rows`).
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


LDA_PROJECT_INTERP_MODES = ("interp", "proj", "comp", "shift")


def lda_project_interp_ref(
    src: torch.Tensor,
    tgt: torch.Tensor,
    W: torch.Tensor | None,
    lam: float | torch.Tensor,
    mode: str = "proj",
    *,
    compute_dtype: torch.dtype = torch.float64,
    out_dtype: torch.dtype | None = None,
    chunk: int = 8192,
) -> torch.Tensor:
    """LDA projection + interpolation, literally as defined (the oracle of the fused kernel).

    With P(x) = x W W^T and g = 1 - lam (per row):
    ``interp``: lam*s + g*t; ``proj``: lam*s + g*P(t); ``comp``: lam*s + g*(t - P(t));
    ``shift``: s - g*P(s) + g*P(t).

    Args:
        src: (N, D) or (N, T, D) float tensor.
        tgt: same shape as ``src``.
        W: (D, r) float tensor with orthonormal columns (ignored, may be None, for ``interp``).
        lam: float or (N,) tensor, broadcast over T for 3-D inputs.
        mode: one of ``LDA_PROJECT_INTERP_MODES``.
        compute_dtype: arithmetic dtype (float64 for the test oracle).
        out_dtype: dtype of the result (default ``src.dtype``).
        chunk: rows per step, so float64 temporaries stay small for large N.

    Returns:
        Tensor shaped like ``src``.
    """
    if mode not in LDA_PROJECT_INTERP_MODES:
        raise ValueError(f"mode must be one of {LDA_PROJECT_INTERP_MODES}, got {mode!r}")
    shape = tuple(src.shape)
    d = shape[-1]
    per = 1
    for s in shape[1:-1]:
        per *= int(s)
    s2 = src.reshape(-1, d)
    t2 = tgt.reshape(-1, d)
    if isinstance(lam, torch.Tensor) and lam.ndim > 0:
        lam_rows = lam.to(compute_dtype).repeat_interleave(per).reshape(-1, 1)
    else:
        lam_rows = torch.full((s2.shape[0], 1), float(lam), dtype=compute_dtype)
    w = None if mode == "interp" else W.to(device=src.device, dtype=compute_dtype)
    out = torch.empty(s2.shape, dtype=out_dtype or src.dtype, device=src.device)
    for i0 in range(0, s2.shape[0], chunk):
        s = s2[i0 : i0 + chunk].to(compute_dtype)
        t = t2[i0 : i0 + chunk].to(compute_dtype)
        lm = lam_rows[i0 : i0 + chunk].to(src.device)
        g = 1.0 - lm
        if mode == "interp":
            o = lm * s + g * t
        elif mode == "proj":
            o = lm * s + g * ((t @ w) @ w.T)
        elif mode == "comp":
            o = lm * s + g * (t - (t @ w) @ w.T)
        else:
            o = s - g * ((s @ w) @ w.T) + g * ((t @ w) @ w.T)
        out[i0 : i0 + chunk] = o.to(out.dtype)
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Entropic optimal transport (Sinkhorn) references
# ---------------------------------------------------------------------------------------------


def sq_euclidean_cost_ref(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Batched half squared Euclidean cost C_ij = ½‖x_i − y_j‖².

    Args:
        x: (B, n, D) float tensor.
        y: (B, m, D) float tensor.

    Returns:
        (B, n, m) cost in the dtype of ``x`` (clamped at 0: the expansion can go slightly negative).
    """
    xx = (x * x).sum(-1).unsqueeze(-1)
    yy = (y * y).sum(-1).unsqueeze(-2)
    return (0.5 * (xx + yy) - x @ y.transpose(-1, -2)).clamp_min(0)


def sinkhorn_eps_list_ref(
    eps: float, n_iters: int, schedule: str | None = None, diameter: float = 1.0
) -> list[float]:
    """The ε used at each Sinkhorn iteration.

    ``None``: constant ε. ``"anneal"``: ε-scaling (Feydy et al. 2019 / geomloss) — start at the
    cost scale ½·diameter² and decrease geometrically to ``eps`` over the first half of the
    iterations, then stay at ``eps``; large ε first makes the log-domain iterations converge in far
    fewer steps than a cold start at a small ε.
    """
    if schedule is None:
        return [float(eps)] * n_iters
    start = max(0.5 * float(diameter) ** 2, float(eps))
    n_anneal = n_iters // 2
    if n_anneal <= 1 or start <= eps:
        return [float(eps)] * n_iters
    ratio = (eps / start) ** (1.0 / (n_anneal - 1))
    head = [start * ratio**k for k in range(n_anneal)]
    head[-1] = float(eps)
    return [max(float(e), float(eps)) for e in head] + [float(eps)] * (n_iters - n_anneal)


def sinkhorn_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps_list: list[float],
    *,
    tol: float | None = None,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Log-domain Sinkhorn for OT_ε(α, β), α = Σ a_i δ_{x_i}, β = Σ b_j δ_{y_j}, cost ½‖x − y‖².

    OT_ε(α, β) = min_π <π, C> + ε KL(π | a⊗b) over couplings π of (a, b), computed by its dual
    value <a, f> + <b, g> at the (approximately) converged potentials, where

        f_i = −ε log Σ_j b_j exp((g_j − C_ij)/ε),   g_j = −ε log Σ_i a_i exp((f_i − C_ij)/ε)

    and π_ij = a_i b_j exp((f_i + g_j − C_ij)/ε). ``symmetric=True`` (x is y, a is b) uses the
    averaged update f ← ½(f + T(f)) and a final plain step, and returns g = f. Points with weight 0
    are padding: their potentials are computed but never weighted. Plain torch, so autograd
    through the unrolled loop gives the oracle gradient for the envelope-theorem backward.

    Args:
        x: (B, n, D) float tensor.
        y: (B, m, D) float tensor.
        a: (B, n) nonnegative weights, rows sum to 1.
        b: (B, m) nonnegative weights, rows sum to 1.
        eps_list: ε per iteration (see :func:`sinkhorn_eps_list_ref`).
        tol: stop once the max change of f over one iteration at the final ε is below ``tol``.
        symmetric: solve OT_ε(α, α) (``y``/``b`` are ignored).

    Returns:
        f (B, n), g (B, m), value (B,), number of iterations run.
    """
    if symmetric:
        y, b = x, a
    cost = sq_euclidean_cost_ref(x, y)
    loga, logb = a.log(), b.log()
    valid_a = a > 0
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    final_eps = eps_list[-1]
    done = 0
    for e in eps_list:
        if symmetric:
            t = -e * torch.logsumexp(loga.unsqueeze(-2) + (f.unsqueeze(-2) - cost) / e, dim=-1)
            f_new = 0.5 * (f + t)
        else:
            f_new = -e * torch.logsumexp(logb.unsqueeze(-2) + (g.unsqueeze(-2) - cost) / e, dim=-1)
            g = -e * torch.logsumexp(loga.unsqueeze(-1) + (f_new.unsqueeze(-1) - cost) / e, dim=-2)
        done += 1
        converged = False
        if tol is not None and e == final_eps:
            change = torch.where(valid_a, (f_new - f).abs(), torch.zeros_like(f)).max()
            converged = bool(change.detach() < tol)
        f = f_new
        if converged:
            break
    if symmetric:
        # final extrapolation step without averaging (as geomloss does) sharpens the estimate
        f = -final_eps * torch.logsumexp(loga.unsqueeze(-2) + (f.unsqueeze(-2) - cost) / final_eps, dim=-1)
        g = f
    value = (a * f).sum(-1) + (b * g).sum(-1)
    return f, g, value, done


def _uniform_weights(mask: torch.Tensor | None, batch: int, n: int, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.full((batch, n), 1.0 / n, dtype=like.dtype, device=like.device)
    w = mask.to(like.dtype)
    return w / w.sum(-1, keepdim=True)


def sinkhorn_diameter_ref(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Diagonal of the bounding box of all unpadded points of x and y (the ε-annealing start scale)."""
    pts = torch.cat([x[a > 0], y[b > 0]], dim=0).detach()
    return float((pts.max(0).values - pts.min(0).values).norm())


def sinkhorn_divergence_ref(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    eps: float = 0.1,
    n_iters: int = 50,
    tol: float | None = None,
    eps_schedule: str | None = None,
    debias: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Debiased Sinkhorn divergence S_ε(α,β) = OT_ε(α,β) − ½OT_ε(α,α) − ½OT_ε(β,β) (plain torch).

    Uniform weights over the unmasked points; cost ½‖x − y‖²; gradients by autograd through the
    unrolled iterations (memory grows with ``n_iters`` — the fast op uses the envelope theorem).

    Args:
        x: (B, n, D) float tensor.
        y: (B, m, D) float tensor.
        x_mask: (B, n) bool/0-1, True = real point. ``None``: all real.
        y_mask: (B, m) likewise.
        eps, n_iters, tol, eps_schedule: see :func:`sinkhorn_ref` / :func:`sinkhorn_eps_list_ref`.
        debias: subtract the symmetric terms (False returns OT_ε(α, β)).
        reduction: ``"mean"`` over the batch, ``"sum"`` or ``"none"`` (B,).

    Returns:
        scalar or (B,) tensor in the dtype of ``x``.
    """
    bsz, n, _ = x.shape
    m = y.shape[1]
    a = _uniform_weights(x_mask, bsz, n, x)
    b = _uniform_weights(y_mask, bsz, m, x)
    diameter = sinkhorn_diameter_ref(x, y, a, b) if eps_schedule == "anneal" else 1.0
    eps_list = sinkhorn_eps_list_ref(eps, n_iters, eps_schedule, diameter)
    value = sinkhorn_ref(x, y, a, b, eps_list, tol=tol)[2]
    if debias:
        value = value - 0.5 * sinkhorn_ref(x, x, a, a, eps_list, tol=tol, symmetric=True)[2]
        value = value - 0.5 * sinkhorn_ref(y, y, b, b, eps_list, tol=tol, symmetric=True)[2]
    if reduction == "mean":
        return value.mean()
    if reduction == "sum":
        return value.sum()
    return value
