"""Triton cosine_topk vs the exact reference, under TRITON_INTERPRET=1 on CPU (tiny shapes: slow)."""

from __future__ import annotations

# TRITON_INTERPRET=1 (no CUDA device) is set by tests/conftest.py before this module is imported.
import pytest
import torch

pytest.importorskip("triton")

from tests.utils import run_aot  # noqa: E402
from xite_fast._backend import Backend, resolve_backend  # noqa: E402
from xite_fast.ops.triton.cosine_topk import cosine_topk, cosine_topk_with_stats  # noqa: E402
from xite_fast.reference import cosine_topk_ref  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _ints(rows: int, d: int, g: torch.Generator) -> torch.Tensor:
    # small integers: every dot product is exact in fp32 whatever the summation order (BLAS under the
    # interpreter, tensor cores on GPU), so copies of a key tie *exactly* and tie rules are testable
    return torch.randint(-3, 4, (rows, d), generator=g).float()


def _exact_scores(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    q = q.double()
    x = x.double()
    qn = q / torch.where(q.norm(dim=1, keepdim=True) > 0, q.norm(dim=1, keepdim=True), 1.0)
    xn = x / torch.where(x.norm(dim=1, keepdim=True) > 0, x.norm(dim=1, keepdim=True), 1.0)
    return qn @ xn.T


def check_topk(q, x, scores, indices, k, tol=1e-5):
    """Scores match exact fp64 cosines; indices exact outside tie groups, tied-equivalent inside."""
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    assert scores.shape == (q.shape[0], k) and indices.shape == (q.shape[0], k)
    assert bool(torch.isfinite(scores).all()), "non-finite scores"
    scores, indices = scores.cpu(), indices.cpu()
    full = _exact_scores(q.cpu(), x.cpu())
    ref_s, ref_i = cosine_topk_ref(q.cpu().float(), x.cpu().float(), k)
    for r in range(q.shape[0]):
        idx = indices[r]
        assert len(set(idx.tolist())) == k, f"row {r}: duplicate indices {idx.tolist()}"
        got = full[r, idx]
        assert torch.allclose(scores[r].double(), got, atol=tol), f"row {r}: scores {scores[r]} vs {got}"
        assert bool((scores[r][:-1] >= scores[r][1:]).all()), f"row {r}: not sorted {scores[r]}"
        want = torch.sort(full[r], descending=True).values[:k]
        assert torch.allclose(got, want, atol=tol), f"row {r}: not the top-k: {got} vs {want}"
        for j in range(k):
            s = full[r, ref_i[r, j]]
            # a position outside any tie group must hold exactly the reference index
            if int(((full[r] - s).abs() <= tol).sum()) == 1 and int(idx[j]) != int(ref_i[r, j]):
                raise AssertionError(f"row {r} pos {j}: index {int(idx[j])} != reference {int(ref_i[r, j])}")


SHAPES = [
    (5, 123, 77, 7, None),  # odd everything
    (17, 130, 40, 8, 3),  # several query blocks, 3 key splits, partial last tile
    (3, 5, 1, 5, None),  # d == 1 (scores +-1, all ties), k == M
    (2, 40, 16, 8, 2),  # N < k
    (1, 16, 16, 1, None),  # k == 1, single tile
]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])))
def test_matches_reference(shape, dtype):
    n, m, d, k, splits = shape
    g = torch.Generator().manual_seed(n * 1000 + m + d)
    q = torch.randn(n, d, generator=g).to(dtype).to(DEVICE)
    x = torch.randn(m, d, generator=g).to(dtype).to(DEVICE)
    s, i, stats = cosine_topk_with_stats(q, x, k, splits=splits)
    assert stats["splits"] == (splits or stats["splits"])
    # exact fp32 answer of the (upcast) inputs
    check_topk(q.float(), x.float(), s, i, k)
    rs, ri = cosine_topk_ref(q.cpu().float(), x.cpu().float(), k)
    torch.testing.assert_close(s.cpu(), rs, atol=1e-6, rtol=0)


