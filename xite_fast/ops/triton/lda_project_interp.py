"""Triton lda_project_interp: one fused pass over row tiles (projection + interpolation).

With ``P(x) = x W W^T`` (W: (D, r) orthonormal) every mode is ``out = a*s + b*t + g * (u W) W^T``:

    mode     a     b      g         u
    interp   lam   1-lam  0         -
    proj     lam   0      1-lam     t
    comp     lam   1-lam  -(1-lam)  t
    shift    1     0      1-lam     t - s     (= s - (1-lam) P(s) + (1-lam) P(t))

A program owns ``BLOCK_R`` rows: it loads the s and t row tiles once (whole rows when D <= 1024,
else it streams D in ``BLOCK_D`` chunks twice), computes ``c_j = u . W[:, j]`` with fp32 tree
reductions and accumulates ``a*s + b*t + g * sum_j c_j W[:, j]^T`` before one store. No ``tl.dot``:
r is small (languages - 1), the op is memory-bound, a ``tl.dot`` variant compiled for sm_80 spilled
registers, and tf32 would round the inputs to 10 mantissa bits. fp16/bf16 inputs are upcast on load
and the output is written in the input dtype.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

__all__ = ["lda_project_interp", "MODES"]

MODES = {"interp": 0, "proj": 1, "comp": 2, "shift": 3}
_SINGLE_PASS_MAX_D = 1024


@triton.jit
def _coeffs(lam, MODE: tl.constexpr):
    one = lam * 0.0 + 1.0
    if MODE == 0:
        return lam, one - lam, one * 0.0
    elif MODE == 1:
        return lam, one * 0.0, one - lam
    elif MODE == 2:
        return lam, one - lam, lam - one
    else:
        return one, one * 0.0, one - lam


@triton.jit
def _lda_project_interp_kernel(
    s_ptr,
    t_ptr,
    wt_ptr,
    lam_ptr,
    out_ptr,
    R,
    D,
    RANK,
    lam_scalar,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RPAD: tl.constexpr,
    MODE: tl.constexpr,
    LAM_PER_ROW: tl.constexpr,
    SINGLE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    base = rows[:, None].to(tl.int64) * D
    if LAM_PER_ROW:
        lam = tl.load(lam_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        lam = tl.zeros((BLOCK_R,), tl.float32) + lam_scalar
    a, b, g = _coeffs(lam, MODE)
    if SINGLE:
        # whole rows in one tile: s and t are read exactly once
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < D
        msk = row_ok[:, None] & col_ok[None, :]
        s = tl.load(s_ptr + base + cols[None, :], mask=msk, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + base + cols[None, :], mask=msk, other=0.0).to(tl.float32)
        out = a[:, None] * s + b[:, None] * t
        if MODE != 0:
            if MODE == 3:
                u = t - s
            else:
                u = t
            for j in range(RANK):
                # W^T is (r, D) contiguous: column j of W is a coalesced row load
                wj = tl.load(wt_ptr + j * D + cols, mask=col_ok, other=0.0)
                cj = tl.sum(u * wj[None, :], axis=1)
                out += (g * cj)[:, None] * wj[None, :]
        tl.store(out_ptr + base + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=msk)
    else:
        # wide rows: pass 1 accumulates c = u W over D chunks, pass 2 writes the output chunks
        rk = tl.arange(0, RPAD)
        c = tl.zeros((BLOCK_R, RPAD), tl.float32)
        if MODE != 0:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < D
                msk = row_ok[:, None] & col_ok[None, :]
                u = tl.load(t_ptr + base + cols[None, :], mask=msk, other=0.0).to(tl.float32)
                if MODE == 3:
                    u -= tl.load(s_ptr + base + cols[None, :], mask=msk, other=0.0).to(tl.float32)
                for j in range(RANK):
                    wj = tl.load(wt_ptr + j * D + cols, mask=col_ok, other=0.0)
                    cj = tl.sum(u * wj[None, :], axis=1)
                    c = tl.where(rk[None, :] == j, c + cj[:, None], c)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_ok = cols < D
            msk = row_ok[:, None] & col_ok[None, :]
            s = tl.load(s_ptr + base + cols[None, :], mask=msk, other=0.0).to(tl.float32)
            t = tl.load(t_ptr + base + cols[None, :], mask=msk, other=0.0).to(tl.float32)
            out = a[:, None] * s + b[:, None] * t
            if MODE != 0:
                p = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
                for j in range(RANK):
                    wj = tl.load(wt_ptr + j * D + cols, mask=col_ok, other=0.0)
                    cj = tl.sum(tl.where(rk[None, :] == j, c, 0.0), axis=1)
                    p += cj[:, None] * wj[None, :]
                out += g[:, None] * p
            tl.store(out_ptr + base + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=msk)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _validate(src, tgt, W, lam, mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if W is None:
        if mode != "interp":
            raise ValueError(f"W (D, r) is required for mode={mode!r}, got None")
        if isinstance(src, torch.Tensor) and src.ndim in (2, 3):
            W = torch.zeros((src.shape[-1], 1), dtype=torch.float32, device=src.device)  # unused
    if isinstance(lam, np.ndarray):
        lam = torch.from_numpy(lam)
    if isinstance(W, np.ndarray) and isinstance(src, torch.Tensor):  # LanguageLDA.components_ is numpy
        W = torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32)).to(src.device)
    for name, x in (("src", src), ("tgt", tgt), ("W", W)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor for the triton backend, got {type(x).__name__}")
        if x.dtype not in _FLOATS:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if src.ndim not in (2, 3):
        raise ValueError(f"src must be 2-D (N, D) or 3-D (N, T, D), got shape {tuple(src.shape)}")
    if tgt.shape != src.shape:
        raise ValueError(f"tgt must have the shape of src {tuple(src.shape)}, got {tuple(tgt.shape)}")
    if src.numel() == 0:
        raise ValueError(f"src must be non-empty, got shape {tuple(src.shape)}")
    d = src.shape[-1]
    if W.ndim != 2 or W.shape[0] != d or W.shape[1] == 0:
        raise ValueError(f"W must be 2-D (D={d}, r) with r >= 1, got shape {tuple(W.shape)}")
    if W.shape[1] > d:
        raise ValueError(f"W must have at most D={d} columns (orthonormal basis), got shape {tuple(W.shape)}")
    if src.device != tgt.device or src.device != W.device:
        raise ValueError(f"src, tgt and W must share a device, got {src.device}, {tgt.device}, {W.device}")
    for name, x in (("src", src), ("tgt", tgt), ("W", W)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf")
    if isinstance(lam, torch.Tensor):
        if lam.ndim == 0:
            lam = float(lam)
        elif lam.ndim != 1 or lam.shape[0] != src.shape[0]:
            raise ValueError(
                f"lam must be a float or a (N,) tensor with N={src.shape[0]}, got shape {tuple(lam.shape)}"
            )
        elif not bool(torch.isfinite(lam).all()):
            raise ValueError("lam contains NaN or inf")
    elif isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)):
        raise ValueError(f"lam must be a float or a (N,) tensor, got {type(lam).__name__}")
    elif lam != lam or lam in (float("inf"), float("-inf")):
        raise ValueError(f"lam must be finite, got {lam}")
    return W, lam


def lda_project_interp(
    src: torch.Tensor,
    tgt: torch.Tensor,
    W: torch.Tensor | None,
    lam: float | torch.Tensor,
    mode: str = "proj",
) -> torch.Tensor:
    """Fused LDA projection + interpolation (see the module docstring for the formulas).

    Args:
        src: (N, D) or (N, T, D) float32/float16/bfloat16 CUDA tensor (CPU under TRITON_INTERPRET=1).
        tgt: same shape and device as ``src``.
        W: (D, r) orthonormal basis (torch or numpy; used in fp32); may be None for ``"interp"``.
        lam: float, or (N,) tensor of per-row weights (shared across T for 3-D inputs).
        mode: ``"interp"``, ``"proj"``, ``"comp"`` or ``"shift"``.

    Returns:
        out: same shape and dtype as ``src`` (tgt is cast to src's dtype).
    """
    W, lam = _validate(src, tgt, W, lam, mode)
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if not interp and not src.is_cuda:
        raise ValueError(
            f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got device {src.device}"
        )
    shape = src.shape
    d = shape[-1]
    s2 = src.reshape(-1, d).contiguous()
    t2 = tgt.to(src.dtype).reshape(-1, d).contiguous()
    rows = s2.shape[0]
    w = W.to(torch.float32).contiguous()
    rank = w.shape[1]
    out = torch.empty_like(s2)
    per_row = isinstance(lam, torch.Tensor)
    if per_row:
        lam_rows = lam.to(device=s2.device, dtype=torch.float32)
        if src.ndim == 3:
            lam_rows = lam_rows.repeat_interleave(shape[1])
        lam_rows = lam_rows.contiguous()
        lam_scalar = 0.0
    else:
        lam_rows = w  # unused placeholder pointer (LAM_PER_ROW=False)
        lam_scalar = float(lam)
    wt = w.T.contiguous()  # (r, D): coalesced column loads
    rpad = triton.next_power_of_2(rank)
    single = d <= _SINGLE_PASS_MAX_D
    block_d = triton.next_power_of_2(d) if single else 256
    # ~4K fp32 elements per tile operand keeps the tile in registers with 4 warps (no tl.dot: r is
    # small, so the projection is rank-1 updates with fp32 tree reductions -- exact "ieee" math)
    block_r = 16 if interp else max(1, min(64, (4096 if single else 2048) // block_d))
    _lda_project_interp_kernel[(triton.cdiv(rows, block_r),)](
        s2,
        t2,
        wt,
        lam_rows,
        out,
        rows,
        d,
        rank,
        lam_scalar,
        BLOCK_R=block_r,
        BLOCK_D=block_d,
        RPAD=rpad,
        MODE=MODES[mode],
        LAM_PER_ROW=per_row,
        SINGLE=single,
    )
    return out.reshape(shape)
