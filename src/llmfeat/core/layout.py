"""The data directory's layout, in one place: every stage asks ``DataDir`` for its paths.

::

    <data_dir>/
      canonical/<table>/snapshot_date=D/     ingest: items, users, interactions, quarantine
      embeddings/<set>/<table>/              embed: item_text, user_text, user_history (+ quarantine, manifests)
      embeddings/<set>/work/run-<id>/        embed's staging area of one run
      features/<table>/                      stats: item_stats, user_stats, item_meta (+ manifests)
      features/work/run-<id>/                stats' staging area of one run
      features/training_frame/<set>/         train: the stored point-in-time training frame
      feast/  feast/sets/<set>/              publish: feature_store.yaml, registry, SQLite online store
      index/<set>/versions/, current         index: FAISS versions and the published pointer
      models/ctr/ [sets/<set>/]              train: CTR model runs and current.json
      models/encoders/<name>/                finetune: fine-tuned encoders
      models/adapters/<set>/                 adapt: collaborative adapters
      bandit/                                bandit policies and the event log
      reports/                               CTR reports (paths.reports_dir overrides)
      runs/<date>/                           nightly: stage markers and the run summary
      .llmfeat.lock                          the writers' lock

A data directory is relocatable: nothing stored in it names its own location.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from llmfeat.core.errors import ConfigError
from llmfeat.feast.names import ITEM_TEXT_TABLE, USER_HISTORY_TABLE, USER_TEXT_TABLE

DEFAULT_SET = "default"
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STAGING_PREFIX, OLD_PREFIX = ".staging-", ".old-"
"""Hidden names of atomic publishes in progress (``tables.staged_dir`` / ``tables.publish_dir``)."""


def check_set_name(name: str) -> str:
    if not _SET_NAME.match(name or ""):
        raise ConfigError(
            f"embed.embedding_set {name!r}: use letters, digits, '_', '-' and '.' (starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class DataDir:
    """Paths under one data directory. ``DataDir.of(cfg)`` is absolute; ``DataDir(path)`` keeps ``path`` as
    given. ``feast`` checks the embedding set's name (it becomes part of a Feast project name)."""

    root: Path

    @classmethod
    def of(cls, cfg) -> DataDir:
        return cls(Path(cfg.paths.data_dir).resolve())

    # --- ingest ---
    def canonical(self, table: str) -> Path:
        return self.root / "canonical" / table

    @property
    def quarantine(self) -> Path:
        return self.canonical("quarantine")

    # --- embed / stats / train frame ---
    def embeddings(self, emb_set: str) -> Path:
        return self.root / "embeddings" / emb_set

    @property
    def features(self) -> Path:
        return self.root / "features"

    def training_frame(self, emb_set: str) -> Path:
        return self.features / "training_frame" / emb_set

    @staticmethod
    def work(stage_root: Path, run_id: str) -> Path:
        """A Spark stage's staging area for one run, under its output root (embeddings/<set> or features)."""
        return Path(stage_root) / "work" / f"run-{run_id}"

    # --- publish / index ---
    def feast(self, emb_set: str) -> Path:
        root = self.root / "feast"
        return root if check_set_name(emb_set) == DEFAULT_SET else root / "sets" / emb_set

    def index(self, emb_set: str) -> Path:
        return self.root / "index" / emb_set

    # --- models ---
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def ctr_models_root(self) -> Path:
        return self.models / "ctr"

    def ctr_models(self, emb_set: str) -> Path:
        root = self.ctr_models_root
        return root if emb_set == DEFAULT_SET else root / "sets" / emb_set

    def encoders(self, name: str) -> Path:
        return self.models / "encoders" / name

    def adapters(self, emb_set: str) -> Path:
        return self.models / "adapters" / emb_set

    # --- operations ---
    @property
    def bandit(self) -> Path:
        return self.root / "bandit"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def run(self, as_of: dt.date) -> Path:
        """The nightly's markers and summary for one date."""
        return self.root / "runs" / as_of.isoformat()

    @property
    def lock(self) -> Path:
        return self.root / ".llmfeat.lock"

    def leftover_patterns(self) -> tuple[str, ...]:
        """Glob patterns (relative to the root) of what a writer that died leaves behind: the Spark stages'
        work areas, staging and swapped-out directories of atomic publishes under every table root, index
        versions being pruned, temporary index pointers. Derived from the paths above."""
        any_set = DataDir(Path())  # relative paths; "*" stands for every table and set
        table_roots = [
            any_set.root / "canonical" / "*",
            any_set.root / "embeddings" / "*" / "*",
            any_set.features / "*",
        ]
        work_roots = [any_set.root / "embeddings" / "*", any_set.features]
        versions = any_set.root / "index" / "*" / "versions"
        patterns = [
            *(str(DataDir.work(r, "*")) for r in work_roots),
            *(str(r / f"{prefix}*") for r in table_roots for prefix in (STAGING_PREFIX, OLD_PREFIX)),
            *(str(versions / f"{prefix}*") for prefix in (STAGING_PREFIX, OLD_PREFIX, ".deleting-")),
            str(any_set.root / "index" / "*" / ".current-*"),
        ]
        return tuple(patterns)

    def leftovers(self) -> list[Path]:
        """What ``leftover_patterns`` finds now."""
        return sorted({p for pattern in self.leftover_patterns() for p in self.root.glob(pattern)})


@dataclass(frozen=True)
class EmbeddingPaths:
    """One embedding set's tables (``DataDir.embeddings``): item_text, user_text, user_history, the texts
    that rendered empty, and the embed runs' manifests."""

    root: Path

    @property
    def item_text(self) -> Path:
        return self.root / ITEM_TEXT_TABLE

    @property
    def user_text(self) -> Path:
        return self.root / USER_TEXT_TABLE

    @property
    def user_history(self) -> Path:
        return self.root / USER_HISTORY_TABLE

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"


def embedding_paths(data_dir: Path, embedding_set: str) -> EmbeddingPaths:
    return EmbeddingPaths(DataDir(Path(data_dir)).embeddings(embedding_set))


@dataclass(frozen=True)
class StatsPaths:
    """The stats tables (``DataDir.features``) and the stats runs' manifests."""

    root: Path

    def table(self, name: str) -> Path:
        return self.root / name

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"


def stats_paths(data_dir: Path) -> StatsPaths:
    return StatsPaths(DataDir(Path(data_dir)).features)
