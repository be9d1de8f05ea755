"""The nightly command: markers, resume, forced redo with dependents, no-op re-runs, the lock."""

import datetime as dt
import json
import subprocess
import sys
import time

import pytest

from llmfeat import nightly
from llmfeat.core.config import load_config
from llmfeat.nightly import (
    STAGES,
    LockedError,
    data_dir_lock,
    dependents,
    remove_leftovers,
    run_dir,
    run_nightly,
)

AS_OF = dt.date(2024, 1, 7)


def test_dependents():
    assert dependents({"embed"}) == {"embed", "publish", "index", "train", "adapt"}  # adapt: optional stage
    assert dependents({"ingest"}) == {"ingest", "embed", "stats", "publish", "index", "train", "adapt"}
    assert dependents(set()) == set()


def test_lock_names_the_holder(tmp_path):
    cfg = load_config(None, [f"paths.data_dir={tmp_path}"])
    with data_dir_lock(tmp_path, "test holder"):
        with pytest.raises(LockedError, match=r"in use by pid \d+ on .* \(test holder\)"):
            run_nightly(cfg, AS_OF)


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from llmfeat.nightly import data_dir_lock\n"
        f"with data_dir_lock(Path({str(tmp_path)!r}), 'other process'):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match="other process"):
            with data_dir_lock(tmp_path, "me"):
                pass
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock
        proc.wait()
    with data_dir_lock(tmp_path, "me"):
        pass


def _fake_stages(calls: list, fail_at: str | None = None):
    """Stand-ins for the stage functions: record (stage, forced) and optionally fail at one stage."""

    def factory(cfg, as_of, spark, log, markers, faults=None):
        def make(stage):
            def run(forced: bool) -> dict:
                calls.append((stage, forced))
                if stage == fail_at:
                    raise RuntimeError(f"{stage} failed")
                return {"stage": stage}

            return run

        return {s: make(s) for s in STAGES}

    return factory


def test_forced_redo_that_dies_is_resumed_not_skipped(tmp_path, monkeypatch):
    """A --force run invalidates the markers of everything it redoes before it starts: a crash half-way
    makes the next plain run finish the redo (as a redo: publish materialises in full), not skip it."""
    cfg = load_config(None, [f"paths.data_dir={tmp_path}"])
    markers = run_dir(cfg, AS_OF)
    calls: list = []
    monkeypatch.setattr(nightly._SparkHolder, "start", lambda self: None)  # the stand-ins need no Spark
    monkeypatch.setattr(nightly, "_stage_functions", _fake_stages(calls))
    run_nightly(cfg, AS_OF, log=lambda _: None)
    assert calls == [(s, False) for s in STAGES]

    calls.clear()
    monkeypatch.setattr(nightly, "_stage_functions", _fake_stages(calls, fail_at="publish"))
    with pytest.raises(RuntimeError, match="publish failed"):
        run_nightly(cfg, AS_OF, force=("embed",), log=lambda _: None)
    assert calls == [("embed", True), ("publish", True)]
    assert (markers / "embed.json").is_file() and not (markers / "embed.redo.json").exists()
    for stage in ("publish", "index", "train"):
        assert not (markers / f"{stage}.json").exists() and (markers / f"{stage}.redo.json").is_file()

    calls.clear()
    monkeypatch.setattr(nightly, "_stage_functions", _fake_stages(calls))
    resumed = run_nightly(cfg, AS_OF, log=lambda _: None)
    assert calls == [("publish", True), ("index", True), ("train", True)]
    assert [r.status for r in resumed.results] == ["skipped"] * 3 + ["done"] * 3
    assert not list(markers.glob("*.redo.json"))

    # --until stops early, but what the redo invalidated beyond it stays invalid until a run redoes it
    calls.clear()
    run_nightly(cfg, AS_OF, force=("stats",), until="stats", log=lambda _: None)
    assert calls == [("stats", True)]
    assert sorted(p.name for p in markers.glob("*.redo.json")) == ["publish.redo.json", "train.redo.json"]
    calls.clear()
    run_nightly(cfg, AS_OF, log=lambda _: None)
    assert calls == [("publish", True), ("train", True)]


