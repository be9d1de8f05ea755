"""Backfills: a run for an earlier date is not bad data, keeps its artefacts in its data directory, and never
moves what is served (online store, index, models) back in time."""

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmfeat.cli import Exit, app

runner = CliRunner()


def _summary(data_dir: Path, day: str) -> dict:
    return json.loads((data_dir / "runs" / day / "summary.json").read_text())


def test_demo_backfill_is_not_bad_data(tmp_path, movielens_dir, monkeypatch):
    """`llmfeat nightly --as-of 1998-03-15` on the demo data: the events after that date are not yet visible,
    not quarantined, and the run exits 0. (--until ingest: the later stages do not decide the exit code, and
    the whole nightly takes minutes; BENCHMARKS-style full runs are recorded in the report of issue 18.)"""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["nightly", "--as-of", "1998-03-15", "--until", "ingest", "--data-dir", "D",
                              "--set", f"ingest.source_path={movielens_dir}"])  # fmt: skip
    assert res.exit_code == Exit.OK, res.output
    data_dir = (tmp_path / "D").resolve()
    summary = _summary(data_dir, "1998-03-15")
    assert summary["quarantined"] == 0 and summary["not_yet_visible"] > 0
    assert summary["data_dir"] == str(data_dir)  # absolute, though --data-dir was relative
    ingest = summary["stages"][0]["summary"]
    counts = ingest["counts"]["interactions"]
    assert counts["read"] == 100_000 and counts["kept"] + counts["not_yet_visible"] == 100_000
    assert all(Path(p).is_absolute() and Path(p).is_relative_to(data_dir) for p in ingest["outputs"].values())
    quarantine = pq.read_table(data_dir / "canonical" / "quarantine" / "snapshot_date=1998-03-15")
    assert quarantine.num_rows == 0
    kept = pq.read_table(data_dir / "canonical" / "interactions" / "snapshot_date=1998-03-15").to_pandas()
    assert kept["event_ts"].max() < pd.Timestamp("1998-03-15", tz="UTC")
    assert f"not yet visible: {summary['not_yet_visible']} row(s)" in res.output

    # a rating stamped a year after the wall clock is still suspicious: quarantined, exit 4
    source = shutil.copytree(movielens_dir, tmp_path / "ml-100k-future")
    stamp = int(time.time()) + 365 * 86400
    with (source / "ml-100k.inter").open("a") as fh:
        fh.write(f"196\t242\t5\t{stamp}\n")
    res = runner.invoke(app, ["nightly", "--as-of", "1998-03-15", "--until", "ingest", "--data-dir", "F",
                              "--set", f"ingest.source_path={source}"])  # fmt: skip
    assert res.exit_code == Exit.QUARANTINED, res.output
    q = pq.read_table(tmp_path / "F" / "canonical" / "quarantine" / "snapshot_date=1998-03-15").to_pandas()
    assert list(q["reason"]) == ["FUTURE_TIMESTAMP"] and q["row"].iloc[0] == 100_002  # header is line 1
    assert _summary(tmp_path / "F", "1998-03-15")["not_yet_visible"] == summary["not_yet_visible"]


# --- a small catalogue through the whole nightly, training included ---------------------------------------

DAY1, DAY2 = dt.date(2024, 1, 15), dt.date(2024, 1, 22)
MAPPING = """\
items: {path: items.csv, id: sku, columns: {title: name, category: dept}, updated_at: modified}
users: {path: users.csv, id: uid, columns: {occupation: job}, updated_at: signup}
interactions: {path: events.csv, user_id: uid, item_id: sku, timestamp: ts, label: clicked}
"""


