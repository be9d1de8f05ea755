"""Peak memory per stage of a running ``llmfeat nightly`` process tree (bench/day_over_day.py, bench/scale_curve.py).

A thread samples, every ``interval`` seconds (0.5 by default), the CLI's process and all its descendants (the
Spark JVM and its Python workers): the sum of their RSS and the largest single process's RSS; and the sum of
their PSS (proportional set size, ``/proc/<pid>/smaps_rollup`` through psutil: a page shared by forked workers
is split among them instead of counted once per process as in the RSS sum), which costs ~0.1 s of kernel time
with a JVM in the tree, so it is read every 10th sample and whenever the RSS sum passes its stage's high-water
mark by 2 % (so near each stage's RSS peak). Each sample is attributed to the stage running then: the first
stage of the night whose success marker (``<data_dir>/runs/<date>/<stage>.json``) does not exist yet, so process
start-up counts to ingest; samples after the last marker (Spark's shutdown) to ``teardown``. A stage shorter
than the interval can have no sample (its peak is then null), and a peak between two samples is missed.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

MIB = 1 << 20
PSS_EVERY = 10  # samples: PSS every 5 s at the default interval, RSS every one
PSS_ON_GROWTH = 1.02  # and PSS whenever the RSS sum passes its stage's high-water mark by 2 %


@dataclass
class Peak:
    samples: int = 0
    tree_rss_mib: float = 0.0
    tree_pss_mib: float | None = None
    largest_process_rss_mib: float = 0.0

    def add(self, rss: float, pss: float | None, largest: float) -> None:
        self.samples += 1
        self.tree_rss_mib = max(self.tree_rss_mib, rss)
        self.largest_process_rss_mib = max(self.largest_process_rss_mib, largest)
        if pss is not None:
            self.tree_pss_mib = max(self.tree_pss_mib or 0.0, pss)

    def as_dict(self) -> dict:
        return {k: round(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(root: psutil.Process) -> tuple[float, float]:
    """(RSS sum, largest RSS) of a process tree, MiB: cheap (/proc/<pid>/statm), a few ms."""
    rss = largest = 0.0
    for proc in _tree(root):
        try:
            value = proc.memory_info().rss
        except psutil.Error:  # gone between the listing and the read, or not ours
            continue
        rss += value
        largest = max(largest, value)
    return rss / MIB, largest / MIB


def tree_pss(root: psutil.Process) -> float | None:
    """PSS sum of a process tree, MiB; None where the kernel has no smaps_rollup. ~0.1 s of system time with
    a multi-GiB JVM in the tree (the kernel walks its page tables), so it is read sparingly."""
    pss = 0.0
    for proc in _tree(root):
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        if not hasattr(info, "pss"):
            return None
        pss += info.pss
    return pss / MIB


def current_stage(markers: Path, stages: tuple[str, ...]) -> str:
    """The first stage without a success marker: the one running now."""
    return next((s for s in stages if not (markers / f"{s}.json").is_file()), "teardown")


class StageSampler:
    """Samples a process tree until stopped; ``peaks()`` per stage and ``night()`` over the whole run.

    Use as a context manager around the wait for the process."""

    def __init__(self, pid: int, markers: Path, stages: tuple[str, ...], interval: float = 0.5):
        self.root = psutil.Process(pid)
        self.markers, self.stages, self.interval = markers, stages, interval
        self.by_stage: dict[str, Peak] = {}
        self.whole = Peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stage-memory", daemon=True)

    def __enter__(self) -> StageSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            stage = current_stage(self.markers, self.stages)
            rss, largest = tree_rss(self.root)
            if rss > 0:
                high = self.by_stage[stage].tree_rss_mib if stage in self.by_stage else 0.0
                pss = tree_pss(self.root) if n % PSS_EVERY == 0 or rss > high * PSS_ON_GROWTH else None
                self.by_stage.setdefault(stage, Peak()).add(rss, pss, largest)
                self.whole.add(rss, pss, largest)
            n += 1
            self._stop.wait(self.interval)

    def peaks(self) -> dict[str, dict | None]:
        """Per stage (and ``teardown``): its peak, or None where no sample fell in it."""
        names = [*self.stages, "teardown"]
        return {s: (self.by_stage[s].as_dict() if s in self.by_stage else None) for s in names}

    def night(self) -> dict:
        return {**self.whole.as_dict(), "interval_s": self.interval, "pss_every_n_samples": PSS_EVERY}
