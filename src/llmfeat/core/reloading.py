"""One background check for newly published versions, shared by the index and the bandit-policy holders."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("llmfeat")


class PeriodicReload:
    """Calls ``reload()`` every ``interval_s`` seconds in a daemon thread until ``stop()``. An exception from
    ``reload`` is logged and the loop goes on: the previous version keeps being served."""

    def __init__(self, reload: Callable[[], object], name: str):
        self._reload, self._name = reload, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float) -> None:
        if interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self._reload()
                except Exception as exc:  # noqa: BLE001 - a failed check must not end the loop
                    log.error("%s: %s", self._name, exc)

        self._thread = threading.Thread(target=loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
