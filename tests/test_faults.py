"""Crash safety of the nightly run: SIGKILL at named points, a full disk, a corrupt input file, a dead online
store. After each fault, nothing half-done is visible (no marker for the stage, the published tables, online
store views and index still hold the previous complete state), and a plain re-run ends exactly where a run
without the fault ends.

Day 1 (2024-01-05) is run once in-process (the `pit_day1` fixture in conftest.py); every scenario starts from a
copy of it, or of the clean day 2 (2024-01-07). The kill points are deterministic: the hidden
``llmfeat nightly --inject-fault POINT[:ACTION]`` (llmfeat.core.faults).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmfeat.cli import Exit, app
from llmfeat.core.config import load_config
from llmfeat.features.publish import open_store
from llmfeat.nightly import data_dir_lock, run_dir, run_nightly
from llmfeat.retrieval.index import current_version, index_root, list_versions
from tests.pit_runs import DAY2, PIT, pit_overrides
from tests.services import free_port, start_redis

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
USERS, ITEMS = ["U1", "U2", "U9"], ["A", "B", "C", "Z"]  # U9 and Z are unknown: NOT_FOUND both times
EMBED_TABLES = ("item_text", "user_text", "user_history", "quarantine", "manifests")
STATS_TABLES = ("item_stats", "user_stats", "item_meta", "manifests")
overrides = pit_overrides


def copy_dir(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)  # `current` is a relative symlink
    return dest


# --- what a reader sees ------------------------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every visible file under ``root`` (what a reader could open)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def published(data_dir: Path) -> dict:
    """Everything the stages publish for readers, as digests, and the index version `current` names."""
    emb = data_dir / "embeddings" / "default"
    root = index_root(data_dir, "default")
    return {
        "embeddings": {t: tree_digest(emb / t) for t in EMBED_TABLES},
        "stats": {t: tree_digest(data_dir / "features" / t) for t in STATS_TABLES},
        "index_current": current_version(root),
    }


def table_frame(path: Path) -> pd.DataFrame:
    """A change-log table without its run-specific column (created_timestamp), in a stable order."""
    df = pq.read_table(path).to_pandas()
    df = df.drop(columns=["created_timestamp"])
    df["snapshot_date"] = df["snapshot_date"].astype(str)
    key = "item_id" if "item_id" in df.columns else "user_id"
    return df.sort_values([key, "event_timestamp", "snapshot_date"]).reset_index(drop=True)


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    assert list(a.columns) == list(b.columns), what
    assert len(a) == len(b), f"{what}: {len(a)} rows vs {len(b)}"
    for col in a.columns:
        if col in ("embedding", "packed"):
            for x, y in zip(a[col], b[col], strict=True):
                assert (x is None) == (y is None), f"{what}.{col}"
                if x is not None:
                    assert np.allclose(x, y, atol=1e-5, equal_nan=True), f"{what}.{col}"
        else:
            pd.testing.assert_series_equal(a[col], b[col], check_names=False, obj=f"{what}.{col}")


def assert_same_tables(a: Path, b: Path) -> None:
    for table in ("item_text", "user_text", "user_history"):
        assert_frames_equal(
            table_frame(a / "embeddings/default" / table),
            table_frame(b / "embeddings/default" / table),
            table,
        )
    for table in ("item_stats", "user_stats", "item_meta"):
        assert_frames_equal(table_frame(a / "features" / table), table_frame(b / "features" / table), table)


def online_values(cfg) -> dict[str, dict[str, list]]:
    """view -> feature -> values for USERS or ITEMS, read through Feast's get_online_features."""
    store = open_store(cfg)
    out = {}
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        key, ids = ("user_id", USERS) if "user" in view.entities else ("item_id", ITEMS)
        refs = [f"{view.name}:{f.name}" for f in view.features]
        got = store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()
        out[view.name] = {r.split(":")[1]: got[r.split(":")[1]] for r in refs}
    return out


def same_values(a: dict, b: dict) -> bool:
    for feature, xs in a.items():
        for x, y in zip(xs, b[feature], strict=True):
            if x is None or y is None or isinstance(x, str | dt.datetime | pd.Timestamp):
                if x != y:
                    return False
            elif not np.allclose(
                np.asarray(x, dtype=float), np.asarray(y, dtype=float), atol=1e-5, equal_nan=True
            ):
                return False
    return True


