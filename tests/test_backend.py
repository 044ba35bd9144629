"""Dispatch rules (STYLE rule 3) and the import guarantee (rule 4)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import xite_fast
from xite_fast._backend import Backend, resolve_backend


def test_import_without_extension_works():
    # A fresh interpreter where importing xite_fast._C fails must still import xite_fast and
    # fall back to the TORCH backend.
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'xite_fast._C': raise ImportError('blocked for test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import xite_fast\n"
        "from xite_fast._backend import resolve_backend\n"
        "avail = xite_fast.backends_available()\n"
        "assert avail['cpu'] is False and avail['torch'] is True, avail\n"
        "assert resolve_backend('cosine_topk', 'auto').value == 'torch'\n"
        "try:\n"
        "    resolve_backend('cosine_topk', 'cpu')\n"
        "except RuntimeError as e:\n"
        "    assert 'not built' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('explicit cpu backend without extension did not raise')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_backend_parse_rejects_unknown():
    with pytest.raises(ValueError, match=r"backend must be one of .*'cpu'.* got 'gpu9'"):
        Backend.parse("gpu9")


def test_unknown_op_falls_back_to_torch_on_auto():
    assert resolve_backend("no_such_op", "auto") is Backend.TORCH


def test_explicit_unavailable_backend_raises_naming_what_is_missing():
    with pytest.raises(RuntimeError, match="no_such_op"):
        resolve_backend("no_such_op", "cpu")
    if not xite_fast.backends_available()["cuda"]:
        with pytest.raises(RuntimeError, match="CUDA|cuda"):
            resolve_backend("cosine_topk", "cuda")


def test_env_override_applies_to_auto_only(monkeypatch):
    monkeypatch.setenv("XITE_FAST_BACKEND", "torch")
    assert resolve_backend("cosine_topk", "auto") is Backend.TORCH
    monkeypatch.setenv("XITE_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="XITE_FAST_BACKEND must be one of"):
        resolve_backend("cosine_topk", "auto")


def test_public_surface_is_explicit():
    assert "cosine_topk" in xite_fast.__all__ and "Backend" in xite_fast.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        xite_fast.nope  # noqa: B018
