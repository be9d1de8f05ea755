"""Delivered event files (mapped ``interactions.files``, data/deliveries.py): a night reads only the files it
has not consumed, and every snapshot holds exactly the rows a full read of every file would give; whatever
could make an old event validate differently makes the night read every file, and says why."""

from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmfeat.core import tables
from llmfeat.core.config import load_config
from llmfeat.core.errors import InputError
from llmfeat.data.deliveries import STATE
from llmfeat.data.ingest import run_ingest

D0 = dt.date(2024, 3, 1)
FILES_MAPPING = """
items: {path: items.csv, id: sku, columns: {title: name}, updated_at: modified}
users: {path: users.csv, id: uid, columns: {occupation: job}, updated_at: signup}
interactions: {files: "events/*.csv", user_id: uid, item_id: sku, timestamp: ts, label: clicked}
"""
DUMP_MAPPING = FILES_MAPPING.replace('files: "events/*.csv"', "path: all_events.csv")
COLUMNS = ["uid", "sku", "ts", "clicked"]


def day(d: int) -> dt.date:
    return D0 + dt.timedelta(days=d)


def events_of(d: int, n: int = 5, minute: int = 0) -> list[tuple]:
    """n events stamped during day d, spread over users and items."""
    t0 = pd.Timestamp(day(d), tz="UTC") + pd.Timedelta(minutes=minute)
    return [(f"U{(d + k) % 4}", f"I{(2 * d + k) % 6}", (t0 + pd.Timedelta(hours=3 * k + 1)).isoformat(), k % 2)
            for k in range(n)]  # fmt: skip


class Landing:
    """A landing directory: the catalogue, delivered event files, and the same events as one dump."""

    def __init__(self, root):
        self.root = root
        (root / "events").mkdir(parents=True)
        (root / "files.yaml").write_text(FILES_MAPPING)
        (root / "dump.yaml").write_text(DUMP_MAPPING)
        self.items = [(f"I{i}", f"Item {i}", "2024-01-01T00:00:00Z") for i in range(6)]
        self.users = [(f"U{i}", "job", "2024-01-01T00:00:00Z") for i in range(4)]
        self.write_catalogue()

    def write_catalogue(self):
        pd.DataFrame(self.items, columns=["sku", "name", "modified"]).to_csv(
            self.root / "items.csv", index=False
        )
        pd.DataFrame(self.users, columns=["uid", "job", "signup"]).to_csv(
            self.root / "users.csv", index=False
        )

    def deliver(self, name: str, rows: list[tuple]):
        pd.DataFrame(rows, columns=COLUMNS).to_csv(self.root / "events" / name, index=False)
        every = [pd.read_csv(f) for f in sorted((self.root / "events").glob("*.csv"))]
        pd.concat(every).to_csv(self.root / "all_events.csv", index=False)


def cfg_for(data_dir, mapping):
    return load_config(
        None, [f"paths.data_dir={data_dir}", "ingest.source=mapped", f"ingest.source_path={mapping}"]
    )


def snapshot(cfg, name: str, night: dt.date) -> pd.DataFrame:
    frame = pq.read_table(
        tables.snapshot_dir(tables.canonical_dir(cfg.paths.data_dir, name), night)
    ).to_pandas()
    cols = [c for c in frame.columns if c not in ("_file", "_row", "_raw")]
    return frame[cols].sort_values(cols[:3]).reset_index(drop=True)


@pytest.fixture
def landing(tmp_path):
    return Landing(tmp_path / "landing")


def nights(landing, tmp_path, days: range, before=None):
    """Ingest each night from the files and, into another data directory, from the dump; compare."""
    files_cfg = cfg_for(tmp_path / "files", landing.root / "files.yaml")
    dump_cfg = cfg_for(tmp_path / "dump", landing.root / "dump.yaml")
    out = []
    for d in days:
        if before:
            before(d)
        got = run_ingest(files_cfg, day(d))
        run_ingest(dump_cfg, day(d))
        for name in ("interactions", "items", "users"):
            pd.testing.assert_frame_equal(snapshot(files_cfg, name, day(d)), snapshot(dump_cfg, name, day(d)))
        out.append(got)
    return out


