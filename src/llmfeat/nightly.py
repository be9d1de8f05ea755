"""The nightly run: every stage in order, idempotent and resumable, one data directory at a time.

    ingest -> embed -> stats -> publish -> index -> train

Each stage writes its outputs atomically (see tables.py and changelog.py) and then a success marker,
``<data_dir>/runs/<as_of>/<stage>.json``, holding its summary. A re-run skips every stage with a marker, so
after a crash it resumes at the first unfinished stage, and a re-run of a finished date does nothing and says
so. ``force`` redoes the named stages and every stage that depends on them: before anything runs, their
markers become ``<stage>.redo.json`` (downstream first), so a forced run that dies half-way resumes the redo
instead of skipping stages whose outputs it has partly replaced.

A run that dies (SIGKILL, OOM, a lost node) leaves hidden staging directories and work areas behind, never a
half-written partition, snapshot or index version (a stage swaps each in whole, after writing all of them),
and no marker for the stage it was in: the next run removes the leftovers once it holds the lock and redoes
that stage. tests/test_faults.py kills runs at each stage's commit point.

A lock (``<data_dir>/.llmfeat.lock``, an flock released by the kernel when the holder dies, even by SIGKILL)
stops two runs from sharing a data directory; the message names the holder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llmfeat.core import results as R
from llmfeat.core import tables
from llmfeat.core.config import Config, absolute_paths
from llmfeat.core.errors import ConfigError, LlmfeatError, LockedError, StageFailedError  # noqa: F401 - re-exported
from llmfeat.core.faults import NO_FAULTS, Faults
from llmfeat.core.layout import DataDir

STAGES = ("ingest", "embed", "stats", "publish", "index", "train")
DEPENDS_ON = {
    "ingest": (),
    "embed": ("ingest",),
    "stats": ("ingest",),
    "publish": ("embed", "stats"),
    "index": ("embed",),
    "train": ("publish",),
    "adapt": ("embed", "stats"),
}
OPTIONAL_STAGES = ("adapt",)
"""Stages after STAGES that run only when enabled in the config (``adapt.enabled``): the collaborative
adapter, writing the ``adapt.output_set`` embedding set, its Feast project and FAISS index."""
SPARK_STAGES = {"embed", "stats", "publish", "train", "adapt"}
"""The stages that use the Spark session (ingest and index do not)."""


def dependents(stages: set[str]) -> set[str]:
    """The stages plus everything downstream of them."""
    out = set(stages)
    changed = True
    while changed:
        changed = False
        for stage, deps in DEPENDS_ON.items():
            if stage not in out and out.intersection(deps):
                out.add(stage)
                changed = True
    return out


def run_dir(cfg: Config, as_of: dt.date) -> Path:
    return DataDir.of(cfg).run(as_of)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path, what: str) -> Iterator[None]:
    path = DataDir(Path(data_dir)).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.seek(0)
        holder = fh.read().strip() or "unknown holder"
        fh.close()
        raise LockedError(
            f"data directory {data_dir} is in use by {holder}; wait for it or stop it first"
        ) from exc
    fh.seek(0)
    fh.truncate()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({what})\n")
    fh.flush()
    try:
        yield
    finally:
        fh.seek(0)
        fh.truncate()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def remove_leftovers(data_dir: Path) -> list[Path]:
    """Remove what interrupted writers left behind; only safe while holding the data-directory lock."""
    found = DataDir(Path(data_dir)).leftovers()  # layout.DataDir.leftover_patterns: derived from the layout
    for path in found:
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return found


@dataclass
class StageResult:
    stage: str
    status: str
    """done (ran now), skipped (marker found), disabled (not configured)."""
    seconds: float = 0.0
    summary: R.StageResult = field(default_factory=R.StageResult)
    """The stage's typed result (``llmfeat.core.results``; rebuilt from the marker for a skipped stage)."""


@dataclass
class NightlySummary:
    as_of: dt.date
    data_dir: Path
    results: list[StageResult]
    seconds: float
    quarantined: int
    not_yet_visible: int = 0
    """Rows stamped at or after ``as_of`` (a backfill): left for later nights; not bad, no exit 4."""

    @property
    def nothing_to_do(self) -> bool:
        return all(r.status != "done" for r in self.results)

    def to_dict(self) -> dict:
        return {
            "as_of": self.as_of.isoformat(),
            "data_dir": str(self.data_dir),
            "seconds": round(self.seconds, 3),
            "quarantined": self.quarantined,
            "not_yet_visible": self.not_yet_visible,
            "stages": [
                {
                    "stage": r.stage,
                    "status": r.status,
                    "seconds": round(r.seconds, 3),
                    "rows_read": r.summary.rows_read,
                    "rows_written": r.summary.rows_written,
                    "summary": r.summary.to_dict(),
                }  # fmt: skip
                for r in self.results
            ],
        }


