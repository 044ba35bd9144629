"""The research drivers stay out of the installed package: the wheel ships xite_fast only, and the package
reaches experiments/ only through `xite-fast experiment`, from a checkout."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_only_the_package():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.findall(r"^wheel\.packages\s*=\s*(.+)$", text, re.M) == ['["xite_fast"]']
    assert not (ROOT / "xite_fast" / "experiment").exists()


def test_the_package_imports_experiments_only_from_the_cli():
    users = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "xite_fast").rglob("*.py")
        if re.search(r"^\s*(from|import) experiments\b", p.read_text(encoding="utf-8"), re.M)
    )
    assert users == ["xite_fast/cli/main.py"]


def test_experiments_run_as_modules_of_the_checkout():
    for name in ("driver", "transfer", "tables", "lda_shift"):
        text = (ROOT / "experiments" / f"{name}.py").read_text(encoding="utf-8")
        assert 'if __name__ == "__main__":' in text, name
    assert "python -m experiments.driver" in (ROOT / "bench" / "run_experiment.sh").read_text(
        encoding="utf-8"
    ).replace('"$PY"', "python")
