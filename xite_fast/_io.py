"""File plumbing shared by every writer of a run directory: atomic writes, streamed sha256, locks.

* Every file is written to a hidden temporary name in its final directory (``.NAME.tmp-PID``), flushed,
  fsynced and renamed, so a reader sees either the old or the whole new file, never a prefix. A failed
  write (disk full, ...) removes its temporary file; temporaries of a killed process are removed by
  :func:`remove_stale_temps` at the start of the next run.
* :func:`sha256_file` streams; :func:`atomic_write` hashes the bytes while writing them, so no file is
  read back just to fingerprint it.
* :func:`exclusive_lock` is a non-blocking ``filelock`` lock: a second writer gets a clear error at
  once, and the OS drops the lock of a killed process.
* :func:`fault_point`: test hook (env ``XITE_FAST_TEST_KILL_AT``) that SIGKILLs the process at a named
  point, used by the fault-injection tests.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "DiskFullError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npy",
    "json_bytes",
    "sha256_file",
    "exclusive_lock",
    "remove_stale_temps",
    "fault_point",
    "TMP_MARK",
    "tmp_path",
    "file_matches",
    "read_json",
]

TMP_MARK = ".tmp-"
_CHUNK = 1 << 22


class DiskFullError(OSError):
    """No space left on the device while writing a run (ENOSPC); rerunning after freeing space resumes."""


def tmp_path(path: Path) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path`` (same directory, hidden)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


class _HashingFile(io.RawIOBase):
    """Write-only file object that hashes what goes through it (np.save / json writers use it)."""

    def __init__(self, fh: IO[bytes]):
        self.fh, self.h = fh, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        return self.fh.write(b)


def _raise_disk_full(exc: OSError, path: Path) -> None:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        raise DiskFullError(
            exc.errno,
            f"no space left on the device while writing {path}; free some space and rerun "
            "the same command: finished work is kept and the run resumes",
        ) from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[_HashingFile]:
    """Write ``path`` atomically through a hashing file object; its ``.h.hexdigest()`` is the sha256.

    ENOSPC becomes :class:`DiskFullError` naming the file; the temporary file is always removed.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            hf = _HashingFile(fh)
            yield hf
            fh.flush()
            os.fsync(fh.fileno())
        fault_point(f"tmp:{path.name}")
        os.replace(tmp, path)
    except OSError as exc:
        _raise_disk_full(exc, path)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256."""
    with atomic_write(path) as fh:
        fh.write(data)
    return fh.h.hexdigest()


def json_bytes(obj: Any) -> bytes:
    """The one JSON layout of run files (sorted keys, UTF-8, one space indent, trailing newline)."""
    return (json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> str:
    return atomic_write_bytes(path, json_bytes(obj))


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> str:
    """``np.save`` (no pickle) atomically, streamed through the hash; returns the file's sha256."""
    with atomic_write(path) as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return fh.h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_matches(path: str | os.PathLike, sha256: str | None) -> bool:
    """True when ``path`` is a file whose sha256 is ``sha256``."""
    p = Path(path)
    return bool(sha256) and p.is_file() and sha256_file(p) == sha256


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Parse a JSON file; ValueError naming the file (and what it is) when it is not valid JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{p}: the {what} is not valid JSON ({exc})") from None


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``lock_path`` (RuntimeError at once if another process
    holds it); the OS releases it when the holder dies, even by SIGKILL."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(
            f"{what} is in use by another running process (lock {lock_path}); wait for it to finish "
            "or use another directory"
        ) from None
    try:
        yield
    finally:
        lock.release()


def remove_stale_temps(root: str | os.PathLike) -> int:
    """Delete temporary files a killed writer left under ``root`` (call while holding its lock)."""
    n = 0
    for p in Path(root).rglob(f".*{TMP_MARK}*"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def fault_point(name: str, on_kill: Callable[[], None] | None = None) -> None:
    """Test hook: SIGKILL this process when env ``XITE_FAST_TEST_KILL_AT`` equals ``name`` (or, with
    ``XITE_FAST_TEST_PAUSE_AT``, wait there until the file it names exists). No-op otherwise."""
    pause = os.environ.get("XITE_FAST_TEST_PAUSE_AT")
    if pause and pause.split("=", 1)[0] == name:
        flag = Path(pause.split("=", 1)[1])
        flag.with_suffix(".reached").touch()
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if os.environ.get("XITE_FAST_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
