"""CTR with adapted vectors: the deep CTR model with the collaborative adapter's features, side by side with the
same model on ids + stats and on the frozen LM vectors, over rolling origins and seeds (issue 12, item 4).

Protocol (docs/adapt.md, "CTR"):

- **Origins**: ``evaluate.make_origins`` over the interactions, the same cut dates as ``llmfeat evaluate``.
  Origin k: CTR training rows before ``t_val``, validation rows in ``[t_val, t_test)`` (early stopping of the
  CTR model), test rows in ``[t_test, t_end)``, read once per model.
- **Ids + stats and frozen LM features** come from the point-in-time training frame that ``llmfeat train``
  fetched from Feast (stored by event day under ``features/training_frame/<set>``): exactly what the nightly
  CTR job trains on.
- **Adapted features** are computed here, in the process (an offline evaluation: the nightly publishes one
  adapted set per night, stamped at its snapshot, so a point-in-time join of past rows finds none). One
  adapter per origin, trained on the clicks before ``t_val - adapt.validation_days`` and early-stopped on the
  clicks of the last ``validation_days`` before ``t_val`` (what ``llmfeat adapt --as-of t_val`` does). Its
  weights are then re-propagated, for each event day D, over the click graph strictly before D 00:00 UTC:
  the vectors a nightly run at D would publish with those weights. A row of day D gets its user and item
  vectors, their cosine, a "has a user vector" flag and log(1 + clicks of the item in the 7 / 30 days before
  D) (the recent-popularity prior). Nothing at or after D reaches a row of day D, and nothing at or after
  ``t_val`` reaches the adapter's weights (``tests/ctr/test_ctr_eval.py`` is the canary).
- **Variants** (every one the same ``DeepCTR`` with user / item id embeddings): ``ids_stats`` (the nightly's
  ``deep_ids_stats``), ``frozen_lm`` (the nightly's ``deep_lm``), ``adapted`` (ids + stats + adapted user and
  item vectors, each projected to 8 dims, + cosine + log recent popularity), ``adapted_dot`` (ids + stats +
  cosine + log recent popularity, no vector blocks).
- **Slices**: ``all`` and ``cold_item`` (test rows whose item had no click before ``t_test``).
- **Intervals**: for each variant minus ``ids_stats``: the mean AUC difference over (origin, seed) with a t
  interval over those runs, and a paired bootstrap over test rows (resampled within each origin, the same
  rows for both variants, AUC averaged over seeds, then over origins).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.core.errors import ConfigError, MissingInputError
from llmfeat.ctr.data import ADAPTED_SCALARS, TEXT_BLOCKS, Vocab, build_dense
from llmfeat.features.feature_vector import ITEM_TEXT
from llmfeat.retrieval import evaluate as E

VARIANTS = ("ids_stats", "frozen_lm", "adapted", "adapted_dot")
BASELINE = "ids_stats"
SLICES = ("all", "cold_item")
POP_WINDOWS = (7, 30)
"""The windows of ``ADAPTED_SCALARS``' log_item_clicks_<w>d."""


def load_training_frame(data_dir: Path, embedding_set: str = "default") -> pd.DataFrame:
    """The point-in-time frame ``llmfeat train`` stored (Feast features of every labelled interaction)."""
    from llmfeat.features import training_frames

    root = training_frames.frame_root(data_dir, embedding_set)
    parts = sorted(root.glob("event_day=*/*.parquet"))
    if not parts:
        raise MissingInputError(
            f"no stored training frame under {root}: run `llmfeat train` (or `make run`) first"
        )
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return training_frames.sort_frame(frame)


# --- the adapter of an origin, and its point-in-time features -------------------------------------------------


def origin_adapter(data: E.EvalData, cut: pd.Timestamp, params: dict, validation_days: int, select_k: int,
                   log: Callable[[str], None] = lambda m: None):  # fmt: skip
    """An adapter trained as ``llmfeat adapt --as-of cut`` trains it: on the clicks before
    ``cut - validation_days``, early-stopped on validation recall@select_k over the last ``validation_days``.
    Reads only ``data.before(cut)``. Returns the ``adapt.TrainResult``."""
    from llmfeat.embedding import adapt as A

    v = A.validation_split(data, cut, validation_days, select_k)
    ctx = v.ctx
    return A.train_adapter(ctx.X, ctx.click_u, ctx.click_i, ctx.click_age_days, v.inputs, params,
                           validate=v.validate if len(v.targets) else None, log=log)  # fmt: skip


@dataclass
class AdaptedFeatures:
    user: np.ndarray
    """(n, dim) adapted user vector of each row (zeros: none)"""
    item: np.ndarray
    scalars: np.ndarray
    """(n, len(ADAPTED_SCALARS))"""


