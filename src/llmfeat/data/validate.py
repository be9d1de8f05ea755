"""Validation: split raw loader output into trusted canonical tables and a quarantine table.

Every row a loader produced ends in exactly one place: its canonical table, ``quarantine`` (with source
file, row number, reason code, detail and the raw record), or, when its timestamp is at or after the snapshot
time, nowhere yet: it is *not yet visible* (counted, left in the source for the night that will see it). Rules
are checked in the order of ``REASONS``; a row is quarantined for the first rule it breaks.

Not yet visible is not bad: a backfill (a snapshot dated before today) sees every later event that way. Such
rows are set aside before the rules run, so a snapshot dated D sees exactly the rows stamped before D, as the
night of D itself did, and their defects are reported by the night that sees them. A timestamp later than the
wall clock at validation (plus ``ingest.max_clock_skew_s``) cannot be a real event yet: it stays quarantined
as ``FUTURE_TIMESTAMP``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from llmfeat.data import schemas
from llmfeat.data.sources.raw import RawTables

REASONS: dict[str, str] = {
    "MALFORMED_ROW": "the line does not have the fields its format requires",
    "MISSING_ID": "the id (or a referenced id) is null or blank",
    "BAD_ENCODING": "bytes that do not decode in the file's encoding",
    "CONTROL_CHARS": "control characters (other than tab / newline) in a text field",
    "EMPTY_TEXT": "an item has no usable text: every text field is null, empty or whitespace only",
    "TEXT_TOO_LONG": "a text field is longer than ingest.max_text_chars",
    "REPETITIVE_TEXT": "a long text field is mostly one repeated pattern (e.g. one character a million times)",
    "MISSING_TIMESTAMP": "the timestamp is null or blank",
    "BAD_TIMESTAMP": "the timestamp does not parse",
    "FUTURE_TIMESTAMP": "the timestamp is later than the wall clock at ingest plus ingest.max_clock_skew_s",
    "BAD_LABEL": "the label (or the rating it derives from) is not valid",
    "DUPLICATE_ID": "an older version of an id that appears again (the newest updated_at is kept)",
    "DUPLICATE_EVENT": "an exact repeat of an interaction (user, item, time, impression)",
    "UNKNOWN_USER": "the interaction's user is not in the valid users table",
    "UNKNOWN_ITEM": "the interaction's item is not in the valid items table",
}

_SURROGATE = re.compile("[\udc80-\udcff]")
# C0 controls except \t \n \r, DEL, and C1 controls (what a mis-decoded Windows-1252 file leaves behind).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass
class Validated:
    items: pa.Table
    users: pa.Table
    interactions: pa.Table
    quarantine: pa.Table
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per table: read, kept, quarantined, and one entry per reason code seen."""


class _Verdicts:
    """First-failing-rule bookkeeping for one raw frame."""

    def __init__(self, df: pd.DataFrame):
        self.reason = df["_reject"].where(df["_reject"].notna(), None).astype(object)
        self.detail = df["_detail"].astype(object)

    def fail(self, mask: pd.Series, code: str, detail: pd.Series | str) -> None:
        assert code in REASONS, code
        new = mask.fillna(False).astype(bool) & self.reason.isna()
        if not new.any():
            return
        self.reason = self.reason.mask(new, code)
        detail_values = detail if isinstance(detail, pd.Series) else pd.Series(detail, index=mask.index)
        self.detail = self.detail.mask(new, detail_values)

    @property
    def ok(self) -> pd.Series:
        return self.reason.isna()


def _text(series: pd.Series) -> pd.Series:
    """String view of a column where lists (tags) are joined, so one regex checks them all."""
    return series.map(lambda v: " ".join(map(str, v)) if isinstance(v, list | tuple) else v).astype("string")


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype("string").str.strip() == "")


def _check_text(v: _Verdicts, df: pd.DataFrame, columns: list[str]) -> None:
    for code, pattern in (("BAD_ENCODING", _SURROGATE), ("CONTROL_CHARS", _CONTROL)):
        for col in columns:
            hit = _text(df[col]).str.contains(pattern, na=False)
            what = "undecodable bytes" if code == "BAD_ENCODING" else "control characters"
            v.fail(hit, code, f"column {col!r} has {what}")


def _check_length(v: _Verdicts, df: pd.DataFrame, columns: list[str], max_chars: int) -> None:
    for col in columns:
        length = _text(df[col]).str.len()
        v.fail(length > max_chars, "TEXT_TOO_LONG", f"column {col!r} is longer than {max_chars} characters")


REPETITIVE_MIN_CHARS = 1_000
REPETITIVE_MIN_RATIO = 20.0
"""A text of at least this many characters that zlib compresses more than this many times is degenerate:
natural language compresses 2-4x, one character repeated a million times about 1000x and tokenises to a
handful of [UNK] tokens, so its vector says nothing about the item."""


def repetition_ratio(text: str) -> float:
    """Length of ``text`` in UTF-8 over its zlib-compressed length (1 = incompressible)."""
    raw = text.encode("utf-8", "surrogateescape")
    return len(raw) / max(1, len(zlib.compress(raw, 1)))


