"""Fused LDA projection + interpolation: synthetic embeddings between a source and a target language.

With P(x) = x W Wᵀ (W (D, r) orthonormal, e.g. :attr:`xite_fast.LanguageLDA.components_`) and
g = 1 − lam, per row:

=========  =========================================  ==============================================
mode       formula                                    meaning
=========  =========================================  ==============================================
interp     lam·s + g·t                                plain mixup (W unused, may be None)
proj       lam·s + g·P(t)                             mix s with the target's language component
comp       lam·s + g·(t − P(t))                       mix s with the target's language-free part
shift      s − g·P(s) + g·P(t)                        move s's language component toward t's
=========  =========================================  ==============================================

The CPU kernel (``xite_fast._C.lda_project_interp``) reads src and tgt once and writes the output
once: per block of rows it computes t·W (for ``shift`` the identity s − g·P(s) + g·P(t) =
s + g·P(t − s) needs a single projection) with AVX2 FMA (AVX-512 for r >= 8 on CPUs that have it:
the same arithmetic, the same bits) and writes lam·s + g·(c Wᵀ) tile by tile, OpenMP over rows, GIL
released, streaming stores for outputs larger than the L3 cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xite_fast._backend import Backend, load_extension, resolve_backend
from xite_fast._validation import check_finite, is_torch

__all__ = ["lda_project_interp", "mix_states", "aligned_empty", "MODES"]

MODES = ("interp", "proj", "comp", "shift")

# W must have orthonormal columns for x W Wᵀ to be a projector; fp32 QR output is ~1e-6 off.
_ORTHO_TOL = 1e-3


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _check_array(name: str, x: Any, ndims: tuple[int, ...], what: str) -> None:
    if not (isinstance(x, np.ndarray) or is_torch(x)):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim not in ndims:
        raise ValueError(f"{name} must be {what}, got shape {_shape(x)}")
    floating = x.dtype.is_floating_point if is_torch(x) else np.issubdtype(x.dtype, np.floating)
    if not floating:
        raise ValueError(f"{name} must have a floating dtype (float32 preferred), got {x.dtype}")


def _to_f32_numpy(x: Any) -> np.ndarray:
    """Zero-copy when ``x`` already is contiguous float32 on the CPU."""
    if is_torch(x):
        import torch

        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        return x.contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _lam_values(lam: Any, n: int) -> np.ndarray:
    """lam as a float32 array of length 1 (scalar) or n (per row), validated.

    Real numbers only: a str ('0.5'), bytes, bool, complex or object value is refused, never parsed or
    coerced (np.asarray would turn '0.5' into 0.5 and True into 1.0).
    """
    expected = f"lam must be a real number in [0, 1] or an (N,) array/tensor of floats with N={n} (src rows)"
    if is_torch(lam):
        if lam.dtype.is_complex or not (lam.dtype.is_floating_point or _torch_int(lam.dtype)):
            raise ValueError(f"{expected}, got a tensor of dtype {lam.dtype}")
        lam = lam.detach().cpu().numpy()
    if isinstance(lam, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{expected}, got {type(lam).__name__} {lam!r}")
    if isinstance(lam, (int, float, np.integer, np.floating)):
        arr = np.asarray([lam], dtype=np.float64)
    else:
        if isinstance(lam, (list, tuple)) and any(
            isinstance(v, (bool, np.bool_, str, bytes)) for v in np.asarray(lam, dtype=object).ravel()
        ):
            raise ValueError(f"{expected}, got a {type(lam).__name__} holding non-numbers")
        try:
            raw = np.asarray(lam)
        except (TypeError, ValueError):
            raise ValueError(f"{expected}, got {type(lam).__name__}") from None
        if raw.dtype.kind not in "iuf":
            raise ValueError(f"{expected}, got {type(lam).__name__} of dtype {raw.dtype}")
        arr = raw.astype(np.float64)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        elif arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(
                f"lam must be a float or an (N,) array with N={n} (src rows), got shape {arr.shape}"
            )
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f" (first bad at index {i})" if arr.shape[0] > 1 else ""
        raise ValueError(f"lam must be in [0, 1], got {arr[i]}{where}")
    return arr.astype(np.float32)


def _torch_int(dtype: Any) -> bool:
    import torch

    return dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_W(W: Any, d: int) -> None:
    _check_array("W", W, (2,), "2-D (D, r)")
    if W.shape[0] != d:
        raise ValueError(f"W must have D={d} rows (the last dimension of src), got shape {_shape(W)}")
    r = int(W.shape[1])
    if not 1 <= r <= d:
        raise ValueError(f"W must have 1 <= r <= D={d} columns, got shape {_shape(W)}")
    check_finite("W", W)
    w = W.detach().cpu().double().numpy() if is_torch(W) else np.asarray(W, dtype=np.float64)
    err = float(np.abs(w.T @ w - np.eye(r)).max())
    if err > _ORTHO_TOL:
        raise ValueError(
            f"W must have orthonormal columns (max |WᵀW - I| <= {_ORTHO_TOL}), got {err:.3g}; "
            "use LanguageLDA.components_ (orthonormal), not scalings_, or orthonormalize with np.linalg.qr"
        )


def aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """Uninitialised float32 array whose data starts on an ``align``-byte boundary.

    numpy only guarantees 16 bytes; 32-byte aligned rows let the kernel use streaming stores.
    """
    n = int(np.prod(shape, dtype=np.int64))
    buf = np.empty(n + align // 4, dtype=np.float32)
    off = (-buf.ctypes.data % align) // 4
    return buf[off : off + n].reshape(shape)


def _check_out(out: Any, shape: tuple[int, ...], src: Any, tgt: Any) -> np.ndarray:
    """The float32 C-contiguous numpy view of a preallocated ``out`` (numpy, memmap or CPU tensor)."""
    if is_torch(out):
        import torch

        if out.device.type != "cpu" or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous float32 CPU tensor, got dtype {out.dtype} on {out.device} "
                f"(contiguous={out.is_contiguous()})"
            )
        if out.requires_grad:
            raise ValueError("out must not require grad")
        arr = out.numpy()
    elif isinstance(out, np.ndarray):
        arr = out
    else:
        raise ValueError(f"out must be a numpy array, np.memmap or torch tensor, got {type(out).__name__}")
    if _shape(arr) != shape:
        raise ValueError(f"out must have the shape of src {shape}, got {_shape(arr)}")
    if arr.dtype != np.float32 or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(
            f"out must be a writeable C-contiguous float32 array, got dtype {arr.dtype} "
            f"(contiguous={arr.flags.c_contiguous}, writeable={arr.flags.writeable})"
        )
    for name, x in (("src", src), ("tgt", tgt)):
        xa = x.detach().numpy() if is_torch(x) and x.device.type == "cpu" else x
        if isinstance(xa, np.ndarray) and np.may_share_memory(arr, xa):
            # exact aliasing (in place) is safe: every row is read before it is written
            same = (
                xa.dtype == np.float32
                and xa.flags.c_contiguous
                and xa.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
            )
            if not same:
                raise ValueError(f"out partially overlaps {name}; pass a separate array or exactly {name}")
    return arr


def lda_project_interp(
    src: Any,
    tgt: Any,
    W: Any,
    lam: float | Any,
    mode: str = "proj",
    *,
    backend: str | Backend = "auto",
    out: Any = None,
    num_threads: int | None = None,
) -> Any:
    """Interpolate source and target embeddings through the LDA language subspace, in one pass.

    With P(x) = x W Wᵀ and g = 1 − lam: ``interp`` lam·s + g·t; ``proj`` lam·s + g·P(t);
    ``comp`` lam·s + g·(t − P(t)); ``shift`` s − g·P(s) + g·P(t).

    Computation is float32: float64/float16/bfloat16 inputs are converted to float32 first and the
    result is always float32 (numpy in → numpy out, torch in → torch out, following ``src``).

    Args:
        src: (N, D) sentence vectors or (N, T, D) token embeddings, floating (float32 preferred).
        tgt: same shape as ``src``.
        W: (D, r) orthonormal basis of the language subspace, 1 <= r <= D (e.g.
            ``LanguageLDA.components_``); may be None for ``mode="interp"``.
        lam: float in [0, 1], or (N,) per-row values in [0, 1] (broadcast over T for 3-D inputs).
        mode: ``"interp"``, ``"proj"``, ``"comp"`` or ``"shift"``.
        backend: ``"auto"``, ``"cpu"`` (C++ kernel), ``"torch"`` (reference), ``"triton"`` or
            ``"cuda"`` (GPU kernels; CUDA tensors in, picked automatically for them).
        out: optional preallocated float32 C-contiguous array shaped like ``src`` (numpy, np.memmap
            or CPU tensor) to write into without allocating; may be exactly ``src`` or ``tgt``
            (in place). If a non-finite value is detected the error is raised after ``out`` was
            (partly) written.
        num_threads: OpenMP threads for the CPU kernel (default: all). Results do not depend on it.

    Gradients: when ``src`` or ``tgt`` is a torch tensor that requires grad (and grad mode is on) the
    call goes through the op's autograd Function (the same kernels forward, an analytic backward: the
    differentiable path :func:`mix_states` uses) and returns a float32 torch tensor with a ``grad_fn``,
    also for a numpy ``src``. ``W`` or ``lam`` requiring grad, or ``out`` with such inputs, is a
    ValueError (no gradient is defined for them); nothing is detached silently.

    Returns:
        (N, D) or (N, T, D) float32, same container type as ``src`` (``out`` itself if given).

    Raises:
        ValueError: bad shapes/dtypes, lam not a real number / real array (a str or bool), outside
            [0, 1] or of the wrong length, NaN/inf in the inputs (or an overflow in the output), unknown
            mode, non-orthonormal W, W or lam requiring grad, out with inputs that require grad.
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_array("src", src, (2, 3), "2-D (N, D) or 3-D (N, T, D)")
    _check_array("tgt", tgt, (2, 3), "2-D (N, D) or 3-D (N, T, D)")
    shape = _shape(src)
    if _shape(tgt) != shape:
        raise ValueError(f"tgt must have the shape of src {shape}, got {_shape(tgt)}")
    n, d = shape[0], shape[-1]
    if d < 1:
        raise ValueError(f"src must have a last dimension D >= 1, got shape {shape}")
    if mode != "interp":
        if W is None:
            raise ValueError(f"W (D, r) is required for mode={mode!r}, got None")
        _check_W(W, d)
    elif W is not None:
        _check_W(W, d)
    lam_arr = _lam_values(lam, n)
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    grad = _requires_grad(src, tgt, W, lam)
    if grad:
        for name in ("W", "lam"):
            if name in grad:
                raise ValueError(
                    f"{name} must not require grad: lda_project_interp has no gradient for {name}, got a "
                    f"tensor with requires_grad=True; pass {name}.detach()"
                )
        if out is not None:
            raise ValueError(
                f"out must be None when {grad[0]} requires grad (autograd needs a new tensor), got out of "
                f"type {type(out).__name__}; drop out= or pass {grad[0]}.detach()"
            )
        return _differentiable(src, tgt, W, lam_arr, mode, backend)
    out_arr = None if out is None else _check_out(out, shape, src, tgt)
    torch_io = is_torch(src)
    on_gpu = torch_io and src.device.type != "cpu"
    chosen = resolve_backend("lda_project_interp", backend, on_gpu=on_gpu)
    if chosen is Backend.CPU and on_gpu:
        raise ValueError(f"backend='cpu' needs CPU tensors, got src on {src.device}")

    if chosen is Backend.TORCH:
        return _torch_path(src, tgt, W, lam_arr, mode, out, out_arr)
    if chosen in (Backend.TRITON, Backend.CUDA):
        return _gpu_path(chosen, src, tgt, W, lam_arr, mode, out, out_arr)

    per = int(np.prod(shape[1:-1], dtype=np.int64))
    s2 = _to_f32_numpy(src).reshape(-1, d)
    t2 = _to_f32_numpy(tgt).reshape(-1, d)
    w = np.zeros((d, 1), np.float32) if W is None else _to_f32_numpy(W)
    res = aligned_empty(shape) if out_arr is None else out_arr
    res2 = res.reshape(-1, d)
    lam_div = per if lam_arr.shape[0] > 1 else max(1, s2.shape[0])
    if s2.shape[0] > 0:
        bad = load_extension().lda_project_interp(
            s2, t2, w, lam_arr, lam_div, mode, res2, num_threads=num_threads or 0
        )
        if bad >= 0:
            _raise_nonfinite(src, tgt, bad // per)
    if out is not None:
        return out
    if torch_io:
        import torch

        return torch.from_numpy(res)
    return res


def _requires_grad(src: Any, tgt: Any, W: Any, lam: Any) -> list[str]:
    """Names of the torch arguments that require grad while grad mode is on (else [])."""
    names = [
        n for n, x in (("src", src), ("tgt", tgt), ("W", W), ("lam", lam)) if is_torch(x) and x.requires_grad
    ]
    if not names:
        return []
    import torch

    return names if torch.is_grad_enabled() else []


def _differentiable(src: Any, tgt: Any, W: Any, lam_arr: np.ndarray, mode: str, backend: Any) -> Any:
    """src and/or tgt require grad: the same kernels through the autograd Function (analytic backward).

    Both inputs become float32 torch tensors on the device of the one that requires grad (differentiable
    conversions); the result is a float32 torch tensor with a ``grad_fn``.
    """
    import torch

    like = src if is_torch(src) and src.requires_grad else tgt
    s, t = (
        (x if is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))).to(
            device=like.device, dtype=torch.float32
        )
        for x in (src, tgt)
    )
    w = (
        None
        if W is None
        else torch.as_tensor(np.asarray(W) if not is_torch(W) else W).to(like.device).float()
    )
    lam_t = torch.tensor(float(lam_arr[0])) if lam_arr.shape[0] == 1 else torch.from_numpy(lam_arr)
    return _autograd_fn().apply(s, t, w, lam_t.to(like.device), mode, backend)


