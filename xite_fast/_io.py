"""Plumbing shared by the whole package: atomic writes, streamed sha256, locks, atomic folder builds and the
cache root (quieting third-party loggers is :mod:`xite_fast.logging`'s).

* Every file is written to a hidden temporary name in its final directory (``.NAME.tmp-PID``), flushed,
  fsynced and renamed, so a reader sees either the old or the whole new file, never a prefix. A failed
  write (disk full, ...) removes its temporary file; temporaries of a killed process are removed by
  :func:`remove_stale_temps` at the start of the next run.
* :func:`sha256_file` streams (``cached=True`` memoises by path, size, mtime and inode, for model weights
  hashed on every load); :func:`atomic_write` hashes the bytes while writing them, so no file is read back
  just to fingerprint it.
* :func:`exclusive_lock` is a ``filelock`` lock, the OS drops the lock of a killed process: non-blocking
  for a run directory (a second writer gets a clear error at once), blocking for a cache entry (a second
  builder waits, then finds it built).
* :func:`atomic_build` (a cache folder) and :func:`cached_file` (a cache file) make a cache entry once:
  built under a temporary name, hashes recorded (in the folder's ``xite_fast.json`` / the file's
  ``.json``), renamed into place under a lock, verified before every reuse.
* :func:`cache_root`: ``$XITE_FAST_CACHE``, else ``$XDG_CACHE_HOME/xite_fast``, else ``~/.cache/xite_fast``.
* :func:`fault_point`: test hook (env ``XITE_FAST_TEST_KILL_AT``) that SIGKILLs the process at a named
  point, used by the fault-injection tests.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import re
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "DiskFullError",
    "atomic_build",
    "cached_file",
    "is_built",
    "BUILD_RECORD",
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
    "cache_root",
    "prepare_dir",
    "check_owned_dir",
    "digest_of",
    "with_digest",
    "bare_name",
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


def sha256_file(path: str | os.PathLike, *, cached: bool = False) -> str:
    """sha256 hex of a file's content, streamed. ``cached``: memoised per process by resolved path, size,
    mtime and inode (for model files hashed on every load; run files are always read again)."""
    if cached:
        st = os.stat(path)
        return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int, ino: int) -> str:
    return sha256_file(path)


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
def exclusive_lock(lock_path: str | os.PathLike, what: str = "", *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (its folder is created); the OS releases it when the holder
    dies, even by SIGKILL.

    Args:
        lock_path: the lock file.
        what: what the lock guards, for the error message.
        wait: block until the lock is free; default: RuntimeError at once if another process holds it.
    """
    from filelock import FileLock, Timeout

    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=-1 if wait else 0, is_singleton=False)
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


# ----------------------------------------------------------------------------- cache folders


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache folder (not created): argument > $XITE_FAST_CACHE > $XDG_CACHE_HOME > ~/.cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("XITE_FAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "xite_fast"


BUILD_RECORD = "xite_fast.json"  # a built folder's record: the build's facts and its files' sha256


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: sha256_file(p, cached=True)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != BUILD_RECORD
    }


def _verify_built(folder: Path) -> str | None:
    """None when every file of a built folder matches the sha256 recorded when it was built, else why not."""
    try:
        recorded = json.loads((folder / BUILD_RECORD).read_text()).get("files")
    except (OSError, ValueError):
        return f"its {BUILD_RECORD} is unreadable"
    if not isinstance(recorded, dict) or not recorded:
        return "no file hashes were recorded when it was built (older cache)"
    for name, digest in recorded.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if sha256_file(p, cached=True) != digest:
            return f"{name} differs from the sha256 recorded when it was built"
    return None


def is_built(folder: str | os.PathLike, *, verify: bool = True) -> bool:
    """True when ``folder`` was completed by :func:`atomic_build` (and, with ``verify``, its files match
    their record)."""
    folder = Path(folder)
    return (folder / BUILD_RECORD).is_file() and (not verify or _verify_built(folder) is None)


def _build_once(final: Path, state: Callable[[], str | None], make: Callable[[], None], what: str) -> Path:
    """The protocol of every cache entry. ``state()``: None when ``final`` is intact, ``""`` when it was
    never built, else why it failed verification. When not intact: under a blocking lock beside ``final``,
    look again (another process may have built it meanwhile), warn if a recorded entry failed
    verification, and ``make()`` it."""
    if state() is None:
        return final
    with exclusive_lock(final.parent / f".{final.name}.lock", what, wait=True):
        why = state()
        if why is None:
            return final
        if why:
            warnings.warn(f"{what} {final} failed verification ({why}); building it again", stacklevel=4)
        make()
    return final


