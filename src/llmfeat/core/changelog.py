"""Change-log feature tables: what the embedding and stats jobs share.

A change-log table holds a row for an entity only when its value changes; the value at time t is the entity's
latest row with event_timestamp <= t, which is exactly what a point-in-time join picks. Tables are Parquet,
partitioned by ``snapshot_date``; a run writes into a work area and swaps each partition in atomically, and a
run that covers dates from D on supersedes every partition from D on. Each finished run leaves a JSON
manifest; the manifests say which snapshot dates are covered, so the next run catches up from there.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from llmfeat.core import tables
from llmfeat.core.errors import ConfigError, MissingInputError

T = TypeVar("T")


def snapshot_times(start: dt.date, end: dt.date, every_days: int) -> list[pd.Timestamp]:
    """Midnights (UTC) from ``start`` to ``end`` every ``every_days`` days; ``end`` is always included."""
    if every_days < 1:
        raise ConfigError("every_days must be >= 1")
    if end < start:
        return []
    days = list(range(0, (end - start).days + 1, every_days))
    out = [pd.Timestamp(start + dt.timedelta(days=d), tz="UTC") for d in days]
    last = pd.Timestamp(end, tz="UTC")
    if out[-1] != last:
        out.append(last)
    return out


def covered_until(manifest_dir: Path) -> dt.date | None:
    """The last snapshot date a finished run has produced, from the run manifests in ``manifest_dir``."""
    days = []
    for f in manifest_dir.glob("*.json") if manifest_dir.is_dir() else []:
        snaps = json.loads(f.read_text()).get("snapshots", {})
        if snaps.get("count"):
            days.append(dt.date.fromisoformat(snaps["to"]))
    return max(days) if days else None


def first_snapshot(
    as_of: dt.date, every_days: int, covered: dt.date | None, earliest: Callable[[], dt.datetime | None]
) -> dt.date:
    """Where a run starts when not told: catch up after ``covered``, else backfill from ``earliest()``.

    Catching up starts one spacing step after the covered date (the as-of date itself always gets a
    snapshot); a first run starts at the first midnight at or after the earliest entity timestamp, which only
    a first run asks for (``earliest`` is a Spark job: a catching-up night never runs it). A start after
    ``as_of`` means there is nothing to do.
    """
    if covered is not None:
        return (
            min(covered + dt.timedelta(days=every_days), as_of)
            if as_of > covered
            else as_of + dt.timedelta(days=1)
        )
    first = earliest()
    if first is None:
        return as_of
    start = first.date() if first.time() == dt.time(0) else first.date() + dt.timedelta(days=1)
    return min(start, as_of)


def read_table(spark, path: Path):
    """A partitioned change-log table as a Spark DataFrame, or None when nothing is published yet."""
    return spark.read.parquet(str(path)) if tables.snapshot_dates(path) else None


def publish_partitions(
    produced_root: Path, target: Path, first_day: dt.date, last_day: dt.date | None = None
) -> int:
    """Swap every ``snapshot_date=`` partition under ``produced_root`` into ``target``; partitions of
    ``target`` from ``first_day`` to ``last_day`` (the run's as-of date) that the run did not produce are
    removed (the run supersedes them). Partitions after ``last_day`` are kept: a backfill of an earlier date
    must not delete what later nights wrote."""
    produced = {p.name: p for p in produced_root.glob("snapshot_date=*")} if produced_root.is_dir() else {}
    for name, part in sorted(produced.items()):
        tables.publish_dir(part, target / name)
    for day in tables.snapshot_dates(target):
        stale = tables.snapshot_dir(target, day)
        if day >= first_day and (last_day is None or day <= last_day) and stale.name not in produced:
            shutil.rmtree(stale)
    return len(produced)


def events_appended_since(data_dir: Path, as_of: dt.date, covered: dt.date | None) -> bool:
    """Whether the canonical interactions snapshot of ``as_of`` holds, stamped before ``covered`` 00:00 UTC,
    exactly the rows of snapshot ``covered`` (every snapshot since was an append: ``tables.AppendWrite``).
    A stage that covered that snapshot may then skip looking for late, edited or removed past events."""
    if covered is None:
        return False
    chain = tables.append_chain_from(tables.canonical_dir(data_dir, "interactions"), as_of)
    return chain is not None and chain <= covered


def require_canonical(data_dir: Path, as_of: dt.date, names: Iterable[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        path = tables.snapshot_dir(tables.canonical_dir(data_dir, name), as_of)
        if not path.is_dir():
            raise MissingInputError(
                f"no canonical {name} snapshot for {as_of} at {path}: run `llmfeat ingest --as-of {as_of}` first"
            )
        out[name] = path
    return out
