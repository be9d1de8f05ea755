"""The nightly command: markers, resume, forced redo with dependents, no-op re-runs, the lock."""

import datetime as dt
import json
import subprocess
import sys
import time

import pytest

from llmfeat.config import load_config
from llmfeat.nightly import LockedError, data_dir_lock, dependents, run_dir, run_nightly

AS_OF = dt.date(2024, 1, 7)


def test_dependents():
    assert dependents({"embed"}) == {"embed", "publish", "index", "train"}
    assert dependents({"ingest"}) == {"ingest", "embed", "stats", "publish", "index", "train"}
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


@pytest.mark.spark
@pytest.mark.slow
def test_run_resume_force_and_noop(spark, tmp_path, fixtures):
    cfg = load_config(None, [f"paths.data_dir={tmp_path}", "ingest.source=mapped",
                             f"ingest.source_path={fixtures / 'pit' / 'mapping.yaml'}"])  # fmt: skip
    first = run_nightly(cfg, AS_OF, log=lambda _: None)
    ran = {r.stage: r.status for r in first.results}
    assert ran["ingest"] == ran["embed"] == ran["stats"] == ran["publish"] == ran["index"] == "done"
    # four interactions are too few to fit a CTR model: the stage says so instead of failing the run
    train = next(r for r in first.results if r.stage == "train")
    assert train.status == "done" and train.summary["trained"] is False
    assert "only 4 labelled interactions" in train.summary["reason"]
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
    assert done == ["embed", "publish", "index", "train"]
    embed = next(r.summary for r in forced.results if r.stage == "embed")
    assert embed["snapshots"]["from"] == first.results[1].summary["snapshots"]["from"]
    assert embed["counts"]["items"]["encoded"] == 0 and embed["counts"]["users"]["encoded"] == 0
    assert embed["counts"]["users"]["written"] == first.results[1].summary["counts"]["users"]["written"]

    with pytest.raises(ValueError, match="unknown stage"):
        run_nightly(cfg, AS_OF, force=("bogus",))
