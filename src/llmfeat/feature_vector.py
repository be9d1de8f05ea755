"""Feature values -> the model input vector. One definition for training and for serving.

Input: columns of Feast features with full names (``view__feature``), one value per (user, item) row, as
returned by ``get_historical_features`` (training, a DataFrame) or ``get_online_features(...).to_dict()``
(ranking), and the time each row is scored at (for recency).

Output layout, fixed and documented (``ranker_layout``):

    [ user text embedding (d) | item text embedding (d) | user * item (d) | stats (len(stat_names())) ]

Embeddings are already unit vectors; user * item is their element-wise product (its sum is the cosine). The
stats come from the stats tables' ``packed`` arrays (see ``stats.packed_columns``) and are put on a
comparable scale: log1p of counts, CTRs as they are, log1p(days + 1) since the last event (0 = no event
yet). Then, as the seed article describes, the concatenated row is L2-normalised: x* = x / ||x||.

A missing embedding (unknown user or item, or none yet at that time) is zeros *and* a False in the returned
masks; callers must look at the masks, never at the zeros.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmfeat.stats import packed_columns

USER_TEXT = "user_text_embedding__embedding"
USER_MODEL_ID = "user_text_embedding__model_id"
USER_HISTORY = "user_history_embedding__embedding"
ITEM_TEXT = "item_text_embedding__embedding"
ITEM_STATS = "item_stats_packed__packed"
USER_STATS = "user_stats_packed__packed"
HISTORY_CLICKS = "user_history_embedding__n_clicks"


def _stat_names(prefix: str, noun: str) -> list[str]:
    return [
        f"{prefix}_{'days_since_last_event' if c == 'last_event_days' else c}" for c in packed_columns(noun)
    ]


def stat_names() -> list[str]:
    return [*_stat_names("item", "impressions"), *_stat_names("user", "events"), "user_history_clicks"]


def _is_vector(value, dim: int) -> bool:
    return value is not None and not isinstance(value, float) and len(value) == dim


def vectors(values: Sequence, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 matrix and a bool mask of the rows that have a vector."""
    values = list(values)
    known = np.fromiter((_is_vector(v, dim) for v in values), dtype=bool, count=len(values))
    out = np.zeros((len(values), dim), dtype=np.float32)
    if known.any():
        out[known] = np.asarray([values[i] for i in np.flatnonzero(known)], dtype=np.float32)
    return out, known


def _transform_packed(packed: np.ndarray, now_days: np.ndarray, n_counts: int) -> np.ndarray:
    counts = np.log1p(np.maximum(np.nan_to_num(packed[:, :n_counts]), 0.0))
    ctrs = np.nan_to_num(packed[:, n_counts:-1])
    since = now_days - packed[:, -1]
    recency = np.where(np.isnan(since), 0.0, np.log1p(np.maximum(since, 0.0) + 1.0))
    return np.concatenate([counts, ctrs, recency[:, None]], axis=1)


def stats_block(
    item_packed: Sequence, user_packed: Sequence, history_clicks: Sequence, now_days: np.ndarray
) -> np.ndarray:
    """(n, len(stat_names())) float32. A missing stats row counts as no activity."""
    blocks = []
    for values, noun in ((item_packed, "impressions"), (user_packed, "events")):
        width = len(packed_columns(noun))
        packed, known = vectors(values, width)
        packed[~known, -1] = np.nan  # no row: no last event either
        blocks.append(_transform_packed(packed.astype(np.float64), now_days, n_counts=(width - 1) // 2))
    clicks = (
        pd.to_numeric(pd.Series(list(history_clicks), dtype=object), errors="coerce")
        .fillna(0)
        .to_numpy(np.float64)
    )
    blocks.append(np.log1p(np.maximum(clicks, 0.0))[:, None])
    return np.concatenate(blocks, axis=1).astype(np.float32)


def epoch_days(at, n: int) -> np.ndarray:
    """Days since the epoch for each of ``n`` rows; ``at`` is one datetime for all rows, or one per row."""
    if isinstance(at, dt.datetime):
        stamp = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        return np.full(n, stamp.timestamp() / 86_400.0)
    ts = pd.to_datetime(pd.Series(at), utc=True)
    return ((ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds() / 86_400.0).to_numpy(dtype=np.float64)


@dataclass
class FeatureMatrix:
    matrix: np.ndarray
    """(n, 3d + len(stat_names())) float32, rows L2-normalised."""
    names: list[str]
    user_known: np.ndarray
    """Per row: the user had a text embedding."""
    item_known: np.ndarray
    """Per row: the item had a text embedding."""


def ranker_layout(dim: int) -> list[str]:
    return (
        [f"user_text_{i}" for i in range(dim)]
        + [f"item_text_{i}" for i in range(dim)]
        + [f"user_x_item_{i}" for i in range(dim)]
        + stat_names()
    )


def assemble(user: np.ndarray, item: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Concatenate the blocks in the fixed layout and L2-normalise each row."""
    x = np.concatenate([user, item, user * item, stats], axis=1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def build_feature_matrix(
    columns: Mapping[str, Sequence], at, dim: int, n: int | None = None
) -> FeatureMatrix:
    """``columns``: full feature name -> one value per row (a DataFrame or a ``to_dict()`` result).

    ``at``: when the rows are scored (one datetime, or one per row). ``n``: the row count, when ``columns``
    may lack every per-row column.
    """
    n = n if n is not None else len(next(iter(columns.values()))) if len(columns) else 0
    missing = [None] * n

    def col(name: str) -> Sequence:
        return columns[name] if name in columns else missing

    user, user_known = vectors(col(USER_TEXT), dim)
    item, item_known = vectors(col(ITEM_TEXT), dim)
    stats = stats_block(col(ITEM_STATS), col(USER_STATS), col(HISTORY_CLICKS), epoch_days(at, n))
    return FeatureMatrix(assemble(user, item, stats), ranker_layout(dim), user_known, item_known)
