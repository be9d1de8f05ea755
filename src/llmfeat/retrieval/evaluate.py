"""``llmfeat evaluate``: a retrieval evaluation with rolling origins, validation-only selection and paired
bootstrap intervals. Numpy + scipy over the canonical interactions and one embedding set; no Spark.

Protocol (docs/adapt.md describes it for users):

- **Rolling origins.** The last ``evaluate.span`` of the interactions (by event time) is cut into
  ``evaluate.origins`` equal-count test windows. Origin k has a validation window of the same size just before
  its test window: ``train < t_val <= validation < t_test <= test < t_end`` (cuts floored to midnight UTC).
- **Selection on validation only.** For every method and every candidate of its hyperparameter grid, the
  method is fitted on the interactions before ``t_val`` and scored on the validation window; the candidate
  with the best validation recall@``select_k`` wins (early stopping of trained methods too). The selection
  phase receives a copy of the data cut at ``t_test``: it cannot read the test window.
- **The test window is read once.** Each method is refitted on everything before ``t_test`` with the chosen
  hyperparameters (a trained method keeps its weights and re-propagates over the graph at ``t_test``) and
  scored on the test window, once.
- **Metrics.** Per user with at least one click in the window on an item not seen before the cut: recall@k
  (hits / held-out clicks) and nDCG@k (binary gains), k in ``evaluate.ks``; every item the user interacted
  with before the cut is excluded from the ranking. Slices: ``all``, ``warm_user`` (a click before the cut),
  ``new_user`` (none), ``cold_item`` (the held-out clicks on items without a click before the cut, per user
  who has some); ``cold_start`` (the same clicks in the item cold-start protocol: only the items without a
  click before the cut are ranked, :func:`cold_only`; reported, never used for selection).
- **Intervals.** Paired bootstrap over users, resampled within each origin (``evaluate.bootstrap`` draws):
  every method is scored on the same resampled users, so a difference has its own interval. The resampling
  plan depends only on the seed and the number of users per origin, never on outcomes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from llmfeat.core import tables
from llmfeat.core.errors import ConfigError, MissingInputError
from llmfeat.core.layout import embedding_paths
from llmfeat.data.catalogue import days_since_release, read_release_dates

SLICES = ("all", "warm_user", "new_user", "cold_item", "cold_start")


# --- data ---------------------------------------------------------------------------------------------------


@dataclass
class UserTextLog:
    """Every row of a user_text table (a change log): the vector of a user as of any time."""

    user_idx: np.ndarray
    event_ts: np.ndarray
    """datetime64[us] UTC (naive), sorted by (event_ts, created) within the log."""
    vectors: np.ndarray

    def at(self, cut: pd.Timestamp, n_users: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n_users, dim), found mask): each user's latest row with event_timestamp <= cut."""
        dim = self.vectors.shape[1] if self.vectors.ndim == 2 else 0
        out = np.zeros((n_users, dim), dtype=np.float32)
        found = np.zeros(n_users, dtype=bool)
        ok = self.event_ts <= np.datetime64(_naive(cut))
        idx = np.nonzero(ok)[0]
        # rows are sorted by time: the last write per user wins
        out[self.user_idx[idx]] = self.vectors[idx]
        found[self.user_idx[idx]] = True
        return out, found

    def first_at(self, cut: pd.Timestamp, n_users: int) -> tuple[np.ndarray, np.ndarray]:
        """Each user's earliest row with event_timestamp <= cut: the profile text before (nearly) any click,
        the text a user without clicks has, so the adapter's text tower learns from what new users look like."""
        dim = self.vectors.shape[1] if self.vectors.ndim == 2 else 0
        out = np.zeros((n_users, dim), dtype=np.float32)
        found = np.zeros(n_users, dtype=bool)
        idx = np.nonzero(self.event_ts <= np.datetime64(_naive(cut)))[0][::-1]
        out[self.user_idx[idx]] = self.vectors[idx]  # reversed: the earliest write wins
        found[self.user_idx[idx]] = True
        return out, found


