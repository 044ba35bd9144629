"""xite_fast.encode.pooling: the torch and numpy pooling agree, and match a per-row reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xite_fast.encode.pooling import POOLING_MODES, pool, pool_numpy


def _ref(h: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    rows = []
    for x, m in zip(h.astype(np.float64), mask, strict=True):
        real = x[m.astype(bool)]
        rows.append(
            {
                "mean": real.mean(0),
                "cls": x[0],
                "max": real.max(0),
                "mean_sqrt_len_tokens": real.sum(0) / np.sqrt(len(real)),
                "lasttoken": real[-1],
            }[mode]
        )
    return np.stack(rows)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_torch_and_numpy_pool_alike(mode):
    rng = np.random.default_rng(0)
    h = rng.standard_normal((4, 7, 5)).astype(np.float32)
    lengths = [7, 1, 4, 6]
    mask = np.array([[1] * n + [0] * (7 - n) for n in lengths], dtype=np.int64)
    got_np = pool_numpy(h, mask, mode)
    got_t = pool(torch.from_numpy(h), torch.from_numpy(mask), mode).numpy()
    assert got_np.shape == got_t.shape == (4, 5) and got_np.dtype == got_t.dtype == np.float32
    np.testing.assert_allclose(got_np, _ref(h, mask, mode), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_t, got_np, rtol=1e-5, atol=1e-6)


def test_unknown_mode_names_the_modes():
    with pytest.raises(ValueError, match="mean/cls/max/mean_sqrt_len_tokens/lasttoken, got 'sum'"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "sum")
    with pytest.raises(ValueError, match="mean/cls/max/mean_sqrt_len_tokens/lasttoken, got 'sum'"):
        pool_numpy(np.zeros((1, 2, 3), np.float32), np.ones((1, 2)), "sum")
