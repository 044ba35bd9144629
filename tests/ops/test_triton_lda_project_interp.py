"""Triton lda_project_interp vs the float64 reference, under TRITON_INTERPRET=1 on CPU."""

from __future__ import annotations

# TRITON_INTERPRET=1 (no CUDA device) is set by tests/conftest.py before this module is imported.
import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from tests.utils import orthonormal, orthonormal_torch, run_aot  # noqa: E402
from xite_fast._backend import Backend, resolve_backend  # noqa: E402
from xite_fast.ops.triton import lda_project_interp as tmod  # noqa: E402
from xite_fast.ops.triton.lda_project_interp import lda_project_interp  # noqa: E402
from xite_fast.reference import lda_project_interp_ref  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ["interp", "proj", "comp", "shift"]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _check(out, want, dtype):
    assert out.dtype == dtype and out.shape == want.shape
    assert bool(torch.isfinite(out).all()), "non-finite output"
    err = (out.double().cpu() - want).abs()
    bound = TOL[dtype] * (1.0 + want.abs())
    bad = (err > bound).nonzero()
    assert bad.numel() == 0, (
        f"first mismatch at {bad[0].tolist()}: {out.cpu()[tuple(bad[0])]} vs {want[tuple(bad[0])]}"
    )


SHAPES = [
    ((5, 77), 3),  # odd D, r < 16 (padded for tl.dot)
    ((3, 4, 20), 2),  # (N, T, D): per-row lam broadcasts over T
    ((2, 1), 1),  # d == 1, r == 1
    ((17, 40), 40),  # r == D (P is the identity): proj == interp
]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize("per_row", [False, True], ids=["lam_scalar", "lam_row"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"r{s[1]}")
def test_matches_reference(shape, mode, per_row, dtype):
    dims, r = shape
    g = torch.Generator().manual_seed(sum(dims) * 7 + r)
    s = torch.randn(*dims, generator=g).to(dtype)
    t = torch.randn(*dims, generator=g).to(dtype)
    W = orthonormal_torch(dims[-1], r, g)
    lam = torch.rand(dims[0], generator=g) * 1.5 - 0.25 if per_row else 0.3
    out = lda_project_interp(s.to(DEVICE), t.to(DEVICE), W.to(DEVICE), lam, mode)
    want = lda_project_interp_ref(s, t, W, lam, mode, out_dtype=torch.float64)
    _check(out, want, dtype)


def test_two_pass_kernel_for_wide_rows():
    # D > 1024 streams D in chunks twice (c = u W first, then the output)
    g = torch.Generator().manual_seed(11)
    d = 1100
    s = torch.randn(3, d, generator=g)
    t = torch.randn(3, d, generator=g)
    W = orthonormal_torch(d, 5, g)
    lam = torch.tensor([0.0, 0.5, 1.0])
    for mode in ("proj", "shift"):
        out = lda_project_interp(s, t, W, lam, mode)
        _check(out, lda_project_interp_ref(s, t, W, lam, mode, out_dtype=torch.float64), torch.float32)


def test_identities():
    g = torch.Generator().manual_seed(12)
    s, t = torch.randn(6, 30, generator=g), torch.randn(6, 30, generator=g)
    W = orthonormal_torch(30, 4, g)
    # lam = 1 returns src in every mode; shift keeps src's complement: shift - s lies in span(W)
    for mode in MODES:
        torch.testing.assert_close(lda_project_interp(s, t, W, 1.0, mode), s, atol=1e-6, rtol=0)
    d = lda_project_interp(s, t, W, 0.25, "shift") - s
    torch.testing.assert_close(d - (d @ W) @ W.T, torch.zeros_like(d), atol=1e-5, rtol=0)
    # proj + comp at the same lam = lam*s + (1-lam)*t + lam*s, i.e. interp + lam*s
    pc = lda_project_interp(s, t, W, 0.4, "proj") + lda_project_interp(s, t, W, 0.4, "comp")
    torch.testing.assert_close(pc, lda_project_interp(s, t, W, 0.4, "interp") + 0.4 * s, atol=1e-5, rtol=0)


def test_numpy_basis_and_lam_and_interp_without_basis():
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    lam = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    W = orthonormal(9, 2, 0)
    torch.testing.assert_close(
        lda_project_interp(s, t, W, lam, "proj"),
        lda_project_interp_ref(s, t, torch.from_numpy(W), torch.from_numpy(lam), "proj"),
        atol=1e-5,
        rtol=0,
    )
    out = lda_project_interp(s, t, None, lam, "interp")
    torch.testing.assert_close(
        out, torch.from_numpy(lam)[:, None] * s + (1 - torch.from_numpy(lam)[:, None]) * t
    )


def test_dispatch_finds_triton_module():
    assert resolve_backend("lda_project_interp", "triton") is Backend.TRITON
    assert set(tmod.MODES) == set(MODES)


S, T, W4 = torch.randn(3, 8), torch.randn(3, 8), torch.linalg.qr(torch.randn(8, 2))[0]


@pytest.mark.parametrize(
    "args, match",
    [
        ((S, T, W4, 0.5, "bogus"), "mode must be one of"),
        ((S, T[:2], W4, 0.5, "proj"), "tgt must have the shape of src"),
        ((S, T, W4[:5], 0.5, "proj"), r"W must be 2-D \(D=8, r\)"),
        ((S, T, None, 0.5, "proj"), "W .* is required"),
        ((S, T, W4, torch.ones(2), "proj"), "lam must be a float or a \\(N,\\) tensor with N=3"),
        ((S, T, W4, float("nan"), "proj"), "lam must be finite"),
        ((S[0], T[0], W4, 0.5, "proj"), "src must be 2-D"),
        ((S.double(), T, W4, 0.5, "proj"), "src must be float32"),
        ((torch.full((3, 8), float("inf")), T, W4, 0.5, "proj"), "src contains NaN or inf"),
        ((S[:0], T[:0], W4, 0.5, "proj"), "src must be non-empty"),
    ],
)
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        lda_project_interp(*args)


_AOT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from xite_fast.ops.triton.lda_project_interp import _lda_project_interp_kernel

for single, mode, dt, block_d, block_r in ((True, 1, "fp16", 512, 8), (False, 3, "fp32", 256, 8)):
    sig = {"s_ptr": f"*{dt}", "t_ptr": f"*{dt}", "wt_ptr": "*fp32", "lam_ptr": "*fp32", "out_ptr": f"*{dt}",
           "R": "i32", "D": "i32", "RANK": "i32", "lam_scalar": "fp32"}
    const = {"BLOCK_R": block_r, "BLOCK_D": block_d, "RPAD": 4, "MODE": mode, "LAM_PER_ROW": True,
             "SINGLE": single}
    sig.update({k: "constexpr" for k in const})
    kernel = triton.compile(ASTSource(fn=_lda_project_interp_kernel, signature=sig, constexprs=const),
                            target=GPUTarget("cuda", 80, 32))
    assert kernel.asm["cubin"], single
    print("single" if single else "chunked", "ok")
"""


def test_kernels_compile_for_sm80():
    # the interpreter accepts code the GPU compiler rejects: compile ahead of time for sm_80
    out = run_aot(_AOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["single", "ok", "chunked", "ok"]


@pytest.mark.triton
@pytest.mark.parametrize("mode", ["interp", "proj", "comp", "shift"])
def test_public_op_dispatches_to_triton(mode):
    """xite_fast.lda_project_interp(backend="triton") routes to the Triton kernel and matches the
    reference."""
    import xite_fast
    from xite_fast.reference import lda_project_interp_ref

    g = torch.Generator().manual_seed(7)
    s = torch.randn(9, 40, generator=g)
    t = torch.randn(9, 40, generator=g)
    w = torch.linalg.qr(torch.randn(40, 3, generator=g)).Q
    lam = torch.rand(9, generator=g)
    got = xite_fast.lda_project_interp(s, t, w, lam, mode, backend="triton")
    want = lda_project_interp_ref(s.double(), t.double(), w.double(), lam.double(), mode).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    s_np = s.numpy().copy()
    s_np[2, 3] = float("nan")
    with pytest.raises(ValueError, match="src contains NaN"):
        xite_fast.lda_project_interp(s_np, t.numpy(), w.numpy(), 0.5, mode, backend="triton")
