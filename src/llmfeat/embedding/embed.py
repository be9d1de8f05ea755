"""Stage 2, embed (Spark): canonical tables -> item and user embedding tables, incrementally.

Outputs, under ``<data_dir>/embeddings/<embedding_set>/``, each partitioned by ``snapshot_date``:

- ``item_text``: item_id, embedding, dim, model_id, content_hash, n_tokens, truncated, event_timestamp (the
  item's updated_at), created_timestamp
- ``user_text``: user_id, ... as above, n_history, event_timestamp (the snapshot time)
- ``user_history``: user_id, embedding (time-decayed mean of clicked items' vectors), n_clicks,
  last_click_ts, event_timestamp (the snapshot time)
- ``quarantine``: texts that render empty (EMPTY_TEXT)
- ``manifests/<run_id>.json``: model id, precision, device, counts, timings, inputs, outputs

Tables are change logs: a row is written only for an entity whose text (content hash) differs from its
latest earlier row, so a point-in-time join on event_timestamp finds the right version. A text is encoded
only if no stored row of the same model already holds its content hash, and identical texts within a run are
encoded once. One table never mixes model ids: a run with a different model is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.core import compact, latest, tables
from llmfeat.core.changelog import (
    covered_until,
    events_appended_since,
    first_snapshot,
    publish_partitions,
    require_canonical,
    snapshot_times,
)
from llmfeat.core.config import Config
from llmfeat.core.errors import ConfigError, ModelMismatchError  # noqa: F401 - re-exported
from llmfeat.core.faults import NO_FAULTS, Faults
from llmfeat.core.layout import DataDir, EmbeddingPaths, embedding_paths  # noqa: F401 - re-exported
from llmfeat.core.results import EmbedResult
from llmfeat.core.spark import buckets
from llmfeat.core.stage_run import Phases, StageRun
from llmfeat.core.tables import rows_from
from llmfeat.data.sources.raw import InputError
from llmfeat.data.texts import render_all, template_fields
from llmfeat.embedding.encoder import (
    EncoderSpec,
    TextEncoder,
    default_model_dir,
    model_id,
    model_token_limit,
    resolve_spec,
)
from llmfeat.embedding.user_state import Prior, UserStateParams, content_hash, user_snapshots
from llmfeat.feast.names import EMBEDDING_TABLES

EMBED_TABLES = EMBEDDING_TABLES


class NothingToEmbedError(InputError):
    """The canonical items snapshot has no rows: there is nothing to encode (exit 3, nothing written)."""


def require_items(data_dir: Path, as_of: dt.date) -> Path:
    """The canonical items snapshot of ``as_of``; refused before any Spark work when it has no rows (an empty
    catalogue file, or every item quarantined at ingest)."""
    import pyarrow.parquet as pq

    path = require_canonical(data_dir, as_of, ("items",))["items"]
    files = sorted(path.glob("*.parquet"))
    if sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0:
        quarantine = tables.snapshot_dir(DataDir(Path(data_dir)).quarantine, as_of)
        raise NothingToEmbedError(
            f"nothing to embed: the items table of snapshot {as_of} ({path}) has no rows; "
            f"see the ingest quarantine ({quarantine}). Nothing was written."
        )
    return path


def set_for_model(model_dir: Path | str) -> str:
    """The embedding set ``llmfeat embed --model DIR`` writes to unless told otherwise: ``default`` for the
    default model, else the model directory's name (a fine-tuned model gets its own set, never the default)."""
    model = Path(model_dir).resolve()
    return "default" if model == default_model_dir().resolve() else model.name


def encoder_spec(cfg: Config) -> EncoderSpec:
    e = cfg.embed
    return EncoderSpec(
        model_dir=str(Path(e.model_dir or default_model_dir()).resolve()), max_tokens=e.max_tokens, pooling=e.pooling,
        precision=e.precision, device=e.device, token_budget=e.token_budget, max_batch_rows=e.max_batch_rows,
        threads=cfg.spark.task_cpus, item_prompt=e.item_prompt, user_prompt=e.user_prompt, dims=e.dims,
        padding_side=e.padding_side,
    )  # fmt: skip


def describe_model(spec: EncoderSpec) -> tuple[str, int]:
    """(model id, stored dim) from the model directory's files, without loading the weights."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(spec.model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir, local_files_only=True)
    limit = model_token_limit(Path(spec.model_dir), tokenizer, config)
    hidden = int(config.hidden_size)
    try:
        resolved = resolve_spec(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if resolved.dims is not None and resolved.dims > hidden:
        raise ConfigError(
            f"embed.dims={resolved.dims} is wider than the model's {hidden} dimensions ({spec.model_dir})"
        )
    return model_id(resolved, limit, hidden), resolved.dims or hidden


def make_encoder_udf(spec: EncoderSpec, batch_rows: int):
    """A predict_batch_udf: the encoder loads once per Python worker and encodes batches of texts."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import (
        ArrayType,
        ByteType,
        FloatType,
        IntegerType,
        StringType,
        StructField,
        StructType,
    )

    def make_predict_fn():
        from pyspark import TaskContext

        task_spec = spec
        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
        if gpus is not None and gpus.addresses and spec.device in ("auto", "cuda"):
            task_spec = EncoderSpec(**{**spec.__dict__, "device": f"cuda:{gpus.addresses[0]}"})
        encoder = TextEncoder(task_spec)
        runtime = f"{encoder.device}/{encoder.precision}"

        def predict(kinds: np.ndarray, texts: np.ndarray) -> dict[str, np.ndarray]:
            """One batch may hold item and user texts (one prompt each): encode each kind with its own."""
            vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
            n_tokens = np.zeros(len(texts), dtype=np.int32)
            truncated = np.zeros(len(texts), dtype=np.int8)
            for kind in np.unique(kinds):
                rows = np.flatnonzero(kinds == kind)
                out = encoder.encode([str(texts[i]) for i in rows], prompt_name=str(kind))
                vectors[rows], n_tokens[rows], truncated[rows] = out.vectors, out.n_tokens, out.truncated
            return {
                "embedding": vectors,
                "n_tokens": n_tokens,
                "truncated": truncated,
                "runtime": np.array([runtime] * len(texts), dtype=object),
            }

        return predict

    return_type = StructType(
        [
            StructField("embedding", ArrayType(FloatType())),
            StructField("n_tokens", IntegerType()),
            StructField("truncated", ByteType()),
            StructField("runtime", StringType()),
        ]
    )
    return predict_batch_udf(make_predict_fn, return_type=return_type, batch_size=batch_rows)