def _check_repetitive(v: _Verdicts, df: pd.DataFrame, columns: list[str]) -> None:
    for col in columns:
        text = _text(df[col])
        long = text.str.len() >= REPETITIVE_MIN_CHARS
        if not long.fillna(False).any():
            continue
        ratio = text[long.fillna(False)].map(repetition_ratio)
        hit = pd.Series(False, index=df.index)
        hit.loc[ratio.index] = ratio > REPETITIVE_MIN_RATIO
        v.fail(hit, "REPETITIVE_TEXT", f"column {col!r} is long but mostly repetition "
               f"(compresses more than {REPETITIVE_MIN_RATIO:g}x): its tokens would carry no meaning")  # fmt: skip


def _check_timestamp(v: _Verdicts, df: pd.DataFrame, col: str, latest: pd.Timestamp) -> None:
    raw_col = f"_{col}_raw"
    missing = df[col].isna() & (_blank(df[raw_col]) if raw_col in df else True)
    v.fail(missing, "MISSING_TIMESTAMP", f"column {col!r} is empty")
    if raw_col in df:
        raw = df[raw_col].astype("string")
        v.fail(
            df[col].isna(),
            "BAD_TIMESTAMP",
            "column " + repr(col) + " = " + raw.fillna("") + " does not parse",
        )
    v.fail(
        df[col] > latest,
        "FUTURE_TIMESTAMP",
        f"column {col!r} is later than the wall clock plus the allowed skew ({latest.isoformat()})",
    )


def _set_aside(df: pd.DataFrame, col: str, snapshot_time: pd.Timestamp, latest: pd.Timestamp) -> pd.Series:
    """Rows whose timestamp is at or after the snapshot time but not past the clock: not yet visible to this
    snapshot (neither kept nor quarantined). A malformed line's fields cannot be trusted, its time neither."""
    ts = df[col]
    readable = df["_reject"].ne("MALFORMED_ROW") | df["_reject"].isna()
    return (readable & ts.notna() & (ts >= snapshot_time) & (ts <= latest)).fillna(False).astype(bool)


