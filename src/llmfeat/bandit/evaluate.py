"""``llmfeat bandit ope``: off-policy evaluation of candidate policies from the service's event log.

Side by side, from the same logged decisions (those whose reward window has closed; no reward = 0):
uniform random, the logging policy itself (its probabilities as logged: the estimate is the observed mean
reward), popularity, greedy CTR and the published VW policy, each with IPS, SNIPS and DR (95% bootstrap
intervals). DR's reward model is cross-fitted: fitted on one half of the log, applied to the other.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from llmfeat.bandit import ope
from llmfeat.bandit.events import EventLog, event_log_path
from llmfeat.bandit.policy import GreedyCtrPolicy, PopularityPolicy, RandomPolicy, load_policy, policy_root
from llmfeat.core.config import Config
from llmfeat.core.errors import InputError


def evaluate_event_log(cfg: Config, *, now: float | None = None, n_boot: int = 1000) -> dict:
    b = cfg.bandit
    loaded = load_policy(policy_root(cfg.paths.data_dir))
    space = loaded.space
    events = EventLog(event_log_path(cfg), readonly=True)
    try:
        now = time.time() if now is None else now
        decisions = list(events.decisions(closed_before=now - b.reward_window_s, space_id=space.id))
    finally:
        events.close()
    if not decisions:
        raise InputError(
            f"no closed decisions in feature space {space.id} in {event_log_path(cfg)} to evaluate"
        )
    rewards = np.array([d.reward for d in decisions], np.float64)
    props = np.array([d.propensity for d in decisions], np.float64)
    # Cross-fitted reward model.
    half = np.arange(len(decisions)) % 2 == 0
    chosen_rows = np.array([d.actions[d.chosen] for d in decisions])
    models = [ope.RewardModel(space.proj).fit(chosen_rows[~half], rewards[~half]),
              ope.RewardModel(space.proj).fit(chosen_rows[half], rewards[half])]  # fmt: skip
    q = [models[0 if h else 1].predict(d.actions) for d, h in zip(decisions, half, strict=True)]
    targets = {"uniform random": RandomPolicy(), "popularity": PopularityPolicy(space),
               "greedy CTR": GreedyCtrPolicy(space), f"VW policy {loaded.version}": loaded.policy}  # fmt: skip
    rows = []
    for name, pol in [("logging policy", None), *targets.items()]:
        pis = [d.pmf if pol is None else pol.pmf(d.shared, d.actions) for d in decisions]
        logged = ope.Logged(rewards, props, np.array([p[d.chosen] for p, d in zip(pis, decisions, strict=True)]),
                            np.array([p @ qq for p, qq in zip(pis, q, strict=True)]),
                            np.array([qq[d.chosen] for qq, d in zip(q, decisions, strict=True)]))  # fmt: skip
        est = ope.estimate(logged, n_boot=n_boot, seed=b.seed)
        rows.append({"policy": name, **{k: v.as_dict() for k, v in est.items()}})
    return {"decisions": len(decisions), "rewarded": int((rewards > 0).sum()), "policy_version": loaded.version,
            "event_log": str(event_log_path(cfg)), "rows": rows}  # fmt: skip


def ope_section(result: dict) -> str:
    def ci(d):
        return f"{d['value']:.4f} [{d['lo']:.4f}, {d['hi']:.4f}]"

    lines = ["\n## Contextual bandits: off-policy evaluation of the event log\n\n",
             f"{result['decisions']} closed decisions ({result['rewarded']} rewarded) from `{result['event_log']}`; "
             "95% bootstrap intervals. The logging policy's row is its observed mean reward.\n\n",
             "| policy | IPS | SNIPS | DR |\n|---|---|---|---|\n"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['policy']} | {ci(r['ips'])} | {ci(r['snips'])} | {ci(r['dr'])} |\n")
    return "".join(lines)


def write_ope_report(cfg: Config, result: dict) -> Path:
    import datetime as dt

    from llmfeat.core import tables
    from llmfeat.core.config import reports_dir

    path = reports_dir(cfg) / "bandit" / f"ope-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}.md"
    return tables.write_atomic(path, "# Bandit off-policy evaluation\n" + ope_section(result))
