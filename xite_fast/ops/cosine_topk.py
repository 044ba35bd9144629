"""Exact cosine top-k search (the XITE matcher): ``cosine_topk`` and ``merge_topk``.

``cosine_topk`` returns, for every query, the ``k`` keys with the highest cosine similarity::

    score[i, j] = <q_i, x_j> / (|q_i| |x_j|)        (0 when q_i or x_j is a zero vector)

sorted descending, ties broken by the lower key index. Two backends:

* ``"cpu"``: the fused C++ kernel ``xite_fast._C.cosine_topk``: queries normalised into 12-row
  (AVX-512) or 6-row (AVX2) panels, key blocks packed into 32- or 16-key panels, a BLIS-style
  12 x 32 AVX-512 (24 zmm accumulators) or 6 x 16 AVX2/FMA micro-kernel, picked at run time from
  the CPU's features; the accumulators are compared (one compare per row) with each query's
  running k-th score, so only the rare winners touch the per-query top-k; OpenMP over queries or
  keys, GIL released. It never materialises the N x M score matrix and never makes a normalised
  copy of the keys (key norms are an O(M) vector). Each score is summed in d order in one lane
  with FMAs, so the output is bit-identical for every thread count, tiling and for both
  micro-kernels.

  On CPUs with AVX512_BF16 (``vdpbf16ps``: twice the fp32 FMA rate) and D >= 16 the default is
  the certified bf16 kernel: the same 12 x 32 tiles screen every key with bf16-rounded unit
  queries against bf16-rounded unit keys centred by the keys' mean direction (centering shifts all
  of a query's scores equally, so the order is unchanged, and it shrinks the rounding error of
  anisotropic sentence embeddings, whose mean has norm ~0.9), keep every key whose screened score
  is within twice a proven per-pair error bound of the running k-th best (the bound uses the actual
  rounding-error norm of each query and key, and covers the fp32 accumulation, subnormal flushing
  and the exact path's own rounding, with a safety factor; derivation in
  ``csrc/cpu/cosine_topk_bf16.cpp``), then rescore those candidates with exactly the fp32 kernels'
  arithmetic. The result (indices, fp32 scores, tie order) is therefore bit-identical to the fp32
  kernels; queries whose candidates outgrow a cap or the memory budget (degenerate data: many
  duplicate or equal keys) are recomputed by the fp32 kernel, so exactness never depends on the
  data. ``cosine_topk(..., kernel=...)`` picks the micro-kernel (:data:`CPU_KERNELS`; the
  environment variable ``XITE_FAST_CPU_KERNEL`` overrides ``kernel="auto"``, see :func:`cosine_topk`).
* ``"torch"``: the chunked reference :func:`xite_fast.reference.cosine_topk_ref`.
* ``"triton"`` / ``"cuda"``: the GPU kernels (``xite_fast.ops.triton.cosine_topk``,
  ``xite_fast._C.cosine_topk_cuda``) for torch CUDA tensors; ``"auto"`` picks them for CUDA inputs.

Keys larger than RAM: pass an ``np.memmap`` or the path of a ``.npy`` file (opened with
``mmap_mode="r"``). A float32 C-contiguous map is read in place by the C++ kernel, one key block
at a time; any other dtype (or the torch backend) is converted chunk by chunk and the per-chunk
results are combined with :func:`merge_topk`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from xite_fast._backend import Backend, load_extension, resolve_backend
from xite_fast._validation import check_finite, check_matrix, check_positive_int, is_torch

__all__ = ["cosine_topk", "merge_topk", "CPU_KERNELS"]

# THE micro-kernels of the C++ backend (``cosine_topk(kernel=...)``, ``XITE_FAST_CPU_KERNEL``), with the
# CPU feature each needs (checked before the call; ``None``: any CPU the C++ backend runs on).
#   auto    bf16 when the CPU has AVX512_BF16 and D >= 16, k <= 256; else avx512; else packed
#   fp32    the fastest exact fp32 kernel here: avx512, else packed (same scores bit for bit)
#   bf16    certified bf16 screening + exact fp32 rescoring (bit-identical to fp32)
#   avx512  12 x 32 AVX-512 tile (bit-identical to packed)
#   packed  6 x 16 AVX2/FMA tile
#   dot     unpacked 3 x 4 AVX2 dot-product kernel (sums in another order: may differ in the last bit)
CPU_KERNELS = ("auto", "fp32", "bf16", "avx512", "packed", "dot")
_KERNEL_ISA = {
    "bf16": ("AVX512_BF16", "cpu_supports_avx512_bf16"),
    "avx512": ("AVX-512F", "cpu_supports_avx512"),
}
# Overrides kernel="auto" (never an explicit kernel), like XITE_FAST_BACKEND for ``backend``.
KERNEL_ENV = "XITE_FAST_CPU_KERNEL"

# Rows per chunk when keys must be converted (non-float32 memmaps) or fed to the torch reference.
_CHUNK_BYTES = 256 << 20


def _open_keys(keys: Any) -> Any:
    if isinstance(keys, (str, os.PathLike)):
        path = os.fspath(keys)
        if not path.endswith(".npy"):
            raise ValueError(f"keys given as a path must name a .npy file, got {path!r}")
        if not os.path.isfile(path):
            raise ValueError(f"keys: .npy file not found: {path!r}")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # truncated header, pickled object array, ...
            raise ValueError(
                f"keys: could not memory-map .npy file {path!r}: {type(exc).__name__}: {exc}"
            ) from None
    return keys


def _as_f32_numpy(x: Any) -> np.ndarray:
    """float32 C-contiguous numpy view/copy (zero-copy when it already is)."""
    if is_torch(x):
        import torch

        x = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_f32_torch(x: Any):
    import torch

    if is_torch(x):
        return x.detach().to(torch.float32)
    with warnings.catch_warnings():
        # read-only inputs (memmaps) are fine: the reference never writes to its inputs
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def cosine_topk(
    queries: Any,
    keys: Any,
    k: int,
    *,
    backend: str | Backend = "auto",
    assume_normalized: bool = False,
    kernel: str = "auto",
) -> tuple[Any, Any]:
    """Exact top-k cosine similarity of every query against all keys.

    Computation is in float32: float64/float16/bfloat16 inputs are converted to float32 first
    (float64 inputs therefore get float32 accuracy). Zero vectors score 0 against everything. Every
    other finite vector, subnormal or near the float32 maximum, gets its cosine: a row whose norm
    float32 cannot normalise (C++ kernel: outside [1e-30, 2^126], flagged while the norms are
    computed, then the search reruns; torch/GPU: outside [2^-60, 2^60]) is scaled by a power of two
    first (exact, and the cosine is scale-invariant); other rows are never touched.
    Gradients do not flow through the result.

    NaN/inf are rejected: the CPU kernel detects them exactly while computing the row norms (one
    read, no extra memory; a bad key row may be found after part of the search ran), the torch
    backend checks up front.

    Args:
        queries: (N, D) float numpy array or torch tensor. N may be 0 (returns empty (0, k) results).
        keys: (M, D) float numpy array / torch tensor, an ``np.memmap``, or the path of a ``.npy``
            file (memory-mapped and streamed; never loaded whole). M >= 1.
        k: number of neighbours, 1 <= k <= M.
        backend: ``"auto"`` (C++ kernel when built, else torch; GPU kernels for CUDA tensors),
            ``"cpu"``, ``"torch"``, ``"triton"`` or ``"cuda"``.
        assume_normalized: inputs are unit-norm; skip normalisation (scores are raw inner products).
        kernel: micro-kernel of the C++ backend, one of :data:`CPU_KERNELS`: ``"auto"`` (bf16 screening
            on AVX512_BF16 CPUs when D >= 16 and k <= 256, else the fastest fp32 kernel), ``"fp32"``
            (AVX-512 12 x 32, else AVX2 6 x 16), ``"bf16"``, ``"avx512"``, ``"packed"`` (AVX2 6 x 16) or
            ``"dot"`` (unpacked 3 x 4). All are exact; fp32, bf16, avx512 and packed return bit-identical
            results, dot sums in another order (scores may differ in the last bit). The environment
            variable ``XITE_FAST_CPU_KERNEL`` (same values) overrides ``"auto"``, never an explicit
            kernel. A kernel other than ``"auto"`` needs the C++ backend.

    Returns:
        scores: (N, k) float32, sorted descending per row.
        indices: (N, k) int64 key indices; ties go to the lower index.
        Both are torch tensors when ``queries`` is a torch tensor, numpy arrays otherwise.

    Raises:
        ValueError: bad ndim/dtype, mismatched D, NaN/inf, k not a positive int or k > M, empty keys,
            unreadable .npy file, unknown backend or kernel, a kernel this CPU cannot run (naming the
            missing instruction set), a kernel other than "auto" with a non-C++ backend.
    """
    k = check_positive_int("k", k)
    be = Backend.parse(backend)
    kernel = _check_kernel(kernel)
    check_matrix("queries", queries, what="(N, D)")
    keys = _open_keys(keys)
    check_matrix("keys", keys, what="(M, D)")
    n, d = int(queries.shape[0]), int(queries.shape[1])
    m = int(keys.shape[0])
    if int(keys.shape[1]) != d:
        raise ValueError(
            f"keys must have the same dimension D as queries ({d}), got keys shape "
            f"{tuple(int(s) for s in keys.shape)}"
        )
    if d == 0:
        raise ValueError(f"queries and keys must have D >= 1, got D={d}")
    if m == 0:
        raise ValueError(f"keys must be non-empty (M >= 1), got shape {tuple(int(s) for s in keys.shape)}")
    if k > m:
        raise ValueError(f"k must be <= the number of keys M={m}, got k={k}")
    torch_out = is_torch(queries)
    on_gpu = torch_out and queries.device.type == "cuda"
    impl = resolve_backend("cosine_topk", be, on_gpu=on_gpu)

    if kernel != "auto" and impl is not Backend.CPU:
        raise ValueError(
            f"kernel={kernel!r} selects a micro-kernel of the C++ backend, got backend {impl.value!r}"
        )
    if impl is Backend.CPU:
        kernel = _resolve_kernel(kernel)

    if n == 0:
        scores, indices = np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    elif impl is Backend.CPU:
        scores, indices = _cpu(queries, keys, k, assume_normalized, kernel)
    elif impl in (Backend.TRITON, Backend.CUDA):
        scores, indices = _device(impl, queries, keys, k, assume_normalized)
    else:
        scores, indices = _torch(queries, keys, k, assume_normalized)
    return _to_output(scores, indices, queries if torch_out else None)


def _to_output(scores: Any, indices: Any, like: Any) -> tuple[Any, Any]:
    if like is None:
        if is_torch(scores):
            return scores.cpu().numpy(), indices.cpu().numpy()
        return scores, indices
    import torch

    if not is_torch(scores):
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices)
    return scores.to(like.device), indices.to(like.device)


def _key_chunks(keys: Any):
    """Yield (offset, chunk) row chunks of about _CHUNK_BYTES."""
    m, d = int(keys.shape[0]), int(keys.shape[1])
    rows = max(1, _CHUNK_BYTES // (4 * max(d, 1)))
    for j0 in range(0, m, rows):
        yield j0, keys[j0 : j0 + rows]


def _check_kernel(kernel: Any, name: str = "kernel") -> str:
    """``kernel`` as one of :data:`CPU_KERNELS` (case-insensitive), else a ValueError naming ``name``."""
    value = kernel.strip().lower() if isinstance(kernel, str) else None
    if value not in CPU_KERNELS:
        choices = ", ".join(repr(c) for c in CPU_KERNELS)
        raise ValueError(f"{name} must be one of {choices}, got {kernel!r}")
    return value


def _resolve_kernel(kernel: str) -> str:
    """The kernel name the C++ backend gets: ``XITE_FAST_CPU_KERNEL`` replaces ``"auto"``; an explicit
    kernel the CPU cannot run raises, naming the missing instruction set ("auto" never does)."""
    if kernel == "auto":
        kernel = _check_kernel(os.environ.get(KERNEL_ENV, "auto").strip() or "auto", KERNEL_ENV)
    if kernel == "fp32":
        return "avx512" if load_extension().cpu_supports_avx512() else "packed"
    isa, probe = _KERNEL_ISA.get(kernel, (None, None))
    if probe is not None and not getattr(load_extension(), probe)():
        raise ValueError(
            f"kernel={kernel!r} needs a CPU with {isa}, which this CPU lacks; "
            f"use kernel='auto' or 'fp32' (they pick what this CPU runs)"
        )
    return kernel


def _cpu(
    queries: Any, keys: Any, k: int, assume_normalized: bool, kernel: str
) -> tuple[np.ndarray, np.ndarray]:
    ext = load_extension()
    q = _as_f32_numpy(queries)
    if (
        is_torch(keys)
        or not isinstance(keys, np.memmap)
        or (keys.dtype == np.float32 and keys.flags.c_contiguous)
    ):
        # in-memory keys are converted once; a float32 C-contiguous memmap is read in place (zero-copy),
        # all threads sweeping one key block at a time so the file is read from disk once
        stream = isinstance(keys, np.memmap)
        s, i, out_of_range = ext.cosine_topk(
            q,
            _as_f32_numpy(keys),
            k,
            assume_normalized,
            stream_keys=stream,
            kernel=kernel,
            out_of_range="flag",
        )
        if not out_of_range:
            return s, i
        # a row the kernel cannot score in float32 (norm outside [1e-30, 2^126], flagged while computing
        # the norms): rerun with such rows scaled by a power of two, key chunk by key chunk (RAM O(chunk))
        return _cpu_chunked(ext, _rescale_rows(q), keys, k, assume_normalized, kernel, rescale=True)
    # other memmaps: convert chunk by chunk so RAM stays O(chunk), merge the partial top-k exactly
    return _cpu_chunked(ext, q, keys, k, assume_normalized, kernel, rescale=False)


def _cpu_chunked(
    ext: Any, q: np.ndarray, keys: Any, k: int, assume_normalized: bool, kernel: str, *, rescale: bool
) -> tuple[np.ndarray, np.ndarray]:
    parts_s, parts_i = [], []
    for j0, chunk in _key_chunks(keys):
        kc = min(k, int(chunk.shape[0]))
        x = _as_f32_numpy(chunk)
        s, i, out_of_range = ext.cosine_topk(
            q,
            _rescale_rows(x) if rescale else x,
            kc,
            assume_normalized,
            key_offset=j0,
            kernel=kernel,
            out_of_range="flag",
        )
        if out_of_range and not rescale:
            return _cpu_chunked(ext, _rescale_rows(q), keys, k, assume_normalized, kernel, rescale=True)
        if out_of_range:  # cannot happen: rescaled rows have norms in [0.5, 1)
            raise RuntimeError("cosine_topk: a rescaled row is still outside the kernel's float32 range")
        parts_s.append(s)
        parts_i.append(i)
    return merge_topk(parts_s, parts_i, k)


# numpy twin of xite_fast.reference.rescale_rows / NORM_SQ_RANGE (that module imports torch).
_NORM_SQ_RANGE = (2.0**-120, 2.0**120)


def _rescale_rows(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` with every nonzero row whose norm is outside [2^-60, 2^60] scaled by a power of two
    to a norm in [0.5, 1): exact (no value is rounded) and the cosine is scale-invariant. A copy when
    some row needs it, else ``x`` itself (rows inside the range are never touched)."""
    if x.size == 0:
        return x
    ss = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    bad = (ss > 0) & ((ss < _NORM_SQ_RANGE[0]) | (ss > _NORM_SQ_RANGE[1]))
    if not bad.any():
        return x
    _, e = np.frexp(np.sqrt(ss[bad]))
    out = np.array(x, dtype=np.float32, copy=True)
    out[bad] = (x[bad].astype(np.float64) * np.ldexp(1.0, -e)[:, None]).astype(np.float32)
    return out


