"""Stage 4, publish: apply the Feast repository and materialise the feature tables into the online store.

The repository's definitions live in ``feature_repo/features.py`` (what the plain ``feast`` CLI reads; its
names come from ``llmfeat.feast.names``). This stage points them at the configured data directory and
embedding set, writes the portable ``feature_store.yaml`` and a copy of the definitions next to the data
(``<data_dir>/feast/``: SQLite or Redis online store, Spark offline store; ``llmfeat.feast.store``), applies
the definitions and materialises:

- the first time a view is published, everything up to the snapshot time (``materialize``: its start is the
  epoch, since ``materialize-incremental`` would start a year before *now*);
- afterwards incrementally from the previous end (``materialize_incremental``), or everything again with
  ``full=True`` (after a forced re-run of an upstream stage changed old rows);
- never backwards: a view already materialised past this date (a backfill of an earlier date after a later
  one) is left as it is. Feast's SQLite online store upserts whatever it is given (a ``materialize`` up to an
  earlier date would write each entity's older row over its newer one; Feast's Redis store compares event
  timestamps, SQLite does not), so the guard is here, for both stores. The offline store needs none: its
  tables are keyed by event time, and point-in-time joins pick the right row.

Embedding sets side by side: each set is its own Feast project with its own registry, online tables and
generated config. The ``default`` set is project ``feast.project`` (``llmfeat``) under ``<data_dir>/feast/``;
another set ``S`` (e.g. a fine-tuned model's) is project ``llmfeat_S`` under ``<data_dir>/feast/sets/S/``. The
same feature view names then never collide in one online store (SQLite file per project; in Redis, Feast
keys carry the project), so both versions stay servable and switching rankers between them, or rolling back,
is the one setting ``embed.embedding_set``.

A data directory is self-contained and relocatable (copy it, move it, restore a backup): nothing stored in it
names its own location. The ``feature_store.yaml`` written there holds paths relative to its folder (Feast
resolves them against the repository path, ``-c``), next to a copy of the feature definitions it was
published with, so the plain CLI works on any copy as ``feast -c <data_dir>/feast <command>``. llmfeat itself
opens the store with the same settings made absolute for where the directory is now, and when the registry's
data sources still point into the directory it was copied from, rewrites those paths to this one's tables
(``rebase_registry``; materialised intervals and everything else kept) before anything reads through them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import re
import time

from llmfeat.core import costs
from llmfeat.core.config import Config
from llmfeat.core.faults import NO_FAULTS, Faults
from llmfeat.core.results import PublishResult
from llmfeat.feast.offline import sync_sources
from llmfeat.feast.store import (  # noqa: F401 - feast_dir ... rebase_registry re-exported (tests, benches)
    feast_dir,
    feast_project,
    feature_store_yaml,
    feature_views,
    load_definitions,
    open_store,
    rebase_registry,
    write_repo_files,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _utc(t: dt.datetime) -> dt.datetime:
    """Feast's registry returns naive datetimes meaning UTC."""
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def run_publish(
    cfg: Config, as_of: dt.date, *, full: bool = False, log=print, faults: Faults = NO_FAULTS
) -> PublishResult:
    """Apply the repository and materialise up to the snapshot time of ``as_of`` (00:00 UTC, inclusive).

    One view at a time: Feast records a view's materialised interval in the registry only after the view is
    written, so a run that dies half-way leaves every view either done (its interval recorded, its online
    rows complete) or to be done again by the next run."""
    started = time.perf_counter()
    yaml_path = write_repo_files(cfg)
    store = open_store(cfg)
    objects = load_definitions(cfg)
    views = feature_views(objects)
    sync_sources(views)  # the sources' compact copies in step with tonight's tables
    store.apply(objects)
    end = dt.datetime.combine(as_of, dt.time(0), tzinfo=dt.UTC)
    applied = time.perf_counter()
    until = {v.name: store.get_feature_view(v.name).most_recent_end_time for v in views}
    # A backfill never moves the online store back in time: views published past `end` keep their values.
    newer = {n: _utc(t) for n, t in until.items() if t is not None and _utc(t) > end}
    for name, t in sorted(newer.items()):
        log(
            f"publish: {name} already holds values until {t.isoformat()}, after {end.isoformat()}: left as is"
        )
    todo = [v for v in views if v.name not in newer]
    fresh = [v.name for v in todo if full or until[v.name] is None]
    seen = [v.name for v in todo if v.name not in fresh]
    feast_output = io.StringIO()
    with contextlib.redirect_stdout(feast_output):  # Feast prints coloured progress; keep it for the log
        for n, name in enumerate([*fresh, *seen]):
            if n == 1:
                faults.reach("publish.mid_materialize")
            if name in fresh:
                store.materialize(start_date=EPOCH, end_date=end, feature_views=[name])
            else:
                store.materialize_incremental(end_date=end, feature_views=[name])
    done = time.perf_counter()
    materialized = costs.materialized_rows(
        store, {v.name: (None if v.name in fresh else _utc(until[v.name]), end) for v in todo}
    )
    for line in feast_output.getvalue().splitlines():
        if line.startswith("Materializing"):
            log(f"publish: {_ANSI.sub('', line).strip()}")
    return PublishResult({
        "as_of": as_of.isoformat(),
        "materialized_until": end.isoformat(),
        "feature_views": sorted(v.name for v in views),
        "full_materialization": sorted(fresh),
        "incremental": sorted(seen),
        "kept_newer": {n: t.isoformat() for n, t in sorted(newer.items())},
        "materialized": materialized,
        "online_store": cfg.feast.online_store,
        "project": feast_project(cfg),
        "embedding_set": cfg.embed.embedding_set,
        "feature_store_yaml": str(yaml_path),
        "seconds": {"apply": round(applied - started, 3), "materialize": round(done - applied, 3),
                    "count_rows": round(time.perf_counter() - done, 3)},
    })  # fmt: skip