def test_spark_starts_in_a_thread_beside_ingest_and_a_failure_surfaces_where_it_is_used(
    tmp_path, monkeypatch
):
    import threading

    from pyspark.sql import SparkSession

    import llmfeat.core.spark as core_spark

    cfg = load_config(None, [f"paths.data_dir={tmp_path}"])
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    threads, stopped = [], []

    def build(spark_cfg, record_classes=False, short=False):
        threads.append(threading.current_thread().name)
        time.sleep(0.2)
        if spark_cfg.app_name == "broken":
            raise RuntimeError("no java")
        return f"session short={short}"

    monkeypatch.setattr(core_spark, "build_spark", build)
    monkeypatch.setattr(core_spark, "stop_spark", stopped.append)
    holder = nightly._SparkHolder(cfg, AS_OF, log=lambda _: None)
    holder.start()
    holder.start()  # once only
    assert holder.get() == "session short=False" and holder.get() == "session short=False"
    assert len(threads) == 1 and threads[0].startswith("llmfeat-spark-start")
    holder.stop()
    assert stopped == ["session short=False"]

    unused = nightly._SparkHolder(cfg, AS_OF, log=lambda _: None)
    unused.start()  # started ahead, then an earlier stage failed: stopped all the same
    unused.stop()
    assert stopped == ["session short=False"] * 2

    cfg.spark.app_name = "broken"
    broken = nightly._SparkHolder(cfg, AS_OF, log=lambda _: None)
    broken.start()
    with pytest.raises(RuntimeError, match="no java"):  # raised in the stage that needs Spark, not lost
        broken.get()
    broken.stop()
    assert stopped == ["session short=False"] * 2


def test_leftovers_of_interrupted_writers_are_removed(tmp_path):
    kept = [tmp_path / "embeddings/default/item_text/snapshot_date=2024-01-07",
            tmp_path / "index/default/versions/20240107T000000000000Z-abcdef"]  # fmt: skip
    left = [
        tmp_path / "embeddings/default/work/run-2024-01-07T010203-abcdef/item_text",
        tmp_path / "embeddings/default/item_text/.staging-snapshot_date=2024-01-07-1234abcd",
        tmp_path / "features/work/run-x",
        tmp_path / "canonical/items/.old-snapshot_date=2024-01-07-1234abcd",
        tmp_path / "index/default/versions/.staging-v-1234abcd",
        tmp_path / "index/default/versions/.deleting-v0",
    ]
    for path in kept + left:
        path.mkdir(parents=True)
    (tmp_path / "index/default/.current-1234abcd").symlink_to("versions/v0")
    removed = remove_leftovers(tmp_path)
    assert len(removed) == len(left) + 1
    assert all(p.exists() for p in kept) and not any(p.exists() for p in left)
    assert not (tmp_path / "index/default/.current-1234abcd").is_symlink()


@pytest.mark.spark
@pytest.mark.slow
def test_run_resume_force_and_noop(spark, tmp_path, fixtures):
    cfg = load_config(None, [f"paths.data_dir={tmp_path}", "ingest.source=mapped", "train.enabled=false",
                             f"ingest.source_path={fixtures / 'pit' / 'mapping.yaml'}"])  # fmt: skip
    first = run_nightly(cfg, AS_OF, log=lambda _: None)
    ran = {r.stage: r.status for r in first.results}
    assert ran["ingest"] == ran["embed"] == ran["stats"] == ran["publish"] == ran["index"] == "done"
    assert ran["train"] == "disabled"
    markers = run_dir(cfg, AS_OF)
    assert json.loads((markers / "summary.json").read_text())["as_of"] == "2024-01-07"

    # a finished date: nothing to do, and no stage runs
    t0 = time.perf_counter()
    again = run_nightly(cfg, AS_OF, log=lambda _: None)
    assert again.nothing_to_do and time.perf_counter() - t0 < 5

    # crash after stats: the publish marker is missing -> only publish runs
    (markers / "publish.json").unlink()
    resumed = run_nightly(cfg, AS_OF, log=lambda _: None)
    assert [r.stage for r in resumed.results if r.status == "done"] == ["publish"]

    # --force embed redoes embed and what depends on it, over the same snapshot range, encoding nothing new
    forced = run_nightly(cfg, AS_OF, force=("embed",), log=lambda _: None)
    done = [r.stage for r in forced.results if r.status == "done"]
    assert done == ["embed", "publish", "index"]
    embed = next(r.summary for r in forced.results if r.stage == "embed")
    assert embed["snapshots"]["from"] == first.results[1].summary["snapshots"]["from"]
    assert embed["counts"]["items"]["encoded"] == 0 and embed["counts"]["users"]["encoded"] == 0
    assert embed["counts"]["users"]["written"] == first.results[1].summary["counts"]["users"]["written"]

    with pytest.raises(ValueError, match="unknown stage"):
        run_nightly(cfg, AS_OF, force=("bogus",))
