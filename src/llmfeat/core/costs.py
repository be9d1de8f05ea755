"""What each nightly stage read and wrote, in rows: the measure of "tonight costs in proportion to today's
change" (docs/operations.md, "What a night costs").

``stage_rows(stage, summary)`` derives ``{"read": n, "written": n, ...}`` from a stage's summary (the
manifests already count most of it); ``materialized_rows`` counts what a Feast materialisation read from the
offline store and wrote to the online store, which Feast does not report. The nightly run adds the result to
each stage's summary under ``"rows_io"``.

"read" counts every row a stage scans, including the whole inputs it reads to find what changed (an embed
reads every item text to compare content hashes) and its own change-log tables, which embed and stats read to
carry each key's latest row forward (``change_log_read``); "written" counts rows it writes to a table, store or index.
Where a stage also processes rows it neither reads from a new source nor writes (training on the whole
frame), the extra key says so ("trained_on").
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from llmfeat.core import tables
from llmfeat.core.compact import source_of

_PARTITIONING = ds.partitioning(pa.schema([("snapshot_date", pa.string())]), flavor="hive")


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file or directory, from the footers only (no data read); 0 if it does not exist.
    Hidden and underscore-prefixed entries (staging, Spark markers) are not counted."""
    path = Path(path)
    if not path.exists():
        return 0
    if path.is_file():
        return tables.parquet_rows(path)
    return tables.parquet_rows(*(p for p in path.rglob("*.parquet") if not _hidden(p, path)))


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in p.relative_to(root).parts)


def rows_between(
    path: str | Path, start: dt.datetime | None, end: dt.datetime, keys: list[str]
) -> tuple[int, int]:
    """Rows of a ``snapshot_date=``-partitioned change-log table stamped in ``[start, end)`` (``start`` None: from
    the beginning), and their distinct ``keys``: what a materialisation of that interval reads and writes.
    Partitions dated before ``start`` are skipped (a row's event time is never after its partition's date)."""
    path = Path(path)
    if not path.is_dir():
        return 0, 0
    data = ds.dataset(str(path), format="parquet", partitioning=_PARTITIONING, exclude_invalid_files=True)
    where = ds.field("snapshot_date") >= start.date().isoformat() if start is not None else None
    frame = data.to_table(columns=[*keys, "event_timestamp"], filter=where).to_pandas()
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    mask = ts < pd.Timestamp(end)
    if start is not None:
        mask &= ts >= pd.Timestamp(start)
    picked = frame.loc[mask, keys]
    return len(picked), len(picked.drop_duplicates())


def materialized_rows(store, intervals: dict[str, tuple[dt.datetime | None, dt.datetime]]) -> dict:
    """Per feature view materialised over ``intervals`` ({view: (start, end)}): offline rows read and online
    rows (distinct entities) written; with their sums."""
    per_view = {}
    for name, (start, end) in sorted(intervals.items()):
        view = store.get_feature_view(name)
        keys = [c.name for c in view.entity_columns]
        read, written = rows_between(source_of(view.batch_source.path), start, end, keys)
        per_view[name] = {"read": read, "written": written}
    return {
        "read": sum(v["read"] for v in per_view.values()),
        "written": sum(v["written"] for v in per_view.values()),
        "views": per_view,
    }


def _sum(counts: dict, key: str) -> int:
    return sum(int(c.get(key, 0)) for c in counts.values() if isinstance(c, dict))


def _history(summary: dict, written: int, skip: tuple[str, ...] = ()) -> int:
    """Rows of a stage's own change-log tables before this run: it reads them (the latest row per key before
    its first snapshot) to carry state forward; counted now as the tables' rows less what it just wrote."""
    total = sum(parquet_rows(p) for k, p in summary.get("outputs", {}).items() if k not in skip)
    return max(total - written, 0)


def stage_rows(stage: str, summary: dict) -> dict | None:
    """Rows read and written by one stage, from its summary; None for a stage that did not run its work (a
    backfill that left newer outputs, too little data to train)."""
    if stage == "ingest":
        counts, writes = summary.get("counts", {}), summary.get("writes")
        if not writes:  # a summary from before tables were appended: every kept row was written
            return {
                "read": _sum(counts, "read"),
                "written": _sum(counts, "kept") + _sum(counts, "quarantined"),
            }
        return {"read": _sum(counts, "read"), "written": sum(int(w["rows_written"]) for w in writes.values())}
    if stage == "embed":
        counts = summary.get("counts", {})
        parts = [counts.get("items", {}), counts.get("users", {}), counts.get("user_history", {})]
        written = sum(int(p.get("written", 0)) for p in parts)
        reads = summary.get("reads")
        # as it counted them: the clicks it scanned (all, or the row groups since its last snapshot)
        if reads:
            read, history = int(reads["interactions"]), sum(int(n) for n in reads["change_log"].values())
        else:
            read = sum(parquet_rows(p) for k, p in summary.get("inputs", {}).items() if k == "interactions")
            history = _history(summary, written, skip=("quarantine",))
        return {
            "read": sum(int(p.get("read", 0)) for p in parts) + read + history,
            "written": written,
            "encoded": sum(int(p.get("encoded", 0)) for p in parts),
            "change_log_read": history,
        }
    if stage == "stats":
        written = sum(int(n) for n in summary.get("counts", {}).get("written", {}).values())
        reads = summary.get("reads")
        if reads:  # what it scanned, as it counted it (its inputs' recent row groups, its tables' folds)
            history = sum(int(n) for n in reads["change_log"].values())
            read = sum(int(n) for k, n in reads.items() if k != "change_log") + history
            return {"read": read, "written": written, "change_log_read": history}
        history = _history(summary, written)
        return {
            "read": sum(parquet_rows(p) for p in summary.get("inputs", {}).values()) + history,
            "written": written,
            "change_log_read": history,
        }
    if stage == "publish":
        done = summary.get("materialized")
        return {"read": done["read"], "written": done["written"]} if done else None
    if stage == "index":
        if "count" not in summary:
            return None
        return {"read": int(summary["count"]), "written": int(summary["count"])}
    if stage == "train":
        frame = summary.get("frame") or {}
        if not summary.get("rows"):
            return None
        labelled = int(frame.get("interactions_read", 0))  # the snapshot's rows scanned for the labels
        return {
            "read": labelled
            + sum(int(frame.get(k, 0)) for k in ("fetched_rows", "reused_rows", "replayed_rows")),
            "written": int(frame.get("fetched_rows", 0)),
            "fetched_from_feast": int(frame.get("fetched_rows", 0)),
            "trained_on": int(summary["rows"]),
        }
    return None
