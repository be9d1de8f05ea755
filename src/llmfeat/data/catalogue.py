"""Catalogue metadata read back from the canonical items table: what later stages need besides the text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.core import tables


def read_release_dates(data_dir: Path, as_of: dt.date, item_ids: np.ndarray) -> np.ndarray | None:
    """items.released_at of the canonical items snapshot of ``as_of`` (the latest before it if that day has
    none), aligned with ``item_ids`` (NaT where unknown); None when no snapshot has the column or no item has
    a date (a catalogue without release dates)."""
    root = tables.canonical_dir(Path(data_dir), "items")
    days = [d for d in tables.snapshot_dates(root) if d <= as_of]
    if not days:
        return None
    snapshot = tables.read_snapshot(root, days[-1])
    if "released_at" not in snapshot.column_names:  # written before the column existed
        return None
    t = snapshot.select(["item_id", "released_at"]).to_pandas()
    if t["released_at"].isna().all():
        return None
    ts = pd.to_datetime(t["released_at"], utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[us]")
    rows = pd.Index(t["item_id"].astype(str)).get_indexer(pd.Index(item_ids.astype(str)))
    out = np.full(len(item_ids), np.datetime64("NaT"), "datetime64[us]")
    out[rows >= 0] = ts[rows[rows >= 0]]
    return out


def days_since_release(released: np.ndarray | None, cut) -> np.ndarray | None:
    """Days from each release (``read_release_dates``) to ``cut``, fractional; negative: released after it; NaN:
    unknown. None without release dates."""
    if released is None:
        return None
    ts = pd.Timestamp(cut)
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts  # naive UTC, as the release dates
    return (
        (np.datetime64(ts, "us") - np.asarray(released, "datetime64[us]")) / np.timedelta64(1, "s") / 86400.0
    )