def row_days(frame: pd.DataFrame) -> np.ndarray:
    """Each row's snapshot: its event time floored to midnight UTC (datetime64[us], naive)."""
    ts = pd.to_datetime(frame["event_timestamp"], utc=True).dt.tz_localize(None)
    return ts.dt.floor("D").to_numpy().astype("datetime64[us]")


def adapted_features(data: E.EvalData, model, frame: pd.DataFrame) -> AdaptedFeatures:
    """Per row of day D: the adapter's vectors over the click graph strictly before D, their cosine, a user-
    vector flag and log(1 + the item's clicks in the windows before D). Rows whose user or item the data
    does not know get zeros."""
    from llmfeat.embedding import adapt as A

    u = pd.Index(data.user_ids).get_indexer(frame["user_id"].astype(str))
    i = pd.Index(data.item_ids).get_indexer(frame["item_id"].astype(str))
    days = row_days(frame)
    dim = int(model.params["dim"])
    n = len(frame)
    user, item = np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32)
    scalars = np.zeros((n, len(ADAPTED_SCALARS)), np.float32)
    for day in np.unique(days):
        rows = np.nonzero(days == day)[0]
        ctx = E.context(data, pd.Timestamp(day))  # clicks strictly before the day
        inputs = A.make_inputs(ctx.X, ctx.item_vecs, ctx.user_first_text, ctx.user_text_found)
        U, IV = model.vectors(ctx.X, inputs)
        pops = [np.log1p(E.recent_counts(ctx, {"window_days": w})) for w in POP_WINDOWS]
        ru, ri = u[rows], i[rows]
        ku, ki = ru >= 0, ri >= 0
        user[rows[ku]] = U[ru[ku]]
        item[rows[ki]] = IV[ri[ki]]
        has_user = np.linalg.norm(user[rows], axis=1) > 0
        scalars[rows, 0] = np.sum(user[rows] * item[rows], axis=1)
        scalars[rows, 1] = has_user
        for j, pop in enumerate(pops):
            scalars[rows[ki], 2 + j] = pop[ri[ki]]
    return AdaptedFeatures(user, item, scalars)


# --- the nightly's `deep_adapted` model (llmfeat train) --------------------------------------------------------


def split_adapted_features(cfg, as_of, split, log: Callable[[str], None] = print):
    """The adapted features of a ``llmfeat train`` split, for its ``deep_adapted`` model: an adapter trained
    on the clicks before the split's T1 (early-stopped on the last ``adapt.validation_days`` before it), so it
    never saw the CTR validation or test rows, re-propagated per event day as in the bench. Returns
    ``(features per part, None, info)`` or ``(None, reason, {})`` when the model cannot be trained here."""
    from llmfeat.embedding.adapt import adapter_params

    if split.protocol != "temporal":
        return None, (f"needs the temporal protocol: {split.protocol} rows share no cut before which the "
                      "adapter could be trained without seeing them"), {}  # fmt: skip
    data = E.load_eval_data(cfg.paths.data_dir, cfg.embed.embedding_set, as_of)
    if data.item_vecs is None or data.model_id is None:
        return None, f"embedding set {cfg.embed.embedding_set!r} has no item vectors", {}
    if "+adapter@" in data.model_id:
        return None, (f"embedding set {cfg.embed.embedding_set!r} is already adapted: train deep_adapted on its "
                      "base set"), {}  # fmt: skip
    t1 = pd.Timestamp(split.boundaries["t1"])
    res = None
    for tau in cfg.adapt.temperatures:  # chosen on the adapter's validation window, as `llmfeat adapt` does
        params = {**adapter_params(cfg.adapt), "temperature": float(tau)}
        r = origin_adapter(data, t1, params, cfg.adapt.validation_days, cfg.evaluate.select_k)
        if res is None or r.best_val > res.best_val:
            res = r
    log(f"train: deep_adapted: adapter before {t1.date()} (epoch {res.best_epoch}, validation recall "
        f"{res.best_val:.4f}, {res.seconds:.0f} s)")  # fmt: skip
    feats = {k: adapted_features(data, res.model, p) for k, p in split.parts().items()}
    info = {"adapter_before": t1.isoformat(), "adapter_sha256": res.model.checksum(), "best_epoch": res.best_epoch,
            "temperature": res.model.params["temperature"], "dim": int(cfg.adapt.dim)}  # fmt: skip
    return feats, None, info


# --- model inputs per variant ---------------------------------------------------------------------------------


