"""Sharded cosine top-k (xite_fast.distributed) vs the single-search reference."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from xite_fast.distributed import plan_shards, sharded_cosine_topk
from xite_fast.reference import cosine_topk_ref


def _data(n=7, m=203, d=19, seed=0, dup=True):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, d)).astype(np.float32)
    x = rng.standard_normal((m, d)).astype(np.float32)
    if dup:
        x[150:160] = x[3]  # exact ties spread over shards: the lower index must win
    return q, x


def _check(q, x, s, i, k):
    rs, ri = cosine_topk_ref(torch.from_numpy(q), torch.from_numpy(x), k)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (q.shape[0], k)
    np.testing.assert_allclose(s, rs.numpy(), atol=1e-5, rtol=0)
    gap = np.ones(rs.shape, bool)
    r = rs.numpy()
    gap[:, 1:] &= np.abs(r[:, 1:] - r[:, :-1]) > 1e-5
    gap[:, :-1] &= np.abs(r[:, :-1] - r[:, 1:]) > 1e-5
    np.testing.assert_array_equal(i[gap], ri.numpy()[gap])


def test_plan_shards_cover_keys_once():
    for m, kw in [(10, {"num_shards": 3}), (10, {"shard_rows": 4}), (3, {"num_shards": 8}), (1, {})]:
        shards = plan_shards(m, **kw)
        assert shards[0][0] == 0 and shards[-1][1] == m
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:], strict=False))
        assert all(s < e for s, e in shards)
    with pytest.raises(ValueError, match="not both"):
        plan_shards(10, num_shards=2, shard_rows=3)


@pytest.mark.parametrize("k", [1, 8, 30])
@pytest.mark.parametrize("shard_kw", [{"num_shards": 1}, {"num_shards": 4}, {"shard_rows": 5}])
def test_local_executor_matches_reference(k, shard_kw):
    q, x = _data()
    s, i = sharded_cosine_topk(q, x, k, executor="local", **shard_kw)
    _check(q, x, s, i, k)


def test_exact_ties_across_shards():
    q, x = _data(n=3, m=60, d=8)
    x[:] = x[np.arange(60) % 6]  # every key repeated 10 times, across all shards
    s, i = sharded_cosine_topk(q, x, 12, executor="local", shard_rows=7)
    rs, ri = cosine_topk_ref(torch.from_numpy(q), torch.from_numpy(x), 12)
    np.testing.assert_array_equal(i, ri.numpy())


def test_npy_path_keys(tmp_path):
    q, x = _data(m=90)
    path = tmp_path / "keys.npy"
    np.save(path, x)
    s, i = sharded_cosine_topk(q, str(path), 5, executor="local", num_shards=3)
    _check(q, x, s, i, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be a positive int"),
        ({"k": 500}, "k must be <= the number of keys"),
        ({"k": 2, "executor": "spark"}, "executor must be"),
    ],
)
def test_errors(kwargs, match):
    q, x = _data()
    with pytest.raises(ValueError, match=match):
        sharded_cosine_topk(q, x, executor=kwargs.pop("executor", "local"), **kwargs)


def test_error_on_bad_inputs(tmp_path):
    q, x = _data()
    with pytest.raises(ValueError, match="same dimension D"):
        sharded_cosine_topk(q[:, :5], x, 2, executor="local")
    q[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sharded_cosine_topk(q, x, 2, executor="local")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a npy file")
    with pytest.raises(ValueError, match="cannot memory-map"):
        sharded_cosine_topk(np.nan_to_num(q), str(bad), 2, executor="local")


@pytest.mark.slow  # starting Ray takes ~30-40 s on 2 shared cores; ray is not in requirements-dev
def test_ray_data_two_workers(tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pp = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pp, "OMP_NUM_THREADS": "1"}},
    )
    try:
        q, x = _data(m=400)
        s, i = sharded_cosine_topk(q, x, 9, executor="ray", num_shards=4)
        _check(q, x, s, i, 9)
        path = tmp_path / "keys.npy"
        np.save(path, x)
        s2, i2 = sharded_cosine_topk(q, str(path), 9, executor="ray", shard_rows=64)
        np.testing.assert_array_equal(i2, i)
        np.testing.assert_allclose(s2, s, atol=1e-6, rtol=0)
    finally:
        ray.shutdown()
