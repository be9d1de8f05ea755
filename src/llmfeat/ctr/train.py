"""Stage 6, train: CTR models on point-in-time feature vectors from Feast, against baselines, with a report.

1. Labelled interactions (the canonical table) are the entity rows; ``get_historical_features`` (Feast,
   Spark offline store) joins each with the features in force at its time. The job never reads the
   embedding tables directly.
2. Splits: temporal (train < T1 <= validation < T2 <= test) and per-user leave-last-k; every number in the
   report names its protocol.
3. Models, trained on train, early-stopped on validation, evaluated on test, overall and per slice
   (cold-start items, cold users, light users, warm):
   ``popularity`` (smoothed item CTR from training), ``lr_lm`` (logistic regression on the seed's vector),
   ``deep_ids_stats`` (the deep model without text), ``deep_tfidf`` (TF-IDF text instead of the language
   model), ``deep_lm`` (the deep model with language-model features), optionally ``deep_adapted`` (ids + stats
   + the collaborative adapter's vectors, cosine and log recent popularity; ``ctr_eval.split_adapted_features``;
   temporal protocol only, skipped with its reason otherwise).
4. Artefacts: each model with its feature list, id vocabularies, embedding model id and metrics under
   ``<data_dir>/models/ctr/<run>/``, ``current.json`` pointing at the latest run; the report (Markdown + PNG
   plots) under ``<data_dir>/reports/<run>/`` (or ``paths.reports_dir``), as absolute paths.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from llmfeat.core import costs, tables
from llmfeat.core.config import Config, reports_dir
from llmfeat.core.errors import ConfigError, MissingInputError, ModelMismatchError, TooLittleDataError  # noqa: F401 - re-exported
from llmfeat.core.layout import DataDir
from llmfeat.core.results import TrainResult
from llmfeat.core.stage_run import StageRun
from llmfeat.ctr import warm_start
from llmfeat.ctr.data import TEXT_BLOCKS, TfidfSpace, Vocab, build_dense, dense_names
from llmfeat.ctr.metrics import auc, base_rate_logloss, gauc, impression_metrics, logloss
from llmfeat.ctr.models import CtrInputs, DeepCTR, LogisticRegression, TrainConfig, fit, predict
from llmfeat.data.splits import Split, leave_last_k, slice_masks, temporal_split
from llmfeat.data.texts import render
from llmfeat.feast.names import ITEM_MODEL_ID, ITEM_TEXT

MODELS = ("popularity", "lr_lm", "deep_ids_stats", "deep_tfidf", "deep_lm", "deep_adapted")
FEATURE_SET = {"lr_lm": "lm_vector", "deep_ids_stats": "ids_stats", "deep_tfidf": "tfidf", "deep_lm": "lm",
               "deep_adapted": "adapted"}  # fmt: skip


def models_dir(cfg: Config) -> Path:
    """CTR models of ``cfg``'s embedding set: ``<data_dir>/models/ctr`` for the default set, else
    ``<data_dir>/models/ctr/sets/<set>``; each has its own ``current.json``, so switching
    ``embed.embedding_set`` switches the rankers with the features, and rolling back is switching back."""
    return DataDir(Path(cfg.paths.data_dir)).ctr_models(cfg.embed.embedding_set)


def run_dir_of(pointer: Path) -> Path:
    """The run directory a ``current.json`` names. Written relative to the pointer's folder (a data directory
    is relocatable); older pointers held an absolute path or one relative to the working directory of the
    run: those are read as the run of that name beside the pointer, so a copied data directory never loads
    the models of the one it was copied from, whatever the working directory."""
    recorded = Path(json.loads(Path(pointer).read_text())["path"])
    here = Path(pointer).parent
    if not recorded.is_absolute() and (here / recorded).is_dir():
        return here / recorded
    return here / recorded.name


def write_current(models: Path, run_id: str, run_dir: Path) -> Path:
    """Point ``models/current.json`` at ``run_dir`` (relative to ``models``), atomically."""
    pointer = Path(models) / "current.json"
    return tables.write_json(pointer, {"run_id": run_id, "path": os.path.relpath(run_dir, models)})


def training_rows(cfg: Config, as_of: dt.date, since: pd.Timestamp | None = None) -> pd.DataFrame:
    """The labelled interactions of the snapshot ``as_of`` (with ``since``, those at or after it only: the
    time-ordered row groups before it are not read, ``tables.rows_from``)."""
    path = tables.snapshot_dir(tables.canonical_dir(cfg.paths.data_dir, "interactions"), as_of)
    columns = ["user_id", "item_id", "event_ts", "label", "impression_id"]
    since_filter = None if since is None else [("event_ts", ">=", since)]
    rows = pd.read_parquet(path, columns=columns, filters=since_filter)
    rows["event_timestamp"] = rows["event_ts"]
    return rows


def other_set_summaries(cfg: Config, as_of: dt.date) -> list[dict]:
    """The current run of every other embedding set's CTR models on the same snapshot (for the report)."""
    root = DataDir(Path(cfg.paths.data_dir)).ctr_models_root
    pointers = [root / "current.json", *sorted((root / "sets").glob("*/current.json"))]
    own = (models_dir(cfg) / "current.json").resolve()
    out = []
    for pointer in pointers:
        if not pointer.is_file() or pointer.resolve() == own:
            continue
        path = run_dir_of(pointer) / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())
            if summary.get("as_of") == as_of.isoformat():
                out.append(summary)
    return out


