"""Logging and progress bars of ``xite_fast``, with a default policy like ``transformers.utils.logging``.

Every module logs to the ``"xite_fast"`` logger (or a child, :func:`get_logger`). By default that logger
takes the root logger's level (WARNING unless the application set another) and has one handler that
writes ``[xite-fast] message`` to the *current* ``sys.stderr`` (so a notebook shows it under the cell) -- only
while the application has not configured logging
itself: once the root logger has a handler (``logging.basicConfig``, pytest), records simply propagate
to it and nothing is printed twice. ``XITE_FAST_VERBOSITY=debug|info|warning|error|critical`` sets the
starting level.

Progress bars (``tqdm.auto``: a widget in a notebook with ipywidgets, text otherwise) are drawn by the
long calls (``Encoder.encode``, ``encode_corpus``, ``run_augment``) when their ``show_progress_bar`` /
``progress`` argument is True, or None (the default) and the caller is interactive: stderr is a
terminal or the code runs in a Jupyter / IPython kernel. :func:`disable_progress_bar` turns the default
off everywhere (also ``XITE_FAST_DISABLE_PROGRESS_BAR=1``).

    import xite_fast
    xite_fast.logging.set_verbosity_info()   # stage messages of run_augment / encode_corpus
"""

from __future__ import annotations

import contextlib
import logging as _logging
import os
import sys
from collections.abc import Iterator

__all__ = [
    "get_logger",
    "get_verbosity",
    "set_verbosity",
    "set_verbosity_debug",
    "set_verbosity_info",
    "set_verbosity_warning",
    "set_verbosity_error",
    "enable_default_handler",
    "disable_default_handler",
    "enable_progress_bar",
    "disable_progress_bar",
    "is_progress_bar_enabled",
    "is_interactive",
    "progress_enabled",
    "quiet_logger",
    "quiet_transformers",
    "DEBUG",
    "INFO",
    "WARNING",
    "ERROR",
    "CRITICAL",
]

DEBUG, INFO, WARNING, ERROR, CRITICAL = (
    _logging.DEBUG,
    _logging.INFO,
    _logging.WARNING,
    _logging.ERROR,
    _logging.CRITICAL,
)
LIBRARY = "xite_fast"
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}
_FORMAT = "[xite-fast] %(message)s"


class _StderrHandler(_logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (a notebook's, pytest's capture, the CLI's).

    ``always=False`` (the library default): silent while the root logger has handlers, so an application
    that configured logging gets each record once, through propagation. The CLI sets ``always=True``
    (and stops propagation): its messages go to stderr whatever else is configured.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.always = False
        self.setFormatter(_logging.Formatter(_FORMAT))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass

    def emit(self, record: _logging.LogRecord) -> None:
        if not self.always and _logging.getLogger().handlers:
            return
        super().emit(record)


_handler: _StderrHandler | None = None
_progress_default = os.environ.get("XITE_FAST_DISABLE_PROGRESS_BAR", "").strip().lower() not in (
    "1",
    "true",
    "yes",
)


def _root() -> _logging.Logger:
    """The library logger, configured once: the default handler and the starting level."""
    global _handler
    log = _logging.getLogger(LIBRARY)
    if _handler is None:
        _handler = _StderrHandler()
        log.addHandler(_handler)
        env = os.environ.get("XITE_FAST_VERBOSITY", "").strip().lower()
        if env and env not in _LEVELS:
            log.warning("XITE_FAST_VERBOSITY=%r is not one of %s; using warning", env, sorted(_LEVELS))
        if env in _LEVELS and log.level == _logging.NOTSET:
            log.setLevel(_LEVELS[env])  # else the root logger's level decides (WARNING unless configured)
    return log


def get_logger(name: str | None = None) -> _logging.Logger:
    """The ``xite_fast`` logger, or its child ``name`` (``"xite_fast.x"`` or ``"x"``)."""
    root = _root()
    if name is None or name == LIBRARY:
        return root
    return _logging.getLogger(name if name.startswith(LIBRARY + ".") else f"{LIBRARY}.{name}")


def get_verbosity() -> int:
    """The level of the ``xite_fast`` logger (``xite_fast.logging.INFO`` ...)."""
    return _root().getEffectiveLevel()


def set_verbosity(level: int | str) -> None:
    """Set the level of the ``xite_fast`` logger: an int or ``"debug"`` / ``"info"`` / ``"warning"`` / ..."""
    if isinstance(level, str):
        if level.lower() not in _LEVELS:
            raise ValueError(f"level must be one of {sorted(_LEVELS)} or an int, got {level!r}")
        level = _LEVELS[level.lower()]
    if isinstance(level, bool) or not isinstance(level, int):
        raise ValueError(f"level must be one of {sorted(_LEVELS)} or an int, got {level!r}")
    _root().setLevel(level)


def set_verbosity_debug() -> None:
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    set_verbosity(ERROR)


def enable_default_handler(*, always: bool = False) -> None:
    """(Re)attach the default stderr handler. ``always=True``: print even when the root logger has
    handlers, and stop propagation (the CLI's setting: each message once, on stderr)."""
    log = _root()
    if _handler not in log.handlers:
        log.addHandler(_handler)
    _handler.always = always
    log.propagate = not always


def disable_default_handler() -> None:
    """Detach the default handler (records still propagate to the root logger)."""
    log = _root()
    if _handler in log.handlers:
        log.removeHandler(_handler)
    log.propagate = True


def enable_progress_bar() -> None:
    """Draw progress bars by default (``show_progress_bar=None``) when the caller is interactive."""
    global _progress_default
    _progress_default = True


def disable_progress_bar() -> None:
    """No progress bar unless a call asks for one (``show_progress_bar=True``)."""
    global _progress_default
    _progress_default = False


def is_progress_bar_enabled() -> bool:
    return _progress_default


def is_interactive() -> bool:
    """stderr is a terminal, or this runs in a Jupyter / IPython kernel (a notebook, VS Code, Colab)."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    if shell is None:
        return False
    return type(shell).__name__ == "ZMQInteractiveShell" or "IPKernelApp" in getattr(shell, "config", {})


def progress_enabled(show_progress_bar: bool | None) -> bool:
    """The one rule of every bar: an explicit True/False wins; None draws one when progress bars are
    enabled (:func:`disable_progress_bar`) and the caller is interactive (:func:`is_interactive`)."""
    if show_progress_bar is not None:
        return bool(show_progress_bar)
    return _progress_default and is_interactive()


_root()  # the default handler is in place from `import xite_fast` on


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Temporarily raise logger ``name`` (``"root"`` = the root logger) to ERROR."""
    logger = _logging.getLogger(None if name == "root" else name)
    level = logger.level
    logger.setLevel(_logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Temporarily silence transformers' load reports and progress bars (restored on exit)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