@dataclass
class EvalData:
    """Interactions as integer codes plus the frozen LM vectors of one embedding set."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    inter: pd.DataFrame
    """u, i (int codes), ts (datetime64[us], naive UTC), label (int8); sorted by ts."""
    item_vecs: np.ndarray | None
    """(n_items, dim) frozen LM item vectors, L2-normalised; None without an embedding set."""
    user_text: UserTextLog | None
    model_id: str | None
    info: dict = field(default_factory=dict)
    item_released: np.ndarray | None = None
    """(n_items,) datetime64[us] (naive UTC) of items.released_at, NaT where unknown; None: no such column."""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def before(self, cut: pd.Timestamp) -> EvalData:
        """A copy that holds only interactions strictly before ``cut`` (the selection phase gets this)."""
        keep = self.inter["ts"].to_numpy() < np.datetime64(_naive(cut))
        text = self.user_text
        if text is not None:
            m = text.event_ts <= np.datetime64(_naive(cut))
            text = UserTextLog(text.user_idx[m], text.event_ts[m], text.vectors[m])
        return EvalData(self.user_ids, self.item_ids, self.inter[keep].copy(), self.item_vecs, text, self.model_id,
                        dict(self.info), self.item_released)  # fmt: skip


def _naive(ts) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


def load_eval_data(data_dir: Path, embedding_set: str | None, as_of: dt.date | None = None) -> EvalData:
    """The latest canonical interactions snapshot (<= as_of) and the set's item / user text vectors."""
    from llmfeat.embedding.vectors import normalise, read_latest

    data_dir = Path(data_dir)
    root = tables.canonical_dir(data_dir, "interactions")
    days = [d for d in tables.snapshot_dates(root) if as_of is None or d <= as_of]
    if not days:
        raise MissingInputError(
            f"no canonical interactions snapshot under {root}: run `llmfeat ingest` first"
        )
    inter = (
        tables.read_snapshot(root, days[-1]).select(["user_id", "item_id", "event_ts", "label"]).to_pandas()
    )
    item_vecs = model = text = None
    if embedding_set is not None:
        paths = embedding_paths(data_dir, embedding_set)
        latest = read_latest(paths.item_text, "item_id", as_of=days[-1])
        item_ids = latest.ids.astype(str)
        item_vecs, model = normalise(latest.vectors), latest.model_id
        dropped = ~inter["item_id"].isin(set(item_ids))
        info_dropped = int(dropped.sum())
        inter = inter[~dropped]
    else:
        item_ids = np.array(sorted(inter["item_id"].unique()), dtype=object).astype(str)
        info_dropped = 0
    user_ids = np.array(sorted(inter["user_id"].unique()), dtype=object).astype(str)
    if embedding_set is not None and paths.user_text.is_dir():
        text = read_user_text_log(paths.user_text, user_ids, days[-1])
    uidx = pd.Index(user_ids).get_indexer(inter["user_id"])
    iidx = pd.Index(item_ids).get_indexer(inter["item_id"])
    ts = pd.to_datetime(inter["event_ts"], utc=True).dt.tz_localize(None).to_numpy().astype("datetime64[us]")
    frame = pd.DataFrame({"u": uidx, "i": iidx, "ts": ts, "label": inter["label"].to_numpy().astype(np.int8)})
    frame = frame.sort_values(["ts", "u", "i"], kind="stable").reset_index(drop=True)
    info = {"snapshot": days[-1].isoformat(), "interactions": len(frame), "clicks": int(frame["label"].sum()),
            "users": len(user_ids), "items": len(item_ids), "interactions_without_item_vector": info_dropped,
            "embedding_set": embedding_set, "model_id": model}  # fmt: skip
    released = read_release_dates(data_dir, days[-1], item_ids)
    info["items_with_release_date"] = None if released is None else int((~np.isnat(released)).sum())
    return EvalData(user_ids, item_ids, frame, item_vecs, text, model, info, released)


def read_user_text_log(root: Path, user_ids: np.ndarray, as_of: dt.date) -> UserTextLog:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from llmfeat.embedding.vectors import _PARTITIONING, _as_matrix, normalise

    dataset = ds.dataset(root, format="parquet", partitioning=_PARTITIONING)
    t = dataset.to_table(
        columns=["user_id", "event_timestamp", "created_timestamp", "embedding"],
        filter=ds.field("snapshot_date") <= as_of.isoformat(),
    )
    order = pc.sort_indices(t, [("event_timestamp", "ascending"), ("created_timestamp", "ascending")])
    t = t.take(order)
    pos = pd.Index(user_ids).get_indexer(t.column("user_id").to_pandas())
    ok = pos >= 0
    ts = t.column("event_timestamp").to_pandas().dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    vecs = normalise(_as_matrix(t.column("embedding"), root))
    return UserTextLog(pos[ok], ts[ok].astype("datetime64[us]"), vecs[ok])


# --- origins, contexts, targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    index: int
    t_val: pd.Timestamp
    t_test: pd.Timestamp
    t_end: pd.Timestamp

    def to_dict(self) -> dict:
        return {"origin": self.index, "t_val": self.t_val.isoformat(), "t_test": self.t_test.isoformat(),
                "t_end": self.t_end.isoformat()}  # fmt: skip


def make_origins(ts: np.ndarray, n: int, span: float) -> list[Origin]:
    """``n`` origins whose test windows split the last ``span`` of the events into equal counts; each
    validation window is the equal-count window just before its test window (floored to midnight)."""
    if not 0 < span < 1 or n < 1:
        raise ConfigError("evaluate.origins must be >= 1 and evaluate.span within (0, 1)")
    step = span / n
    qs = [1 - span - step + k * step for k in range(n + 1)]
    if qs[0] <= 0:
        raise ConfigError(
            f"evaluate.span {span} with {n} origins leaves no training data before the first origin"
        )
    series = pd.Series(np.sort(ts))
    cuts = [pd.Timestamp(series.quantile(q, interpolation="lower")).floor("D") for q in qs]
    end = pd.Timestamp(series.iloc[-1]) + pd.Timedelta(microseconds=1)
    cuts.append(end)
    out = []
    for k in range(n):
        t_val, t_test, t_end = cuts[k], cuts[k + 1], cuts[k + 2]
        if not t_val < t_test < t_end:
            raise ConfigError(f"origins collapse (cut dates {t_val}, {t_test}, {t_end}): use fewer origins")
        out.append(Origin(k, t_val, t_test, t_end))
    return out