def test_ties_lower_index_first_across_tiles_and_splits():
    g = torch.Generator().manual_seed(1)
    base = _ints(6, 24, g)
    # every key appears 7 times, spread over several tiles and splits: equal scores exactly
    x = base.repeat(7, 1)
    q = _ints(4, 24, g)
    for splits in (1, 3):
        s, i, _ = cosine_topk_with_stats(q, x, 8, splits=splits)
        rs, ri = cosine_topk_ref(q, x, 8)
        assert torch.equal(i.cpu(), ri), f"splits={splits}: {i.tolist()} vs {ri.tolist()}"
        torch.testing.assert_close(s.cpu(), rs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("splits", [1, 3])
def test_kernel_candidates_keep_lowest_tied_indices(splits):
    # 30 exact copies of the best key tie far beyond k' = k + margin, so the kernel itself (before
    # any re-rank or fallback) must keep the lowest tied indices across tiles and splits
    g = torch.Generator().manual_seed(5)
    base = _ints(5, 16, g)
    x = base[torch.randint(0, 5, (150,), generator=g)]
    q = _ints(3, 16, g)
    _, _, st = cosine_topk_with_stats(q, x, 4, splits=splits)
    rs, ri = cosine_topk_ref(q, x, st["candidates"])
    assert torch.equal(st["candidate_indices"].cpu(), ri), (
        f"{st['candidate_indices'].tolist()} vs {ri.tolist()}"
    )
    torch.testing.assert_close(st["candidate_scores"].cpu(), rs, atol=1e-6, rtol=0)


def test_kernel_evicts_highest_tied_index():
    # 20 copies of the runner-up fill the candidate list first; 4 copies of the best key arrive last
    # and must evict the *highest* tied runner-up indices
    g = torch.Generator().manual_seed(6)
    q = _ints(1, 16, g) + 4.0
    runner_up = q + _ints(1, 16, g)
    rest = -q + _ints(126, 16, g)
    x = torch.cat([runner_up.repeat(20, 1), rest, q.repeat(4, 1)])
    s, i, st = cosine_topk_with_stats(q, x, 4, margin=8)
    assert st["candidate_indices"][0].tolist() == [146, 147, 148, 149, 0, 1, 2, 3, 4, 5, 6, 7]
    assert i[0].tolist() == [146, 147, 148, 149]


def test_zero_vectors_score_zero():
    q = torch.zeros(2, 8)
    q[1, 0] = 1.0
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(2))
    x[3] = 0.0
    s, i = cosine_topk(q, x, 4)
    # zero query: every score 0, so the 4 lowest indices win
    assert i[0].tolist() == [0, 1, 2, 3] and bool((s[0] == 0).all())
    check_topk(q, x, s, i, 4)
    s, i = cosine_topk(q[1:], x, 20)
    assert float(s[0, i[0].tolist().index(3)]) == 0.0


def test_assume_normalized():
    g = torch.Generator().manual_seed(3)
    q = torch.nn.functional.normalize(torch.randn(6, 20, generator=g), dim=1)
    x = torch.nn.functional.normalize(torch.randn(70, 20, generator=g), dim=1)
    s, i = cosine_topk(q, x, 5, assume_normalized=True)
    check_topk(q, x, s, i, 5)
    # unnormalised inputs under assume_normalized give raw dot products, like the reference
    s2, i2 = cosine_topk(q * 3, x, 5, assume_normalized=True)
    rs, ri = cosine_topk_ref(q * 3, x, 5, assume_normalized=True)
    torch.testing.assert_close(s2, rs, atol=1e-5, rtol=0)
    assert torch.equal(i2, ri)


def test_uncertified_rows_fall_back_to_exact():
    # margin=0 leaves no slack, so the certificate fails and rows are recomputed exactly
    g = torch.Generator().manual_seed(4)
    q = torch.randn(3, 16, generator=g)
    x = torch.randn(50, 16, generator=g)
    s, i, stats = cosine_topk_with_stats(q, x, 4, margin=0, fp32_precision="ieee")
    assert stats["fallback_rows"] == 3 and stats["retry"] is None
    check_topk(q, x, s, i, 4)
    # with the default margin the well-separated random scores certify every row
    _, _, stats = cosine_topk_with_stats(q, x, 4, fp32_precision="ieee")
    assert stats["fallback_rows"] == 0 and stats["candidates"] == 12
    # tf32 (eps ~2e-3): uncertified rows are first retried with exact fp32 products (margin 8)
    s, i, stats = cosine_topk_with_stats(q, x, 4, margin=0)
    assert stats["fallback_rows"] == 3 and stats["retry"]["candidates"] == 12
    assert stats["retry"]["fallback_rows"] == 0
    check_topk(q, x, s, i, 4)
    _, _, stats = cosine_topk_with_stats(q, x, 4)
    assert stats["candidates"] == 36