def _raise_nonfinite(src: Any, tgt: Any, row: int) -> None:
    # the kernel only flags a non-finite output; name the input that caused it
    check_finite("src", src)
    check_finite("tgt", tgt)
    raise ValueError(f"lda_project_interp overflowed float32: non-finite output at row {row} (finite inputs)")


def _gpu_path(
    chosen: Backend, src: Any, tgt: Any, W: Any, lam_arr: np.ndarray, mode: str, out: Any, out_arr: Any
) -> Any:
    """TRITON (``xite_fast.ops.triton.lda_project_interp``) or CUDA (``_C.lda_project_interp_cuda``).

    Both take torch tensors on the device (CPU tensors only under ``TRITON_INTERPRET=1``) and do not
    scan for NaN/inf, so the check happens here.
    """
    import torch

    check_finite("src", src)
    check_finite("tgt", tgt)
    torch_io = is_torch(src)
    s = src if torch_io else torch.from_numpy(np.ascontiguousarray(src))
    dev = s.device
    t = tgt.to(dev) if is_torch(tgt) else torch.from_numpy(np.ascontiguousarray(tgt)).to(dev)
    s, t = s.float().contiguous(), t.float().contiguous()
    w = None if W is None else (W if is_torch(W) else torch.from_numpy(np.asarray(W))).to(dev).float()
    lam_t: float | torch.Tensor = (
        float(lam_arr[0]) if lam_arr.shape[0] == 1 else torch.from_numpy(lam_arr).to(dev).float()
    )
    if chosen is Backend.TRITON:
        from xite_fast.ops.triton.lda_project_interp import lda_project_interp as triton_impl

        res = triton_impl(s, t, w, lam_t, mode)
    else:
        res = load_extension().lda_project_interp_cuda(s, t, w, lam_t, mode)
    if out_arr is not None:
        out_arr[...] = res.detach().cpu().numpy()
        return out
    return res if torch_io else res.detach().cpu().numpy()


