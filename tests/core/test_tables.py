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
