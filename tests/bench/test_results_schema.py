"""bench/: scripts named for what they measure, and one benchmark-results schema written by one helper
(bench/_common.append_results) for every op. Nothing here runs a benchmark."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from bench import _common as C

BENCH = Path(__file__).resolve().parents[2] / "bench"
OPS = ("augment_scale", "cosine_topk", "encode", "lda_project_interp", "sinkhorn")


def _fake_row() -> dict:
    return {
        "date": "2026-12-02T00:00:00Z",
        "shape": "N=10,M=20,d=8,k=2",
        "n_measured": 10,
        "provider": "fake",
        "repeats": 3,
        "median_s": 0.125,
        "gflops": "12.5",
        "ratio_vs_faiss_per_repeat": "1.20/1.30/1.40",
        "timing_s": '{"encode": 4.5, "match": 0.25}',
        "runtime": "fake-1.0-fp32",
        "machine": "Fake CPU x2",
        "loadavg": "0.10/0.20/0.30",
        "version": "0.1.0",
        "empty": "",
    }


def test_one_measurement_becomes_one_row_per_value():
    rows = C.append_results("fake_op", [_fake_row()], dry_run=True, shape_keys=("n_measured",))
    assert all(list(r) == C.BENCH_FIELDS for r in rows)
    by = {r["metric"]: r["value"] for r in rows}
    assert by == {
        "median_s": 0.125,
        "gflops": "12.5",
        "ratio_vs_faiss_per_repeat.1": "1.20",
        "ratio_vs_faiss_per_repeat.2": "1.30",
        "ratio_vs_faiss_per_repeat.3": "1.40",
        "timing_s.encode": 4.5,
        "timing_s.match": 0.25,
    }
    r = rows[0]
    assert r["op"] == "fake_op" and r["provider"] == "fake" and r["repeats"] == "3"
    assert r["shape"] == "N=10,M=20,d=8,k=2,n_measured=10" and r["setting"] == "runtime=fake-1.0-fp32"
    assert r["cpu"] == "Fake CPU x2" and r["load"] == "0.10/0.20/0.30" and r["versions"] == "0.1.0"
    assert r["date"] == "2026-12-02T00:00:00Z" and r["commit"]  # filled from the checkout


def test_the_writer_appends_under_one_header_and_refuses_other_files(tmp_path):
    path = tmp_path / "fake_op.csv"
    C.append_results("fake_op", [_fake_row()], path, shape_keys=("n_measured",))
    C.append_results("fake_op", [{**_fake_row(), "provider": "other"}], path, shape_keys=("n_measured",))
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == C.BENCH_FIELDS and rows.count(C.BENCH_FIELDS) == 1 and len(rows) == 1 + 2 * 7
    old = tmp_path / "old.csv"
    old.write_text("date,provider,median_s\n2026,x,1.0\n")
    with pytest.raises(ValueError, match="not the benchmark schema"):
        C.append_results("fake_op", [_fake_row()], old)


@pytest.mark.parametrize("op", OPS)
def test_committed_results_use_the_schema(op):
    with (BENCH / "results" / f"{op}.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == C.BENCH_FIELDS
    for r in rows:
        assert r["op"] == op and r["provider"] and r["metric"] and r["date"] and r["cpu"]
        assert math.isfinite(float(r["value"]))


def test_bench_scripts_are_named_for_what_they_measure():
    scripts = sorted(p.name for p in BENCH.glob("*.py"))
    assert scripts == ["_common.py", *sorted(f"bench_{op}.py" for op in OPS)]
    for p in BENCH.glob("bench_*.py"):
        text = p.read_text(encoding="utf-8")
        assert "append_results(" in text and "csv.writer" not in text and "DictWriter" not in text, p.name
