"""Stage 3, stats (Spark): behaviour features with point-in-time windows, as change-log tables.

Outputs under ``<data_dir>/features/``, partitioned by ``snapshot_date``:

- ``item_stats``: per item at each snapshot time s: impressions / clicks / ctr over the trailing 1, 7 and 30
  days, totals, and last_event_ts. A window ending at s holds the events with ``s - w <= event_ts < s``:
  strictly before s, so a point-in-time join on event_timestamp = s never sees the future.
- ``user_stats``: the same per user (events instead of impressions); recency is ``last_event_ts`` (a
  consumer computes "days since" at its own time, so the value does not change every day).
- ``item_meta``: category, subcategory, primary category, number of tags; event_timestamp = updated_at.

Every interaction counts as an impression (MovieLens: a rating; MIND: a shown item or a history click);
label 1 counts as a click. Rows are written only when an entity's values change (see ``changelog.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.core import latest
from llmfeat.core.changelog import (
    covered_until,
    events_appended_since,
    first_snapshot,
    publish_partitions,
    require_canonical,
    snapshot_times,
)
from llmfeat.core.config import Config
from llmfeat.core.costs import parquet_rows
from llmfeat.core.faults import NO_FAULTS, Faults
from llmfeat.core.layout import StatsPaths, stats_paths  # noqa: F401 - re-exported
from llmfeat.core.results import StatsResult
from llmfeat.core.spark import buckets
from llmfeat.core.stage_run import StageRun
from llmfeat.core.tables import rows_from
from llmfeat.feast import names as n
from llmfeat.feast.names import STATS_TABLES, packed_columns, stat_columns  # noqa: F401 - re-exported
from llmfeat.feast.names import WINDOWS as WINDOWS_DAYS


def pack(frame: pd.DataFrame, noun: str) -> list[np.ndarray]:
    cols = packed_columns(noun)[:-1]
    values = frame[cols].to_numpy(dtype=np.float32)
    last = frame["last_event_ts"]
    days = (last - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64) / 86_400.0
    out = np.concatenate([values, days.astype(np.float32)[:, None]], axis=1)
    return list(out)


_DAY_US = 86_400_000_000


def _as_datetime64(times: Sequence[pd.Timestamp]) -> np.ndarray:
    return pd.DatetimeIndex(list(times)).tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[us]")


def stats_over_time(
    event_ts: np.ndarray,
    labels: np.ndarray,
    times: Sequence[pd.Timestamp],
    noun: str,
    windows: Sequence[int] = WINDOWS_DAYS,
) -> pd.DataFrame:
    """Windowed counts for one entity at each snapshot time. Pure numpy.

    ``event_ts``: datetime64[us] (UTC, naive), any order; ``labels``: 0/1 of the same length.
    """
    order = np.argsort(event_ts, kind="stable")
    ts = event_ts[order]
    clicks_cum = np.concatenate([[0], np.cumsum(labels[order].astype(np.int64))])
    s = _as_datetime64(times)
    upto = np.searchsorted(ts, s, side="left")  # events strictly before s
    out: dict[str, object] = {"snapshot_ts": pd.DatetimeIndex(list(times))}
    for w in windows:
        start = np.searchsorted(ts, s - np.timedelta64(w * _DAY_US, "us"), side="left")
        n = upto - start
        c = clicks_cum[upto] - clicks_cum[start]
        out[f"{noun}_{w}d"] = n.astype(np.int32)
        out[f"clicks_{w}d"] = c.astype(np.int32)
        out[f"ctr_{w}d"] = np.where(n > 0, c / np.maximum(n, 1), 0.0).astype(np.float32)
    out[f"{noun}_total"] = upto.astype(np.int32)
    out["clicks_total"] = clicks_cum[upto].astype(np.int32)
    out["ctr_total"] = np.where(upto > 0, clicks_cum[upto] / np.maximum(upto, 1), 0.0).astype(np.float32)
    last = ts[np.maximum(upto - 1, 0)] if len(ts) else np.full(len(s), np.datetime64("NaT"), "datetime64[us]")
    out["last_event_ts"] = pd.DatetimeIndex(np.where(upto > 0, last, np.datetime64("NaT"))).tz_localize("UTC")
    return pd.DataFrame(out)


def _value_matrix(frame: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Values as comparable float64 columns; missing timestamps become NaN (compared as equal below)."""
    out = np.empty((len(frame), len(cols)), dtype=np.float64)
    for j, col in enumerate(cols):
        values = frame[col]
        if pd.api.types.is_datetime64_any_dtype(values):
            ints = values.to_numpy(dtype="datetime64[us]").astype(np.int64).astype(np.float64)
            out[:, j] = np.where(values.isna().to_numpy(), np.nan, ints)
        else:
            out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def changes_only(frame: pd.DataFrame, value_cols: list[str], previous: dict | None) -> pd.DataFrame:
    """Keep the rows whose values differ from the row before (the first compared with ``previous``)."""
    if frame.empty:
        return frame
    current = _value_matrix(frame, value_cols)
    if previous is None:
        first = np.full((1, len(value_cols)), np.inf)  # nothing before: the first row always differs
    else:
        first = _value_matrix(
            pd.DataFrame([previous], columns=value_cols).astype(frame[value_cols].dtypes.to_dict()),
            value_cols,
        )
    before = np.vstack([first, current[:-1]])
    same = (current == before) | (np.isnan(current) & np.isnan(before))
    return frame[~same.all(axis=1)]


