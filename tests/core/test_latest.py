"""llmfeat.core.latest: the kept fold of a change-log table holds each key's latest row before a date, equal to
a Spark window over the whole log (``latest_before`` below, how embed and stats read it before the fold), and a night reads only the previous fold and the new partitions;
and ``tables.rows_from`` counts the row groups a recent-events reader scans."""

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmfeat.core import compact, latest, tables

DAY0 = dt.date(2024, 5, 1)
KEYS = [f"k{i}" for i in range(40)]


def write_night(table, d: int, seed: int, created: int = 0) -> int:
    """Partition DAY0 + d: a random third of the keys change, at a few times within the day."""
    rng = np.random.default_rng(seed)
    day = pd.Timestamp(DAY0 + dt.timedelta(days=d), tz="UTC")
    keys = rng.choice(KEYS, size=len(KEYS) // 3, replace=False)
    frame = pd.DataFrame({
        "item_id": keys, "value": rng.normal(size=len(keys)).astype(np.float32),
        "event_timestamp": [day + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 24, len(keys))],
        "created_timestamp": day + pd.Timedelta(days=1, minutes=created),
    })  # fmt: skip
    with tables.staged_dir(tables.snapshot_dir(table, DAY0 + dt.timedelta(days=d))) as staging:
        tables.write_parquet(pa.Table.from_pandas(frame, preserve_index=False), staging / "part-0.parquet")
    return len(frame)


def fold_rows(fold: latest.Fold) -> pd.DataFrame:
    got = pq.read_table(fold.path).to_pandas()
    return got.sort_values("item_id").reset_index(drop=True)


def latest_before(df, key: str, before: dt.date):
    """The reference: the latest row per ``key`` among partitions before ``before``, a Spark window."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy(key).orderBy(F.col("event_timestamp").desc(), F.col("created_timestamp").desc())
    ranked = df.where(F.col("snapshot_date") < F.lit(before)).withColumn("_rn", F.row_number().over(w))
    return ranked.where("_rn = 1").drop("_rn")


def expected(spark, table, before: dt.date) -> pd.DataFrame:
    """``latest_before`` over the whole log (Spark's window), the reference."""
    rows = latest_before(compact.read(spark, table), "item_id", before).toPandas()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"]).dt.tz_localize("UTC")
    return rows.sort_values("item_id").reset_index(drop=True)


def assert_equal_to_window(spark, fold, table, before):
    got, want = fold_rows(fold), expected(spark, table, before)
    assert list(got["item_id"]) == list(want["item_id"])
    np.testing.assert_array_equal(got["value"].to_numpy(), want["value"].to_numpy())
    assert (got["event_timestamp"].dt.tz_convert("UTC") == want["event_timestamp"]).all()


@pytest.mark.spark
def test_each_night_folds_only_its_new_partition_and_equals_the_whole_logs_latest_rows(spark, tmp_path):
    table = tmp_path / "item_stats"
    for d in range(10):
        write_night(table, d, seed=d)
    first = latest.rows(table, "item_id", DAY0 + dt.timedelta(days=10))
    assert first.mode == "rebuilt" and first.rows_read == 10 * (len(KEYS) // 3)
    assert_equal_to_window(spark, first, table, DAY0 + dt.timedelta(days=10))
    for d in range(10, 14):  # a night: the last run's partition, then the next run reads the fold
        new = write_night(table, d, seed=d)
        before = DAY0 + dt.timedelta(days=d + 1)
        previous = latest.rows(table, "item_id", before - dt.timedelta(days=1)).rows
        fold = latest.rows(table, "item_id", before)
        assert fold.mode == "folded" and fold.days == ((before - dt.timedelta(days=1)).isoformat(),)
        assert fold.rows_read == previous + new  # the previous fold (one row per key) and the new partition
        assert_equal_to_window(spark, fold, table, before)
    again = latest.rows(table, "item_id", DAY0 + dt.timedelta(days=14))
    assert again.mode == "unchanged" and again.days == ()
    assert sorted(p.name for p in (table / latest.LATEST).glob("*.parquet")) == [again.path.name]


@pytest.mark.spark
def test_a_superseded_partition_or_an_earlier_date_rebuilds_from_the_whole_log(spark, tmp_path):
    table = tmp_path / "user_stats"
    for d in range(6):
        write_night(table, d, seed=d)
    latest.rows(table, "item_id", DAY0 + dt.timedelta(days=6))
    write_night(table, 3, seed=99, created=5)  # a redo of night 3 replaces its partition
    redone = latest.rows(table, "item_id", DAY0 + dt.timedelta(days=6))
    assert redone.mode == "rebuilt"
    assert_equal_to_window(spark, redone, table, DAY0 + dt.timedelta(days=6))
    earlier = latest.rows(table, "item_id", DAY0 + dt.timedelta(days=4))  # a backfill: days 4-5 not wanted
    assert earlier.mode == "rebuilt"
    assert_equal_to_window(spark, earlier, table, DAY0 + dt.timedelta(days=4))
    (table / latest.LATEST / "part-deadbeef0000.parquet").write_bytes(b"left by a fold that died")
    later = latest.rows(table, "item_id", DAY0 + dt.timedelta(days=6))
    assert later.mode == "folded" and later.days == ("2024-05-05", "2024-05-06")
    assert_equal_to_window(spark, later, table, DAY0 + dt.timedelta(days=6))
    assert not (table / latest.LATEST / "part-deadbeef0000.parquet").exists()
    assert latest.rows(table, "item_id", DAY0).path is None  # nothing before the first partition


def test_fold_keeps_each_keys_greatest_event_then_created_time():
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    rows = pa.Table.from_pandas(pd.DataFrame({
        "item_id": ["a", "b", "a", "a", "b"], "value": [1.0, 2.0, 3.0, 4.0, 5.0],
        "event_timestamp": [t0, t0, t0 + pd.Timedelta(hours=1), t0 + pd.Timedelta(hours=1), t0],
        "created_timestamp": [t0, t0, t0, t0 + pd.Timedelta(days=1), t0 + pd.Timedelta(days=1)],
    }), preserve_index=False)  # fmt: skip
    got = latest.fold(rows, "item_id").to_pandas()
    assert got.set_index("item_id")["value"].to_dict() == {"a": 4.0, "b": 5.0}


def test_rows_from_counts_the_row_groups_that_a_recent_events_reader_scans(tmp_path):
    root = tmp_path / "interactions"
    start = pd.Timestamp("2024-01-01", tz="UTC")
    n = 5 * tables.EVENT_ROW_GROUP_ROWS
    ts = start + pd.to_timedelta(np.linspace(0, 50 * 86_400, n, endpoint=False), unit="s")
    events = pa.table(
        {"user_id": [f"u{i % 7}" for i in range(n)], "event_ts": pa.array(ts, pa.timestamp("us", "UTC"))}
    )
    tables.write_appended_snapshot(root, dt.date(2024, 2, 20), events, "event_ts")
    path = tables.snapshot_dir(root, dt.date(2024, 2, 20))
    assert pq.ParquetFile(path / tables.PARQUET_FILE).metadata.num_row_groups == 5
    since = start + pd.Timedelta(days=35)  # in the fourth row group (days 30-40)
    assert tables.rows_from(path, "event_ts", since) == 2 * tables.EVENT_ROW_GROUP_ROWS
    assert tables.rows_from(path, "event_ts", start) == n
    assert tables.rows_from(path, "event_ts", start + pd.Timedelta(days=60)) == 0
    pruned = pq.read_table(path, filters=[("event_ts", ">=", since)])  # the rows themselves, for the record
    assert pruned.num_rows == int((ts >= since).sum())
