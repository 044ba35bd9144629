"""Shared pytest configuration: skip markers driven by xite_fast.backends_available()."""

from __future__ import annotations

import pytest

import xite_fast

AVAILABLE = xite_fast.backends_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="needs triton (set TRITON_INTERPRET=1 on CPU)")
    for item in items:
        if "gpu" in item.keywords and not AVAILABLE["cuda"]:
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and not AVAILABLE["triton"]:
            item.add_marker(skip_triton)
