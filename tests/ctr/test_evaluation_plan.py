"""The nightly's choice between a full evaluation and a refresh (``train.evaluate_every_days``,
llmfeat.ctr.train.plan_evaluation), from the run summaries the train stage writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from llmfeat.core.config import ConfigError, load_config
from llmfeat.ctr.train import models_dir, plan_evaluation

D = dt.date(1998, 4, 10)


def _cfg(tmp_path, *extra: str):
    return load_config(None, [f"paths.data_dir={tmp_path}", *extra])


def _run(cfg, run_id: str, as_of: dt.date, evaluation: str | None = "full", model: str = "m@1") -> None:
    """A run directory with its summary, as run_train leaves it (older runs had no ``evaluation`` key)."""
    out = models_dir(cfg) / run_id
    out.mkdir(parents=True)
    summary = {"run_id": run_id, "as_of": as_of.isoformat(), "report": f"/r/{run_id}/report.md",
               "embedding_model_id": model}  # fmt: skip
    if evaluation is not None:
        summary["evaluation"] = evaluation
    (out / "summary.json").write_text(json.dumps(summary))


def _embedded(cfg, model: str, run_id: str) -> None:
    """An embed run's manifest naming ``model`` (the newest run id sorts last)."""
    from llmfeat.core.layout import embedding_paths

    manifests = embedding_paths(cfg.paths.data_dir, cfg.embed.embedding_set).manifests
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / f"{run_id}.json").write_text(json.dumps({"model_id": model}))


def test_first_night_forced_and_old_evaluations_are_full(tmp_path):
    cfg = _cfg(tmp_path)
    assert plan_evaluation(cfg, D).kind == "full"  # nothing trained yet
    _run(cfg, "r1", D - dt.timedelta(days=7))
    plan = plan_evaluation(cfg, D)
    assert plan.kind == "full" and "7 day(s) old" in plan.reason and plan.cfg is cfg
    _run(cfg, "r2", D - dt.timedelta(days=2), evaluation=None)  # an older run without the key: a full one
    assert plan_evaluation(cfg, D).kind == "refresh"
    assert plan_evaluation(cfg, D, forced=True).kind == "full"


def test_refresh_trains_the_first_protocol_warm_and_names_the_last_full_run(tmp_path):
    cfg = _cfg(tmp_path, "train.protocols=[temporal, leave_last_k]")
    _run(cfg, "r1", D - dt.timedelta(days=3))
    _run(cfg, "r2", D - dt.timedelta(days=2), evaluation="refresh")  # refreshes do not count as full
    _run(cfg, "r3", D + dt.timedelta(days=30))  # after tonight (a backfill): never the reference
    plan = plan_evaluation(cfg, D)
    assert plan.kind == "refresh"
    assert plan.cfg.train.protocols == ["temporal"] and plan.cfg.train.warm_start
    assert plan.cfg.train.models == ["popularity", "deep_lm"]  # train.refresh_models, in train.models' order
    assert cfg.train.protocols == ["temporal", "leave_last_k"] and not cfg.train.warm_start  # not mutated
    assert plan.last_full == {"run_id": "r1", "as_of": "1998-04-07", "report": "/r/r1/report.md"}
    # the refresh window ends after evaluate_every_days: the 7th day is a full evaluation again
    assert plan_evaluation(cfg, D - dt.timedelta(days=3) + dt.timedelta(days=6)).kind == "refresh"
    assert plan_evaluation(cfg, D - dt.timedelta(days=3) + dt.timedelta(days=7)).kind == "full"


def test_a_new_embedding_model_or_every_day_means_full(tmp_path):
    cfg = _cfg(tmp_path)
    _run(cfg, "r1", D - dt.timedelta(days=1), model="m@1")
    _embedded(cfg, "m@1", "20240101T000000-x")
    assert plan_evaluation(cfg, D).kind == "refresh"
    _embedded(cfg, "m@2", "20240102T000000-y")  # a re-embed with another model since the last full run
    plan = plan_evaluation(cfg, D)
    assert plan.kind == "full" and "m@1 -> m@2" in plan.reason
    assert plan_evaluation(_cfg(tmp_path, "train.evaluate_every_days=1"), D).kind == "full"


def test_evaluate_every_days_is_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match="train.evaluate_every_days"):
        _cfg(tmp_path, "train.evaluate_every_days=0")


def test_a_refresh_trains_on_its_window_and_a_full_evaluation_on_every_row(tmp_path):
    _run(_cfg(tmp_path), "r1", D - dt.timedelta(days=1))
    default = _cfg(tmp_path)  # the default: refreshes on a 30-day window (BENCHMARKS.md "Refresh window")
    assert default.train.refresh_window_days == 30 and plan_evaluation(default, D).cfg.train.window_days == 30
    assert plan_evaluation(default, D, forced=True).cfg.train.window_days is None  # full: every row
    shorter = plan_evaluation(_cfg(tmp_path, "train.window_days=10"), D)
    assert shorter.kind == "refresh" and shorter.cfg.train.window_days == 10  # the shorter of the two
    assert plan_evaluation(_cfg(tmp_path, "train.window_days=45"), D).cfg.train.window_days == 30
    off = _cfg(tmp_path, "train.refresh_window_days=null")  # refreshes on every row
    assert plan_evaluation(off, D).cfg.train.window_days is None
    assert plan_evaluation(_cfg(tmp_path, "train.refresh_window_days=null", "train.window_days=45"),
                           D).cfg.train.window_days == 45  # fmt: skip
    with pytest.raises(ConfigError, match="train.refresh_window_days"):
        _cfg(tmp_path, "train.refresh_window_days=0")


