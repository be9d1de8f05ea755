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


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write one Parquet file the way Spark and Feast both read it (microsecond timestamps)."""
    pq.write_table(table, path, coerce_timestamps="us", allow_truncated_timestamps=True, compression="zstd")


def write_snapshot(root: Path, snapshot_date: dt.date, table: pa.Table) -> Path:
    final = snapshot_dir(root, snapshot_date)
    with staged_dir(final) as staging:
        write_parquet(table, staging / PARQUET_FILE)
    return final


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