MODEL_IDS = ".model_ids.json"
"""Beside a change-log table's partitions (hidden: readers skip names starting with "."): each partition's fingerprint
and model ids, so that ``stored_model_ids`` reads only the partitions published since it last looked."""


def stored_model_ids(path: Path) -> set[str]:
    """The model ids in a published change-log table: each partition's ``model_id`` column (read with pyarrow:
    dictionary-encoded, milliseconds where a Spark job took seconds), once per partition version
    (``compact.partition_fingerprints``; remembered in ``MODEL_IDS``), so the check does not grow with history."""
    import pyarrow.parquet as pq

    path = Path(path)
    wanted = compact.partition_fingerprints(path)
    if not wanted:
        return set()
    memo = path / MODEL_IDS
    known = json.loads(memo.read_text()).get("days", {}) if memo.is_file() else {}
    days = {d: known[d] if d in known and known[d][0] == fp else None for d, fp in wanted.items()}
    for d, seen in days.items():
        if seen is None:
            column = pq.read_table(tables.snapshot_dir(path, dt.date.fromisoformat(d)), columns=["model_id"])
            ids = sorted(v for v in column.column("model_id").unique().to_pylist() if v is not None)
            days[d] = [wanted[d], ids]
    if days != known:
        tables.write_json(memo, {"days": days})
    return {i for _, ids in days.values() for i in ids}


def check_model(paths: EmbeddingPaths, current: str) -> None:
    """Refuse to add vectors of ``current`` to a table that holds another model's."""
    for name in EMBED_TABLES:
        others = sorted(stored_model_ids(getattr(paths, name)) - {current})
        if others:
            raise ModelMismatchError(
                f"embedding table {name!r} holds vectors of model {', '.join(others)}; this run uses {current}. "
                "Mixing models in one table is refused: write to another set (--set embed.embedding_set=NAME)."
            )


@dataclass
class _Run:
    """What every phase of one embed run shares."""

    spark: object
    cfg: Config
    as_of: dt.date
    staging: Path
    model_id: str
    dim: int
    created: pd.Timestamp
    udf: object
    pools: dict
    """Stored vectors (content_hash -> embedding, ...) a text of each kind may reuse: ``item`` and ``user``."""
    phases: Phases
    runtimes: set[str]
    driver_encoder: TextEncoder | None = None
    """Loaded on the first few-texts encode of the run (``embed.driver_encode_max``)."""

    def encode(self, texts, name: str, also=None):
        """Vectors (content_hash -> embedding, n_tokens, truncated) for every text in ``texts`` (and the stored
        ones of the texts in ``also``, e.g. every current item where only the changed ones may be new).

        Only distinct texts that no stored row already holds go through the model. Their partitioning is a
        function of the content hash alone, so the same texts form the same batches on any cluster.
        """
        from pyspark.sql import functions as F

        kind = {"items": "item", "users": "user"}[name]
        pool = self.pools[kind]
        distinct = texts.select("content_hash", "text").dropDuplicates(["content_hash"])
        new = (
            distinct
            if pool is None
            else distinct.join(pool.select("content_hash"), "content_hash", "left_anti")
        )
        n_new = new.count()
        encoded = None
        if n_new and n_new <= self.cfg.embed.driver_encode_max:
            encoded = self._encode_in_driver(new, kind, self.staging / f"encoded_{name}")
        elif n_new:
            out = self.staging / f"encoded_{name}"
            parts = max(1, min(2 * self.spark.sparkContext.defaultParallelism, math.ceil(n_new / 256)))
            (
                new.repartition(parts, "content_hash")
                .sortWithinPartitions("content_hash")
                .select("content_hash", self.udf(F.lit(kind), "text").alias("e"))
                .select(
                    "content_hash",
                    "e.embedding",
                    "e.n_tokens",
                    (F.col("e.truncated") == 1).alias("truncated"),
                    "e.runtime",
                )
                .write.parquet(str(out))
            )
            encoded = self.spark.read.parquet(str(out))
            self.runtimes.update(r[0] for r in encoded.select("runtime").distinct().collect())
            encoded = encoded.drop("runtime")
        if pool is None:
            vectors = encoded
        else:  # only the stored vectors of these texts: a semi-join, not a shuffle of every stored vector
            wanted = distinct.select("content_hash")
            wanted = wanted if also is None else wanted.unionByName(also.select("content_hash"))
            reused = pool.join(wanted, "content_hash", "left_semi")
            reused = reused.dropDuplicates(["content_hash"])
            vectors = reused if encoded is None else reused.unionByName(encoded)
        if vectors is None:  # nothing stored and nothing new (every text empty): an empty table, not None
            vectors = self.spark.createDataFrame(
                [], "content_hash string, embedding array<float>, n_tokens int, truncated boolean"
            )
        return vectors, n_new

    def _encode_in_driver(self, new, kind: str, out: Path):
        """``encode``'s few-texts path: the texts collected, encoded here, written as the Spark path writes them."""
        import pyarrow as pa
        import torch

        texts = new.select("content_hash", "text").toPandas().sort_values("content_hash")
        threads = torch.get_num_threads()
        try:  # the tasks' spec (their thread count too): the batches and numbers a one-partition Spark job makes
            if self.driver_encoder is None:
                self.driver_encoder = TextEncoder(encoder_spec(self.cfg))
            enc = self.driver_encoder
            torch.set_num_threads(enc.spec.threads or threads)
            got = enc.encode(texts["text"].tolist(), prompt_name=kind)
        finally:  # the driver's later torch work (the CTR fits) keeps its own thread count
            torch.set_num_threads(threads)
        self.runtimes.add(f"{enc.device}/{enc.precision}")
        table = pa.table({
            "content_hash": texts["content_hash"].tolist(),
            "embedding": pa.array(list(np.asarray(got.vectors, dtype=np.float32)), pa.list_(pa.float32())),
            "n_tokens": pa.array(np.asarray(got.n_tokens, dtype=np.int32)),
            "truncated": pa.array(np.asarray(got.truncated).astype(bool)),
        })  # fmt: skip
        out.mkdir(parents=True)
        tables.write_parquet(table, out / "part-0.parquet")
        return self.spark.read.parquet(str(out))

    def tagged(self, df, *cols):
        """Add the columns every embedding row carries."""
        from pyspark.sql import functions as F

        return df.select(
            *cols, F.lit(self.dim).alias("dim"), F.lit(self.model_id).alias("model_id"),
            F.lit(self.created).cast("timestamp").alias("created_timestamp"),
        )  # fmt: skip

    def write(self, df, name: str) -> tuple[int, int]:
        """Write ``df`` partitioned by snapshot_date into the work area; returns (rows, truncated rows) as
        written, counted from the files (pyarrow: milliseconds, where a Spark job to count them took a second)."""
        self.phases.run(
            f"write {name}", lambda: df.write.partitionBy("snapshot_date").parquet(str(self.staging / name))
        )
        return _written_counts(self.staging / name)


