"""The canonical tables every loader produces and every later stage reads.

docs/data.md describes each column; keep the two in step.
"""

from __future__ import annotations

import pyarrow as pa

UTC_TS = pa.timestamp("us", tz="UTC")

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),  # null when another text field carries the item (description only)
        pa.field("description", pa.string()),
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("updated_at", UTC_TS, nullable=False),
        # when the item became (or becomes) available -- a film's release, a book's publication -- null when
        # unknown: catalogue metadata, not a version time (it may lie before, after or at updated_at)
        pa.field("released_at", UTC_TS),
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age", pa.int32()),
        pa.field("gender", pa.string()),
        pa.field("occupation", pa.string()),
        pa.field("location", pa.string()),
        pa.field("bio", pa.string()),
        pa.field("updated_at", UTC_TS, nullable=False),
    ]
)

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_ts", UTC_TS, nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("impression_id", pa.string()),
        pa.field("rating", pa.float32()),
        pa.field("dwell_s", pa.float32()),
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
    ]
)

CANONICAL = {"items": ITEMS, "users": USERS, "interactions": INTERACTIONS}
ALL_TABLES = {**CANONICAL, "quarantine": QUARANTINE}

# Text columns that feed the encoder; each is checked for encoding, control characters and size.
ITEM_TEXT_COLUMNS = ("title", "description", "category", "subcategory")
USER_TEXT_COLUMNS = ("gender", "occupation", "location", "bio")
