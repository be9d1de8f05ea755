"""Where tables live under the data directory, and how they are written: staged, then published atomically.

Layout::

    <data_dir>/canonical/<table>/snapshot_date=YYYY-MM-DD/part-00000.parquet

A writer fills a hidden staging directory next to the target (Spark and pyarrow skip names starting with
"."), then swaps it in with one rename. Re-running a stage replaces its output the same way, so a reader
sees either the old complete snapshot or the new complete one, never a mix.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llmfeat.core.errors import MissingInputError
from llmfeat.core.layout import DataDir

PARQUET_FILE = "part-00000.parquet"
_RENAME_EXCHANGE = 2


def canonical_dir(data_dir: Path, table: str) -> Path:
    return DataDir(Path(data_dir)).canonical(table)


def snapshot_dir(root: Path, snapshot_date: dt.date) -> Path:
    return Path(root) / f"snapshot_date={snapshot_date.isoformat()}"


def snapshot_dates(root: Path) -> list[dt.date]:
    """Published snapshot dates under a partitioned table root, oldest first."""
    if not Path(root).is_dir():
        return []
    dates = []
    for child in Path(root).iterdir():
        if child.is_dir() and child.name.startswith("snapshot_date="):
            dates.append(dt.date.fromisoformat(child.name.split("=", 1)[1]))
    return sorted(dates)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success publish it as ``final`` atomically, else remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        publish_dir(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish_dir(staging: Path, final: Path) -> None:
    """Make ``staging`` visible as ``final`` in one step; an existing ``final`` is replaced and deleted."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(staging, final)
        return
    if _exchange(staging, final):
        # ``staging`` now holds the previous version.
        shutil.rmtree(staging, ignore_errors=True)
        return
    # No renameat2 (not Linux): two renames; a reader may briefly find the directory missing, never half-written.
    old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: the filesystem cannot exchange
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def write_parquet(table: pa.Table, path: Path, row_group_rows: int | None = None) -> None:
    """Write one Parquet file the way Spark and Feast both read it (microsecond timestamps); ``row_group_rows``:
    rows per row group (pyarrow's default, a million, when None)."""
    pq.write_table(table, path, coerce_timestamps="us", allow_truncated_timestamps=True, compression="zstd",
                   row_group_size=row_group_rows)  # fmt: skip


EVENT_ROW_GROUP_ROWS = 8192
"""Rows per row group of an appended snapshot's part files (``write_appended_snapshot``). The rows are in time
order, so each row group's min / max statistics bound a time range: a reader of the recent events only (stats'
trailing windows: ``rows_from``) skips every older row group; Spark's Parquet reader prunes them the same way."""


def rows_from(path: Path, column: str, since) -> int:
    """Rows a reader of ``column >= since`` scans in the Parquet files under ``path``: every row group whose
    statistics do not prove all its values earlier (as Spark's and pyarrow's row-group pruning skip them)."""
    since = pd_timestamp(since)
    total = 0
    for f in sorted(Path(path).glob("*.parquet")):
        meta = pq.ParquetFile(f).metadata
        index = meta.schema.to_arrow_schema().get_field_index(column)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = group.column(index).statistics
            if stats is not None and stats.has_min_max and pd_timestamp(stats.max) < since:
                continue
            total += group.num_rows
    return total


def pd_timestamp(value):
    """A timestamp as an aware UTC ``pandas.Timestamp`` (Parquet statistics come naive, meaning UTC)."""
    import pandas as pd

    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def write_snapshot(root: Path, snapshot_date: dt.date, table: pa.Table, digest: bool = False) -> Path:
    """Write snapshot ``snapshot_date`` of a table in one file; with ``digest``, also its rows' digest
    (``row_digest``, in ``_digest.json``: ``snapshot_digest`` reads it) so that a reader can tell an unchanged
    snapshot from a changed one without reading either."""
    final = snapshot_dir(root, snapshot_date)
    with staged_dir(final) as staging:
        write_parquet(table, staging / PARQUET_FILE)
        if digest:
            write_json(staging / DIGEST_STATE, {"rows": table.num_rows, "digest": row_digest(table)})
    return final


DIGEST_STATE = "_digest.json"
"""Beside a snapshot's file (readers skip names starting with "_"): its rows' count and ``row_digest``."""


def snapshot_digest(root: Path, snapshot_date: dt.date) -> str | None:
    """The row digest ``write_snapshot(..., digest=True)`` recorded for a snapshot (None: none recorded).
    Two snapshots with the same digest hold the same rows (the same multiset, whatever their order)."""
    import json

    state = snapshot_dir(root, snapshot_date) / DIGEST_STATE
    return json.loads(state.read_text())["digest"] if state.is_file() else None


APPEND_STATE = "_append.json"
"""Beside the part files of an appended snapshot (readers skip names starting with "_"): what it holds."""