def _written_counts(path: Path) -> tuple[int, int]:
    """(rows, rows with ``truncated`` set) of a table just written to the work area ((0, 0): nothing)."""
    import pyarrow.dataset as ds

    if not tables.snapshot_dates(path):
        return 0, 0
    data = ds.dataset(str(path), format="parquet", partitioning="hive")
    if "truncated" not in data.schema.names:
        return data.count_rows(), 0
    column = data.to_table(columns=["truncated"]).column("truncated")
    return len(column), int(column.to_numpy(zero_copy_only=False).sum())


def _embed_items(run: _Run, items, prev_rows):
    """Render item texts, encode the new or changed ones; returns (texts, vectors, written rows, counts)."""
    from pyspark.sql import functions as F

    template = run.cfg.embed.item_template
    cols = [
        "item_id",
        "updated_at",
        *[c for c in template_fields(template) if c not in ("item_id", "updated_at")],
    ]

    def render_items(batches):
        for pdf in batches:
            texts = render_all(template, pdf[cols].to_dict("records"))
            yield pd.DataFrame({"item_id": pdf["item_id"], "updated_at": pdf["updated_at"], "text": texts,
                                "content_hash": [content_hash(t) for t in texts]})  # fmt: skip

    texts = items.select(*cols).mapInPandas(
        render_items, "item_id string, updated_at timestamp, text string, content_hash string"
    )
    texts = run.phases.run("render item texts", lambda: texts.localCheckpoint())
    non_empty = texts.where(F.length("text") > 0)
    changed = non_empty
    if prev_rows is not None:
        prev = prev_rows.select("item_id", F.col("content_hash").alias("_prev"))
        changed = non_empty.join(prev, "item_id", "left").where(
            F.col("_prev").isNull() | (F.col("_prev") != F.col("content_hash"))
        )
        # read by the encode, the write and the users' pass: computed once (a join with every item's last row)
        changed = run.phases.run("changed item texts", lambda: changed.drop("_prev").localCheckpoint())
    vectors, n_encoded = run.phases.run(
        "encode item texts", lambda: run.encode(changed, "items", also=non_empty)
    )
    rows = run.tagged(
        changed.join(vectors, "content_hash"),
        "item_id", "embedding", "content_hash", "n_tokens", "truncated", F.col("updated_at").alias("event_timestamp"),
        F.lit(run.as_of).alias("snapshot_date"),
    )  # fmt: skip
    # no changed text (most nights): nothing to write, and no Spark job writing an empty table
    n_written, n_truncated = (
        run.write(rows, "item_text") if prev_rows is None or not changed.isEmpty() else (0, 0)
    )
    n_read, n_empty = _count_rows(texts, F.coalesce(F.length("text"), F.lit(0)) == 0)
    counts = {
        "read": n_read, "quarantined": n_empty, "unchanged": n_read - n_empty - n_written, "written": n_written,
        "encoded": n_encoded, "reused": n_written - n_encoded, "truncated": n_truncated,
    }  # fmt: skip
    current_vectors = (
        non_empty.join(vectors, "content_hash").select("item_id", "embedding")
        if vectors is not None
        else None
    )
    return texts, current_vectors, changed.select("item_id"), counts


