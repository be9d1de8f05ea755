"""embed.stored_model_ids: the model ids a change-log table holds, read once per partition version (a small memo
beside the partitions), so the mixing check does not read the whole history every night."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from llmfeat.core import tables
from llmfeat.embedding import embed


def _partition(table, day: dt.date, model: str, rows: int = 3) -> None:
    part = tables.snapshot_dir(table, day)
    part.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(rows)], "model_id": [model] * rows}),
                   part / tables.PARQUET_FILE)  # fmt: skip


def test_model_ids_are_read_once_per_partition_version(tmp_path, monkeypatch):
    table = tmp_path / "user_text"
    assert embed.stored_model_ids(table) == set()  # nothing published yet
    days = [dt.date(2024, 1, d) for d in (1, 2, 3)]
    for day in days:
        _partition(table, day, "m@1")
    read = []
    original = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, **kw: read.append(str(path)) or original(path, **kw))
    assert embed.stored_model_ids(table) == {"m@1"} and len(read) == 3
    read.clear()
    assert embed.stored_model_ids(table) == {"m@1"} and read == []  # remembered: nothing read again
    _partition(table, dt.date(2024, 1, 4), "m@2")  # a new night, another model
    assert embed.stored_model_ids(table) == {"m@1", "m@2"} and len(read) == 1
    read.clear()
    _partition(table, days[0], "m@3", rows=5)  # a partition rewritten (a forced redo): read again
    assert embed.stored_model_ids(table) == {"m@1", "m@2", "m@3"} and read == [
        str(tables.snapshot_dir(table, days[0]))
    ]
    assert sorted(p.name for p in table.iterdir() if not p.name.startswith("snapshot_date=")) == [
        embed.MODEL_IDS
    ]
