"""The embed and stats stages night after night compute only the users and items whose rows may move
(``embed._users_that_may_change``, ``stats._may_change``) and end with exactly the rows a fresh full run
computes: windows emptying, a new item, a late-arriving old event, untouched entities skipped."""

from __future__ import annotations

import datetime as dt
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmfeat.core.config import load_config
from llmfeat.data.ingest import run_ingest
from llmfeat.embedding import embed
from llmfeat.embedding.embed import embedding_paths, run_embed
from llmfeat.features import stats
from llmfeat.features.stats import run_stats, stat_columns, stats_paths
from tests.pit_runs import PIT, pit_overrides

pytestmark = pytest.mark.spark

NIGHTS = [dt.date(2024, 3, 5), dt.date(2024, 3, 6), dt.date(2024, 3, 7), dt.date(2024, 3, 8)]
EVENTS = [
    ("U1", "A", "2024-01-03T10:00:00Z", 1),  # A: January only, long before every night's windows
    ("U2", "A", "2024-01-04T10:00:00Z", 0),
    ("U1", "B", "2024-01-10T10:00:00Z", 1),  # B: old and recent events
    ("U3", "B", "2024-03-04T12:00:00Z", 1),
    ("U2", "B", "2024-03-06T09:00:00Z", 0),
    ("U3", "C", "2024-02-05T10:00:00Z", 1),  # C: leaves the 30-day window during the nights
    ("U4", "D", "2024-03-06T15:00:00Z", 1),  # D: a new item (listed from 2024-03-06)
    ("U4", "E", "2024-01-20T10:00:00Z", 0),  # E: January only ...
    ("U1", "B", "2024-03-07T11:00:00Z", 1),
]
LATE = ("U2", "E", "2024-01-25T10:00:00Z", 1)  # ... and an event of January that arrives before night 3


def _write_source(root, night: dt.date) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PIT / "mapping.yaml", root / "mapping.yaml")  # the tiny catalogue's columns, other rows
    items = [("A", "Alpha", "x", "2024-01-01T00:00:00Z"), ("B", "Beta", "x", "2024-01-01T00:00:00Z"),
             ("C", "Gamma", "y", "2024-01-01T00:00:00Z"), ("D", "Delta", "y", "2024-03-06T00:00:00Z"),
             ("E", "Epsilon", "y", "2024-01-01T00:00:00Z")]  # fmt: skip
    listed = [i for i in items if pd.Timestamp(i[3]) < pd.Timestamp(night, tz="UTC")]
    pd.DataFrame(listed, columns=["sku", "name", "dept", "modified"]).to_csv(root / "items.csv", index=False)
    users = [(f"U{i}", "job", "2024-01-01T00:00:00Z") for i in range(1, 5)]
    pd.DataFrame(users, columns=["uid", "job", "signup"]).to_csv(root / "users.csv", index=False)
    events = EVENTS + ([LATE] if night >= NIGHTS[2] else [])
    pd.DataFrame(events, columns=["uid", "sku", "ts", "clicked"]).to_csv(root / "events.csv", index=False)


def _latest(cfg, table: str, key: str) -> pd.DataFrame:
    """Each entity's latest stats row (its values as of the last snapshot), value columns only."""
    rows = pq.read_table(stats_paths(cfg.paths.data_dir).table(table)).to_pandas()
    rows = rows.sort_values(["event_timestamp", "created_timestamp"]).groupby(key).tail(1)
    noun = "impressions" if key == "item_id" else "events"
    return rows.set_index(key)[stat_columns(noun)].sort_index()


