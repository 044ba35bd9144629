"""Benchmark: debiased Sinkhorn divergence, ours (C++ CPU) vs torch reference vs POT vs geomloss.

Run (one benchmark at a time on the shared machine):
    flock /tmp/xite_bench.lock .venv/bin/python bench/bench_sinkhorn.py            # full size
    flock /tmp/xite_bench.lock .venv/bin/python bench/bench_sinkhorn.py --small    # quick check

Workload: B parallel sentence pairs, n = m words each, D-dim unit-norm embeddings (what the OT
alignment loss sees after normalisation), cost ½‖x − y‖², ε = 0.1, float32, S_ε with debiasing
(three OT problems per pair). Modes: forward, and forward + backward w.r.t. x and y.

Providers and how their parameters are matched:
* ``xite_cpu``: ``xite_fast.sinkhorn_divergence(backend="cpu")``, n_iters alternating f/g updates
  per OT problem at constant ε; envelope-theorem backward in C++.
* ``xite_cpu_anneal``: the same with ``eps_schedule="anneal"`` (geomloss-style ε-scaling).
* ``torch_ref``: ``backend="torch"`` — the plain-torch reference loop (no_grad) with the same
  envelope backward written in torch.
* ``torch_unrolled``: ``xite_fast.reference.sinkhorn_divergence_ref``, autograd through all
  iterations (what a naive implementation does; memory grows with n_iters).
* ``pot``: ``ot.sinkhorn2(a, b, C, reg=ε, method="sinkhorn_log", numItermax=n_iters, stopThr=0)``
  per pair and per term (POT has no batched log-domain solver), torch backend, C built by torch so
  the backward reaches x, y. POT's value is the linear term <π, C> (its convention), not the dual
  value — same work, different number; POT's gradient w.r.t. C is the plan π (envelope as well).
* ``geomloss``: ``SamplesLoss("sinkhorn", p=2, blur=√ε, debias=True, backend="tensorized",
  scaling=s, diameter=d)``: geomloss's p=2 cost is ½‖x − y‖² and its ε = blur^p, so blur = √ε;
  geomloss always anneals ε from diameter^p down to blur^p — ``scaling`` is chosen so its schedule
  has exactly n_iters steps (each step updates all four potentials at once, symmetric averaged
  updates), plus its final extrapolation step. Its iteration count therefore matches ours but its
  update rule does not (it is closest to ``xite_cpu_anneal``).

Appends to bench/results/sinkhorn.csv in the benchmark schema (``bench/_common.py``): median_ms and
throughput (pairs/s) per provider, mode (fwd / fwd+bwd) and note in ``setting``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import append_results, cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xite_fast  # noqa: E402
from xite_fast.ops.sinkhorn import sinkhorn_divergence  # noqa: E402
from xite_fast.reference import sinkhorn_divergence_ref, sq_euclidean_cost_ref  # noqa: E402


def _machine() -> str:
    cpu = cpu_model()
    # the load average says how much the shared cores were contended during the run
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu} x{os.cpu_count()} threads={torch.get_num_threads()} load1={load:.1f}"


def _time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _data(b, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, n, d, generator=g), dim=-1)
    y = torch.nn.functional.normalize(
        torch.randn(b, n, d, generator=g) + 0.3 * torch.randn(1, 1, d, generator=g), dim=-1
    )
    return x, y


def _geomloss_scaling(diameter: float, blur: float, n_iters: int) -> float:
    # geomloss schedule: [diam^p] + exp(arange(p log diam, p log blur, p log s)) + [blur^p];
    # choose s so the arange has n_iters - 2 entries
    return math.exp(-math.log(diameter / blur) / (n_iters - 2.5))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--small", action="store_true", help="quick run at 8 x 32 x 32 x 64")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sinkhorn.csv"))
    args = ap.parse_args(argv)
    if args.small:
        args.batch, args.tokens, args.dim, args.repeats = 8, 32, 64, 3

    b, n, d, eps, iters = args.batch, args.tokens, args.dim, args.eps, args.iters
    x, y = _data(b, n, d)
    shape = f"{b}x{n}x{n}x{d}"
    machine = _machine()
    rows = []
    results = {}

    def record(provider, mode, sec, note=""):
        results[(provider, mode)] = sec
        rows.append(
            dict(
                date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                shape=shape,
                provider=provider,
                mode=mode,
                n_iters=iters,
                median_ms=round(sec * 1e3, 3),
                throughput=round(b / sec, 1),
                machine=machine,
                version=xite_fast.__version__,
                note=note,
            )
        )

    def run(provider, fwd, note=""):
        # fwd() returns a scalar tensor; fwd+bwd recomputes with fresh leaves requiring grad
        def f_only():
            with torch.no_grad():
                fwd(x, y)

        def f_b():
            xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
            fwd(xg, yg).backward()

        warm = 1
        for mode, fn in (("fwd", f_only), ("fwd+bwd", f_b)):
            sec = _time(fn, args.repeats, warm)
            record(provider, mode, sec, note)
            print(f"  {provider:16s} {mode:8s} {sec * 1e3:10.2f} ms", flush=True)

    kw = dict(eps=eps, n_iters=iters, reduction="sum")
    if xite_fast.backends_available()["cpu"]:
        run("xite_cpu", lambda a, c: sinkhorn_divergence(a, c, backend="cpu", **kw), "constant eps")
        run(
            "xite_cpu_anneal",
            lambda a, c: sinkhorn_divergence(a, c, backend="cpu", eps_schedule="anneal", **kw),
            "eps-scaling",
        )
    run(
        "torch_ref",
        lambda a, c: sinkhorn_divergence(a, c, backend="torch", **kw),
        "reference loop + envelope bwd",
    )
    run("torch_unrolled", lambda a, c: sinkhorn_divergence_ref(a, c, **kw), "autograd through iterations")

    try:
        import ot

        def pot(a, c):
            w = torch.full((n,), 1.0 / n)
            total = 0.0
            for i in range(b):
                for p, q in ((a[i], c[i]), (a[i], a[i]), (c[i], c[i])):
                    cost = sq_euclidean_cost_ref(p[None], q[None])[0]
                    v = ot.sinkhorn2(
                        w, w, cost, reg=eps, method="sinkhorn_log", numItermax=iters, stopThr=0.0
                    )
                    total = total + v
            return total

        run("pot", pot, f"ot {ot.__version__}: per pair x 3 terms, sinkhorn_log, value=<pi,C>")
    except ImportError:
        print("  pot not installed: skipped")

    try:
        import geomloss

        pts = torch.cat([x.reshape(-1, d), y.reshape(-1, d)])
        diam = float((pts.max(0).values - pts.min(0).values).norm())  # geomloss's own max_diameter
        scaling = _geomloss_scaling(diam, math.sqrt(eps), iters)
        from geomloss._legacy.sinkhorn_divergence import epsilon_schedule

        n_sched = len(epsilon_schedule(2, diam, math.sqrt(eps), scaling))
        loss = geomloss.SamplesLoss(
            "sinkhorn",
            p=2,
            blur=math.sqrt(eps),
            debias=True,
            backend="tensorized",
            scaling=scaling,
            diameter=diam,
        )
        run(
            "geomloss",
            lambda a, c: loss(a, c).sum(),
            f"geomloss {geomloss.__version__}: annealed schedule of {n_sched} steps + extrapolation",
        )
        # parameterization check: at convergence geomloss and ours compute the same S_eps
        xs, ys = x[:4].double(), y[:4].double()
        ours = sinkhorn_divergence(
            xs, ys, eps=eps, n_iters=2000, tol=1e-12, eps_schedule="anneal", reduction="none"
        )
        theirs = geomloss.SamplesLoss(
            "sinkhorn", p=2, blur=math.sqrt(eps), debias=True, backend="tensorized", scaling=0.995
        )(xs, ys)
        print(
            "  check: ours vs geomloss (converged, fp64) max |diff| = "
            f"{(ours - theirs).abs().max().item():.2e}"
        )
    except ImportError:
        print("  geomloss not installed: skipped")

    print(f"\nSinkhorn divergence {shape}, eps={eps}, {iters} iterations, {machine}")
    print(
        f"{'provider':16s} {'fwd ms':>10s} {'fwd+bwd ms':>11s} "
        f"{'time ratio vs xite_cpu (fwd / fwd+bwd)':>34s}"
    )
    base = "xite_cpu" if ("xite_cpu", "fwd") in results else "torch_ref"
    for prov in dict.fromkeys(p for p, _ in results):
        f, fb = results[(prov, "fwd")], results[(prov, "fwd+bwd")]
        sp = f"{f / results[(base, 'fwd')]:.1f}x / {fb / results[(base, 'fwd+bwd')]:.1f}x"
        print(f"{prov:16s} {f * 1e3:10.2f} {fb * 1e3:11.2f} {sp:>34s}")

    append_results("sinkhorn", rows, args.out, shape_keys=("n_iters",))  # earlier runs stay (dated rows)


if __name__ == "__main__":
    main()
