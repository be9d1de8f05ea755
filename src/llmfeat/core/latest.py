"""Each key's latest row of a change-log table, kept folded: what a catching-up stage reads instead of the log.

A stage that catches up (stats) starts from each key's latest row before its first snapshot
(the row with the greatest ``(event_timestamp, created_timestamp)``, what a point-in-time join picks). Read from
the whole change log, that costs every change row ever written, a number that grows every night. The latest
row per key is a fold that only grows by adding partitions (a maximum per key does not depend on the order the
rows arrive in), so it is kept in ``<table>/_latest/`` (``LATEST``; the table's own readers skip names starting
with "_"):

- a file holds each key's latest row over a set of the table's partitions, recorded with each partition's
  fingerprint (``compact.partition_fingerprints``) in ``_latest.json``;
- ``rows`` asked for the latest rows before a date D: if the recorded partitions are all still there,
  unchanged and before D, only the partitions not folded in yet are read and folded (a night: the previous
  fold, one row per key, plus the partitions the last run published); otherwise (a partition superseded by a
  backfill or a forced redo, or a fold that already holds D or later) the fold is rebuilt from the compact
  copy (``core.compact``), the whole log once, in the driver (pyarrow: the table's columns in memory, the
  embedding vectors included; the first night after an upgrade or a redo pays it);
- a new fold is written under a hidden name and renamed, then ``_latest.json`` is replaced atomically, then the
  old file is deleted; files it does not name (left by a fold that died) are deleted first. Folds are
  serialised by an flock.

Tie-break: rows of one key with the same ``(event_timestamp, created_timestamp)`` cannot come from two runs
(a run stamps its own ``created_timestamp``) and one run writes one row per key and time, so the maximum is
unique; equal to Spark's window over the whole log row for row (tests/core/test_latest.py).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llmfeat.core import compact, tables

LATEST = "_latest"
STATE = "_latest.json"
LOCK = ".lock"
ORDER = ("event_timestamp", "created_timestamp")


@dataclass(frozen=True)
class Fold:
    """What ``rows`` returns: the file holding each key's latest row (None: the table has no partition before
    the date), and the rows it read to make it (``rows_read``) and how (``mode``: "folded" the new partitions
    into the previous fold, "rebuilt" from the whole log, "unchanged")."""

    path: Path | None
    rows: int
    rows_read: int
    mode: str
    days: tuple[str, ...] = ()
    """The partitions read this time."""


def fold(rows: pa.Table, key: str) -> pa.Table:
    """Each ``key``'s row with the greatest ``(event_timestamp, created_timestamp)``."""
    if rows.num_rows == 0:
        return rows
    order = [(key, "ascending"), *((c, "ascending") for c in ORDER)]
    rows = rows.take(pc.sort_indices(rows, sort_keys=order))
    keys = rows[key].combine_chunks()
    last = pc.not_equal(keys.slice(0, len(keys) - 1), keys.slice(1))  # a key's last row: the next key differs
    keep = pa.concat_arrays([last, pa.array([True])]) if len(keys) > 1 else pa.array([True])
    return rows.filter(keep)


def rows(table: Path, key: str, before: dt.date) -> Fold:
    """Each key's latest row among the partitions of ``table`` dated before ``before``, folded and stored
    under ``<table>/_latest`` (module docstring). Read the result with ``Fold.path``."""
    table = Path(table)
    wanted = {d: fp for d, fp in compact.partition_fingerprints(table).items() if d < before.isoformat()}
    if not wanted:
        return Fold(None, 0, 0, "unchanged")
    root = table / LATEST
    root.mkdir(exist_ok=True)
    with (root / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads((root / STATE).read_text()) if (root / STATE).is_file() else {}
        named = state.get("file")
        for leftover in root.iterdir():  # a fold that died between writing and naming, or naming and deleting
            if leftover.is_file() and leftover.name not in {named, STATE, LOCK}:
                leftover.unlink()
        done = state.get("days", {})
        reusable = (
            state.get("key") == key
            and named is not None
            and all(wanted.get(d) == fp for d, fp in done.items())
        )
        if reusable and done.keys() == wanted.keys():
            return Fold(root / named, state["rows"], state["rows"], "unchanged")
        if reusable:
            todo = sorted(set(wanted) - set(done))
            previous = pq.read_table(root / named)
            new = compact.read_days(table, todo)
            merged = fold(pa.concat_tables([previous, new], promote_options="default"), key)
            read, mode = previous.num_rows + new.num_rows, "folded"
        else:
            todo = sorted(wanted)
            copy = compact.copy_of(table)
            compact.sync(copy)
            whole = pq.read_table(copy, filters=pc.field("snapshot_date") < pa.scalar(before, pa.date32()))
            merged = fold(whole.replace_schema_metadata(None), key)
            read, mode = whole.num_rows, "rebuilt"
        name = f"part-{uuid.uuid4().hex[:12]}.parquet"
        tables.write_parquet(merged, root / f".{name}")
        os.rename(root / f".{name}", root / name)
        tables.write_json(root / STATE, {"version": 1, "table": table.name, "key": key, "file": name,
                                         "rows": merged.num_rows, "days": wanted})  # fmt: skip
        if named and named != name:
            (root / named).unlink(missing_ok=True)
        return Fold(root / name, merged.num_rows, read, mode, tuple(todo))
