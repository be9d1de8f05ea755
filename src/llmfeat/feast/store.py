"""A data directory's Feast store: its effective config, opening it, the portable feature_store.yaml, and the
feature definitions.

Each embedding set is its own Feast project with its own registry, online tables and generated config: the
``default`` set is project ``feast.project`` (``llmfeat``) under ``<data_dir>/feast/``; another set ``S`` is
project ``llmfeat_S`` under ``<data_dir>/feast/sets/S/`` (``layout.DataDir.feast``).

Opening a store (``open_store``) writes nothing: the store is built from the config in memory, with paths
absolute for where the data directory is now. The one exception is a registry whose data sources still point
into the directory this one was copied from: it is rebased once (``rebase_registry``) before anything reads
through it. The portable ``feature_store.yaml`` (paths relative to its folder, for the plain ``feast -c``
CLI) and the copy of the definitions are written by ``publish`` (``write_repo_files``).

The definitions (``feature_repo/features.py``) learn their data directory and embedding set from the
``LLMFEAT_LOCATION`` name this loader sets in the module's namespace before running it; the process
environment is never touched.
"""

from __future__ import annotations

import fcntl
import importlib.util
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml

from llmfeat.core import tables
from llmfeat.core.compact import copy_of, is_copy, source_of
from llmfeat.core.config import Config
from llmfeat.core.errors import ConfigError
from llmfeat.core.layout import DEFAULT_SET, DataDir, check_set_name  # noqa: F401 - re-exported


def feast_dir(cfg: Config) -> Path:
    """The generated config, registry and SQLite online store of ``cfg``'s embedding set."""
    return DataDir.of(cfg).feast(cfg.embed.embedding_set)


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
    from llmfeat.core.spark import spark_conf as llmfeat_spark_conf

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
    """Atomically replace ``path`` with ``text`` unless it already holds exactly that."""
    if not (path.is_file() and path.read_text() == text):
        tables.write_atomic(path, text)


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
        candidates.append(Path(__file__).resolve().parents[3] / configured)
    candidates.append(feast_dir(cfg))
    for folder in candidates:
        if (folder / "features.py").is_file():
            return (folder / "features.py").resolve()
    raise ConfigError(f"feast.repo_path {cfg.feast.repo_path} has no features.py")


def write_repo_files(cfg: Config) -> Path:
    """What the plain ``feast -c <data_dir>/feast`` CLI needs in the data directory: the portable yaml and a
    copy of the definitions being published (``publish`` calls this; reading never does). Returns the yaml."""
    path = write_feature_store_yaml(cfg)
    source, target = definitions_path(cfg), feast_dir(cfg) / DEFINITIONS_COPY
    if source.resolve() != target.resolve():
        _write_if_changed(target, source.read_text())
    return path


def _quiet_alpha_warnings() -> None:
    """Feast's Spark store warns that it is alpha on every use and, on import, installs a filter that
    overrides any earlier one; import it first, then ignore those warnings (they are not actionable)."""
    import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401

    warnings.filterwarnings("ignore", message=".*experimental feature in alpha development.*")


def open_store(cfg: Config):
    """A FeatureStore on ``cfg``'s data directory wherever it is now, configured in memory (nothing written;
    a registry copied from elsewhere is first pointed at this directory's tables, ``rebase_registry``)."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    _quiet_alpha_warnings()
    rebase_registry(cfg)
    config = RepoConfig(**feature_store_yaml(cfg))
    config.repo_path = feast_dir(cfg)
    return FeatureStore(repo_path=str(feast_dir(cfg)), config=config)


def _rebased(path: str, root: Path) -> str | None:
    """``path`` (a table of another data directory) as the same table under ``root``; None when it already
    is under ``root``, is not a local path, or ``root`` has no such table."""
    if not path.startswith("/") or Path(path).is_relative_to(root):
        return None
    if is_copy(Path(path)):  # a table's compact copy: rebase the table (its copy may not be synced yet)
        table = _rebased(str(source_of(Path(path))), root)
        return None if table is None else str(copy_of(Path(table)))
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
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto

    path = feast_dir(cfg) / "registry.db"
    if not path.is_file():
        return 0
    root = DataDir.of(cfg).root
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
            tables.write_atomic(path, registry.SerializeToString())
    return changed


def load_definitions(cfg: Config) -> list:
    """Run feature_repo/features.py afresh for this data directory and embedding set (given to it as the
    module global ``LLMFEAT_LOCATION``, not through the environment); its Feast objects."""
    from feast import Entity, FeatureService, FeatureView

    path = definitions_path(cfg)
    spec = importlib.util.spec_from_file_location(f"llmfeat_feature_repo_{uuid.uuid4().hex[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    module.LLMFEAT_LOCATION = (str(DataDir.of(cfg).root), cfg.embed.embedding_set)
    spec.loader.exec_module(module)
    return [v for v in vars(module).values() if isinstance(v, Entity | FeatureView | FeatureService)]


def feature_views(objects: list) -> list:
    """The FeatureViews among loaded definitions."""
    from feast import FeatureView

    return [o for o in objects if isinstance(o, FeatureView)]