def _device(impl: Backend, queries: Any, keys: Any, k: int, assume_normalized: bool):
    """Triton / CUDA kernels (they take torch tensors on one device); memmapped keys go in chunks."""
    import torch

    device = queries.device if is_torch(queries) else torch.device("cpu")
    q = _as_f32_torch(queries).to(device)
    if impl is Backend.TRITON:
        from xite_fast.ops.triton.cosine_topk import cosine_topk as kernel
    else:
        ext = load_extension()

        def kernel(qq, kk, kc, *, assume_normalized):
            return ext.cosine_topk_cuda(qq, kk, kc, assume_normalized)

    check_finite("queries", q)
    if not assume_normalized:  # rows whose fp32 norm would over/underflow: scaled by a power of two
        from xite_fast.reference import rescale_rows

        q = rescale_rows(q)
    chunks = _key_chunks(keys) if isinstance(keys, np.memmap) else [(0, keys)]
    parts_s, parts_i = [], []
    for j0, chunk in chunks:
        kt = _as_f32_torch(chunk).to(device)
        check_finite("keys", kt)
        if not assume_normalized:
            kt = rescale_rows(kt)
        s, i = kernel(q, kt.contiguous(), min(k, int(kt.shape[0])), assume_normalized=assume_normalized)
        parts_s.append(s)
        parts_i.append(i + j0)
    if len(parts_s) == 1:
        return parts_s[0], parts_i[0]
    return merge_topk(parts_s, parts_i, k)