def _embedding_dim(frame: pd.DataFrame) -> int:
    for value in frame[ITEM_TEXT]:
        if value is not None and not isinstance(value, float):
            return len(value)
    raise MissingInputError("no item text embedding in the training frame: run embed and publish first")


@dataclass
class PreparedSplit:
    split: Split
    frames: dict[str, pd.DataFrame]
    """train / validation / test rows with their Feast features."""


def _inputs(feature_set: str, frame: pd.DataFrame, dim: int, users: Vocab, items: Vocab, tfidf: TfidfSpace | None,
            clicks: pd.DataFrame, adapted=None) -> CtrInputs:  # fmt: skip
    at = pd.to_datetime(frame["event_timestamp"], utc=True)
    if feature_set == "adapted":
        from llmfeat.ctr.evaluate import dense_inputs

        dense = dense_inputs("adapted", frame, dim, adapted)
    elif feature_set == "tfidf":
        columns = tfidf.columns(frame, clicks)
        dense = build_dense("tfidf", columns, at, tfidf.dim, len(frame))
    else:
        dense = build_dense(feature_set, frame, at, dim, len(frame))
    return CtrInputs(dense.astype(np.float32), users.encode(frame["user_id"].tolist()), items.encode(frame["item_id"].tolist()),
                     frame["label"].to_numpy(np.float32))  # fmt: skip


def _evaluate(
    name: str, protocol: str, train: pd.DataFrame, test: pd.DataFrame, probs: np.ndarray, light_max: int
) -> list[dict]:
    rows = []
    y_train = train["label"].to_numpy()
    for slice_name, mask in slice_masks(train, test, light_max).items():
        if not mask.any():
            continue
        y, p = test["label"].to_numpy()[mask], probs[mask]
        row = {
            "protocol": protocol, "model": name, "slice": slice_name, "rows": int(mask.sum()), "clicks": int(y.sum()),
            "auc": auc(y, p), "logloss": logloss(y, p), "base_logloss": base_rate_logloss(y_train, y),
            "gauc": gauc(test["user_id"].to_numpy()[mask], y, p),
        }  # fmt: skip
        imp = test["impression_id"].to_numpy()[mask]
        if pd.notna(imp).any():
            has = pd.notna(imp)
            row.update(impression_metrics(imp[has], y[has], p[has]))
        rows.append(row)
    return rows