def _unchanged_items(run: _Run, items, prev_rows, n_items: int, since: dt.date):
    """``_embed_items`` when nothing about the items changed since the run of ``since``
    (``_items_unchanged_since``): each item's latest row already holds its current text's vector, so nothing
    is rendered, compared or encoded, and the users' pass pools the stored vectors."""
    vectors = prev_rows.join(items.select("item_id"), "item_id", "left_semi").select("item_id", "embedding")
    counts = {
        "read": 0, "quarantined": 0, "unchanged": n_items, "written": 0, "encoded": 0, "reused": 0, "truncated": 0,
        "skipped": f"the items snapshot holds the rows of {since}'s, rendered and encoded the same way",
    }  # fmt: skip
    return None, vectors, run.spark.createDataFrame([], "item_id string"), counts


def _item_pass(cfg: Config, as_of: dt.date, model: dict) -> dict:
    """What the item pass of a run depends on besides the stored rows: the items snapshot (ingest's row
    digest, ``tables.snapshot_digest``), the template and the encoder. Recorded in the manifest."""
    items = tables.canonical_dir(cfg.paths.data_dir, "items")
    return {
        "items_digest": tables.snapshot_digest(items, as_of), "template": cfg.embed.item_template,
        "model_id": model["model_id"], "item_prompt": model["prompts"]["item"], "max_tokens": model["max_tokens"],
        "pooling": model["pooling"], "dims": model["dims"],
    }  # fmt: skip


def _items_unchanged_since(paths: EmbeddingPaths, as_of: dt.date, item_pass: dict) -> dt.date | None:
    """The date of the last run before ``as_of`` if its item pass saw the same items snapshot (same row digest)
    under the same template and encoder, rendered no empty text, and no item row was published after it
    (before ``as_of``): then every item's latest row is its text and vector tonight. None otherwise (the item
    pass runs: a first run, a changed catalogue, a new template, a run that left no digest)."""
    import json

    if item_pass["items_digest"] is None or not paths.manifests.is_dir():
        return None
    runs = [json.loads(f.read_text()) for f in paths.manifests.glob("*.json")]
    runs = [m for m in runs if dt.date.fromisoformat(m["as_of"]) < as_of]
    if not runs:
        return None
    last = max(runs, key=lambda m: (m["as_of"], m.get("started", "")))
    since = dt.date.fromisoformat(last["as_of"])
    if last.get("item_pass") != item_pass or last["counts"]["items"].get("quarantined", 1) != 0:
        return None
    # item rows of a run that left no manifest (it died after publishing them): not known to be the same
    published_since = any(since < d < as_of for d in tables.snapshot_dates(paths.item_text))
    return None if published_since else since


def _count_rows(df, condition) -> tuple[int, int]:
    """Rows of ``df`` and how many of them meet ``condition``, in one Spark job ((0, 0) for no table)."""
    from pyspark.sql import functions as F

    if df is None:
        return 0, 0
    total, meeting = df.agg(F.count(F.lit(1)), F.sum(condition.cast("long"))).collect()[0]
    return int(total), int(meeting or 0)


STATE_SCHEMA = (
    "kind string, user_id string, snapshot_ts timestamp, text string, content_hash string, n_history int, "
    "recent_titles array<string>, embedding array<float>, n_clicks int, last_click_ts timestamp, pooled_norm double"
)
STATE_COLUMNS = [c.split()[0] for c in STATE_SCHEMA.split(", ")]
PRIOR_COLUMNS = ["_prior_titles", "_prior_pooled", "_prior_norm", "_prior_last"]
"""A profile's prior state in the windowed pass, from the user's latest rows (``_embed_users``)."""


def _prior(profile: dict) -> Prior:
    """``user_state.Prior`` from a profile row of the windowed pass (no latest rows: a new user, nothing yet)."""
    titles, pooled, norm, last = (profile.pop(c) for c in PRIOR_COLUMNS)
    n = 0 if pd.isna(profile["_prev_clicks"]) else int(profile["_prev_clicks"])
    titles = [] if titles is None else [t if isinstance(t, str) else "" for t in titles]
    vector = np.asarray(pooled, dtype=np.float64) * float(norm) if n else None
    return Prior(titles, vector, last if n else None, n)


def _user_states_fn(times: list[pd.Timestamp], params: UserStateParams, windowed: bool = False):
    """For cogroup(...).applyInPandas over buckets of users (``llmfeat.core.spark.buckets``): the profiles of
    a bucket's users + their clicks -> text and history rows. ``windowed``: the clicks are those since the
    last covered snapshot only, and each profile carries the user's prior state (``_prior``)."""

    def states(profiles_pdf: pd.DataFrame, clicks_pdf: pd.DataFrame) -> pd.DataFrame:
        # Clicks of a user missing from the profiles (validation prevents it) are never looked up.
        by_user = clicks_pdf.groupby("user_id", sort=False).indices if len(clicks_pdf) else {}
        no_clicks = clicks_pdf.iloc[:0]
        blank = dict.fromkeys(STATE_COLUMNS)
        rows = []
        for profile in profiles_pdf.drop(columns="_bucket").to_dict("records"):
            prior = _prior(profile) if windowed else None
            prev_hash, prev_clicks = profile.pop("_prev_hash"), profile.pop("_prev_clicks")
            at = by_user.get(profile["user_id"])
            text_rows, hist_rows = user_snapshots(
                profile, no_clicks if at is None else clicks_pdf.iloc[at], times, params,
                prev_text_hash=None if pd.isna(prev_hash) else prev_hash,
                prev_n_clicks=0 if pd.isna(prev_clicks) else int(prev_clicks), prior=prior,
            )  # fmt: skip
            rows += [{**blank, **r, "kind": "text"} for r in text_rows]
            rows += [{**blank, **r, "kind": "history"} for r in hist_rows]
        out = pd.DataFrame(rows, columns=STATE_COLUMNS).astype({"n_history": "Int32", "n_clicks": "Int32"})
        for col in ("embedding", "recent_titles"):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
        return out

    return states


