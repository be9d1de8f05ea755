import datetime as dt

import pyarrow as pa
import pytest

from llmfeat.core import tables


def test_write_and_replace_snapshot(tmp_path):
    day = dt.date(2024, 1, 2)
    tables.write_snapshot(tmp_path, day, pa.table({"x": [1, 2]}))
    tables.write_snapshot(tmp_path, day, pa.table({"x": [3]}))  # re-run replaces, never appends
    assert tables.read_snapshot(tmp_path, day).column("x").to_pylist() == [3]
    assert tables.snapshot_dates(tmp_path) == [day]
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot_date=2024-01-02"]  # no staging left behind


def test_a_snapshot_digest_tells_the_same_rows_from_other_rows(tmp_path):
    """What embed's item pass relies on to skip an unchanged catalogue: the same rows in any order give the
    same digest; an edited title, reordered tags, a removed or a duplicated row gives another; no digest
    asked, none recorded."""
    rows = pa.table({"item_id": ["a", "b", "c"], "title": ["Alpha", "Beta", "Gamma"],
                     "tags": [["x", "y"], None, []]})  # fmt: skip
    days = [dt.date(2024, 1, d) for d in range(1, 8)]
    tables.write_snapshot(tmp_path, days[0], rows, digest=True)
    tables.write_snapshot(tmp_path, days[1], rows.take([2, 0, 1]), digest=True)
    tables.write_snapshot(tmp_path, days[2], rows.set_column(1, "title", pa.array(["Alpha", "Beta", "Gamma!"])),
                          digest=True)  # fmt: skip
    tables.write_snapshot(tmp_path, days[3], rows.set_column(2, "tags", pa.array([["y", "x"], None, []])),
                          digest=True)  # fmt: skip
    tables.write_snapshot(tmp_path, days[4], rows.slice(0, 2), digest=True)
    tables.write_snapshot(tmp_path, days[5], pa.concat_tables([rows, rows.slice(0, 1)]), digest=True)
    tables.write_snapshot(tmp_path, days[6], rows)
    digests = [tables.snapshot_digest(tmp_path, d) for d in days]
    assert digests[0] is not None and digests[0] == digests[1]
    assert len(set(digests[:6])) == 5 and digests[6] is None
    assert tables.read_snapshot(tmp_path, days[0]).num_rows == 3  # the digest file is not read as data


def test_failed_write_leaves_previous_snapshot(tmp_path):
    day = dt.date(2024, 1, 2)
    tables.write_snapshot(tmp_path, day, pa.table({"x": [1]}))
    with pytest.raises(RuntimeError):
        with tables.staged_dir(tables.snapshot_dir(tmp_path, day)) as staging:
            (staging / "half.parquet").write_bytes(b"PAR1 half written")
            raise RuntimeError("disk full")
    assert tables.read_snapshot(tmp_path, day).column("x").to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot_date=2024-01-02"]


def test_latest_snapshot_and_missing(tmp_path):
    for d in (dt.date(2024, 1, 1), dt.date(2024, 1, 3)):
        tables.write_snapshot(tmp_path, d, pa.table({"d": [d.isoformat()]}))
    assert tables.read_snapshot(tmp_path).column("d").to_pylist() == ["2024-01-03"]
    with pytest.raises(FileNotFoundError, match="no snapshot 2024-01-02"):
        tables.read_snapshot(tmp_path, dt.date(2024, 1, 2))
