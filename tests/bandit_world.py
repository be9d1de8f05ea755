"""A synthetic world for the bandit simulator: users with a hidden taste vector rate items over 120 days; a
rating is a click when the item is close to the taste. A fifth of the items appear only in the last 10%."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmfeat.bandit.simulate import World


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_world(n_items: int = 300, n_users: int = 80, dim: int = 16, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    items = unit(rng.standard_normal((n_items, dim)))
    taste = unit(rng.standard_normal((n_users, dim)))
    start = np.datetime64("2024-01-01T00:00:00", "us")
    days = 120
    late = rng.random(n_items) < 0.2  # released in the last 12 days
    popularity = rng.zipf(1.6, n_items).astype(float)
    rows = []
    for u in range(n_users):
        for day in np.flatnonzero(rng.random(days) < 0.25):
            ok = ~late | (day >= days - 12)
            p = popularity * ok
            chosen = rng.choice(n_items, size=6, replace=False, p=p / p.sum())
            for k, i in enumerate(chosen):
                liked = float(items[i] @ taste[u]) + 0.15 * rng.standard_normal() > 0.15
                rows.append(
                    (
                        f"u{u}",
                        int(i),
                        start + np.timedelta64(int(day) * 86400 + 3600 * (8 + k), "s"),
                        int(liked),
                    )
                )
    inter = pd.DataFrame(rows, columns=["user_id", "item", "ts", "label"]).sort_values("ts", kind="stable")
    inter["ts"] = inter["ts"].astype("datetime64[us]")
    ts = inter["ts"].to_numpy()
    t1, t2 = np.quantile(ts.astype(np.int64), [0.7, 0.88]).astype("datetime64[us]")
    user_text = {
        f"u{u}": (np.array([start]), unit(taste[u] + 0.8 * rng.standard_normal(dim))[None, :])
        for u in range(n_users)
    }
    return World(
        np.array([f"i{i}" for i in range(n_items)], dtype=object),
        [f"Item {i}" for i in range(n_items)],
        items,
        inter.reset_index(drop=True),
        user_text,
        t1,
        t2,
        30.0,
    )