def _popularity(train: pd.DataFrame, test: pd.DataFrame, prior_weight: float = 10.0) -> np.ndarray:
    """Smoothed item CTR from the training rows (the base rate for unseen items)."""
    base = float(train["label"].mean())
    g = train.groupby("item_id")["label"].agg(["sum", "count"])
    ctr = (g["sum"] + prior_weight * base) / (g["count"] + prior_weight)
    return test["item_id"].map(ctr).fillna(base).to_numpy(np.float64)


def _save_model(out: Path, name: str, model, feature_set: str, dims: dict, users: Vocab, items: Vocab,
                embedding_model_id: str | None, metrics: list[dict], kwargs: dict) -> Path:  # fmt: skip
    import torch

    path = out / f"{name}.pt"
    torch.save(
        {
            "name": name, "class": type(model).__name__, "kwargs": kwargs, "state_dict": model.state_dict(),
            "feature_set": feature_set, "dense_names": dims["names"], "embedding_dim": dims["dim"],
            "user_vocab": users.index, "item_vocab": items.index, "embedding_model_id": embedding_model_id,
            "metrics": metrics,
        },
        path,
    )  # fmt: skip
    return path


def embedded_model_id(cfg: Config) -> str | None:
    """The model id of the embedding set's newest embed run (None before the first)."""
    from llmfeat.core.layout import embedding_paths

    manifests = sorted(embedding_paths(cfg.paths.data_dir, cfg.embed.embedding_set).manifests.glob("*.json"))
    return json.loads(manifests[-1].read_text()).get("model_id") if manifests else None


@dataclass(frozen=True)
class EvaluationPlan:
    """What tonight's train stage runs (``train.evaluate_every_days``): a ``full`` evaluation, or a ``refresh``
    of the models on the first protocol, warm-started; ``cfg`` is the configuration to train with."""

    kind: Literal["full", "refresh"]
    cfg: Config
    reason: str
    last_full: dict | None
    """run_id, as_of and report of the newest full evaluation before tonight (None: there is none)."""


def last_full_evaluation(cfg: Config, as_of: dt.date) -> dict | None:
    """The summary of the newest full-evaluation run of this embedding set's models as of ``as_of`` or before
    (runs written before refreshes existed count as full)."""
    newest = None
    for path in models_dir(cfg).glob("*/summary.json"):
        try:
            summary = json.loads(path.read_text())
            key = (summary["as_of"], summary["run_id"])
        except (OSError, ValueError, KeyError, TypeError):  # a partial or foreign file: not a run
            continue
        if summary.get("evaluation", "full") == "full" and key[0] <= as_of.isoformat():
            newest = summary if newest is None or key > (newest["as_of"], newest["run_id"]) else newest
    return newest


def plan_evaluation(cfg: Config, as_of: dt.date, *, forced: bool = False) -> EvaluationPlan:
    """Full evaluation or refresh for the nightly's train stage as of ``as_of`` (see ``EvaluationPlan``)."""
    last = last_full_evaluation(cfg, as_of)
    every = cfg.train.evaluate_every_days
    ref = {k: last.get(k) for k in ("run_id", "as_of", "report")} if last else None
    if forced:
        return EvaluationPlan("full", cfg, "train was forced", ref)
    if last is None:
        return EvaluationPlan("full", cfg, "no full evaluation yet", ref)
    age = (as_of - dt.date.fromisoformat(last["as_of"])).days
    why = f"the last full evaluation is {age} day(s) old (every {every})"
    if age >= every:
        return EvaluationPlan("full", cfg, why, ref)
    model = embedded_model_id(cfg)
    if model is not None and last.get("embedding_model_id") not in (None, model):
        return EvaluationPlan("full", cfg, f"the embedding model changed ({last['embedding_model_id']} -> {model})",
                              ref)  # fmt: skip
    t = cfg.train
    models = [m for m in t.models if m in t.refresh_models]
    first = dataclasses.replace(t, protocols=t.protocols[:1], warm_start=True, models=models or t.models,
                                window_days=refresh_window(t), lr=refresh_lr(t))  # fmt: skip
    return EvaluationPlan("refresh", dataclasses.replace(cfg, train=first), why, ref)


