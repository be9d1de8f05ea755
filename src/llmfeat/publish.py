"""Stage 4, publish: apply the Feast repository and materialise the feature tables into the online store.

The repository's definitions live in ``feature_repo/features.py`` (what the plain ``feast`` CLI reads). This
module points them at the configured data directory and embedding set, writes the effective
``feature_store.yaml`` next to the data (``<data_dir>/feast/feature_store.yaml``: SQLite or Redis online
store, Spark offline store), applies the definitions and materialises:

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
import importlib.util
import io
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml

from llmfeat import costs
from llmfeat.config import Config, ConfigError
from llmfeat.faults import NO_FAULTS, Faults

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


DEFAULT_SET = "default"
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_set_name(name: str) -> str:
    if not _SET_NAME.match(name or ""):
        raise ConfigError(
            f"embed.embedding_set {name!r}: use letters, digits, '_', '-' and '.' (starting with a letter or digit)"
        )
    return name


def feast_dir(cfg: Config) -> Path:
    """The generated config, registry and SQLite online store of ``cfg``'s embedding set."""
    root = Path(cfg.paths.data_dir).resolve() / "feast"
    emb_set = check_set_name(cfg.embed.embedding_set)
    return root if emb_set == DEFAULT_SET else root / "sets" / emb_set


def feast_project(cfg: Config) -> str:
    """``feast.project`` for the default set, ``<feast.project>_<set>`` (non-word characters as '_') otherwise."""
    emb_set = check_set_name(cfg.embed.embedding_set)
    if emb_set == DEFAULT_SET:
        return cfg.feast.project
    return f"{cfg.feast.project}_{re.sub(r'[^A-Za-z0-9_]', '_', emb_set)}"


def staging_dir(cfg: Config) -> Path:
    """Where the Spark offline store writes point-in-time training sets before they are read back."""
    return (feast_dir(cfg) / "staging").resolve()


def feature_store_yaml(cfg: Config) -> dict:
    """The effective feature_store.yaml for this config (paths absolute, so any working directory works)."""
    f = cfg.feast
    if f.online_store == "sqlite":
        online = {"type": "sqlite", "path": str(feast_dir(cfg) / "online.db")}
    else:  # redis (config.OnlineStore: checked when the config loaded)
        online = {"type": "redis", "connection_string": f.redis_connection}
    from llmfeat.spark import spark_conf as llmfeat_spark_conf

    # The same session settings as llmfeat's own: whichever of Feast and llmfeat starts Spark first in a
    # process, the other joins it, so a Feast-started session must not fall back to Spark's 1 GB driver.
    spark_conf = llmfeat_spark_conf(cfg.spark)
    return {
        "project": feast_project(cfg),
        "provider": "local",
        "registry": {
            "registry_type": "file",
            "path": str(feast_dir(cfg) / "registry.db"),
            "cache_ttl_seconds": 60,
        },
        "online_store": online,
        # Training sets are written by Spark as Parquet here and read back with pyarrow, never collected
        # through the driver: a 100k-row frame of 384-d vectors once exhausted a 2 GB driver and hung.
        "offline_store": {
            "type": "spark",
            "spark_conf": spark_conf,
            "staging_location": str(staging_dir(cfg)),
        },
        "batch_engine": {"type": f.batch_engine},
        "entity_key_serialization_version": 3,
    }


PORTABLE_HEADER = """\
# Written by llmfeat from its config. Paths are relative to this folder: use it with the plain CLI as
#   feast -c {where} <command>        (serve, feature-views list, materialize-incremental, apply, ...)
# from any working directory, on this data directory or any copy of it. features.py beside it is the copy of
# the feature definitions these tables were published with (its data directory is the one it lies in).
# The Spark offline store's staging location is llmfeat's own (it sets it when it opens the store).
"""
DEFINITIONS_COPY = "features.py"
FEASTIGNORE = "sets/\nstaging/\n"


def portable_feature_store_yaml(cfg: Config) -> dict:
    """``feature_store_yaml`` as written into the data directory: the registry and the SQLite file relative to
    the feast folder (Feast resolves them against ``-c``), no machine-specific path at all."""
    out = feature_store_yaml(cfg)
    out["registry"] = {**out["registry"], "path": "registry.db"}
    if out["online_store"]["type"] == "sqlite":
        out["online_store"] = {**out["online_store"], "path": "online.db"}
    out["offline_store"] = {k: v for k, v in out["offline_store"].items() if k != "staging_location"}
    return out