def _latest_users(cfg, table: str, cols: list[str]) -> pd.DataFrame:
    rows = pq.read_table(getattr(embedding_paths(cfg.paths.data_dir, "default"), table)).to_pandas()
    rows = rows.sort_values(["event_timestamp", "created_timestamp"]).groupby("user_id").tail(1)
    return rows.set_index("user_id")[cols].sort_index()


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory, request):
    """Night by night in one data directory (recording what each filter let through), and one fresh full run
    as of the last night in another."""
    base = tmp_path_factory.mktemp("incremental")
    nightly_cfg = load_config(None, pit_overrides(base / "nightly", base / "src" / "mapping.yaml"))
    computed: dict[dt.date, dict[str, set[str]]] = {}
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)

    def spy(module, name: str, night: dt.date) -> None:
        """Record the keys ``module.name`` lets through, under "users" (embed) or the stats key column."""
        original = getattr(module, name)

        def recorded(*args, **kwargs):
            active = original(*args, **kwargs)
            label = args[3] if module is stats else "users"  # stats: (entities, events, prev, key, ...)
            computed[night][label] = {r[0] for r in active.collect()}
            return active

        mp.setattr(module, name, recorded)

    for night in NIGHTS:
        computed[night] = {}
        mp.undo()
        spy(stats, "_may_change", night)
        spy(embed, "_users_that_may_change", night)
        _write_source(base / "src", night)
        run_ingest(nightly_cfg, night)
        run_embed(spark, nightly_cfg, night, log=lambda _: None)
        run_stats(spark, nightly_cfg, night, log=lambda _: None)
    mp.undo()
    full_cfg = load_config(None, pit_overrides(base / "full", base / "src" / "mapping.yaml"))
    run_ingest(full_cfg, NIGHTS[-1])
    run_embed(spark, full_cfg, NIGHTS[-1], log=lambda _: None)
    run_stats(spark, full_cfg, NIGHTS[-1], log=lambda _: None)
    return nightly_cfg, full_cfg, computed


def test_users_night_after_night_end_with_the_rows_of_a_full_run(runs):
    nightly_cfg, full_cfg, computed = runs
    for table, cols in (("user_text", ["content_hash", "n_history"]), ("user_history", ["n_clicks"])):
        pd.testing.assert_frame_equal(
            _latest_users(nightly_cfg, table, cols), _latest_users(full_cfg, table, cols)
        )
    got = _latest_users(nightly_cfg, "user_history", ["embedding"])["embedding"]
    want = _latest_users(full_cfg, "user_history", ["embedding"])["embedding"]
    for user in want.index:
        assert max(abs(a - b) for a, b in zip(got[user], want[user], strict=True)) < 1e-5, user
    # night 2 sees no new click, no new item: nobody is computed; night 3 the new item's clicker (U4) and the
    # late click (U2); night 4 the click of 03-07 (U1)
    assert computed[NIGHTS[0]] == {}  # the first night computes everyone (nothing to compare with)
    assert computed[NIGHTS[1]]["users"] == set()
    assert computed[NIGHTS[2]]["users"] == {"U2", "U4"}
    assert computed[NIGHTS[3]]["users"] == {"U1"}


@pytest.mark.parametrize(("table", "key"), [("item_stats", "item_id"), ("user_stats", "user_id")])
def test_night_after_night_ends_with_the_values_of_a_full_run(runs, table, key):
    nightly_cfg, full_cfg, _ = runs
    pd.testing.assert_frame_equal(_latest(nightly_cfg, table, key), _latest(full_cfg, table, key))


def test_only_entities_whose_values_may_move_are_computed(runs):
    nightly_cfg, _, computed = runs
    assert computed[NIGHTS[0]] == {}  # the first night computes everything (nothing to compare with)
    night2, night3 = computed[NIGHTS[1]]["item_id"], computed[NIGHTS[2]]["item_id"]
    assert "A" not in night2 and "E" not in night2  # untouched since January: skipped
    assert {"B", "C"} <= night2  # recent events, a window still to empty
    assert "D" in night3  # a new item (listed from night 3 on)
    assert "E" in night3 and "A" not in night3  # the late January event moved E's totals
    items = _latest(nightly_cfg, "item_stats", "item_id")
    assert items.loc["E", "impressions_total"] == 2 and items.loc["E", "clicks_total"] == 1
    assert items.loc["C", "impressions_30d"] == 0 and items.loc["C", "impressions_total"] == 1


def test_the_past_is_recounted_only_on_the_night_a_late_event_arrived(runs):
    """Nights 2 and 4 only appended events (ingest's append chain), so neither stage recounted the clicks
    before its last snapshot; night 3's late January event rewrote the snapshot, and both stages looked."""
    import json

    from llmfeat.core.changelog import events_appended_since

    nightly_cfg, _, _ = runs
    data_dir = nightly_cfg.paths.data_dir
    appended = [
        events_appended_since(data_dir, night, before)
        for before, night in zip(NIGHTS[:-1], NIGHTS[1:], strict=True)
    ]
    assert appended == [True, False, True]
    for manifests in (embedding_paths(data_dir, "default").manifests, stats_paths(data_dir).manifests):
        found = {}
        for f in manifests.glob("*.json"):
            m = json.loads(f.read_text())
            flag = m["snapshots"].get("past_events_unchanged", m.get("past_events_unchanged"))
            found[m["as_of"]] = flag
        assert [found[n.isoformat()] for n in NIGHTS] == [False, True, False, True], (manifests, found)


