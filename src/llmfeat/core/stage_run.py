"""The skeleton every stage run shares: a run id, a staging area removed whatever happens, phase timings, and
the manifest written atomically at the end.

::

    run = StageRun.start("embed", as_of, log)
    with run.staging(paths.root) as staging:        # <root>/work/run-<id>, removed on exit
        rows = run.phase("write item_text", lambda: ...)
    run.write_manifest(paths.manifests, {...}, EmbedResult)  # + run_id, as_of, started, seconds, rows
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from llmfeat.core import tables
from llmfeat.core.layout import DataDir
from llmfeat.core.results import StageResult

T = TypeVar("T")
R = TypeVar("R", bound="StageResult")


class Phases:
    """Logs each phase as it starts and keeps its duration for the manifest."""

    def __init__(self, stage: str, log: Callable[[str], None]):
        self.stage = stage
        self.log = log
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T:
        self.log(f"{self.stage}: {name} ...")
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 3)
        return result


@dataclass
class StageRun:
    stage: str
    as_of: dt.date
    log: Callable[[str], None]
    started: dt.datetime
    run_id: str
    phases: Phases
    _clock: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, stage: str, as_of: dt.date, log: Callable[[str], None] = print) -> StageRun:
        started = dt.datetime.now(dt.UTC)
        return cls(stage, as_of, log, started, tables.run_id(as_of, started), Phases(stage, log))

    def phase(self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` as a named, logged, timed phase."""
        return self.phases.run(name, fn)

    @property
    def started_clock(self) -> float:
        """``time.perf_counter()`` when the run started (for ``mark``)."""
        return self._clock

    def mark(self, name: str, since: float) -> float:
        """Record a phase that ran inline since ``since`` (a ``time.perf_counter()``); returns now."""
        now = time.perf_counter()
        self.phases.seconds[name] = round(now - since, 3)
        return now

    @contextmanager
    def staging(self, root: Path) -> Iterator[Path]:
        """This run's work area under ``root`` (Spark ignores input paths starting with "." or "_", so it is a
        plain ``work/run-<id>``), removed on exit; ``nightly`` removes one a killed run left behind."""
        path = DataDir.work(root, self.run_id)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @property
    def elapsed(self) -> float:
        return round(time.perf_counter() - self._clock, 3)

    def seconds(self) -> dict[str, float]:
        """Every phase's seconds and the total so far."""
        return {**self.phases.seconds, "total": self.elapsed}

    def manifest(self, body: dict) -> dict:
        """``body`` with the run's id, date, start time and timings."""
        return {"run_id": self.run_id, "as_of": self.as_of.isoformat(), **body, "seconds": self.seconds(),
                "started": self.started.isoformat()}  # fmt: skip

    def write_manifest(self, manifest_dir: Path, body: dict, result: type[R]) -> R:
        """The typed ``result`` of ``manifest(body)``, written atomically (with its rows read / written) as
        ``<manifest_dir>/<run_id>.json``."""
        out = result(self.manifest(body))
        tables.write_json(Path(manifest_dir) / f"{self.run_id}.json", out.to_dict())
        return out
