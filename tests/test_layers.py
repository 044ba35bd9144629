"""Imports go down the layers of ``xite_fast._layers.LAYERS`` only, and never into another subpackage's
private names.

Every module of the installed package is read with ``ast``: module-level, function-level (lazy) and
``TYPE_CHECKING`` imports, relative imports, ``importlib.import_module("...")`` with a literal name, and
``module._name`` attribute access on an imported module. A failure lists every violation as
``path:line``.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import xite_fast
from xite_fast._layers import LAYERS, SHARED_PRIVATE

PKG = Path(xite_fast.__file__).resolve().parent
ROOT = PKG.name  # "xite_fast"
# experiment/ is being moved out of the installed package (issue 20); drop this once it is gone
EXCLUDED = {"experiment"}
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _component(module: str) -> str:
    """The LAYERS entry of a dotted module name inside the package (``xite_fast`` itself: ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(dotted: str, pkg: Path = PKG) -> bool:
    parts = dotted.split(".")
    if parts[0] != ROOT:
        return False
    base = pkg.joinpath(*parts[1:]) if len(parts) > 1 else pkg
    if base.is_dir() and (base / "__init__.py").is_file():
        return True
    return (
        base.with_suffix(".py").is_file()
        or base.with_suffix(".pyi").is_file()
        or any(base.parent.glob(f"{base.name}.*.so"))
    )


def _module_name(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg).with_suffix("")
    parts = [ROOT, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _flatten(node: ast.AST) -> list[str] | None:
    """``a.b.c`` (Attribute chain over a Name) -> ["a", "b", "c"]; None for anything else."""
    out = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(out)]


def imports_of(source: str, importer: str, is_package: bool = False, pkg: Path = PKG):
    """Yield ``(line, target module, name or None)`` for every import / private access in ``source``.

    ``name`` is the imported (or accessed) attribute of ``target``; None when a whole module is imported.
    """
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # local name -> package module it refers to (file-wide, not scope-aware)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
                if a.asname:
                    bound[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    bound[top] = top
        elif isinstance(node, ast.ImportFrom):
            mod = (
                _resolve_relative(importer, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if a.name != "*" and _is_module(sub, pkg):
                    yield node.lineno, sub, None
                    bound[a.asname or a.name] = sub
                else:
                    yield node.lineno, mod, a.name
        elif isinstance(node, ast.Call):
            fn = _flatten(node.func)
            if (
                fn in (["importlib", "import_module"], ["import_module"], ["__import__"])
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                yield node.lineno, node.args[0].value, None
    for node in ast.walk(tree):  # private attributes of imported modules: ``corpus._shards`` etc.
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain = _flatten(node)
            if chain is None or chain[0] not in bound:
                continue
            dotted = ".".join([bound[chain[0]], *chain[1:-1]])
            if _is_module(dotted, pkg):
                yield node.lineno, dotted, node.attr


def violations_of(
    source: str, importer: str, is_package: bool = False, pkg: Path = PKG
) -> list[tuple[int, str]]:
    """``(line, message)`` for each import in ``source`` (module ``importer``) that breaks the rules."""
    out = []
    here = _component(importer)
    for line, target, name in imports_of(source, importer, is_package, pkg):
        if target != ROOT and not target.startswith(ROOT + "."):
            continue  # outside the package
        comp = _component(target)
        if comp in EXCLUDED:
            continue
        what = f"{target}.{name}" if name else target
        if comp not in LAYER_OF:
            out.append((line, f"imports {what}: {comp!r} is in no layer of xite_fast._layers.LAYERS"))
            continue
        if LAYER_OF[comp] > LAYER_OF[here]:
            out.append((line, f"imports {what}: layer {comp!r} is above {here!r}"))
        if comp == here:
            continue  # private names are fine inside one subpackage
        private_mods = [p for p in target.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
        if private_mods and not (private_mods == [comp] and comp in SHARED_PRIVATE):
            out.append((line, f"imports {what}: private module of another subpackage"))
        elif name and name.startswith("_") and not name.startswith("__"):
            out.append((line, f"imports {what}: private name of another subpackage"))
    return out


def package_modules() -> list[Path]:
    return sorted(
        p
        for p in PKG.rglob("*.py")
        if p.relative_to(PKG).parts[0] not in EXCLUDED and "__pycache__" not in p.parts
    )


def test_imports_follow_the_layers():
    found = []
    for path in package_modules():
        importer = _module_name(path)
        if _component(importer) not in LAYER_OF:
            found.append(
                f"{path.relative_to(PKG.parent)}:1: {_component(importer)!r} is in no layer of LAYERS"
            )
            continue
        src = path.read_text(encoding="utf-8")
        for line, msg in sorted(violations_of(src, importer, path.name == "__init__.py")):
            found.append(f"{path.relative_to(PKG.parent)}:{line}: {msg}")
    print("\n".join(found))
    assert not found, f"{len(found)} import(s) break the layers of xite_fast._layers:\n" + "\n".join(found)


def test_every_top_level_module_has_a_layer():
    names = {p.stem for p in PKG.glob("*.py")} | {
        p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    }
    missing = sorted(names - set(LAYER_OF) - EXCLUDED)
    assert not missing, f"add these to xite_fast._layers.LAYERS: {missing}"
    assert len(LAYER_OF) == sum(len(names) for names in LAYERS), "a name appears in two layers"


# ------------------------------------------------------------------ the checker itself
@pytest.fixture
def fake_pkg(tmp_path):
    """A package tree with the layer names, so imports resolve to modules or to names."""
    pkg = tmp_path / ROOT
    for d in ("encode", "xite", "ops", "train", "objectives"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    for f in (
        "_io.py",
        "__init__.py",
        "encode/ray.py",
        "encode/store.py",
        "xite/match.py",
        "ops/_impl.py",
        "train/model.py",
        "objectives/ear.py",
    ):
        (pkg / f).write_text("")
    return pkg


@pytest.mark.parametrize(
    "src, importer, want",
    [
        ("from xite_fast.xite.match import embedding_sum", "xite_fast.encode.store", "layer 'xite' is above"),
        ("def f():\n    from xite_fast.xite import match", "xite_fast.encode.store", "layer 'xite' is above"),
        ("def f():\n    from ..xite.match import x", "xite_fast.encode.store", "layer 'xite' is above"),
        ("import xite_fast.train.model as m", "xite_fast.objectives.ear", "layer 'train' is above"),
        ("import importlib\nimportlib.import_module('xite_fast.train.model')", "xite_fast.ops.x", "above"),
        ("from xite_fast import LanguageLDA", "xite_fast.train.model", "layer '__init__' is above"),
        ("from xite_fast.encode.ray import _ensure_ray", "xite_fast.xite.match", "private name"),
        ("from xite_fast.encode import ray\nray._ensure_ray()", "xite_fast.xite.match", "private name"),
        ("import xite_fast.encode.ray\nxite_fast.encode.ray._x()", "xite_fast.xite.match", "private name"),
        ("from xite_fast.ops._impl import f", "xite_fast.xite.match", "private module"),
        ("from xite_fast._io import _CHUNK", "xite_fast.encode.store", "private name"),
        ("from xite_fast.nope import f", "xite_fast.encode.store", "in no layer"),
    ],
)
def test_checker_finds(fake_pkg, src, importer, want):
    got = violations_of(textwrap.dedent(src), importer, pkg=fake_pkg)
    assert any(want in msg for _, msg in got), got


@pytest.mark.parametrize(
    "src, importer",
    [
        ("from xite_fast._io import sha256_file", "xite_fast.encode.store"),
        ("import xite_fast._io as io\nio.sha256_file('x')", "xite_fast.train.model"),
        ("from xite_fast.encode.store import _texts_sha256", "xite_fast.encode.ray"),  # same subpackage
        ("from . import store\nstore._x", "xite_fast.encode.ray"),
        ("from xite_fast.xite.match import match_arrays", "xite_fast.train.model"),
        ("import numpy as np\nnp._x", "xite_fast.encode.store"),
        ("from xite_fast import __version__", "xite_fast.__main__"),
    ],
)
def test_checker_allows(fake_pkg, src, importer):
    assert violations_of(textwrap.dedent(src), importer, pkg=fake_pkg) == []
