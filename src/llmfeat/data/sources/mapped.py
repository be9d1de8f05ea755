"""Any catalogue in Parquet or CSV/TSV, described by a YAML column mapping (no code needed).

Example (paths are relative to the mapping file; only ``items`` is required: without ``interactions`` the
catalogue alone is ingested, for content-based filtering)::

    items:
      path: catalog.csv            # .csv, .tsv or .parquet
      id: sku
      columns: {title: name, description: blurb, category: dept, subcategory: aisle, tags: labels}
      tags_separator: "|"          # when tags is one delimited string
      updated_at: modified         # omitted: the first interaction time (the epoch without interactions)
      released_at: launch_date     # optional: when the item became available (docs/data.md)
      timestamp_format: iso        # iso (default), unix_s, unix_ms, or a strptime format
    users:                         # omitted: one user per id seen in interactions, no profile
      path: users.parquet
      id: uid
      columns: {age: age, gender: sex, occupation: job, location: city, bio: about}
      updated_at: signup_ts
    interactions:                  # omitted: a catalogue alone (no users, no interactions)
      path: events.csv
      user_id: uid
      item_id: sku
      timestamp: ts
      label: clicked               # a 0/1 column, or instead:
      rating: stars                # label = rating >= click_rating_threshold
      impression_id: request_id    # optional
      dwell: dwell_seconds         # optional
      timestamp_format: iso

Instead of one ``path``, ``interactions`` may name ``files``, a glob relative to the mapping file (e.g.
``events/*.csv``): a landing directory where each delivery (a day's events, say) is a new file and a
delivered file is never rewritten. Ingest then reads only the files it has not consumed yet
(data/deliveries.py; docs/data.md); this needs ``items.updated_at`` and a ``users`` section with
``updated_at``, whose defaults would otherwise come from the whole event history.

Any other key, at the top level or inside a section, is refused (exit 3, naming the key and the file): a
typo such as ``upated_at`` would otherwise silently fall back to a default. So are a YAML syntax error
(naming the line) and an items file without a single data row.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from llmfeat.data.sources.raw import (
    PROVENANCE,
    InputError,
    RawTables,
    base,
    frame,
    parse_timestamps,
    read_delimited,
    read_header,
    record_json,
    require_columns,
    require_file,
)

ITEM_FIELDS = ("title", "description", "category", "subcategory", "tags")
USER_FIELDS = ("age", "gender", "occupation", "location", "bio")
INTERACTION_FIELDS = ("user_id", "item_id", "timestamp", "label", "rating", "impression_id", "dwell")

SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "items": ("path", "id", "columns", "tags_separator", "updated_at", "released_at", "timestamp_format"),
    "users": ("path", "id", "columns", "updated_at", "timestamp_format"),
    "interactions": ("path", "files", *INTERACTION_FIELDS, "timestamp_format"),
}
"""Every key a section may hold; anything else is refused (a typo must not fall back to a default)."""

CATALOGUE_ONLY_UPDATED_AT = pd.Timestamp(0, tz="UTC")
"""``updated_at`` of items when the mapping names no ``updated_at`` column and there are no interactions."""


def _unknown_key(mapping_path: Path, where: str, key: object, known: tuple[str, ...]) -> InputError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(f"{mapping_path}: unknown key {key!r} in {where}{hint}; known keys: {', '.join(known)}")


def read_spec(mapping_path: Path) -> dict:
    """The mapping as a dict, checked for YAML syntax and for keys that are not in ``SECTION_KEYS``."""
    require_file(mapping_path, "column mapping")
    try:
        spec = yaml.safe_load(mapping_path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{mapping_path}: not valid YAML{where}: {problem}") from exc
    if not isinstance(spec, dict):
        raise InputError(
            f"{mapping_path}: a mapping file has sections items: and optionally interactions: and users:"
        )
    for key in spec:
        if key not in SECTION_KEYS:
            raise _unknown_key(mapping_path, "the top level", key, tuple(SECTION_KEYS))
    if not isinstance(spec.get("items"), dict):
        raise InputError(f"{mapping_path}: missing section 'items'")
    for section, value in spec.items():
        if not isinstance(value, dict):
            raise InputError(f"{mapping_path}: section {section!r} must be a mapping of keys, got {value!r}")
        for key in value:
            if key not in SECTION_KEYS[section]:
                raise _unknown_key(mapping_path, f"section {section!r}", key, SECTION_KEYS[section])
    events = spec.get("interactions", {})
    if "files" in events:
        if "path" in events:
            raise InputError(f"{mapping_path}: interactions has both 'path' and 'files'; name one")
        if not spec["items"].get("updated_at") or not spec.get("users", {}).get("updated_at"):
            raise InputError(
                f"{mapping_path}: interactions.files needs items.updated_at and a users section with updated_at "
                "(their defaults come from the whole event history, which a night of new files does not read)"
            )
    return spec


def event_files(mapping_path: Path) -> list[Path] | None:
    """The delivered event files (``interactions.files``), in name order; None when the mapping names one
    ``path`` (or no interactions)."""
    mapping_path = Path(mapping_path)
    events = read_spec(mapping_path).get("interactions", {})
    if "files" not in events:
        return None
    return sorted(p for p in mapping_path.parent.glob(events["files"]) if p.is_file())


def load(
    mapping_path: Path, *, click_rating_threshold: float = 4.0, files: list[Path] | None = None
) -> RawTables:
    """``files``: with ``interactions.files``, the delivered files to read (None: every one)."""
    mapping_path = Path(mapping_path)
    spec = read_spec(mapping_path)
    root = mapping_path.parent

    if "interactions" in spec:
        sec = spec["interactions"]
        if "files" in sec:
            chosen = event_files(mapping_path) if files is None else files
            parts = [
                _interactions(root, {**sec, "path": f}, mapping_path, click_rating_threshold) for f in chosen
            ]
            inter = pd.concat(parts, ignore_index=True) if parts else _no_interactions()
        else:
            inter = _interactions(root, sec, mapping_path, click_rating_threshold)
        first_event = inter["event_ts"].min()
    else:  # a catalogue alone
        inter = _no_interactions()
        first_event = CATALOGUE_ONLY_UPDATED_AT
    items = _entities(root, spec["items"], mapping_path, "items", "item_id", ITEM_FIELDS, first_event)
    if "users" in spec:
        if "interactions" not in spec and not spec["users"].get("updated_at"):
            # the epoch would make embed back-fill weekly user snapshots from 1970
            raise InputError(
                f"{mapping_path}: users needs 'updated_at' when there is no interactions section"
            )
        users = _entities(root, spec["users"], mapping_path, "users", "user_id", USER_FIELDS, first_event)
        users["age"] = pd.to_numeric(users["age"], errors="coerce")
    else:
        users = _users_from_interactions(inter)
    notes = {} if "interactions" in spec else {"no interactions section: catalogue only, items": len(items)}
    return RawTables(items=items, users=users, interactions=inter, notes=notes)


def _no_interactions() -> pd.DataFrame:
    df = frame([], ["user_id", "item_id", "label", "rating", "impression_id"])
    df["_event_ts_raw"] = pd.Series(dtype=object)
    df["event_ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    df["dwell_s"] = pd.Series(dtype="float64")
    df["label"] = df["label"].astype("Int8")
    df["rating"] = pd.Series(dtype="float64")
    return df


def _read(
    root: Path, section: dict, mapping_path: Path, name: str, needed: list[str]
) -> tuple[Path, list[dict]]:
    """Rows of one mapped file as dicts of source column -> value, each with provenance."""
    if "path" not in section:
        raise InputError(f"{mapping_path}: section {name!r} has no 'path'")
    path = require_file(root / section["path"], f"{name} (from {mapping_path})")
    suffix = path.suffix.lower()
    rows: list[dict] = []
    if suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
        require_columns(path, table.column_names, needed)
        for i, rec in enumerate(table.to_pylist(), start=1):
            rows.append(
                {
                    "_file": str(path),
                    "_row": i,
                    "_raw": record_json(rec),
                    "_reject": None,
                    "_detail": None,
                    **rec,
                }
            )
        return path, rows
    if suffix not in (".csv", ".tsv"):
        raise InputError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")
    sep = "\t" if suffix == ".tsv" else ","
    header = [h.strip() for h in read_header(path, sep)]
    require_columns(path, header, needed)
    for rec in read_delimited(path, sep=sep, n_fields=len(header), skip_header=True, quoting=True):
        values: dict[str, Any] = dict(zip(header, rec.fields, strict=True)) if rec.fields else {}
        rows.append({**base(path, rec), **{k: (v if v != "" else None) for k, v in values.items()}})
    return path, rows


def _timestamps(raw: pd.Series, fmt: str | None) -> pd.Series:
    if fmt in (None, "iso"):
        return parse_timestamps(raw)
    if fmt == "unix_s":
        return parse_timestamps(raw, unit="s")
    if fmt == "unix_ms":
        return parse_timestamps(raw, unit="ms")
    return parse_timestamps(raw, fmt=fmt)


def _interactions(root: Path, sec: dict, mapping_path: Path, threshold: float) -> pd.DataFrame:
    for key in ("user_id", "item_id", "timestamp"):
        if key not in sec:
            raise InputError(f"{mapping_path}: interactions needs {key!r} (the source column name)")
    if "label" not in sec and "rating" not in sec:
        raise InputError(f"{mapping_path}: interactions needs 'label' (0/1 column) or 'rating'")
    cols = {k: sec[k] for k in INTERACTION_FIELDS if sec.get(k)}
    path, rows = _read(root, sec, mapping_path, "interactions", list(cols.values()))
    out = []
    for r in rows:
        row = {k: r[k] for k in PROVENANCE}
        for canon, src in cols.items():
            row[canon] = r.get(src)
        out.append(row)
    df = frame(out, ["user_id", "item_id", "timestamp", "label", "rating", "impression_id", "dwell"])
    df["_event_ts_raw"] = df["timestamp"]
    df["event_ts"] = _timestamps(df["timestamp"], sec.get("timestamp_format"))
    df["rating"] = pd.to_numeric(df["rating"], errors="coerce")
    df["dwell_s"] = pd.to_numeric(df["dwell"], errors="coerce")
    if "label" in cols:
        label = pd.to_numeric(df["label"], errors="coerce")
        bad = ~label.isin([0, 1])
        detail = f"label column {cols['label']!r} is not 0 or 1"
    else:
        label = (df["rating"] >= threshold).astype("float").where(df["rating"].notna())
        bad = label.isna()
        detail = f"rating column {cols['rating']!r} is missing or not a number"
    df["label"] = label.where(~bad).astype("Int8")
    flag = bad & df["_reject"].isna()
    df.loc[flag, "_reject"] = "BAD_LABEL"
    df.loc[flag, "_detail"] = detail
    for c in ("user_id", "item_id", "impression_id"):
        df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return df.drop(columns=["timestamp", "dwell"])


def _entities(
    root: Path,
    sec: dict,
    mapping_path: Path,
    name: str,
    id_col: str,
    fields: tuple[str, ...],
    default_ts: Any,
) -> pd.DataFrame:
    if "id" not in sec:
        raise InputError(f"{mapping_path}: section {name!r} needs 'id' (the source column name)")
    columns = sec.get("columns") or {}
    unknown = set(columns) - set(fields)
    if unknown:
        raise InputError(
            f"{mapping_path}: {name}.columns has unknown target(s) {sorted(unknown)}; known: {list(fields)}"
        )
    if name == "items" and not any(columns.get(f) for f in ITEM_FIELDS):
        raise InputError(f"{mapping_path}: items.columns must map at least one of {list(ITEM_FIELDS)}")
    needed = [sec["id"], *[c for c in columns.values() if c]] + [
        sec[k] for k in ("updated_at", "released_at") if sec.get(k)
    ]
    path, rows = _read(root, sec, mapping_path, name, needed)
    if name == "items" and not rows:
        raise InputError(f"{path}: the items file has no data rows (from {mapping_path}); nothing to ingest")
    out = []
    for r in rows:
        row = {k: r[k] for k in PROVENANCE}
        row[id_col] = None if r.get(sec["id"]) is None else str(r.get(sec["id"]))
        for canon in fields:
            src = columns.get(canon)
            row[canon] = r.get(src) if src else None
        row["_updated_at_raw"] = r.get(sec["updated_at"]) if sec.get("updated_at") else None
        if sec.get("released_at"):
            row["_released_at_raw"] = r.get(sec["released_at"])
        out.append(row)
    df = frame(
        out, [id_col, *fields, "_updated_at_raw"] + (["_released_at_raw"] if sec.get("released_at") else [])
    )
    if sec.get("updated_at"):
        df["updated_at"] = _timestamps(df["_updated_at_raw"], sec.get("timestamp_format"))
    else:
        df["updated_at"] = default_ts
        df = df.drop(columns=["_updated_at_raw"])
    if sec.get("released_at"):  # an unreadable value is quarantined by validation (BAD_TIMESTAMP)
        df["released_at"] = _timestamps(df["_released_at_raw"], sec.get("timestamp_format"))
    if "tags" in fields:
        sep = sec.get("tags_separator", "|")
        df["tags"] = df["tags"].map(lambda v: _tags(v, sep))
    return df


def _tags(value: Any, sep: str) -> list[str] | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    parts = list(value) if isinstance(value, list | tuple) else str(value).split(sep)
    parts = [str(p).strip() for p in parts if str(p).strip()]
    return parts or None


def _users_from_interactions(inter: pd.DataFrame) -> pd.DataFrame:
    ok = inter[inter["event_ts"].notna() & inter["user_id"].notna()].sort_values(["event_ts", "_row"])
    first = ok.drop_duplicates("user_id")
    # .array, not .values: .values drops the UTC time zone validation compares against
    users = pd.DataFrame(
        {"user_id": first["user_id"].values, "updated_at": first["event_ts"].array, "_file": first["_file"].values,
         "_row": first["_row"].values, "_raw": first["user_id"].values, "_reject": None, "_detail": None}
    )  # fmt: skip
    for col in USER_FIELDS:
        users[col] = None
    return users
