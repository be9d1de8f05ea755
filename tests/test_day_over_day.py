"""Night after night on the tiny point-in-time catalogue (tests/fixtures/pit): one full night and three
incremental ones, each a real ``run_nightly`` on the same data directory.

- Every stage's summary carries the rows it read and wrote (``rows_io``, llmfeat.core.costs); publish counts exactly
  the offline rows of its materialisation interval, so the incremental nights read only what is new.
- The training frame, extended night by night with the feature store *as it was that night*, equals a full
  point-in-time fetch from the store after the last night, value for value (the claim that a closed day's
  features never change, checked on real successive stores rather than on one store read at several dates).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from llmfeat.core import tables
from llmfeat.core.config import load_config
from llmfeat.ctr.train import training_rows
from llmfeat.feast.offline import historical_features
from llmfeat.features import training_frames
from llmfeat.features.publish import open_store
from llmfeat.nightly import run_nightly
from tests.features.test_training_frames import assert_same_frame
from tests.pit_runs import pit_overrides

pytestmark = pytest.mark.spark

NIGHTS = [dt.date(2024, 1, 3), dt.date(2024, 1, 4), dt.date(2024, 1, 5), dt.date(2024, 1, 6)]
STAGES = ("ingest", "embed", "stats", "publish", "index")


@pytest.fixture(scope="module")
def nights(spark, tmp_path_factory):
    """The nightly for each date in NIGHTS, extending the training frame after each with that night's store."""
    data_dir = tmp_path_factory.mktemp("dod")
    cfg = load_config(None, pit_overrides(data_dir))
    root = data_dir / "frame"
    out = []
    for night in NIGHTS:
        summary = run_nightly(cfg, night, log=lambda _: None)
        store = open_store(cfg)
        rows = training_rows(cfg, night)
        frame, stats = training_frames.fetch(store, rows, root, embedding_model_id="m", log=lambda _: None)
        out.append({"summary": summary, "rows": rows, "frame": frame, "fetched": stats.fetched_days})
    return cfg, out


def test_training_frame_after_three_incremental_nights_equals_a_full_fetch(nights):
    cfg, runs = nights
    assert [r["fetched"] for r in runs] == [["2024-01-02"], ["2024-01-03"], ["2024-01-04"], ["2024-01-05"]]
    last = runs[-1]
    assert_same_frame(last["frame"], historical_features(open_store(cfg), last["rows"]))


