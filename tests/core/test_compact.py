"""llmfeat.core.compact: the compact copy of a change-log table holds exactly the table's rows (with their
snapshot dates), in O(log) files, and a sync writes only what changed."""

import datetime as dt
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from llmfeat.core import compact, tables

DAY0 = dt.date(2024, 5, 1)


def write_day(table, d: int, rows: int, value: float = 1.0, files: int = 1) -> None:
    """Partition DAY0 + d of a change-log table: ``rows`` rows over ``files`` files, swapped in whole."""
    day = DAY0 + dt.timedelta(days=d)
    frame = pd.DataFrame({
        "item_id": [f"i{d}-{k}" for k in range(rows)], "value": [value] * rows,
        "event_timestamp": pd.Timestamp(day, tz="UTC"), "created_timestamp": pd.Timestamp(day, tz="UTC"),
    })  # fmt: skip
    with tables.staged_dir(tables.snapshot_dir(table, day)) as staging:
        for f, chunk in enumerate(range(0, rows, max(1, -(-rows // files)))):
            part = pa.Table.from_pandas(frame.iloc[chunk : chunk + -(-rows // files)], preserve_index=False)
            tables.write_parquet(part, staging / f"part-{f:05d}.parquet")


def table_rows(table) -> pd.DataFrame:
    got = ds.dataset(str(table), format="parquet", partitioning="hive").to_table().to_pandas()
    got["snapshot_date"] = pd.to_datetime(got["snapshot_date"].astype(str)).dt.date
    return got.sort_values("item_id").reset_index(drop=True)


def copy_rows(table) -> pd.DataFrame:
    got = pq.read_table(compact.copy_of(table)).to_pandas()
    return got.sort_values("item_id").reset_index(drop=True)


def parquet_files(table) -> list[str]:
    return sorted(p.name for p in compact.copy_of(table).glob("*.parquet"))


def test_the_copy_holds_the_tables_rows_and_dates_in_few_files_and_each_night_writes_its_own(tmp_path):
    table = tmp_path / "item_stats"
    for d in range(30):
        write_day(table, d, rows=20, files=2)
    first = compact.sync(compact.copy_of(table))
    assert (first.written_files, first.written_rows, first.files) == (1, 600, 1)
    pd.testing.assert_frame_equal(copy_rows(table), table_rows(table))
    again = compact.sync(compact.copy_of(table))
    assert (again.written_files, again.dropped_files, again.files) == (0, 0, 1)
    written = []
    for d in range(30, 60):  # nights of 3 rows: written alone, merged like a binary counter's carries
        write_day(table, d, rows=3)
        r = compact.sync(compact.copy_of(table))
        assert r.days == [(DAY0 + dt.timedelta(days=d)).isoformat()]
        written.append(r.written_rows)
        pd.testing.assert_frame_equal(copy_rows(table), table_rows(table))
        assert len(parquet_files(table)) <= 6, parquet_files(table)
    assert written[0] == 3 and sum(written) <= 30 * 3 * 6  # each row rewritten at most ~log2(30) + 1 times


def test_a_superseded_or_removed_partition_is_recopied_and_leftovers_are_removed(tmp_path):
    table = tmp_path / "user_text"
    for d in range(8):
        write_day(table, d, rows=4)
        compact.sync(compact.copy_of(table))
    write_day(table, 2, rows=5, value=9.0)  # a forced redo rewrote day 2
    r = compact.sync(compact.copy_of(table))
    assert r.dropped_files >= 1 and "2024-05-03" in r.days
    pd.testing.assert_frame_equal(copy_rows(table), table_rows(table))
    shutil.rmtree(tables.snapshot_dir(table, DAY0 + dt.timedelta(days=7)))  # a backfill superseded day 7
    compact.sync(compact.copy_of(table))
    pd.testing.assert_frame_equal(copy_rows(table), table_rows(table))
    # a file a dead sync left behind (written but never named in the state) is removed before anything is read
    tables.write_parquet(pa.table({"item_id": ["ghost"]}), compact.copy_of(table) / "part-orphan.parquet")
    compact.sync(compact.copy_of(table))
    assert "part-orphan.parquet" not in parquet_files(table)
    pd.testing.assert_frame_equal(copy_rows(table), table_rows(table))


def test_only_copies_are_synced_and_map_back_to_their_table(tmp_path):
    table = tmp_path / "item_text"
    write_day(table, 0, rows=2)
    assert compact.sync(table).files == 0 and not compact.copy_of(table).exists()  # a table read directly
    assert compact.sync(compact.copy_of(tmp_path / "absent")).files == 0
    assert compact.source_of(compact.copy_of(table)) == table and compact.source_of(table) == table
    # the table's own readers never see the copy (its name starts with "_")
    compact.sync(compact.copy_of(table))
    assert len(table_rows(table)) == 2 and tables.snapshot_dates(table) == [DAY0]
