"""The one Ray connection and error helper, shared by the Ray encoder (:mod:`xite_fast.encode.ray`) and the
Ray matcher (:func:`xite_fast.xite.match.sharded_cosine_topk`).

Ray is optional (``pip install "xite_fast[ray]"`` or ``"ray[data]"``) and imported only when called.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

__all__ = ["RAY_HINT", "ensure_ray", "import_ray", "init_ray", "init_ray_for_run", "reraise_worker_error"]

RAY_HINT = 'Ray is not installed: pip install "xite_fast[ray]" (or "ray[data]")'


def import_ray():
    """The ``ray`` module with Ray Data; ImportError with the install hint when either is missing."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray core without the data extra is not enough)
    except ImportError as exc:
        raise ImportError(f"{RAY_HINT} ({exc})") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``ray://host:port`` -> (host, port); ValueError naming the address otherwise."""
    rest = address[len("ray://") :] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"ray address must be 'local', 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got {address!r}"
        )
    return host.strip("[]"), int(port)


def init_ray(address: str | None = "local", *, timeout_s: float = 30.0, num_cpus: int | None = None):
    """Connect to a Ray cluster (or start a local one) unless this process is already connected.

    Args:
        address: ``"local"`` / ``None`` (start a new local instance, ``num_cpus`` CPUs; the workers get
            this checkout on their ``PYTHONPATH``), ``"auto"`` (the cluster already running on this
            machine), ``"HOST:PORT"`` (GCS address of a cluster head) or ``"ray://HOST:PORT"`` (Ray
            client).
        timeout_s: how long to wait for the head's port to accept a TCP connection, and then for
            ``ray.init`` to connect, before giving up (``ray.init`` alone retries for minutes).
        num_cpus: CPUs of a local instance (default: all).

    Returns:
        The ``ray`` module, initialized.

    Raises:
        ImportError: Ray (with Ray Data) is not installed.
        ValueError: malformed ``address``.
        RuntimeError: the cluster cannot be reached.
    """
    if address is not None and not isinstance(address, str):
        raise ValueError(f"address must be a str or None, got {type(address).__name__}")
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if address not in (None, "local", "auto"):
        host, port = _host_port(address)  # validate before importing anything
    ray = import_ray()
    if ray.is_initialized():
        return ray  # reuse the connection (e.g. a test fixture's local instance or an earlier call)
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in (None, "local"):
        # workers must import xite_fast: put this checkout first on their path (an installed package
        # is found either way)
        root = str(Path(__file__).resolve().parents[1])  # the folder holding xite_fast/
        pp = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address="local", num_cpus=num_cpus, runtime_env={"env_vars": {"PYTHONPATH": pp}}, **kw)
        return ray
    if address != "auto":
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as exc:
            raise RuntimeError(
                f"cannot reach the Ray cluster at {address!r} within {timeout_s:g} s ({exc}); "
                "start it with `ray start --head` or check the address"
            ) from None
    # ray.init retries for minutes when something listens on the port but no GCS answers: connect in a
    # daemon thread and give up after timeout_s (the thread cannot be cancelled; it dies with the process)
    outcome: dict[str, BaseException | bool] = {}

    def connect() -> None:
        try:
            ray.init(address=address, **kw)
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=connect, name="xite-fast-ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RuntimeError(
            f"the Ray cluster at {address!r} did not answer within {timeout_s:g} s "
            "(is it a Ray head's GCS port, default 6379?)"
        )
    if "error" in outcome:
        exc = outcome["error"]
        raise RuntimeError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return ray


def ensure_ray(address: str | None):
    """The ``ray`` module, connected: the current connection, else :func:`init_ray` of ``address``
    (``None``: a local instance)."""
    ray = import_ray()
    if not ray.is_initialized():
        init_ray(address if address is not None else "local")
    return ray


def reraise_worker_error(exc: BaseException) -> None:
    """Ray wraps a worker's exception (RayTaskError / UserCodeException); re-raise the user-facing
    ValueError / FileNotFoundError / ImportError with its own message, not a remote traceback."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        for c in (cause, e):
            if c is not None and type(c) in (ValueError, FileNotFoundError, ImportError):
                raise type(c)(*c.args) from None
        e = cause if isinstance(cause, BaseException) else e.__cause__
    raise exc


def init_ray_for_run(address: str) -> None:
    """:func:`init_ray` for an ``augment`` / ``encode`` run (``--ray ADDRESS``): errors start with ``ray:``,
    Ray Data's progress bars and info logs are off (the run has its own)."""
    try:
        ray = init_ray(address)
    except ValueError as exc:
        raise ValueError(f"ray: {exc}") from None
    except RuntimeError as exc:
        raise RuntimeError(f"ray: {exc}") from None
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
