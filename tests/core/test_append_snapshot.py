"""tables.write_appended_snapshot: a night writes its new events, not the history, and never loses a row."""

import datetime as dt
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmfeat.core import tables
from llmfeat.data import schemas

DAY0 = dt.date(2024, 3, 1)


def events(days: range, per_day: int = 3, rating: float = 4.0) -> pa.Table:
    """``per_day`` events on each day offset in ``days`` (from DAY0), stamped at 10:00 UTC."""
    rows = [
        {"user_id": f"u{i}", "item_id": f"i{d}", "event_ts": pd.Timestamp(DAY0 + dt.timedelta(days=d), tz="UTC")
         + pd.Timedelta(hours=10), "label": 1, "impression_id": None, "rating": rating, "dwell_s": None}
        for d in days for i in range(per_day)
    ]  # fmt: skip
    return pa.Table.from_pandas(pd.DataFrame(rows), schema=schemas.INTERACTIONS, preserve_index=False)


def night(d: int) -> dt.date:
    return DAY0 + dt.timedelta(days=d)


def read(root, day) -> pa.Table:
    return pq.read_table(tables.snapshot_dir(root, day))


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    key = ["event_ts", "user_id", "item_id"]
    return (
        a.to_pandas()
        .sort_values(key)
        .reset_index(drop=True)
        .equals(b.to_pandas().sort_values(key).reset_index(drop=True))
    )


def test_nights_append_only_their_new_rows_and_every_snapshot_equals_a_full_write(tmp_path):
    root = tmp_path / "interactions"
    writes = []
    for d in range(1, 40):  # snapshot d holds the events of days 0 .. d-1
        table = events(range(d))
        writes.append(tables.write_appended_snapshot(root, night(d), table, "event_ts"))
        assert same_rows(read(root, night(d)), table), d
        assert tables.row_digest(read(root, night(d))) == tables.row_digest(table)
    assert writes[0].mode == "full" and writes[0].reason == "no earlier snapshot"
    assert all(w.mode == "append" and w.new_rows == 3 for w in writes[1:])
    assert {w.append_chain_from for w in writes} == {night(1).isoformat()}
    # a binary counter: parts = the ones in the bit pattern of the night count, writes amortised O(log)
    assert max(w.parts for w in writes) <= 6
    total_written = sum(w.rows_written for w in writes)
    assert total_written <= 3 * 39 * 7, total_written  # each row rewritten at most log2(39) + 1 times
    # the earlier snapshots stay readable and unchanged (their files are shared by links, never rewritten)
    assert same_rows(read(root, night(5)), events(range(5)))


def test_an_append_links_the_previous_files_instead_of_copying_them(tmp_path):
    root = tmp_path / "interactions"
    tables.write_appended_snapshot(root, night(1), events(range(0, 1), per_day=50), "event_ts")
    both = pa.concat_tables([events(range(0, 1), per_day=50), events(range(1, 2), per_day=2)])
    w = tables.write_appended_snapshot(root, night(2), both, "event_ts")
    assert w.mode == "append" and w.rows_written == 2 and w.parts == 2
    old = tables.snapshot_dir(root, night(1)) / tables.PARQUET_FILE
    linked = tables.snapshot_dir(root, night(2)) / tables.PARQUET_FILE
    assert os.stat(old).st_ino == os.stat(linked).st_ino


@pytest.mark.parametrize(
    "change",
    ["late", "edited", "removed"],
)
def test_a_changed_past_rewrites_the_snapshot_and_says_why(tmp_path, change):
    root = tmp_path / "interactions"
    tables.write_appended_snapshot(root, night(3), events(range(3)), "event_ts")
    table = events(range(4))
    if change == "late":  # an event of day 1 that arrived after snapshot 3 was written
        table = pa.concat_tables([table, events(range(1, 2), per_day=4).slice(3, 1)])
    elif change == "edited":  # a rating of day 0 corrected at the source
        table = pa.concat_tables([events(range(0, 1), rating=2.0), events(range(1, 4))])
    else:
        table = table.slice(1)
    w = tables.write_appended_snapshot(root, night(4), table, "event_ts")
    assert w.mode == "full" and "late, edited or removed rows" in w.reason
    assert w.append_chain_from == night(4).isoformat()  # the old rows can no longer be assumed unchanged
    assert w.rows_written == table.num_rows
    assert same_rows(read(root, night(4)), table)
    # and appending resumes the night after
    nxt = tables.write_appended_snapshot(
        root, night(5), pa.concat_tables([table, events(range(4, 5))]), "event_ts"
    )
    assert nxt.mode == "append" and nxt.rows_written == 3
    assert tables.append_chain_from(root, night(5)) == night(4)


def test_rerunning_a_night_replaces_its_snapshot_from_the_one_before(tmp_path):
    root = tmp_path / "interactions"
    tables.write_appended_snapshot(root, night(2), events(range(2)), "event_ts")
    first = tables.write_appended_snapshot(root, night(3), events(range(3)), "event_ts")
    again = tables.write_appended_snapshot(root, night(3), events(range(3)), "event_ts")
    assert first == again
    assert same_rows(read(root, night(3)), events(range(3)))
    assert sorted(
        p.name for p in tables.snapshot_dir(root, night(3)).iterdir() if p.name.endswith(".parquet")
    )
