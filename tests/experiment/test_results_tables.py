"""The committed results: every study's md tables regenerate from its long-format CSV alone, number for
number, and the results folder holds CSVs, the tables and plots generated from them, and logs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments.tables import CSV_FIELDS, _blocks, read_csv, regenerate, studies, study_tables

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
STUDIES = studies(RESULTS)


def test_there_are_studies():
    names = {p.stem for p in STUDIES}
    assert {"experiment_e5s12", "experiment_sentiment_zh", "transfer_sentiment"} <= names and len(names) >= 18


@pytest.mark.parametrize("csv_path", STUDIES, ids=[p.stem for p in STUDIES])
def test_md_tables_regenerate_from_the_csv(csv_path):
    assert csv_path.read_text(encoding="utf-8").splitlines()[0] == ",".join(CSV_FIELDS)
    md = csv_path.with_suffix(".md").read_text(encoding="utf-8")
    generated = study_tables(csv_path, md)
    lines = md.split("\n")
    committed = [lines[a:b] for a, b in _blocks(lines)][: len(generated)]
    assert generated == committed  # every number of every generated table, as committed
    assert regenerate(csv_path, check=True)
    rows = read_csv(csv_path)
    assert all(r["commit"] and r["cpu"] and r["date"] for r in rows)


def test_a_changed_number_is_caught(tmp_path):
    src = RESULTS / "experiment_sentiment_zh_top6"
    for suffix in (".csv", ".md"):
        (tmp_path / f"t{suffix}").write_text(
            src.with_suffix(suffix).read_text(encoding="utf-8"), encoding="utf-8"
        )
    csv_text = (tmp_path / "t.csv").read_text(encoding="utf-8").splitlines()
    i = next(i for i, line in enumerate(csv_text) if ",target_accuracy," in line)
    csv_text[i] = re.sub(r",target_accuracy,([0-9.]+),", ",target_accuracy,0.5,", csv_text[i])
    (tmp_path / "t.csv").write_text("\n".join(csv_text) + "\n", encoding="utf-8")
    assert not regenerate(tmp_path / "t.csv", check=True)
    assert regenerate(tmp_path / "t.csv", plots=False)  # rewrites the table, keeps the text around it
    md = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "| zh | zero-shot | 0 | 0.500 ± 0.000 |" in md and "## Reading (written by hand)" in md
    assert regenerate(tmp_path / "t.csv", check=True)


def test_results_layout():
    files = [p.name for p in RESULTS.iterdir() if p.is_file()]
    assert not [f for f in files if f.endswith((".log", ".jsonl", ".json", ".txt"))]  # logs under logs/
    assert all(p.suffix in (".log", ".txt", ".md") for p in (RESULTS / "logs").iterdir())


def test_every_linked_results_file_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "bench" / "README.md").read_text(
        encoding="utf-8"
    )
    linked = set(re.findall(r"(?:bench/)?results/((?:logs/)?[\w.\-]+\.(?:md|csv|png|log|txt))", text))
    missing = [f for f in sorted(linked) if not (RESULTS / f).exists()]
    assert not missing, missing
    named = set(re.findall(r"`((?:experiment|transfer)_[\w.\-]+\.(?:md|csv|png))`", text))
    assert not [f for f in sorted(named) if not (RESULTS / f).exists()]
