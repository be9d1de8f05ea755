"""Typed stage results: what each stage run returns, what the nightly records and what the CLI prints.

Each result wraps the stage's manifest (``data``, as written to disk and to the nightly's markers) and gives
it a type: the rows the stage read and wrote (``rows_read`` / ``rows_written``; None where the stage has no
row count to give, e.g. Feast does not report how many rows a materialisation wrote), ``to_dict()`` (the
manifest with those counts it has) and a one-line ``headline()``. A result is also a read-only mapping over
``to_dict()``, so code that indexed the old manifest dicts keeps working.

``result_for(stage, summary)`` rebuilds the result of a stage from its recorded summary (a skipped stage's
marker), so ``nightly`` and ``cli`` render every stage the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar


def _key(name: str, doc: str | None = None, empty: type | None = None) -> property:
    """A read-only property: ``data[name]``; None, or a new ``empty()``, when the summary has no such key."""
    return property(
        lambda self: self.data[name] if name in self.data else (empty() if empty else None), doc=doc
    )


@dataclass(eq=False)
class StageResult(Mapping):
    """The base: ``data`` is the stage's manifest or summary."""

    data: dict = field(default_factory=dict)
    stage: ClassVar[str] = "stage"
    marker_keys: ClassVar[tuple[str, ...] | None] = None
    """The keys of ``data`` the nightly records in its marker (None: all)."""

    @cached_property
    def rows_io(self) -> dict | None:
        """Rows read and written, with per-stage extras (``costs.stage_rows``: the one definition of the
        counts); recorded in the nightly's markers under ``rows_io``."""
        if "rows_io" in self.data:
            return self.data["rows_io"]
        from llmfeat.core import costs

        return costs.stage_rows(self.stage, self.data)

    @property
    def rows_read(self) -> int | None:
        """A count the stage recorded itself wins over the derived one."""
        return self.data.get("rows_read", (self.rows_io or {}).get("read"))

    @property
    def rows_written(self) -> int | None:
        return self.data.get("rows_written", (self.rows_io or {}).get("written"))

    @property
    def seconds(self) -> dict:
        return self.data.get("seconds", {})

    def to_dict(self) -> dict:
        """``data`` with ``rows_read`` / ``rows_written`` (each left out when the stage has no such count)."""
        rows = {"rows_read": self.rows_read, "rows_written": self.rows_written, "rows_io": self.rows_io}
        return {**self.data, **{k: v for k, v in rows.items() if v is not None}}

    def __bool__(self) -> bool:
        """False for the empty result of a stage that did not run."""
        return bool(self.data)

    def rows(self) -> str:
        """'rows read R, written W' (a dash for a count the stage does not have)."""

        def fmt(v):
            return "-" if v is None else str(v)

        return f"rows read {fmt(self.rows_read)}, written {fmt(self.rows_written)}"

    def headline(self) -> str:
        return self.rows()

    def for_marker(self) -> StageResult:
        """The result the nightly records: ``data`` cut to ``marker_keys``."""
        if self.marker_keys is None:
            return self
        return type(self)({k: self.data[k] for k in self.marker_keys if k in self.data})

    # a read-only mapping over to_dict(): existing callers index results like the manifests they were
    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(eq=False)
class IngestSummary(StageResult):
    stage: ClassVar[str] = "ingest"

    @classmethod
    def of(cls, r) -> IngestSummary:
        """From ``ingest.IngestResult``."""
        return cls({"counts": r.counts, "notes": r.notes, "quarantined": r.quarantined,
                    "not_yet_visible": r.not_yet_visible, "outputs": {k: str(v) for k, v in r.outputs.items()},
                    "writes": r.writes, "deliveries": r.deliveries})  # fmt: skip

    @property
    def counts(self) -> dict:
        return self.data.get("counts", {})

    @property
    def quarantined(self) -> int:
        return int(self.data.get("quarantined", 0))

    @property
    def not_yet_visible(self) -> int:
        return int(self.data.get("not_yet_visible", 0))

    def headline(self) -> str:
        kept = ", ".join(f"{k} {v['kept']}" for k, v in self.counts.items())
        from llmfeat.core.tables import describe_append

        events = self.data.get("writes", {}).get("interactions")
        how = f"; interactions {describe_append(events)}" if events else ""
        got = self.data.get("deliveries")
        if got:
            why = f", every file: {got['reason']}" if got.get("reason") else ""
            how += f"; read {got['read']} of {got['delivered']} event file(s){why}"
        return f"{kept}; quarantined {self.quarantined}; not yet visible {self.not_yet_visible}{how}"