@dataclass
class Context:
    """Everything a method may learn from at a cut: the interactions strictly before it."""

    cut: pd.Timestamp
    n_users: int
    n_items: int
    X: sp.csr_matrix
    """Binary user x item click matrix (label 1) before the cut."""
    seen: sp.csr_matrix
    """Any interaction before the cut (excluded from rankings)."""
    click_u: np.ndarray
    click_i: np.ndarray
    click_age_days: np.ndarray
    """Age of each click at the cut, in days (> 0)."""
    item_vecs: np.ndarray | None
    user_text: np.ndarray | None
    user_text_found: np.ndarray | None
    user_first_text: np.ndarray | None = None
    """Each user's earliest text vector (profile before their clicks), as of the cut."""
    cache: dict = field(default_factory=dict)
    """Fits shared between candidates of one context (e.g. EASE weights per lambda)."""
    item_age_days: np.ndarray | None = None
    """Days from each item's release to the cut (negative: released later; NaN: unknown); None without dates."""

    @property
    def item_clicks(self) -> np.ndarray:
        return np.asarray(self.X.sum(axis=0)).ravel()

    @property
    def user_clicks(self) -> np.ndarray:
        return np.asarray(self.X.sum(axis=1)).ravel()


def context(data: EvalData, cut: pd.Timestamp) -> Context:
    cut_np = np.datetime64(_naive(cut))
    f = data.inter[data.inter["ts"].to_numpy() < cut_np]
    clicks = f[f["label"] == 1]
    shape = (data.n_users, data.n_items)
    X = sp.csr_matrix((np.ones(len(clicks), np.float32), (clicks["u"], clicks["i"])), shape=shape)
    X.data[:] = 1.0  # repeated clicks count once
    seen = sp.csr_matrix((np.ones(len(f), np.float32), (f["u"], f["i"])), shape=shape)
    seen.data[:] = 1.0
    age = (cut_np - clicks["ts"].to_numpy()) / np.timedelta64(1, "s") / 86400.0
    text = found = first = None
    if data.user_text is not None:
        text, found = data.user_text.at(cut, data.n_users)
        first, _ = data.user_text.first_at(cut, data.n_users)
    item_age = days_since_release(data.item_released, cut)
    return Context(cut, data.n_users, data.n_items, X, seen, clicks["u"].to_numpy(), clicks["i"].to_numpy(),
                   age.astype(np.float64), data.item_vecs, text, found, first, item_age_days=item_age)  # fmt: skip


@dataclass
class Targets:
    """The held-out clicks of a window [start, end): per evaluated user, the items not seen before start."""

    users: np.ndarray
    relevant: list[np.ndarray]
    cold: list[np.ndarray]
    """Per user, the relevant items without a click before ``start``."""
    warm_user: np.ndarray
    """Per user: had a click before start."""

    def __len__(self) -> int:
        return len(self.users)


def targets(data: EvalData, ctx: Context, start: pd.Timestamp, end: pd.Timestamp) -> Targets:
    ts = data.inter["ts"].to_numpy()
    win = data.inter[(ts >= np.datetime64(_naive(start))) & (ts < np.datetime64(_naive(end)))]
    win = win[win["label"] == 1][["u", "i"]].drop_duplicates()
    seen = ctx.seen.tocoo()
    seen_pairs = pd.MultiIndex.from_arrays([seen.row, seen.col])
    keep = ~pd.MultiIndex.from_arrays([win["u"].to_numpy(), win["i"].to_numpy()]).isin(seen_pairs)
    win = win[keep]
    item_clicks = ctx.item_clicks
    user_clicks = ctx.user_clicks
    users, relevant, cold = [], [], []
    for u, g in win.groupby("u", sort=True):
        items = np.sort(g["i"].to_numpy())
        users.append(int(u))
        relevant.append(items)
        cold.append(items[item_clicks[items] == 0])
    users = np.array(users, dtype=np.int64)
    return Targets(users, relevant, cold, user_clicks[users] > 0 if len(users) else np.zeros(0, bool))


# --- metrics ----------------------------------------------------------------------------------------------


