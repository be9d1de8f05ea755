"""Event deliveries: ingest reads only the event files it has not consumed yet.

A source whose events arrive as files in a landing directory (the mapped source's ``interactions.files``, a
glob) follows the usual landing-zone contract: each delivery is a new file, and a delivered file is never
rewritten. Ingest then need not read and validate the whole history every night. Each interactions snapshot
records, in ``_deliveries.json`` beside its part files, every file consumed so far (name, size, modification
time) and whether each was *complete*: every one of its rows was handled (appended, or quarantined) because
none was stamped at or after that snapshot's time. A later night reads

- the files not consumed yet, and
- the files consumed while incomplete (their rows stamped since the earlier snapshot's time are new now; the
  earlier rows were handled then and are dropped),

validates them against tonight's catalogue, and appends their rows to the earlier snapshot
(``tables.append_rows``). Anything that breaks the contract, or that could change how an old event validates,
makes the night read every file, as a full dump would be read, and says why (``Plan.reason``):

- a consumed file changed or went away;
- a new file holds a row stamped before the earlier snapshot's time (a late event: it belongs in the past,
  which an append cannot change);
- an item or user of the earlier snapshot is not in tonight's valid catalogue (its old events would now be
  quarantined as unknown);
- an id that an earlier night quarantined as an unknown user or item is valid tonight (those events would
  now be kept). The state keeps these ids, so the check costs the bad rows' number, not the history's.

Each night's quarantine snapshot then holds that night's quarantined rows; a full night's holds every one.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from llmfeat.core import tables

STATE = "_deliveries.json"


@dataclass
class Plan:
    """Which files tonight reads: ``files`` (incremental when ``base`` is set: the earlier snapshot the rows are
    appended to), or every file with ``reason`` saying why."""

    files: list[Path]
    base: dt.date | None = None
    reason: str | None = None
    reread: set[str] = field(default_factory=set)
    """Files consumed while incomplete: their rows stamped before ``base`` were handled then."""
    state: dict = field(default_factory=dict)
    """The earlier snapshot's delivery state."""


def fingerprint(path: Path) -> dict:
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_state(root: Path, day: dt.date) -> dict | None:
    path = tables.snapshot_dir(root, day) / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def plan(root: Path, snapshot_date: dt.date, files: list[Path]) -> Plan:
    """What tonight reads of ``files`` for snapshot ``snapshot_date`` of the interactions table at ``root``."""
    earlier = [d for d in tables.snapshot_dates(root) if d < snapshot_date]
    if not earlier:
        return Plan(files, reason="no earlier snapshot")
    base = earlier[-1]
    state = read_state(root, base)
    if state is None or tables.append_chain_from(root, base) is None:
        return Plan(files, reason=f"snapshot {base} has no delivery state")
    by_name = {f.name: f for f in files}
    for name, seen in state["files"].items():
        if name not in by_name:
            return Plan(files, reason=f"consumed file {name} went away")
        if fingerprint(by_name[name]) != {"size": seen["size"], "mtime_ns": seen["mtime_ns"]}:
            return Plan(files, reason=f"consumed file {name} changed")
    todo = [f for f in files if f.name not in state["files"] or not state["files"][f.name]["complete"]]
    reread = {f.name for f in todo if f.name in state["files"]}
    return Plan(todo, base=base, reread=reread, state=state)


def new_rows(p: Plan, inter: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The rows of an incremental plan's files that are new tonight (re-read files: those stamped since the
    base snapshot's time), or a reason to read everything (a new file's row stamped before it: a late event)."""
    cutoff = pd.Timestamp(p.base, tz="UTC")
    names = inter["_file"].map(lambda f: Path(f).name)
    reread = names.isin(p.reread)
    late = ~reread & (inter["event_ts"] < cutoff)
    if late.any():
        first = inter[late].iloc[0]
        return (
            inter,
            f"late event in {Path(first['_file']).name} row {first['_row']} (stamped {first['event_ts']})",
        )
    return inter[~reread | (inter["event_ts"] >= cutoff)].reset_index(drop=True), None


def catalogue_reason(
    root_items: Path, root_users: Path, base: dt.date, state: dict, items: set, users: set
) -> str | None:
    """Why an old event could validate differently tonight, or None: an entity of the base snapshot missing
    from tonight's valid catalogue, or an id quarantined earlier as unknown that is valid now."""
    for noun, root, valid in (("item", root_items, items), ("user", root_users, users)):
        before = pq.read_table(tables.snapshot_dir(root, base), columns=[f"{noun}_id"])[
            f"{noun}_id"
        ].to_pylist()
        gone = set(before) - valid
        if gone:
            return f"{len(gone)} {noun}(s) of snapshot {base} left the catalogue (e.g. {sorted(gone)[0]})"
        back = set(state.get("unknown", {}).get(noun, [])) & valid
        if back:
            return f"{len(back)} {noun} id(s) quarantined as unknown earlier are valid now (e.g. {sorted(back)[0]})"
    return None


def next_state(
    p: Plan, files: list[Path], inter: pd.DataFrame, unknown_now: dict[str, set], snapshot_date: dt.date
) -> dict:
    """The delivery state of tonight's snapshot: every file consumed so far (complete: none of its rows was set
    aside for a later night) and every id quarantined as an unknown user or item so far."""
    cutoff = pd.Timestamp(snapshot_date, tz="UTC")
    names = inter["_file"].map(lambda f: Path(f).name)
    pending = set(names[inter["event_ts"] >= cutoff])  # rows set aside for a later night
    consumed = dict(p.state.get("files", {})) if p.base is not None else {}
    for f in files:
        consumed[f.name] = {**fingerprint(f), "complete": f.name not in pending}
    earlier = p.state.get("unknown", {}) if p.base is not None else {}
    unknown = {
        noun: sorted(set(earlier.get(noun, [])) | unknown_now.get(noun, set())) for noun in ("item", "user")
    }
    return {"as_of": snapshot_date.isoformat(), "files": dict(sorted(consumed.items())), "unknown": unknown}
