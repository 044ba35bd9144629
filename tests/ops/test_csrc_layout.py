"""csrc/ layout rules (ARCHITECTURE.md): one check header without pybind11, bindings apart, files a
reader can hold. Reads the sources only; nothing is compiled."""

from __future__ import annotations

import re
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = sorted(p for p in CSRC.rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".cuh"})
BINDINGS = {"bindings.h", "bindings.cpp", "bindings_cuda.cpp"}
MAX_LINES = 600


def test_sources_found():
    assert (CSRC / "check.h").is_file() and len(SOURCES) > 10


def test_pybind11_only_in_bindings():
    offenders = [
        str(p.relative_to(CSRC))
        for p in SOURCES
        if re.search(r"^\s*#\s*include\s*<pybind11/", p.read_text(), re.M)
        and not (p.name in BINDINGS or p.name.startswith("bindings_"))
    ]
    assert offenders == [], f"pybind11 included outside the bindings: {offenders}"


def test_one_check_macro():
    defs = [
        f"{p.relative_to(CSRC)}: {m.group(1)}"
        for p in SOURCES
        for m in re.finditer(r"^\s*#\s*define\s+(XITE_\w*CHECK\w*)\b", p.read_text(), re.M)
    ]
    assert defs == ["check.h: XITE_CHECK"], defs


def test_files_a_reader_can_hold():
    lines = {str(p.relative_to(CSRC)): len(p.read_text().splitlines()) for p in SOURCES}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert long == {}, f"split these (> {MAX_LINES} lines): {long}"