def rank_top(scores: np.ndarray, seen_rows: sp.csr_matrix, k: int) -> np.ndarray:
    """Top-k item indices per row, best first, seen items excluded (ties: lower index first)."""
    s = np.array(scores, dtype=np.float64, copy=True)
    coo = seen_rows.tocoo()
    s[coo.row, coo.col] = -np.inf
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(s, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def user_metrics(top: np.ndarray, tg: Targets, ks: tuple[int, ...],
                 cold_top: np.ndarray | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per evaluated user: recall@k and nDCG@k over all relevant items and over the cold ones (NaN if none);
    with ``cold_top`` (each user's ranking of the items without a click only, :func:`cold_only`) also the
    item cold-start protocol's ``coldrank_`` metrics over the cold ones."""
    out: dict[str, np.ndarray] = {}
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    passes = [("", tg.relevant, top), ("cold_", tg.cold, top)]
    if cold_top is not None:
        passes.append(("coldrank_", tg.cold, cold_top))
    for name, rel_sets, ranking in passes:
        for k in ks:
            rec = np.full(len(tg), np.nan)
            ndcg = np.full(len(tg), np.nan)
            for r, rel in enumerate(rel_sets):
                if len(rel) == 0:
                    continue
                hit = np.isin(ranking[r, :k], rel)
                rec[r] = hit.sum() / len(rel)
                ideal = discounts[: min(len(rel), k)].sum()
                ndcg[r] = (hit * discounts[:k]).sum() / ideal
            out[f"{name}recall@{k}"] = rec
            out[f"{name}ndcg@{k}"] = ndcg
    out["n_relevant"] = np.array([len(r) for r in tg.relevant])
    out["n_cold"] = np.array([len(r) for r in tg.cold])
    return out


def score_users(fitted: Callable[[np.ndarray], np.ndarray], ctx: Context, tg: Targets, k: int,
                batch: int = 1024) -> np.ndarray:  # fmt: skip
    tops = []
    for s in range(0, len(tg), batch):
        users = tg.users[s : s + batch]
        tops.append(rank_top(fitted(users), ctx.seen[users], k))
    return np.concatenate(tops) if tops else np.zeros((0, k), np.int64)


def cold_only(fitted: Callable[[np.ndarray], np.ndarray], ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
    """The item cold-start protocol (DropoutNet, CLCRec): the same scores, but only items without a click
    before the cut are candidates (the others are pushed below every one of them)."""
    warm = ctx.item_clicks > 0

    def score(users: np.ndarray) -> np.ndarray:
        s = np.array(fitted(users), dtype=np.float64, copy=True)
        s[:, warm] = -np.inf
        return s

    return score


def selection_score(fitted, ctx: Context, tg: Targets, k: int) -> float:
    """Validation recall@k over every held-out click (what most candidates are chosen on)."""
    return selection_scores(fitted, ctx, tg, k)[0]


def selection_scores(fitted, ctx: Context, tg: Targets, k: int) -> tuple[float, float]:
    """(recall@k over every held-out click, recall@k over those on items without a click before the cut: NaN
    when there are none)."""
    if not len(tg):
        return float("nan"), float("nan")
    m = user_metrics(score_users(fitted, ctx, tg, k), tg, (k,))
    cold = m[f"cold_recall@{k}"]
    cold_recall = float(np.nanmean(cold)) if np.isfinite(cold).any() else float("nan")
    return float(np.nanmean(m[f"recall@{k}"])), cold_recall


def choose_within(scores: list[tuple[float, float]], tolerance: float) -> int:
    """The candidate (index) with the best cold-item recall among those whose overall recall is at most
    ``tolerance`` (relative) below the best overall recall: new items get what the budget allows, and no more.
    Ties (and NaN cold recalls) go to the better overall recall, then to the earlier candidate."""
    finite = [s for s, _ in scores if np.isfinite(s)]
    if not finite:  # no validation targets at all: nothing to choose on, the first candidate
        return 0
    floor = max(finite) * (1.0 - tolerance) - 1e-12
    within = [i for i, (s, _) in enumerate(scores) if s >= floor]
    return max(within, key=lambda i: (np.nan_to_num(scores[i][1], nan=-1.0), scores[i][0], -i))


# --- methods ------------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """A fitted method: ``score(users) -> (len(users), n_items)``; ``chosen`` adds what fitting learned
    (e.g. the early-stopped epoch) to the selected hyperparameters."""

    score: Callable[[np.ndarray], np.ndarray]
    chosen: dict = field(default_factory=dict)


@dataclass
class Method:
    name: str
    grid: Callable[[dict], list[dict]]
    """Candidates, given the hyperparameters already chosen for other methods at this origin."""
    fit: Callable[..., Fit]
    """fit(ctx, params, val=None | (Targets, k)) -> Fit"""
    needs_vectors: bool = False
    cold_tolerance: float | None = None
    """None: the best validation recall wins. A number: :func:`choose_within` -- the best validation recall on
    the cold items among the candidates that cost at most this share of the best overall recall."""


def _tiebreak(ctx: Context) -> np.ndarray:
    c = ctx.item_clicks.astype(np.float64)
    return 1e-9 * c / max(c.max(), 1.0)


def recent_counts(ctx: Context, params: dict) -> np.ndarray:
    """Item click counts in the trailing window (``window_days``) or exponentially decayed (``half_life_days``)."""
    if "window_days" in params:
        w = (ctx.click_age_days <= params["window_days"]).astype(np.float64)
    else:
        w = np.power(0.5, ctx.click_age_days / params["half_life_days"])
    return np.bincount(ctx.click_i, weights=w, minlength=ctx.n_items)


def fit_random(ctx: Context, params: dict, val=None) -> Fit:
    seed = int(ctx.cut.value % (2**31))

    def score(users):
        rng = np.random.default_rng([seed, int(users[0]) if len(users) else 0, len(users)])
        return rng.random((len(users), ctx.n_items))

    return Fit(score)


def _broadcast(vec: np.ndarray):
    return lambda users: np.broadcast_to(vec, (len(users), len(vec)))


def fit_pop_all(ctx: Context, params: dict, val=None) -> Fit:
    return Fit(_broadcast(ctx.item_clicks.astype(np.float64)))


def fit_pop_recent(ctx: Context, params: dict, val=None) -> Fit:
    return Fit(_broadcast(recent_counts(ctx, params) + _tiebreak(ctx)))


def fit_itemknn(ctx: Context, params: dict, val=None) -> Fit:
    X = ctx.X.astype(np.float64)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    Xn = X @ sp.diags(1.0 / norms)
    S = (Xn.T @ Xn).toarray()
    np.fill_diagonal(S, 0.0)
    k = params.get("neighbours")
    if k and k < S.shape[0]:
        cut = -np.partition(-S, k - 1, axis=0)[k - 1 : k, :]  # k-th largest per column
        S = np.where(S >= cut, S, 0.0)
    tb = _tiebreak(ctx)
    return Fit(lambda users: np.asarray(X[users] @ S) + tb)


def ease_weights(X: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diagMat(1 / diag(P)), P = (X'X + lam I)^-1, diag(B) = 0."""
    G = (X.T @ X).toarray().astype(np.float64)
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    return B


def fit_ease(ctx: Context, params: dict, val=None) -> Fit:
    X = ctx.X.astype(np.float64)
    key = ("ease", float(params["lambda"]))
    if key not in ctx.cache:
        ctx.cache[key] = ease_weights(X, params["lambda"])
    B = ctx.cache[key]
    tb = _tiebreak(ctx)
    return Fit(lambda users: np.asarray(X[users] @ B) + tb)


def _minmax_rows(s: np.ndarray) -> np.ndarray:
    lo = s.min(axis=1, keepdims=True)
    hi = s.max(axis=1, keepdims=True)
    return (s - lo) / np.where(hi > lo, hi - lo, 1.0)


def fit_ease_recent(ctx: Context, params: dict, val=None) -> Fit:
    base = fit_ease(ctx, {"lambda": params["lambda"]})
    pop = np.log1p(recent_counts(ctx, params["recent"]))
    pop = pop / max(pop.max(), 1e-12)
    a = params["alpha"]
    return Fit(lambda users: (1 - a) * _minmax_rows(base.score(users)) + a * pop[None, :] + _tiebreak(ctx))


def _user_text(ctx: Context) -> np.ndarray:
    if ctx.user_text is None:
        return np.zeros((ctx.n_users, ctx.item_vecs.shape[1]), np.float32)
    return ctx.user_text


def fit_lm_text(ctx: Context, params: dict, val=None) -> Fit:
    U, V = _user_text(ctx), ctx.item_vecs
    return Fit(lambda users: U[users] @ V.T)


def _row_normalise(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(n > 0, n, 1.0)


def fit_lm_history(ctx: Context, params: dict, val=None) -> Fit:
    """Mean of the clicked items' frozen vectors; users without a click fall back to their text vector."""
    V = ctx.item_vecs
    H = _row_normalise(np.asarray(ctx.X @ V))
    has = ctx.user_clicks > 0
    U = np.where(has[:, None], H, _user_text(ctx))
    return Fit(lambda users: U[users] @ V.T)


def lightgcn_propagate(X: sp.csr_matrix, users0: np.ndarray, items0: np.ndarray, layers: int):
    """Training-free LightGCN propagation (numpy): mean of layers 0..L of A_hat^l E0 over the bipartite graph
    with symmetric normalisation D^-1/2 A D^-1/2."""
    du = np.asarray(X.sum(axis=1)).ravel()
    di = np.asarray(X.sum(axis=0)).ravel()
    iu = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1e-12)), 0.0)
    ii = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1e-12)), 0.0)
    Xn = sp.diags(iu) @ X @ sp.diags(ii)
    eu, ei = users0, items0
    su, si = eu.copy(), ei.copy()
    for _ in range(layers):
        eu, ei = np.asarray(Xn @ ei), np.asarray(Xn.T @ eu)
        su += eu
        si += ei
    return su / (layers + 1), si / (layers + 1)