def _users_that_may_change(users, clicks, prev_text, prev_hist, changed_items, since: pd.Timestamp,
                           past_unchanged: bool = False, windowed: dict | None = None):  # fmt: skip
    """The users whose text or history row may differ after ``since`` (the last covered snapshot) from their
    latest rows: a profile updated at or after ``since``, a click at or after it, no text row yet, a click on
    an item whose text is new or changed tonight (its title may be in their history), or a count of clicks on
    embedded items before ``since`` that differs from their history row's (a late or removed click). Any
    other user renders the same text and pools the same clicks: no new row, so skipping them is exact. (One
    case it cannot see: a late click on an item without a vector, i.e. an empty text, that would enter a
    history text; that user is recomputed with their next click.)

    ``past_unchanged``: the clicks before ``since`` are known to be those the previous rows were computed from
    (``changelog.events_appended_since``), so they are not recounted; ``changed_items`` then also holds the
    items that render empty now (the one other way a count of clicks on embedded items can move).

    ``windowed`` (the windowed users' pass: no changed item, the past unchanged): the same users found in the
    driver from the files (``_windowed_active``), a small local table instead of a Spark job."""
    from pyspark.sql import functions as F

    if windowed is not None:
        found = _windowed_active(since, **windowed)
        return users.sparkSession.createDataFrame(
            pd.DataFrame({"user_id": found}, dtype=object), "user_id string"
        )
    at = F.lit(since.to_pydatetime())
    found = (
        users.where(F.col("updated_at") >= at).select("user_id")
        .unionByName(clicks.where(F.col("event_ts") >= at).select("user_id"))
        .unionByName(users.select("user_id").join(prev_text, "user_id", "left_anti"))
        .unionByName(clicks.join(changed_items, "item_id", "left_semi").select("user_id"))
    )  # fmt: skip
    if not past_unchanged:
        embedded = clicks.where(F.col("embedding").isNotNull() & (F.size("embedding") > 0))
        before = embedded.where(F.col("event_ts") < at).groupBy("user_id").agg(F.count(F.lit(1)).alias("_n"))
        moved = before.join(prev_hist, "user_id", "full").where(
            F.coalesce("_n", F.lit(0)) != F.coalesce("_prev_clicks", F.lit(0))
        )
        found = found.unionByName(moved.select("user_id"))
    return found.distinct()


def _windowed_active(
    since: pd.Timestamp, users: Path, items: Path, interactions: Path, text_fold: Path
) -> list[str]:
    """``_users_that_may_change`` for the windowed pass, read with pyarrow: users updated at or after ``since``,
    users with a click (label 1, on a catalogue item) at or after it (the row groups before it are skipped),
    and users without a text row. (No item changed and the past is unchanged, so no other user can move.)"""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    at = since.to_pydatetime()
    people = pq.read_table(users, columns=["user_id", "updated_at"])
    clicks = pq.read_table(interactions, columns=["user_id", "item_id", "label"],
                           filters=[("event_ts", ">=", at), ("label", "=", 1)])  # fmt: skip
    listed = pq.read_table(items, columns=["item_id"])["item_id"]
    written = pq.read_table(text_fold, columns=["user_id"])["user_id"]
    found = set(people.filter(pc.field("updated_at") >= at)["user_id"].to_pylist())
    found |= set(clicks.filter(pc.is_in(clicks["item_id"], listed))["user_id"].to_pylist())
    found |= set(people.filter(pc.invert(pc.is_in(people["user_id"], written)))["user_id"].to_pylist())
    return sorted(found)