def _printable(value: object) -> str | None:
    """Text safe to store: undecodable bytes (kept as surrogates while reading) become \\xNN escapes."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _quarantine_rows(df: pd.DataFrame, v: _Verdicts, table: str) -> pd.DataFrame:
    bad = ~v.ok
    return pd.DataFrame(
        {
            "table": table,
            "source_file": df.loc[bad, "_file"].astype(str),
            "row": df.loc[bad, "_row"].astype("int64"),
            "reason": v.reason[bad].astype(str),
            "detail": v.detail[bad].map(_printable),
            "raw": df.loc[bad, "_raw"].map(_printable),
        }
    )


def _entities(
    df: pd.DataFrame, table: str, id_col: str, text_cols: tuple[str, ...], required_text: tuple[str, ...],
    max_chars: int, snapshot_time: pd.Timestamp, latest: pd.Timestamp,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:  # fmt: skip
    df = df.reset_index(drop=True).copy()
    later = _set_aside(df, "updated_at", snapshot_time, latest)
    df = df[~later].reset_index(drop=True)
    df[id_col] = df[id_col].map(lambda s: s.strip() if isinstance(s, str) else s)
    v = _Verdicts(df)
    v.fail(_blank(df[id_col]), "MISSING_ID", f"column {id_col!r} is empty")
    checked = [id_col, *text_cols] + (["tags"] if "tags" in df else [])
    _check_text(v, df, checked)
    if required_text:  # any one usable text field is enough: the embedded text is the rendered template
        present = [c for c in required_text if c in df]
        blank = pd.concat([_blank(_text(df[c])) for c in present], axis=1).all(axis=1)
        v.fail(blank, "EMPTY_TEXT", f"every text column ({', '.join(present)}) is empty")
    _check_length(v, df, checked, max_chars)
    _check_repetitive(v, df, checked)
    _check_timestamp(v, df, "updated_at", latest)
    if "_released_at_raw" in df and "released_at" in df:  # optional: only a value that does not parse fails
        raw = df["_released_at_raw"]
        v.fail(df["released_at"].isna() & ~_blank(raw), "BAD_TIMESTAMP",
               "column 'released_at' = " + raw.astype("string").fillna("") + " does not parse")  # fmt: skip

    # Duplicates among otherwise valid rows: the newest updated_at wins; on a tie, the later row.
    ok = df[v.ok].sort_values(["updated_at", "_row"])
    winners = ok.drop_duplicates(id_col, keep="last")
    losers = ok.index.difference(winners.index)
    winner_row = winners.set_index(id_col)["_row"]
    v.fail(
        pd.Series(df.index.isin(losers), index=df.index),
        "DUPLICATE_ID",
        df[id_col].map(
            lambda i: (
                f"{id_col} {i!r} appears again at row {winner_row.get(i)} with a newer or equal updated_at"
            )
        ),
    )
    return df[v.ok], _quarantine_rows(df, v, table), int(later.sum())


def _interactions(
    df: pd.DataFrame,
    item_ids: set[str],
    user_ids: set[str],
    snapshot_time: pd.Timestamp,
    latest: pd.Timestamp,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    df = df.reset_index(drop=True).copy()
    later = _set_aside(df, "event_ts", snapshot_time, latest)
    df = df[~later].reset_index(drop=True)
    for col in ("user_id", "item_id"):
        df[col] = df[col].map(lambda s: s.strip() if isinstance(s, str) else s)
    v = _Verdicts(df)
    v.fail(_blank(df["user_id"]), "MISSING_ID", "column 'user_id' is empty")
    v.fail(_blank(df["item_id"]), "MISSING_ID", "column 'item_id' is empty")
    _check_text(v, df, ["user_id", "item_id", "impression_id"])
    _check_timestamp(v, df, "event_ts", latest)
    v.fail(~df["label"].isin([0, 1]), "BAD_LABEL", "label is not 0 or 1")
    v.fail(
        ~df["user_id"].isin(user_ids),
        "UNKNOWN_USER",
        "user_id " + df["user_id"].astype(str) + " is not a valid user",
    )
    v.fail(
        ~df["item_id"].isin(item_ids),
        "UNKNOWN_ITEM",
        "item_id " + df["item_id"].astype(str) + " is not a valid item",
    )
    key = ["user_id", "item_id", "event_ts", "impression_id"]
    ok = df[v.ok]
    dup = ok.duplicated(key, keep="first")
    v.fail(
        pd.Series(df.index.isin(ok.index[dup]), index=df.index),
        "DUPLICATE_EVENT",
        "same user, item, time and impression as an earlier row",
    )
    return df[v.ok], _quarantine_rows(df, v, "interactions"), int(later.sum())


def _to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    out = pd.DataFrame({f.name: df[f.name] if f.name in df else None for f in schema})
    for f in schema:
        if pa.types.is_string(f.type):
            out[f.name] = out[f.name].map(
                lambda s: s.strip() if isinstance(s, str) else (None if pd.isna(s) else str(s))
            )
        elif pa.types.is_integer(f.type):
            out[f.name] = pd.to_numeric(out[f.name], errors="coerce").astype("Int64")
        elif pa.types.is_floating(f.type):
            out[f.name] = pd.to_numeric(out[f.name], errors="coerce")
        elif pa.types.is_list(f.type):
            out[f.name] = out[f.name].map(lambda v: list(v) if isinstance(v, list | tuple) else None)
        elif (
            pa.types.is_timestamp(f.type) and out[f.name].isna().all()
        ):  # an optional column no source filled
            out[f.name] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
    return pa.Table.from_pandas(out, schema=schema, preserve_index=False)


def _utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def validate(
    raw: RawTables,
    *,
    snapshot_time: pd.Timestamp,
    max_text_chars: int,
    now: pd.Timestamp | None = None,
    max_clock_skew_s: float = 86_400.0,
) -> Validated:
    """``now``: the wall clock (default: the current time); a timestamp later than ``now`` plus
    ``max_clock_skew_s`` is ``FUTURE_TIMESTAMP``, one at or after ``snapshot_time`` but not that late is
    counted as ``not_yet_visible`` in ``counts``."""
    snapshot_time = _utc(snapshot_time)
    latest = _utc(now if now is not None else pd.Timestamp.now(tz="UTC")) + pd.Timedelta(
        seconds=max_clock_skew_s
    )
    items, q_items, later_items = _entities(
        raw.items,
        "items",
        "item_id",
        schemas.ITEM_TEXT_COLUMNS,
        (*schemas.ITEM_TEXT_COLUMNS, "tags"),
        max_text_chars,
        snapshot_time,
        latest,
    )
    users, q_users, later_users = _entities(
        raw.users, "users", "user_id", schemas.USER_TEXT_COLUMNS, (), max_text_chars, snapshot_time, latest
    )
    inter, q_inter, later_inter = _interactions(
        raw.interactions, set(items["item_id"]), set(users["user_id"]), snapshot_time, latest
    )
    later = {"items": later_items, "users": later_users, "interactions": later_inter}
    inter = inter.sort_values(["event_ts", "user_id", "item_id"], kind="stable")

    quarantine = pd.concat([q_items, q_users, q_inter], ignore_index=True)
    counts: dict[str, dict[str, int]] = {}
    for name, raw_df, kept in (
        ("items", raw.items, items),
        ("users", raw.users, users),
        ("interactions", raw.interactions, inter),
    ):
        q = quarantine[quarantine["table"] == name]
        counts[name] = {
            "read": len(raw_df),
            "kept": len(kept),
            "quarantined": len(q),
            "not_yet_visible": later[name],
            **q["reason"].value_counts().to_dict(),
        }
    return Validated(
        items=_to_arrow(items, schemas.ITEMS),
        users=_to_arrow(users, schemas.USERS),
        interactions=_to_arrow(inter, schemas.INTERACTIONS),
        quarantine=_to_arrow(quarantine, schemas.QUARANTINE),
        counts=counts,
    )
