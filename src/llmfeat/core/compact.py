"""The compact copy of a change-log table: its rows in a few large files instead of one file per night.

A change-log table (``<table>/snapshot_date=D/*.parquet``, core/changelog.py) gains a partition every night, so
after a year every whole-table read opens hundreds of small files: Feast's point-in-time query (three times per
view: its ``base``, ``dedup`` and ``latest`` steps read the source again), and embed and stats, which read
their own tables for each key's latest row. Opening files, not reading rows, is then what such a read costs:
Spark's part of the demo's D+1 query (536 entity rows, six views) took 6.5-17.8 s over 1,257 files and 3.4-8.7 s
over one file per view, four calls each in one JVM (BENCHMARKS.md, "Day over day").

So those readers read ``<table>/_compact/`` (``COMPACT``; the table's own readers skip names starting with "_"),
kept in step by ``sync``:

- a file stands for a set of the table's partitions, recorded with each partition's fingerprint (its files'
  names, sizes and modification times: every write of a partition replaces its files) in ``_compact.json``;
- ``sync`` drops the files whose partitions changed or went away (a backfill or a forced redo superseding
  days) and copies the partitions no file stands for into one new file, merged like a binary counter's
  carries with the newest files no larger than it: a table grown by d rows a night keeps O(log(N/d)) files
  and writes each row O(log(N/d)) times over its life;
- a new file is written under a hidden name and renamed, ``_compact.json`` is replaced atomically, and only
  then are the files it no longer names deleted; any file it does not name (left by a sync that died) is
  deleted before anything is read. Syncs are serialised by an flock.

Every reader syncs first (``read``; ``feast.offline.sync_sources`` before Feast reads: publish's
materialisation and ``historical_features``). The plain ``feast`` CLI reads the copy as of the last sync.
The copy holds the table's columns and ``snapshot_date`` (a date column, as Spark infers the partition
column), so a reader filters it by date as it would the table; ``source_of`` maps a copy back to its table.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llmfeat.core import tables
from llmfeat.feast.names import COMPACT_COPY as COMPACT

STATE = "_compact.json"
LOCK = ".lock"


@dataclass
class SyncResult:
    """What one ``sync`` did: files written (and their rows), files dropped."""

    written_files: int = 0
    written_rows: int = 0
    dropped_files: int = 0
    files: int = 0
    days: list[str] = field(default_factory=list)
    """The partitions copied now."""


def copy_of(table: Path) -> Path:
    return Path(table) / COMPACT


def is_copy(path: Path) -> bool:
    return Path(path).name == COMPACT


def source_of(path: Path) -> Path:
    """The change-log table behind ``path``: the table itself for a copy (``<table>/_compact``), else ``path``
    (e.g. a Feast registry written before the copies existed)."""
    path = Path(path)
    return path.parent if is_copy(path) else path


def _fingerprint(partition: Path) -> str:
    parts = sorted(
        (e.name, e.stat().st_size, e.stat().st_mtime_ns)
        for e in os.scandir(partition)
        if e.is_file() and e.name.endswith(".parquet") and not e.name.startswith((".", "_"))
    )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def partition_fingerprints(table: Path) -> dict[str, str]:
    """{snapshot date: fingerprint} of the table's published partitions."""
    return {d.isoformat(): _fingerprint(tables.snapshot_dir(table, d)) for d in tables.snapshot_dates(table)}


def _read_state(copy: Path) -> list[dict]:
    path = copy / STATE
    return json.loads(path.read_text())["files"] if path.is_file() else []


def read_days(table: Path, days: list[str]) -> pa.Table:
    """The partitions' rows with their ``snapshot_date`` (date32) as the last column."""
    parts = []
    for d in days:
        part = pq.read_table(tables.snapshot_dir(table, dt.date.fromisoformat(d)))
        part = part.drop_columns([c for c in part.column_names if c == "snapshot_date"])
        day = pa.array([dt.date.fromisoformat(d)] * part.num_rows, type=pa.date32())
        parts.append(part.append_column("snapshot_date", day))
    # without the writer's schema metadata: Spark would read the schema Spark stored there (no snapshot_date)
    return pa.concat_tables(parts, promote_options="default").replace_schema_metadata(None)


def sync(path: Path) -> SyncResult:
    """Bring the copy at ``path`` (``<table>/_compact``) in step with its table; a no-op for any other path
    (a Feast source that reads a table directly) and for a table with no partitions yet."""
    path = Path(path)
    result = SyncResult()
    if not is_copy(path) or not tables.snapshot_dates(path.parent):
        return result
    table = path.parent
    path.mkdir(exist_ok=True)
    with (path / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        files = _read_state(path)
        named = {f["file"] for f in files if f["file"]}
        for leftover in path.iterdir():  # a run that died between writing and naming, or naming and deleting
            if leftover.is_file() and leftover.name not in named | {STATE, LOCK}:
                leftover.unlink()
        current = partition_fingerprints(table)
        keep = [f for f in files if all(current.get(d) == fp for d, fp in f["days"].items())]
        dropped = [f for f in files if f not in keep]
        covered = {d for f in keep for d in f["days"]}
        todo = sorted(set(current) - covered)
        result.dropped_files = sum(1 for f in dropped if f["file"])
        if not todo and not dropped:
            result.files = len(named)
            return result
        if todo:
            keep.sort(key=lambda f: max(f["days"]))
            days = {d: current[d] for d in todo}
            pending = read_days(table, todo)
            for merged in tables.carried(keep, pending.num_rows):
                keep.remove(merged)
                dropped.append(merged)
                if merged["file"]:
                    older = pq.read_table(path / merged["file"])
                    pending = pa.concat_tables([older, pending], promote_options="default")
                days.update(merged["days"])
            name = None
            if pending.num_rows:
                name = f"part-{uuid.uuid4().hex[:12]}.parquet"
                tables.write_parquet(pending, path / f".{name}")
                os.rename(path / f".{name}", path / name)
                result.written_files, result.written_rows = 1, pending.num_rows
            keep.append({"file": name, "rows": pending.num_rows, "days": dict(sorted(days.items()))})
            result.days = todo
        tables.write_json(path / STATE, {"version": 1, "table": table.name, "files": keep})
        live = {f["file"] for f in keep if f["file"]}
        for f in dropped:
            if f["file"] and f["file"] not in live:
                (path / f["file"]).unlink(missing_ok=True)
        result.files = len(live)
        return result


def read(spark, table: Path):
    """A change-log table's rows as a Spark DataFrame, read from its synced compact copy (with
    ``snapshot_date``); None when the table has no partition yet."""
    if not tables.snapshot_dates(table):
        return None
    sync(copy_of(table))
    return spark.read.parquet(str(copy_of(table)))
