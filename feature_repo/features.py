"""llmfeat's Feast feature repository: entities, sources, feature views and feature services in one file.

The tables are written by llmfeat's jobs (``llmfeat nightly``, or ``embed`` and ``stats``); each is a change
log partitioned by snapshot_date, so a point-in-time join picks each entity's latest row at or before the
entity timestamp. Feature values never expire (see NO_EXPIRY).

Where the tables are: ``$LLMFEAT_DATA_DIR`` (default: ``../var/data``, what ``make run`` writes) and the
embedding set ``$LLMFEAT_EMBEDDING_SET`` (default: ``default``). ``llmfeat publish`` keeps a copy of this file
in each data directory (``<data_dir>/feast/features.py``, ``<data_dir>/feast/sets/<set>/features.py``); there
the defaults are that data directory and that set, so ``feast -c <data_dir>/feast apply`` works on any copy.
Switching rankers to another embedding set
(e.g. a fine-tuned model) is one setting: re-apply with ``LLMFEAT_EMBEDDING_SET=<set>`` (``llmfeat publish``
does it from ``embed.embedding_set``).

Feature order for rankers and the CTR job is fixed by the ``ranker`` and ``ctr_training`` services below.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.types import Array, Float32, Int32, String, UnixTimestamp


def _default_location() -> tuple[Path, str]:
    """(data directory, embedding set) this file's place implies: the data directory it was published into,
    else the source tree's var/data."""
    here = Path(__file__).resolve().parent
    if here.name == "feast" and (here / "feature_store.yaml").is_file():
        return here.parent, "default"
    if here.parent.name == "sets" and here.parent.parent.name == "feast":
        return here.parent.parent.parent, here.name
    return here.parent / "var" / "data", "default"


DATA_DIR = Path(os.environ.get("LLMFEAT_DATA_DIR") or _default_location()[0]).resolve()
EMBEDDING_SET = os.environ.get("LLMFEAT_EMBEDDING_SET") or _default_location()[1]
EMBEDDINGS = DATA_DIR / "embeddings" / EMBEDDING_SET
FEATURES = DATA_DIR / "features"

# A ttl of 0 also means "never expires" for point-in-time joins, but makes `feast materialize-incremental`
# start one year before *now* on its first run, which skips older data. A century is explicit and safe.
NO_EXPIRY = timedelta(days=36_500)
WINDOWS = (1, 7, 30)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A user id")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="An item id")


def _source(name: str, path: Path) -> SparkSource:
    return SparkSource(
        name=name,
        path=str(path),
        file_format="parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )


def _counts(noun: str) -> list[Field]:
    fields = []
    for w in WINDOWS:
        fields += [
            Field(name=f"{noun}_{w}d", dtype=Int32),
            Field(name=f"clicks_{w}d", dtype=Int32),
            Field(name=f"ctr_{w}d", dtype=Float32),
        ]
    return fields + [
        Field(name=f"{noun}_total", dtype=Int32),
        Field(name="clicks_total", dtype=Int32),
        Field(name="ctr_total", dtype=Float32),
        Field(name="last_event_ts", dtype=UnixTimestamp),
    ]


item_text_embedding = FeatureView(
    name="item_text_embedding",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="model_id", dtype=String)],
    source=_source("item_text", EMBEDDINGS / "item_text"),
    tags={"embedding_set": EMBEDDING_SET},
    description="Language-model embedding of the item's templated text (L2-normalised).",
)

user_text_embedding = FeatureView(
    name="user_text_embedding",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="embedding", dtype=Array(Float32)),
        Field(name="model_id", dtype=String),
        Field(name="n_history", dtype=Int32),
    ],
    source=_source("user_text", EMBEDDINGS / "user_text"),
    tags={"embedding_set": EMBEDDING_SET},
    description="Embedding of the user's profile + titles of their latest clicks before each snapshot.",
)

user_history_embedding = FeatureView(
    name="user_history_embedding",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="embedding", dtype=Array(Float32)),
        Field(name="model_id", dtype=String),
        Field(name="n_clicks", dtype=Int32),
    ],
    source=_source("user_history", EMBEDDINGS / "user_history"),
    tags={"embedding_set": EMBEDDING_SET},
    description="Time-decayed mean of the item embeddings the user clicked before each snapshot.",
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=_counts("impressions"),
    source=_source("item_stats", FEATURES / "item_stats"),
    description="Impressions, clicks and CTR over trailing 1/7/30-day windows ending at each snapshot.",
)

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=_counts("events"),
    source=_source("user_stats", FEATURES / "user_stats"),
    description="The user's activity over trailing windows, totals, and the time of their last event.",
)

# The same numbers packed into one array per row (counts, CTRs, last event in days since the epoch; see
# llmfeat.stats.packed_columns): what rankers and the CTR model read. A view of its own, because an online
# read fetches every feature of a view: 100 items cost 100 stored values here instead of 1,700.
item_stats_packed = FeatureView(
    name="item_stats_packed",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[Field(name="packed", dtype=Array(Float32))],
    source=item_stats.batch_source,
    description="item_stats as one array per row, for low-latency ranking.",
)

user_stats_packed = FeatureView(
    name="user_stats_packed",
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[Field(name="packed", dtype=Array(Float32))],
    source=user_stats.batch_source,
    description="user_stats as one array per row.",
)

item_metadata = FeatureView(
    name="item_metadata",
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[
        Field(name="category", dtype=String),
        Field(name="subcategory", dtype=String),
        Field(name="primary_category", dtype=String),
        Field(name="n_tags", dtype=Int32),
    ],
    source=_source("item_meta", FEATURES / "item_meta"),
    description="Catalogue metadata.",
)

ranker = FeatureService(
    name="ranker",
    features=[
        user_text_embedding[["embedding", "model_id"]],
        user_history_embedding[["embedding", "n_clicks"]],
        user_stats_packed,
        item_text_embedding[["embedding"]],
        item_stats_packed,
    ],
    description="What one ranking call fetches for 1 user x N candidate items (see llmfeat.feature_vector).",
)

ctr_training = FeatureService(
    name="ctr_training",
    features=[
        user_text_embedding,
        user_history_embedding,
        item_text_embedding,
        user_stats_packed,
        item_stats_packed,
        item_metadata,
    ],
    description="Point-in-time features for CTR model training.",
)
