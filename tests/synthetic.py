"""A small synthetic data dir in the layout `llmfeat ingest` + `llmfeat embed` write, for index/retrieval tests.

Vectors are random unit vectors; items carry a category and tags, one tag ("Tiny") marks a 3-item category.
The item_text change log has two partitions: an older vector for some items that a later row supersedes
(those old vectors must never be indexed) and a vector for an item no longer in the catalogue.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from llmfeat.core import tables
from llmfeat.data import schemas

AS_OF = dt.date(2024, 3, 1)
EARLIER = dt.date(2024, 2, 1)
MODEL = "test-model@0001"
UTC = "UTC"


@dataclass
class Synthetic:
    data_dir: Path
    item_ids: list[str]
    vectors: np.ndarray
    """Current vectors in item_id order (= faiss id order)."""
    category: dict[str, str]
    tiny: list[str]
    user_ids: list[str]
    user_vectors: np.ndarray
    seen: dict[str, set[str]]


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _emb_rows(key: str, ids, vectors, model_id: str, event_ts, created) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            key: pa.array(list(ids), pa.string()),
            "embedding": pa.array([v.tolist() for v in vectors], pa.list_(pa.float32())),
            "content_hash": pa.array([f"h{i}-{created.value}" for i in range(n)], pa.string()),
            "n_tokens": pa.array([5] * n, pa.int32()),
            "truncated": pa.array([False] * n),
            "event_timestamp": pa.array([event_ts] * n, schemas.UTC_TS),
            "dim": pa.array([vectors.shape[1]] * n, pa.int32()),
            "model_id": pa.array([model_id] * n, pa.string()),
            "created_timestamp": pa.array([created] * n, schemas.UTC_TS),
        }
    )


def write_items(data_dir: Path, emb_set: str, item_ids, vectors, model_id: str, day: dt.date) -> None:
    """Append an item_text partition for ``day`` (used to publish a changed catalogue)."""
    ts = pd.Timestamp(day, tz=UTC) - pd.Timedelta(hours=1)
    root = Path(data_dir) / "embeddings" / emb_set / "item_text"
    tables.write_snapshot(root, day, _emb_rows("item_id", item_ids, vectors, model_id, ts, ts))


def write_users(data_dir: Path, emb_set: str, user_ids, vectors, model_id: str, day: dt.date) -> None:
    """Append a user_text partition for ``day`` (a night that re-embeds the users)."""
    ts = pd.Timestamp(day, tz=UTC) - pd.Timedelta(hours=1)
    root = Path(data_dir) / "embeddings" / emb_set / "user_text"
    tables.write_snapshot(root, day, _emb_rows("user_id", user_ids, vectors, model_id, ts, ts))


def make_data(
    data_dir: Path,
    *,
    n_items: int = 240,
    dim: int = 16,
    n_users: int = 12,
    seed: int = 0,
    model_id: str = MODEL,
    user_model_id: str | None = None,
    emb_set: str = "default",
) -> Synthetic:
    rng = np.random.default_rng(seed)
    item_ids = [f"i{j:04d}" for j in range(n_items)]
    vectors = unit(rng, n_items, dim)
    cats = ["Drama", "Comedy", "Action"]
    category = {iid: cats[j % 3] for j, iid in enumerate(item_ids)}
    tiny = item_ids[5:8]
    emb = Path(data_dir) / "embeddings" / emb_set

    # Older vectors for the first 20 items (superseded), and one for an item that left the catalogue.
    t_old = pd.Timestamp(EARLIER, tz=UTC) - pd.Timedelta(days=1)
    old = unit(rng, 21, dim)
    tables.write_snapshot(
        emb / "item_text",
        EARLIER,
        _emb_rows("item_id", [*item_ids[:20], "gone"], old, model_id, t_old, t_old),
    )
    t_new = pd.Timestamp(AS_OF, tz=UTC) - pd.Timedelta(hours=2)
    tables.write_snapshot(
        emb / "item_text", AS_OF, _emb_rows("item_id", item_ids, vectors, model_id, t_new, t_new)
    )

    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"Item {iid}" for iid in item_ids],
            "description": None,
            "category": [category[i] for i in item_ids],
            "subcategory": None,
            "tags": [[category[i], "Tiny"] if i in tiny else [category[i]] for i in item_ids],
            "updated_at": pd.Timestamp(EARLIER, tz=UTC),
            "released_at": pd.to_datetime(pd.Series([None] * len(item_ids)), utc=True),  # unknown
        }
    )
    canon = Path(data_dir) / "canonical"
    tables.write_snapshot(
        canon / "items", AS_OF, pa.Table.from_pandas(items, schema=schemas.ITEMS, preserve_index=False)
    )

    user_ids = [f"u{j:03d}" for j in range(n_users)]
    user_vectors = unit(rng, n_users, dim)
    umodel = user_model_id or model_id
    t_user = pd.Timestamp(AS_OF, tz=UTC)
    tables.write_snapshot(
        emb / "user_text",
        EARLIER,
        _emb_rows("user_id", user_ids, unit(rng, n_users, dim), umodel, t_old, t_old),
    )
    tables.write_snapshot(
        emb / "user_text", AS_OF, _emb_rows("user_id", user_ids, user_vectors, umodel, t_user, t_user)
    )
    hist = _emb_rows("user_id", user_ids[:-1], unit(rng, n_users - 1, dim), umodel, t_user, t_user)
    tables.write_snapshot(emb / "user_history", AS_OF, hist)

    # Each user interacted with a few of their own nearest items (so exclusion visibly matters) + random ones.
    seen: dict[str, set[str]] = {}
    rows = []
    for u, uvec in zip(user_ids, user_vectors, strict=True):
        near = np.argsort(-(vectors @ uvec))[:4]
        rand = rng.choice(n_items, 3, replace=False)
        picked = {item_ids[j] for j in [*near, *rand]}
        seen[u] = picked
        for n, iid in enumerate(sorted(picked)):
            rows.append((u, iid, pd.Timestamp(EARLIER, tz=UTC) + pd.Timedelta(minutes=n), n % 2))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "label"])
    inter["label"] = inter["label"].astype("int8")
    inter["impression_id"], inter["rating"], inter["dwell_s"] = None, np.nan, np.nan
    tables.write_snapshot(
        canon / "interactions",
        AS_OF,
        pa.Table.from_pandas(inter, schema=schemas.INTERACTIONS, preserve_index=False),
    )
    return Synthetic(Path(data_dir), item_ids, vectors, category, tiny, user_ids, user_vectors, seen)


def config(data_dir: Path, *sets: str):
    from llmfeat.core.config import load_config

    # user vectors from the Parquet tables: these tests need no Feast (tests/features/test_feast.py covers that source)
    return load_config(
        None, [f"paths.data_dir={data_dir}", "index.tune_queries=100", "serve.user_source=parquet", *sets]
    )
