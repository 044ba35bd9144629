"""Debiased Sinkhorn divergence between batched point clouds (entropic OT, cost ½‖x − y‖²).

S_ε(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β)        (Feydy et al. 2019; Alqahtani et al. 2021)

with OT_ε(α, β) = min_π <π, C> + ε KL(π | a⊗b), evaluated as the dual value <a, f> + <b, g> at the
potentials of log-domain Sinkhorn iterations (geomloss convention). Note that POT's
``ot.sinkhorn2`` returns only the linear term <π, C> of the same optimal plan, not this value.

The backward pass uses the envelope theorem: at the optimum, ∂OT/∂x_i = Σ_j π_ij (x_i − y_j) with
π_ij = a_i b_j exp((f_i + g_j − C_ij)/ε) built from the final potentials, so no per-iteration state
is stored (memory O(B·n·m) once, not O(n_iters·B·n·m) as autograd through the loop would need).
Double backward is not supported.

Backends: ``cpu`` (C++ AVX2/OpenMP kernel ``xite_fast._C.sinkhorn``), ``triton`` (GPU kernels
``xite_fast.ops.triton.sinkhorn``: ``sinkhorn`` and ``sinkhorn_backward`` on torch tensors, the
contract of the C++ functions; ``"auto"`` picks them for CUDA inputs), ``torch`` (plain-torch
reference loop, any device).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from xite_fast._backend import Backend, load_extension, resolve_backend
from xite_fast._validation import check_finite, check_positive_int
from xite_fast.reference import (
    sinkhorn_diameter_ref,
    sinkhorn_eps_list_ref,
    sinkhorn_ref,
    sq_euclidean_cost_ref,
)

__all__ = ["sinkhorn_divergence", "sinkhorn_ot"]

_REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------------------------ solvers
def _solve_torch(x, y, a, b, eps_list, tol, symmetric):
    with torch.no_grad():
        f, g, value, _ = sinkhorn_ref(x, y, a, b, eps_list, tol=tol, symmetric=symmetric)
    return f, g, value


def _backward_torch(x, y, a, b, f, g, eps, w, symmetric):
    cost = sq_euclidean_cost_ref(x, y)
    logpi = a.log().unsqueeze(-1) + b.log().unsqueeze(-2) + (f.unsqueeze(-1) + g.unsqueeze(-2) - cost) / eps
    pi = logpi.exp()  # padded points have weight 0 -> log 0 = -inf -> π = 0
    w = w.view(-1, 1, 1)
    gx = (pi.sum(-1, keepdim=True) * x - pi @ y) * w
    if symmetric:
        return 2 * gx, None
    gy = (pi.sum(-2).unsqueeze(-1) * y - pi.transpose(-1, -2) @ x) * w
    return gx, gy


def _np(t: torch.Tensor):
    return t.detach().contiguous().numpy()


def _solve_cpu(x, y, a, b, eps_list, tol, symmetric):
    ext = load_extension()
    f, g, value, _ = ext.sinkhorn(
        _np(x), _np(y), _np(a), _np(b), eps_list, float(tol or 0.0), bool(symmetric)
    )
    return torch.from_numpy(f), torch.from_numpy(g), torch.from_numpy(value).to(x.dtype)


def _backward_cpu(x, y, a, b, f, g, eps, w, symmetric):
    ext = load_extension()
    gx, gy = ext.sinkhorn_backward(
        _np(x), _np(y), _np(a), _np(b), _np(f), _np(g), float(eps), _np(w.to(x.dtype)), bool(symmetric)
    )
    return torch.from_numpy(gx), None if symmetric else torch.from_numpy(gy)


def _triton_module():
    import importlib

    return importlib.import_module("xite_fast.ops.triton.sinkhorn")


def _solve_triton(x, y, a, b, eps_list, tol, symmetric):
    f, g, value, _ = _triton_module().sinkhorn(x, y, a, b, eps_list, float(tol or 0.0), bool(symmetric))
    return f, g, value.to(x.dtype)


def _backward_triton(x, y, a, b, f, g, eps, w, symmetric):
    gx, gy = _triton_module().sinkhorn_backward(x, y, a, b, f, g, float(eps), w.to(x.dtype))
    return (gx + gy, None) if symmetric else (gx, gy)


_SOLVERS = {
    Backend.CPU: (_solve_cpu, _backward_cpu),
    Backend.TORCH: (_solve_torch, _backward_torch),
    Backend.TRITON: (_solve_triton, _backward_triton),
}


class _SinkhornOT(torch.autograd.Function):
    """value (B,) = OT_ε(α, β); backward from the converged potentials (envelope theorem)."""

    @staticmethod
    def forward(ctx, x, y, a, b, eps_list, tol, backend):
        solve, _ = _SOLVERS[backend]
        f, g, value = solve(x, y, a, b, eps_list, tol, False)
        ctx.save_for_backward(x, y, a, b, f, g)
        ctx.eps = eps_list[-1]
        ctx.backend = backend
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        x, y, a, b, f, g = ctx.saved_tensors
        _, backward = _SOLVERS[ctx.backend]
        gx, gy = backward(x, y, a, b, f, g, ctx.eps, grad_value.contiguous(), False)
        return gx, gy, None, None, None, None, None


class _SinkhornOTSym(torch.autograd.Function):
    """value (B,) = OT_ε(α, α) (symmetric solver, g = f).

    ∂/∂x_i = 2 Σ_j π_ij (x_i − x_j) because π is symmetric: one half of the plan product suffices.
    """

    @staticmethod
    def forward(ctx, x, a, eps_list, tol, backend):
        solve, _ = _SOLVERS[backend]
        f, _, value = solve(x, x, a, a, eps_list, tol, True)
        ctx.save_for_backward(x, a, f)
        ctx.eps = eps_list[-1]
        ctx.backend = backend
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value):
        x, a, f = ctx.saved_tensors
        _, backward = _SOLVERS[ctx.backend]
        gx, _ = backward(x, x, a, a, f, f, ctx.eps, grad_value.contiguous(), True)
        return gx, None, None, None, None


# ------------------------------------------------------------------------------------- validation
def _check_cloud(name: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor (B, n, D), got {type(t).__name__}")
    if t.ndim != 3:
        raise ValueError(f"{name} must be 3-D (B, n, D) (or 2-D (n, D)), got shape {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating dtype (float32 or float64), got {t.dtype}")
    if any(s == 0 for s in t.shape):
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")


def _weights(name: str, mask: Any, bsz: int, n: int, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.full((bsz, n), 1.0 / n, dtype=like.dtype, device=like.device)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor (B, n) of bool/0-1, got {type(mask).__name__}")
    if tuple(mask.shape) != (bsz, n):
        raise ValueError(f"{name} must have shape {(bsz, n)}, got {tuple(mask.shape)}")
    m = mask.detach().to(device=like.device)
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{name} must be bool or 0/1 valued")
        m = m != 0
    counts = m.sum(-1)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0, 0])
        raise ValueError(
            f"{name} masks out every point of batch item {row}; each item needs at least one point"
        )
    w = m.to(like.dtype)
    return w / counts.unsqueeze(-1).to(like.dtype)


def _prepare(x, y, x_mask, y_mask, eps, n_iters, tol, eps_schedule, backend):
    _check_cloud("x", x)
    _check_cloud("y", y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have the batch size of x ({x.shape[0]}), got shape {tuple(y.shape)}")
    if y.shape[2] != x.shape[2]:
        raise ValueError(f"y must have the feature dimension of x ({x.shape[2]}), got shape {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
    n_iters = check_positive_int("n_iters", n_iters)
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0):
        raise ValueError(f"tol must be None or a float >= 0, got {tol!r}")
    if eps_schedule not in (None, "anneal"):
        raise ValueError(f"eps_schedule must be None or 'anneal', got {eps_schedule!r}")
    check_finite("x", x.detach())
    check_finite("y", y.detach())
    be = resolve_backend("sinkhorn", backend, on_gpu=x.is_cuda)
    # compute dtype: fp16/bf16 are upcast (exp/log of potentials need the range)
    cdt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if y.dtype != x.dtype:
        cdt = torch.promote_types(cdt, y.dtype)
    if be is Backend.CPU and x.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got x on {x.device}")
    xc, yc = x.to(cdt), y.to(cdt)
    a = _weights("x_mask", x_mask, x.shape[0], x.shape[1], xc)
    b = _weights("y_mask", y_mask, y.shape[0], y.shape[1], xc)
    diameter = sinkhorn_diameter_ref(xc, yc, a, b) if eps_schedule == "anneal" else 1.0
    eps_list = sinkhorn_eps_list_ref(float(eps), n_iters, eps_schedule, diameter)
    return xc, yc, a, b, eps_list, be


def _reduce(value: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return value.mean()
    if reduction == "sum":
        return value.sum()
    return value


def _as_batched(x, y, x_mask, y_mask):
    single = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.ndim == 2 and y.ndim == 2
    if single:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
        x_mask = x_mask.unsqueeze(0) if isinstance(x_mask, torch.Tensor) else x_mask
        y_mask = y_mask.unsqueeze(0) if isinstance(y_mask, torch.Tensor) else y_mask
    return single, x, y, x_mask, y_mask


# --------------------------------------------------------------------------------------- public API
def sinkhorn_ot(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    eps: float = 0.1,
    n_iters: int = 50,
    tol: float | None = None,
    eps_schedule: str | None = None,
    backend: str | Backend = "auto",
    reduction: str = "mean",
) -> torch.Tensor:
    """Entropic OT value OT_ε(α, β) (biased; see :func:`sinkhorn_divergence`). Same arguments."""
    return sinkhorn_divergence(
        x,
        y,
        x_mask=x_mask,
        y_mask=y_mask,
        eps=eps,
        n_iters=n_iters,
        tol=tol,
        eps_schedule=eps_schedule,
        debias=False,
        backend=backend,
        reduction=reduction,
    )


def sinkhorn_divergence(
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
    backend: str | Backend = "auto",
    reduction: str = "mean",
) -> torch.Tensor:
    """Debiased Sinkhorn divergence between batched point clouds with uniform weights.

    S_ε(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β), cost C_ij = ½‖x_i − y_j‖²,
    OT_ε = min_π <π, C> + ε KL(π | a⊗b) = <a, f> + <b, g> at the Sinkhorn potentials. S_ε ≥ 0 and
    S_ε(α, α) = 0. ε has the units of the cost (squared distance / 2): for unnormalised hidden
    states with norms ~10 a small ε needs ``eps_schedule="anneal"`` or many iterations.

    Args:
        x: (B, n, D) float32/float64 tensor (or (n, D) for a single pair; the result is then a scalar).
        y: (B, m, D) tensor of the same dtype family and feature dimension.
        x_mask: (B, n) bool or 0/1, True = real point, False = padding. None: all real.
        y_mask: (B, m) likewise.
        eps: entropic regularisation ε > 0.
        n_iters: Sinkhorn iterations per OT problem (with ``"anneal"``, the first half anneal ε).
        tol: stop early once max |Δf| over one iteration at the final ε is below ``tol``.
        eps_schedule: None (constant ε) or ``"anneal"`` (ε-scaling from the cloud diameter).
        debias: subtract the self-transport terms (False gives OT_ε(α, β)).
        backend: ``"auto"``, ``"cpu"`` (C++), ``"triton"`` (GPU) or ``"torch"`` (reference).
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` for (B,).

    Returns:
        Scalar tensor, or (B,) with ``reduction="none"``, in the compute dtype (float32 for half
        inputs). Differentiable w.r.t. x and y (envelope-theorem backward).

    Raises:
        ValueError: bad shapes/dtypes, NaN/inf, eps <= 0, n_iters < 1, an item masked out entirely,
            unknown ``eps_schedule``/``reduction``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    single, x, y, x_mask, y_mask = _as_batched(x, y, x_mask, y_mask)
    xc, yc, a, b, eps_list, be = _prepare(x, y, x_mask, y_mask, eps, n_iters, tol, eps_schedule, backend)
    value = _SinkhornOT.apply(xc, yc, a, b, eps_list, tol, be)
    if debias:
        value = value - 0.5 * _SinkhornOTSym.apply(xc, a, eps_list, tol, be)
        value = value - 0.5 * _SinkhornOTSym.apply(yc, b, eps_list, tol, be)
    if single:
        return value[0]
    return _reduce(value, reduction)
