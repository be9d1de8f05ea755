"""Reading the embedding tables without Spark: the current vector of each id, as of a date.

The tables written by ``embed.py`` are change logs partitioned by ``snapshot_date``: the vector of an id at a
point in time is its latest row (max ``event_timestamp``, then max ``created_timestamp``) among the rows that
were known then. Indexing and retrieval read them here with pyarrow, so serving never imports Spark or torch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from llmfeat.core import tables
from llmfeat.core.errors import MissingInputError, MixedModelsError, VectorTableError  # noqa: F401 - re-exported

_PARTITIONING = ds.partitioning(pa.schema([("snapshot_date", pa.string())]), flavor="hive")


@dataclass(frozen=True)
class LatestVectors:
    """The current vector of each id in an embedding table; ``vectors`` row i belongs to ``ids[i]``."""

    ids: np.ndarray
    """Object array of string ids, sorted."""
    vectors: np.ndarray
    """float32 (n, dim), as stored (L2-normalised by the encoder)."""
    model_id: str | None
    """None only when there are no rows."""
    dim: int
    rows: pd.DataFrame
    """The other columns of the selected rows (event_timestamp, ...), aligned with ``ids``."""


def read_latest(
    root: Path,
    key: str,
    *,
    as_of: dt.date | None = None,
    at: pd.Timestamp | dt.datetime | None = None,
    columns: tuple[str, ...] = (),
) -> LatestVectors:
    """The latest row per ``key`` among partitions with snapshot_date <= ``as_of`` and rows with
    event_timestamp <= ``at`` (each filter optional); ``columns`` are extra columns to keep."""
    root = Path(root)
    if not tables.snapshot_dates(root):
        raise MissingInputError(f"no embedding table at {root}: run `llmfeat embed` first")
    dataset = ds.dataset(root, format="parquet", partitioning=_PARTITIONING)
    flt = None
    if as_of is not None:
        flt = ds.field("snapshot_date") <= as_of.isoformat()
    if at is not None:
        cond = ds.field("event_timestamp") <= pa.scalar(utc(at), pa.timestamp("us", tz="UTC"))
        flt = cond if flt is None else flt & cond
    meta_cols = [key, "event_timestamp", "created_timestamp", "model_id", *columns]
    meta = dataset.to_table(columns=meta_cols, filter=flt).to_pandas()
    if meta.empty:
        return LatestVectors(np.array([], dtype=object), np.zeros((0, 0), np.float32), None, 0, meta)
    meta["_row"] = np.arange(len(meta))
    latest = meta.sort_values([key, "event_timestamp", "created_timestamp"], kind="stable").drop_duplicates(
        key, keep="last"
    )
    models = sorted(latest["model_id"].unique())
    if len(models) > 1:
        raise MixedModelsError(
            f"embedding table {root} holds current vectors of several models ({', '.join(models)}); "
            "one table must hold one model"
        )
    embeddings = dataset.to_table(columns=["embedding"], filter=flt).column("embedding")
    picked = embeddings.take(pa.array(latest["_row"].to_numpy()))
    vectors = _as_matrix(picked, root)
    rows = latest.drop(columns=["_row"]).reset_index(drop=True)
    return LatestVectors(rows[key].to_numpy(dtype=object), vectors, models[0], vectors.shape[1], rows)


def _as_matrix(lists: pa.ChunkedArray, where: Path) -> np.ndarray:
    """list<float> column -> (n, dim) float32, refusing ragged or missing vectors."""
    arr = lists.combine_chunks()
    if arr.null_count:
        raise VectorTableError(f"{where}: {arr.null_count} row(s) have no embedding")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    dim = int(lengths[0])
    if (lengths != dim).any():
        raise VectorTableError(f"{where}: embeddings of different lengths ({sorted(set(lengths.tolist()))})")
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(arr), dim)


def utc(value: pd.Timestamp | dt.datetime | str) -> pd.Timestamp:
    """A timestamp as aware UTC; a naive one is taken to be UTC already."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product is cosine similarity; a zero row is refused."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if vectors.size and (norms <= 1e-12).any():
        raise VectorTableError(f"{int((norms <= 1e-12).sum())} zero vector(s) cannot be normalised")
    return vectors / np.where(norms > 0, norms, 1.0)
