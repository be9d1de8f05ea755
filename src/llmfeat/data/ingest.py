"""Stage 1, ingest: source files -> validated canonical tables + quarantine, one snapshot date at a time."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from llmfeat.core import tables
from llmfeat.core.config import Config
from llmfeat.core.errors import ConfigError, MissingInputError
from llmfeat.data import deliveries
from llmfeat.data.demo_data import ensure_movielens_100k
from llmfeat.data.sources import load_source, mapped
from llmfeat.data.validate import validate

TABLES = ("items", "users", "interactions", "quarantine")


@dataclass
class IngestResult:
    snapshot_date: dt.date
    source: str
    source_path: Path
    counts: dict[str, dict[str, int]]
    notes: dict[str, int]
    outputs: dict[str, Path] = field(default_factory=dict)
    writes: dict[str, dict] = field(default_factory=dict)
    """Per table, how its snapshot was written (``tables.AppendWrite`` for interactions: appended or full)."""
    deliveries: dict | None = None
    """For a source of delivered event files (data/deliveries.py): files delivered, files read, and why every
    file was read when it was."""

    @property
    def quarantined(self) -> int:
        return sum(c["quarantined"] for c in self.counts.values())

    @property
    def not_yet_visible(self) -> int:
        """Rows stamped at or after the snapshot time: left for a later night, not bad (and no exit 4)."""
        return sum(c.get("not_yet_visible", 0) for c in self.counts.values())


def snapshot_time(snapshot_date: dt.date) -> pd.Timestamp:
    """A snapshot dated D holds what was known at D 00:00 UTC: events at or after it are not yet visible."""
    return pd.Timestamp(snapshot_date.isoformat(), tz="UTC")


def resolve_source_path(cfg: Config) -> Path:
    if cfg.ingest.source_path is not None:
        if not Path(cfg.ingest.source_path).exists():
            raise MissingInputError(f"ingest.source_path {cfg.ingest.source_path} does not exist")
        return cfg.ingest.source_path
    if cfg.ingest.source != "movielens":
        raise ConfigError(f"ingest.source_path is required for source {cfg.ingest.source!r}")
    return ensure_movielens_100k(cfg.paths.cache_dir)


def run_ingest(cfg: Config, snapshot_date: dt.date) -> IngestResult:
    source_path = resolve_source_path(cfg)
    files = mapped.event_files(source_path) if cfg.ingest.source == "mapped" else None
    if files is not None:  # delivered event files: only the new ones are read
        raw, checked, base, state, delivery = _deliveries(cfg, snapshot_date, source_path, files)
        return _write(
            cfg, snapshot_date, source_path, raw, checked, base=base, state=state, delivery=delivery
        )
    raw = load_source(
        cfg.ingest.source, source_path, click_rating_threshold=cfg.ingest.click_rating_threshold
    )
    return _write(cfg, snapshot_date, source_path, raw, _validate(cfg, raw, snapshot_date))


def _validate(cfg: Config, raw, snapshot_date: dt.date):
    return validate(
        raw, snapshot_time=snapshot_time(snapshot_date), max_text_chars=cfg.ingest.max_text_chars,
        now=pd.Timestamp.now(tz="UTC"), max_clock_skew_s=cfg.ingest.max_clock_skew_s,
    )  # fmt: skip


def _deliveries(cfg: Config, snapshot_date: dt.date, source_path: Path, files: list[Path]):
    """Read and validate the event files tonight needs (``deliveries.plan``), falling back to every file when
    the incremental read cannot be exact; returns (raw tables, validated tables, the snapshot the rows are
    appended to or None, tonight's delivery state, the summary's ``deliveries``)."""
    data_dir, threshold = cfg.paths.data_dir, cfg.ingest.click_rating_threshold
    root = tables.canonical_dir(data_dir, "interactions")
    plan = deliveries.plan(root, snapshot_date, files)
    raw = mapped.load(source_path, click_rating_threshold=threshold, files=plan.files)
    checked, reason = None, plan.reason
    if plan.base is not None:
        raw.interactions, reason = deliveries.new_rows(plan, raw.interactions)
        if reason is None:
            checked = _validate(cfg, raw, snapshot_date)
            valid = _valid_ids(checked)
            reason = deliveries.catalogue_reason(
                tables.canonical_dir(data_dir, "items"), tables.canonical_dir(data_dir, "users"), plan.base,
                plan.state, valid["item"], valid["user"],
            )  # fmt: skip
    if reason is not None and plan.base is not None:  # every file after all
        plan = deliveries.Plan(files, reason=reason)
        raw = mapped.load(source_path, click_rating_threshold=threshold, files=files)
        checked = None
    checked = checked or _validate(cfg, raw, snapshot_date)
    valid = _valid_ids(checked)
    unknown = {
        n: {i.strip() for i in raw.interactions[f"{n}_id"].dropna()} - valid[n] for n in ("item", "user")
    }
    state = deliveries.next_state(plan, plan.files, raw.interactions, unknown, snapshot_date)
    summary = {"delivered": len(files), "read": len(plan.files), "appended_to": plan.base and plan.base.isoformat(),
               "reason": plan.reason}  # fmt: skip
    return raw, checked, plan.base, state, summary


def _valid_ids(checked) -> dict[str, set]:
    """The item and user ids that passed validation tonight."""
    return {n: set(getattr(checked, f"{n}s").column(f"{n}_id").to_pylist()) for n in ("item", "user")}


def _write(cfg: Config, snapshot_date: dt.date, source_path: Path, raw, checked, base=None, state=None,
           delivery=None) -> IngestResult:  # fmt: skip
    result = IngestResult(snapshot_date, cfg.ingest.source, source_path, checked.counts, raw.notes)
    result.deliveries = delivery
    for name in TABLES:
        root = tables.canonical_dir(cfg.paths.data_dir, name)
        table, n = getattr(checked, name), getattr(checked, name).num_rows
        if name == "interactions":  # events only grow: a night writes its new ones
            extra = {deliveries.STATE: state} if state is not None else None
            write = (
                tables.append_rows(root, snapshot_date, table, extra)
                if base is not None
                else tables.write_appended_snapshot(root, snapshot_date, table, "event_ts", extra)
            )
            result.writes[name] = asdict(write)
        else:  # the catalogue and the quarantine: their size is the catalogue's, not the history's
            # with its rows' digest: embed skips its item pass when the catalogue did not change
            tables.write_snapshot(root, snapshot_date, table, digest=name != "quarantine")
            result.writes[name] = asdict(tables.AppendWrite("full", n, n, n, 1, reason="catalogue-sized"))
        result.outputs[name] = tables.snapshot_dir(root, snapshot_date)
    return result
