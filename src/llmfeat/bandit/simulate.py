"""Supervised-to-bandit simulator on the demo data (MovieLens has no randomised logs).

Protocol (Dudik et al. 2011; Bietti, Agarwal & Langford 2021):

- The labelled interactions are split in time as the CTR models split them (``train.split_quantiles`` or
  ``train.t1`` / ``train.t2``): train < T1 <= validation < T2 <= test. Each (user, UTC day) with at least one
  click in the validation or test window is a *session*, replayed in time order.
- Candidates of a session: the items the user rated that day (at most 10, a seeded sample) plus the
  ``bandit.sim_neighbours`` nearest items to the user's vector in a FAISS inner-product index of the item
  vectors, without items the user rated before that day. The reward of an arm is 1 when the user rated it
  >= the click threshold that day, else 0 (rated lower, or not rated at all).
- A policy makes ``bandit.sim_decisions_per_session`` choices per session, one at a time; the reward of the
  chosen arm is revealed, the policy learns from (arm, reward, its probability), the arm leaves the slate.
- Features are those of the service (``features.py``), computed as of the session's midnight from the same
  data the nightly publishes: the item text vectors, the user text vector (latest row of the user_text table
  at that time), the pooled-history vector (time-decayed mean of the clicks before that day, as
  ``user_state.py`` pools them) and the item's impressions and clicks before that day.
- Policies: random, popularity, greedy CTR (highest smoothed click rate), LinUCB (numpy), epsilon-greedy (VW) and the VW
  policy whose exploration off-policy evaluation chose on the validation window. Every policy learns through
  the last ``bandit.sim_warmup_sessions`` sessions of the training window and the validation window, and is
  scored on the test window, once per seed. VW's options (``bandit.vw_args``, ``bandit.proj_dim``) were
  chosen on the validation window (docs/bandits.md).
- Cold-start items: no interaction before the test window. Their slice is the reward earned by choosing them.
- Off-policy check: the VW policy frozen at the start of the test window is evaluated from test-window logs
  of the epsilon-greedy policy (as trained through validation, frozen, exploring with ``bandit.ope_epsilon``)
  by IPS, SNIPS and DR with bootstrap intervals; its true value on the same contexts is known exactly here,
  since every arm's reward is: sum_a pi(a|x) r(x, a).

Bias, documented rather than hidden: an unrated arm counts as a non-click although the user may have liked
it, so every policy is scored against what MovieLens happened to show and users chose to rate (popular
items are rated more, so popularity is favoured); sessions without any click are left out; a user's ratings
of one day are treated as one visit. The numbers rank policies on this data; they are not online CTRs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from llmfeat.bandit import ope
from llmfeat.bandit.features import FeatureSpace, a_text, action_rows, shared_row
from llmfeat.bandit.policy import GreedyCtrPolicy, LinUCBPolicy, PopularityPolicy, RandomPolicy, VWPolicy
from llmfeat.core import tables
from llmfeat.core.config import Config
from llmfeat.core.errors import MissingInputError
from llmfeat.core.layout import embedding_paths
from llmfeat.embedding.vectors import normalise, read_latest

MAX_RATED = 10
POLICIES = ("random", "popularity", "greedy_ctr", "linucb", "epsilon_greedy", "vw")


# --- the world: items, interactions, user vectors -----------------------------------------------------


@dataclass
class World:
    item_ids: np.ndarray
    titles: list[str]
    vectors: np.ndarray
    """(n_items, dim) unit vectors, row = item index."""
    inter: pd.DataFrame
    """user_id, item (row), ts (datetime64[us]), label; sorted by ts."""
    user_text: dict[str, tuple[np.ndarray, np.ndarray]]
    """user -> (event times sorted, vectors) of the user_text change log."""
    t1: np.datetime64
    t2: np.datetime64
    half_life_days: float
    item_ts: list[np.ndarray] = field(default_factory=list)
    item_cum_clicks: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        by_item = self.inter.sort_values(["item", "ts"], kind="stable")
        groups = {i: g for i, g in by_item.groupby("item", sort=False)}
        for i in range(len(self.item_ids)):
            g = groups.get(i)
            ts = g["ts"].to_numpy("datetime64[us]") if g is not None else np.zeros(0, "datetime64[us]")
            lab = g["label"].to_numpy(np.int64) if g is not None else np.zeros(0, np.int64)
            self.item_ts.append(ts)
            self.item_cum_clicks.append(np.concatenate([[0], np.cumsum(lab)]))
        self._by_user = {u: g for u, g in self.inter.groupby("user_id", sort=False)}

    def item_stats(self, rows: np.ndarray, before: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
        imp = np.array([np.searchsorted(self.item_ts[r], before, side="left") for r in rows], np.float64)
        clicks = np.array(
            [self.item_cum_clicks[r][int(n)] for r, n in zip(rows, imp, strict=True)], np.float64
        )
        return imp, clicks

    def user_before(self, user: str, before: np.datetime64) -> pd.DataFrame:
        g = self._by_user.get(user)
        return g[g["ts"].to_numpy("datetime64[us]") < before] if g is not None else self.inter.iloc[:0]

    def history_vector(self, past: pd.DataFrame) -> tuple[np.ndarray | None, int]:
        clicks = past[past["label"] == 1]
        if clicks.empty:
            return None, 0
        ts = clicks["ts"].to_numpy("datetime64[us]")
        ages = (ts.max() - ts).astype("timedelta64[us]").astype(np.float64)
        w = np.exp2(-ages / (self.half_life_days * 86_400e6))
        v = w @ self.vectors[clicks["item"].to_numpy()]
        n = np.linalg.norm(v)
        return (v / n if n > 0 else None), len(clicks)

    def text_vector(self, user: str, at: np.datetime64) -> np.ndarray | None:
        got = self.user_text.get(user)
        if got is None:
            return None
        j = int(np.searchsorted(got[0], at, side="right"))
        return got[1][j - 1] if j else None


def load_world(cfg: Config, as_of: dt.date) -> World:
    """Items, labelled interactions and user text vectors of ``cfg``'s data directory as of ``as_of``."""
    from llmfeat.data.splits import temporal_split

    data_dir, emb_set = Path(cfg.paths.data_dir), cfg.embed.embedding_set
    paths = embedding_paths(data_dir, emb_set)
    latest = read_latest(paths.item_text, "item_id", as_of=as_of)
    items_root = tables.canonical_dir(data_dir, "items")
    days = [d for d in tables.snapshot_dates(items_root) if d <= as_of]
    if not days:
        raise MissingInputError(f"no canonical items snapshot at or before {as_of} under {items_root}")
    items = tables.read_snapshot(items_root, days[-1]).to_pandas().drop_duplicates("item_id", keep="last")
    keep = np.isin(latest.ids, items["item_id"].to_numpy(object))
    item_ids, vectors = latest.ids[keep], normalise(latest.vectors[keep])
    titles = items.set_index("item_id").loc[item_ids, "title"].tolist()
    row_of = pd.Index(item_ids)
    inter_root = tables.canonical_dir(data_dir, "interactions")
    idays = [d for d in tables.snapshot_dates(inter_root) if d <= as_of]
    if not idays:
        raise MissingInputError(f"no canonical interactions snapshot at or before {as_of} under {inter_root}")
    inter = (
        tables.read_snapshot(inter_root, idays[-1])
        .select(["user_id", "item_id", "event_ts", "label"])
        .to_pandas()
    )
    inter["item"] = row_of.get_indexer(inter["item_id"])
    inter = inter[inter["item"] >= 0].sort_values(["event_ts", "user_id", "item_id"], kind="stable")
    t = cfg.train
    split = temporal_split(inter, pd.Timestamp(t.t1, tz="UTC") if t.t1 else None,
                           pd.Timestamp(t.t2, tz="UTC") if t.t2 else None, tuple(t.split_quantiles))  # fmt: skip
    inter = inter.assign(
        ts=inter["event_ts"].dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    )
    inter = inter[["user_id", "item", "ts", "label"]].reset_index(drop=True)
    user_text = _user_text_log(paths.user_text, as_of)
    to64 = lambda s: np.datetime64(pd.Timestamp(s).tz_convert("UTC").tz_localize(None), "us")  # noqa: E731
    return World(item_ids, titles, vectors, inter, user_text, to64(split.boundaries["t1"]),
                 to64(split.boundaries["t2"]), cfg.embed.history_half_life_days)  # fmt: skip


