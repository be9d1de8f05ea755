"""Train / validation / test splits of labelled interactions. Pure pandas.

- temporal: ``train < T1 <= validation < T2 <= test`` by event time (T1, T2 given, or time quantiles).
- leave-last-k: per user, the last k interactions are test, the k before them validation, the rest train
  (users with fewer than 2k + 1 interactions stay in train).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmfeat.core.errors import ConfigError


@dataclass(frozen=True)
class Split:
    protocol: str
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    boundaries: dict

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def temporal_split(
    interactions: pd.DataFrame,
    t1: pd.Timestamp | None = None,
    t2: pd.Timestamp | None = None,
    quantiles: tuple[float, float] = (0.8, 0.9),
) -> Split:
    ts = pd.to_datetime(interactions["event_ts"], utc=True)
    if t1 is None or t2 is None:
        q1, q2 = ts.quantile(list(quantiles), interpolation="lower")
        t1 = t1 if t1 is not None else q1
        t2 = t2 if t2 is not None else q2
    t1, t2 = pd.Timestamp(t1), pd.Timestamp(t2)
    if not t1 < t2:
        raise ConfigError(f"temporal split needs T1 < T2 (got {t1} and {t2})")
    train = interactions[ts < t1]
    validation = interactions[(ts >= t1) & (ts < t2)]
    test = interactions[ts >= t2]
    return Split("temporal", train, validation, test, {"t1": t1.isoformat(), "t2": t2.isoformat()})


def leave_last_k(interactions: pd.DataFrame, k: int = 1) -> Split:
    frame = interactions.sort_values(["user_id", "event_ts", "item_id"], kind="stable")
    position_from_end = frame.groupby("user_id").cumcount(ascending=False).to_numpy()
    size = frame.groupby("user_id")["user_id"].transform("size").to_numpy()
    eligible = size >= 2 * k + 1
    test = eligible & (position_from_end < k)
    validation = eligible & (position_from_end >= k) & (position_from_end < 2 * k)
    train = ~(test | validation)
    return Split("leave_last_k", frame[train], frame[validation], frame[test], {"k": int(k)})


def slice_masks(
    train: pd.DataFrame, evaluated: pd.DataFrame, light_user_max: int = 5
) -> dict[str, np.ndarray]:
    """Cold-start slices of an evaluated frame relative to the training data.

    cold_item: the item has no training interaction. cold_user: the user has none. light_user: 1 to
    ``light_user_max`` training interactions. warm: neither the user nor the item is cold.
    """
    item_counts = train["item_id"].value_counts()
    user_counts = train["user_id"].value_counts()
    n_item = evaluated["item_id"].map(item_counts).fillna(0).to_numpy()
    n_user = evaluated["user_id"].map(user_counts).fillna(0).to_numpy()
    return {
        "all": np.ones(len(evaluated), dtype=bool),
        "cold_item": n_item == 0,
        "cold_user": n_user == 0,
        "light_user": (n_user >= 1) & (n_user <= light_user_max),
        "warm": (n_item > 0) & (n_user > 0),
    }
