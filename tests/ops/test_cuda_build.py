"""CUDA kernels (csrc/cuda) vs the references. Needs a GPU and _C built with XITE_ENABLE_CUDA=ON.

On machines without a GPU these tests are skipped; `scripts/ci_cuda_compile.sh` proves there that the
kernels compile and register in _C.
"""

from __future__ import annotations

import pytest
import torch

from tests.utils import orthonormal_torch
from xite_fast._backend import load_extension
from xite_fast.reference import cosine_topk_ref, lda_project_interp_ref

pytestmark = pytest.mark.gpu


def _ext():
    ext = load_extension()
    if ext is None or not ext.with_cuda():
        pytest.skip("xite_fast._C was built without CUDA")
    return ext


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize(
    "n, m, d, k",
    [
        (5, 123, 77, 7),
        (33, 5000, 64, 10),
        (3, 5, 1, 5),
        (2, 40, 16, 40),
        (70, 20000, 384, 128),
        (1, 70, 33, 33),
    ],
)
def test_cosine_topk_cuda_matches_reference(n, m, d, k, dtype):
    ext = _ext()
    g = torch.Generator().manual_seed(n + m + d + k)
    q = torch.randn(n, d, generator=g).to(dtype)
    x = torch.randn(m, d, generator=g).to(dtype)
    s, i = ext.cosine_topk_cuda(q.cuda(), x.cuda(), k)
    rs, ri = cosine_topk_ref(q.float(), x.float(), k)
    assert s.dtype == torch.float32 and i.dtype == torch.int64 and s.shape == (n, k)
    torch.testing.assert_close(s.cpu(), rs, atol=2e-6, rtol=0)
    # indices must agree wherever the reference score is not (nearly) tied with a neighbour
    gap = torch.ones_like(rs, dtype=torch.bool)
    gap[:, 1:] &= (rs[:, 1:] - rs[:, :-1]).abs() > 1e-5
    gap[:, :-1] &= (rs[:, :-1] - rs[:, 1:]).abs() > 1e-5
    assert torch.equal(i.cpu()[gap], ri[gap])


def test_cosine_topk_cuda_ties_lower_index_first():
    ext = _ext()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 24, generator=g).repeat(300, 1)  # exact ties across tiles and splits
    q = torch.randn(9, 24, generator=g)
    s, i = ext.cosine_topk_cuda(q.cuda(), x.cuda(), 20)
    rs, ri = cosine_topk_ref(q, x, 20)
    assert torch.equal(i.cpu(), ri)


@pytest.mark.parametrize("mode", ["interp", "proj", "comp", "shift"])
@pytest.mark.parametrize("dims", [(5, 77), (3, 4, 20), (40, 1100)])
def test_lda_project_interp_cuda_matches_reference(mode, dims):
    ext = _ext()
    g = torch.Generator().manual_seed(sum(dims))
    s, t = torch.randn(*dims, generator=g), torch.randn(*dims, generator=g)
    W = orthonormal_torch(dims[-1], 3, g)
    for lam in (0.3, torch.rand(dims[0], generator=g)):
        lam_dev = lam.cuda() if isinstance(lam, torch.Tensor) else lam
        out = ext.lda_project_interp_cuda(s.cuda(), t.cuda(), W.cuda(), lam_dev, mode)
        want = lda_project_interp_ref(s, t, W, lam, mode)
        torch.testing.assert_close(out.cpu(), want, atol=1e-5, rtol=1e-5)


def test_cuda_bindings_reject_bad_input():
    ext = _ext()
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        ext.cosine_topk_cuda(torch.zeros(2, 4), torch.zeros(3, 4), 1)
    with pytest.raises(ValueError, match="k must be <= number of keys"):
        ext.cosine_topk_cuda(torch.zeros(2, 4).cuda(), torch.zeros(3, 4).cuda(), 4)
    with pytest.raises(ValueError, match="k must be <= 128"):
        ext.cosine_topk_cuda(torch.zeros(2, 4).cuda(), torch.zeros(300, 4).cuda(), 129)
    with pytest.raises(ValueError, match="mode must be one of"):
        ext.lda_project_interp_cuda(torch.zeros(2, 4).cuda(), torch.zeros(2, 4).cuda(), None, 0.5, "bogus")