def short_night(cfg: Config, as_of: dt.date) -> bool:
    """Whether the night of ``as_of`` is an incremental one, whose Spark work is small: its interactions
    snapshot extends an earlier one (ingest appended: ``tables.append_chain_from``; before tonight's ingest,
    the latest earlier snapshot can be appended to), the embedding set covers an earlier snapshot, and the
    stored training frame (when training) holds earlier days. ``spark.jit=auto`` then runs the driver JVM on
    the quick compiler only (``core.spark.jit_options``). A first night, one after rewritten history or one
    that fetches the training frame whole does minutes of JVM work: tiered. (A night that must refetch
    everything anyway, e.g. after a new model id, still counts as short: slower, not wrong.)"""
    from llmfeat.core.changelog import covered_until
    from llmfeat.core.layout import embedding_paths
    from llmfeat.features.training_frames import frame_root, stored_days

    data_dir = Path(cfg.paths.data_dir)
    events = tables.canonical_dir(data_dir, "interactions")
    if tables.snapshot_dir(events, as_of).is_dir():
        chain = tables.append_chain_from(events, as_of)
        if chain is None or chain >= as_of:
            return False
    else:
        earlier = [d for d in tables.snapshot_dates(events) if d < as_of]
        if not earlier or tables.append_chain_from(events, earlier[-1]) is None:
            return False
    if covered_until(embedding_paths(data_dir, cfg.embed.embedding_set).manifests) is None:
        return False
    return not cfg.train.enabled or stored_days(frame_root(data_dir, cfg.embed.embedding_set)) > 0


class _SparkHolder:
    """Starts Spark only when a stage needs it (a finished date's no-op re-run never does), and stops only a
    session it started itself. ``start`` launches it in a thread ahead of time (the JVM starts while ingest,
    which needs no Spark, runs in this one); ``get`` waits for it."""

    def __init__(self, cfg: Config, as_of: dt.date, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.as_of = as_of
        self.log = log
        self.session = None
        self.owned = False
        self._starting = None

    def start(self) -> None:
        """Begin starting the session in a thread, unless one is running or starting already."""
        # What both threads use (numpy, pandas, pyarrow) and pyspark.sql are imported here first. What the thread
        # still imports lazily is pyspark's own and the standard library's (pyspark.testing, unittest, difflib:
        # measured), none of which imports what ingest imports: no import-lock cycle can span the two threads.
        import numpy  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
        from pyspark.sql import SparkSession

        from llmfeat.core.spark import build_spark

        if (
            self.session is not None
            or self._starting is not None
            or SparkSession.getActiveSession() is not None
        ):
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="llmfeat-spark-start")
        # A whole night loads the classes that matter: the first one records the JVM's class archive.
        self._starting = pool.submit(build_spark, self.cfg.spark, record_classes=True, short=self._short())
        pool.shutdown(wait=False)

    def _short(self) -> bool:
        short = short_night(self.cfg, self.as_of)
        if short and self.cfg.spark.jit == "auto":
            self.log("nightly: an incremental night: the Spark driver JVM runs the quick compiler only")
        return short

    def get(self):
        if self.session is None and self._starting is not None:
            starting, self._starting = self._starting, None
            self.session, self.owned = starting.result(), True  # the thread's exception, if any, raised here
        if self.session is None:
            from pyspark.sql import SparkSession

            from llmfeat.core.spark import build_spark

            self.session = SparkSession.getActiveSession()
            if self.session is None:
                self.session = build_spark(self.cfg.spark, record_classes=True, short=self._short())
                self.owned = True
        return self.session

    @property
    def started(self) -> bool:
        return self.session is not None

    def stop(self) -> None:
        if self._starting is not None:  # started ahead, never used (an earlier stage failed): stopped too
            with contextlib.suppress(Exception):
                self.get()
            self._starting = None
        if self.session is not None and self.owned:
            from llmfeat.core.spark import stop_spark

            stop_spark(self.session)
        self.session = None


def served_index(cfg: Config) -> tuple[str, dt.date] | None:
    """The current index version of the embedding set and the date it was built for; None if none."""
    from llmfeat.retrieval.index import MANIFEST_FILE, current_version, index_root

    root = index_root(cfg.paths.data_dir, cfg.embed.embedding_set)
    if not (root / "current").is_symlink():
        return None
    try:
        version = current_version(root)
        manifest = json.loads((root / "versions" / version / MANIFEST_FILE).read_text())
        return version, dt.date.fromisoformat(manifest["as_of"])
    except (OSError, ValueError, KeyError):  # unreadable: the index stage finds out and says so
        return None