def _embed_users(run: _Run, users, interactions, items, item_vectors, prev_text, prev_hist, times,
                 changed_items, since: pd.Timestamp | None, past_unchanged: bool = False,
                 text_fold: Path | None = None):  # fmt: skip
    """Point-in-time user texts and pooled-history vectors at each snapshot time; encode the new texts.
    Catching up after ``since`` (the last covered snapshot), only the users that may change are computed;
    ``text_fold`` (the windowed pass, ``_windowed_users``; the user_text fold's file): from their prior state
    and the clicks since ``since`` alone."""
    from pyspark.sql import functions as F

    windowed = text_fold is not None

    params = UserStateParams(
        run.cfg.embed.user_template, run.cfg.embed.user_history_n, run.cfg.embed.history_half_life_days
    )
    fields = [c for c in template_fields(params.template) if c not in ("history", "user_id", "updated_at")]
    # each user's latest rows (their folds), with the prior state the windowed pass continues from
    prior_text = [F.col("recent_titles").alias("_prior_titles")] if windowed else []
    prior_hist = [F.col("embedding").alias("_prior_pooled"), F.col("pooled_norm").alias("_prior_norm"),
                  F.col("last_click_ts").alias("_prior_last")] if windowed else []  # fmt: skip
    empty_text = "user_id string, content_hash string, recent_titles array<string>"
    empty_hist = (
        "user_id string, n_clicks int, embedding array<float>, pooled_norm double, last_click_ts timestamp"
    )
    prev_text = (prev_text if prev_text is not None else run.spark.createDataFrame([], empty_text)).select(
        "user_id", F.col("content_hash").alias("_prev_hash"), *prior_text
    )
    prev_hist = (prev_hist if prev_hist is not None else run.spark.createDataFrame([], empty_hist)).select(
        "user_id", F.col("n_clicks").alias("_prev_clicks"), *prior_hist
    )
    if not windowed:  # read twice (the users that may change, the profiles): computed once
        prev_text, prev_hist = run.phases.run(
            "previous user rows", lambda: (prev_text.localCheckpoint(), prev_hist.localCheckpoint()))  # fmt: skip
    profiles = (
        users.select("user_id", "updated_at", *fields)
        .join(prev_text, "user_id", "left")
        .join(prev_hist, "user_id", "left")
    )
    if windowed:  # the past is in each user's prior state: only the clicks since the last covered snapshot
        interactions = interactions.where(F.col("event_ts") >= F.lit(since.to_pydatetime()))
    clicks = (
        interactions.where("label = 1")
        .select("user_id", "item_id", "event_ts")
        .join(items.select("item_id", "title"), "item_id")
    )
    if item_vectors is not None:
        clicks = clicks.join(item_vectors, "item_id", "left")
    else:
        clicks = clicks.withColumn("embedding", F.lit(None).cast("array<float>"))
    if since is not None:
        files = {n: tables.snapshot_dir(tables.canonical_dir(run.cfg.paths.data_dir, n), run.as_of)
                 for n in ("users", "items", "interactions")}  # fmt: skip
        active = _users_that_may_change(
            users, clicks, prev_text, prev_hist, changed_items, since, past_unchanged,
            windowed={**files, "text_fold": text_fold} if windowed else None,
        )  # fmt: skip
        # read twice below; computing it reads every click and change log (the windowed pass: a local table)
        if not windowed:
            active = run.phases.run("users that may change", lambda: active.localCheckpoint())
        profiles = profiles.join(active, "user_id", "left_semi")
        clicks = clicks.join(active, "user_id", "left_semi")
    bucket = buckets(run.spark, "user_id")  # many users per Python call (_user_states_fn), not one
    states = (
        profiles.withColumn("_bucket", bucket)
        .groupBy("_bucket")
        .cogroup(
            clicks.select("user_id", "event_ts", "item_id", "title", "embedding")
            .withColumn("_bucket", bucket)
            .groupBy("_bucket")
        )
    )
    states = states.applyInPandas(_user_states_fn(times, params, windowed), STATE_SCHEMA)
    run.phases.run("build user snapshots", lambda: states.write.parquet(str(run.staging / "user_states")))
    states = run.spark.read.parquet(str(run.staging / "user_states"))

    texts = states.where("kind = 'text'").select(
        "user_id", "snapshot_ts", "text", "content_hash", "n_history", "recent_titles"
    )
    non_empty = texts.where(F.length("text") > 0)
    vectors, n_encoded = run.phases.run("encode user texts", lambda: run.encode(non_empty, "users"))
    snapshot = [
        F.col("snapshot_ts").alias("event_timestamp"),
        F.to_date("snapshot_ts").alias("snapshot_date"),
    ]
    text_rows = run.tagged(
        non_empty.join(vectors, "content_hash"),
        "user_id",
        "embedding",
        "content_hash",
        "n_tokens",
        "truncated",
        "n_history",
        "recent_titles",
        *snapshot,
    )
    hist_rows = run.tagged(
        states.where("kind = 'history'"),
        "user_id", "embedding", "n_clicks", "last_click_ts", "pooled_norm", *snapshot,
    )  # fmt: skip
    n_written, n_truncated = run.write(text_rows, "user_text")
    n_written_hist, _ = run.write(hist_rows, "user_history")
    n_read, n_empty = _count_rows(texts, F.coalesce(F.length("text"), F.lit(0)) == 0)
    counts = {
        "users": {
            "read": n_read, "quarantined": n_empty, "written": n_written, "encoded": n_encoded,
            "reused": n_written - n_encoded, "truncated": n_truncated,
        },
        "user_history": {"written": n_written_hist},
    }  # fmt: skip
    return texts, counts


def _items_changed(counts: dict) -> bool:
    """Whether tonight's item pass wrote a new or changed text or found one that renders empty (its counts)."""
    return bool(counts.get("written") or counts.get("quarantined"))