def index_content(data_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The current index's id map and its manifest without what differs between builds (times, names)."""
    import json

    root = index_root(data_dir, "default")
    path = root / "versions" / current_version(root)
    manifest = json.loads((path / "manifest.json").read_text())
    keep = ("format_version", "embedding_set", "model_id", "dim", "count", "metric", "normalised", "index",
            "params", "training", "as_of")  # fmt: skip
    return pq.read_table(path / "ids.parquet").to_pandas(), {k: manifest[k] for k in keep}


# --- running the CLI -----------------------------------------------------------------------------------------


def nightly_cli(data_dir: Path, as_of: dt.date, *args: str, timeout: float = 300, **kw):
    """`llmfeat nightly` in its own process (group): what a scheduler runs, and what SIGKILL can hit."""
    cmd = [sys.executable, "-m", "llmfeat.cli", "nightly", "--as-of", as_of.isoformat(), *args]
    for item in kw.get("sets", overrides(data_dir)):
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    log = Path(data_dir).parent / f"nightly-{time.time_ns()}.log"
    with log.open("w") as fh:  # a file, not a pipe: the dead driver's JVM may hold it open a little longer
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=timeout)
        finally:
            with_group_gone(proc.pid)
    return proc.returncode, log.read_text()


def with_group_gone(pgid: int) -> None:
    """Whatever the killed driver left (its Spark JVM, Python workers) dies with it, as on a lost node."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def invoke(*args: str):
    """`llmfeat nightly` in this process (joins the session's Spark): for faults that raise, not kill."""
    result = CliRunner().invoke(app, ["nightly", *args], catch_exceptions=False)
    return result.exit_code, result.output


def cli_sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_day2(pit_day1, tmp_path_factory) -> Path:
    """Day 2 without faults: what every faulty history must end equal to."""
    data_dir = copy_dir(pit_day1, tmp_path_factory.mktemp("clean") / "data")
    summary = run_nightly(load_config(None, overrides(data_dir)), DAY2, log=lambda _: None)
    assert [r.status for r in summary.results] == ["done"] * 5 + ["disabled"]
    return data_dir


# --- SIGKILL ------------------------------------------------------------------------------------------------


def test_sigkill_at_each_commit_point_then_resume(pit_day1, clean_day2, tmp_path):
    """SIGKILL at three commit points of day 2. The killed runs are separate processes (what a scheduler
    runs); the plain re-runs between them run in this process, which keeps the test quick."""
    data_dir = copy_dir(pit_day1, tmp_path / "data")
    cfg = load_config(None, overrides(data_dir))
    sets = cli_sets(overrides(data_dir))
    markers = run_dir(cfg, DAY2)
    root = index_root(data_dir, "default")
    before = published(data_dir)
    online_before = online_values(cfg)
    online_clean = online_values(load_config(None, overrides(clean_day2)))
    assert online_clean != online_before  # day 2 changes the online values, so a mix would show

    # 1. killed with every embedding table written to the work area, none published
    rc, out = nightly_cli(data_dir, DAY2, "--inject-fault", "embed.after_write_before_commit")
    assert rc == -signal.SIGKILL, out
    assert (markers / "ingest.json").is_file() and not (markers / "embed.json").exists()
    work = list((data_dir / "embeddings/default/work").glob("run-*/user_text/snapshot_date=*/*.parquet"))
    assert work, "the kill came after the Spark write into the work area"
    assert published(data_dir) == before  # readers still see day 1, byte for byte
    with data_dir_lock(data_dir, "test"):  # the kernel released the dead run's lock
        pass

    code, out = invoke("--as-of", DAY2.isoformat(), "--until", "stats", *sets)
    assert code == Exit.OK, out
    assert "left by an interrupted run" in out and not list((data_dir / "embeddings/default/work").glob("*"))
    assert_same_tables(data_dir, clean_day2)  # embed and stats committed: equal to the clean run's

    # 2. killed after the first feature view is materialised, before the others
    rc, out = nightly_cli(data_dir, DAY2, "--inject-fault", "publish.mid_materialize")
    assert rc == -signal.SIGKILL, out
    assert (markers / "stats.json").is_file() and not (markers / "publish.json").exists()
    online = online_values(cfg)
    for view, values in online.items():  # each view is all day 1 or all day 2, never a mix of rows
        assert same_values(values, online_before[view]) or same_values(values, online_clean[view]), view
    assert current_version(root) == before["index_current"]

    code, out = invoke("--as-of", DAY2.isoformat(), "--until", "publish", *sets)
    assert code == Exit.OK, out
    for view, values in online_values(cfg).items():
        assert same_values(values, online_clean[view]), view

    # 3. killed with the new index version complete but not yet current (no Spark in this one)
    rc, out = nightly_cli(data_dir, DAY2, "--inject-fault", "index.before_publish")
    assert rc == -signal.SIGKILL, out
    assert (markers / "publish.json").is_file() and not (markers / "index.json").exists()
    assert current_version(root) == before["index_current"] and len(list_versions(root)) == 2

    # 4. a plain re-run finishes, and everything equals the run that never failed
    code, out = invoke("--as-of", DAY2.isoformat(), *sets)
    assert code == Exit.OK, out
    stages = ("ingest", "embed", "stats", "publish", "index")
    assert {p.name for p in markers.glob("*.json")} == {f"{s}.json" for s in stages} | {"summary.json"}
    assert_same_tables(data_dir, clean_day2)
    online = online_values(cfg)
    for view in online_clean:
        assert same_values(online[view], online_clean[view]), view
    ids, manifest = index_content(data_dir)
    ids_clean, manifest_clean = index_content(clean_day2)
    pd.testing.assert_frame_equal(ids, ids_clean)
    assert manifest == manifest_clean
    assert current_version(root) != before["index_current"]
    assert not list(data_dir.rglob(".staging-*")) and not list(data_dir.rglob("run-*"))


# --- failures that raise ------------------------------------------------------------------------------------


def test_disk_full_while_writing_the_index(clean_day2, tmp_path):
    data_dir = copy_dir(clean_day2, tmp_path / "data")
    markers = run_dir(load_config(None, overrides(data_dir)), DAY2)
    root = index_root(data_dir, "default")
    before = published(data_dir)
    versions = list_versions(root)
    args = ["--as-of", DAY2.isoformat(), "--force", "index", *cli_sets(overrides(data_dir))]

    code, out = invoke(*args, "--inject-fault", "index.write:enospc")
    assert code == Exit.FAILURE, out
    assert "stage index failed" in out and "No space left on device" in out
    assert published(data_dir) == before and list_versions(root) == versions
    assert not list(root.rglob(".staging-*"))  # the half-written version was removed
    assert not (markers / "index.json").exists() and (markers / "index.redo.json").is_file()

    code, out = invoke(*args[:2], *cli_sets(overrides(data_dir)))  # no --force: resumes the redo
    assert code == Exit.OK, out
    assert (markers / "index.json").is_file() and not (markers / "index.redo.json").exists()
    assert current_version(root) not in versions
    pd.testing.assert_frame_equal(index_content(data_dir)[0], index_content(clean_day2)[0])


def test_corrupt_input_file_is_an_input_error_naming_it(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("items.csv", "users.csv"):
        shutil.copy(PIT / name, source / name)
    events = source / "events.parquet"
    pq.write_table(pacsv.read_csv(PIT / "events.csv"), events)
    events.write_bytes(events.read_bytes()[: events.stat().st_size // 2])  # truncated mid-file
    mapping = source / "mapping.yaml"
    mapping.write_text((PIT / "mapping.yaml").read_text().replace("events.csv", "events.parquet"))
    data_dir = tmp_path / "data"

    rc, out = nightly_cli(data_dir, DAY2, sets=overrides(data_dir, mapping), timeout=120)
    assert rc == Exit.INPUT_ERROR, out
    assert "input error" in out and str(events) in out.replace("\n", "")
    assert not run_dir(load_config(None, overrides(data_dir)), DAY2).exists()
    assert not (data_dir / "canonical").exists() or not list((data_dir / "canonical").rglob("*.parquet"))

    # garbage where a CSV should be: the same, in-process
    events.unlink()
    (source / "items.csv").write_bytes(os.urandom(512))
    mapping.write_text((PIT / "mapping.yaml").read_text())
    shutil.copy(PIT / "events.csv", source / "events.csv")
    code, out = invoke("--as-of", DAY2.isoformat(), *cli_sets(overrides(data_dir, mapping)))
    assert code == Exit.INPUT_ERROR, out
    assert str(source / "items.csv") in out.replace("\n", "")


def test_online_store_down_then_up(clean_day2, tmp_path):
    data_dir = copy_dir(clean_day2, tmp_path / "data")
    markers = run_dir(load_config(None, overrides(data_dir)), DAY2)
    before = published(data_dir)
    port = free_port()  # nothing listens here yet
    redis = [
        *overrides(data_dir),
        "feast.online_store=redis",
        f"feast.redis_connection=127.0.0.1:{port},db=0",
    ]
    args = ["--as-of", DAY2.isoformat(), *cli_sets(redis)]

    code, out = invoke(*args, "--force", "publish")
    assert code == Exit.FAILURE, out
    assert "stage publish failed" in out and str(port) in out
    assert not (markers / "publish.json").exists() and (markers / "publish.redo.json").is_file()
    assert (markers / "index.json").is_file()  # the index depends on embed only: untouched
    assert published(data_dir) == before

    proc = start_redis(port, tmp_path)
    if proc is None:
        pytest.skip("redis-server is not installed: cannot check the re-run once the store is up")
    try:
        code, out = invoke(*args)  # resumes the forced redo: a full materialisation into the new store
        assert code == Exit.OK, out
        assert (markers / "publish.json").is_file() and (markers / "index.json").is_file()
        online = online_values(load_config(None, redis))
        clean = online_values(load_config(None, overrides(clean_day2)))
        for view in clean:
            assert same_values(online[view], clean[view]), view
    finally:
        proc.terminate()
        proc.wait(timeout=10)