def _stats_fn(key: str, noun: str, times: list[pd.Timestamp], totals_from: pd.Timestamp | None = None):
    """For cogroup(...).applyInPandas over buckets of entities: (entities + each one's previous row) x their
    events -> the changed stats rows of every entity in the bucket (``entity_stats``)."""

    def fn(entities_pdf: pd.DataFrame, events_pdf: pd.DataFrame) -> pd.DataFrame:
        return entity_stats(entities_pdf, events_pdf, key, noun, times, totals_from=totals_from)

    return fn


def _stat_frame_empty(key: str, cols: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(columns=[key, "snapshot_ts", *cols])
    # An object column even when empty: a float column of no rows cannot become array<float> in Arrow
    # (an incremental run where no entity's values changed yields no rows).
    out["packed"] = pd.Series([], dtype=object)
    return out


def entity_stats(
    entities: pd.DataFrame,
    events: pd.DataFrame,
    key: str,
    noun: str,
    times: Sequence[pd.Timestamp],
    windows: Sequence[int] = WINDOWS_DAYS,
    totals_from: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The changed stats rows of many entities at once: ``stats_over_time`` of each entity at the ``times`` it
    is visible at (``updated_at`` or later), then ``changes_only`` against its previous row. Vectorised over
    entities (one numpy pass per bucket, not one pandas frame per entity: per-entity groups cost Spark about
    7 ms each before any work is done).

    ``entities``: ``key``, ``updated_at``, ``_prev_<stat>`` for every stat column and ``_prev_total`` (NaN when
    the entity has no previous row); ``events``: ``key``, ``event_ts``, ``label`` (0/1), any order.

    ``totals_from``: ``events`` hold only the events from ``totals_from - max(windows)`` on (``window_start``), and
    each entity's previous row holds its values at ``totals_from``: the totals and the last event time are its
    previous row's plus what happened since. An entity without a previous row has no event before
    ``totals_from`` (it was not in the catalogue then, and ingest keeps no event of an unknown entity).
    """
    cols = stat_columns(noun, windows)
    if entities.empty or not times:
        return _stat_frame_empty(key, cols)
    keys = entities[key].to_numpy()
    n_ent = len(keys)
    snap = _as_datetime64(sorted(times)).astype(np.int64)
    # Each event's entity, its events sorted by (entity, time); events of entities not in this bucket dropped.
    ent_of = pd.Index(keys).get_indexer(events[key]) if len(events) else np.empty(0, np.int64)
    mine = ent_of >= 0
    ev_ent = ent_of[mine].astype(np.int64)
    ev_ts = events["event_ts"].to_numpy(dtype="datetime64[us]")[mine].astype(np.int64)
    ev_lab = events["label"].to_numpy()[mine].astype(np.int64)
    order = np.lexsort((ev_ts, ev_ent))
    ev_ent, ev_ts, ev_lab = ev_ent[order], ev_ts[order], ev_lab[order]
    clicks_cum = np.concatenate([[0], np.cumsum(ev_lab)])
    first = np.searchsorted(ev_ent, np.arange(n_ent), side="left")[:, None]  # each entity's first event
    # One sorted key per event, (entity, rank of its time among every time involved): the number of an
    # entity's events strictly before q is one searchsorted for every (entity, q) at once. Ranks, not raw
    # microseconds, so entity x range cannot overflow int64.
    queries = [snap] + [snap - w * _DAY_US for w in windows]
    base_at = _as_datetime64([totals_from]).astype(np.int64) if totals_from is not None else snap[:0]
    ranks = np.unique(np.concatenate([ev_ts, *queries, base_at]))
    width = len(ranks) + 1
    ev_key = ev_ent * width + np.searchsorted(ranks, ev_ts)
    rows = np.arange(n_ent, dtype=np.int64)[:, None] * width

    def before(q: np.ndarray) -> np.ndarray:
        """Global position after the last event of each entity strictly before q (entities x times)."""
        return np.searchsorted(ev_key, rows + np.searchsorted(ranks, q)[None, :], side="left")

    upto = before(snap)
    values: dict[str, np.ndarray] = {}
    for w, q in zip(windows, queries[1:], strict=True):
        start = before(q)
        n = upto - start
        c = clicks_cum[upto] - clicks_cum[start]
        values[f"{noun}_{w}d"] = n.astype(np.int32)
        values[f"clicks_{w}d"] = c.astype(np.int32)
        values[f"ctr_{w}d"] = np.where(n > 0, c / np.maximum(n, 1), 0.0).astype(np.float32)
    total = upto - first
    clicks = clicks_cum[upto] - clicks_cum[first]
    seen = total > 0  # an event before the snapshot time among ``events``
    if totals_from is not None:  # the previous totals at totals_from, plus the events since
        at, start = before(base_at)[:, 0], first[:, 0]

        def previous(col: str) -> np.ndarray:  # 0 without a previous row
            return entities[col].to_numpy(dtype=np.float64, na_value=0).astype(np.int64)

        total = total + (previous("_prev_total") - (at - start))[:, None]
        clicks = clicks + (previous("_prev_clicks_total") - (clicks_cum[at] - clicks_cum[start]))[:, None]
    values[f"{noun}_total"] = total.astype(np.int32)
    values["clicks_total"] = clicks.astype(np.int32)
    values["ctr_total"] = np.where(total > 0, clicks / np.maximum(total, 1), 0.0).astype(np.float32)
    last = ev_ts[np.maximum(upto - 1, 0)] if len(ev_ts) else np.zeros_like(upto)
    if totals_from is not None:
        # no event of the entity among ``events`` yet: its last one is the previous row's
        stamps = pd.to_datetime(entities["_prev_last_event_ts"], utc=True).dt.tz_localize(None)
        prev_last = stamps.to_numpy("datetime64[us]").astype(np.int64)
        last = np.where(seen, last, prev_last[:, None])
    last_missing = total == 0

    # Visible: snapshot times at or after the entity's updated_at (a missing updated_at sees none).
    updated = pd.to_datetime(entities["updated_at"], utc=True)
    since = updated.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
    visible = (snap[None, :] >= since[:, None]) & updated.notna().to_numpy()[:, None]

    # Rows entity-major, times in order, visible ones only; each compared with the row before it, an entity's
    # first row with its previous stored row (none: always kept).
    ent_idx, time_idx = np.nonzero(visible)
    if len(ent_idx) == 0:
        return _stat_frame_empty(key, cols)
    matrix = np.empty((len(ent_idx), len(cols)), dtype=np.float64)
    for j, col in enumerate(cols):
        if col == "last_event_ts":
            matrix[:, j] = np.where(last_missing, np.nan, last.astype(np.float64))[ent_idx, time_idx]
        else:
            matrix[:, j] = values[col][ent_idx, time_idx].astype(np.float64)
    prev = np.full((n_ent, len(cols)), np.inf)  # nothing before: the first row always differs
    has_prev = entities["_prev_total"].notna().to_numpy()
    if has_prev.any():
        for j, col in enumerate(cols):
            raw = entities[f"_prev_{col}"]
            if col == "last_event_ts":
                stamps = pd.to_datetime(raw, utc=True).dt.tz_localize(None)
                got = np.where(stamps.isna(), np.nan, stamps.to_numpy("datetime64[us]").astype(np.int64))
            elif col.startswith("ctr"):
                got = raw.to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32).astype(np.float64)
            else:
                got = raw.to_numpy(dtype=np.float64, na_value=np.nan)
            prev[has_prev, j] = got[has_prev]
    opens = np.r_[True, ent_idx[1:] != ent_idx[:-1]]
    earlier = np.vstack([matrix[:1], matrix[:-1]])
    earlier[opens] = prev[ent_idx[opens]]
    same = (matrix == earlier) | (np.isnan(matrix) & np.isnan(earlier))
    keep = ~same.all(axis=1)
    ent_idx, time_idx = ent_idx[keep], time_idx[keep]

    stamps = pd.DatetimeIndex(sorted(times)).tz_convert("UTC")
    out = {key: keys[ent_idx], "snapshot_ts": stamps[time_idx]}
    for col in cols:
        if col == "last_event_ts":
            picked = last[ent_idx, time_idx].astype("datetime64[us]")
            out[col] = pd.DatetimeIndex(
                np.where(last_missing[ent_idx, time_idx], np.datetime64("NaT"), picked)
            ).tz_localize("UTC")
        else:
            out[col] = values[col][ent_idx, time_idx]
    frame = pd.DataFrame(out)
    frame["packed"] = pd.Series(pack(frame, noun), index=frame.index, dtype=object)
    return frame


def _stats_schema(key: str, noun: str) -> str:
    parts = [f"{key} string"]
    for c in stat_columns(noun):
        kind = "float" if c.startswith("ctr") else "timestamp" if c == "last_event_ts" else "int"
        parts.append(f"{c} {kind}")
    return ", ".join([*parts, "snapshot_ts timestamp", "packed array<float>"])


def _may_change(
    entities, events, prev, key: str, noun: str, since: pd.Timestamp, past_unchanged: bool = False
):
    """The keys whose stats may differ after ``since`` from ``prev`` (their values at ``since``, the last
    covered snapshot): an event within the longest window before ``since`` or later (a window count may move),
    an ``updated_at`` at or after ``since`` (visibility), no previous row, or a count or click total before
    ``since`` that differs from the previous row's (an event that arrived late or was removed). Any other
    entity has empty windows at ``since`` and after, and the same totals: no change row, so skipping it is exact.
    ``past_unchanged``: the events before ``since`` are known to be those the previous rows were computed from
    (``changelog.events_appended_since``), so the totals before it are not recounted."""
    from pyspark.sql import functions as F

    recent = events.where(F.col("event_ts") >= F.lit(window_start(since).to_pydatetime())).select(key)
    visible = entities.where(F.col("updated_at") >= F.lit(since.to_pydatetime())).select(key)
    fresh = entities.select(key).join(prev.select(key), key, "left_anti")
    found = recent.unionByName(visible).unionByName(fresh)
    if not past_unchanged:
        before = (
            events.where(F.col("event_ts") < F.lit(since.to_pydatetime()))
            .groupBy(key)
            .agg(F.count(F.lit(1)).alias("_n"), F.sum(F.col("label").cast("long")).alias("_c"))
        )
        moved = before.join(prev.select(key, "_prev_total", "_prev_clicks_total"), key, "full").where(
            (F.coalesce("_n", F.lit(0)) != F.coalesce("_prev_total", F.lit(0)))
            | (F.coalesce("_c", F.lit(0)) != F.coalesce("_prev_clicks_total", F.lit(0)))
        )
        found = found.unionByName(moved.select(key))
    return found.distinct()


def _entity_stats(spark, entities, events, key: str, noun: str, times, previous, since: pd.Timestamp | None,
                  past_unchanged: bool = False):  # fmt: skip
    """Per entity and snapshot time, the changed stats rows. With ``previous`` (each entity's latest row) and
    ``since`` (the snapshot it holds), only the entities whose values may have moved are computed
    (``_may_change``): a night's cost follows the trailing windows' entities, not the whole catalogue."""
    from pyspark.sql import functions as F

    cols = stat_columns(noun)
    if previous is not None:
        prev = previous.select(key, *[F.col(c).alias(f"_prev_{c}") for c in cols]).withColumn(
            "_prev_total", F.col(f"_prev_{noun}_total")
        )
    else:
        fields = ", ".join(
            f"_prev_{c} {'float' if c.startswith('ctr') else 'timestamp' if c == 'last_event_ts' else 'int'}"
            for c in cols
        )
        prev = spark.createDataFrame([], f"{key} string, {fields}, _prev_total int")
    catching_up = previous is not None and since is not None
    if catching_up:  # the previous rows are read twice: computed once
        prev = prev.localCheckpoint()
    windowed = catching_up and past_unchanged
    if windowed:  # the past is the previous rows': only the events the trailing windows can still hold
        events = events.where(F.col("event_ts") >= F.lit(window_start(since).to_pydatetime()))
    left = entities.select(key, "updated_at").join(prev, key, "left")
    right = events.select(key, "event_ts", F.col("label").cast("int").alias("label"))
    if catching_up:
        active = _may_change(entities, events, prev, key, noun, since, past_unchanged)
        active = active.localCheckpoint()  # read twice too
        left, right = left.join(active, key, "left_semi"), right.join(active, key, "left_semi")
    bucket = buckets(spark, key)  # many entities per Python call (entity_stats), not one
    fn = _stats_fn(key, noun, times, totals_from=since if windowed else None)
    return (
        left.withColumn("_bucket", bucket).groupBy("_bucket")
        .cogroup(right.withColumn("_bucket", bucket).groupBy("_bucket"))
        .applyInPandas(fn, _stats_schema(key, noun))
    )  # fmt: skip


def window_start(since: pd.Timestamp) -> pd.Timestamp:
    """The earliest event a catching-up run after ``since`` reads when the past is unchanged: the start of the
    longest trailing window at ``since`` (an earlier event is in no window at ``since`` or later)."""
    return since - pd.Timedelta(days=max(WINDOWS_DAYS))


def _item_meta(items, previous, as_of: dt.date, created):
    from pyspark.sql import functions as F

    meta = items.select(
        "item_id",
        "category",
        "subcategory",
        F.coalesce(F.element_at("tags", 1), F.trim(F.split("category", ",").getItem(0))).alias(
            "primary_category"
        ),
        F.coalesce(F.size("tags"), F.lit(0)).cast("int").alias("n_tags"),
        F.col("updated_at").alias("event_timestamp"),
    )
    if previous is not None:
        prev = previous.select(
            "item_id",
            F.sha2(F.to_json(F.struct("category", "subcategory", "primary_category", "n_tags")), 256).alias(
                "_prev"
            ),
        )
        meta = (
            meta.withColumn(
                "_hash",
                F.sha2(F.to_json(F.struct("category", "subcategory", "primary_category", "n_tags")), 256),
            )
            .join(prev, "item_id", "left")
            .where(F.col("_prev").isNull() | (F.col("_prev") != F.col("_hash")))
            .drop("_hash", "_prev")
        )
    return meta.withColumn("created_timestamp", F.lit(created).cast("timestamp")).withColumn(
        "snapshot_date", F.lit(as_of)
    )


def run_stats(
    spark,
    cfg: Config,
    as_of: dt.date,
    *,
    snapshot_from: dt.date | None = None,
    every_days: int | None = None,
    log: Callable[[str], None] = print,
    faults: Faults = NO_FAULTS,
) -> StatsResult:
    """Compute item/user stats at each snapshot time from ``snapshot_from`` to ``as_of`` and item metadata."""
    run = StageRun.start("stats", as_of, log)
    every = every_days or cfg.embed.backfill_every_days
    paths = stats_paths(cfg.paths.data_dir)
    canonical = require_canonical(cfg.paths.data_dir, as_of, ("items", "users", "interactions"))
    items, users, interactions = (
        spark.read.parquet(str(canonical[n])) for n in ("items", "users", "interactions")
    )
    covered = covered_until(paths.manifests)
    snapshot_from = snapshot_from or first_snapshot(
        as_of, every, covered, lambda: _earliest_update(items, users)
    )
    times = snapshot_times(snapshot_from, as_of, every)
    # Catching up after the last covered snapshot: the previous rows hold each entity's values at it.
    since = pd.Timestamp(covered, tz="UTC") if covered is not None and covered < snapshot_from else None
    past_unchanged = since is not None and events_appended_since(cfg.paths.data_dir, as_of, covered)
    created = pd.Timestamp(run.started)
    reads = {name: parquet_rows(canonical[name]) for name in ("items", "users")}
    reads["interactions"] = (  # row groups wholly before the trailing windows are skipped (tables.rows_from)
        rows_from(canonical["interactions"], "event_ts", window_start(since))
        if past_unchanged
        else parquet_rows(canonical["interactions"])
    )
    folds = {}

    def previous(name: str, key: str, before: dt.date):
        """Each key's latest row before ``before``, from the table's kept fold (core.latest), not the log."""
        folds[name] = latest.rows(paths.table(name), key, before)
        return spark.read.parquet(str(folds[name].path)) if folds[name].path else None

    with run.staging(paths.root) as staging:
        firsts = {n.ITEM_META_TABLE: as_of}
        if times:
            for name, entities, key, noun in (
                (n.ITEM_STATS_TABLE, items, n.ITEM_KEY, n.IMPRESSIONS),
                (n.USER_STATS_TABLE, users, n.USER_KEY, n.EVENTS),
            ):
                rows = _entity_stats(spark, entities, interactions, key, noun, times,
                                     previous(name, key, snapshot_from), since, past_unchanged)  # fmt: skip
                run.phase(
                    f"write {name}", lambda rows=rows, name=name: _write_stats(rows, created, staging / name)
                )
                firsts[name] = snapshot_from
        else:
            log(f"stats: snapshots are up to date (covered until {covered})")
        meta = _item_meta(items, previous(n.ITEM_META_TABLE, n.ITEM_KEY, as_of), as_of, created)
        run.phase(f"write {n.ITEM_META_TABLE}", lambda: meta.write.partitionBy("snapshot_date").parquet(
            str(staging / n.ITEM_META_TABLE)))  # fmt: skip
        counts = {name: parquet_rows(staging / name) for name in firsts}  # from the footers, no Spark job
        faults.reach("stats.after_write_before_commit")
        published = run.phase("publish", lambda: {
            t: publish_partitions(staging / t, paths.table(t), day, as_of) for t, day in firsts.items()})  # fmt: skip
    # tonight's rows folded in now, so that the next night starts from one row per key (core.latest)
    keys = {n.ITEM_STATS_TABLE: n.ITEM_KEY, n.USER_STATS_TABLE: n.USER_KEY, n.ITEM_META_TABLE: n.ITEM_KEY}
    after = run.phase("fold", lambda: {
        t: latest.rows(paths.table(t), keys[t], as_of + dt.timedelta(days=1)) for t in keys})  # fmt: skip
    return run.write_manifest(paths.manifests, {
        "snapshots": {"from": snapshot_from.isoformat(), "to": as_of.isoformat(), "every_days": every,
                      "count": len(times)},
        "windows_days": list(WINDOWS_DAYS),
        "past_events_unchanged": past_unchanged,
        "counts": {"written": counts},
        "reads": {**reads, "change_log": {name: f.rows_read + after[name].rows_read for name, f in folds.items()}},
        "change_log_folds": {name: {"start": {"mode": f.mode, "days": list(f.days)},
                                    "after": {"mode": after[name].mode, "days": list(after[name].days)}}
                             for name, f in folds.items()},  # fmt: skip
        "published_partitions": published,
        "inputs": {k: str(v) for k, v in canonical.items()},
        "outputs": {t: str(paths.table(t)) for t in STATS_TABLES},
    }, StatsResult)  # fmt: skip


def _earliest_update(items, users):
    """The earliest item or user ``updated_at``: where a first run's snapshots start (``first_snapshot``)."""
    from pyspark.sql import functions as F

    both = users.select("updated_at").unionByName(items.select("updated_at"))
    return both.agg(F.min("updated_at")).collect()[0][0]


def _write_stats(rows, created: pd.Timestamp, target: Path) -> None:
    """One stats table's rows as a change log partitioned by snapshot date, one file per partition."""
    from pyspark.sql import functions as F

    rows = rows.select(
        "*",
        F.col("snapshot_ts").alias("event_timestamp"),
        F.lit(created).cast("timestamp").alias("created_timestamp"),
        F.to_date("snapshot_ts").alias("snapshot_date"),
    ).drop("snapshot_ts")
    rows.repartition("snapshot_date").write.partitionBy("snapshot_date").parquet(str(target))
