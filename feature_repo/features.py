"""llmfeat's Feast feature repository: entities, sources, feature views and feature services in one file.

The tables are written by llmfeat's jobs (``llmfeat nightly``, or ``embed`` and ``stats``); each is a change
log partitioned by snapshot_date, so a point-in-time join picks each entity's latest row at or before the
entity timestamp. Feature values never expire (see NO_EXPIRY).

Where the tables are: ``llmfeat publish`` says so when it loads this file (it sets ``LLMFEAT_LOCATION``, a
(data directory, embedding set) pair, in the module's namespace before running it); the plain CLI reads
``$LLMFEAT_DATA_DIR`` (default: ``../var/data``, what ``make run`` writes) and the embedding set
``$LLMFEAT_EMBEDDING_SET`` (default: ``default``). ``llmfeat publish`` keeps a copy of this file
in each data directory (``<data_dir>/feast/features.py``, ``<data_dir>/feast/sets/<set>/features.py``); there
the defaults are that data directory and that set, so ``feast -c <data_dir>/feast apply`` works on any copy.
Switching rankers to another embedding set
(e.g. a fine-tuned model) is one setting: re-apply with ``LLMFEAT_EMBEDDING_SET=<set>`` (``llmfeat publish``
does it from ``embed.embedding_set``).

Feature order for rankers and the CTR job is fixed by the ``ranker`` and ``ctr_training`` services below.
Every name (entities, views, features, services, tables, stats windows) comes from ``llmfeat.feast.names``,
which llmfeat reads features by: this file needs llmfeat installed (the plain ``feast`` of llmfeat's venv).
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.types import Array, Float32, Int32, String, UnixTimestamp

from llmfeat.feast import names as n


def _default_location() -> tuple[Path, str]:
    """(data directory, embedding set) this file's place implies: the data directory it was published into,
    else the source tree's var/data."""
    here = Path(__file__).resolve().parent
    if here.name == "feast" and (here / "feature_store.yaml").is_file():
        return here.parent, "default"
    if here.parent.name == "sets" and here.parent.parent.name == "feast":
        return here.parent.parent.parent, here.name
    return here.parent / "var" / "data", "default"


def _location() -> tuple[Path, str]:
    given = globals().get("LLMFEAT_LOCATION")  # set by llmfeat's loader before this module runs
    if given:
        return Path(given[0]), given[1]
    data_dir, emb_set = _default_location()
    env = os.environ.get
    return Path(env("LLMFEAT_DATA_DIR") or data_dir), env("LLMFEAT_EMBEDDING_SET") or emb_set


DATA_DIR, EMBEDDING_SET = _location()
DATA_DIR = DATA_DIR.resolve()
EMBEDDINGS = DATA_DIR / "embeddings" / EMBEDDING_SET
FEATURES = DATA_DIR / "features"

# A ttl of 0 also means "never expires" for point-in-time joins, but makes `feast materialize-incremental`
# start one year before *now* on its first run, which skips older data. A century is explicit and safe.
NO_EXPIRY = timedelta(days=36_500)

user = Entity(name=n.USER, join_keys=[n.USER_KEY], value_type=ValueType.STRING, description="A user id")
item = Entity(name=n.ITEM, join_keys=[n.ITEM_KEY], value_type=ValueType.STRING, description="An item id")