def atomic_build(
    final: str | os.PathLike, build: Callable[[Path], None], meta: dict, *, what: str = "cache folder"
) -> Path:
    """Make the folder ``final`` once: ``build(tmp)`` writes it under a temporary name, the sha256 of its
    files go into ``tmp/xite_fast.json`` with ``meta`` and the build time, and ``tmp`` is renamed to
    ``final``. A no-op when ``final`` is complete and its files match their record; re-made with a
    warning when they do not (see :func:`_build_once`).
    """
    final = Path(final)

    def state() -> str | None:
        return _verify_built(final) if (final / BUILD_RECORD).is_file() else ""

    def make() -> None:
        # this module's .NAME.tmp-PID, and the .tmp-NAME-PID-UUID of older versions
        name = re.escape(final.name)
        _remove_stale_tmps(final.parent, rf"\.{name}{re.escape(TMP_MARK)}\d+", rf"\.tmp-{name}-\d+-.*")
        tmp = tmp_path(final)
        try:
            t0 = time.perf_counter()
            build(tmp)
            rec = {
                **meta,
                "conversion_seconds": round(time.perf_counter() - t0, 2),
                "files": _folder_hashes(tmp),
            }
            (tmp / BUILD_RECORD).write_text(json.dumps(rec, indent=1))
            if final.exists():  # leftover without the completion marker (older layout): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    return _build_once(final, state, make, what)


def _file_state(path: Path, record: Path, meta: dict, companions: tuple[str, ...]) -> str | None:
    """None when ``path`` (and its ``companions``) match its record, else why not ('' = never built)."""
    if not path.is_file() and not record.is_file():
        return ""
    if not path.is_file():
        return "the file is missing"
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return "its record is missing or unreadable"
    if {k: rec.get(k) for k in meta} != meta:
        return "its record belongs to other inputs"
    for suffix, key in [("", None), *((c, c) for c in companions)]:
        f = path.with_suffix(suffix) if suffix else path
        want = rec if key is None else (rec.get("companions") or {}).get(key) or {}
        if not f.is_file():
            return f"{f.name} is missing"
        if want.get("bytes") != f.stat().st_size:
            return f"{f.name}: size {f.stat().st_size} != recorded {want.get('bytes')}"
        if want.get("sha256") != sha256_file(f, cached=True):
            return f"{f.name}: sha256 differs from the one recorded when it was written"
    return None


