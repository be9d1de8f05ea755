"""The nightly's bandit step (run inside the train stage): the short simulator run with its report section,
then a policy trained on the event log and published as a new version the service hot-reloads.

Training: a fresh VW learner (the exploration the simulator's off-policy evaluation chose, unless
``bandit.exploration`` names one) learns every logged decision whose reward window has closed, in log order,
with its logged propensity; a decision without a reward counts as reward 0. Only decisions made in the
policy's feature space (same projection id) are used. The first policy, before the service logged anything,
is warm-started from the simulator's epsilon-greedy logs of the demo data instead (said in its manifest).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path

from llmfeat.bandit.events import EventLog, event_log_path
from llmfeat.bandit.features import FeatureSpace
from llmfeat.bandit.policy import PolicyNotFoundError, VWPolicy, load_policy, policy_root, publish_policy
from llmfeat.core.config import Config, reports_dir


def _current(cfg: Config):
    try:
        return load_policy(policy_root(cfg.paths.data_dir))
    except (PolicyNotFoundError, FileNotFoundError):
        return None


def train_policy(cfg: Config, *, exploration: str | None = None, sim=None, log: Callable[[str], None] = print,
                 now: float | None = None, keep_without_decisions: bool = False) -> dict:  # fmt: skip
    """Train a policy on the event log (and, for a first policy, the simulator's logs) and publish it.
    ``keep_without_decisions``: when nothing was learnt (no logged decision, no simulator), keep the served
    policy instead of publishing an untrained one (a refresh night before the service logged anything)."""
    b = cfg.bandit
    started = time.perf_counter()
    current = _current(cfg)
    if (
        exploration is None
    ):  # the configured one, else the served policy's (chosen by OPE), else epsilon-greedy
        exploration = b.exploration if b.exploration != "auto" else None
        exploration = (
            exploration or (current.policy.exploration if current else None) or f"--epsilon {b.epsilon}"
        )
    sim_space = sim.logs[0][0] if sim is not None else None
    space = (current.space if current else None) or sim_space
    if space is None:
        from llmfeat.retrieval.index import index_root, load_version

        loaded = load_version(index_root(cfg.paths.data_dir, cfg.embed.embedding_set))
        space = FeatureSpace.fit(loaded.vectors, b.proj_dim)
    policy = VWPolicy(space, exploration, b.vw_args, seed=b.seed)
    path = event_log_path(cfg)
    n_events = 0
    if path.is_file():
        events = EventLog(path, readonly=True)
        now = time.time() if now is None else now
        try:
            for d in events.decisions(closed_before=now - b.reward_window_s, space_id=space.id):
                policy.learn(d.shared, d.actions, d.chosen, d.reward, d.propensity)
                n_events += 1
        finally:
            events.close()
    n_sim = 0
    if n_events == 0 and sim is not None and sim_space is not None and sim_space.id == space.id:
        _, a_texts, windows = sim.logs[0]
        for sessions, logs in windows:
            for si, remaining, j, p, r in logs:
                s = sessions[si]
                policy.learn(
                    s.shared, s.actions[remaining], j, r, p, a_text=[a_texts[c] for c in s.cand[remaining]]
                )
                n_sim += 1
    if keep_without_decisions and n_events == 0 and n_sim == 0 and current is not None:
        log(f"bandit: no logged decisions to learn from; the served policy {current.version} stays")
        return {"version": current.version, "kept": True, "exploration": exploration, "logged_decisions": 0,
                "simulated_decisions": 0, "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    version = publish_policy(policy_root(cfg.paths.data_dir), policy, {
        "trained_on": {"logged_decisions": n_events, "simulated_decisions": n_sim},
        "event_log": str(path), "vw_args": b.vw_args, "proj_dim": space.proj,
    })  # fmt: skip
    log(
        f"bandit: published policy {version} ({exploration}; {n_events} logged + {n_sim} simulated decisions)"
    )
    return {"version": version, "exploration": exploration, "logged_decisions": n_events,
            "simulated_decisions": n_sim, "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def run_bandit(
    cfg: Config, as_of: dt.date, *, report: Path | None = None, log: Callable[[str], None] = print
) -> dict:
    """Simulator + report section (appended to ``report`` when given, else its own file), then the policy."""
    from llmfeat.bandit.report import plot_curves, section
    from llmfeat.bandit.simulate import simulate

    res = simulate(cfg, as_of, log=log)
    out = Path(report).parent if report else reports_dir(cfg) / "bandit" / as_of.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    text = section(res.summary, plot_curves(out, res.curves))
    if report and Path(report).is_file():
        with Path(report).open("a") as fh:
            fh.write(text)
        written = Path(report)
    else:
        written = out / "bandit.md"
        written.write_text("# Contextual bandits\n" + text)
    (out / "bandit_summary.json").write_text(json.dumps(res.summary, indent=2, default=str))
    policy = train_policy(cfg, exploration=res.summary["exploration"], sim=res, log=log)
    means = {n: sum(r[n]["reward"] for r in res.summary["per_seed"]) / len(res.summary["per_seed"])
             for n in res.summary["policies"]}  # fmt: skip
    return {"report": str(written), "exploration": res.summary["exploration"], "mean_test_reward": means,
            "comparisons": [{k: c[k] for k in ("a", "b", "metric", "value", "lo", "hi")} for c in res.summary["comparisons"]],
            "ope_covers_truth": [r["dr"]["covers_truth"] for r in res.summary["ope"]],
            "policy": policy, "seconds": res.summary["seconds"]}  # fmt: skip