def refresh_window(t) -> int | None:
    """A refresh night's training window in days: ``refresh_window_days``, or ``window_days`` when shorter."""
    days = [d for d in (t.window_days, t.refresh_window_days) if d is not None]
    return min(days) if days else None


def refresh_lr(t) -> float:
    """A refresh night's learning rate: ``refresh_lr``, or ``lr`` when it is None."""
    return t.lr if t.refresh_lr is None else t.refresh_lr


def window_start(cfg: Config, as_of: dt.date) -> pd.Timestamp | None:
    """The first instant of ``train.window_days`` before ``as_of`` (None: no window)."""
    if cfg.train.window_days is None:
        return None
    return pd.Timestamp(as_of, tz="UTC") - pd.Timedelta(days=cfg.train.window_days)


def fetch_training_frame(
    cfg: Config, as_of: dt.date, *, log: Callable[[str], None] = print, refresh: bool = False,
    stats: dict | None = None,
) -> pd.DataFrame:  # fmt: skip
    """The labelled interactions as of ``as_of`` with their point-in-time features from Feast, fetched only
    for the event days not stored yet (``training_frames``); ``refresh`` fetches every day again.
    ``stats``, when given, receives what was reused and fetched."""
    from llmfeat.feast.store import open_store
    from llmfeat.features import training_frames

    start = window_start(cfg, as_of)  # with a window, only its rows are read back or fetched (and a replay)
    rows = training_rows(cfg, as_of, since=start)
    if len(rows) < cfg.train.min_interactions:
        raise TooLittleDataError(
            f"only {len(rows)} labelled interactions as of {as_of} "
            f"(train.min_interactions={cfg.train.min_interactions})"
        )
    root = training_frames.frame_root(cfg.paths.data_dir, cfg.embed.embedding_set)
    frame, fetched = training_frames.fetch(
        open_store(cfg), rows, root, embedding_model_id=embedded_model_id(cfg), refresh=refresh, log=log,
        batch_rows=cfg.train.fetch_batch_rows,
    )  # fmt: skip
    if start is not None and cfg.train.replay_rows:  # older days for the training rows only (_splits)
        replay = training_frames.replay_days(root, start.date(), cfg.train.replay_rows,
                                             seed=as_of.toordinal() * 1_000 + cfg.train.seed)  # fmt: skip
        if replay is not None:
            replay["event_timestamp"] = pd.to_datetime(replay["event_timestamp"], utc=True)
            frame = training_frames.sort_frame(pd.concat([replay, frame], ignore_index=True))
            fetched.replayed_rows = len(replay)
    if stats is not None:
        stats.update(fetched.to_dict())
        snapshot = tables.snapshot_dir(tables.canonical_dir(cfg.paths.data_dir, "interactions"), as_of)
        stats["interactions_read"] = (
            tables.rows_from(snapshot, "event_ts", start)
            if start is not None
            else costs.parquet_rows(snapshot)
        )
        stats["window_days"] = cfg.train.window_days
    return frame


