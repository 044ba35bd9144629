"""Spot check of lda_project_interp on a quiet machine: ours vs the best torch formulation (addmm, out=)
and the C++ triad, N=200k, D=768, r=4/16. Run: PYTHONPATH=. .venv/bin/python bench/spot_lda_project_interp.py
Output committed in bench/results/lda_project_interp_spot.txt."""

import sys

import numpy as np
import torch

sys.path.insert(0, "bench")
import bench_lda_project_interp as B

from xite_fast.ops.lda_project_interp import aligned_empty, lda_project_interp

N, D = 200000, 768
rng = np.random.default_rng(0)
s = rng.standard_normal((N, D), dtype=np.float32)
t = rng.standard_normal((N, D), dtype=np.float32)
bw_cpp, bw_np = B.measure_bandwidth(N * D, 5)
print(f"triad C++ {bw_cpp:.1f} GB/s")
for r in (4, 16):
    W = np.linalg.qr(rng.standard_normal((D, r)))[0].astype(np.float32)
    for mode in ("interp", "proj", "shift"):
        out = aligned_empty((N, D))
        sec = B.median_time(lambda: lda_project_interp(s, t, W, 0.4, mode, out=out), 5)  # noqa: B023 (called at once)
        st, tt, Wt = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(W)
        o = torch.empty_like(st)
        tsec = B.median_time(lambda: B.torch_addmm(st, tt, Wt, 0.4, 0.6, mode, out=o), 5)  # noqa: B023
        gbs = 3 * N * D * 4 / sec / 1e9
        print(
            f"r={r} {mode:6s} ours {sec * 1e3:7.1f} ms {gbs:5.1f} GB/s {100 * gbs / bw_cpp:4.0f}% of triad; torch addmm out= {tsec * 1e3:7.1f} ms -> {tsec / sec:4.2f}x",
            flush=True,
        )