def _torch_path(src: Any, tgt: Any, W: Any, lam_arr: np.ndarray, mode: str, out: Any, out_arr: Any) -> Any:
    import torch

    from xite_fast.reference import lda_project_interp_ref

    check_finite("src", src)
    check_finite("tgt", tgt)
    torch_io = is_torch(src)
    dev = src.device if torch_io else torch.device("cpu")
    s = src if torch_io else torch.from_numpy(np.asarray(src))
    t = tgt.to(dev) if is_torch(tgt) else torch.from_numpy(np.asarray(tgt)).to(dev)
    w = None
    if W is not None:
        w = W if is_torch(W) else torch.from_numpy(np.asarray(W))
    lam_t: float | torch.Tensor = float(lam_arr[0]) if lam_arr.shape[0] == 1 else torch.from_numpy(lam_arr)
    res = lda_project_interp_ref(
        s.detach(), t.detach(), w, lam_t, mode, compute_dtype=torch.float32, out_dtype=torch.float32
    )
    if out_arr is not None:
        out_arr[...] = res.cpu().numpy()
        return out
    return res if torch_io else res.numpy()


# --------------------------------------------------------------------------------------------- autograd
_AUTOGRAD_FN: Any = None


def _autograd_fn() -> Any:
    """The torch.autograd.Function over the fast op (built on first use: ``import xite_fast`` stays
    free of torch)."""
    global _AUTOGRAD_FN
    if _AUTOGRAD_FN is not None:
        return _AUTOGRAD_FN
    import torch

    def run(s, t, W, lam, mode, backend):
        lam_arg = float(lam) if lam.ndim == 0 else lam.detach()
        y = lda_project_interp(
            s.detach().contiguous(),
            t.detach().contiguous(),
            None if W is None else W.detach(),
            lam_arg,
            mode=mode,
            backend=backend,
        )
        if not isinstance(y, torch.Tensor):  # a numpy-returning backend
            y = torch.from_numpy(np.ascontiguousarray(y))
        return y.to(device=s.device, dtype=s.dtype)

    class LdaProjectInterpFunction(torch.autograd.Function):
        """Analytic backward for :func:`lda_project_interp` (the kernels have none).

        out = A s + B t with symmetric A, B (P = W Wᵀ is symmetric): "interp"/"proj"/"comp" have A = lam I
        and B = (1-lam) {I, P, I-P}; "shift" has A = I - (1-lam) P, B = (1-lam) P. Hence
        grad_s = A g = op(g, 0) and grad_t = B g = op(0, g): the backward is two calls of the same op.
        """

        @staticmethod
        def forward(ctx, s, t, W, lam, mode, backend):
            ctx.save_for_backward(W, lam)
            ctx.mode, ctx.backend = mode, backend
            return run(s, t, W, lam, mode, backend)

        @staticmethod
        def backward(ctx, g):
            W, lam = ctx.saved_tensors
            g = g.contiguous()
            z = torch.zeros_like(g)
            gs = run(g, z, W, lam, ctx.mode, ctx.backend) if ctx.needs_input_grad[0] else None
            gt = run(z, g, W, lam, ctx.mode, ctx.backend) if ctx.needs_input_grad[1] else None
            return gs, gt, None, None, None, None

    _AUTOGRAD_FN = LdaProjectInterpFunction
    return _AUTOGRAD_FN