def _source(name: str, path: Path) -> SparkSource:
    """The table's compact copy (a few files, not one per night; llmfeat.core.compact keeps it in step)."""
    return SparkSource(
        name=name,
        path=str(path / n.COMPACT_COPY),
        file_format="parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )


def _counts(noun: str) -> list[Field]:
    """The stats table's columns: counts Int32, CTRs Float32, the last event a timestamp."""

    def dtype(column: str):
        return UnixTimestamp if column == "last_event_ts" else Float32 if column.startswith("ctr_") else Int32

    return [Field(name=c, dtype=dtype(c)) for c in n.stat_columns(noun)]


item_text_embedding = FeatureView(
    name=n.ITEM_TEXT_VIEW,
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[Field(name=n.EMBEDDING, dtype=Array(Float32)), Field(name=n.MODEL_ID, dtype=String)],
    source=_source(n.ITEM_TEXT_TABLE, EMBEDDINGS / n.ITEM_TEXT_TABLE),
    tags={"embedding_set": EMBEDDING_SET},
    description="Language-model embedding of the item's templated text (L2-normalised).",
)

user_text_embedding = FeatureView(
    name=n.USER_TEXT_VIEW,
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(name=n.EMBEDDING, dtype=Array(Float32)),
        Field(name=n.MODEL_ID, dtype=String),
        Field(name=n.N_HISTORY, dtype=Int32),
    ],
    source=_source(n.USER_TEXT_TABLE, EMBEDDINGS / n.USER_TEXT_TABLE),
    tags={"embedding_set": EMBEDDING_SET},
    description="Embedding of the user's profile + titles of their latest clicks before each snapshot.",
)

user_history_embedding = FeatureView(
    name=n.USER_HISTORY_VIEW,
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[
        Field(name=n.EMBEDDING, dtype=Array(Float32)),
        Field(name=n.MODEL_ID, dtype=String),
        Field(name=n.N_CLICKS, dtype=Int32),
    ],
    source=_source(n.USER_HISTORY_TABLE, EMBEDDINGS / n.USER_HISTORY_TABLE),
    tags={"embedding_set": EMBEDDING_SET},
    description="Time-decayed mean of the item embeddings the user clicked before each snapshot.",
)

item_stats = FeatureView(
    name=n.ITEM_STATS_VIEW,
    entities=[item],
    ttl=NO_EXPIRY,
    schema=_counts(n.IMPRESSIONS),
    source=_source(n.ITEM_STATS_TABLE, FEATURES / n.ITEM_STATS_TABLE),
    description="Impressions, clicks and CTR over trailing 1/7/30-day windows ending at each snapshot.",
)

user_stats = FeatureView(
    name=n.USER_STATS_VIEW,
    entities=[user],
    ttl=NO_EXPIRY,
    schema=_counts(n.EVENTS),
    source=_source(n.USER_STATS_TABLE, FEATURES / n.USER_STATS_TABLE),
    description="The user's activity over trailing windows, totals, and the time of their last event.",
)

# The same numbers packed into one array per row (counts, CTRs, last event in days since the epoch; see
# llmfeat.features.stats.packed_columns): what rankers and the CTR model read. A view of its own, because an online
# read fetches every feature of a view: 100 items cost 100 stored values here instead of 1,700.
item_stats_packed = FeatureView(
    name=n.ITEM_STATS_PACKED_VIEW,
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[Field(name=n.PACKED, dtype=Array(Float32))],
    source=item_stats.batch_source,
    description="item_stats as one array per row, for low-latency ranking.",
)

user_stats_packed = FeatureView(
    name=n.USER_STATS_PACKED_VIEW,
    entities=[user],
    ttl=NO_EXPIRY,
    schema=[Field(name=n.PACKED, dtype=Array(Float32))],
    source=user_stats.batch_source,
    description="user_stats as one array per row.",
)

item_metadata = FeatureView(
    name=n.ITEM_METADATA_VIEW,
    entities=[item],
    ttl=NO_EXPIRY,
    schema=[Field(name=c, dtype=Int32 if c == "n_tags" else String) for c in n.METADATA],
    source=_source(n.ITEM_META_TABLE, FEATURES / n.ITEM_META_TABLE),
    description="Catalogue metadata.",
)

ranker = FeatureService(
    name=n.RANKER,
    features=[
        user_text_embedding[[n.EMBEDDING, n.MODEL_ID]],
        user_history_embedding[[n.EMBEDDING, n.N_CLICKS]],
        user_stats_packed,
        item_text_embedding[[n.EMBEDDING]],
        item_stats_packed,
    ],
    description="What one ranking call fetches for 1 user x N candidate items (see llmfeat.features.feature_vector).",
)

ctr_training = FeatureService(
    name=n.CTR_TRAINING,
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