def _embed_manifests(cfg) -> dict[str, dict]:
    import json

    manifests = embedding_paths(cfg.paths.data_dir, "default").manifests
    return {m["as_of"]: m for m in (json.loads(f.read_text()) for f in manifests.glob("*.json"))}


def test_the_item_pass_runs_only_on_nights_the_catalogue_changed(runs):
    """Nights 2 and 4 saw the items of the night before (ingest's row digest): nothing rendered or encoded,
    the stored vectors pooled (the users' rows still equal a full run's: the test above). Night 3 lists D."""
    nightly_cfg, _, _ = runs
    items = {night: m["counts"]["items"] for night, m in _embed_manifests(nightly_cfg).items()}
    assert [bool(items[n.isoformat()].get("skipped")) for n in NIGHTS] == [False, True, False, True]
    assert items[NIGHTS[1].isoformat()] | {"skipped": None} == {
        "read": 0, "quarantined": 0, "unchanged": 4, "written": 0, "encoded": 0, "reused": 0, "truncated": 0,
        "skipped": None,
    }  # fmt: skip
    assert (
        items[NIGHTS[2].isoformat()]["written"] == 1 and items[NIGHTS[2].isoformat()]["read"] == 5
    )  # D only


def test_the_item_pass_is_skipped_only_for_the_same_items_template_and_encoder(runs):
    from llmfeat.core import tables

    nightly_cfg, _, _ = runs
    paths = embedding_paths(nightly_cfg.paths.data_dir, "default")
    last = _embed_manifests(nightly_cfg)[NIGHTS[-1].isoformat()]["item_pass"]
    after = NIGHTS[-1] + dt.timedelta(days=2)
    assert embed._items_unchanged_since(paths, after, last) == NIGHTS[-1]
    changed = {"items_digest": "0" * 16, "template": "{title}", "model_id": "other@0", "item_prompt": "query: ",
               "max_tokens": 16, "pooling": "cls", "dims": 128}  # fmt: skip
    for key, value in changed.items():
        assert embed._items_unchanged_since(paths, after, {**last, key: value}) is None, key
    assert embed._items_unchanged_since(paths, after, {**last, "items_digest": None}) is None  # no digest
    assert embed._items_unchanged_since(paths, NIGHTS[0], last) is None  # no run before the first night
    # item rows published after the last manifest (a run that died before writing it): not trusted
    stray = tables.snapshot_dir(paths.item_text, NIGHTS[-1] + dt.timedelta(days=1))
    stray.mkdir()
    try:
        assert embed._items_unchanged_since(paths, after, last) is None
    finally:
        stray.rmdir()


def test_stats_reads_its_tables_folds_and_on_appended_nights_the_trailing_windows_events(runs):
    """Every later night starts from each key's latest row kept folded (core.latest: the previous fold plus the
    partitions the last run published, not the whole change log); on a night that only appended events, stats
    scans only the row groups its trailing windows reach (tables.rows_from), on the late event's night all."""
    import json

    from llmfeat.core.costs import parquet_rows
    from llmfeat.core.tables import canonical_dir, rows_from, snapshot_dir

    nightly_cfg, _, _ = runs
    data_dir = nightly_cfg.paths.data_dir
    manifests = {
        m["as_of"]: m
        for m in (json.loads(f.read_text()) for f in stats_paths(data_dir).manifests.glob("*.json"))
    }
    for before, night in zip(NIGHTS[:-1], NIGHTS[1:], strict=True):
        m = manifests[night.isoformat()]
        # each run ends by folding in what it published, so the next one starts from the fold unchanged
        folds = m["change_log_folds"]
        assert {t: f["start"]["mode"] for t, f in folds.items()} == dict.fromkeys(folds, "unchanged"), night
        assert folds["item_stats"]["after"] == {"mode": "folded", "days": [night.isoformat()]}, night
        fold, tonight = _fold_rows(data_dir, "item_stats", night), _rows_of(data_dir, "item_stats", night)
        # the fold at the start, then the same fold and tonight's partition to fold them
        assert m["reads"]["change_log"]["item_stats"] == 2 * fold + tonight, night
        events = snapshot_dir(canonical_dir(data_dir, "interactions"), night)
        since = pd.Timestamp(before, tz="UTC")
        scanned = (
            rows_from(events, "event_ts", stats.window_start(since))
            if m["past_events_unchanged"]
            else parquet_rows(events)
        )
        assert m["reads"]["interactions"] == scanned, night
    first = manifests[NIGHTS[0].isoformat()]["change_log_folds"]
    assert {t: f["start"]["mode"] for t, f in first.items()} == dict.fromkeys(
        first, "unchanged"
    )  # nothing yet
    assert {t: f["after"]["mode"] for t, f in first.items()} == dict.fromkeys(first, "rebuilt")


