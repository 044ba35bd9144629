"""Triton cosine top-k: tiled ``tl.dot`` fused with a running per-row top-k, then an exact fp32 re-rank.

Kernel (one program per ``BLOCK_M`` queries x one key split):

    acc[i, j]   = sum_d q[i, d] * x[j, d]            (tl.dot, fp32 accumulation)
    score[i, j] = acc[i, j] * qinv[i] * xinv[j]       (qinv = 1/|q_i|, 0 for zero rows)

The program walks its key range in ``BLOCK_N`` tiles and keeps, per query row, ``k' = k + margin``
candidates in registers (unsorted; ``+inf`` pads the power-of-two slot array so pad slots are never
evicted). A tile entry enters only if it beats the current worst candidate strictly (keys arrive in
ascending index order, so on equal scores the kept, lower index wins); the number of insertion rounds
per tile is the largest count of such entries over the rows, which after the first few tiles is
usually 0, so the selection cost is amortised against the GEMM. The N x M score matrix never exists.

Host side: the per-split candidate lists are merged with the same order (a stable sort over
``splits * k'``), the candidates' scores are recomputed in fp32 from the fp32-upcast inputs and
sorted (score descending, index ascending). The re-rank is *certified*: let ``T`` be the smallest
low-precision score kept and ``eps`` a bound on ``|low-precision score - fp32 score|``; every key that was not
kept has fp32 score ``<= T + eps``. If the k-th re-ranked score exceeds ``T + eps`` no dropped key can enter
the top-k and the row is exact. Rows that fail the certificate (more than ``margin`` keys tied with the
k-th score to within ``2 eps``) are recomputed -- tf32 rows first by the kernel with exact fp32
products, otherwise by the exact reference -- so the result always equals the exact fp32 top-k (up
to fp32 summation order, i.e. a few ulps). Margins: 8 (fp16/bf16/ieee), 32 (tf32).

``eps`` (per unit-norm pair): fp16/bf16 inputs and fp32 with ``fp32_precision="ieee"`` have exact
products and fp32 sums, ``eps = (D + 16) * 2**-22`` (a worst-case recursive-summation bound, doubled
for tensor-core truncation, plus the re-rank's own error); fp32 with ``"tf32"`` rounds each input to
10 mantissa bits, ``eps = 2**-9 + (D + 16) * 2**-22``. With ``assume_normalized=True`` it is scaled
by ``|q_i| * max_j |x_j|``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["cosine_topk", "cosine_topk_with_stats", "DEFAULT_MARGIN"]

# Extra low-precision candidates re-ranked in fp32. 8 suffices unless >8 keys sit within 2*eps of
# the k-th score; tf32 has a ~1e-3 eps, so it gets a wider net.
DEFAULT_MARGIN = {"exact": 8, "tf32": 32}
_ROW_CHUNK = 1 << 18  # rows per step of host-side passes over the keys (bounded temporaries)


@triton.jit
def _cosine_topk_kernel(
    q_ptr,
    x_ptr,
    qinv_ptr,
    xinv_ptr,
    out_s_ptr,
    out_i_ptr,
    N,
    M,
    D,
    keys_per_split,
    stride_qn,
    stride_xm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    KSEL: tl.constexpr,
    KPAD: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    qinv = tl.load(qinv_ptr + rows, mask=row_ok, other=0.0)
    # int64 offsets: rows * D overflows int32 beyond 2^31 elements (e.g. 6M keys x 384)
    q_row_off = rows.to(tl.int64) * stride_qn

    slot = tl.arange(0, KPAD)
    # Empty slots: -inf with distinct sentinel indices (so exactly one slot is evicted at a time);
    # pad slots beyond KSEL hold +inf and are never the minimum, hence never touched.
    best_s = tl.where(slot < KSEL, float("-inf"), float("inf")) + tl.zeros((BLOCK_M, KPAD), tl.float32)
    best_i = (2147483647 - slot) + tl.zeros((BLOCK_M, KPAD), tl.int32)
    thr = tl.min(best_s, axis=1)

    key_lo = split * keys_per_split
    key_hi = tl.minimum(key_lo + keys_per_split, M)
    offs_k = tl.arange(0, BLOCK_K)
    for n0 in range(key_lo, key_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < key_hi
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_K):
            dk = d0 + offs_k
            dk_ok = dk < D
            a = tl.load(
                q_ptr + q_row_off[:, None] + dk[None, :],
                mask=row_ok[:, None] & dk_ok[None, :],
                other=0.0,
            )
            # key tile loaded transposed, (BLOCK_K, BLOCK_N), so tl.dot sees q @ x^T
            b = tl.load(
                x_ptr + cols[None, :].to(tl.int64) * stride_xm + dk[:, None],
                mask=col_ok[None, :] & dk_ok[:, None],
                other=0.0,
            )
            if UPCAST:
                # the interpreter's tl.dot mis-handles bf16 (stored as uint16); products are exact in
                # fp32 anyway, so upcasting gives the same result
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        xinv = tl.load(xinv_ptr + cols, mask=col_ok, other=0.0)
        s = acc * qinv[:, None] * xinv[None, :]
        s = tl.where(col_ok[None, :], s, float("-inf"))
        # only entries strictly above the row's worst candidate can enter (ties: kept lower index wins)
        s = tl.where(s > thr[:, None], s, float("-inf"))
        n_rounds = tl.max(tl.sum((s > float("-inf")).to(tl.int32), axis=1))
        for _ in range(n_rounds):
            m = tl.max(s, axis=1)
            # lowest key index among the row's maxima
            am = tl.min(tl.where(s == m[:, None], cols[None, :], 2147483647), axis=1)
            ok = m > thr
            # evict the worst candidate; among equal worst scores the highest index goes
            w_i = tl.max(tl.where(best_s == thr[:, None], best_i, -1), axis=1)
            upd = ok[:, None] & (best_i == w_i[:, None]) & (best_s == thr[:, None])
            best_s = tl.where(upd, m[:, None], best_s)
            best_i = tl.where(upd, am[:, None], best_i)
            thr = tl.min(best_s, axis=1)
            s = tl.where(cols[None, :] == am[:, None], float("-inf"), s)
            s = tl.where(s > thr[:, None], s, float("-inf"))

    out_off = (rows[:, None] * tl.num_programs(1) + split) * KPAD + slot[None, :]
    tl.store(out_s_ptr + out_off, best_s, mask=row_ok[:, None])
    tl.store(out_i_ptr + out_off, best_i, mask=row_ok[:, None])


def _validate(queries, keys, k) -> None:
    for name, x in (("queries", queries), ("keys", keys)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor for the triton backend, got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, D), got shape {tuple(x.shape)}")
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ValueError(f"{name} must be float32, float16, bfloat16 (or float64), got {x.dtype}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
        for r0 in range(0, x.shape[0], _ROW_CHUNK):  # chunked: no (M, D) temporary
            if not bool(torch.isfinite(x[r0 : r0 + _ROW_CHUNK]).all()):
                raise ValueError(f"{name} contains NaN or inf")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"keys must have last dimension {queries.shape[1]}, got shape {tuple(keys.shape)}")
    if queries.device != keys.device:
        raise ValueError(
            f"queries and keys must be on the same device, got {queries.device} and {keys.device}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > keys.shape[0]:
        raise ValueError(f"k must be <= number of keys M={keys.shape[0]}, got k={k}")
    if keys.shape[0] >= 2**31 - 2**20:
        raise ValueError(
            f"keys must have fewer than {2**31 - 2**20} rows per call (int32 indices), got {keys.shape[0]}"
        )


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """(rows,) float32 L2 norms computed in fp32, chunked so fp16 keys are never upcast whole."""
    return torch.cat(
        [x[r0 : r0 + _ROW_CHUNK].to(torch.float32).norm(dim=1) for r0 in range(0, x.shape[0], _ROW_CHUNK)]
    )


def _inv(norm: torch.Tensor) -> torch.Tensor:
    return torch.where(norm > 0, 1.0 / torch.where(norm > 0, norm, 1.0), 0.0)


def _exact_rows(q32: torch.Tensor, x: torch.Tensor, k: int, assume_normalized: bool):
    """Exact fp32 top-k by the reference, over key chunks upcast one at a time, merged exactly."""
    from xite_fast.reference import cosine_topk_ref

    best_s = best_i = None
    for j0 in range(0, x.shape[0], _ROW_CHUNK):
        kb = x[j0 : j0 + _ROW_CHUNK].to(torch.float32)
        s, i = cosine_topk_ref(q32, kb, min(k, kb.shape[0]), assume_normalized=assume_normalized)
        s, i = s.to(q32.device), i.to(q32.device) + j0
        if best_s is not None:
            # earlier chunks hold lower indices: concatenating them first keeps the stable tie order
            s, i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i], dim=1)
            order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
            s, i = torch.gather(s, 1, order), torch.gather(i, 1, order)
        best_s, best_i = s, i
    return best_s, best_i


def _rerank(q32, keys, cand, k, assume_normalized, xnorm):
    """fp32 scores of the candidates (N, k') and the top-k sorted by (score desc, index asc)."""
    n, kc = cand.shape
    out = torch.empty((n, kc), dtype=torch.float32, device=q32.device)
    # chunk rows so the gathered (rows, k', D) block stays ~64 MiB
    step = max(1, (16 << 20) // max(1, kc * keys.shape[1]))
    for i0 in range(0, n, step):
        idx = cand[i0 : i0 + step]
        kb = keys[idx].to(torch.float32)
        if not assume_normalized:
            # divide (not multiply by 1/|x|) to round exactly like the reference
            kb = kb / xnorm[idx].unsqueeze(-1)
        out[i0 : i0 + step] = torch.einsum("nd,nkd->nk", q32[i0 : i0 + step], kb)
    # index-ascending first, then a stable descending sort: equal scores keep lower index first
    by_idx, order = torch.sort(cand, dim=1)
    sc = torch.gather(out, 1, order)
    srt = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(sc, 1, srt), torch.gather(by_idx, 1, srt)


def cosine_topk_with_stats(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    assume_normalized: bool = False,
    margin: int | None = None,
    fp32_precision: str = "tf32",
    splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Same as :func:`cosine_topk`, plus a dict of statistics: ``candidates`` (k'), ``splits``,
    ``fallback_rows`` (rows whose re-rank was not certified: recomputed by the reference, or for tf32
    first retried with exact fp32 products, see ``retry``) and the
    kernel's merged candidates ``candidate_scores`` / ``candidate_indices`` (N, k')."""
    _validate(queries, keys, k)
    if fp32_precision not in ("tf32", "ieee"):
        raise ValueError(f"fp32_precision must be 'tf32' or 'ieee', got {fp32_precision!r}")
    n, d = queries.shape
    m = keys.shape[0]
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if not interp and not queries.is_cuda:
        raise ValueError(
            f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got device {queries.device}"
        )
    lowp = queries.dtype in (torch.float16, torch.bfloat16) and keys.dtype == queries.dtype
    # (the interpreter computes tl.dot exactly but still takes the tf32 path's margin and eps)
    use_tf32 = not lowp and fp32_precision == "tf32"
    if margin is None:
        margin = DEFAULT_MARGIN["tf32" if use_tf32 else "exact"]
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be a non-negative int, got {margin!r}")
    kc = min(k + margin, m)
    kpad = max(16, triton.next_power_of_2(kc))

    # a common input dtype for tl.dot (mixed inputs are rare; promote to fp32); float64 is computed
    # in float32 like every other backend
    dt = queries.dtype if queries.dtype == keys.dtype and queries.dtype != torch.float64 else torch.float32
    q = queries.to(dt).contiguous()
    x = keys.to(dt).contiguous()
    q32 = q.to(torch.float32)
    qnorm = _row_norms(q32)
    qinv = _inv(qnorm)
    x32norm = _row_norms(x)
    xinv = _inv(x32norm)
    if assume_normalized:
        qinv = torch.ones_like(qinv)
        xinv = torch.ones_like(xinv)

    bm = block_m or (16 if interp else 64)
    bn = block_n or (32 if interp else 64)
    bk = block_k or (32 if interp else (64 if dt != torch.float32 else 32))
    n_blocks = triton.cdiv(n, bm)
    if splits is None:
        # enough programs to fill the GPU even for few queries: ~4 waves of 108-132 SMs
        target = 1 if interp else 512
        splits = max(1, min(triton.cdiv(target, n_blocks), triton.cdiv(m, 4 * bn)))
    splits = max(1, min(int(splits), triton.cdiv(m, bn)))
    keys_per_split = triton.cdiv(triton.cdiv(m, splits), bn) * bn
    splits = triton.cdiv(m, keys_per_split)

    part_s = torch.empty((n, splits, kpad), dtype=torch.float32, device=q.device)
    part_i = torch.empty((n, splits, kpad), dtype=torch.int32, device=q.device)
    precision = "tf32" if use_tf32 else "ieee"
    _cosine_topk_kernel[(n_blocks, splits)](
        q,
        x,
        qinv.contiguous(),
        xinv.contiguous(),
        part_s,
        part_i,
        n,
        m,
        d,
        keys_per_split,
        q.stride(0),
        x.stride(0),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        KSEL=kc,
        KPAD=kpad,
        UPCAST=bool(interp and dt == torch.bfloat16),
        INPUT_PRECISION=precision,
        # 8 warps: with 4, the 64x64 score tile + 64x32 candidate slots spill on sm_80 (checked with
        # cuobjdump -res-usage on the AOT-compiled cubin: 255 regs + 136 B stack for fp16)
        num_warps=8,
    )
    # exact merge of the split lists on the low-precision scores with the same tie rule (pad slots
    # are +inf and sit at positions >= k', so drop them first): index-ascending, then stable by score
    ps = part_s[:, :, :kc].reshape(n, -1)
    pi = part_i[:, :, :kc].reshape(n, -1)
    pi, order = torch.sort(pi, dim=1)
    ps = torch.gather(ps, 1, order)
    top = torch.sort(ps, dim=1, descending=True, stable=True).indices[:, :kc]
    cand_lp = torch.gather(ps, 1, top)
    cand = torch.gather(pi, 1, top).to(torch.int64)

    qn = q32 if assume_normalized else q32 / torch.where(qnorm > 0, qnorm, 1.0).unsqueeze(1)
    xsafe = torch.where(x32norm > 0, x32norm, 1.0)
    scores, indices = _rerank(qn, x, cand, k, assume_normalized, xsafe)

    fallback = torch.zeros(n, dtype=torch.bool, device=q.device)
    retry_stats = None
    if kc < m:
        eps = (d + 16) * 2.0**-22 + (2.0**-9 if use_tf32 else 0.0)
        if assume_normalized:
            eps_row = eps * qnorm * x32norm.max()
        else:
            eps_row = torch.full((n,), eps, device=q.device)
        threshold = cand_lp.min(dim=1).values + eps_row
        fallback = ~(scores[:, -1] > threshold)
        if bool(fallback.any()):
            rows = fallback.nonzero().squeeze(1)
            if use_tf32:
                # tf32's eps (~2e-3) is wide: retry these rows with exact fp32 products first
                fs, fi, retry = cosine_topk_with_stats(
                    q[rows], x, k, assume_normalized=assume_normalized, fp32_precision="ieee"
                )
                retry_stats = retry
            else:
                fs, fi = _exact_rows(q32[rows], x, k, assume_normalized)
            scores[rows] = fs.to(scores.device)
            indices[rows] = fi.to(indices.device)
    stats = {
        "candidates": kc,
        "splits": splits,
        "fallback_rows": int(fallback.sum()),
        # tf32 only: stats of the exact-fp32 retry of the uncertified rows (None if none)
        "retry": retry_stats,
        # the kernel's merged low-precision candidates, (N, k') sorted by (score desc, index asc)
        "candidate_scores": cand_lp,
        "candidate_indices": cand,
    }
    return scores.contiguous(), indices.contiguous(), stats


def cosine_topk(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    assume_normalized: bool = False,
    margin: int | None = None,
    fp32_precision: str = "tf32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine similarity on the GPU (or under ``TRITON_INTERPRET=1``).

    Args:
        queries: (N, D) float32 / float16 / bfloat16 CUDA tensor (float64 is computed in float32).
        keys: (M, D) same dtype family, same device.
        k: 1 <= k <= M.
        assume_normalized: inputs are unit-norm; skip the normalisation.
        margin: extra low-precision candidates re-ranked in fp32 (default 8; 32 for tf32).
        fp32_precision: ``"tf32"`` (tensor cores, certified re-rank) or ``"ieee"`` for fp32 inputs.

    Returns:
        scores (N, k) float32 sorted descending (fp32 cosine of the inputs upcast to fp32),
        indices (N, k) int64; ties go to the lower key index.
    """
    s, i, _ = cosine_topk_with_stats(
        queries, keys, k, assume_normalized=assume_normalized, margin=margin, fp32_precision=fp32_precision
    )
    return s, i
