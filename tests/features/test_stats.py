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
    events = pd.DataFrame({"item_id": ["A"], "event_ts": pd.to_datetime(["2024-01-02T10:00Z"]), "label": [1]})
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


def _reference_rows(entity: dict, events: pd.DataFrame, times, noun: str) -> pd.DataFrame:
    """One entity the plain way: stats_over_time at the times it is visible, changes_only vs its previous row."""
    cols = stat_columns(noun)
    visible = [t for t in times if t >= entity["updated_at"]]
    if not visible:
        return pd.DataFrame(columns=["snapshot_ts", *cols])
    frame = stats_over_time(
        events["event_ts"].to_numpy(dtype="datetime64[us]"), events["label"].to_numpy(), visible, noun
    )
    previous = None
    if not pd.isna(entity["_prev_total"]):
        previous = {c: entity[f"_prev_{c}"] for c in cols}
        last = previous["last_event_ts"]
        previous["last_event_ts"] = None if pd.isna(last) else pd.Timestamp(last, tz="UTC")
    return changes_only(frame, cols, previous)


def test_bucketed_stats_equal_the_per_entity_definition():
    """entity_stats (many entities in one numpy pass, what Spark runs per bucket) gives exactly the rows of
    stats_over_time + changes_only run entity by entity: windows, totals, visibility from updated_at, events
    of other buckets ignored, and the first row compared with a previous row that is equal, different, or
    absent."""
    from llmfeat.features.stats import entity_stats

    rng = np.random.default_rng(7)
    noun, cols = "impressions", stat_columns("impressions")
    times = [pd.Timestamp("2024-02-01", tz="UTC") + pd.Timedelta(days=d) for d in range(12)]
    keys = [f"i{k}" for k in range(40)]
    n = 3000
    events = pd.DataFrame({
        "item_id": rng.choice(keys + ["other_bucket"], n),
        # sub-second times, some exactly on a snapshot or window boundary
        "event_ts": pd.Timestamp("2023-12-20") + pd.to_timedelta(rng.integers(0, 60 * 86_400_000_000, n), "us"),
        "label": rng.integers(0, 2, n),
    })  # fmt: skip
    events.loc[:20, "event_ts"] = [
        pd.Timestamp(times[k % 12].tz_localize(None)) - pd.Timedelta(days=[0, 1, 7, 30][k % 4])
        for k in range(21)
    ]
    events = events[~events["item_id"].isin(["i3", "i4"])]  # entities without any event
    entities = []
    t0 = pd.Timestamp("2024-01-31", tz="UTC")
    for k, key in enumerate(keys):
        row = {"item_id": key, "updated_at": pd.Timestamp("2023-12-01", tz="UTC") + pd.Timedelta(days=int(rng.integers(0, 75))),
               "_prev_total": np.nan, **{f"_prev_{c}": None for c in cols}}  # fmt: skip
        mine = events[events["item_id"] == key]
        if k % 3 == 1:  # the true values at the covered snapshot before these times (often unchanged after)
            at = stats_over_time(
                mine["event_ts"].to_numpy(dtype="datetime64[us]"), mine["label"].to_numpy(), [t0], noun
            ).iloc[0]
            row |= {f"_prev_{c}": at[c] for c in cols} | {"_prev_total": at[f"{noun}_total"]}
            row["_prev_last_event_ts"] = (
                None if pd.isna(at["last_event_ts"]) else at["last_event_ts"].tz_localize(None)
            )
        elif k % 3 == 2:  # a previous row that differs
            row |= {f"_prev_{c}": 1 for c in cols if c != "last_event_ts"} | {"_prev_total": 1.0}
            row["_prev_last_event_ts"] = pd.Timestamp("2023-11-01")
        entities.append(row)
    entities = pd.DataFrame(entities)
    got = entity_stats(entities, events, "item_id", noun, times)
    expected = pd.concat(
        [_reference_rows(e, events[events["item_id"] == e["item_id"]], times, noun).assign(item_id=e["item_id"])
         for e in entities.to_dict("records")],
        ignore_index=True,
    )  # fmt: skip
    assert 50 < len(expected) < 12 * len(keys)  # the case mix: some rows dropped as unchanged, many kept
    key_cols = ["item_id", "snapshot_ts"]
    got = got.sort_values(key_cols).reset_index(drop=True)
    expected = expected.sort_values(key_cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[key_cols + cols], expected[key_cols + cols], check_dtype=False)
    for c in cols[:-1]:  # the schema's types (int counts, float CTRs), as stats_over_time makes them
        assert got[c].dtype == (np.float32 if c.startswith("ctr") else np.int32), c
    assert np.array_equal(np.stack(got["packed"]), np.stack(pack(expected, noun)), equal_nan=True)