def fit_textgcn(ctx: Context, params: dict, val=None) -> Fit:
    """TextGCN-style: frozen item vectors propagated over the click graph, no training."""
    V = ctx.item_vecs.astype(np.float64)
    U0 = _row_normalise(np.asarray(ctx.X @ V))
    U, IV = lightgcn_propagate(ctx.X.astype(np.float64), U0, V, params["layers"])
    has = ctx.user_clicks > 0
    U = np.where(has[:, None], _row_normalise(U), _user_text(ctx))
    IV = _row_normalise(IV)
    return Fit(lambda users: U[users] @ IV.T)


RECENT_GRID = [{"window_days": w} for w in (1, 7, 14, 30)] + [{"half_life_days": h} for h in (3, 7, 14)]


def baseline_methods(cfg_eval) -> list[Method]:
    lambdas = list(cfg_eval.ease_lambdas)
    return [
        Method("random", lambda ch: [{}], fit_random),
        Method("popularity", lambda ch: [{}], fit_pop_all),
        Method("recent_popularity", lambda ch: RECENT_GRID, fit_pop_recent),
        Method("itemknn", lambda ch: [{"neighbours": k} for k in (50, 200, None)], fit_itemknn),
        Method("ease", lambda ch: [{"lambda": float(x)} for x in lambdas], fit_ease),
        Method(
            "ease+recent_pop",
            lambda ch: [
                {"lambda": ch["ease"]["lambda"], "recent": ch["recent_popularity"], "alpha": a}
                for a in (0.1, 0.2, 0.35, 0.5, 0.7)
            ],
            fit_ease_recent,
        ),  # fmt: skip
        Method("lm_text", lambda ch: [{}], fit_lm_text, needs_vectors=True),
        Method("lm_history", lambda ch: [{}], fit_lm_history, needs_vectors=True),
        Method("textgcn", lambda ch: [{"layers": 1}, {"layers": 2}], fit_textgcn, needs_vectors=True),
    ]


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class OriginResult:
    origin: Origin
    chosen: dict
    validation: dict
    """method -> {candidate params json -> validation recall}"""
    metrics: dict
    """method -> per-user metric arrays on the test window"""
    targets: Targets
    counts: dict