def current_models_as_of(cfg: Config) -> dt.date | None:
    """The date the current CTR models were trained for; None if none."""
    from llmfeat.ctr.train import models_dir, run_dir_of

    try:
        summary = json.loads((run_dir_of(models_dir(cfg) / "current.json") / "summary.json").read_text())
        return dt.date.fromisoformat(summary["as_of"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: train as usual
        return None


def _stage_functions(
    cfg: Config,
    as_of: dt.date,
    spark: _SparkHolder,
    log: Callable[[str], None],
    markers: Path,
    faults: Faults = NO_FAULTS,
):
    def previous(stage: str) -> dict:
        """The summary of the finished run a forced redo replaces."""
        for path in (markers / f"{stage}.json", markers / f"{stage}.redo.json"):
            if path.is_file():
                return json.loads(path.read_text())["summary"]
        return {}

    def ingest(forced: bool) -> R.IngestSummary:
        from llmfeat.data.ingest import run_ingest

        return R.IngestSummary.of(run_ingest(cfg, as_of))

    def embed(forced: bool) -> R.EmbedResult:
        from llmfeat.embedding.embed import run_embed

        # A forced redo covers the same snapshot range as the run it replaces.
        start = previous("embed").get("snapshots", {}).get("from") if forced else None
        return run_embed(
            spark.get(), cfg, as_of, snapshot_from=dt.date.fromisoformat(start) if start else None, log=log,
            faults=faults,
        )  # fmt: skip

    def stats(forced: bool) -> R.StatsResult:
        from llmfeat.features.stats import run_stats

        start = previous("stats").get("snapshots", {}).get("from") if forced else None
        return run_stats(
            spark.get(), cfg, as_of, snapshot_from=dt.date.fromisoformat(start) if start else None, log=log,
            faults=faults,
        )  # fmt: skip

    def publish(forced: bool) -> R.PublishResult:
        from llmfeat.features.publish import run_publish

        spark.get()  # Feast's Spark offline store joins the session already running
        return run_publish(cfg, as_of, full=forced, log=log, faults=faults)

    def index(forced: bool) -> R.IndexResult:
        from llmfeat.retrieval.index import run_index

        served = served_index(cfg)
        if served is not None and served[1] > as_of:
            log(
                f"index: the current index {served[0]} is as of {served[1]}, after {as_of}: a backfill leaves it"
            )
            return R.IndexResult({"version": served[0], "kept_newer": served[1].isoformat()})
        return run_index(cfg, as_of, log=log, faults=faults).for_marker()

    def train(forced: bool) -> R.TrainResult:
        from llmfeat.ctr.train import TooLittleDataError, plan_evaluation, run_train

        current = current_models_as_of(cfg)
        if current is not None and current > as_of:
            reason = f"the current models are trained as of {current}, after {as_of}: a backfill leaves them"
            log(f"train: not trained: {reason}")
            return R.TrainResult({"trained": False, "reason": reason})
        spark.get()  # point-in-time features come from Feast's Spark offline store
        plan = plan_evaluation(cfg, as_of, forced=forced)
        try:
            summary = run_train(cfg, as_of, log=log, refresh=forced, plan=plan)
        except TooLittleDataError as exc:
            log(f"train: not trained: {exc}")
            return R.TrainResult({"trained": False, "reason": str(exc)})
        keep = ("run_id", "rows", "frame", "embedding_model_id", "protocols", "models", "report", "seconds")
        out = {k: summary[k] for k in keep} | {"headline": summary.headline_rows, "evaluation": plan.kind}
        # A full evaluation runs the simulator (its section joins the report), then trains a policy.
        if cfg.bandit.enabled and plan.kind == "full":
            from llmfeat.bandit.nightly import run_bandit

            out["bandit"] = run_bandit(cfg, as_of, report=Path(summary["report"]), log=log)
        elif cfg.bandit.enabled:  # a refresh: the policy from the event log, no simulator
            from llmfeat.bandit.nightly import train_policy

            out["bandit"] = {"policy": train_policy(cfg, log=log, keep_without_decisions=True)}
        return R.TrainResult(out)

    def adapt(forced: bool) -> R.AdaptResult:
        from llmfeat.embedding.adapt import run_adapt_stage

        spark.get()  # publishing the adapted set as its own Feast project uses the Spark offline store
        return run_adapt_stage(cfg, as_of, log=log).for_marker()

    functions = {"ingest": ingest, "embed": embed, "stats": stats, "publish": publish, "index": index}
    if cfg.train.enabled:
        functions["train"] = train
    if cfg.adapt.enabled:
        functions["adapt"] = adapt
    return functions


def run_nightly(
    cfg: Config,
    as_of: dt.date,
    *,
    force: tuple[str, ...] = (),
    until: str | None = None,
    log: Callable[[str], None] = print,
    on_stage: Callable[[str, str], None] | None = None,
    faults: Faults = NO_FAULTS,
) -> NightlySummary:
    """Run (or resume) the nightly pipeline for ``as_of``, through stage ``until`` (default: all).
    ``on_stage(stage, status)`` reports progress; ``faults`` is for the crash-safety tests only."""
    unknown = (set(force) | ({until} if until else set())) - set(STAGES) - set(OPTIONAL_STAGES)
    if unknown:
        raise ConfigError(
            f"unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES + OPTIONAL_STAGES)}"
        )
    order = STAGES + tuple(s for s in OPTIONAL_STAGES if getattr(getattr(cfg, s, None), "enabled", False))
    last = order.index(until) if until in order else (len(STAGES) - 1 if until else len(order) - 1)
    redo = dependents(set(force))
    cfg = absolute_paths(cfg)  # every artefact under the data directory, every recorded path absolute
    markers = run_dir(cfg, as_of)
    started = time.perf_counter()
    results: list[StageResult] = []
    spark = _SparkHolder(cfg, as_of, log)
    what = f"llmfeat nightly --as-of {as_of} ({' '.join(sys.argv[1:]) or 'api'})"
    with data_dir_lock(cfg.paths.data_dir, what):
        try:
            for path in remove_leftovers(Path(cfg.paths.data_dir)):
                log(f"nightly: removed {path}, left by an interrupted run")
            # Invalidate what a forced redo replaces before touching anything, downstream first: if this run
            # dies, the next one redoes these stages (and knows they are redos) instead of skipping them.
            for stage in reversed(order):
                if stage in redo and (markers / f"{stage}.json").is_file():
                    os.replace(markers / f"{stage}.json", markers / f"{stage}.redo.json")
            functions = _stage_functions(cfg, as_of, spark, log, markers, faults)
            todo = [s for s in order[: last + 1] if s in functions and not (markers / f"{s}.json").is_file()]
            if todo[:1] == ["ingest"] and set(todo) & SPARK_STAGES:
                spark.start()  # the JVM starts while ingest (no Spark) runs
            for stage in order[: last + 1]:
                marker = markers / f"{stage}.json"
                pending_redo = markers / f"{stage}.redo.json"
                if stage not in functions:
                    results.append(StageResult(stage, "disabled"))
                    continue
                if marker.is_file():
                    pending_redo.unlink(missing_ok=True)
                    recorded = json.loads(marker.read_text())["summary"]
                    results.append(StageResult(stage, "skipped", summary=R.result_for(stage, recorded)))
                    if on_stage:
                        on_stage(stage, "skipped")
                    continue
                if on_stage:
                    on_stage(stage, "running")
                t0 = time.perf_counter()
                try:
                    summary = R.result_for(stage, functions[stage](pending_redo.is_file()))
                except LlmfeatError:
                    raise
                except Exception as exc:  # named, so the operator knows where the rerun resumes
                    raise StageFailedError(stage, exc, hints=(
                        f"nothing of stage {stage} was published; fix the cause and run the same command "
                        f"again: it resumes at {stage} (markers in {markers})",)) from exc  # fmt: skip
                seconds = time.perf_counter() - t0
                tables.write_json(marker, {"stage": stage, "as_of": as_of.isoformat(), "seconds": round(seconds, 3),
                                     "finished": dt.datetime.now(dt.UTC).isoformat(), "summary": summary})  # fmt: skip
                pending_redo.unlink(missing_ok=True)
                results.append(StageResult(stage, "done", seconds, summary))
                if on_stage:
                    on_stage(stage, "done")
        finally:
            spark.stop()
    ingest = next((r.summary for r in results if r.stage == "ingest"), R.IngestSummary())
    out = NightlySummary(as_of, Path(cfg.paths.data_dir), results, time.perf_counter() - started,
                         ingest.quarantined, ingest.not_yet_visible)  # fmt: skip
    if not out.nothing_to_do:
        tables.write_json(markers / "summary.json", out.to_dict())
    return out