def _windowed_users(
    data_dir: Path, covered: dt.date, folds: dict, items_changed: bool, past_unchanged: bool
) -> str | None:
    """None when tonight's users' pass may start from each user's prior state and read only the clicks since
    ``covered`` (the windowed pass), else why not: the clicks before ``covered`` must be those the latest rows
    were computed from (``past_unchanged``: an append-only night, ``changelog.events_appended_since``), no
    item text changed tonight (a new title or vector reaches the whole history of its clickers), every latest
    row must carry the state (``recent_titles``, ``pooled_norm``: rows written before they existed do not),
    and every user of the catalogue at ``covered`` must have a text row (a user who rendered empty then may
    have clicks before it)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not past_unchanged:
        return "events before the last snapshot changed"
    if items_changed:
        return "item texts changed"
    text, hist = folds["user_text"], folds["user_history"]
    if text.path is None or hist.path is None:
        return "no user rows yet"
    for fold, column in ((text, "recent_titles"), (hist, "pooled_norm")):
        if (
            column not in pq.read_schema(fold.path).names
            or pq.read_table(fold.path, columns=[column])[column].null_count
        ):
            return f"{fold.path.parent.parent.name} rows written before the prior state was kept ({column})"
    texts = pq.read_table(text.path, columns=["user_id"])["user_id"]
    users = pq.read_table(
        tables.snapshot_dir(tables.canonical_dir(data_dir, "users"), covered), columns=["user_id"]
    )
    if pc.sum(pc.invert(pc.is_in(users["user_id"], texts))).as_py():
        return "a user of the last snapshot has no text row"
    return None


QUARANTINE_SCHEMA = "table string, source_file string, row long, reason string, detail string, raw string"


def _quarantine(spark, item_texts, user_texts, canonical: dict[str, Path]):
    from pyspark.sql import functions as F

    def rows(df, table: str, key: str, source: Path, detail, raw_cols):
        return df.where(F.length("text") == 0).select(
            F.lit(table).alias("table"), F.lit(str(source)).alias("source_file"), F.lit(0).cast("long").alias("row"),
            F.lit("EMPTY_TEXT").alias("reason"), detail.alias("detail"), F.to_json(F.struct(*raw_cols)).alias("raw"),
        )  # fmt: skip

    out = None
    # item_texts None: the item pass was skipped, and no item renders empty (_unchanged_items)
    if item_texts is not None:
        out = rows(item_texts, "item_text", "item_id", canonical["items"],
                   F.concat(F.lit("item "), F.col("item_id"), F.lit(" renders an empty text")), ["item_id"])  # fmt: skip
    if user_texts is not None:
        detail = F.concat(
            F.lit("user "),
            F.col("user_id"),
            F.lit(" has no profile text and no clicks at "),
            F.col("snapshot_ts").cast("string"),
        )
        users = rows(
            user_texts, "user_text", "user_id", canonical["users"], detail, ["user_id", "snapshot_ts"]
        )
        out = users if out is None else out.unionByName(users)
    return out if out is not None else spark.createDataFrame([], QUARANTINE_SCHEMA)


def _publish(
    paths: EmbeddingPaths, staging: Path, firsts: dict[str, dt.date], as_of: dt.date
) -> dict[str, int]:
    published = {
        name: publish_partitions(staging / name, getattr(paths, name), day, as_of)
        for name, day in firsts.items()
    }
    if (staging / "quarantine").is_dir():
        tables.publish_dir(staging / "quarantine", tables.snapshot_dir(paths.quarantine, as_of))
    return published


def run_embed(
    spark,
    cfg: Config,
    as_of: dt.date,
    *,
    snapshot_from: dt.date | None = None,
    every_days: int | None = None,
    log: Callable[[str], None] = print,
    faults: Faults = NO_FAULTS,
) -> EmbedResult:
    """Embed items as of ``as_of`` and user snapshots from ``snapshot_from`` to ``as_of``; returns the manifest.

    ``snapshot_from`` defaults to catching up: the day after the last snapshot a previous run covered, or on
    the first run the first midnight at or after the earliest user ``updated_at`` (a full backfill).
    """
    from pyspark.sql import functions as F

    stage = StageRun.start("embed", as_of, log)
    every = every_days or cfg.embed.backfill_every_days
    paths = embedding_paths(cfg.paths.data_dir, cfg.embed.embedding_set)
    spec = encoder_spec(cfg)
    current_model, dim = describe_model(spec)
    require_items(cfg.paths.data_dir, as_of)
    canonical = require_canonical(cfg.paths.data_dir, as_of, ("items", "users", "interactions"))
    items, users, interactions = (
        spark.read.parquet(str(canonical[n])) for n in ("items", "users", "interactions")
    )
    stage.phase("check model ids", lambda: check_model(paths, current_model))
    covered = covered_until(paths.manifests)
    if snapshot_from is None:  # catch up from the last covered snapshot, or from the earliest user update
        earliest = users.agg(F.min("updated_at")).collect  # a Spark job, run by a first run only
        snapshot_from = first_snapshot(
            as_of, every, covered, lambda: stage.phase("earliest update", earliest)[0][0]
        )
    # Catching up after the last covered snapshot: the latest user rows hold each user's state at it.
    since = pd.Timestamp(covered, tz="UTC") if covered is not None and covered < snapshot_from else None
    times, resolved = snapshot_times(snapshot_from, as_of, every), resolve_spec(spec)
    past_unchanged = since is not None and events_appended_since(cfg.paths.data_dir, as_of, covered)
    model = _model_fields(spec, resolved, current_model, dim)
    item_pass = _item_pass(cfg, as_of, model)
    same_items_since = _items_unchanged_since(paths, as_of, item_pass)
    with stage.staging(paths.root) as staging:
        # each key's latest row from the table's kept fold (core.latest), not a window over the whole log
        folds = {"item_text": latest.rows(paths.item_text, "item_id", as_of)}
        folds.update({name: latest.rows(getattr(paths, name), "user_id", snapshot_from)
                      for name in ("user_text", "user_history")})  # fmt: skip
        prev = {name: spark.read.parquet(str(f.path)) if f.path else None for name, f in folds.items()}
        # The texts a new text may reuse the vector of. Catching up, only the new snapshot times' texts are
        # rendered, so each key's latest stored text (the folds: one row per key) is the pool; otherwise (a
        # backfill renders past texts again; a re-run finds tonight's rows already stored, past the folds) every
        # text ever stored (the compact copies).
        from_folds = since is not None and not _stored_from(
            paths, {"item_text": as_of, "user_text": snapshot_from}
        )
        existing = (
            {name: prev[name] for name in POOL_TABLES} if from_folds
            else {name: compact.read(spark, getattr(paths, name)) for name in POOL_TABLES}
        )  # fmt: skip
        run = _Run(
            spark=spark, cfg=cfg, as_of=as_of, staging=staging, model_id=current_model, dim=dim,
            created=pd.Timestamp(stage.started), udf=make_encoder_udf(spec, cfg.embed.udf_batch_rows),
            pools=_reuse_pools(existing, resolved), phases=stage.phases, runtimes=set(),
        )  # fmt: skip
        prev_items = prev["item_text"]
        if same_items_since is not None:
            item_texts, item_vectors, changed_items, item_counts = _unchanged_items(
                run, items, prev_items, tables.parquet_rows(canonical["items"]), same_items_since
            )
            log(f"embed: items unchanged since {same_items_since}: nothing to render or encode")
        else:
            item_texts, item_vectors, changed_items, item_counts = _embed_items(run, items, prev_items)
        user_texts, user_counts = None, {}
        if past_unchanged and item_texts is not None:
            # an item that renders empty now may have lost the vector its clicks were pooled with
            changed_items = changed_items.unionByName(
                item_texts.where(F.length("text") == 0).select("item_id")
            )
        whole_history = (  # None: the windowed users' pass; else why every click is read
            "not catching up" if since is None else
            _windowed_users(cfg.paths.data_dir, covered, folds, _items_changed(item_counts), past_unchanged)
        )  # fmt: skip
        if times:
            user_texts, user_counts = _embed_users(
                run, users, interactions, items, item_vectors, prev["user_text"], prev["user_history"], times,
                changed_items, since, past_unchanged,
                text_fold=folds["user_text"].path if whole_history is None else None,
            )  # fmt: skip
        else:
            log(f"embed: user snapshots are up to date (covered until {covered})")
        users_from = {"user_text": snapshot_from, "user_history": snapshot_from} if times else {}
        stage.phase("write quarantine", lambda: _quarantine(spark, item_texts, user_texts, canonical).coalesce(1).write.parquet(
            str(staging / "quarantine")))  # fmt: skip
        faults.reach("embed.after_write_before_commit")
        published = stage.phase(
            "publish", lambda: _publish(paths, staging, {"item_text": as_of, **users_from}, as_of)
        )
    # tonight's rows folded in now, so that the next night starts from one row per key (core.latest)
    keys = {"item_text": "item_id", "user_text": "user_id", "user_history": "user_id"}
    after = stage.phase("fold", lambda: {
        t: latest.rows(getattr(paths, t), key, as_of + dt.timedelta(days=1)) for t, key in keys.items()})  # fmt: skip
    snapshots = {"from": snapshot_from.isoformat(), "to": as_of.isoformat(), "every_days": every,
                 "count": len(times), "past_events_unchanged": past_unchanged,
                 "clicks_read": "since the last snapshot" if whole_history is None else f"all ({whole_history})"}  # fmt: skip
    windowed = times and whole_history is None
    reads = {
        "interactions": rows_from(canonical["interactions"], "event_ts", since) if windowed
        else tables.parquet_rows(canonical["interactions"]),
        # the text tables through their folds (and, not catching up, the reuse pools' scan of every stored
        # text); user_history through its fold only
        "change_log": {t: folds[t].rows_read + (0 if from_folds else _log_rows(getattr(paths, t), as_of))
                       + after[t].rows_read for t in keys},
    }  # fmt: skip
    return stage.write_manifest(paths.manifests, _manifest(
        cfg, spark, model, run.runtimes, snapshots, {"items": item_counts, **user_counts}, canonical, paths,
        published, item_pass, reads), EmbedResult)  # fmt: skip


def _log_rows(table: Path, before: dt.date) -> int:
    """Rows of a change-log table's partitions dated before ``before`` (what a scan of it before tonight reads)."""
    return sum(
        tables.parquet_rows(tables.snapshot_dir(table, d)) for d in tables.snapshot_dates(table) if d < before
    )