def select(
    method: Method, data_sel: EvalData, origin: Origin, chosen: dict, k: int, log
) -> tuple[dict, dict]:
    """Pick the candidate with the best validation recall@k. Reads only ``data_sel`` (cut at t_test)."""
    ctx = context(data_sel, origin.t_val)
    tg = targets(data_sel, ctx, origin.t_val, origin.t_test)
    best, best_score, scores = None, -math.inf, {}
    tried: list[tuple[dict, tuple[float, float]]] = []
    for params in method.grid(chosen):
        fitted = method.fit(ctx, params, val=(tg, k))
        key = json.dumps(clean(params), sort_keys=True, default=str)
        if method.cold_tolerance is not None:
            both = selection_scores(fitted.score, ctx, tg, k)
            tried.append(({**params, **fitted.chosen}, both))
            scores[key] = {
                name: None if math.isnan(x) else round(x, 5)
                for name, x in zip(("recall", "cold_recall"), both, strict=True)
            }
            continue
        s = selection_score(fitted.score, ctx, tg, k)
        scores[key] = round(s, 5)
        if s > best_score:
            best, best_score = {**params, **fitted.chosen}, s
    if tried:
        best = tried[choose_within([t[1] for t in tried], method.cold_tolerance)][0]
    return best, scores


def run_origin(data: EvalData, origin: Origin, methods: list[Method], ks: tuple[int, ...], select_k: int,
               log: Callable[[str], None]) -> OriginResult:  # fmt: skip
    data_sel = data.before(origin.t_test)  # the selection phase cannot see the test window
    chosen, validation, seconds = {}, {}, {}
    for m in methods:
        t0 = time.perf_counter()
        chosen[m.name], validation[m.name] = select(m, data_sel, origin, chosen, select_k, log)
        seconds[m.name] = round(time.perf_counter() - t0, 2)
    # The test window: read here, once, after every selection is done.
    ctx = context(data, origin.t_test)
    tg = targets(data, ctx, origin.t_test, origin.t_end)
    metrics = {}
    kmax = max(ks)
    for m in methods:
        t0 = time.perf_counter()
        fitted = m.fit(ctx, chosen[m.name], val=None)
        top = score_users(fitted.score, ctx, tg, kmax)
        metrics[m.name] = user_metrics(top, tg, ks, score_users(cold_only(fitted.score, ctx), ctx, tg, kmax))
        seconds[m.name] = round(seconds[m.name] + time.perf_counter() - t0, 2)
    counts = {"users": len(tg), "warm_users": int(tg.warm_user.sum()), "new_users": int((~tg.warm_user).sum()),
              "clicks": int(sum(map(len, tg.relevant))), "cold_item_clicks": int(sum(map(len, tg.cold))),
              "cold_item_users": int(sum(len(c) > 0 for c in tg.cold)),
              "train_clicks": int(ctx.X.nnz), "seconds": seconds}  # fmt: skip
    log(f"evaluate: origin {origin.index} test [{origin.t_test.date()}, {origin.t_end.date()}): {counts['users']} users, "
        f"{counts['clicks']} clicks ({counts['cold_item_clicks']} on cold items)")  # fmt: skip
    return OriginResult(origin, chosen, validation, metrics, tg, counts)


def slice_mask(r: OriginResult, name: str) -> np.ndarray:
    tg = r.targets
    if name == "all":
        return np.ones(len(tg), bool)
    if name == "warm_user":
        return tg.warm_user.copy()
    if name == "new_user":
        return ~tg.warm_user
    if name in ("cold_item", "cold_start"):
        return np.array([len(c) > 0 for c in tg.cold], bool)
    raise ConfigError(f"unknown slice {name!r}")


def clean(value):
    """Drop private entries (keys starting with "_", e.g. trained weights) for reports."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def metric_key(slice_name: str, metric: str) -> str:
    return {"cold_item": f"cold_{metric}", "cold_start": f"coldrank_{metric}"}.get(slice_name, metric)


def bootstrap_plan(sizes: list[int], draws: int, seed: int) -> list[np.ndarray]:
    """Resampling indices per origin (draws x n_o): a function of the seed and the sizes only."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(draws, n)) if n else np.zeros((draws, 0), np.int64) for n in sizes]