@dataclass(eq=False)
class EmbedResult(StageResult):
    stage: ClassVar[str] = "embed"

    @property
    def counts(self) -> dict:
        return self.data.get("counts", {})

    @property
    def model_id(self) -> str | None:
        return self.data.get("model_id")

    def headline(self) -> str:
        parts = [f"{k}: {v.get('unchanged', 0)} unchanged, not rendered again" if v.get("skipped") else
                 f"{k}: encoded {v.get('encoded', 0)}, reused {v.get('reused', 0)}, written {v.get('written', 0)}"
                 for k, v in self.counts.items() if "encoded" in v]  # fmt: skip
        return f"model {self.model_id}; " + "; ".join(parts)


@dataclass(eq=False)
class StatsResult(StageResult):
    stage: ClassVar[str] = "stats"

    @property
    def written(self) -> dict[str, int]:
        return self.data.get("counts", {}).get("written", {})

    def headline(self) -> str:
        return "rows written " + ", ".join(f"{k} {v}" for k, v in self.written.items())


@dataclass(eq=False)
class PublishResult(StageResult):
    """Feast does not say how many rows a materialisation read or wrote: ``costs.materialized_rows`` counts
    them from the offline tables over the materialised interval."""

    stage: ClassVar[str] = "publish"

    def headline(self) -> str:
        s = self.data
        kept = f"; {len(s['kept_newer'])} kept newer values" if s.get("kept_newer") else ""
        views = len(s.get("feature_views", []))
        return f"{views} views -> {s.get('online_store')} until {s.get('materialized_until')}{kept}"


@dataclass(eq=False)
class IndexResult(StageResult):
    """What ``run_index`` returns: the new version's manifest (``manifest.json``) plus ``path`` and ``pruned``.
    A backfill that leaves a newer index in place records only ``version`` and ``kept_newer``."""

    stage: ClassVar[str] = "index"
    marker_keys: ClassVar[tuple[str, ...]] = ("version", "model_id", "count", "dim", "index", "path", "pruned",
                                              "seconds")  # fmt: skip

    version = _key("version")
    kept_newer = _key("kept_newer", "The as-of date of the newer index a backfill left in place.")
    model_id = _key("model_id")
    count = _key("count")
    dim = _key("dim")
    as_of = _key("as_of")

    @property
    def factory(self) -> str | None:
        return self.data.get("index", {}).get("factory")

    @property
    def exact(self) -> bool:
        return bool(self.data.get("index", {}).get("exact"))

    params = _key("params", "The search parameters the build chose (``nprobe``, ...).", empty=dict)

    @property
    def recall(self) -> dict[str, float]:
        """recall@10 against exact search, per query kind (items, users)."""
        return self.data.get("tuning", {}).get("recall", {})

    @property
    def tuning_queries(self) -> dict[str, int]:
        return self.data.get("tuning", {}).get("queries", {})

    @property
    def training_sample(self) -> int:
        """Vectors the index was trained on (0: nothing to train)."""
        return int(self.data.get("training", {}).get("sample_size") or 0)

    @property
    def training_seed(self) -> int | None:
        return self.data.get("training", {}).get("seed")

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for f in self.data.get("files", {}).values())

    path = _key("path")
    pruned = _key("pruned", empty=list)

    def headline(self) -> str:
        if self.kept_newer:
            return f"kept version {self.version} (as of {self.kept_newer}, newer than this date)"
        return f"version {self.version}: {self.count} items, {self.factory}"


