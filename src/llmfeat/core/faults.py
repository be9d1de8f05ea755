"""Fault injection at named points of the nightly stages, for the crash-safety tests (tests/test_faults.py).

Off unless asked for: the stages take a ``Faults`` object (default ``NO_FAULTS``, which does nothing), and the
only way to build one that does something is the hidden ``llmfeat nightly --inject-fault POINT[:ACTION]``
option. Nothing reads the environment.

Actions:

- ``kill`` (the default): the process sends itself SIGKILL, as a machine crash or an OOM killer would: no
  ``finally`` block, no ``atexit`` handler runs.
- ``enospc``: the point raises ``OSError(ENOSPC)``, as a write to a full disk would.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Iterable

from llmfeat.core.errors import ConfigError

POINTS = {
    "embed.after_write_before_commit": "every embedding table is written to the run's work area; nothing is "
    "published yet",
    "stats.after_write_before_commit": "every stats table is written to the run's work area; nothing is "
    "published yet",
    "publish.mid_materialize": "the first feature view is materialised into the online store, the others not",
    "index.write": "inside the staging directory of a new index version, after the FAISS file is written",
    "index.before_publish": "the new index version is complete under versions/; `current` has not moved",
}
ACTIONS = ("kill", "enospc")


class Faults:
    """Which points fail, and how. ``reach(point)`` is called by the stages at each point."""

    def __init__(self, specs: Iterable[str] = ()):
        self.actions: dict[str, str] = {}
        for spec in specs:
            point, _, action = spec.partition(":")
            action = action or "kill"
            if point not in POINTS:
                raise ConfigError(f"unknown fault point {point!r}; points: {', '.join(POINTS)}")
            if action not in ACTIONS:
                raise ConfigError(f"unknown fault action {action!r}; actions: {', '.join(ACTIONS)}")
            self.actions[point] = action

    def __bool__(self) -> bool:
        return bool(self.actions)

    def reach(self, point: str) -> None:
        if point not in POINTS:  # a typo in a stage would silently never fire
            raise ConfigError(f"unknown fault point {point!r}")
        action = self.actions.get(point)
        if action == "kill":
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (fault injected at {point})")


NO_FAULTS = Faults()