def pooled(results: list[OriginResult], method: str, slice_name: str, metric: str) -> list[np.ndarray]:
    key = metric_key(slice_name, metric)
    return [r.metrics[method][key][slice_mask(r, slice_name)] for r in results]


def bootstrap_mean(parts: list[np.ndarray], plans: list[np.ndarray]) -> np.ndarray:
    sums = sum(p[plan].sum(axis=1) for p, plan in zip(parts, plans, strict=True))
    n = sum(p.shape[0] for p in parts)
    return sums / max(n, 1)


def summarise(results: list[OriginResult], methods: list[str], ks: tuple[int, ...], draws: int, seed: int,
              compare: list[tuple[str, str]]) -> dict:  # fmt: skip
    table, diffs = [], []
    for sl in SLICES:
        sizes = [int(slice_mask(r, sl).sum()) for r in results]
        plans = bootstrap_plan(sizes, draws, seed)
        for k in ks:
            for metric in (f"recall@{k}", f"ndcg@{k}"):
                for m in methods:
                    parts = pooled(results, m, sl, metric)
                    allv = np.concatenate(parts)
                    boot = bootstrap_mean(parts, plans)
                    table.append({"slice": sl, "metric": metric, "method": m, "users": int(len(allv)),
                                  "value": float(np.mean(allv)) if len(allv) else float("nan"),
                                  "lo": float(np.percentile(boot, 2.5)) if len(allv) else float("nan"),
                                  "hi": float(np.percentile(boot, 97.5)) if len(allv) else float("nan"),
                                  "per_origin": [float(np.mean(p)) if len(p) else None for p in parts]})  # fmt: skip
                for a, b in compare:
                    if a not in methods or b not in methods:
                        continue
                    pa_, pb_ = pooled(results, a, sl, metric), pooled(results, b, sl, metric)
                    d = [x - y for x, y in zip(pa_, pb_, strict=True)]
                    alld = np.concatenate(d)
                    if not len(alld):
                        continue
                    boot = bootstrap_mean(d, plans)
                    diffs.append({"slice": sl, "metric": metric, "a": a, "b": b, "diff": float(alld.mean()),
                                  "lo": float(np.percentile(boot, 2.5)), "hi": float(np.percentile(boot, 97.5)),
                                  "users": int(len(alld))})  # fmt: skip
    return {"table": table, "differences": diffs}


def run_evaluation(data: EvalData, cfg_eval, methods: list[Method], log: Callable[[str], None] = print,
                   compare: list[tuple[str, str]] | None = None) -> dict:  # fmt: skip
    started = time.perf_counter()
    if data.item_vecs is None:
        methods = [m for m in methods if not m.needs_vectors]
    ks = tuple(int(k) for k in cfg_eval.ks)
    origins = make_origins(data.inter["ts"].to_numpy(), cfg_eval.origins, cfg_eval.span)
    results = []
    for o in origins:
        log(f"evaluate: origin {o.index}: validation [{o.t_val.date()}, {o.t_test.date()}), test "
            f"[{o.t_test.date()}, {o.t_end.date()})")  # fmt: skip
        results.append(run_origin(data, o, methods, ks, cfg_eval.select_k, log))
    names = [m.name for m in methods]
    if compare is None:
        compare = default_comparisons(names)
    summary = summarise(results, names, ks, cfg_eval.bootstrap, cfg_eval.seed, compare)
    return {
        "data": data.info,
        "protocol": {"origins": cfg_eval.origins, "span": cfg_eval.span, "ks": list(ks), "select_k": cfg_eval.select_k,
                     "bootstrap": cfg_eval.bootstrap, "seed": cfg_eval.seed},  # fmt: skip
        "origins": [{**r.origin.to_dict(), "chosen": clean(r.chosen), "validation": r.validation, **r.counts}
                    for r in results],  # fmt: skip
        "pooled_counts": {k: int(sum(r.counts[k] for r in results)) for k in
                          ("users", "warm_users", "new_users", "clicks", "cold_item_clicks", "cold_item_users")},
        **summary,
        "seconds": round(time.perf_counter() - started, 1),
        "_results": results,
    }  # fmt: skip


def default_comparisons(names: list[str]) -> list[tuple[str, str]]:
    heads = [n for n in ("adapted_fresh", "adapted_hybrid", "adapted") if n in names]
    out = []
    for a in heads:
        out += [(a, b) for b in names if b != a and b not in heads]
    out += [(a, b) for i, a in enumerate(heads) for b in heads[i + 1 :]]
    return out


# --- report ---------------------------------------------------------------------------------------------------