def _write_if_changed(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` unless it already holds exactly that (a read-only command
    on a published directory writes nothing)."""
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_feature_store_yaml(cfg: Config) -> Path:
    """The portable feature_store.yaml (and a .feastignore keeping other sets' folders and the staging area out
    of the plain CLI's `apply`) in ``feast_dir(cfg)``."""
    folder = feast_dir(cfg)
    path = folder / "feature_store.yaml"
    where = "<data_dir>/feast" + ("" if folder.name == "feast" else f"/sets/{folder.name}")
    _write_if_changed(
        path,
        PORTABLE_HEADER.format(where=where)
        + yaml.safe_dump(portable_feature_store_yaml(cfg), sort_keys=False),
    )
    _write_if_changed(folder / ".feastignore", FEASTIGNORE)
    return path


def definitions_path(cfg: Config) -> Path:
    """feature_repo/features.py: ``feast.repo_path`` from the working directory, else from the source tree
    llmfeat runs from (so commands work from any directory), else the copy kept in the data directory."""
    configured = Path(cfg.feast.repo_path)
    candidates = [configured]
    if not configured.is_absolute():
        candidates.append(Path(__file__).resolve().parents[2] / configured)
    candidates.append(feast_dir(cfg))
    for folder in candidates:
        if (folder / "features.py").is_file():
            return (folder / "features.py").resolve()
    raise ConfigError(f"feast.repo_path {cfg.feast.repo_path} has no features.py")


def _copy_definitions(cfg: Config, source: Path) -> None:
    target = feast_dir(cfg) / DEFINITIONS_COPY
    if source.resolve() != target.resolve():
        _write_if_changed(target, source.read_text())


def _quiet_alpha_warnings() -> None:
    """Feast's Spark store warns that it is alpha on every use and, on import, installs a filter that
    overrides any earlier one; import it first, then ignore those warnings (they are not actionable)."""
    import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401

    warnings.filterwarnings("ignore", message=".*experimental feature in alpha development.*")


def open_store(cfg: Config):
    """A FeatureStore on ``cfg``'s data directory wherever it is now: the portable yaml is (re)written there
    when it differs, a registry copied from elsewhere is pointed at this directory's tables
    (``rebase_registry``), and the store is opened with the yaml's settings made absolute for this place."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    _quiet_alpha_warnings()
    write_feature_store_yaml(cfg)
    rebase_registry(cfg)
    config = RepoConfig(**feature_store_yaml(cfg))
    config.repo_path = feast_dir(cfg)
    return FeatureStore(repo_path=str(feast_dir(cfg)), config=config)


def _rebased(path: str, root: Path) -> str | None:
    """``path`` (a table of another data directory) as the same table under ``root``; None when it already
    is under ``root``, is not a local path, or ``root`` has no such table."""
    if not path.startswith("/") or Path(path).is_relative_to(root):
        return None
    for ancestor in Path(path).parents:  # deepest first: /old/data/features/item_stats -> features/item_stats
        candidate = root / Path(path).relative_to(ancestor)
        if candidate.exists():
            return str(candidate)
    return None


def _data_sources(message) -> Iterator:
    """Every DataSource message inside a registry proto (top-level sources and those inside views)."""
    from feast.protos.feast.core.DataSource_pb2 import DataSource

    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE or field.message_type.GetOptions().map_entry:
            continue
        for item in [value] if hasattr(value, "DESCRIPTOR") else value:  # one message, or a repeated field
            if isinstance(item, DataSource):
                yield item
            yield from _data_sources(item)


def rebase_registry(cfg: Config) -> int:
    """Point the registry's data sources at this data directory's tables when they name another one (this
    directory is a copy, or was moved). Only the paths change, so views keep their materialised intervals
    (their online rows came along). The file is replaced in one rename, under a lock: a `feast serve` reading
    it meanwhile sees the old or the new registry, and two commands opening a fresh copy at once rebase it
    once. Returns how many paths changed."""
    import fcntl

    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto

    path = feast_dir(cfg) / "registry.db"
    if not path.is_file():
        return 0
    root = Path(cfg.paths.data_dir).resolve()
    with (path.parent / ".registry.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        registry = RegistryProto()
        registry.ParseFromString(path.read_bytes())
        changed = 0
        for source in _data_sources(registry):
            for options, key in ((source.spark_options, "path"), (source.file_options, "uri")):
                new = _rebased(getattr(options, key), root)
                if new is not None:
                    setattr(options, key, new)
                    changed += 1
        if changed:
            tmp = path.with_name(f".registry.db.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(registry.SerializeToString())
            os.replace(tmp, path)
    return changed


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Feature definitions read their data location from the environment (as the plain CLI would); set it
    for the duration of the import only."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_definitions(cfg: Config) -> list:
    """Import feature_repo/features.py afresh for this data directory and embedding set; its Feast objects."""
    from feast import Entity, FeatureService, FeatureView

    path = definitions_path(cfg)
    env = {
        "LLMFEAT_DATA_DIR": str(Path(cfg.paths.data_dir).resolve()),
        "LLMFEAT_EMBEDDING_SET": cfg.embed.embedding_set,
    }
    with _environment(env):
        spec = importlib.util.spec_from_file_location(f"llmfeat_feature_repo_{uuid.uuid4().hex[:8]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    objects = [v for v in vars(module).values() if isinstance(v, Entity | FeatureView | FeatureService)]
    return objects


def _utc(t: dt.datetime) -> dt.datetime:
    """Feast's registry returns naive datetimes meaning UTC."""
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def run_publish(
    cfg: Config, as_of: dt.date, *, full: bool = False, log=print, faults: Faults = NO_FAULTS
) -> dict:
    """Apply the repository and materialise up to the snapshot time of ``as_of`` (00:00 UTC, inclusive).

    One view at a time: Feast records a view's materialised interval in the registry only after the view is
    written, so a run that dies half-way leaves every view either done (its interval recorded, its online
    rows complete) or to be done again by the next run."""
    from feast import FeatureView

    started = time.perf_counter()
    store = open_store(cfg)
    _copy_definitions(cfg, definitions_path(cfg))
    objects = load_definitions(cfg)
    store.apply(objects)
    views = [o for o in objects if isinstance(o, FeatureView)]
    end = dt.datetime.combine(as_of, dt.time(0), tzinfo=dt.UTC)
    applied = time.perf_counter()
    until = {v.name: store.get_feature_view(v.name).most_recent_end_time for v in views}
    # A backfill never moves the online store back in time: views published past `end` keep their values.
    newer = {n: _utc(t) for n, t in until.items() if t is not None and _utc(t) > end}
    for name, t in sorted(newer.items()):
        log(f"publish: {name} already holds values until {t.isoformat()}, after {end.isoformat()}: left as is")
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
    return {
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
        "feature_store_yaml": str(feast_dir(cfg) / "feature_store.yaml"),
        "seconds": {
            "apply": round(applied - started, 3),
            "materialize": round(done - applied, 3),
            "count_rows": round(time.perf_counter() - done, 3),
        },
    }
