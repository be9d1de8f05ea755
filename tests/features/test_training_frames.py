"""The stored, incrementally extended training frame equals a full point-in-time fetch from Feast, night after
night; it fetches only new (or changed) event days, and refetches everything when its upstream changes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from llmfeat.ctr.train import training_rows
from llmfeat.feast.offline import historical_features
from llmfeat.features import training_frames

pytestmark = pytest.mark.spark

AS_OF = dt.date(2024, 1, 7)
NIGHTS = [dt.date(2024, 1, 4), dt.date(2024, 1, 5), dt.date(2024, 1, 6)]


def night_rows(cfg, night: dt.date) -> pd.DataFrame:
    rows = training_rows(cfg, AS_OF)
    return rows[rows["event_timestamp"] < pd.Timestamp(night, tz="UTC")].reset_index(drop=True)


def assert_same_frame(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = training_frames.sort_frame(a), training_frames.sort_frame(b)
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for col in a.columns:
        for x, y in zip(a[col], b[col], strict=True):
            if isinstance(x, (list, tuple)) or hasattr(x, "shape"):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=col)  # NaN == NaN here
            else:
                assert (pd.isna(x) and pd.isna(y)) or x == y, (col, x, y)


def test_incremental_nights_equal_a_full_fetch(pit_store, tmp_path):
    cfg, store = pit_store
    root = tmp_path / "frame"
    fetched_days = []
    for night in NIGHTS:
        rows = night_rows(cfg, night)
        frame, stats = training_frames.fetch(store, rows, root, embedding_model_id="m1", log=lambda _: None)
        fetched_days.append(stats.fetched_days)
        assert stats.rows == len(rows) and stats.reused_rows + stats.fetched_rows == len(rows)
        assert_same_frame(frame, historical_features(store, rows))  # value for value, after each night
    # each night fetched exactly the one day that closed since the last
    assert fetched_days == [["2024-01-02", "2024-01-03"], ["2024-01-04"], ["2024-01-05"]]
    # a second run of the last night fetches nothing
    _, stats = training_frames.fetch(store, night_rows(cfg, NIGHTS[-1]), root, embedding_model_id="m1",
                                     log=lambda _: None)  # fmt: skip
    assert stats.fetched_rows == 0 and stats.reused_rows == 4


def test_day_batches_keep_whole_days_under_the_row_budget():
    counts = {"d1": 3, "d2": 4, "d3": 9, "d4": 1, "d5": 2}
    days = sorted(counts)
    assert training_frames.day_batches(days, counts, 7) == [["d1", "d2"], ["d3"], ["d4", "d5"]]
    assert training_frames.day_batches(days, counts, 100) == [days]
    assert training_frames.day_batches(days, counts, 1) == [[d] for d in days]  # a day is never split
    assert training_frames.day_batches([], counts, 5) == []


def test_a_fetch_in_several_queries_equals_one_query(pit_store, tmp_path):
    cfg, store = pit_store
    rows = night_rows(cfg, NIGHTS[-1])
    logs = []
    frame, stats = training_frames.fetch(store, rows, tmp_path / "frame", embedding_model_id="m1",
                                         log=logs.append, batch_rows=1)  # fmt: skip
    assert stats.fetch_queries == len(stats.fetched_days) > 1  # one query per day at a budget of one row
    assert sum("Feast query" in line for line in logs) == stats.fetch_queries
    assert_same_frame(frame, historical_features(store, rows))


def test_late_rows_refetch_their_day_and_upstream_changes_refetch_all(pit_store, tmp_path):
    cfg, store = pit_store
    root = tmp_path / "frame"
    rows = night_rows(cfg, NIGHTS[-1])
    training_frames.fetch(store, rows, root, embedding_model_id="m1", log=lambda _: None)

    late = rows.iloc[[0]].copy()  # a late-arriving event on an already stored day
    late["event_timestamp"] = late["event_timestamp"] + pd.Timedelta(hours=5)
    late["event_ts"] = late["event_timestamp"]
    more = pd.concat([rows, late], ignore_index=True)
    frame, stats = training_frames.fetch(store, more, root, embedding_model_id="m1", log=lambda _: None)
    assert stats.fetched_days == [late["event_timestamp"].dt.date.iloc[0].isoformat()]
    assert_same_frame(frame, historical_features(store, more))

    logs = []
    _, stats = training_frames.fetch(store, more, root, embedding_model_id="m2", log=logs.append)
    assert stats.invalidated == "embedding_model_id changed" and stats.fetched_rows == len(more)
    assert any("invalidated" in line for line in logs)

    _, stats = training_frames.fetch(
        store, more, root, embedding_model_id="m2", refresh=True, log=lambda _: None
    )
    assert stats.invalidated == "an upstream stage was redone" and stats.fetched_rows == len(more)


@pytest.mark.slow
def test_a_forced_re_embed_through_the_nightly_refetches_the_whole_frame(spark, tmp_path, monkeypatch):
    """The nightly passes a forced upstream redo to the train stage: the stored frame is dropped and every day is
    fetched again (said in the summary); a normal next night reuses the stored days. (The tiny catalogue cannot
    be split for CTR training, so the train stage here fetches the frame and fits nothing.)"""
    from llmfeat.core.config import load_config
    from llmfeat.core.results import TrainResult
    from llmfeat.ctr import train as train_mod
    from llmfeat.nightly import run_nightly
    from tests.pit_runs import DAY1, DAY2, pit_overrides

    def frame_only(cfg, as_of, *, log, refresh=False, **_):
        stats: dict = {}
        frame = train_mod.fetch_training_frame(cfg, as_of, log=log, refresh=refresh, stats=stats)
        return TrainResult({"run_id": "frame-only", "rows": len(frame), "frame": stats, "embedding_model_id": None,
                            "protocols": {}, "models": {}, "report": "", "seconds": {}})  # fmt: skip

    monkeypatch.setattr(train_mod, "run_train", frame_only)
    cfg = load_config(None, [*pit_overrides(tmp_path / "data"), "train.enabled=true", "train.min_interactions=1",
                             "bandit.enabled=false"])  # fmt: skip

    def frame(summary) -> dict:
        train = next(r for r in summary.results if r.stage == "train")
        assert train.status == "done", train
        return train.summary["frame"]

    first = frame(run_nightly(cfg, DAY1, log=lambda _: None))
    assert first["fetched_rows"] == first["rows"] > 0 and first["reused_rows"] == 0
    second = frame(run_nightly(cfg, DAY2, log=lambda _: None))
    assert second["invalidated"] is None and second["reused_rows"] == first["rows"]
    assert 0 < second["fetched_rows"] == second["rows"] - first["rows"]
    forced = frame(run_nightly(cfg, DAY2, force=("embed",), log=lambda _: None))
    assert forced["invalidated"] == "an upstream stage was redone"
    assert forced["reused_rows"] == 0 and forced["fetched_rows"] == forced["rows"] == second["rows"]