def test_a_refresh_fits_at_its_own_learning_rate_and_a_full_evaluation_at_lr(tmp_path):
    _run(_cfg(tmp_path), "r1", D - dt.timedelta(days=1))
    cfg = _cfg(tmp_path, "train.lr=0.004", "train.refresh_lr=0.001")
    assert plan_evaluation(cfg, D).cfg.train.lr == 0.001
    assert plan_evaluation(cfg, D, forced=True).cfg.train.lr == 0.004  # the weekly full fit: train.lr
    assert plan_evaluation(_cfg(tmp_path, "train.lr=0.004", "train.refresh_lr=null"), D).cfg.train.lr == 0.004
    assert _cfg(tmp_path).train.refresh_lr == pytest.approx(
        _cfg(tmp_path).train.lr / 4
    )  # the measured recipe
    with pytest.raises(ConfigError, match="train.refresh_lr"):
        _cfg(tmp_path, "train.refresh_lr=0")


def test_training_rows_since_a_date_reads_only_the_row_groups_from_it(tmp_path):
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from llmfeat.core import tables
    from llmfeat.ctr.train import training_rows

    cfg = _cfg(tmp_path)
    n = 4 * tables.EVENT_ROW_GROUP_ROWS
    start = pd.Timestamp("1998-01-01", tz="UTC")
    ts = start + pd.to_timedelta(np.linspace(0, 40 * 86_400, n, endpoint=False), unit="s")
    events = pa.table({
        "user_id": [f"u{i % 9}" for i in range(n)], "item_id": [f"i{i % 13}" for i in range(n)],
        "event_ts": pa.array(ts, pa.timestamp("us", "UTC")), "label": pa.array([i % 2 for i in range(n)], pa.int8()),
        "impression_id": [None] * n,
    })  # fmt: skip
    root = tables.canonical_dir(cfg.paths.data_dir, "interactions")
    tables.write_appended_snapshot(root, D, events, "event_ts")
    since = start + pd.Timedelta(days=25)  # in the third row group (days 20-30)
    rows = training_rows(cfg, D, since=since)
    assert len(rows) == int((ts >= since).sum()) and (rows["event_timestamp"] >= since).all()
    assert len(training_rows(cfg, D)) == n
    path = tables.snapshot_dir(root, D)
    assert tables.rows_from(path, "event_ts", since) == 2 * tables.EVENT_ROW_GROUP_ROWS  # what the read scans


def test_replay_draws_whole_stored_days_before_the_window_up_to_its_budget(tmp_path):
    import pandas as pd

    from llmfeat.features import training_frames

    days = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(10)]
    for k, day in enumerate(
        days
    ):  # a stored frame's layout: a partition per event day, counted in state.json
        part = tmp_path / f"event_day={day.isoformat()}"
        part.mkdir()
        rows = pd.DataFrame(
            {"event_timestamp": [pd.Timestamp(day, tz="UTC")] * 10, "row": range(10 * k, 10 * k + 10)}
        )
        rows.to_parquet(part / "part-00000.parquet", index=False)
    (tmp_path / "state.json").write_text(
        json.dumps({"signature": None, "days": {d.isoformat(): 10 for d in days}})
    )
    before = dt.date(2024, 1, 8)
    replay = training_frames.replay_days(tmp_path, before, rows=35, seed=1)
    drawn = replay["event_timestamp"].dt.date
    assert len(replay) == 30 and drawn.value_counts().eq(10).all() and (drawn < before).all()  # 3 whole days
    assert replay.equals(training_frames.replay_days(tmp_path, before, rows=35, seed=1))  # seeded
    assert {frozenset(training_frames.replay_days(tmp_path, before, 35, seed=s)["event_timestamp"]) for s in
            range(6)} != {frozenset(replay["event_timestamp"])}  # another seed, other days  # fmt: skip
    assert len(training_frames.replay_days(tmp_path, before, rows=5, seed=1)) == 10  # at least one whole day
    assert training_frames.replay_days(tmp_path, before, rows=0, seed=1) is None
    assert training_frames.replay_days(tmp_path, days[0], rows=35, seed=1) is None  # nothing stored before


def test_a_windows_split_takes_its_quantiles_from_the_window_and_replayed_rows_only_train():
    import pandas as pd

    from llmfeat.ctr.train import _splits

    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(range(100), unit="D")
    frame = pd.DataFrame({"event_ts": ts, "user_id": "u", "item_id": "i", "label": 1})
    t = load_config(None, []).train
    start = pd.Timestamp("2024-03-11", tz="UTC")  # day 70: days 0-69 are the replayed older days
    (split,) = _splits(frame, dataclasses.replace(t, protocols=["temporal"]), start)
    inside = frame[frame["event_ts"] >= start]
    assert pd.Timestamp(split.boundaries["t1"]) == inside["event_ts"].quantile(0.8, interpolation="lower")
    assert len(split.test) == len(inside[inside["event_ts"] >= pd.Timestamp(split.boundaries["t2"])]) == 4
    assert len(split.train) == 70 + 23  # every replayed row, and the window's rows before T1
    (whole,) = _splits(
        frame, dataclasses.replace(t, protocols=["temporal"])
    )  # no window: all rows' quantiles
    assert pd.Timestamp(whole.boundaries["t1"]) < pd.Timestamp(split.boundaries["t1"])
