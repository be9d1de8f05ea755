"""Every name the Feast repository defines, once: entities, join keys, feature views, their features, feature
services, the source tables and the stats windows.

``feature_repo/features.py`` (and the copy of it ``llmfeat publish`` keeps in each data directory) builds its
Feast objects from these names; llmfeat reads features by them. Plain strings and tuples only: importing this
module imports nothing else (the plain ``feast`` CLI imports it through features.py).
"""

from __future__ import annotations

from collections.abc import Sequence

# entities and their join keys
USER, USER_KEY = "user", "user_id"
ITEM, ITEM_KEY = "item", "item_id"

# feature views
ITEM_TEXT_VIEW = "item_text_embedding"
USER_TEXT_VIEW = "user_text_embedding"
USER_HISTORY_VIEW = "user_history_embedding"
ITEM_STATS_VIEW = "item_stats"
USER_STATS_VIEW = "user_stats"
ITEM_STATS_PACKED_VIEW = "item_stats_packed"
USER_STATS_PACKED_VIEW = "user_stats_packed"
ITEM_METADATA_VIEW = "item_metadata"

# features (within their views)
EMBEDDING = "embedding"
MODEL_ID = "model_id"
N_HISTORY = "n_history"
N_CLICKS = "n_clicks"
PACKED = "packed"
METADATA = ("category", "subcategory", "primary_category", "n_tags")

# feature services
RANKER = "ranker"
CTR_TRAINING = "ctr_training"

# what each Feast source reads: <table>/_compact, the table's rows in a few files (llmfeat.core.compact)
COMPACT_COPY = "_compact"

# the tables behind the views: embedding tables under <data_dir>/embeddings/<set>/, stats under features/
ITEM_TEXT_TABLE, USER_TEXT_TABLE, USER_HISTORY_TABLE = "item_text", "user_text", "user_history"
EMBEDDING_TABLES = (ITEM_TEXT_TABLE, USER_TEXT_TABLE, USER_HISTORY_TABLE)
ITEM_STATS_TABLE, USER_STATS_TABLE, ITEM_META_TABLE = "item_stats", "user_stats", "item_meta"
STATS_TABLES = (ITEM_STATS_TABLE, USER_STATS_TABLE, ITEM_META_TABLE)

# the user vectors retrieval can query with (serve.user_vectors) -> their view
USER_VECTOR_VIEWS = {"text": USER_TEXT_VIEW, "history": USER_HISTORY_VIEW}

# trailing windows of the stats tables, in days
WINDOWS = (1, 7, 30)
IMPRESSIONS, EVENTS = "impressions", "events"
"""The count noun of item stats and of user stats."""


def full_name(view: str, feature: str) -> str:
    """A feature's column name in Feast results with ``full_feature_names=True``."""
    return f"{view}__{feature}"


def ref(view: str, feature: str) -> str:
    """A feature reference as ``get_online_features`` / ``get_historical_features`` take it."""
    return f"{view}:{feature}"


def stat_columns(noun: str, windows: Sequence[int] = WINDOWS) -> list[str]:
    """Value columns of a stats table (and fields of its view), in order. ``noun``: IMPRESSIONS or EVENTS."""
    cols = []
    for w in windows:
        cols += [f"{noun}_{w}d", f"clicks_{w}d", f"ctr_{w}d"]
    return [*cols, f"{noun}_total", "clicks_total", "ctr_total", "last_event_ts"]


def packed_columns(noun: str, windows: Sequence[int] = WINDOWS) -> list[str]:
    """What the ``packed`` column holds, in order: counts, CTRs, then the last event as days since the epoch
    (NaN when there is none). One array per row is what online rankers fetch: a 100-item lookup reads one
    value per item instead of one per stat."""
    counts = [f"{noun}_{w}d" for w in windows] + [f"{noun}_total"]
    ctrs = [f"ctr_{w}d" for w in windows] + ["ctr_total"]
    return [*counts, *ctrs, "last_event_days"]


# full names of the columns the model input is built from (feature_vector)
USER_TEXT = full_name(USER_TEXT_VIEW, EMBEDDING)
USER_MODEL_ID = full_name(USER_TEXT_VIEW, MODEL_ID)
USER_HISTORY = full_name(USER_HISTORY_VIEW, EMBEDDING)
HISTORY_CLICKS = full_name(USER_HISTORY_VIEW, N_CLICKS)
ITEM_TEXT = full_name(ITEM_TEXT_VIEW, EMBEDDING)
ITEM_MODEL_ID = full_name(ITEM_TEXT_VIEW, MODEL_ID)
ITEM_STATS = full_name(ITEM_STATS_PACKED_VIEW, PACKED)
USER_STATS = full_name(USER_STATS_PACKED_VIEW, PACKED)
