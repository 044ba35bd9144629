"""Triton Sinkhorn vs the C++ kernel and the torch reference, under TRITON_INTERPRET=1 on CPU."""

from __future__ import annotations

# TRITON_INTERPRET=1 (no CUDA device) is set by tests/conftest.py before this module is imported.
import pytest
import torch

pytest.importorskip("triton")

from xite_fast._backend import load_extension  # noqa: E402
from xite_fast.ops.sinkhorn import sinkhorn_divergence  # noqa: E402
from xite_fast.ops.triton.sinkhorn import sinkhorn, sinkhorn_backward  # noqa: E402
from xite_fast.reference import sinkhorn_ref, sq_euclidean_cost_ref  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(bsz, n, m, d, seed, pad=True, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(bsz, m, d, generator=gen, dtype=torch.float64) * 0.8 + 0.3
    xm = torch.ones(bsz, n, dtype=torch.bool)
    ym = torch.ones(bsz, m, dtype=torch.bool)
    if pad:
        # ragged padding, incl. padding in the middle (not only a suffix)
        for i in range(bsz):
            xm[i, n - 1 - i :] = False
            ym[i, : i + 1] = False
            ym[i, m // 2] = False
    a = xm.double() / xm.sum(-1, keepdim=True)
    b = ym.double() / ym.sum(-1, keepdim=True)
    return x.to(dtype), y.to(dtype), a.to(dtype), b.to(dtype), xm, ym


def _close(got, want, tol, what):
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    assert err <= tol * (1 + want.abs().max().item()), f"{what}: max abs err {err:.3e}"


def _dev(*ts):
    return [t.to(DEVICE) for t in ts]


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("shape", [(2, 13, 20, 5), (3, 20, 7, 16), (1, 1, 3, 2)], ids=str)
def test_forward_matches_cpp_and_reference(shape, symmetric):
    bsz, n, m, d = shape
    x, y, a, b, xm, ym = _problem(bsz, n, m, d, seed=n * 31 + m, pad=n > 1)
    if symmetric:
        y, b, ym = x, a, xm
    eps_list = [2.0, 1.0, 0.5, 0.3] + [0.3] * 8
    f, g, v, it = sinkhorn(*_dev(x, y, a, b), eps_list, 0.0, symmetric)
    assert f.dtype == torch.float32 and f.shape == (bsz, n) and g.shape == (bsz, y.shape[1])
    assert v.shape == (bsz,) and it.dtype == torch.int32 and it.tolist() == [len(eps_list)] * bsz
    # padded points get potential 0 (C++ contract)
    assert bool((f.cpu()[~xm] == 0).all()) and bool((g.cpu()[~ym] == 0).all())
    # torch reference (float64) on the real points
    fr, gr, vr, _ = sinkhorn_ref(
        x.double(), y.double(), a.double(), b.double(), eps_list, symmetric=symmetric
    )
    _close(f.cpu()[xm], fr[xm], 1e-4, "f vs ref")
    _close(g.cpu()[ym], gr[ym], 1e-4, "g vs ref")
    _close(v, vr, 1e-4, "value vs ref")
    ext = load_extension()
    fc, gc, vc, _ = ext.sinkhorn(x.numpy(), y.numpy(), a.numpy(), b.numpy(), eps_list, 0.0, symmetric)
    _close(f, torch.from_numpy(fc), 1e-4, "f vs C++")
    _close(g, torch.from_numpy(gc), 1e-4, "g vs C++")
    _close(v, torch.from_numpy(vc), 1e-4, "value vs C++")


def test_float64_and_tol_per_item():
    x, y, a, b, _, _ = _problem(2, 9, 11, 3, seed=5, dtype=torch.float64)
    y[1] = y[1] * 10.0  # item 1 converges much more slowly than item 0 at this ε
    eps_list = [0.5] * 300
    f, g, v, it = sinkhorn(*_dev(x, y, a, b), eps_list, 1e-9, False)
    assert f.dtype == torch.float64
    ext = load_extension()
    fc, gc, vc, itc = ext.sinkhorn(x.numpy(), y.numpy(), a.numpy(), b.numpy(), eps_list, 1e-9, False)
    assert it.cpu().tolist() == itc.tolist()
    assert it[0] < it[1] <= len(eps_list)
    _close(f, torch.from_numpy(fc), 1e-9, "f64 f vs C++")
    _close(g, torch.from_numpy(gc), 1e-9, "f64 g vs C++")
    _close(v, torch.from_numpy(vc), 1e-9, "f64 value vs C++")


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_backward_matches_reference(symmetric):
    x, y, a, b, xm, ym = _problem(2, 12, 17, 6, seed=11)
    if symmetric:
        y, b = x, a
    eps = 0.4
    f, g, _, _ = sinkhorn(*_dev(x, y, a, b), [eps] * 30, 0.0, symmetric)
    w = torch.tensor([0.7, -1.3])
    gx, gy = sinkhorn_backward(*_dev(x, y, a, b, f.cpu(), g.cpu()), eps, w.to(DEVICE))
    # reference: gradient of <π, C> at fixed π (autograd through the cost only)
    xr = x.double().requires_grad_(True)
    yr = xr if symmetric else y.double().requires_grad_(True)
    cost = sq_euclidean_cost_ref(xr, yr)
    logpi = a.double().log()[:, :, None] + b.double().log()[:, None, :]
    pi = (logpi + (f.cpu().double()[:, :, None] + g.cpu().double()[:, None, :] - cost.detach()) / eps).exp()
    ((pi * cost).sum((1, 2)) * w.double()).sum().backward()
    if symmetric:
        _close(gx.cpu() + gy.cpu(), xr.grad, 1e-4, "sym grad")
    else:
        _close(gx, xr.grad, 1e-4, "gx")
        _close(gy, yr.grad, 1e-4, "gy")
    assert bool((gx.cpu()[~xm] == 0).all())
    # and the C++ backward on the same potentials
    ext = load_extension()
    np_ = lambda t: t.detach().cpu().contiguous().numpy()  # noqa: E731
    cgx, cgy = ext.sinkhorn_backward(
        np_(x), np_(y), np_(a), np_(b), np_(f), np_(g), eps, np_(w), bool(symmetric)
    )
    if symmetric:
        _close(gx.cpu() + gy.cpu(), torch.from_numpy(cgx), 1e-4, "sym grad vs C++")
    else:
        _close(gx, torch.from_numpy(cgx), 1e-4, "gx vs C++")
        _close(gy, torch.from_numpy(cgy), 1e-4, "gy vs C++")


def test_divergence_end_to_end_matches_torch_backend():
    x, y, _, _, xm, ym = _problem(2, 10, 14, 4, seed=3)
    kw = dict(x_mask=xm, y_mask=ym, eps=0.3, n_iters=20, eps_schedule="anneal", reduction="none")
    xt = x.clone().to(DEVICE).requires_grad_(True)
    yt = y.clone().to(DEVICE).requires_grad_(True)
    got = sinkhorn_divergence(
        xt, yt, backend="triton", **{**kw, "x_mask": xm.to(DEVICE), "y_mask": ym.to(DEVICE)}
    )
    xr = x.clone().requires_grad_(True)
    yr = y.clone().requires_grad_(True)
    want = sinkhorn_divergence(xr, yr, backend="torch", **kw)
    _close(got, want, 1e-4, "divergence")
    wgt = torch.tensor([1.0, 2.0])
    (got * wgt.to(DEVICE)).sum().backward()
    (want * wgt).sum().backward()
    _close(xt.grad, xr.grad, 1e-4, "d/dx")
    _close(yt.grad, yr.grad, 1e-4, "d/dy")
    assert float(xt.grad.abs().sum()) > 0


def test_rejects_bad_shapes():
    x, y, a, b, _, _ = _problem(2, 4, 5, 3, seed=0, pad=False)
    with pytest.raises(ValueError, match="b must have shape"):
        sinkhorn(x, y, a, b[:, :4], [0.5], 0.0, False)
    with pytest.raises(ValueError, match="eps_list"):
        sinkhorn(x, y, a, b, [], 0.0, False)
    with pytest.raises(ValueError, match="grad_output"):
        sinkhorn_backward(x, y, a, b, a, b, 0.5, torch.ones(3))


def test_small_tiles_cover_online_lse_and_padded_tiles(monkeypatch):
    """Tiles smaller than the problem: several column tiles (online max/sum rescaling), a column tile
    that is entirely padding for item 1, and D split over several chunks (cost loop, backward grid)."""
    import xite_fast.ops.triton.sinkhorn as tmod

    monkeypatch.setattr(tmod, "_BLOCK_R", 4)
    monkeypatch.setattr(tmod, "_BLOCK_C", 8)
    monkeypatch.setattr(tmod, "_BLOCK_D", 4)
    x, y, a, b, xm, ym = _problem(2, 11, 19, 9, seed=7)
    ym[1, :10] = False  # first column tile of item 1 is all padding
    b = ym.float() / ym.sum(-1, keepdim=True)
    eps_list = [1.0] * 3 + [0.2] * 10
    f, g, v, _ = tmod.sinkhorn(*_dev(x, y, a, b), eps_list, 0.0, False)
    fr, gr, vr, _ = sinkhorn_ref(x.double(), y.double(), a.double(), b.double(), eps_list)
    _close(f.cpu()[xm], fr[xm], 1e-4, "f small tiles")
    _close(g.cpu()[ym], gr[ym], 1e-4, "g small tiles")
    _close(v, vr, 1e-4, "value small tiles")
    w = torch.ones(2)
    gx, gy = tmod.sinkhorn_backward(*_dev(x, y, a, b, f.cpu(), g.cpu()), 0.2, w.to(DEVICE))
    ext = load_extension()
    cgx, cgy = ext.sinkhorn_backward(
        x.numpy(), y.numpy(), a.numpy(), b.numpy(), f.cpu().numpy(), g.cpu().numpy(), 0.2, w.numpy(), False
    )
    _close(gx, torch.from_numpy(cgx), 1e-4, "gx small tiles")
    _close(gy, torch.from_numpy(cgy), 1e-4, "gy small tiles")