def mix_states(
    src: Any, tgt: Any, lam: Any, W: Any = None, mode: str = "shift", backend: str = "auto"
) -> Any:
    """Differentiable source/target mix of torch tensors: (N, D) or (N, T, D) -> same shape and dtype.

    ``W`` None: ``lam*s + (1-lam)*t`` in plain torch (the "interp" formula, any device/dtype). Otherwise
    ``lda_project_interp(s, t, W, lam, mode)`` through the fast op with an analytic backward
    (:func:`_autograd_fn`); ``lam`` is a float or an (N,) tensor (broadcast over T).
    """
    import torch

    if not (isinstance(src, torch.Tensor) and isinstance(tgt, torch.Tensor)):
        raise ValueError(f"src and tgt must be torch tensors, got {type(src).__name__}, {type(tgt).__name__}")
    if src.shape != tgt.shape:
        raise ValueError(
            f"src and tgt must have the same shape, got {tuple(src.shape)} and {tuple(tgt.shape)}"
        )
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=src.device)
    if W is None:
        lam_b = lam_t.to(src.dtype)
        if lam_b.ndim:
            lam_b = lam_b.reshape(-1, *([1] * (src.ndim - 1)))
        return lam_b * src + (1 - lam_b) * tgt
    W_t = torch.as_tensor(W, dtype=torch.float32, device=src.device).contiguous()
    return _autograd_fn().apply(src, tgt, W_t, lam_t, mode, backend)
