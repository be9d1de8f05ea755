"""Model inputs for the CTR job, from point-in-time Feast features (and, for the TF-IDF baseline, from the
canonical item text). The same functions build the inputs for training and for online scoring.

Feature sets (dense part; every deep model also gets user and item id embeddings):

- ``lm_vector``: the seed's concatenated, normalised vector (``feature_vector.build_feature_matrix``):
  [user text | item text | user*item | stats]. Input of the logistic regression.
- ``lm``: ``lm_vector`` + the user's pooled-history vector and history*item, + 3 presence flags (user text,
  history, item text). The deep model with language-model features.
- ``ids_stats``: the stats block only (the deep model without text features).
- ``tfidf``: as ``lm`` but TF-IDF (+ SVD) item vectors and a pooled-history user vector from them instead of
  the language model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmfeat.core.errors import ConfigError
from llmfeat.features.feature_vector import (
    HISTORY_CLICKS,
    ITEM_STATS,
    ITEM_TEXT,
    USER_HISTORY,
    USER_STATS,
    USER_TEXT,
    build_feature_matrix,
    epoch_days,
    stat_names,
    stats_block,
    vectors,
)

FEATURE_SETS = ("lm_vector", "lm", "ids_stats", "tfidf")


@dataclass
class Vocab:
    """Id -> index, learnt on the training rows; 0 is "unknown"."""

    index: dict[str, int]

    @classmethod
    def fit(cls, ids: Sequence[str]) -> Vocab:
        return cls({v: i + 1 for i, v in enumerate(sorted(set(map(str, ids))))})

    def encode(self, ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.index.get(str(i), 0) for i in ids), dtype=np.int64, count=len(ids))

    def __len__(self) -> int:
        return len(self.index)


def _col(columns: Mapping[str, Sequence], name: str, n: int) -> Sequence:
    return columns[name] if name in columns else [None] * n


TEXT_BLOCKS = ("user_text", "user_history", "item_text")
"""The vector blocks at the front of the ``lm`` / ``tfidf`` dense input, each ``dim`` wide."""
ADAPTED_SCALARS = ("cos_adapted", "has_adapted_user", "log_item_clicks_7d", "log_item_clicks_30d")
"""Scalars of the ``adapted`` input (ctr_eval.adapted_features): cosine, user-vector flag, log recent popularity."""
TEXT_SCALARS = ("cos_user_text_item", "cos_history_item", "has_user_text", "has_history", "has_item_text")


def lm_dense(columns: Mapping[str, Sequence], at, dim: int, n: int) -> np.ndarray:
    """[user text | user history | item text] (each dim wide), then the cosines of the user vectors with the
    item vector, presence flags and the stats block. The deep model projects each vector block down itself."""
    user, user_known = vectors(_col(columns, USER_TEXT, n), dim)
    history, history_known = vectors(_col(columns, USER_HISTORY, n), dim)
    item, item_known = vectors(_col(columns, ITEM_TEXT, n), dim)
    scalars = np.stack(
        [
            np.sum(user * item, axis=1),
            np.sum(history * item, axis=1),
            user_known,
            history_known,
            item_known,
        ],
        axis=1,
    ).astype(np.float32)
    return np.concatenate([user, history, item, scalars, ids_stats_dense(columns, at, n)], axis=1)


def ids_stats_dense(columns: Mapping[str, Sequence], at, n: int) -> np.ndarray:
    return stats_block(
        _col(columns, ITEM_STATS, n),
        _col(columns, USER_STATS, n),
        _col(columns, HISTORY_CLICKS, n),
        epoch_days(at, n),
    )


def dense_names(feature_set: str, dim: int) -> list[str]:
    from llmfeat.features.feature_vector import ranker_layout

    if feature_set == "lm_vector":
        return ranker_layout(dim)
    if feature_set in ("lm", "tfidf"):
        return [f"{b}_{i}" for b in TEXT_BLOCKS for i in range(dim)] + list(TEXT_SCALARS) + stat_names()
    if feature_set == "ids_stats":
        return stat_names()
    if feature_set == "adapted":  # ctr_eval.dense_inputs: built from the adapter, not from Feast columns
        return (
            [f"adapted_{b}_{i}" for b in ("user", "item") for i in range(dim)]
            + list(ADAPTED_SCALARS)
            + stat_names()
        )
    raise ConfigError(f"unknown feature set {feature_set!r}; choose from {FEATURE_SETS}")


def build_dense(feature_set: str, columns: Mapping[str, Sequence], at, dim: int, n: int) -> np.ndarray:
    if feature_set == "lm_vector":
        return build_feature_matrix(columns, at, dim, n).matrix
    if feature_set in ("lm", "tfidf"):
        return lm_dense(columns, at, dim, n)
    if feature_set == "ids_stats":
        return ids_stats_dense(columns, at, n)
    raise ConfigError(f"unknown feature set {feature_set!r}; choose from {FEATURE_SETS}")


@dataclass
class TfidfSpace:
    """TF-IDF over item texts, reduced with truncated SVD and L2-normalised: the text baseline."""

    item_vectors: dict[str, np.ndarray]
    dim: int

    @classmethod
    def fit(cls, item_ids: Sequence[str], texts: Sequence[str], dim: int = 128, seed: int = 7) -> TfidfSpace:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        matrix = TfidfVectorizer(min_df=1, ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
        k = max(2, min(dim, matrix.shape[1] - 1, matrix.shape[0] - 1))
        reduced = TruncatedSVD(n_components=k, random_state=seed).fit_transform(matrix)
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        reduced = (reduced / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return cls({str(i): v for i, v in zip(item_ids, reduced, strict=True)}, k)

    def item_matrix(self, item_ids: Sequence[str]) -> list:
        return [self.item_vectors.get(str(i)) for i in item_ids]

    def pooled_history(self, rows: pd.DataFrame, clicks: pd.DataFrame, snapshot_days: int = 1) -> list:
        """Mean TF-IDF vector of each row's user's clicks before the row's snapshot (the midnight at or before
        its event time when snapshots are daily), mirroring the language model's pooled-history feature."""
        out: list = [None] * len(rows)
        if clicks.empty:
            return out
        cutoff = (
            pd.to_datetime(rows["event_timestamp"], utc=True)
            .dt.floor(f"{snapshot_days}D")
            .to_numpy(dtype="datetime64[us]")
        )
        clicks = clicks.sort_values(["user_id", "event_ts", "item_id"], kind="stable")
        by_user = {u: g for u, g in clicks.groupby("user_id", sort=False)}
        positions = pd.Series(np.arange(len(rows)), index=rows.index)
        for user, idx in positions.groupby(rows["user_id"].to_numpy()).groups.items():
            g = by_user.get(user)
            if g is None:
                continue
            vecs = [self.item_vectors.get(str(i)) for i in g["item_id"]]
            keep = np.array([v is not None for v in vecs])
            if not keep.any():
                continue
            mat = np.stack([v for v in vecs if v is not None])
            ts = g["event_ts"].to_numpy(dtype="datetime64[us]")[keep]
            cum = np.vstack([np.zeros((1, mat.shape[1]), np.float32), np.cumsum(mat, axis=0)])
            for pos in positions[idx].to_numpy():
                j = int(np.searchsorted(ts, cutoff[pos], side="left"))
                if j:
                    v = cum[j] / j
                    norm = np.linalg.norm(v)
                    out[pos] = v / norm if norm > 0 else v
        return out

    def columns(self, frame: pd.DataFrame, clicks: pd.DataFrame) -> dict:
        """The frame's columns with the language-model vectors swapped for TF-IDF ones."""
        columns = {c: frame[c].tolist() for c in frame.columns}
        columns[ITEM_TEXT] = self.item_matrix(frame["item_id"])
        pooled = self.pooled_history(frame, clicks)
        columns[USER_HISTORY] = pooled
        # No TF-IDF "user text": the pooled history stands in for it, as the text of a user is mostly the
        # titles of what they clicked.
        columns[USER_TEXT] = pooled
        return columns