def _catalogue(root: Path) -> Path:
    """40 items, 20 users, 700 events over three weeks; later clicks lean on other items than earlier ones,
    so a user's stats and history differ between DAY1 and DAY2."""
    rng = np.random.default_rng(18)
    root.mkdir()
    depts = ["kitchen", "garden", "books", "toys"]
    nouns = ["kettle", "spade", "novel", "puzzle", "lamp", "atlas", "rake", "robot"]
    items = pd.DataFrame({
        "sku": [f"I{i:02d}" for i in range(40)] + ["I05"],
        "name": [f"{rng.choice(['Red', 'Blue', 'Old', 'New'])} {nouns[i % 8]} {i}" for i in range(40)]
        + ["Renamed golden kettle"],  # a new text between DAY1 and DAY2: a new vector in DAY2's partition
        "dept": [depts[i % 4] for i in range(40)] + ["kitchen"],
        "modified": ["2024-01-01T00:00:00Z"] * 40 + ["2024-01-18T00:00:00Z"],
    })  # fmt: skip
    users = pd.DataFrame({"uid": [f"U{u:02d}" for u in range(20)],
                          "job": [["chef", "artist", "pilot"][u % 3] for u in range(20)],
                          "signup": "2024-01-01T00:00:00Z"})  # fmt: skip
    start = pd.Timestamp("2024-01-01", tz="UTC")
    offsets = np.sort(rng.uniform(0, 21 * 86400, 700))
    ts = start + pd.to_timedelta(offsets, unit="s")
    user = rng.integers(0, 20, 700)
    item = np.where(offsets < 14 * 86400, rng.integers(0, 20, 700), rng.integers(20, 40, 700))
    clicked = (rng.random(700) < 0.2 + 0.4 * ((user + item) % 3 == 0)).astype(int)
    events = pd.DataFrame({"uid": [f"U{u:02d}" for u in user], "sku": [f"I{i:02d}" for i in item],
                           "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "clicked": clicked})  # fmt: skip
    items.to_csv(root / "items.csv", index=False)
    users.to_csv(root / "users.csv", index=False)
    events.to_csv(root / "events.csv", index=False)
    (root / "mapping.yaml").write_text(MAPPING)
    return root / "mapping.yaml"


def _overrides(data_dir: str, mapping: Path) -> list[str]:
    return [f"paths.data_dir={data_dir}", "ingest.source=mapped", f"ingest.source_path={mapping}",
            f"feast.repo_path={Path(__file__).resolve().parents[1] / 'feature_repo'}",
            "spark.master=local[2]", "spark.shuffle_partitions=2", "embed.backfill_every_days=7",
            "train.min_interactions=100", "train.protocols=[temporal]", "train.models=[popularity, lr_lm]",
            "train.epochs=2"]  # fmt: skip


def _online(cfg) -> dict:
    """Every user's and item's online values, as a ranker reads them (Feast get_online_features)."""
    from llmfeat.features.publish import open_store

    store = open_store(cfg)
    users = [f"U{u:02d}" for u in range(20)]
    items = [f"I{i:02d}" for i in range(40)]
    out = store.get_online_features(
        features=["user_stats:clicks_total", "user_stats:last_event_ts", "user_history_embedding:n_clicks",
                  "user_history_embedding:embedding"], entity_rows=[{"user_id": u} for u in users],
        full_feature_names=True,
    ).to_dict()  # fmt: skip
    out |= store.get_online_features(
        features=["item_stats:clicks_total", "item_stats:last_event_ts", "item_text_embedding:embedding"],
        entity_rows=[{"item_id": i} for i in items], full_feature_names=True,
    ).to_dict()  # fmt: skip
    return out


@pytest.mark.spark
@pytest.mark.slow
def test_backfill_after_a_later_night_keeps_what_is_served(spark, tmp_path, monkeypatch):
    """Two data dirs run from one working directory keep their reports apart; a backfill of an earlier date
    after a later one leaves the online store's newer values, the current index and the current models."""
    from llmfeat.core.config import load_config
    from llmfeat.features.publish import run_publish
    from llmfeat.nightly import current_models_as_of, run_nightly, served_index

    mapping = _catalogue(tmp_path / "source")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    quiet = lambda _m: None  # noqa: E731
    cfg_a, cfg_b = (load_config(None, _overrides(name, mapping)) for name in ("A", "B"))  # relative data dirs

    night = run_nightly(cfg_a, DAY2, log=quiet)
    assert night.quarantined == 1 and night.not_yet_visible == 0  # I05's first version: DUPLICATE_ID
    trained = next(r.summary for r in night.results if r.stage == "train")
    report_a = Path(trained["report"])
    assert report_a.is_absolute() and report_a.is_relative_to(cwd / "A" / "reports") and report_a.is_file()
    before = _online(cfg_a)
    assert max(before["user_stats__clicks_total"]) > 0 and max(before["user_history_embedding__n_clicks"]) > 0
    index_before, models_before = served_index(cfg_a), current_models_as_of(cfg_a)
    assert index_before[1] == DAY2 and models_before == DAY2

    backfill = run_nightly(cfg_a, DAY1, log=quiet)
    assert backfill.quarantined == 0 and backfill.not_yet_visible > 0  # I05's new version is not visible yet
    stages = {r.stage: r for r in backfill.results}
    assert all(r.status == "done" for r in backfill.results)
    assert set(stages["publish"].summary["kept_newer"]) == set(stages["publish"].summary["feature_views"])
    assert stages["index"].summary == {"version": index_before[0], "kept_newer": DAY2.isoformat()}
    assert stages["train"].summary["trained"] is False and "backfill" in stages["train"].summary["reason"]
    assert _online(cfg_a) == before
    assert served_index(cfg_a) == index_before and current_models_as_of(cfg_a) == DAY2

    # the guard is needed: an unguarded materialisation up to DAY1 writes the older rows over the newer ones
    # (Feast's SQLite store upserts whatever it is given); a forced publish of the backfill date does not
    forced = run_publish(cfg_a, DAY1, full=True, log=quiet)
    assert forced["full_materialization"] == [] and _online(cfg_a) == before
    from llmfeat.features.publish import EPOCH, open_store

    store = open_store(cfg_a)
    end = dt.datetime.combine(DAY1, dt.time(0), tzinfo=dt.UTC)
    store.materialize(start_date=EPOCH, end_date=end, feature_views=["user_stats"])
    older = _online(cfg_a)
    assert older["user_stats__clicks_total"] != before["user_stats__clicks_total"]  # what the guard prevents
    # the backfill kept the later nights' offline rows (I05's DAY2 text among them): republishing DAY2 in full
    # gives back exactly what was served
    run_publish(cfg_a, DAY2, full=True, log=quiet)
    assert _online(cfg_a) == before

    # a second data dir from the same working directory: its own report, none of A's
    other = run_nightly(cfg_b, DAY2, log=quiet)
    report_b = Path(next(r.summary for r in other.results if r.stage == "train")["report"])
    assert report_b.is_file() and report_b.is_relative_to(cwd / "B" / "reports")
    assert {p.parent.name for p in (cwd / "A" / "reports").glob("*/report.md")} == {report_a.parent.name}
    assert {p.parent.name for p in (cwd / "B" / "reports").glob("*/report.md")} == {report_b.parent.name}
    assert sorted(os.listdir(cwd)) == ["A", "B"]  # nothing of either run outside its data directory


def test_a_run_supersedes_partitions_up_to_its_date_only(tmp_path):
    """Change-log partitions a run did not produce are removed from its first day to its as-of date; later
    ones (written by later nights, seen by a backfill) stay."""
    from llmfeat.core.changelog import publish_partitions

    target, produced = tmp_path / "table", tmp_path / "run"
    for day in ("2024-01-10", "2024-01-15", "2024-01-22"):
        (target / f"snapshot_date={day}").mkdir(parents=True)
        (target / f"snapshot_date={day}" / "part-0.parquet").write_text(f"old {day}")
    (produced / "snapshot_date=2024-01-12").mkdir(parents=True)
    (produced / "snapshot_date=2024-01-12" / "part-0.parquet").write_text("new")
    publish_partitions(produced, target, dt.date(2024, 1, 12), dt.date(2024, 1, 15))
    assert sorted(p.name for p in target.iterdir()) == [
        "snapshot_date=2024-01-10", "snapshot_date=2024-01-12", "snapshot_date=2024-01-22"
    ]  # fmt: skip
    assert (target / "snapshot_date=2024-01-22" / "part-0.parquet").read_text() == "old 2024-01-22"