def _rows_of(data_dir, table: str, night) -> int:
    from llmfeat.core.costs import parquet_rows
    from llmfeat.core.tables import snapshot_dir

    return parquet_rows(snapshot_dir(stats_paths(data_dir).table(table), night))


def _fold_rows(data_dir, table: str, before) -> int:
    """Keys with a row in the partitions before ``before`` (the fold's rows), counted with pandas."""
    rows = pq.read_table(stats_paths(data_dir).table(table)).to_pandas()
    return rows[pd.to_datetime(rows["snapshot_date"].astype(str)).dt.date < before]["item_id"].nunique()


def test_embed_reads_only_the_clicks_since_its_last_snapshot_on_appended_nights(runs):
    """Nights 2 and 4 only appended events and changed no item text: the users' pass starts from each user's
    prior state in their latest rows (recent_titles, pooled_norm) and scans only the clicks since the last
    snapshot; the first night and the late event's night read every click. That the rows then equal a fresh
    full run's (U1's night-4 vector continues a January history) is test_users_night_after_night_..."""
    from llmfeat.core.costs import parquet_rows
    from llmfeat.core.tables import canonical_dir, rows_from, snapshot_dir

    nightly_cfg, _, computed = runs
    manifests = _embed_manifests(nightly_cfg)
    how = [manifests[n.isoformat()]["snapshots"]["clicks_read"] for n in NIGHTS]
    assert how[1] == how[3] == "since the last snapshot", how
    assert how[0] == "all (not catching up)" and how[2] == "all (events before the last snapshot changed)", (
        how
    )
    assert computed[NIGHTS[3]]["users"] == {"U1"}
    for before, night in zip(NIGHTS[:-1], NIGHTS[1:], strict=True):
        events = snapshot_dir(canonical_dir(nightly_cfg.paths.data_dir, "interactions"), night)
        windowed = manifests[night.isoformat()]["snapshots"]["clicks_read"].startswith("since")
        expected = (
            rows_from(events, "event_ts", pd.Timestamp(before, tz="UTC"))
            if windowed
            else parquet_rows(events)
        )
        assert manifests[night.isoformat()]["reads"]["interactions"] == expected, night


def test_a_catching_up_night_reuses_vectors_from_each_keys_latest_text_not_every_stored_one(runs):
    """The first night renders every past snapshot's texts and pools every stored text (none yet); later nights
    catch up, render only the new snapshot times' texts and pool only each key's latest stored text (the
    folds): the text tables' reads are the fold at the start plus the fold and tonight's partition at the end,
    not the change log, which grows night by night."""
    nightly_cfg, _, _ = runs
    manifests = _embed_manifests(nightly_cfg)
    paths = embedding_paths(nightly_cfg.paths.data_dir, "default")
    for night in NIGHTS[1:]:
        reads = manifests[night.isoformat()]["reads"]["change_log"]
        for table, key in (("item_text", "item_id"), ("user_text", "user_id")):
            rows = pq.read_table(getattr(paths, table)).to_pandas()
            day = pd.to_datetime(rows["snapshot_date"].astype(str)).dt.date
            fold, tonight = rows[day < night][key].nunique(), int((day == night).sum())
            assert reads[table] == 2 * fold + tonight, (night, table)
            assert fold < int((day < night).sum()) or table == "item_text", (
                night,
                table,
            )  # the log is longer