def dense_inputs(variant: str, frame: pd.DataFrame, dim: int, adapted: AdaptedFeatures | None) -> np.ndarray:
    """The dense input of a variant; vector blocks first (the deep model projects each block)."""
    at = pd.to_datetime(frame["event_timestamp"], utc=True)
    n = len(frame)
    if variant == "ids_stats":
        return build_dense("ids_stats", frame, at, dim, n)
    if variant == "frozen_lm":
        return build_dense("lm", frame, at, dim, n)
    stats = build_dense("ids_stats", frame, at, dim, n)
    if variant == "adapted":
        return np.concatenate([adapted.user, adapted.item, adapted.scalars, stats], axis=1).astype(np.float32)
    if variant == "adapted_dot":
        return np.concatenate([adapted.scalars, stats], axis=1).astype(np.float32)
    raise ConfigError(f"unknown CTR variant {variant!r}; choose from {VARIANTS}")


def text_blocks(variant: str, dim: int, adapted_dim: int) -> dict:
    if variant == "frozen_lm":
        return {"text_blocks": len(TEXT_BLOCKS), "text_dim": dim}
    if variant == "adapted":
        return {"text_blocks": 2, "text_dim": adapted_dim}
    return {}


def frame_dim(frame: pd.DataFrame) -> int:
    for value in frame.get(ITEM_TEXT, pd.Series(dtype=object)):
        if value is not None and not isinstance(value, float):
            return len(value)
    return 0


# --- the comparison -------------------------------------------------------------------------------------------


@dataclass
class OriginRun:
    origin: E.Origin
    labels: np.ndarray
    cold: np.ndarray
    """test rows whose item had no click before t_test"""
    probs: dict
    """(variant, seed) -> test probabilities"""
    info: dict


def run_origin(data: E.EvalData, frame: pd.DataFrame, origin: E.Origin, variants: list[str], seeds: list[int],
               adapter_params: dict, validation_days: int, select_k: int, train_cfg,
               log: Callable[[str], None] = print) -> OriginRun:  # fmt: skip
    from llmfeat.ctr.models import CtrInputs, DeepCTR, fit, predict

    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    utc = {
        k: pd.Timestamp(E._naive(getattr(origin, k))).tz_localize("UTC") for k in ("t_val", "t_test", "t_end")
    }
    parts = {
        "train": frame[ts < utc["t_val"]],
        "validation": frame[(ts >= utc["t_val"]) & (ts < utc["t_test"])],
        "test": frame[(ts >= utc["t_test"]) & (ts < utc["t_end"])],
    }
    if any(len(p) == 0 for p in parts.values()):
        raise ConfigError(
            f"origin {origin.index}: an empty CTR split ({ {k: len(v) for k, v in parts.items()} })"
        )
    dim = frame_dim(frame)
    info: dict = {"rows": {k: len(v) for k, v in parts.items()}, "seconds": {}}
    adapted: dict[str, AdaptedFeatures] = {}
    if any(v.startswith("adapted") for v in variants):
        t0 = time.perf_counter()
        res = origin_adapter(data, origin.t_val, adapter_params, validation_days, select_k)
        info["adapter"] = {"best_epoch": res.best_epoch, "val_recall": round(res.best_val, 5),
                           "train_seconds": round(res.seconds, 1)}  # fmt: skip
        adapted = {k: adapted_features(data, res.model, p) for k, p in parts.items()}
        info["seconds"]["adapter"] = round(time.perf_counter() - t0, 1)
        log(f"ctr_eval: origin {origin.index}: adapter best epoch {res.best_epoch} (validation recall "
            f"{res.best_val:.4f}), {info['seconds']['adapter']} s with its features")  # fmt: skip
    users, items = Vocab.fit(parts["train"]["user_id"]), Vocab.fit(parts["train"]["item_id"])
    clicked = data.inter[(data.inter["ts"].to_numpy() < np.datetime64(E._naive(origin.t_test)))
                         & (data.inter["label"].to_numpy() == 1)]["i"].unique()  # fmt: skip
    clicked_ids = set(data.item_ids[clicked].astype(str))
    test = parts["test"]
    cold = ~test["item_id"].astype(str).isin(clicked_ids).to_numpy()
    probs = {}
    adapted_dim = int(adapter_params["dim"])
    for variant in variants:
        t0 = time.perf_counter()
        data_in = {
            k: CtrInputs(dense_inputs(variant, p, dim, adapted.get(k)), users.encode(p["user_id"].tolist()),
                         items.encode(p["item_id"].tolist()), p["label"].to_numpy(np.float32))
            for k, p in parts.items()
        }  # fmt: skip
        for seed in seeds:
            model = DeepCTR(n_users=len(users), n_items=len(items), dense_dim=data_in["train"].dense.shape[1],
                            **text_blocks(variant, dim, adapted_dim))  # fmt: skip
            cfg = _with_seed(train_cfg, seed)
            fitted = fit(model, data_in["train"], data_in["validation"], cfg)
            probs[(variant, seed)] = predict(fitted.model, data_in["test"], device=cfg.device)
        info["seconds"][variant] = round(time.perf_counter() - t0, 1)
        log(f"ctr_eval: origin {origin.index}: {variant}: test AUC "
            + ", ".join(f"{_auc(test['label'].to_numpy(), probs[(variant, s)]):.4f}" for s in seeds)
            + f" ({info['seconds'][variant]} s)")  # fmt: skip
    info["cold_rows"] = int(cold.sum())
    return OriginRun(origin, test["label"].to_numpy(), cold, probs, info)