def markdown(report: dict, headline: str | None = None, diff_metrics: tuple[str, ...] | None = None) -> str:
    rows = report["table"]
    headline = headline or f"recall@{report['protocol']['select_k']}"
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = []
    pc = report["pooled_counts"]
    lines.append(f"Pooled over {len(report['origins'])} origins: {pc['users']} (origin, user) pairs "
                 f"({pc['warm_users']} warm, {pc['new_users']} new), {pc['clicks']} held-out clicks, "
                 f"{pc['cold_item_clicks']} of them on cold items ({pc['cold_item_users']} users).")  # fmt: skip
    lines.append("")
    for metric in dict.fromkeys(r["metric"] for r in rows):
        lines.append(f"**{metric}** (mean, 95% bootstrap interval)")
        lines.append("")
        lines.append("| method | " + " | ".join(SLICES) + " |")
        lines.append("|---|" + "---:|" * len(SLICES))
        for m in methods:
            cells = []
            for sl in SLICES:
                r = next(
                    (x for x in rows if x["method"] == m and x["slice"] == sl and x["metric"] == metric), None
                )
                cells.append(
                    "-" if r is None or not r["users"] else f"{r['value']:.4f} [{r['lo']:.3f}, {r['hi']:.3f}]"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    users = {sl: next((x["users"] for x in rows if x["slice"] == sl), 0) for sl in SLICES}
    lines.append("Users per slice: " + ", ".join(f"{k} {v}" for k, v in users.items()) + ".")
    lines.append("")
    wanted = diff_metrics or (headline, headline.replace("recall", "ndcg"))
    diffs = [d for d in report["differences"] if d["metric"] in wanted]
    if diffs:
        lines.append(
            "**Paired differences** (a - b, pooled, 95% paired bootstrap interval; * = interval excludes 0)"
        )
        lines.append("")
        lines.append("| a | b | slice | metric | a - b | 95% interval |")
        lines.append("|---|---|---|---|---:|---|")
        for d in diffs:
            star = " *" if d["lo"] > 0 or d["hi"] < 0 else ""
            lines.append(f"| {d['a']} | {d['b']} | {d['slice']} | {d['metric']} | {d['diff']:+.4f}{star} | "
                         f"[{d['lo']:+.4f}, {d['hi']:+.4f}] |")  # fmt: skip
        lines.append("")
    lines.append(f"Per origin (test {headline}, all users) and the hyperparameters chosen on validation:")
    lines.append("")
    lines.append("| origin | test window | users | cold clicks | " + " | ".join(methods) + " |")
    lines.append("|---|---|---:|---:|" + "---:|" * len(methods))
    for i, o in enumerate(report["origins"]):
        vals = []
        for m in methods:
            r = next(x for x in rows if x["method"] == m and x["slice"] == "all" and x["metric"] == headline)
            v = r["per_origin"][i]
            vals.append("-" if v is None else f"{v:.4f}")
        lines.append(f"| {i} | {o['t_test'][:10]} - {o['t_end'][:10]} | {o['users']} | {o['cold_item_clicks']} | "
                     + " | ".join(vals) + " |")  # fmt: skip
    lines.append("")
    for i, o in enumerate(report["origins"]):
        ch = {m: p for m, p in o["chosen"].items() if p}
        lines.append(
            f"- origin {i} chosen: " + "; ".join(f"{m} {json.dumps(p, default=str)}" for m, p in ch.items())
        )
    return "\n".join(lines)


def public(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def write_report(report: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = tables.write_json(out_dir / f"evaluate-{stamp}.json", public(report))
    tables.write_atomic(out_dir / f"evaluate-{stamp}.md", markdown(report))
    return path


def methods_for(cfg, dated: bool = True) -> list[Method]:
    """The baselines, plus the adapter and its hybrid when ``evaluate.adapter`` is true; ``evaluate.methods``
    keeps a subset (dependencies such as recent_popularity and ease are kept for the blends). ``dated``: the
    items have release dates (else the fresh slots' release windows are not tried: they would all be "any")."""
    methods = baseline_methods(cfg.evaluate)
    if cfg.evaluate.adapter:
        from llmfeat.embedding.adapt import evaluation_methods

        methods += evaluation_methods(cfg.adapt, dated=dated)
    wanted = cfg.evaluate.methods
    if wanted:
        known = {m.name for m in methods}
        unknown = sorted(set(wanted) - known)
        if unknown:
            from llmfeat.core.config import ConfigError

            raise ConfigError(f"evaluate.methods: unknown method(s) {unknown}; known: {sorted(known)}")
        needed = set(wanted)
        if "ease+recent_pop" in needed:
            needed |= {"ease", "recent_popularity"}
        if "adapted_fresh" in needed:
            needed |= {"adapted_hybrid"}
        if "adapted_hybrid" in needed:
            needed |= {"adapted", "recent_popularity"}
        methods = [m for m in methods if m.name in needed]
    return methods


def run_evaluate(cfg, as_of: dt.date | None, log: Callable[[str], None] = print) -> dict:
    """``llmfeat evaluate``: load, run, write <reports_dir>/evaluate-<time>.json and .md; returns the report."""
    data = load_eval_data(cfg.paths.data_dir, cfg.embed.embedding_set, as_of)
    log(f"evaluate: {data.info['interactions']:,} interactions ({data.info['clicks']:,} clicks), "
        f"{data.info['users']} users, {data.info['items']} items, vectors of {data.model_id}")  # fmt: skip
    report = run_evaluation(data, cfg.evaluate, methods_for(cfg, dated=data.item_released is not None), log)
    from llmfeat.core.config import reports_dir

    report["path"] = str(write_report(report, reports_dir(cfg)))
    return report
