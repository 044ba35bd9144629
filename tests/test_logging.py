"""xite_fast.logging: the default handler policy (like transformers'), verbosity setters, the
progress-bar rule."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xite_fast import logging as xf_logging

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    e.pop("XITE_FAST_VERBOSITY", None) if "XITE_FAST_VERBOSITY" not in env else None
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120, check=True
    )


def test_default_handler_prints_once_to_stderr_and_steps_aside_for_a_configured_root():
    code = (
        "import logging, xite_fast\n"
        "log = logging.getLogger('xite_fast')\n"
        "log.info('hidden info'); log.warning('a warning')\n"
        "xite_fast.logging.set_verbosity_info(); log.info('shown info')\n"
        "xite_fast.logging.get_logger('encode').info('child info')\n"
    )
    r = _py(code)
    assert r.stderr.splitlines() == [
        "[xite-fast] a warning",
        "[xite-fast] shown info",
        "[xite-fast] child info",
    ]
    # an application that configured logging gets each record once, in its own format
    r = _py(
        "import logging, xite_fast\nlogging.basicConfig(format='APP %(message)s')\n"
        "logging.getLogger('xite_fast').warning('w')"
    )
    assert r.stderr.splitlines() == ["APP w"]
    r = _py(
        "import logging, xite_fast\nlogging.getLogger('xite_fast').debug('d')", XITE_FAST_VERBOSITY="debug"
    )
    assert r.stderr.splitlines() == ["[xite-fast] d"]
    r = _py(
        "import logging, xite_fast\nxite_fast.logging.disable_default_handler()\n"
        "logging.getLogger('xite_fast').error('e')"
    )
    assert r.stderr.splitlines() == ["e"]  # Python's last-resort handler, nothing of ours


def test_verbosity_setters_and_levels():
    log = logging.getLogger("xite_fast")
    before = log.level
    try:
        for setter, level in (
            (xf_logging.set_verbosity_debug, logging.DEBUG),
            (xf_logging.set_verbosity_info, logging.INFO),
            (xf_logging.set_verbosity_warning, logging.WARNING),
            (xf_logging.set_verbosity_error, logging.ERROR),
        ):
            setter()
            assert xf_logging.get_verbosity() == level
        xf_logging.set_verbosity("info")
        assert xf_logging.get_verbosity() == xf_logging.INFO
        with pytest.raises(ValueError, match="level must be one of"):
            xf_logging.set_verbosity("loud")
        assert xf_logging.get_logger("x").name == "xite_fast.x" == xf_logging.get_logger("xite_fast.x").name
    finally:
        log.setLevel(before)


def test_progress_rule(monkeypatch):
    monkeypatch.setattr(xf_logging, "is_interactive", lambda: False)
    assert xf_logging.progress_enabled(True) and not xf_logging.progress_enabled(False)
    assert not xf_logging.progress_enabled(None)  # not a terminal, not a notebook
    monkeypatch.setattr(xf_logging, "is_interactive", lambda: True)
    assert xf_logging.progress_enabled(None)
    xf_logging.disable_progress_bar()
    try:
        assert not xf_logging.progress_enabled(None) and xf_logging.progress_enabled(True)
        assert not xf_logging.is_progress_bar_enabled()
    finally:
        xf_logging.enable_progress_bar()
    r = _py(
        "import xite_fast.logging as l; print(l.is_progress_bar_enabled(), l.is_interactive())",
        XITE_FAST_DISABLE_PROGRESS_BAR="1",
    )
    assert r.stdout.split() == ["False", "False"]


def test_cli_flags_go_through_the_library_logger(tmp_path):
    from xite_fast.cli.main import _setup_logging

    class Args:
        quiet, verbose = True, False

    log = logging.getLogger("xite_fast")
    state = (log.level, log.propagate)
    try:
        _setup_logging(Args)
        assert xf_logging.get_verbosity() == logging.WARNING and not log.propagate
        Args.quiet, Args.verbose = False, True
        _setup_logging(Args)
        assert xf_logging.get_verbosity() == logging.DEBUG
    finally:
        log.setLevel(state[0])
        xf_logging.enable_default_handler()
        log.propagate = state[1]