@dataclass(eq=False)
class TrainResult(StageResult):
    """``rows_read``: the interactions snapshot's rows scanned for the labelled rows (with a training window, its
    row groups only) plus the training-frame rows fetched from Feast, reused and replayed; ``rows_written``: rows
    fetched and stored this run; ``rows_io["trained_on"]``: the rows the models were fitted on."""

    stage: ClassVar[str] = "train"

    @property
    def trained(self) -> bool:
        return self.data.get("trained", True) is not False

    @property
    def headline_rows(self) -> list[dict]:
        """The temporal protocol's all-rows and cold-item results (the nightly keeps only these)."""
        if "headline" in self.data:
            return self.data["headline"]
        return [r for r in self.data.get("results", [])
                if r["slice"] in ("all", "cold_item") and r["protocol"] == "temporal"]  # fmt: skip

    def headline(self) -> str:
        if not self.trained:
            return f"not trained: {self.data.get('reason')}"
        from llmfeat.ctr.report import is_tiny

        heads = [
            f"{r['model']} {r['slice']} AUC {r['auc']:.3f} ({r['rows']} rows{', too few to read' if is_tiny(r) else ''})"
            for r in self.headline_rows
            if r["model"] in ("deep_lm", "deep_ids_stats")
        ]
        f = self.data.get("frame") or {}
        frame = (
            f"frame: {f.get('reused_rows', 0)} rows reused, {f.get('fetched_rows', 0)} fetched; " if f else ""
        )
        if f.get("window_days"):
            frame += f"window {f['window_days']} days + {f.get('replayed_rows', 0)} replayed rows; "
        report = self.data.get("report")
        kind = "refresh (first protocol, warm start); " if self.data.get("evaluation") == "refresh" else ""
        line = kind + frame + "; ".join(heads) + f"; report {Path(report).resolve() if report else '-'}"
        bandit = self.data.get("bandit") or {}
        if "mean_test_reward" in bandit:
            b = bandit["mean_test_reward"]
            line += f"; bandit sim reward VW {b['vw']:.0f} vs random {b['random']:.0f}, greedy CTR {b['greedy_ctr']:.0f}"
        elif bandit.get("policy", {}).get("kept"):
            line += f"; bandit policy {bandit['policy']['version']} kept (no logged decisions)"
        elif bandit.get("policy"):
            line += f"; bandit policy {bandit['policy']['version']} retrained on the event log"
        return line


@dataclass(eq=False)
class FinetuneResult(StageResult):
    """The model card. ``rows_read``: click pairs used (train + validation); nothing row-wise is written."""

    stage: ClassVar[str] = "finetune"

    @property
    def rows_read(self) -> int | None:
        d = self.data.get("data") or {}
        if "train_pairs" not in d:
            return None
        return int(d["train_pairs"]) + int(d.get("validation_pairs", 0))

    def headline(self) -> str:
        c = self.data
        return (f"{c.get('model_id')}: validation loss {c.get('val_loss_before')} -> {c.get('val_loss_after')} "
                f"(best step {c.get('best_step')} of {c.get('steps')})")  # fmt: skip


@dataclass(eq=False)
class AdaptResult(StageResult):
    """What ``run_adapt`` returns: the adapter's card and the set's manifest (without the training history);
    ``run_adapt_stage`` adds ``index_version`` and the publish / index seconds. ``rows_written``: the vectors
    written to the adapted set (items + users)."""

    stage: ClassVar[str] = "adapt"
    marker_keys: ClassVar[tuple[str, ...]] = ("embedding_set", "model_id", "counts", "val_recall@20", "hybrid",
                                              "best_epoch", "train_seconds", "index_version", "seconds")  # fmt: skip

    embedding_set = _key("embedding_set")
    model_id = _key("model_id")
    counts = _key("counts", empty=dict)
    validation_recall = _key("val_recall@20", "Recall@20 on the validation window (``val_recall@20``).")
    hybrid = _key(
        "hybrid", "The hybrid score's popularity window and weight, chosen on validation.", empty=dict
    )
    index_version = _key("index_version")

    @property
    def rows_written(self) -> int | None:
        counts = self.data.get("counts")
        return sum(v for v in counts.values() if isinstance(v, int)) if counts else None

    def headline(self) -> str:
        return (f"set {self.embedding_set}: {self.model_id}; validation recall@20 {self.validation_recall}; "
                f"index {self.index_version}")  # fmt: skip


RESULTS = {r.stage: r for r in (IngestSummary, EmbedResult, StatsResult, PublishResult, IndexResult, TrainResult,
                                FinetuneResult, AdaptResult)}  # fmt: skip


def result_for(stage: str, summary: Mapping) -> StageResult:
    """The typed result of ``stage`` from its summary (a result already, or a dict read from a marker)."""
    if isinstance(summary, StageResult):
        return summary
    return RESULTS.get(stage, StageResult)(dict(summary))