def test_exact_fallback_streams_key_chunks(monkeypatch):
    # the exact fallback upcasts keys chunk by chunk and merges; exact ties straddle chunk borders
    from xite_fast.ops.triton import cosine_topk as mod

    monkeypatch.setattr(mod, "_ROW_CHUNK", 16)
    g = torch.Generator().manual_seed(7)
    x = _ints(9, 12, g)[torch.arange(70) % 9].to(torch.float16)
    q = _ints(4, 12, g).to(torch.float16)
    # raw integer dot products (assume_normalized) are exact in any order, so ties are exact too
    s, i, stats = cosine_topk_with_stats(q, x, 11, margin=0, assume_normalized=True)
    assert stats["fallback_rows"] == 4
    rs, ri = cosine_topk_ref(q.float(), x.float(), 11, assume_normalized=True)
    assert torch.equal(i, ri)
    torch.testing.assert_close(s, rs, atol=1e-6, rtol=0)


def test_float64_and_mixed_inputs_compute_in_float32():
    g = torch.Generator().manual_seed(8)
    q, x = torch.randn(3, 10, generator=g, dtype=torch.float64), torch.randn(40, 10, generator=g)
    for qq, xx in ((q, x.double()), (q.half(), x)):
        s, i = cosine_topk(qq, xx, 6)
        check_topk(qq.float(), xx.float(), s, i, 6)


def test_dispatch_finds_triton_module():
    assert resolve_backend("cosine_topk", "triton") is Backend.TRITON


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(2, 4), torch.randn(3, 4), 4), "k must be <= number of keys"),
        ((torch.randn(2, 4), torch.randn(3, 4), 0), "k must be a positive int"),
        ((torch.randn(2, 4), torch.randn(3, 5), 1), "last dimension 4"),
        ((torch.randn(4), torch.randn(3, 4), 1), "queries must be 2-D"),
        ((torch.randn(2, 4), torch.full((3, 4), float("nan")), 1), "keys contains NaN"),
        (
            (torch.ones(2, 4, dtype=torch.int32), torch.randn(3, 4), 1),
            "queries must be float32, float16, bfloat16",
        ),
        ((torch.randn(0, 4), torch.randn(3, 4), 1), "queries must be non-empty"),
    ],
)
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        cosine_topk(*args)


_AOT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from xite_fast.ops.triton.cosine_topk import _cosine_topk_kernel

for dt, prec in (("fp32", "tf32"), ("bf16", "ieee")):
    sig = {name: "i32" for name in ("N", "M", "D", "keys_per_split", "stride_qn", "stride_xm")}
    sig.update({"q_ptr": f"*{dt}", "x_ptr": f"*{dt}", "qinv_ptr": "*fp32", "xinv_ptr": "*fp32",
                "out_s_ptr": "*fp32", "out_i_ptr": "*i32"})
    const = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "KSEL": 18, "KPAD": 32, "UPCAST": False,
             "INPUT_PRECISION": prec}
    sig.update({name: "constexpr" for name in const})
    kernel = triton.compile(ASTSource(fn=_cosine_topk_kernel, signature=sig, constexprs=const),
                            target=GPUTarget("cuda", 80, 32),
                            options={"num_warps": 8})
    assert kernel.asm["cubin"], dt
    print(dt, "ok")
"""


def test_kernel_compiles_for_sm80():
    # the interpreter accepts code the GPU compiler rejects: compile ahead of time for sm_80
    out = run_aot(_AOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["fp32", "ok", "bf16", "ok"]


def test_extreme_magnitudes_are_rescaled_before_the_kernel():
    """The public op scales rows whose fp32 norm would over/underflow by a power of two before the
    Triton (and CUDA) kernels, which compute norms in fp32: norms 1e-41 .. 1e39 get their cosine."""
    from xite_fast.ops.cosine_topk import cosine_topk as op

    g = torch.Generator().manual_seed(7)
    q = torch.randn(6, 16, generator=g)
    x = torch.randn(40, 16, generator=g)
    q[1] *= 1e-40
    q[2] = torch.sign(q[2]) * 3e38  # norm 1.2e39: not a float32
    x[[3, 9]] *= 1e-41
    x[[5, 11]] = torch.sign(x[[5, 11]]) * 2e38
    x[7] *= 1e25
    x[8] = 0.0
    s, i = op(q.to(DEVICE), x.to(DEVICE), 4, backend="triton")
    check_topk(q, x, s, i, 4)