def _user_text_log(root: Path, as_of: dt.date) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not tables.snapshot_dates(root):
        return {}
    part = ds.partitioning(pa.schema([("snapshot_date", pa.string())]), flavor="hive")
    table = ds.dataset(root, format="parquet", partitioning=part).to_table(
        columns=["user_id", "event_timestamp", "embedding"],
        filter=ds.field("snapshot_date") <= as_of.isoformat(),
    )
    frame = table.to_pandas()
    frame["ts"] = frame["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    frame = frame.sort_values(["user_id", "ts"], kind="stable")
    out = {}
    for user, g in frame.groupby("user_id", sort=False):
        out[user] = (g["ts"].to_numpy("datetime64[us]"), normalise(np.stack(g["embedding"].to_numpy())))
    return out


# --- sessions ---------------------------------------------------------------------------------------


@dataclass
class Session:
    user: str
    when: dt.datetime
    shared: np.ndarray
    cand: np.ndarray
    """Item rows of the candidates."""
    actions: np.ndarray
    positive: np.ndarray
    cold: np.ndarray
    decisions: int


def build_sessions(world: World, space: FeatureSpace, start: np.datetime64, end: np.datetime64 | None, *,
                   neighbours: int, per_session: int, max_sessions: int | None, first: bool, seed: int = 0,
                   index=None) -> list[Session]:  # fmt: skip
    """Sessions with a click in [start, end); ``max_sessions`` keeps the first (``first``) or last ones."""
    import faiss

    ts = world.inter["ts"].to_numpy("datetime64[us]")
    window = world.inter[(ts >= start) & ((ts < end) if end is not None else True)]
    window = window.assign(day=window["ts"].dt.floor("D"))
    keys = window.groupby(["user_id", "day"], sort=False).agg(first_ts=("ts", "min"), clicks=("label", "sum"))
    keys = keys[keys["clicks"] > 0].sort_values("first_ts", kind="stable")
    if max_sessions is not None:
        keys = keys.head(max_sessions) if first else keys.tail(max_sessions)
    if index is None:
        index = faiss.IndexFlatIP(world.vectors.shape[1])
        index.add(world.vectors)
    groups = {k: g for k, g in window.groupby(["user_id", "day"], sort=False)}
    cold_all = np.array(
        [not (len(t) and t[0] < start) for t in world.item_ts]
    )  # no interaction before the window
    rng = np.random.default_rng(seed)
    out = []
    for (user, day), row in keys.iterrows():
        g = groups[(user, day)]
        day64 = np.datetime64(day, "us")
        rated = g.drop_duplicates("item", keep="last")
        if len(rated) > MAX_RATED:
            rated = rated.iloc[np.sort(rng.choice(len(rated), MAX_RATED, replace=False))]
        past = world.user_before(user, day64)
        hist, n_clicks = world.history_vector(past)
        text = world.text_vector(user, day64)
        query = hist if hist is not None else text
        rated_rows = rated["item"].to_numpy()
        cand = list(rated_rows)
        if query is not None and neighbours > 0:
            seen = set(past["item"].tolist()) | set(cand)
            _, found = index.search(query.reshape(1, -1).astype(np.float32), neighbours + len(seen))
            extra = [int(r) for r in found[0] if r >= 0 and int(r) not in seen][:neighbours]
            cand += extra
        cand = np.array(sorted(set(cand)), np.int64)
        positive = np.isin(cand, rated_rows[rated["label"].to_numpy() == 1])
        if not positive.any() or len(cand) < 2:
            continue
        imp, clicks = world.item_stats(cand, day64)
        when = pd.Timestamp(row["first_ts"]).tz_localize("UTC").to_pydatetime()
        shared = shared_row(space, text, hist, n_clicks, when)
        actions = action_rows(
            space, world.vectors[cand], imp, clicks, text, hist, projected=world_proj(world, space)[cand]
        )
        out.append(
            Session(user, when, shared, cand, actions, positive, cold_all[cand], min(per_session, len(cand)))
        )
    return out


_PROJ_CACHE: dict[tuple[int, str], tuple[np.ndarray, list[str]]] = {}


def world_proj(world: World, space: FeatureSpace) -> np.ndarray:
    return _proj(world, space)[0]


def world_a_text(world: World, space: FeatureSpace) -> list[str]:
    return _proj(world, space)[1]


def _proj(world: World, space: FeatureSpace) -> tuple[np.ndarray, list[str]]:
    key = (id(world), space.id)
    if key not in _PROJ_CACHE:
        p = space.project(world.vectors)
        _PROJ_CACHE[key] = (p, a_text(space, p))
    return _PROJ_CACHE[key]


# --- running policies -------------------------------------------------------------------------------


@dataclass
class Trace:
    rewards: list[float] = field(default_factory=list)
    cold: list[bool] = field(default_factory=list)
    oracle: list[float] = field(default_factory=list)
    """1 when a rewarded arm was still on the slate (what a perfect policy would have earned)."""
    logs: list[tuple[int, np.ndarray, int, float, float]] = field(default_factory=list)
    """(session, remaining candidate positions, chosen position in them, probability, reward)."""
    seconds: float = 0.0

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {
            "rewards": np.array(self.rewards),
            "cold": np.array(self.cold, bool),
            "oracle": np.array(self.oracle),
        }


def run_policy(policy, sessions: list[Session], a_texts: list[str], rng: np.random.Generator, *, learn: bool = True,
               record: bool = False) -> Trace:  # fmt: skip
    trace = Trace()
    t0 = time.perf_counter()
    for si, s in enumerate(sessions):
        remaining = np.arange(len(s.cand))
        for _ in range(s.decisions):
            acts = s.actions[remaining]
            texts = [a_texts[c] for c in s.cand[remaining]]
            p = policy.pmf(s.shared, acts, a_text=texts)
            j = int(rng.choice(len(remaining), p=p))
            r = float(s.positive[remaining[j]])
            if learn:
                policy.learn(s.shared, acts, j, r, float(p[j]), a_text=texts)
            trace.rewards.append(r)
            trace.cold.append(bool(s.cold[remaining[j]]))
            trace.oracle.append(float(s.positive[remaining].any()))
            if record:
                trace.logs.append((si, remaining.copy(), j, float(p[j]), r))
            remaining = np.delete(remaining, j)
    trace.seconds = time.perf_counter() - t0
    return trace


def evaluate_logged(
    target, sessions: list[Session], logs, a_texts: list[str], reward_model: ope.RewardModel | None
):
    """For each logged decision: the target's probabilities on its slate. Returns (ope.Logged, true values):
    the true value of decision j is sum_a pi(a|x_j) r_j(a), known exactly in the simulator."""
    tgt, truth, dm, ql, rew, prop = [], [], [], [], [], []
    for si, remaining, j, p, r in logs:
        s = sessions[si]
        acts = s.actions[remaining]
        pi = target.pmf(s.shared, acts, a_text=[a_texts[c] for c in s.cand[remaining]])
        tgt.append(pi[j])
        truth.append(float(pi @ s.positive[remaining]))
        rew.append(r)
        prop.append(p)
        if reward_model is not None:
            q = reward_model.predict(acts)
            dm.append(float(pi @ q))
            ql.append(float(q[j]))
    logged = ope.Logged(np.array(rew), np.array(prop), np.array(tgt),
                        np.array(dm) if reward_model is not None else None,
                        np.array(ql) if reward_model is not None else None)  # fmt: skip
    return logged, np.array(truth)


def logged_rows(sessions: list[Session], logs) -> tuple[np.ndarray, np.ndarray]:
    """The chosen action rows and rewards of a log (to fit a reward model)."""
    rows = [sessions[si].actions[remaining[j]] for si, remaining, j, _, _ in logs]
    return np.array(rows), np.array([r for *_, r in logs])


def choose_exploration(cfg: Config, space: FeatureSpace, warm: list[Session], sessions: list[Session],
                       a_texts: list[str], log: Callable[[str], None] = print) -> tuple[str, list[dict]]:  # fmt: skip
    """Off-policy selection on the validation window: epsilon-greedy runs through the warm-up and validation
    sessions, logging; each candidate exploration learns from the warm-up logs, then along the validation
    log (progressive validation: each decision is scored before it is learnt) and is ranked by SNIPS."""
    b = cfg.bandit
    logger = VWPolicy(space, f"--epsilon {b.epsilon}", b.vw_args, seed=b.seed)
    rng = np.random.default_rng(b.seed)
    warm_trace = run_policy(logger, warm, a_texts, rng, record=True)
    trace = run_policy(logger, sessions, a_texts, rng, record=True)
    rows = []
    for exploration in b.explorers:
        pol = VWPolicy(space, exploration, b.vw_args, seed=b.seed)
        replay(pol, warm, warm_trace.logs, a_texts)
        tgt = replay(pol, sessions, trace.logs, a_texts)
        est = ope.estimate(ope.Logged(np.array([x[4] for x in trace.logs]), np.array([x[3] for x in trace.logs]),
                                      np.array(tgt)), seed=b.seed)  # fmt: skip
        rows.append({"exploration": exploration, **{k: v.as_dict() for k, v in est.items()}})
        log(f"bandit: OPE on validation: {exploration}: SNIPS {est['snips'].value:.4f} "
            f"[{est['snips'].lo:.4f}, {est['snips'].hi:.4f}]")  # fmt: skip
    best = max(rows, key=lambda r: r["snips"]["value"])
    return best["exploration"], rows


def replay(policy, sessions: list[Session], logs, a_texts: list[str]) -> list[float]:
    """Learn ``policy`` along logged decisions (off-policy, with the logged probabilities); returns its
    probability of each logged action just before learning it."""
    out = []
    for si, remaining, j, p, r in logs:
        s = sessions[si]
        acts = s.actions[remaining]
        texts = [a_texts[c] for c in s.cand[remaining]]
        out.append(float(policy.pmf(s.shared, acts, a_text=texts)[j]))
        policy.learn(s.shared, acts, j, r, p, a_text=texts)
    return out


@dataclass
class SimResult:
    summary: dict
    curves: dict[str, list[dict[str, np.ndarray]]]
    """policy -> per seed arrays of the test window."""
    logs: list
    """(features, chosen, probability, reward) of epsilon-greedy decisions (for a first policy)."""


def simulate(cfg: Config, as_of: dt.date, *, world: World | None = None, log: Callable[[str], None] = print,
             max_sessions: int | None = -1, seeds: int | None = None, warmup: int | None = None) -> SimResult:  # fmt: skip
    """The whole simulation; ``max_sessions`` -1: ``bandit.sim_max_sessions``; ``warmup`` None:
    ``bandit.sim_warmup_sessions``."""
    b = cfg.bandit
    t0 = time.perf_counter()
    world = world or load_world(cfg, as_of)
    space = FeatureSpace.fit(world.vectors, b.proj_dim)
    cap = b.sim_max_sessions if max_sessions == -1 else max_sessions
    n_seeds = seeds or b.sim_seeds
    kw = dict(
        neighbours=b.sim_neighbours, per_session=b.sim_decisions_per_session, max_sessions=cap, seed=b.seed
    )
    val = build_sessions(world, space, world.t1, world.t2, first=False, **kw)
    test = build_sessions(world, space, world.t2, None, first=True, **kw)
    n_warm = b.sim_warmup_sessions if warmup is None else warmup
    warm = build_sessions(world, space, np.datetime64("1900-01-01", "us"), world.t1, first=False,
                          **(kw | {"max_sessions": n_warm})) if n_warm else []  # fmt: skip
    a_texts = world_a_text(world, space)
    log(f"bandit: simulator: {len(warm)} warm-up (training window) / {len(val)} validation / {len(test)} test "
        f"sessions ({sum(s.decisions for s in test)} test decisions), {n_seeds} seeds, features {space.proj}-d")  # fmt: skip
    prepared = time.perf_counter()
    if b.exploration == "auto":
        exploration, selection = choose_exploration(cfg, space, warm, val, a_texts, log)
    else:
        exploration, selection = b.exploration, []
    log(f"bandit: VW exploration: {exploration}")
    factories = {
        "random": lambda s: RandomPolicy(),
        "popularity": lambda s: PopularityPolicy(space),
        "greedy_ctr": lambda s: GreedyCtrPolicy(space),
        "linucb": lambda s: LinUCBPolicy(space),
        "epsilon_greedy": lambda s: VWPolicy(space, f"--epsilon {b.epsilon}", b.vw_args, seed=s),
        "vw": lambda s: VWPolicy(space, exploration, b.vw_args, seed=s),
    }
    curves: dict[str, list] = {name: [] for name in factories}
    per_seed: list[dict] = []
    ope_rows: list[dict] = []
    first_logs = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(n_seeds):
            row = {"seed": seed}
            frozen = eps_warm = eps_val = eps_test = None
            for k, (name, make) in enumerate(factories.items()):
                pol = make(b.seed + seed)
                rng = np.random.default_rng([b.seed, seed, k])
                tw = run_policy(pol, warm, a_texts, rng, record=name == "epsilon_greedy")
                tv = run_policy(pol, val, a_texts, rng, record=name == "epsilon_greedy")
                if name == "vw":
                    frozen = pol.clone(Path(tmp) / f"vw-{seed}.model")
                if name == "epsilon_greedy":
                    eps_model = Path(tmp) / f"eps-{seed}.model"
                    pol.save(eps_model)
                tt = run_policy(pol, test, a_texts, rng, record=name == "epsilon_greedy")
                if name == "epsilon_greedy":
                    eps_warm, eps_val, eps_test = tw, tv, tt
                arrays = tt.as_arrays()
                curves[name].append(arrays)
                row[name] = {"reward": float(arrays["rewards"].sum()), "cold_reward": float(arrays["rewards"][arrays["cold"]].sum()),
                             "cold_chosen": int(arrays["cold"].sum()), "decisions": len(arrays["rewards"]),
                             "regret": float((arrays["oracle"] - arrays["rewards"]).sum()),
                             "ms_per_decision": 1000 * (tw.seconds + tv.seconds + tt.seconds) / max(1, len(tw.rewards) + len(tv.rewards) + len(tt.rewards))}  # fmt: skip
            per_seed.append(row)
            # Off-policy check: the frozen VW policy from epsilon-greedy test logs, against its exact value. The
            # logger is the epsilon-greedy policy as trained through validation, frozen, exploring with
            # bandit.ope_epsilon: with 0.1 over ~30 arms the smallest propensity is ~0.003, and a few hundred
            # decisions then hold almost no action a near-deterministic target would take off the logger's path.
            logger = VWPolicy(space, f"--epsilon {b.ope_epsilon}", model=eps_model)
            ope_log = run_policy(
                logger, test, a_texts, np.random.default_rng([b.seed, seed, 98]), learn=False, record=True
            )
            rows_w, r_w = logged_rows(warm, eps_warm.logs)
            rows_v, r_v = logged_rows(val, eps_val.logs)
            model = ope.RewardModel(space.proj).fit(np.concatenate([x for x in (rows_w, rows_v) if len(x)]),
                                                    np.concatenate([r_w, r_v]))  # fmt: skip
            logged, truth = evaluate_logged(frozen, test, ope_log.logs, a_texts, model)
            est = ope.estimate(logged, seed=b.seed + seed)
            on_policy = run_policy(
                frozen, test, a_texts, np.random.default_rng([b.seed, seed, 99]), learn=False
            )
            onp = np.array(on_policy.rewards)
            ope_rows.append({"seed": seed, "true_value": float(truth.mean()), "on_policy_mean": float(onp.mean()),
                             "on_policy_se": float(onp.std(ddof=1) / np.sqrt(len(onp))),
                             "logging_mean": float(np.mean(ope_log.rewards)), "ope_epsilon": b.ope_epsilon,
                             **{k: v.as_dict() | {"covers_truth": v.contains(float(truth.mean()))} for k, v in est.items()}})  # fmt: skip
            log(f"bandit: seed {seed}: " + ", ".join(f"{n} {row[n]['reward']:.0f} (cold {row[n]['cold_reward']:.0f})" for n in factories)
                + f"; OPE of VW: true {truth.mean():.4f}, DR {est['dr'].value:.4f} [{est['dr'].lo:.4f}, {est['dr'].hi:.4f}]")  # fmt: skip
            if seed == 0:
                first_logs = [(warm, eps_warm.logs), (val, eps_val.logs), (test, eps_test.logs)]
    summary = {
        "as_of": as_of.isoformat(),
        "windows": {"t1": str(world.t1), "t2": str(world.t2)},
        "sessions": {"warmup": len(warm), "validation": len(val), "test": len(test)},
        "decisions": {
            "warmup": sum(s.decisions for s in warm),
            "validation": sum(s.decisions for s in val),
            "test": sum(s.decisions for s in test),
        },
        "cold_positives_in_test_slates": int(sum((s.cold & s.positive).sum() for s in test)),
        "cold_items_in_test_slates": int(sum(s.cold.sum() for s in test)),
        "features": {"proj_dim": space.proj, "space_id": space.id, "vw_args": b.vw_args},
        "exploration": exploration,
        "selection": selection,
        "per_seed": per_seed,
        "comparisons": comparisons(
            per_seed, curves, np.repeat(np.arange(len(test)), [t.decisions for t in test])
        ),
        "ope": ope_rows,
        "seconds": {"prepare": round(prepared - t0, 2), "total": round(time.perf_counter() - t0, 2)},
        "policies": list(factories),
    }
    return SimResult(summary, curves, [(space, a_texts, first_logs)])


def comparisons(per_seed: list[dict], curves: dict | None = None, sessions: np.ndarray | None = None,
                n_boot: int = 2000, seed: int = 0) -> list[dict]:  # fmt: skip
    """Paired differences: over seeds (Student-t interval; seeds vary the policies' randomness only), and, when
    ``curves`` and the test decisions' ``sessions`` are given, a paired bootstrap over test sessions of the
    difference averaged over seeds (the data's variability)."""
    out = []
    rng = np.random.default_rng(seed)
    for a, b_, metric in (("vw", "greedy_ctr", "cold_reward"), ("vw", "random", "reward"),
                          ("vw", "greedy_ctr", "reward"), ("vw", "epsilon_greedy", "reward"),
                          ("vw", "popularity", "cold_reward"), ("vw", "linucb", "reward"),
                          ("vw", "linucb", "cold_reward")):  # fmt: skip
        diffs = [r[a][metric] - r[b_][metric] for r in per_seed]
        est = ope.mean_interval(diffs)
        row = {"a": a, "b": b_, "metric": metric, "diffs": diffs, **est.as_dict(),
               "a_mean": float(np.mean([r[a][metric] for r in per_seed])),
               "b_mean": float(np.mean([r[b_][metric] for r in per_seed]))}  # fmt: skip
        if curves is not None and sessions is not None and len(sessions):

            def per_decision(name: str, metric: str = metric) -> np.ndarray:
                runs = curves[name]
                return np.mean(
                    [r["rewards"] * (r["cold"] if metric == "cold_reward" else 1) for r in runs], axis=0
                )

            by_session = np.bincount(sessions, weights=per_decision(a) - per_decision(b_))
            idx = rng.integers(0, len(by_session), size=(n_boot, len(by_session)))
            boot = by_session[idx].sum(axis=1)
            row["session_bootstrap"] = {
                "lo": float(np.quantile(boot, 0.025)),
                "hi": float(np.quantile(boot, 0.975)),
            }
        out.append(row)
    return out
