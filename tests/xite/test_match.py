"""xite_fast.xite.match: the one matcher vs a float64 numpy reference (centering rule, ties, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from xite_fast.encode.store import embedding_mean
from xite_fast.xite.match import center_rows, match_arrays


def _ref(q, k, top, center):
    q, k = q.astype(np.float64), k.astype(np.float64)
    if center:
        q, k = q - q.mean(0), k - k.mean(0)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    s = q @ k.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(5, 123, 77), (3, 4, 1), (40, 9, 3)])
def test_match_arrays_vs_reference(center, shape):
    n, m, d = shape
    rng = np.random.default_rng(n * 1000 + m + d)
    q = (rng.standard_normal((n, d)) + 2.0).astype(np.float32)  # offset cone: centering matters
    keys = (rng.standard_normal((m, d)) - 1.0).astype(np.float32)
    top = min(3, m)
    s, i = match_arrays(q, keys, top, center=center)
    rs, ri = _ref(q, keys, top, center)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (n, top)
    np.testing.assert_allclose(s, rs, atol=2e-5)
    np.testing.assert_array_equal(i, ri)


def test_mean_is_shard_independent():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70001, 4)).astype(np.float32) + 100.0
    m = embedding_mean(x)
    np.testing.assert_allclose(m, x.astype(np.float64).mean(0), rtol=1e-7)
    np.testing.assert_array_equal(center_rows(x[:3], m), x[:3] - m[None, :])


def test_given_means_are_used():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((8, 5)).astype(np.float32)
    k = rng.standard_normal((20, 5)).astype(np.float32)
    qm, km = np.full(5, 0.3, np.float32), np.full(5, -0.2, np.float32)
    s, i = match_arrays(q, k, 2, query_mean=qm, key_mean=km)
    s2, i2 = match_arrays(q - qm, k - km, 2, center=False)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_allclose(s, s2, atol=1e-6)


def test_errors_name_the_argument():
    q = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="k must be <= the number of key rows"):
        match_arrays(q, np.ones((2, 3), np.float32), 3)
    with pytest.raises(ValueError, match="same dimension"):
        match_arrays(q, np.ones((4, 2), np.float32), 1)
    with pytest.raises(ValueError, match="queries"):
        match_arrays(np.zeros(3, np.float32), np.ones((4, 3), np.float32), 1)
    with pytest.raises(ValueError, match="keys"):
        match_arrays(q, np.array([[np.nan, 0, 0]], np.float32), 1)
