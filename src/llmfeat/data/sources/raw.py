"""What every loader hands to validation: canonical columns, not yet trusted, plus provenance.

Each raw frame has the canonical columns of its table (values may still be bad) and these extra columns:

- ``_file``: the source file, as given to the loader
- ``_row``: 1-based line number in a text file (the header, if any, is line 1), or 1-based row position in a
  Parquet file
- ``_raw``: the original record as text, so a quarantined row can be repaired and replayed
- ``_reject``: a reason code when the loader itself could not read the row (else None)
- ``_detail``: a human explanation for ``_reject``
- for timestamp columns ``<col>``, ``_<col>_raw`` holds the original value, so validation can tell a
  missing timestamp from an unparseable one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from llmfeat.core.errors import InputError  # noqa: F401 - re-exported

PROVENANCE = ("_file", "_row", "_raw", "_reject", "_detail")

# The columns a file loader's raw frames carry (the canonical ones, plus ``_event_ts_raw``).
ITEM_COLS = [
    "item_id",
    "title",
    "description",
    "category",
    "subcategory",
    "tags",
    "updated_at",
    "released_at",
]
USER_COLS = ["user_id", "age", "gender", "occupation", "location", "bio", "updated_at"]
INTER_COLS = [
    "user_id",
    "item_id",
    "event_ts",
    "_event_ts_raw",
    "label",
    "impression_id",
    "rating",
    "dwell_s",
]


@dataclass
class RawTables:
    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    notes: dict[str, int]
    """Loader-level counts worth reporting (e.g. MIND history rows folded into one interaction)."""


@dataclass(frozen=True)
class Record:
    row: int
    fields: list[str] | None
    raw: str
    reject: str | None = None
    detail: str | None = None


def read_delimited(
    path: Path,
    *,
    sep: str,
    n_fields: int,
    encoding: str = "utf-8",
    skip_header: bool = False,
    quoting: bool = False,
) -> Iterator[Record]:
    """Yield one Record per non-blank line.

    Bytes that do not decode survive as lone surrogates (``surrogateescape``) so validation can quarantine
    the row as BAD_ENCODING instead of the whole file failing. A line with the wrong number of fields is
    yielded with ``reject="MALFORMED_ROW"``.
    """
    text = path.read_bytes().decode(encoding, errors="surrogateescape")
    lines = text.splitlines()
    start = 1 if skip_header else 0
    if quoting:
        # csv's default limit (128 KiB a field) would crash on one long text: validation owns that rule
        # (TEXT_TOO_LONG, REPETITIVE_TEXT), with the row kept in the quarantine.
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
        reader = csv.reader(io.StringIO("\n".join(lines[start:])), delimiter=sep)
        # csv may join physical lines (quoted newlines); line_num tracks the physical position.
        for fields in reader:
            line_no = reader.line_num + start
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            raw = sep.join(fields)
            yield _record(line_no, fields, raw, n_fields)
        return
    for idx in range(start, len(lines)):
        line = lines[idx]
        if not line.strip():
            continue
        yield _record(idx + 1, line.split(sep), line, n_fields)


def _record(line_no: int, fields: list[str], raw: str, n_fields: int) -> Record:
    if len(fields) != n_fields:
        return Record(line_no, None, raw, "MALFORMED_ROW", f"expected {n_fields} fields, found {len(fields)}")
    return Record(line_no, fields, raw)


def read_header(path: Path, sep: str, encoding: str = "utf-8") -> list[str]:
    with path.open("rb") as fh:
        first = fh.readline().decode(encoding, errors="replace").rstrip("\r\n")
    return first.split(sep)


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what}: file {path} does not exist")
    return path


def require_columns(path: Path, found: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise InputError(
            f"{path}: missing required column {missing[0]!r}"
            + (f" (and {missing[1:]})" if missing[1:] else "")
            + f"; found columns {found}"
        )


def check_first_record(path: Path, records: list[Record], what: str) -> None:
    """A file whose first record already has the wrong shape is not this format at all: fail fast."""
    if records and records[0].reject == "MALFORMED_ROW":
        raise InputError(f"{path}: does not look like {what}: line {records[0].row}: {records[0].detail}")


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Build a raw frame with a stable column set even when ``rows`` is empty."""
    cols = list(columns) + [c for c in PROVENANCE if c not in columns]
    df = (
        pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    )
    df["_row"] = df["_row"].astype("int64")
    return df


def base(path: Path, rec: Record) -> dict:
    return {
        "_file": str(path),
        "_row": rec.row,
        "_raw": rec.raw,
        "_reject": rec.reject,
        "_detail": rec.detail,
    }


def record_json(values: dict) -> str:
    return json.dumps(values, default=str, ensure_ascii=False)


def parse_timestamps(raw: pd.Series, *, unit: str | None = None, fmt: str | None = None) -> pd.Series:
    """Parse to UTC; unparseable values become NaT (validation quarantines them, the raw value is kept)."""
    if unit is not None:
        numeric = pd.to_numeric(raw, errors="coerce")
        return pd.to_datetime(numeric, unit=unit, utc=True, errors="coerce")
    as_text = raw.astype("string").str.strip()
    if fmt is not None:
        return pd.to_datetime(as_text, format=fmt, utc=True, errors="coerce")
    return pd.to_datetime(as_text, utc=True, errors="coerce", format="ISO8601")


def blank_to_none(value: str | None) -> str | None:
    if value is None:
        return None
    return value if value.strip() else None
