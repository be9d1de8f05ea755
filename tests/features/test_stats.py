"""Behaviour stats: windows end strictly before the snapshot time; rows only when values change."""

import datetime as dt

import numpy as np
import pandas as pd

from llmfeat.core.changelog import snapshot_times
from llmfeat.features.stats import changes_only, pack, packed_columns, stat_columns, stats_over_time


def t(s):
    return np.datetime64(s, "us")


def test_windows_by_hand():
    ev = np.array(
        [t("2024-01-01T10:00"), t("2024-01-05T00:00"), t("2024-01-09T12:00"), t("2024-01-10T00:00")]
    )
    lab = np.array([1, 0, 1, 1])
    times = snapshot_times(dt.date(2024, 1, 10), dt.date(2024, 1, 10), 1)
    row = stats_over_time(ev, lab, times, "impressions").iloc[0]
    # at 01-10 00:00: the event exactly at 01-10 00:00 is not visible; the 1-day window is [01-09, 01-10)
    assert (row.impressions_1d, row.clicks_1d) == (1, 1)
    assert (row.impressions_7d, row.clicks_7d) == (2, 1)  # [01-03, 01-10): 01-05 and 01-09
    assert (row.impressions_30d, row.clicks_30d, row.impressions_total, row.clicks_total) == (3, 2, 3, 2)
    assert np.isclose(row.ctr_7d, 0.5) and np.isclose(row.ctr_total, 2 / 3)
    assert row.last_event_ts == pd.Timestamp("2024-01-09 12:00", tz="UTC")


def test_no_events_is_zero_not_missing():
    frame = stats_over_time(
        np.array([], dtype="datetime64[us]"),
        np.array([]),
        snapshot_times(dt.date(2024, 1, 1), dt.date(2024, 1, 2), 1),
        "events",
    )
    assert (
        (frame["events_total"] == 0).all()
        and (frame["ctr_30d"] == 0).all()
        and frame["last_event_ts"].isna().all()
    )
    assert list(frame.columns) == ["snapshot_ts", *stat_columns("events")]


def test_changes_only_keeps_entering_and_leaving_events():
    ev = np.array([t("2024-01-01T10:00")])
    times = snapshot_times(dt.date(2024, 1, 1), dt.date(2024, 1, 4), 1)
    frame = stats_over_time(ev, np.array([1]), times, "impressions", windows=(1,))
    kept = changes_only(frame, stat_columns("impressions", (1,)), previous=None)
    # 01-01: nothing yet; 01-02: the click enters the 1-day window; 01-03: it leaves it; 01-04: unchanged
    assert [ts.day for ts in kept["snapshot_ts"]] == [1, 2, 3]
    prev = frame.iloc[1][stat_columns("impressions", (1,))].to_dict()
    assert [
        ts.day for ts in changes_only(frame.iloc[2:], stat_columns("impressions", (1,)), prev)["snapshot_ts"]
    ] == [3]


def test_packed_matches_the_columns():
    ev = np.array([t("2024-01-01T12:00"), t("2024-01-02T06:00")])
    frame = stats_over_time(
        ev, np.array([1, 0]), snapshot_times(dt.date(2024, 1, 1), dt.date(2024, 1, 3), 1), "events"
    )
    packed = np.stack(pack(frame, "events"))
    names = packed_columns("events")
    assert packed.shape == (3, len(names)) and names[-1] == "last_event_days"
    assert np.array_equal(packed[:, names.index("events_total")], frame["events_total"].to_numpy(np.float32))
    assert np.isnan(packed[0, -1])  # no event before 01-01 00:00
    assert np.isclose(
        packed[2, -1],
        (pd.Timestamp("2024-01-02 06:00", tz="UTC") - pd.Timestamp(0, tz="UTC")).total_seconds() / 86400,
        atol=1e-2,
    )


def test_an_unchanged_entity_yields_no_rows_that_arrow_still_takes():
    """A catch-up run where an entity's stats did not change: no row for it, and the empty frame must still
    convert to Spark's array<float> (an empty float 'packed' column made Arrow fail the whole job)."""
    import pyarrow as pa

    from llmfeat.features.stats import _stats_fn

    cols = stat_columns("impressions")
    events = pd.DataFrame({"event_ts": pd.to_datetime(["2024-01-02T10:00Z"]), "label": [1]})
    entity = {"item_id": "A", "updated_at": pd.Timestamp("2024-01-01", tz="UTC"), "_prev_total": np.nan,
              **{f"_prev_{c}": None for c in cols}}  # fmt: skip
    day1 = _stats_fn("item_id", "impressions", [pd.Timestamp("2024-01-06", tz="UTC")])
    first = day1(pd.DataFrame([entity]), events)
    assert len(first) == 1
    row = first.iloc[0]
    entity |= {f"_prev_{c}": row[c] for c in cols} | {"_prev_total": row["impressions_total"]}
    entity["_prev_last_event_ts"] = row["last_event_ts"].tz_localize(None)  # Spark hands over naive UTC
    day2 = _stats_fn("item_id", "impressions", [pd.Timestamp("2024-01-07", tz="UTC")])
    again = day2(pd.DataFrame([entity]), events)
    assert again.empty
    assert pa.Array.from_pandas(again["packed"], type=pa.list_(pa.float32())).type == pa.list_(pa.float32())
