"""The CTR report's reading aids: small slices flagged with their counts, a legend on every panel, and one
colour per model across all figures."""

from __future__ import annotations

import numpy as np

from llmfeat.ctr import report


def _summary(rows_all: int = 2000) -> dict:
    results = []
    for model in ("popularity", "deep_ids_stats", "deep_lm"):
        results.append({"protocol": "temporal", "model": model, "slice": "all", "rows": rows_all, "clicks": 900,
                        "auc": 0.71, "gauc": 0.6, "logloss": 0.6, "base_logloss": 0.69})  # fmt: skip
        results.append({"protocol": "temporal", "model": model, "slice": "cold_item", "rows": 2, "clicks": 1,
                        "auc": 1.0, "gauc": float("nan"), "logloss": 0.1, "base_logloss": 0.69})  # fmt: skip
    return {"run_id": "r1", "as_of": "1998-04-23", "rows": 10, "embedding_model_id": "m@1", "embedding_dim": 4,
            "protocols": {"temporal": {"train": 8, "validation": 1, "test": 1}}, "results": results}  # fmt: skip


def test_small_slices_are_flagged_with_their_counts(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predictions = {"temporal": {"_labels": labels, **{m: rng.random(200) for m in ("popularity", "deep_lm")}}}
    text = report.write_report(tmp_path, _summary(), {}, predictions).read_text()
    assert "Small slices, read with care:** cold_item (2 rows, 1 clicks)" in text
    assert "| deep_lm | cold_item* | 2 | 1 | 1.0000 |" in text
    assert "| deep_lm | all | 2000 | 900 |" in text  # a large slice is not marked
    assert report.tiny_slices_note(_summary()["results"][:1], "temporal") == ""


def test_every_panel_has_a_legend_and_models_keep_their_colour(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))
    )
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    predictions = {
        "_labels": labels,
        **{m: rng.random(300) for m in ("popularity", "deep_ids_stats", "deep_lm")},
    }
    curves = {
        m: [{"epoch": e, "val_auc": 0.6 + e / 100} for e in range(3)] for m in ("deep_ids_stats", "deep_lm")
    }
    report._plots(tmp_path, "temporal", curves, predictions)
    colours: dict[str, set] = {}
    for fig in figures:
        for ax in fig.axes:
            labelled = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
            assert ax.get_legend() is not None, ax.get_title()
            for line in labelled:
                colours.setdefault(line.get_label(), set()).add(matplotlib.colors.to_hex(line.get_color()))
    assert set(colours) == {"popularity", "deep_ids_stats", "deep_lm"}
    assert all(len(c) == 1 for c in colours.values()), colours  # one colour per model in every figure
    assert len({next(iter(c)) for c in colours.values()}) == 3


def test_nightly_summary_prints_absolute_paths(tmp_path, monkeypatch, capsys):
    """The summary's data directory, markers and report are absolute, whatever the configured (relative)
    paths, and a tiny headline slice says it is too small to read."""
    import datetime as dt
    from pathlib import Path

    from rich.console import Console

    from llmfeat import cli
    from llmfeat.core.results import TrainResult
    from llmfeat.nightly import NightlySummary, StageResult

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "console", Console(width=500, soft_wrap=True))  # no wrapping inside paths
    train = {"report": "var/reports/r1/report.md", "headline": [
        {"model": "deep_lm", "slice": "all", "auc": 0.71, "rows": 5000, "clicks": 2500},
        {"model": "deep_lm", "slice": "cold_item", "auc": 1.0, "rows": 2, "clicks": 1}]}  # fmt: skip
    summary = NightlySummary(
        dt.date(2024, 1, 5), Path("var/data"), [StageResult("train", "done", 1.0, TrainResult(train))], 1.0, 0
    )
    cli.print_nightly_summary(summary, Path("var/data/runs/2024-01-05"))
    out = capsys.readouterr().out
    assert f"data directory: {tmp_path / 'var/data'}\n" in out
    assert f"run markers and summary: {tmp_path / 'var/data/runs/2024-01-05'}\n" in out
    assert f"report {tmp_path / 'var/reports/r1/report.md'}" in out
    assert "deep_lm all AUC 0.710 (5000 rows)" in out
    assert "deep_lm cold_item AUC 1.000 (2 rows, too few to read)" in out
