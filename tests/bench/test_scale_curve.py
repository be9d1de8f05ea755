"""bench/scale_curve.py's arithmetic and report, and bench/stage_memory.py's sampler, without running a night."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import scale_curve as sc
from stage_memory import StageSampler, current_stage

STAGES = ("ingest", "embed", "stats", "publish", "index", "train")


def test_fit_exponent_recovers_a_power_law():
    sizes = [0.5, 1, 10, 100]
    fit = sc.fit_exponent(sizes, [3.0 * s**0.7 for s in sizes])
    assert fit["b"] == pytest.approx(0.7, abs=1e-3) and fit["a"] == pytest.approx(3.0, abs=1e-3)
    assert fit["points"] == 4
    assert sc.fit_exponent([1, 10, 100], [2.0, None, 200.0])["b"] == pytest.approx(1.0, abs=1e-3)
    assert sc.fit_exponent([1, 10], [5.0, None]) is None  # one point
    assert sc.fit_exponent([10, 10], [5.0, 6.0]) is None  # one size


def _night(scale: float, b: float) -> dict:
    stages = {
        s: {"seconds": 10.0 * scale**b, "rows_io": {"trained_on": 1000 * scale, "fetched_from_feast": 5 * scale},
            "peak_memory": {"tree_rss_mib": 900.0, "tree_pss_mib": 800.0 * scale**0.5}}
        for s in STAGES
    }  # fmt: skip
    return {"wall_s": 60.0 * scale**b, "peak_memory": {"tree_rss_mib": 1000.0, "tree_pss_mib": None},
            "stages": stages}  # fmt: skip


def _result(days: list[str]) -> dict:
    runs = [
        {"scale": k, "data": {"counts": {"ratings": int(100_000 * k), "items": int(1682 * k), "users": 943}},
         "pairs": [{"day": d, "stored_days": 70 + 100 * n, "full": _night(k, 1.0), "incremental": _night(k, 0.5)}
                   for n, d in enumerate(days)]}
        for k in (1, 10, 100)
    ]  # fmt: skip
    return {"command": "python bench/scale_curve.py", "overrides": [], "runs": runs,
            "curves": sc.curves(runs), "history": sc.history(runs)}  # fmt: skip


def test_curves_fit_seconds_and_memory_per_stage_and_night():
    curves = _result(["1998-04-22"])["curves"]
    assert curves["scales"] == [1, 10, 100]
    assert curves["full"]["train"]["seconds_fit"]["b"] == pytest.approx(1.0)
    assert curves["incremental"]["embed"]["seconds_fit"]["b"] == pytest.approx(0.5)
    assert curves["full"]["stats"]["peak_mib_fit"]["b"] == pytest.approx(0.5)  # PSS, not RSS
    night = curves["incremental"]["night"]
    assert night["seconds"] == pytest.approx([60.0, 60.0 * 10**0.5, 600.0])
    assert night["peak_mib"] == [1000.0] * 3 and night["peak_mib_fit"]["b"] == pytest.approx(
        0.0
    )  # RSS fallback


def test_report_has_a_row_per_stage_and_the_history_table():
    text = sc.report(_result(["1997-12-01", "1998-04-22"]))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert sum(line.startswith("| train |") for line in rows) == 2  # seconds and memory
    assert "| **night** |" in text and "| 1.00 |" in text and "| 0.50 |" in text
    assert "incremental night vs stored history" in text
    assert "| x10 | 1997-12-01 | 70 |" in text and "| x10 | 1998-04-22 | 170 |" in text


def test_current_stage_is_the_first_without_a_marker(tmp_path):
    assert current_stage(tmp_path, STAGES) == "ingest"
    for s in ("ingest", "embed"):
        (tmp_path / f"{s}.json").write_text("{}")
    assert current_stage(tmp_path, STAGES) == "stats"
    for s in STAGES:
        (tmp_path / f"{s}.json").write_text("{}")
    assert current_stage(tmp_path, STAGES) == "teardown"


def test_sampler_attributes_a_child_tree_to_the_running_stage(tmp_path):
    child = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1.5)']); p.wait()"
    proc = subprocess.Popen([sys.executable, "-c", child])
    with StageSampler(proc.pid, tmp_path, STAGES, interval=0.1) as memory:
        time.sleep(0.6)
        (tmp_path / "ingest.json").write_text("{}")
        proc.wait()
    peaks = memory.peaks()
    assert peaks["ingest"]["samples"] >= 3 and peaks["embed"]["samples"] >= 3
    assert peaks["ingest"]["tree_rss_mib"] > peaks["ingest"]["largest_process_rss_mib"] > 0  # two processes
    assert peaks["train"] is None
    assert memory.night()["samples"] == sum(p["samples"] for p in peaks.values() if p)