def _offline_rows(cfg, view: str, start, end) -> int:
    """Rows of a view's offline table stamped in [start, end), read whole with pandas (not llmfeat.core.costs)."""
    path = open_store(cfg).get_feature_view(view).batch_source.path
    ts = pd.to_datetime(pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"], utc=True)
    return int(((ts >= start) & (ts < end)).sum()) if start is not None else int((ts < end).sum())


def stages_io(run) -> dict:
    return {r.stage: r.summary["rows_io"] for r in run["summary"].results if r.stage in STAGES}


def test_every_stage_reports_rows_read_and_written(nights):
    cfg, runs = nights
    for run in runs:
        stages = {r.stage: r.summary for r in run["summary"].results}
        for stage in STAGES:
            io = stages[stage]["rows_io"]
            assert io["read"] >= 0 and io["written"] >= 0, (stage, io)
        assert stages["ingest"]["rows_io"]["read"] == 3 + 2 + 4  # items + users + events in the source files
        assert stages["index"]["rows_io"]["written"] == stages["index"]["count"]
    # ingest: the first night writes every event, each later one only the events stamped since the last
    for i, (night, run) in enumerate(zip(NIGHTS, runs, strict=True)):
        events = next(r.summary for r in run["summary"].results if r.stage == "ingest")["writes"][
            "interactions"
        ]
        ts = pd.to_datetime(pd.read_parquet(tables.snapshot_dir(tables.canonical_dir(cfg.paths.data_dir, "interactions"),
                                                                night))["event_ts"], utc=True)  # fmt: skip
        new = int((ts >= pd.Timestamp(NIGHTS[i - 1], tz="UTC")).sum()) if i else len(ts)
        assert (events["mode"], events["new_rows"], events["rows"]) == (
            "append" if i else "full",
            new,
            len(ts),
        )
        assert (
            new <= events["rows_written"] <= len(ts)
        )  # the new rows, plus any older part they were merged with
        assert stages_io(run)["ingest"]["written"] >= events["rows_written"]
    # publish: the first night materialises everything before it, each later one only its own day
    previous = None
    for night, run in zip(NIGHTS, runs, strict=True):
        publish = next(r.summary for r in run["summary"].results if r.stage == "publish")
        end = pd.Timestamp(night, tz="UTC")
        for view, counted in publish["materialized"]["views"].items():
            assert counted["read"] == _offline_rows(cfg, view, previous, end), (night, view)
            assert counted["written"] <= counted["read"]
        assert publish["rows_io"]["read"] == sum(v["read"] for v in publish["materialized"]["views"].values())
        previous = end
    full = next(r.summary for r in runs[0]["summary"].results if r.stage == "publish")["rows_io"]["read"]
    later = [next(r.summary for r in run["summary"].results if r.stage == "publish")["rows_io"]["read"]
             for run in runs[1:]]  # fmt: skip
    assert all(n < full for n in later), (full, later)


def test_training_window_reads_only_its_days_and_a_wider_one_reuses_them(nights):
    from llmfeat.ctr.train import fetch_training_frame

    cfg, _ = nights
    night = NIGHTS[-1]  # events of 2024-01-02 .. 2024-01-05 are visible
    base = [*pit_overrides(cfg.paths.data_dir), "train.min_interactions=1"]
    stats: dict = {}
    frame = fetch_training_frame(load_config(None, [*base, "train.window_days=2"]), night, log=lambda _: None,
                                 stats=stats)  # fmt: skip
    days = {d.isoformat() for d in frame["event_timestamp"].dt.date}
    assert days == {"2024-01-04", "2024-01-05"} and stats["fetched_rows"] == 2 and stats["rows"] == 2
    stats = {}
    full = fetch_training_frame(load_config(None, base), night, log=lambda _: None, stats=stats)
    assert stats["fetched_days"] == 2 and stats["fetched_range"] == ["2024-01-02", "2024-01-03"]
    assert stats["reused_rows"] == 2  # the window's days, stored by the first fetch
    assert_same_frame(full, historical_features(open_store(cfg), training_rows(cfg, night)))


def test_feast_reads_compact_copies_in_step_with_the_tables(nights):
    """After the nights, every Feast source is its table's compact copy (llmfeat.core.compact), holding exactly
    the table's rows in fewer files than the table has partitions."""
    from pathlib import Path

    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from llmfeat.core import compact

    cfg, _ = nights
    store = open_store(cfg)
    for view in store.list_feature_views():
        path = Path(view.batch_source.path)
        assert compact.is_copy(path), (view.name, path)
        table = compact.source_of(path)
        want = ds.dataset(str(table), format="parquet", partitioning="hive").to_table().to_pandas()
        got = pq.read_table(path).to_pandas()
        key = [c for c in ("item_id", "user_id") if c in got.columns] + [
            "event_timestamp",
            "created_timestamp",
        ]
        want["snapshot_date"] = pd.to_datetime(want["snapshot_date"].astype(str)).dt.date
        pd.testing.assert_frame_equal(
            got[sorted(got.columns)].sort_values(key).reset_index(drop=True).drop(columns=["embedding"], errors="ignore"),
            want[sorted(want.columns)].sort_values(key).reset_index(drop=True).drop(columns=["embedding"], errors="ignore"),
            check_dtype=False,
        )  # fmt: skip
        files = len(list(path.glob("*.parquet")))
        assert files <= max(1, len(tables.snapshot_dates(table))), (view.name, files)


def test_incremental_nights_are_told_apart_from_full_ones(nights, monkeypatch):
    """``short_night`` (the driver JVM's compilers under ``spark.jit=auto``): the first night writes the events
    in full, the next ones append; with training on, a night without a stored training frame is not short."""
    import dataclasses

    from llmfeat.nightly import short_night

    cfg, _ = nights
    assert not cfg.train.enabled
    assert [short_night(cfg, n) for n in NIGHTS] == [False, True, True, True]
    # before a night's ingest (the JVM starts beside it): the latest snapshot can be appended to
    assert short_night(cfg, NIGHTS[-1] + dt.timedelta(days=1))
    assert not short_night(
        dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, data_dir=cfg.paths.data_dir / "none")),
        NIGHTS[0],
    )
    training = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, enabled=True))
    frame = training_frames.frame_root(cfg.paths.data_dir, cfg.embed.embedding_set)
    for days, short in ((0, False), (3, True)):
        monkeypatch.setattr(training_frames, "stored_days", lambda root, n=days: n if root == frame else -1)
        assert short_night(training, NIGHTS[-1]) is short