def test_each_night_reads_only_the_new_file_and_equals_a_full_read(landing, tmp_path):
    def deliver(d):
        landing.deliver(
            f"{day(d - 1)}.csv", events_of(d - 1)
        )  # the previous day's events, delivered at midnight

    got = nights(landing, tmp_path, range(1, 6), before=deliver)
    assert got[0].deliveries == {
        "delivered": 1,
        "read": 1,
        "appended_to": None,
        "reason": "no earlier snapshot",
    }
    for k, r in enumerate(got[1:], start=2):
        assert r.deliveries == {
            "delivered": k,
            "read": 1,
            "appended_to": day(k - 1).isoformat(),
            "reason": None,
        }
        assert r.counts["interactions"]["read"] == 5  # one file's rows, not the history's
        assert r.writes["interactions"]["mode"] == "append" and r.writes["interactions"]["new_rows"] == 5


def test_a_file_with_rows_not_yet_visible_is_read_again_until_every_row_is_handled(landing, tmp_path):
    def deliver(d):
        if d == 1:  # one file spanning days 0-2: a third of it visible each night
            landing.deliver("batch.csv", events_of(0) + events_of(1) + events_of(2))
        else:
            landing.deliver(f"{day(d - 1)}.csv", events_of(d - 1, n=2, minute=30))

    got = nights(landing, tmp_path, range(1, 5), before=deliver)
    reads = [r.counts["interactions"]["read"] for r in got]
    # night 2: batch.csv again (its rows from day 1 on: 10) and day 1's file; night 3 the same from day 2 on;
    # night 4: batch.csv is complete, only day 3's file
    assert reads == [15, 10 + 2, 5 + 2, 2], reads
    assert [r.counts["interactions"]["kept"] for r in got] == [5, 5 + 2, 5 + 2, 2]
    state = tables.snapshot_dir(tables.canonical_dir(tmp_path / "files", "interactions"), day(4)) / STATE
    assert '"complete": true' in state.read_text() and '"complete": false' not in state.read_text()


@pytest.mark.parametrize("change", ["late event", "rewritten file", "item removed", "unknown user returns"])
def test_anything_that_could_change_an_old_event_reads_every_file_and_says_why(landing, tmp_path, change):
    def deliver(d):
        rows = events_of(d - 1)
        if d == 2 and change == "unknown user returns":
            rows = [
                *rows,
                ("U9", "I1", f"{day(d - 1)}T20:00:00+00:00", 1),
            ]  # U9 is not a user yet: quarantined
        landing.deliver(f"{day(d - 1)}.csv", rows)
        if d == 3:
            if change == "late event":
                landing.deliver(f"{day(d - 1)}-late.csv", [("U1", "I2", f"{day(0)}T23:00:00+00:00", 1)])
            elif change == "rewritten file":
                landing.deliver(f"{day(0)}.csv", events_of(0)[:3])
                os.utime(landing.root / "events" / f"{day(0)}.csv", ns=(1, 1))
            elif change == "item removed":  # its old events are now quarantined as unknown
                landing.items = [i for i in landing.items if i[0] != "I0"]
                landing.write_catalogue()
            else:
                landing.users.append(("U9", "job", "2024-01-01T00:00:00Z"))
                landing.write_catalogue()

    got = nights(landing, tmp_path, range(1, 5), before=deliver)
    third, fourth = got[2].deliveries, got[3].deliveries
    assert third["read"] == third["delivered"] and third["appended_to"] is None
    expected = {"late event": "late event in", "rewritten file": "changed", "item removed": "left the catalogue",
                "unknown user returns": "quarantined as unknown earlier are valid now"}[change]  # fmt: skip
    assert expected in third["reason"], third
    assert fourth["read"] == 1 and fourth["reason"] is None  # and then back to the new file only
    if change == "unknown user returns":
        assert got[1].counts["interactions"]["quarantined"] == 1


def test_files_need_the_catalogue_timestamps_their_defaults_would_read_from_the_history(landing, tmp_path):
    (landing.root / "files.yaml").write_text(FILES_MAPPING.replace(", updated_at: modified", ""))
    landing.deliver(f"{day(0)}.csv", events_of(0))
    with pytest.raises(InputError, match="interactions.files needs items.updated_at"):
        run_ingest(cfg_for(tmp_path / "files", landing.root / "files.yaml"), day(1))
