"""The shared stage-run skeleton (``stage_run.StageRun``) and the typed stage results (``results``)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from llmfeat.core import results as R
from llmfeat.core import tables
from llmfeat.core.stage_run import StageRun

DAY = dt.date(2024, 1, 7)


def test_staging_is_removed_whatever_happens_and_the_manifest_is_complete(tmp_path):
    logged: list[str] = []
    run = StageRun.start("stats", DAY, logged.append)
    with pytest.raises(RuntimeError), run.staging(tmp_path) as staging:
        assert staging == tmp_path / "work" / f"run-{run.run_id}" and staging.is_dir()
        raise RuntimeError("a phase failed")
    assert not staging.exists()
    with run.staging(tmp_path) as staging:
        assert run.phase("write item_stats", lambda: 3) == 3
    assert not staging.exists() and logged == ["stats: write item_stats ..."]

    result = run.write_manifest(tmp_path / "manifests", {"counts": {"written": {"item_stats": 3, "user_stats": 2}},
                                                         "rows_read": 10}, R.StatsResult)  # fmt: skip
    on_disk = json.loads((tmp_path / "manifests" / f"{run.run_id}.json").read_text())
    assert on_disk == result.to_dict()
    assert on_disk["run_id"] == run.run_id and on_disk["as_of"] == "2024-01-07"
    assert set(on_disk["seconds"]) == {"write item_stats", "total"}
    assert (on_disk["rows_read"], on_disk["rows_written"]) == (10, 5)
    assert run.run_id.startswith("2024-01-07T")
    assert list((tmp_path / "manifests").iterdir()) == [tmp_path / "manifests" / f"{run.run_id}.json"]


SUMMARIES = {
    "ingest": (
        {
            "counts": {
                "items": {"read": 5, "kept": 4, "quarantined": 1},
                "users": {"read": 2, "kept": 2, "quarantined": 0},
            },
            "quarantined": 1,
            "not_yet_visible": 0,
        },
        (7, 7),
        "items 4, users 2; quarantined 1",
    ),  # fmt: skip
    "embed": (
        {"model_id": "m1", "counts": {"items": {"read": 3, "written": 2, "encoded": 1, "reused": 1}}},
        (3, 2),
        "model m1; items: encoded 1, reused 1, written 2",
    ),
    "stats": (
        {"counts": {"written": {"item_stats": 4}}, "rows_read": 9},
        (9, 4),
        "rows written item_stats 4",
    ),
    "publish": (
        {"feature_views": ["a", "b"], "online_store": "sqlite", "materialized_until": "2024-01-07"},
        (None, None),
        "2 views -> sqlite until 2024-01-07",
    ),
    "index": (
        {"version": "v1", "count": 12, "index": {"factory": "Flat"}},
        (12, 12),
        "version v1: 12 items, Flat",
    ),
    "train": ({"trained": False, "reason": "too few rows"}, (None, None), "not trained: too few rows"),
    "adapt": (
        {"embedding_set": "adapted", "model_id": "m+adapter@x", "counts": {"items": 3, "users": 2}},
        (None, 5),
        "set adapted: m+adapter@x",
    ),
}


@pytest.mark.parametrize("stage", sorted(SUMMARIES))
def test_results_rebuilt_from_markers_render_and_count(stage, tmp_path):
    summary, rows, head = SUMMARIES[stage]
    result = R.result_for(stage, summary)
    assert type(result) is R.RESULTS[stage] and result.stage == stage
    assert (result.rows_read, result.rows_written) == rows
    assert result.headline().startswith(head) and "\n" not in result.headline()
    # recorded as JSON (the nightly's markers) and read back: the same result
    tables.write_json(tmp_path / "m.json", {"summary": result})
    back = R.result_for(stage, json.loads((tmp_path / "m.json").read_text())["summary"])
    assert back.to_dict() == result.to_dict() and back.headline() == result.headline()
    assert result.get("rows_written") == rows[1]  # a mapping over to_dict(), as the manifests were
    assert bool(result) and not R.result_for(stage, {})


def test_index_and_adapt_results_record_what_the_nightly_recorded_before():
    """``for_marker`` keeps the keys the nightly used to pick by hand, so the markers on disk do not change."""
    index = {"version": "v2", "model_id": "m", "count": 3, "dim": 4, "index": {"factory": "IDMap2,Flat", "exact": True},
             "path": "/x/v2", "pruned": ["v0"], "seconds": {"total": 1.5}, "as_of": "2024-01-07", "files": {},
             "params": {}, "tuning": {"recall": {}, "queries": {}}, "training": {"sample_size": 0}}  # fmt: skip
    keep = ("version", "model_id", "count", "dim", "index", "path", "pruned", "seconds")
    marker = R.IndexResult(index).for_marker()
    assert type(marker) is R.IndexResult
    assert marker.to_dict() == R.IndexResult({k: index[k] for k in keep}).to_dict()
    assert (marker.version, marker.count, marker.factory, marker.exact, marker.pruned) == ("v2", 3, "IDMap2,Flat",
                                                                                          True, ["v0"])  # fmt: skip
    adapt = {"embedding_set": "adapted", "model_id": "m+a", "counts": {"items": 3, "users": 2}, "val_recall@20": 0.5,
             "hybrid": {"weight": 0.1}, "best_epoch": 2, "train_seconds": 1.0, "index_version": "v1",
             "seconds": {"total": 2.0}, "params": {"dim": 8}, "tried": [], "weights_sha256": "ab"}  # fmt: skip
    keep = ("embedding_set", "model_id", "counts", "val_recall@20", "hybrid", "best_epoch", "train_seconds",
            "index_version", "seconds")  # fmt: skip
    marker = R.AdaptResult(adapt).for_marker()
    assert marker.to_dict() == R.AdaptResult({k: adapt[k] for k in keep}).to_dict()
    assert (marker.validation_recall, marker.index_version, marker.rows_written) == (0.5, "v1", 5)
    assert R.TrainResult({"trained": True}).for_marker().data == {"trained": True}  # no key list: all kept


def test_a_refresh_on_a_window_says_so_and_counts_every_row_it_read():
    frame = {"rows": 300, "reused_rows": 290, "fetched_rows": 10, "replayed_rows": 500, "interactions_read": 400,
             "window_days": 30}  # fmt: skip
    result = R.TrainResult(
        {"evaluation": "refresh", "rows": 800, "frame": frame, "headline": [], "report": None}
    )
    assert result.headline().startswith(
        "refresh (first protocol, warm start); frame: 290 rows reused, 10 fetched; window 30 days + 500 replayed"
    )
    assert result.rows_io == {
        "read": 400 + 290 + 10 + 500,
        "written": 10,
        "fetched_from_feast": 10,
        "trained_on": 800,
    }
