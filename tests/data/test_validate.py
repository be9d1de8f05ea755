"""Validation rules: every bad row lands in quarantine with its reason, every good row survives."""

import csv
from pathlib import Path

import pandas as pd
import pytest

from llmfeat.data.sources import load_source, mind
from llmfeat.data.sources.raw import RawTables
from llmfeat.data.validate import REASONS, validate

SNAPSHOT = pd.Timestamp("2024-02-01", tz="UTC")


def _expected(fixtures: Path) -> dict[tuple[str, int], str]:
    with (fixtures / "bad_rows" / "expected.csv").open() as fh:
        return {(r["file"], int(r["row"])): r["reason"] for r in csv.DictReader(fh)}


def test_bad_row_fixture_every_row_accounted_for(fixtures):
    raw = load_source("mapped", fixtures / "bad_rows" / "mapping.yaml", click_rating_threshold=4)
    out = validate(raw, snapshot_time=SNAPSHOT, max_text_chars=200)
    expected = _expected(fixtures)

    q = out.quarantine.to_pandas()
    got_bad = {
        (Path(f).name, r): reason
        for f, r, reason in zip(q["source_file"], q["row"], q["reason"], strict=True)
    }
    want_bad = {k: v for k, v in expected.items() if v not in ("OK", "NOT_YET_VISIBLE")}
    assert got_bad == want_bad

    # every good row survives: the kept rows are exactly the OK lines; rows after the snapshot are only counted
    kept = {
        "items.csv": out.items.num_rows,
        "users.csv": out.users.num_rows,
        "events.csv": out.interactions.num_rows,
    }
    tables = {"items.csv": "items", "users.csv": "users", "events.csv": "interactions"}
    for name, n in kept.items():
        assert n == sum(1 for (f, _), v in expected.items() if f == name and v == "OK")
        later = sum(1 for (f, _), v in expected.items() if f == name and v == "NOT_YET_VISIBLE")
        c = out.counts[tables[name]]
        assert c["not_yet_visible"] == later
        assert c["read"] == c["kept"] + c["quarantined"] + c["not_yet_visible"]
    assert out.counts["items"]["not_yet_visible"] == 2 and out.counts["interactions"]["not_yet_visible"] == 2
    # the newest duplicate wins
    items = out.items.to_pandas().set_index("item_id")
    assert items.loc["A1", "title"] == "Red kettle v2"
    assert set(REASONS) >= set(q["reason"])


def test_quarantine_keeps_undecodable_bytes_visible(fixtures):
    raw = load_source("mapped", fixtures / "bad_rows" / "mapping.yaml", click_rating_threshold=4)
    q = validate(raw, snapshot_time=SNAPSHOT, max_text_chars=200).quarantine.to_pandas()
    row = q[q["reason"] == "BAD_ENCODING"].iloc[0]
    assert "Caf\\xff\\xfe" in row["raw"] and "'title'" in row["detail"]


def test_mind_fixture_quarantine(fixtures):
    raw = mind.load(fixtures / "mind_small")
    out = validate(raw, snapshot_time=pd.Timestamp("2019-12-01", tz="UTC"), max_text_chars=1000)
    q = out.quarantine.to_pandas()
    got = sorted(zip(q["table"], q["row"], q["reason"], strict=True))
    assert got == sorted(
        [
            ("items", 6, "EMPTY_TEXT"),  # N6 has no text at all
            ("interactions", 3, "UNKNOWN_ITEM"),  # N6-0 shown, but N6 is quarantined
            ("interactions", 4, "BAD_LABEL"),  # N4-x
            ("interactions", 4, "UNKNOWN_ITEM"),  # history N9 not in news.tsv
            ("interactions", 5, "BAD_TIMESTAMP"),  # shown N3-0
            ("interactions", 5, "BAD_TIMESTAMP"),  # history N2
        ]
    )
    assert out.items.num_rows == 6 and out.users.num_rows == 4
    c = out.counts["interactions"]
    assert (c["read"], c["kept"], c["quarantined"]) == (19, 14, 5)


def _entities(**cols) -> RawTables:
    n = len(next(iter(cols.values())))
    base = {
        "_file": ["f"] * n,
        "_row": list(range(2, n + 2)),
        "_raw": ["r"] * n,
        "_reject": [None] * n,
        "_detail": [None] * n,
    }
    items = pd.DataFrame(
        {**base, "description": None, "category": None, "subcategory": None, "tags": None, **cols}
    )
    users = pd.DataFrame({**base, "user_id": ["u"] * n, "age": None, "gender": None, "occupation": None,
                          "location": None, "bio": None, "updated_at": cols["updated_at"]})  # fmt: skip
    inter = pd.DataFrame(
        columns=["user_id", "item_id", "event_ts", "label", "impression_id", "rating", "dwell_s", *base]
    )
    inter["_row"] = inter["_row"].astype("int64")
    return RawTables(items=items, users=users.iloc[:1], interactions=inter, notes={})


