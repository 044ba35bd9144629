"""Sinkhorn divergence: C++ / torch backends vs POT and the plain-torch reference, gradients, errors.

POT convention: ``ot.sinkhorn`` returns the entropic plan π (entropy −Σπ log π differs from our
KL(π | a⊗b) by a constant on the transport polytope, so the plan is the same), and ``ot.sinkhorn2``
returns only the linear term <π, C>. Our OT_ε value is <π, C> + ε KL(π | a⊗b) (= the dual value
<a, f> + <b, g>), so the tests rebuild that quantity from POT's plan, and also compare <π, C>.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import ot
import pytest
import torch

import xite_fast
from tests.utils import backend_params, needs_cpu_ext
from xite_fast.ops.sinkhorn import sinkhorn_divergence, sinkhorn_ot
from xite_fast.reference import sinkhorn_divergence_ref, sinkhorn_ref, sq_euclidean_cost_ref

BACKENDS = backend_params(torch_first=True)
needs_cpu = needs_cpu_ext()

# converged settings: annealing + many iterations + a tight tolerance on the potentials
CONV = dict(n_iters=1000, tol=1e-13, eps_schedule="anneal")


def _clouds(b, n, m, d, dtype=torch.float64, seed=0, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(b, m, d, generator=g, dtype=torch.float64) * 0.8 + shift
    # scale so costs are O(1) whatever d: keeps eps=0.1 well conditioned for POT too
    return (x / d**0.5).to(dtype), (y / d**0.5).to(dtype)


def _pot_ot(x, y, eps):
    """OT_ε(α, β) = <π, C> + ε KL(π | a⊗b) from POT's log-domain plan, plus POT's own sinkhorn2."""
    n, m = x.shape[0], y.shape[0]
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    cost = 0.5 * ot.dist(x, y, metric="sqeuclidean")
    plan = ot.sinkhorn(a, b, cost, reg=eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-14)
    pos = plan > 0
    kl = (plan[pos] * np.log(plan[pos] / np.outer(a, b)[pos])).sum()
    lin = ot.sinkhorn2(a, b, cost, reg=eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-14)
    return float((plan * cost).sum() + eps * kl), float(lin)


def _first_mismatch(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> str:
    if not torch.isfinite(a).all():
        return f"kernel output has NaN/inf at {(~torch.isfinite(a)).nonzero()[:5].tolist()}"
    bad = ~torch.isclose(a, b, atol=atol, rtol=rtol)
    if not bad.any():
        return "ok"
    idx = bad.nonzero()[:5].tolist()
    return (
        f"first mismatches at {idx}: got {[a[tuple(i)].item() for i in idx]}, want "
        f"{[b[tuple(i)].item() for i in idx]}"
    )


# ------------------------------------------------------------------------------------ vs POT
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 13, 4, 1), (2, 1, 6, 5), (1, 9, 9, 17)])
@pytest.mark.parametrize("eps", [0.1, 0.7])
def test_ot_value_matches_pot(backend, shape, eps):
    b, n, m, d = shape
    x, y = _clouds(b, n, m, d, seed=n * m + d)
    ours = sinkhorn_ot(x, y, eps=eps, backend=backend, reduction="none", **CONV)
    # the linear term <π, C> from our potentials, to check against POT's sinkhorn2 convention
    a = torch.full((b, n), 1.0 / n, dtype=torch.float64)
    bw = torch.full((b, m), 1.0 / m, dtype=torch.float64)
    f, g, _, _ = sinkhorn_ref(x, y, a, bw, [eps] * 1000, tol=1e-13)
    cost = sq_euclidean_cost_ref(x, y)
    plan = a[..., None] * bw[:, None] * torch.exp((f[..., None] + g[:, None] - cost) / eps)
    for i in range(b):
        want, want_lin = _pot_ot(x[i].numpy(), y[i].numpy(), eps)
        assert abs(ours[i].item() - want) < 1e-4, (i, ours[i].item(), want)
        assert abs((plan[i] * cost[i]).sum().item() - want_lin) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_matches_pot(backend):
    eps = 0.3
    x, y = _clouds(3, 11, 8, 4, seed=7)
    ours = sinkhorn_divergence(x, y, eps=eps, backend=backend, reduction="none", **CONV)
    for i in range(3):
        xi, yi = x[i].numpy(), y[i].numpy()
        want = _pot_ot(xi, yi, eps)[0] - 0.5 * _pot_ot(xi, xi, eps)[0] - 0.5 * _pot_ot(yi, yi, eps)[0]
        assert abs(ours[i].item() - want) < 1e-4, (i, ours[i].item(), want)


# ------------------------------------------------------------------------ C++ vs torch reference
@needs_cpu
@pytest.mark.parametrize(
    "dtype,atol,rtol", [(torch.float64, 1e-10, 1e-10), (torch.float32, 2e-4, 2e-5)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("shape", [(5, 12, 7, 77), (1, 3, 64, 1), (4, 1, 1, 8), (3, 33, 17, 384)])
@pytest.mark.parametrize("schedule", [None, "anneal"])
def test_cpu_matches_reference(dtype, atol, rtol, shape, schedule):
    b, n, m, d = shape
    x, y = _clouds(b, n, m, d, seed=d)
    # fixed iteration count (no tol): both run exactly the same updates
    kw = dict(eps=0.5, n_iters=40, eps_schedule=schedule, reduction="none")
    want = sinkhorn_divergence_ref(x, y, **kw)
    got = sinkhorn_divergence(x.to(dtype), y.to(dtype), backend="cpu", **kw)
    assert got.dtype == dtype
    assert torch.allclose(got.double(), want, atol=atol, rtol=rtol), _first_mismatch(
        got.double(), want, atol, rtol
    )
    got_t = sinkhorn_divergence(x.to(dtype), y.to(dtype), backend="torch", **kw)
    assert torch.allclose(got_t.double(), want, atol=atol, rtol=rtol)


@needs_cpu
def test_cpu_potentials_match_reference():
    ext = xite_fast._backend.load_extension()
    x, y = _clouds(3, 10, 6, 5, seed=3)
    a = torch.rand(3, 10, dtype=torch.float64) + 0.1
    a[1, 4:] = 0  # padding
    a = a / a.sum(-1, keepdim=True)
    b = torch.rand(3, 6, dtype=torch.float64) + 0.1
    b = b / b.sum(-1, keepdim=True)
    eps_list = [2.0, 1.0, 0.5] + [0.3] * 30
    f, g, v, it = ext.sinkhorn(x.numpy(), y.numpy(), a.numpy(), b.numpy(), eps_list, 0.0, False)
    fr, gr, vr, _ = sinkhorn_ref(x, y, a, b, eps_list)
    valid = a > 0
    assert np.allclose(f[valid.numpy()], fr[valid].numpy(), atol=1e-10)
    assert np.allclose(g, gr.numpy(), atol=1e-10)
    assert np.allclose(v, vr.numpy(), atol=1e-10)
    assert (f[~valid.numpy()] == 0).all()  # padded potentials are zeroed, never garbage
    assert (it == len(eps_list)).all()


# ---------------------------------------------------------------------------- properties
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_self_divergence_is_zero(backend, dtype, atol):
    x, _ = _clouds(4, 20, 1, 16, dtype=dtype, seed=11)
    s = sinkhorn_divergence(x, x.clone(), eps=0.5, n_iters=100, backend=backend, reduction="none")
    assert s.abs().max().item() < atol


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_nonnegative_and_orders_distances(backend):
    x, y = _clouds(8, 15, 12, 6, seed=5, shift=0.0)
    s = sinkhorn_divergence(
        x, y, eps=0.2, backend=backend, reduction="none", n_iters=300, eps_schedule="anneal"
    )
    assert (s > -1e-8).all(), s
    # moving y further away increases the divergence
    s_far = sinkhorn_divergence(
        x, y + 1.0, eps=0.2, backend=backend, reduction="none", n_iters=300, eps_schedule="anneal"
    )
    assert (s_far > s).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_masks_match_unpadded(backend):
    lens_x, lens_y = [5, 9, 1], [7, 2, 9]
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 6, generator=g, dtype=torch.float64) for n in lens_x]
    ys = [torch.randn(m, 6, generator=g, dtype=torch.float64) + 0.3 for m in lens_y]
    # padding holds large garbage: it must have no influence
    x = torch.full((3, 9, 6), 1e3, dtype=torch.float64)
    y = torch.full((3, 9, 6), -1e3, dtype=torch.float64)
    xm = torch.zeros(3, 9, dtype=torch.bool)
    ym = torch.zeros(3, 9, dtype=torch.bool)
    for i in range(3):
        # pad at the front for item 1 to check masks need not be prefixes
        sl = slice(9 - lens_x[i], 9) if i == 1 else slice(0, lens_x[i])
        x[i, sl], xm[i, sl] = xs[i], True
        y[i, : lens_y[i]], ym[i, : lens_y[i]] = ys[i], True
    kw = dict(eps=0.4, n_iters=60, backend=backend)
    padded = sinkhorn_divergence(x, y, x_mask=xm, y_mask=ym, reduction="none", **kw)
    single = torch.stack([sinkhorn_divergence(xs[i], ys[i], **kw) for i in range(3)])
    assert torch.allclose(padded, single, atol=1e-12), (padded, single)
    # gradients vanish on padding and match the unpadded gradients on real points
    xg = x.clone().requires_grad_()
    sinkhorn_divergence(xg, y, x_mask=xm, y_mask=ym, reduction="sum", **kw).backward()
    assert (xg.grad[~xm] == 0).all()
    x0 = xs[0].clone().requires_grad_()
    sinkhorn_divergence(x0, ys[0], **kw).backward()
    assert torch.allclose(xg.grad[0, : lens_x[0]], x0.grad, atol=1e-12)


def test_float32_masks_accept_01_and_single_pair_scalar():
    x, y = _clouds(2, 6, 5, 3, seed=2)
    s_bool = sinkhorn_divergence(x, y, x_mask=torch.ones(2, 6, dtype=torch.bool), backend="torch")
    s_01 = sinkhorn_divergence(x, y, x_mask=torch.ones(2, 6), backend="torch")
    assert torch.equal(s_bool, s_01)
    one = sinkhorn_divergence(x[0], y[0], backend="torch")
    assert one.ndim == 0
    assert torch.allclose(one, sinkhorn_divergence(x[:1], y[:1], backend="torch", reduction="none")[0])


def test_half_inputs_are_upcast():
    x, y = _clouds(2, 8, 8, 4, seed=4)
    s16 = sinkhorn_divergence(x.to(torch.bfloat16), y.to(torch.bfloat16), eps=0.5)
    s32 = sinkhorn_divergence(x.to(torch.bfloat16).float(), y.to(torch.bfloat16).float(), eps=0.5)
    assert s16.dtype == torch.float32
    assert torch.allclose(s16, s32)


def test_tol_stops_early_with_same_value():
    x, y = _clouds(2, 10, 10, 4, seed=9)
    full = sinkhorn_divergence(x, y, eps=0.5, n_iters=2000, backend="torch")
    early = sinkhorn_divergence(x, y, eps=0.5, n_iters=2000, tol=1e-12, backend="torch")
    assert abs(full.item() - early.item()) < 1e-10


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("debias", [True, False])
def test_envelope_gradient_matches_unrolled_autograd(backend, debias):
    x, y = _clouds(2, 7, 5, 4, seed=13)
    kw = dict(eps=0.3, n_iters=1500, tol=1e-13, debias=debias, reduction="sum")
    x1, y1 = x.clone().requires_grad_(), y.clone().requires_grad_()
    sinkhorn_divergence_ref(x1, y1, **kw).backward()
    x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    sinkhorn_divergence(x2, y2, backend=backend, **kw).backward()
    assert torch.allclose(x2.grad, x1.grad, atol=1e-7), _first_mismatch(x2.grad, x1.grad, 1e-7, 0)
    assert torch.allclose(y2.grad, y1.grad, atol=1e-7), _first_mismatch(y2.grad, y1.grad, 1e-7, 0)


@needs_cpu
def test_cpu_backward_float32_matches_torch_backward():
    x, y = _clouds(6, 40, 33, 64, dtype=torch.float32, seed=17)
    grads = []
    for backend in ("cpu", "torch"):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        w = torch.linspace(0.5, 2.0, 6)
        (
            sinkhorn_divergence(xg, yg, eps=4.0, n_iters=50, backend=backend, reduction="none") * w
        ).sum().backward()
        grads.append((xg.grad, yg.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_tiny(backend):
    x, y = _clouds(2, 4, 3, 2, seed=21)
    x.requires_grad_()
    y.requires_grad_()

    def fn(a, b):
        return sinkhorn_divergence(a, b, eps=0.5, n_iters=3000, tol=1e-14, backend=backend, reduction="none")

    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizing_a_cloud_decreases_divergence(backend):
    x, y = _clouds(4, 12, 10, 8, dtype=torch.float32, seed=23, shift=2.0)
    x = x.clone().requires_grad_()
    opt = torch.optim.SGD([x], lr=5.0)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = sinkhorn_divergence(x, y, eps=0.5, n_iters=30, backend=backend)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:], strict=False)), losses


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(x=torch.zeros(2, 3, 4, 5)), r"x must be 3-D \(B, n, D\)"),
        (dict(y=torch.zeros(2, 3, 5)), "y must have the feature dimension of x"),
        (dict(y=torch.zeros(3, 3, 4)), "y must have the batch size of x"),
        (dict(x=torch.zeros(2, 0, 4)), "x must be non-empty"),
        (dict(x=torch.zeros(2, 3, 4, dtype=torch.int64)), "x must have a floating dtype"),
        (dict(x=np.zeros((2, 3, 4))), "x must be a torch tensor"),
        (dict(eps=0.0), "eps must be a finite float > 0"),
        (dict(eps=-1.0), "eps must be a finite float > 0"),
        (dict(eps=float("nan")), "eps must be a finite float > 0"),
        (dict(n_iters=0), "n_iters must be a positive int"),
        (dict(tol=-1.0), "tol must be None or a float >= 0"),
        (dict(eps_schedule="cosine"), "eps_schedule must be None or 'anneal'"),
        (dict(reduction="max"), "reduction must be one of"),
        (dict(backend="gpu"), "backend must be one of"),
        (dict(x_mask=torch.tensor([[1, 1, 1], [0, 0, 0]])), "x_mask masks out every point of batch item 1"),
        (dict(y_mask=torch.ones(2, 4)), r"y_mask must have shape \(2, 3\)"),
        (dict(x_mask=torch.full((2, 3), 2.0)), "x_mask must be bool or 0/1 valued"),
        (dict(x=torch.tensor(float("nan")).expand(2, 3, 4)), "x contains NaN or inf"),
    ],
)
def test_errors(kwargs, match):
    args = dict(x=torch.randn(2, 3, 4), y=torch.randn(2, 3, 4))
    args.update(kwargs)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        sinkhorn_divergence(x, y, **args)


@needs_cpu
def test_cpp_checks():
    ext = xite_fast._backend.load_extension()
    x = np.zeros((2, 3, 4), np.float32)
    a = np.full((2, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        ext.sinkhorn(x, x, a, a, [0.0], 0.0, False)
    with pytest.raises(ValueError, match="every batch item needs a positive weight"):
        ext.sinkhorn(x, x, np.zeros_like(a), a, [1.0], 0.0, False)
    with pytest.raises(ValueError, match="x must be 3-D"):
        ext.sinkhorn(x[0], x, a, a, [1.0], 0.0, False)
    with pytest.raises(ValueError, match="float32 or float64"):
        ext.sinkhorn(x.astype(np.int32), x, a, a, [1.0], 0.0, False)
    with pytest.raises(ValueError, match="must share x's dtype"):
        ext.sinkhorn(x, x.astype(np.float64), a, a, [1.0], 0.0, False)
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.sinkhorn(np.asfortranarray(np.zeros((2, 3, 4), np.float32)), x, a, a, [1.0], 0.0, False)


def test_explicit_unavailable_backend_raises():
    if importlib.util.find_spec("xite_fast.ops.triton.sinkhorn") is not None:
        pytest.skip("a Triton sinkhorn kernel exists")
    with pytest.raises(RuntimeError, match="backend='triton' was requested for sinkhorn"):
        sinkhorn_divergence(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="triton")


@needs_cpu
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_cpu_row_parallel_path_matches_torch(dtype, atol):
    # one large item (n*m >= 128*128, B < threads) takes the row-parallel branch of the kernel
    x, y = _clouds(1, 131, 127, 19, dtype=dtype, seed=29)
    out = {}
    for backend in ("cpu", "torch"):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        v = sinkhorn_divergence(xg, yg, eps=0.2, n_iters=20, backend=backend)
        v.backward()
        out[backend] = (v.detach(), xg.grad, yg.grad)
    for got, want in zip(out["cpu"], out["torch"], strict=True):
        assert torch.allclose(got, want, atol=atol, rtol=1e-4), _first_mismatch(
            got.reshape(-1), want.reshape(-1), atol, 1e-4
        )