def _torch(queries: Any, keys: Any, k: int, assume_normalized: bool):
    from xite_fast.reference import cosine_topk_ref

    q = _as_f32_torch(queries)
    check_finite("queries", q)
    if not isinstance(keys, np.memmap):
        kt = _as_f32_torch(keys).to(q.device)
        check_finite("keys", kt)
        return cosine_topk_ref(q, kt, k, assume_normalized=assume_normalized)
    parts_s, parts_i = [], []
    for j0, chunk in _key_chunks(keys):
        kt = _as_f32_torch(chunk).to(q.device)
        try:
            check_finite("keys", kt)
        except ValueError:
            row = int(np.flatnonzero(~np.isfinite(np.asarray(chunk)).all(axis=1))[0]) + j0
            raise ValueError(f"keys contains NaN or inf (first at row {row})") from None
        s, i = cosine_topk_ref(q, kt, min(k, int(kt.shape[0])), assume_normalized=assume_normalized)
        parts_s.append(s)
        parts_i.append(i + j0)
    return merge_topk(parts_s, parts_i, k)


def merge_topk(scores_list: Sequence[Any], indices_list: Sequence[Any], k: int) -> tuple[Any, Any]:
    """Merge partial top-k results over disjoint key sets into the exact global top-k.

    Order is (score descending, index ascending), the same tie rule as :func:`cosine_topk`, so
    merging per-chunk results reproduces a single search over all keys.

    Args:
        scores_list: sequence of (N, k_i) float arrays (numpy or torch), one per key chunk.
        indices_list: sequence of (N, k_i) integer arrays holding global key indices.
        k: number of results to keep, 1 <= k <= sum(k_i).

    Returns:
        scores (N, k) float32 and indices (N, k) int64, torch if the first scores entry is torch.

    Raises:
        ValueError: mismatched lengths or shapes, non-integer indices, k out of range, a NaN score
            (refused like NaN inputs of :func:`cosine_topk`; +-inf scores order normally).
    """
    k = check_positive_int("k", k)
    if len(scores_list) == 0 or len(scores_list) != len(indices_list):
        raise ValueError(
            f"scores_list and indices_list must be non-empty and of equal length, "
            f"got {len(scores_list)} and {len(indices_list)}"
        )
    like = scores_list[0] if is_torch(scores_list[0]) else None
    ss = [np.asarray(s.detach().cpu() if is_torch(s) else s, dtype=np.float32) for s in scores_list]
    ii = [np.asarray(i.detach().cpu() if is_torch(i) else i) for i in indices_list]
    n = ss[0].shape[0] if ss[0].ndim == 2 else -1
    for t, (s, i) in enumerate(zip(ss, ii, strict=True)):
        if s.ndim != 2 or s.shape[0] != n:
            raise ValueError(f"scores_list[{t}] must be 2-D (N, k_i) with N={n}, got shape {s.shape}")
        if i.shape != s.shape:
            raise ValueError(
                f"indices_list[{t}] must have the shape of scores_list[{t}] {s.shape}, got {i.shape}"
            )
        if not np.issubdtype(i.dtype, np.integer):
            raise ValueError(f"indices_list[{t}] must have an integer dtype, got {i.dtype}")
        nan = np.isnan(s)
        if nan.any():
            # refused like cosine_topk's NaN inputs: a NaN has no place in a descending order
            r, c = (int(v[0]) for v in np.nonzero(nan))
            raise ValueError(
                f"scores_list[{t}] must hold no NaN (scores are compared), got NaN at row {r}, column {c}"
            )
    total = sum(s.shape[1] for s in ss)
    if k > total:
        raise ValueError(f"k must be <= the total number of candidates {total}, got k={k}")
    cs = np.concatenate(ss, axis=1)
    ci = np.concatenate([i.astype(np.int64, copy=False) for i in ii], axis=1)
    # lexsort: last key is primary -> score descending, then index ascending (the tie rule)
    order = np.lexsort((ci, -cs), axis=1)[:, :k]
    return _to_output(np.take_along_axis(cs, order, 1), np.take_along_axis(ci, order, 1), like)
