"""Off-policy evaluation of a target policy from logged decisions (Dudik et al., ICML 2011; the estimators
of Open Bandit Pipeline, Saito et al. 2021), with percentile bootstrap intervals over decisions.

For logged decision j: reward r_j of the logged action a_j, its logged probability p_j = mu(a_j | x_j), the
target's probability of the same action w_j = pi(a_j | x_j) / p_j (the importance weight), and for the doubly
robust estimate a reward model q(x_j, a) on every candidate:

    IPS   = mean(w_j r_j)
    SNIPS = sum(w_j r_j) / sum(w_j)
    DR    = mean( sum_a pi(a|x_j) q(x_j, a) + w_j (r_j - q(x_j, a_j)) )

Unbiased (IPS, DR) when every action the target may choose had p_j > 0 and the logged p_j are right: the
simulator's off-policy check tests exactly that (an interval that misses the true value flags a wrong
propensity or estimator). Not written on top of Open Bandit Pipeline: beside this project's dependencies pip
resolves ``obp`` to 0.4.1 (2021; the 0.5 releases do not fit), and the three estimators are a few lines each,
checked against the exact values the simulator knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmfeat.bandit.features import ACTION_STATS
from llmfeat.core.errors import InputError


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}


@dataclass
class Logged:
    """What off-policy evaluation needs from a log (one entry per decision)."""

    rewards: np.ndarray
    propensities: np.ndarray
    """mu(a_j | x_j), as logged."""
    target: np.ndarray
    """pi(a_j | x_j) of the policy evaluated."""
    dm: np.ndarray | None = None
    """sum_a pi(a|x_j) q(x_j, a) (DR only)."""
    q_logged: np.ndarray | None = None
    """q(x_j, a_j) (DR only)."""


def _terms(log: Logged) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per-decision numerators (and denominators for the ratio estimators)."""
    w = log.target / log.propensities
    out = {"ips": (w * log.rewards, None), "snips": (w * log.rewards, w)}
    if log.dm is not None and log.q_logged is not None:
        out["dr"] = (log.dm + w * (log.rewards - log.q_logged), None)
    return out


def estimate(log: Logged, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """IPS, SNIPS and (with a reward model) DR, each with a percentile bootstrap interval."""
    n = len(log.rewards)
    if n == 0:
        raise InputError("no logged decisions to evaluate")
    if np.any(log.propensities <= 0):
        raise InputError("logged propensities must be > 0")
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    out = {}
    terms = _terms(log)
    boots = {k: [] for k in terms}
    for start in range(0, n_boot, 100):
        idx = rng.integers(0, n, size=(min(100, n_boot - start), n))
        for name, (num, den) in terms.items():
            s = num[idx].sum(axis=1)
            boots[name].append(s / den[idx].sum(axis=1) if den is not None else s / n)
    for name, (num, den) in terms.items():
        value = float(num.sum() / den.sum()) if den is not None else float(num.mean())
        b = np.concatenate(boots[name])
        out[name] = Estimate(value, float(np.quantile(b, alpha)), float(np.quantile(b, 1 - alpha)), n)
    return out


def mean_interval(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean and Student-t interval of a few numbers (e.g. one per seed)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return Estimate(m, m, m, len(x))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Estimate(m, m - half, m + half, len(x))


REWARD_MODEL_FEATURES = ("cos_text", "cos_history", "log_impressions", "ctr", "cold")


class RewardModel:
    """q(x, a) for doubly robust estimates: a logistic regression on the action rows' stats (cosines with the
    user's vectors, popularity, click rate, cold flag), fitted on logged (chosen action, reward) pairs of
    another window than the one evaluated. A constant (the mean reward) when the rewards are all equal."""

    def __init__(self, proj: int):
        self.cols = [proj + ACTION_STATS.index(c) for c in REWARD_MODEL_FEATURES]
        self.model = None
        self.constant = 0.0

    def fit(self, rows: np.ndarray, rewards: np.ndarray) -> RewardModel:
        from sklearn.linear_model import LogisticRegression

        y = (np.asarray(rewards) > 0.5).astype(int)
        self.constant = float(np.mean(rewards)) if len(rewards) else 0.0
        if len(np.unique(y)) == 2:
            self.model = LogisticRegression(C=1.0, max_iter=500).fit(rows[:, self.cols], y)
        return self

    def predict(self, actions: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.full(len(actions), self.constant)
        return self.model.predict_proba(actions[:, self.cols])[:, 1]