@pytest.mark.parametrize(
    "title, reason",
    [
        ("fine\ttabs\nand newlines", None),
        ("NUL\x00", "CONTROL_CHARS"),
        ("C1 \x85 control", "CONTROL_CHARS"),
        ("Unicode is fine: ñ 漢字 🙂", None),
        ("", "EMPTY_TEXT"),
        ("x" * 11, "TEXT_TOO_LONG"),
    ],
)
def test_text_rules(title, reason):
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    raw = _entities(item_id=["i1"], title=[title], updated_at=[ts])
    out = validate(raw, snapshot_time=SNAPSHOT, max_text_chars=10 if reason == "TEXT_TOO_LONG" else 100)
    reasons = list(out.quarantine.to_pandas()["reason"])
    assert reasons == ([reason] if reason else [])


def test_duplicate_tie_keeps_the_later_row():
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    raw = _entities(item_id=["i1", "i1"], title=["first", "second"], updated_at=[ts, ts])
    out = validate(raw, snapshot_time=SNAPSHOT, max_text_chars=100)
    assert out.items.column("title").to_pylist() == ["second"]
    q = out.quarantine.to_pandas()
    assert list(q["reason"]) == ["DUPLICATE_ID"] and list(q["row"]) == [2]


def _events(stamps: list[pd.Timestamp]) -> RawTables:
    """One valid item and user, and one valid click per timestamp."""
    raw = _entities(item_id=["i1"], title=["a title"], updated_at=[pd.Timestamp("2020-01-01", tz="UTC")])
    n = len(stamps)
    inter = pd.DataFrame({"user_id": ["u"] * n, "item_id": ["i1"] * n, "event_ts": pd.Series(stamps),
                          "label": [1] * n, "impression_id": [f"imp{i}" for i in range(n)], "rating": None,
                          "dwell_s": None, "_file": "e", "_row": list(range(2, n + 2)), "_raw": "r",
                          "_reject": None, "_detail": None})  # fmt: skip
    return RawTables(items=raw.items, users=raw.users, interactions=inter, notes={})


def test_backfill_rows_are_not_yet_visible_but_future_ones_are_quarantined():
    """A snapshot dated in the past (a backfill) counts the events after it as not yet visible, whatever the
    snapshot; an event stamped a year after the real wall clock is quarantined as FUTURE_TIMESTAMP."""
    now = pd.Timestamp.now(tz="UTC")
    snapshot = pd.Timestamp("2021-06-01", tz="UTC")
    stamps = [
        pd.Timestamp("2021-05-31 23:59:59", tz="UTC"),  # before the snapshot: kept
        snapshot,  # at the snapshot: not yet visible
        pd.Timestamp("2023-01-01", tz="UTC"),  # after the snapshot, before the clock: not yet visible
        now + pd.Timedelta(hours=1),  # within the default skew: not yet visible
        now + pd.Timedelta(days=365),  # a year after the wall clock: quarantined
    ]
    out = validate(_events(stamps), snapshot_time=snapshot, max_text_chars=100)
    assert out.interactions.column("impression_id").to_pylist() == ["imp0"]
    q = out.quarantine.to_pandas()
    assert list(q["reason"]) == ["FUTURE_TIMESTAMP"] and list(q["row"]) == [6]
    assert "wall clock" in q["detail"].iloc[0]
    c = out.counts["interactions"]
    assert (c["read"], c["kept"], c["quarantined"], c["not_yet_visible"]) == (5, 1, 1, 3)

    # the skew is configurable: with none, the row an hour ahead of the clock is suspicious too
    strict = validate(
        _events(stamps), snapshot_time=snapshot, max_text_chars=100, now=now, max_clock_skew_s=0
    )
    assert list(strict.quarantine.to_pandas()["row"]) == [5, 6]
    assert strict.counts["interactions"]["not_yet_visible"] == 2


def test_later_version_of_an_item_does_not_hide_the_visible_one():
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    later = pd.Timestamp("2024-03-01", tz="UTC")
    raw = _entities(item_id=["i1", "i1"], title=["visible", "not yet"], updated_at=[ts, later])
    out = validate(raw, snapshot_time=SNAPSHOT, max_text_chars=100, now=pd.Timestamp("2024-06-01", tz="UTC"))
    assert out.items.column("title").to_pylist() == ["visible"]
    assert out.quarantine.num_rows == 0 and out.counts["items"]["not_yet_visible"] == 1