def run_train(
    cfg: Config, as_of: dt.date, *, log: Callable[[str], None] = print, frame: pd.DataFrame | None = None,
    refresh: bool = False, plan: EvaluationPlan | None = None, predictions: dict | None = None,
) -> TrainResult:  # fmt: skip
    """Train and evaluate every configured model; returns the summary (also saved next to the models).
    ``frame``: the output of ``fetch_training_frame`` when the caller already has it (seed sweeps);
    ``refresh``: fetch the whole training frame again instead of only the days not stored yet;
    ``plan``: the nightly's choice (``plan_evaluation``); its ``cfg`` replaces ``cfg``. None: a full evaluation.
    ``predictions``, when given, receives each protocol's test labels (``_labels``) and test predictions per
    model, in the split's test order (for paired comparisons: bench/refresh_window.py)."""
    from llmfeat.ctr.report import write_report

    if plan is not None:
        cfg = plan.cfg
        log(f"train: {plan.kind} evaluation: {plan.reason}")
    run = StageRun.start("train", as_of, log)
    frame_stats: dict = {}
    if frame is None:
        frame = fetch_training_frame(cfg, as_of, log=log, refresh=refresh, stats=frame_stats)
    frame, dim, embedding_model_id = _checked_frame(frame)
    fetched = run.mark("features", run.started_clock)
    splits = _splits(frame, cfg.train, window_start(cfg, as_of))
    out_dir = models_dir(cfg) / run.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    fits, tfidf = _Fits(), _tfidf_space(cfg, as_of)
    if cfg.train.warm_start:
        fits.previous = warm_start.previous_run(models_dir(cfg))
    for split in splits:
        _fit_split(cfg, as_of, split, frame, dim, tfidf, embedding_model_id, out_dir, fits, log)
    run.mark("training", fetched)
    report_dir = reports_dir(cfg) / run.run_id
    summary = {
        "run_id": run.run_id,
        "as_of": as_of.isoformat(),
        "rows": len(frame),
        "frame": frame_stats,
        "embedding_set": cfg.embed.embedding_set,
        "embedding_model_id": embedding_model_id,
        "embedding_dim": dim,
        "protocols": {
            s.protocol: {
                **s.boundaries,
                "train": len(s.train),
                "validation": len(s.validation),
                "test": len(s.test),
            }
            for s in splits
        },  # fmt: skip
        "results": fits.results,
        "models": fits.saved,
        "skipped": fits.skipped,
        "report": str(report_dir / "report.md"),
        "seconds": dict(run.phases.seconds),
    }
    summary["fit_epochs"] = fits.epochs
    summary["evaluation"] = plan.kind if plan else "full"
    if plan is not None:
        summary["evaluation_reason"] = plan.reason
        if plan.kind == "refresh":
            summary["last_full_evaluation"] = plan.last_full
            summary["carried_over"] = _carry_over(fits.previous, out_dir, summary["models"])
    if cfg.train.warm_start:
        summary["warm_start"] = fits.warmed
    if predictions is not None:
        predictions.update(fits.predictions)
    write_report(report_dir, {**summary, "compared_sets": other_set_summaries(cfg, as_of)}, fits.curves,
                 fits.predictions)  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_current(models_dir(cfg), run.run_id, out_dir)
    summary["seconds"]["total"] = run.elapsed
    return TrainResult(summary)


def _carry_over(previous: tuple[dict, Path] | None, out_dir: Path, saved: dict[str, str]) -> dict[str, str]:
    """A refresh run's models that were not retrained, linked unchanged from the previous run into this one
    (so the run stays complete for rankers); returns model -> the run it comes from."""
    if previous is None:
        return {}
    summary, run = previous
    carried = {}
    for name, path in summary.get("models", {}).items():
        source = run / Path(path).name
        if name in saved or not source.is_file():
            continue
        target = out_dir / source.name
        try:
            os.link(source, target)
        except OSError:  # another file system: a copy
            shutil.copy2(source, target)
        saved[name] = str(target)
        carried[name] = summary.get("carried_over", {}).get(name, summary["run_id"])
    return carried