def _with_seed(train_cfg, seed: int):
    from dataclasses import replace

    return replace(train_cfg, seed=int(seed))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from llmfeat.ctr.metrics import auc

    return auc(y, p)


def _fast_auc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUC of each row of ``p`` (draws x n) against the matching row of ``y`` (ties: average ranks)."""
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=1)
    pos = y.sum(axis=1)
    neg = y.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)


def summarise(runs: list[OriginRun], variants: list[str], seeds: list[int], draws: int, seed: int) -> dict:
    """AUC per (origin, seed, variant, slice); differences vs ``ids_stats``: mean over (origin, seed) with a t
    interval, and a paired bootstrap over test rows (within origins)."""
    from scipy import stats as st

    rows = []
    for r in runs:
        for sl in SLICES:
            mask = np.ones(len(r.labels), bool) if sl == "all" else r.cold
            for v in variants:
                for s in seeds:
                    rows.append({"origin": r.origin.index, "seed": s, "variant": v, "slice": sl,
                                 "rows": int(mask.sum()), "clicks": int(r.labels[mask].sum()),
                                 "auc": _auc(r.labels[mask], r.probs[(v, s)][mask])})  # fmt: skip
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    diffs = []
    for sl in SLICES:
        masks = [np.ones(len(r.labels), bool) if sl == "all" else r.cold for r in runs]
        plans = [rng.integers(0, int(m.sum()), size=(draws, int(m.sum()))) for m in masks]
        boot_auc = {}
        for v in variants:
            per_origin = []
            for r, m, plan in zip(runs, masks, plans, strict=True):
                y = r.labels[m][plan]
                per_origin.append(np.nanmean([_fast_auc(y, r.probs[(v, s)][m][plan]) for s in seeds], axis=0))
            boot_auc[v] = np.nanmean(per_origin, axis=0)
        for v in variants:
            if v == BASELINE:
                continue
            t = table[table["slice"] == sl].pivot_table(
                index=["origin", "seed"], columns="variant", values="auc"
            )
            d = (t[v] - t[BASELINE]).dropna().to_numpy()
            per_origin_diff = (t[v] - t[BASELINE]).groupby(level="origin").mean()
            half = (
                st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            )
            b = boot_auc[v] - boot_auc[BASELINE]
            diffs.append({"slice": sl, "variant": v, "vs": BASELINE, "diff": float(d.mean()), "runs": int(len(d)),
                          "t_lo": float(d.mean() - half), "t_hi": float(d.mean() + half),
                          "boot_lo": float(np.nanpercentile(b, 2.5)), "boot_hi": float(np.nanpercentile(b, 97.5)),
                          "origins_won": int(per_origin_diff.gt(0).sum()), "origins": int(per_origin_diff.notna().sum())})  # fmt: skip
    means = (table.groupby(["slice", "variant"]).agg(auc_mean=("auc", "mean"), auc_std=("auc", "std"),
                                                     rows=("rows", "sum")).reset_index())  # fmt: skip
    return {"table": rows, "means": means.to_dict("records"), "differences": diffs}


def run_ctr_eval(data: E.EvalData, frame: pd.DataFrame, *, origins: int, span: float, variants: list[str],
                 seeds: list[int], adapter_params: dict, validation_days: int, select_k: int, train_cfg,
                 draws: int = 500, bootstrap_seed: int = 7, only_origins: list[int] | None = None,
                 save_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """The comparison over every origin; returns the report (JSON-able). With ``save_dir``, each origin's test
    predictions are saved there (``origin-<k>.pkl``) and an origin already saved is not run again, so one
    long run can be split over processes and combined with ``report_from_saved``."""
    import pickle

    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or BASELINE not in variants:
        raise ConfigError(f"variants {variants}: need {BASELINE!r}, known {VARIANTS}")
    started = time.perf_counter()
    cuts = E.make_origins(data.inter["ts"].to_numpy(), origins, span)
    if only_origins is not None:
        cuts = [o for o in cuts if o.index in only_origins]
    runs = []
    for o in cuts:
        saved = Path(save_dir) / f"origin-{o.index}.pkl" if save_dir is not None else None
        if saved is not None and saved.is_file():
            runs.append(load_saved_origin(saved))
            continue
        log(f"ctr_eval: origin {o.index}: train < {o.t_val.date()} <= validation < {o.t_test.date()} <= test < "
            f"{o.t_end.date()}")  # fmt: skip
        runs.append(run_origin(data, frame, o, variants, seeds, adapter_params, validation_days, select_k,
                               train_cfg, log))  # fmt: skip
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_bytes(pickle.dumps(runs[-1]))
    protocol = {"origins": origins, "span": span, "seeds": seeds, "variants": variants, "draws": draws,
                "adapter": dict(adapter_params), "validation_days": validation_days,
                "train": {k: getattr(train_cfg, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "patience")}}  # fmt: skip
    return {**report_of(runs, protocol, bootstrap_seed), "seconds": round(time.perf_counter() - started, 1)}


# Origins saved before the package was split by concern name their classes by the old flat module paths.
_MOVED_MODULES = {
    "llmfeat.ctr_eval": "llmfeat.ctr.evaluate",
    "llmfeat.evaluate": "llmfeat.retrieval.evaluate",
}


def load_saved_origin(path: Path) -> OriginRun:
    """One origin saved by ``run_ctr_eval(save_dir=...)``, also from a file written under the old module paths."""
    import io
    import pickle

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            return super().find_class(_MOVED_MODULES.get(module, module), name)

    return _Unpickler(io.BytesIO(Path(path).read_bytes())).load()


def report_of(runs: list[OriginRun], protocol: dict, bootstrap_seed: int = 7) -> dict:
    summary = summarise(runs, protocol["variants"], protocol["seeds"], protocol["draws"], bootstrap_seed)
    return {"protocol": protocol, "origins": [{**r.origin.to_dict(), **r.info} for r in runs], **summary}


def markdown(report: dict) -> str:
    means = pd.DataFrame(report["means"])
    table = pd.DataFrame(report["table"])
    lines = ["Test AUC, mean over origins x seeds (std over runs), rows summed over origins:", "",
             "| variant | all | cold items |", "|---|---:|---:|"]  # fmt: skip
    for v in report["protocol"]["variants"]:
        cells = []
        for sl in SLICES:
            m = means[(means["variant"] == v) & (means["slice"] == sl)].iloc[0]
            cells.append(f"{m['auc_mean']:.4f} ({m['auc_std']:.4f})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    rows = {sl: int(table[(table["slice"] == sl)].groupby("origin")["rows"].first().sum()) for sl in SLICES}
    lines += ["", f"Test rows: {rows['all']} in all, {rows['cold_item']} on cold items (no click before the cut).",
              "", "**Differences vs ids_stats** (mean over origin x seed runs; 95% t interval over those runs; 95% "
              "paired bootstrap over test rows within origins, AUC averaged over seeds):", "",
              "| variant | slice | AUC diff | t interval | bootstrap interval | origins won |",
              "|---|---|---:|---|---|---:|"]  # fmt: skip
    for d in report["differences"]:
        lines.append(f"| {d['variant']} | {d['slice']} | {d['diff']:+.4f} | [{d['t_lo']:+.4f}, {d['t_hi']:+.4f}] | "
                     f"[{d['boot_lo']:+.4f}, {d['boot_hi']:+.4f}] | {d['origins_won']}/{d.get('origins', len(report['origins']))} |")  # fmt: skip
    lines += ["", "Per origin (test AUC, all rows, mean over seeds):", "",
              "| origin | test window | rows | cold rows | adapter epoch | " + " | ".join(report["protocol"]["variants"])
              + " |", "|---|---|---:|---:|---:|" + "---:|" * len(report["protocol"]["variants"])]  # fmt: skip
    for o in report["origins"]:
        sub = table[(table["origin"] == o["origin"]) & (table["slice"] == "all")]
        vals = [f"{sub[sub['variant'] == v]['auc'].mean():.4f}" for v in report["protocol"]["variants"]]
        lines.append(f"| {o['origin']} | {o['t_test'][:10]} - {o['t_end'][:10]} | {o['rows']['test']} | "
                     f"{o['cold_rows']} | {o.get('adapter', {}).get('best_epoch', '-')} | " + " | ".join(vals) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    return path