@dataclass(frozen=True)
class AppendWrite:
    """How ``write_appended_snapshot`` wrote a snapshot: ``mode`` "append" (the previous snapshot's files
    linked, the new rows in a new file) or "full" (every row written, ``reason`` says why)."""

    mode: str
    rows: int
    new_rows: int
    rows_written: int
    parts: int
    base: str | None = None
    """The previous snapshot this one extends (append mode)."""
    append_chain_from: str | None = None
    """The earliest snapshot date D such that this snapshot's rows stamped before D 00:00 UTC are exactly
    snapshot D's: every snapshot since D was an append (readers use it to skip re-checking old rows)."""
    reason: str | None = None


def row_digest(table: pa.Table) -> str:
    """An order-independent digest of a table's rows (the sum of per-row hashes modulo 2**64): equal for the
    same multiset of rows, whatever their order or file split."""
    return _digest(_row_hashes(table))


def _row_hashes(table: pa.Table):
    import numpy as np
    import pandas as pd

    if table.num_rows == 0:
        return np.zeros(0, dtype=np.uint64)
    frame = table.to_pandas()
    for field in table.schema:  # lists (an item's tags) are not hashable: hashed by their values' text
        if pa.types.is_nested(field.type):
            frame[field.name] = [None if v is None else repr(_plain(v)) for v in frame[field.name]]
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def _plain(value):
    """A nested value as plain Python lists / dicts (pandas gives numpy arrays for Arrow lists)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _digest(hashes) -> str:
    return f"{int(hashes.sum(dtype='uint64')):016x}"


def describe_append(write: dict) -> str:
    """One line for a summary: how ``write_appended_snapshot`` wrote a snapshot (an ``AppendWrite`` as a dict)."""
    if write["mode"] == "append":
        return (f"{write['new_rows']} new row(s) appended to snapshot {write['base']} ({write['rows_written']} "
                f"rows written, {write['parts']} part file(s))")  # fmt: skip
    return f"written in full ({write.get('reason') or 'every row'})"


def _append_state(path: Path) -> dict | None:
    import json

    state = Path(path) / APPEND_STATE
    return json.loads(state.read_text()) if state.is_file() else None


def write_appended_snapshot(
    root: Path, snapshot_date: dt.date, table: pa.Table, time_column: str, state_files: dict | None = None
) -> AppendWrite:
    """Write snapshot ``snapshot_date`` of an append-mostly table (events), in proportion to what is new.

    A snapshot dated D holds the rows stamped before D 00:00 UTC. When the latest earlier snapshot P holds
    exactly this table's rows stamped before P 00:00 (same row multiset: ``row_digest``), the new snapshot
    is P's files, hard-linked (no bytes copied), plus one file of the rows stamped since. Anything else
    (no earlier snapshot, a late-arriving, edited or removed old row) writes every row, and says why.

    Part files are merged like a binary counter's carries: the new rows absorb each newest part no larger
    than them, then go into one file. A table of N rows grown by d a night keeps O(log(N/d)) parts, and each
    row is rewritten O(log(N/d)) times over its life: a night writes its new rows plus an amortised bounded
    amount, never the whole history (docs/operations.md, "What a night costs"). ``state_files``: more JSON
    documents ({name: payload}) to write beside the parts (ingest's delivery state).
    """
    import pyarrow.compute as pc

    root = Path(root)
    earlier = [d for d in snapshot_dates(root) if d < snapshot_date]
    prev = _append_state(snapshot_dir(root, earlier[-1])) if earlier else None
    hashes = _row_hashes(table)  # once: the old rows' digest and the whole table's are sums of these
    reason = "no earlier snapshot" if not earlier else "the earlier snapshot has no append state"
    if prev is not None:
        cutoff = pa.scalar(
            _midnight(dt.date.fromisoformat(prev["as_of"])), type=table.schema.field(time_column).type
        )
        before = pc.less(table[time_column], cutoff).to_numpy(zero_copy_only=False)
        old_hashes = hashes[before]
        if len(old_hashes) != prev["rows"] or _digest(old_hashes) != prev["digest"]:
            reason = (
                f"rows stamped before {prev['as_of']} differ from snapshot {prev['as_of']}'s "
                f"({len(old_hashes)} now, {prev['rows']} then): late, edited or removed rows"
            )
        else:
            return append_rows(
                root, snapshot_date, table.filter(pa.array(~before)), state_files, _hashes=hashes[~before]
            )
    final = snapshot_dir(root, snapshot_date)
    with staged_dir(final) as staging:
        write_parquet(table, staging / PARQUET_FILE, EVENT_ROW_GROUP_ROWS)
        parts = [{"file": PARQUET_FILE, "rows": table.num_rows}]
        chain = snapshot_date.isoformat()
        _write_states(staging, snapshot_date, table.num_rows, _digest(hashes), parts, chain, state_files)
    return AppendWrite("full", table.num_rows, table.num_rows, table.num_rows, 1, reason=reason,
                       append_chain_from=chain)  # fmt: skip


def append_rows(
    root: Path, snapshot_date: dt.date, new: pa.Table, state_files: dict | None = None, _hashes=None
) -> AppendWrite:
    """Snapshot ``snapshot_date`` as the latest earlier snapshot P plus the rows ``new``, which the caller
    knows are exactly the rows stamped since P 00:00 (``write_appended_snapshot`` checks it against the whole
    table; ingest's delivery files know it without reading the old rows: data/deliveries.py). P's part files
    are hard-linked, the new rows merged with the parts they carry into (``carried``); the row digest is P's
    plus the new rows' (a sum of per-row hashes), so a later full check still holds."""
    root = Path(root)
    earlier = [d for d in snapshot_dates(root) if d < snapshot_date]
    prev = _append_state(snapshot_dir(root, earlier[-1])) if earlier else None
    if prev is None:
        raise MissingInputError(
            f"no earlier appended snapshot under {root} to append the rows of {snapshot_date} to"
        )
    hashes = _row_hashes(new) if _hashes is None else _hashes
    digest = f"{(int(prev['digest'], 16) + int(hashes.sum(dtype='uint64'))) % 2**64:016x}"
    base = snapshot_dir(root, earlier[-1])
    with staged_dir(snapshot_dir(root, snapshot_date)) as staging:
        parts = [dict(p) for p in prev["parts"]]
        for part in parts:
            os.link(base / part["file"], staging / part["file"])
        written, pending = 0, new
        for part in carried(parts, new.num_rows) if new.num_rows else []:
            parts.remove(part)
            pending = pa.concat_tables([pq.read_table(staging / part["file"]), pending])
            (staging / part["file"]).unlink()
        if new.num_rows:
            name = f"part-{snapshot_date.isoformat()}.parquet"
            write_parquet(pending, staging / name, EVENT_ROW_GROUP_ROWS)
            parts.append({"file": name, "rows": pending.num_rows})
            written = pending.num_rows
        rows = prev["rows"] + new.num_rows
        _write_states(staging, snapshot_date, rows, digest, parts, prev["append_chain_from"], state_files)
    return AppendWrite("append", rows, new.num_rows, written, len(parts), base=earlier[-1].isoformat(),
                       append_chain_from=prev["append_chain_from"])  # fmt: skip


def _write_states(staging: Path, snapshot_date: dt.date, rows: int, digest: str, parts: list, chain: str,
                  state_files: dict | None) -> None:  # fmt: skip
    state = {"as_of": snapshot_date.isoformat(), "rows": rows, "digest": digest, "parts": parts,
             "append_chain_from": chain}  # fmt: skip
    write_json(staging / APPEND_STATE, state)
    for name, payload in (state_files or {}).items():
        write_json(staging / name, payload)


def carried(parts: list[dict], new_rows: int) -> list[dict]:
    """The parts (``{"rows": n, ...}``, oldest first) that ``new_rows`` new rows absorb, newest first, like a
    binary counter's carries: each newest part no larger than the rows gathered so far. Parts stay O(log) in
    number and each row is rewritten O(log) times (``write_appended_snapshot``, ``core.compact.sync``)."""
    out, rows = [], new_rows
    for part in reversed(parts):
        if part["rows"] > rows:
            break
        out.append(part)
        rows += part["rows"]
    return out


def append_chain_from(root: Path, snapshot_date: dt.date) -> dt.date | None:
    """``AppendWrite.append_chain_from`` of a published snapshot (None when it was not written by
    ``write_appended_snapshot``)."""
    state = _append_state(snapshot_dir(root, snapshot_date))
    return dt.date.fromisoformat(state["append_chain_from"]) if state else None


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)


def read_snapshot(
    root: Path, snapshot_date: dt.date | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """Read one snapshot (the latest when ``snapshot_date`` is None)."""
    dates = snapshot_dates(root)
    if not dates:
        raise MissingInputError(f"no snapshots under {root}: run the stage that writes it first")
    day = snapshot_date or dates[-1]
    path = snapshot_dir(root, day)
    if not path.is_dir():
        raise MissingInputError(f"no snapshot {day} under {root} (have {', '.join(map(str, dates))})")
    return pq.read_table(path, schema=schema)


def parquet_rows(*paths: Path) -> int:
    """Rows in the Parquet files under ``paths`` (files or directories), from their footers: no data read."""
    files = [f for p in map(Path, paths) for f in ([p] if p.is_file() else sorted(p.rglob("*.parquet")))]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` atomically: a hidden temporary file beside it, then one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)
    return path


def write_json(path: Path, payload: dict) -> Path:
    """Write a JSON document atomically (``write_atomic``)."""
    import json

    return write_atomic(path, json.dumps(payload, indent=2, default=_jsonable))


def _jsonable(value):
    """Typed results (``results.StageResult``) as their ``to_dict()``; anything else as its string."""
    return value.to_dict() if hasattr(value, "to_dict") else str(value)


def run_id(as_of: dt.date, now: dt.datetime | None = None) -> str:
    """A stage run's id: the snapshot date, the wall-clock time it started and a random suffix."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{as_of.isoformat()}T{now.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