def _manifest(cfg: Config, spark, model: dict, runtimes: set, snapshots: dict, counts: dict, canonical: dict,
              paths, published, item_pass: dict, reads: dict) -> dict:  # fmt: skip
    """The embed stage's manifest (what ``EmbedResult`` reads), keys in their written order."""
    return {
        "embedding_set": cfg.embed.embedding_set, **model, "runtime": sorted(runtimes) or ["(nothing encoded)"],
        "spark_master": spark.sparkContext.master, "snapshots": snapshots, "counts": counts,
        "inputs": {k: str(v) for k, v in canonical.items()},
        "outputs": {k: str(getattr(paths, k)) for k in (*EMBED_TABLES, "quarantine")},
        "published_partitions": published, "item_pass": item_pass, "reads": reads,
    }  # fmt: skip


def _model_fields(spec, resolved, model: str, dim: int) -> dict:
    """The encoder as the manifest records it."""
    return {"model_id": model, "model_dir": spec.model_dir, "dim": dim, "pooling": resolved.pooling,
            "max_tokens": spec.max_tokens, "prompts": {"item": resolved.item_prompt, "user": resolved.user_prompt},
            "dims": resolved.dims}  # fmt: skip


POOL_TABLES = ("item_text", "user_text")


def _stored_from(paths: EmbeddingPaths, firsts: dict[str, dt.date]) -> bool:
    """Whether a table already holds a partition dated ``firsts[table]`` or later (a re-run or a redo)."""
    for table, day in firsts.items():
        dates = tables.snapshot_dates(getattr(paths, table))
        if dates and dates[-1] >= day:
            return True
    return False


def _reuse_pools(existing: dict, resolved) -> dict:
    """Stored vectors a new text of each kind may reuse: a text's stored vector is reused by the same text of
    any kind, unless the kinds' prompts differ."""
    stored = {
        kind: existing[name].select("content_hash", "embedding", "n_tokens", "truncated")
        for kind, name in (("item", "item_text"), ("user", "user_text"))
        if existing[name] is not None
    }
    if resolved.item_prompt == resolved.user_prompt and len(stored) == 2:
        stored = dict.fromkeys(stored, stored["item"].unionByName(stored["user"]))
    if resolved.item_prompt == resolved.user_prompt and len(stored) == 1:
        stored = dict.fromkeys(("item", "user"), next(iter(stored.values())))
    return {k: stored.get(k) for k in ("item", "user")}  # (duplicates dropped after narrowing, in encode)