def _checked_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, str | None]:
    """(a copy with ``event_ts``, the embedding dimension, the one embedding model id); a frame mixing
    embedding models is refused."""
    frame = frame.copy()
    frame["event_ts"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    model_ids = frame[ITEM_MODEL_ID].dropna().unique().tolist()
    if len(model_ids) > 1:
        raise ModelMismatchError(f"the training frame mixes embedding models {model_ids}")
    return frame, _embedding_dim(frame), model_ids[0] if model_ids else None


def _tfidf_space(cfg: Config, as_of: dt.date) -> TfidfSpace | None:
    """The TF-IDF text space over the catalogue of ``as_of`` (only when ``deep_tfidf`` is trained)."""
    t = cfg.train
    if "deep_tfidf" not in t.models:
        return None
    items = pd.read_parquet(tables.snapshot_dir(tables.canonical_dir(cfg.paths.data_dir, "items"), as_of))
    texts = [render(cfg.embed.item_template, r) for r in items.to_dict("records")]
    return TfidfSpace.fit(items["item_id"].tolist(), texts, dim=t.tfidf_dim, seed=t.seed)


def _splits(frame: pd.DataFrame, t, window_start: pd.Timestamp | None = None) -> list[Split]:
    """One split per configured protocol (config.Protocol: temporal or leave_last_k). With a training window the
    temporal split's quantiles are the window's rows' (replayed older days only ever train)."""
    splits = []
    for protocol in t.protocols:
        if protocol == "temporal":
            t1 = pd.Timestamp(t.t1, tz="UTC") if t.t1 else None
            t2 = pd.Timestamp(t.t2, tz="UTC") if t.t2 else None
            if window_start is not None and (t1 is None or t2 is None):
                inside = frame[frame["event_ts"] >= window_start]
                w = temporal_split(inside, t1, t2, tuple(t.split_quantiles)).boundaries
                t1, t2 = pd.Timestamp(w["t1"]), pd.Timestamp(w["t2"])
            splits.append(temporal_split(frame, t1, t2, tuple(t.split_quantiles)))
        else:
            splits.append(leave_last_k(frame, t.leave_last_k))
    return splits


@dataclass
class _Fits:
    """What fitting every model on every split produced, for the summary and the report."""

    results: list[dict] = field(default_factory=list)
    curves: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    saved: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """"<protocol>/<model>" -> why it was not trained (e.g. deep_adapted on leave_last_k)."""
    epochs: dict[str, int] = field(default_factory=dict)
    previous: tuple | None = None
    """The previous night's run (warm_start.previous_run) when ``train.warm_start`` is on."""
    warmed: dict[str, str] = field(default_factory=dict)
    """"<protocol>/<model>" -> "warm", or why it started cold."""


def _warm(fits: _Fits, model, name: str, fs: str, split: Split, kwargs: dict, vec_dim: int, users: Vocab,
          items: Vocab, embedding_model_id: str | None) -> None:  # fmt: skip
    """Start ``model`` from the previous night's model of the same name when allowed (``warm_start``); record
    "warm" or why it starts cold."""
    previous = fits.previous
    why = warm_start.eligible(previous and previous[0], split.protocol, split.boundaries)
    why = why or warm_start.load_into(
        model, previous[1] / f"{name}.pt", kwargs=kwargs, feature_set=fs, dense_names=dense_names(fs, vec_dim),
        users=users, items=items, embedding_model_id=embedding_model_id,
    )  # fmt: skip
    fits.warmed[f"{split.protocol}/{name}"] = why or "warm"


def _fit_split(cfg: Config, as_of: dt.date, split: Split, frame: pd.DataFrame, dim: int, tfidf: TfidfSpace | None,
               embedding_model_id: str | None, out_dir: Path, fits: _Fits, log: Callable[[str], None]) -> None:  # fmt: skip
    """Fit, evaluate and (on the first protocol) save every configured model on one split."""
    t = cfg.train
    train_cfg = TrainConfig(t.epochs, t.batch_size, t.lr, t.weight_decay, t.patience, t.seed, t.device)
    train, test = split.train, split.test
    log(
        f"train: {split.protocol}: {len(train)} train / {len(split.validation)} validation / {len(test)} test rows"
    )
    ids = {"user_vocab": train["user_id"], "item_vocab": train["item_id"]}
    previous = fits.previous if t.warm_start else None
    carry = (
        previous is not None and warm_start.eligible(previous[0], split.protocol, split.boundaries) is None
    )
    # a warm fit keeps the previous model's ids too, their rows held (warm_start: carried_vocab, fixed_rows)
    vocabs = (
        warm_start.carried_vocab(previous[1], ids) if carry else {k: Vocab.fit(v) for k, v in ids.items()}
    )
    users, items_vocab = vocabs["user_vocab"], vocabs["item_vocab"]
    fixed = warm_start.fixed_rows(vocabs, ids) if carry else {}
    # The TF-IDF pooled history may use any click before a row's snapshot, as the LM history does.
    clicks = frame[frame["label"] == 1][["user_id", "item_id", "event_ts"]]
    fits.curves[split.protocol] = {}
    fits.predictions[split.protocol] = {"_labels": test["label"].to_numpy()}
    for name in t.models:
        fitted = None
        if name == "popularity":
            probs = _popularity(train, test)
        else:
            fs = FEATURE_SET[name]
            adapted: dict = {}
            if fs == "adapted":
                from llmfeat.ctr.evaluate import split_adapted_features

                adapted, reason, adapted_info = split_adapted_features(cfg, as_of, split, log)
                if reason:
                    fits.skipped[f"{split.protocol}/{name}"] = reason
                    log(f"train: {split.protocol}: {name} skipped: {reason}")
                    continue
            data = {part: _inputs(fs, df, dim, users, items_vocab, tfidf, clicks, adapted.get(part))
                    for part, df in split.parts().items()}  # fmt: skip
            width = data["train"].dense.shape[1]
            if name == "lr_lm":
                kwargs = {"dense_dim": width}
                model = LogisticRegression(**kwargs)
            else:
                kwargs = {"n_users": len(users), "n_items": len(items_vocab), "dense_dim": width}
                if fs in ("lm", "tfidf"):
                    kwargs.update(text_blocks=len(TEXT_BLOCKS), text_dim=tfidf.dim if fs == "tfidf" else dim)
                elif fs == "adapted":
                    kwargs.update(text_blocks=2, text_dim=adapted_info["dim"])
                model = DeepCTR(**kwargs)
            if t.warm_start:
                _warm(fits, model, name, fs, split, kwargs, tfidf.dim if fs == "tfidf" else dim, users, items_vocab,
                      embedding_model_id)  # fmt: skip
            warmed = fits.warmed.get(f"{split.protocol}/{name}") == "warm"
            log(f"train: {split.protocol}: fitting {name} ({width} dense features) ...")
            fitted = fit(model, data["train"], data["validation"], train_cfg, fixed_rows=fixed if warmed else None,
                         progress=lambda e, r, n=name: log(f"train:   {n} epoch {e}: val AUC {r['val_auc']:.4f}"))  # fmt: skip
            if fixed and not warmed:
                # started cold: the carried ids learnt nothing here, so they get the unknown-id row
                warm_start.as_unknown(fitted.model, fixed)
            fits.curves[split.protocol][name] = fitted.history
            fits.epochs[f"{split.protocol}/{name}"] = len(fitted.history)
            probs = predict(fitted.model, data["test"], device=t.device)
        metrics = _evaluate(name, split.protocol, train, test, probs, t.light_user_max)
        fits.results += metrics
        fits.predictions[split.protocol][name] = probs
        if fitted is not None and split.protocol == t.protocols[0]:
            vec_dim = tfidf.dim if fs == "tfidf" else adapted_info["dim"] if fs == "adapted" else dim
            dims = {"names": dense_names(fs, vec_dim), "dim": vec_dim}
            fits.saved[name] = str(_save_model(out_dir, name, fitted.model, fs, dims, users, items_vocab,
                                               embedding_model_id, metrics, kwargs))  # fmt: skip