def cached_file(
    path: str | os.PathLike,
    build: Callable[[Path], None],
    meta: dict,
    *,
    companions: tuple[str, ...] = (),
    what: str = "cached file",
) -> Path:
    """Return ``path`` after checking it against its ``.json`` record; (re)build it when missing or corrupt.

    The file twin of :func:`atomic_build` (same protocol, :func:`_build_once`): the record sits beside
    the file (``path.with_suffix(".json")``: ``meta`` + ``sha256`` + ``bytes`` [+ ``companions``]).

    Args:
        path: the cached file.
        build: ``build(tmp)`` writes the file to ``tmp`` (renamed to ``path`` afterwards; ``tmp`` keeps
            ``path``'s suffix, so tools that name companion files after it work).
        meta: JSON-able facts the file was made from, stored in the record and compared on reuse.
        companions: suffixes of files written beside it (``build`` writes ``tmp.with_suffix(s)``), e.g.
            ``(".bin",)`` for an OpenVINO IR ``.xml``; each is renamed, hashed and verified with it.
        what: what the file is, for the warning.
    """
    path = Path(path)
    record = path.with_suffix(".json")
    names = (path.name, record.name, *(path.with_suffix(c).name for c in companions))

    def make() -> None:
        for p in (path, record, *(path.with_suffix(c) for c in companions)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        _remove_stale_tmps(path.parent, *(rf"\.tmp-\d+-{re.escape(n)}" for n in names))
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmps = [tmp, *(tmp.with_suffix(c) for c in companions)]
        try:
            build(tmp)
            rec = {**meta, "sha256": sha256_file(tmp, cached=True), "bytes": tmp.stat().st_size}
            if companions:
                rec["companions"] = {
                    c: {"sha256": sha256_file(t, cached=True), "bytes": t.stat().st_size}
                    for c, t in zip(companions, tmps[1:], strict=True)
                }
            for c, t in zip(companions, tmps[1:], strict=True):
                os.replace(t, path.with_suffix(c))
            os.replace(tmp, path)
            tmp_rec = record.with_name(f".tmp-{os.getpid()}-{record.name}")
            tmp_rec.write_text(json.dumps(rec, indent=1))
            os.replace(tmp_rec, record)
        finally:
            for t in tmps:
                with contextlib.suppress(FileNotFoundError):
                    t.unlink()

    return _build_once(path, lambda: _file_state(path, record, meta, companions), make, what)


def _remove_stale_tmps(folder: Path, *patterns: str) -> None:
    """Delete the temporaries (files or folders) a killed build left in ``folder``: names that fully match
    one of the regular expressions ``patterns`` (each with the writer's PID as ``\\d+``, so another
    entry whose name extends this one's is left alone). Call holding the entry's lock: no live writer of
    the entry has a temporary then."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if any(re.fullmatch(pat, p.name) for pat in patterns):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


# ----------------------------------------------------------------------------- owned directories, digests


def prepare_dir(path: str | os.PathLike, what: str = "out") -> Path:
    """Check that ``path`` can be a directory we write in, then create it (with its parents).

    ValueError naming ``what`` and the path when it is a file, lies under a file, or is a symlink to
    nothing; the ``OSError`` of a read-only or forbidden location is re-raised with a message naming
    the path and how to recover (``errno`` kept).
    """
    p = Path(path).expanduser()
    if p.is_symlink() and not p.exists():
        raise ValueError(
            f"{what} {str(p)!r} is a symbolic link to {os.readlink(p)!r}, which does not exist; "
            "remove the link or pass another directory"
        )
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} must be a directory, but {str(p)!r} is a file; pass a new directory path")
    for parent in p.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(
                    f"{what} {str(p)!r} cannot be created: {str(parent)!r} is a file, not a directory; "
                    "pass a path under a directory"
                )
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_disk_full(exc, p)
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise type(exc)(
            exc.errno, f"cannot create {what} directory {str(p)!r}: {reason}; pass a writable location"
        ) from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES,
            f"cannot write in {what} directory {str(p)!r} (read-only or no permission); "
            "pass a writable location",
        )
    return p


def check_owned_dir(
    path: Path, what: str, is_ours: Callable[[Path], bool], ignore: Callable[[str], bool]
) -> bool:
    """Refuse to write in someone else's non-empty directory. Returns True when ``path`` is ours
    (``is_ours(path)``), False when it is missing or holds only names ``ignore(name)`` accepts (our
    lock and temporary files); ValueError naming the directory and a few of its entries otherwise."""
    if not path.is_dir():
        return False
    if is_ours(path):
        return True
    foreign = sorted(e.name for e in path.iterdir() if not ignore(e.name))
    if not foreign:
        return False
    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
    raise ValueError(
        f"{what} {str(path)!r} is not empty and was not made by xite_fast (it holds {shown}); nothing was "
        "written there: pass a new or empty directory"
    )


def digest_of(record: dict, key: str = "digest") -> str:
    """sha256 of a JSON record without its own ``key``: covers every field that drives results (a store's
    mean, a part's label counts), so an edit is detected."""
    return hashlib.sha256(json_bytes({k: v for k, v in record.items() if k != key})).hexdigest()


def with_digest(record: dict, key: str = "digest") -> dict:
    """``record`` plus its :func:`digest_of` under ``key``."""
    return {**{k: v for k, v in record.items() if k != key}, key: digest_of(record, key)}


def bare_name(name: Any, pattern: str, what: str, example: str) -> str:
    """``name`` if it is a plain file name fully matching the regular expression ``pattern`` (no folder,
    no ``..``, not absolute): every path a manifest names stays inside its directory. ValueError else."""
    if not isinstance(name, str) or not re.fullmatch(pattern, name) or Path(name).name != name:
        raise ValueError(
            f"{what} names the file {name!r}; expected a plain file name inside the directory "
            f"(like {example!r}): refusing a path that leaves it"
        )
    return name
