"""Bandits without HTTP: the off-policy estimators, the event log, the simulator on a synthetic world,
policy training from the log, explanations."""

import datetime as dt
import sqlite3
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from llmfeat.bandit import ope
from llmfeat.bandit.events import DuplicateRewardError, EventLog, ExpiredEventError, UnknownEventError
from llmfeat.bandit.features import FeatureSpace, action_rows, shared_row, vw_lines
from llmfeat.bandit.nightly import train_policy
from llmfeat.bandit.policy import VWPolicy, load_policy, policy_root, publish_policy
from llmfeat.core.config import load_config
from llmfeat.retrieval import index as ix
from llmfeat.retrieval.retriever import Retriever
from tests.bandit_world import synthetic_world
from tests.synthetic import config, make_data


def _logged_problem(n: int, seed: int = 0):
    """Arm 1 pays 0.8, the others 0.2; the logger prefers arm 0 (0.6, others 0.1); the target always plays 1."""
    rng = np.random.default_rng(seed)
    mu = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    means = np.array([0.2, 0.8, 0.2, 0.2, 0.2])
    a = rng.choice(5, size=n, p=mu)
    r = (rng.random(n) < means[a]).astype(float)
    target = (a == 1).astype(float)
    q = np.tile(np.array([0.3, 0.6, 0.3, 0.3, 0.3]), (n, 1))  # a deliberately wrong reward model
    return a, r, mu[a], target, q


def test_estimators_cover_the_truth_and_wrong_propensities_are_caught():
    a, r, p, target, q = _logged_problem(4000)
    logged = ope.Logged(r, p, target, dm=q[:, 1], q_logged=q[np.arange(len(a)), a])
    est = ope.estimate(logged, seed=1)
    for name in ("ips", "snips", "dr"):
        assert est[name].contains(0.8), (name, est[name])
        assert est[name].hi - est[name].lo < 0.2
    # Logging a wrong propensity (uniform 0.2 instead of what the logger did) biases IPS far off the truth.
    wrong = ope.estimate(ope.Logged(r, np.full(len(a), 0.2), target), seed=1)
    assert not wrong["ips"].contains(0.8) and wrong["ips"].value < 0.5
    with pytest.raises(ValueError, match="propensities"):
        ope.estimate(ope.Logged(r, np.zeros(len(a)), target))


def test_mean_interval_is_student_t():
    e = ope.mean_interval([1.0, 2.0, 3.0])
    assert e.value == 2.0 and e.lo == pytest.approx(2.0 - 4.302653 * 1.0 / np.sqrt(3), rel=1e-5)


def _space():
    return FeatureSpace.fit(np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32), 8)


def _rows(space, n: int = 4):
    rng = np.random.default_rng(1)
    items = rng.standard_normal((n, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    shared = shared_row(space, items[0], None, 3, dt.datetime(2024, 1, 3, 13, tzinfo=dt.UTC))
    return shared, action_rows(space, items, np.array([0, 5, 10, 0]), np.array([0, 1, 9, 0]), items[0], None)


def test_features_and_vw_text():
    space = _space()
    shared, actions = _rows(space)
    assert shared.shape == (space.shared_width,) and actions.shape == (4, space.action_width)
    ctx = shared[2 * space.proj :]
    assert list(ctx[:3]) == [1.0, 0.0, pytest.approx(np.log1p(3))]
    assert ctx[3 + 2] == 1.0 and ctx[7 + 2] == 1.0  # 13:00 -> bucket 2; 2024-01-03 is a Wednesday
    stats = actions[:, space.proj :]
    assert stats[0, 0] == pytest.approx(1.0)  # cos(user text, item 0) where the user text is item 0
    assert list(stats[:, 4]) == [1.0, 0.0, 0.0, 1.0]  # cold = no impression
    assert stats[2, 3] == pytest.approx((9 + 5) / (10 + 10))  # smoothed CTR
    lines = vw_lines(space, shared, actions, label=(2, -1.0, 0.25))
    assert lines[0].startswith("shared |U ") and lines[3].startswith("0:-1:0.25 |A ") and len(lines) == 5
    assert FeatureSpace.fit(np.eye(16, dtype=np.float32), 0).matrix is None  # 0: full vectors


def test_event_log_is_append_only_and_counts_a_reward_once(tmp_path):
    log = EventLog(tmp_path / "e.sqlite")
    space = _space()
    shared, actions = _rows(space)
    pmf = np.array([0.1, 0.2, 0.3, 0.4])
    log.log_decision(event_id="e1", ts=1000.0, user_id="u", policy_version="v", space_id=space.id,
                     item_ids=["a", "b", "c", "d"], chosen=2, pmf=pmf, shared=shared, actions=actions)  # fmt: skip
    with pytest.raises(UnknownEventError, match="unknown event_id 'nope'"):
        log.add_reward("nope", 1, window_s=60, now=1001)
    with pytest.raises(ExpiredEventError, match="reward window"):
        log.add_reward("e1", 1, window_s=60, now=1061)
    results: list = []

    def reward() -> None:
        try:
            results.append(log.add_reward("e1", 1, window_s=60, now=1010))
        except DuplicateRewardError as exc:
            results.append(exc)

    threads = [threading.Thread(target=reward) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, dict) for r in results) == 1 and results.count(None) == 0
    assert log.counts() == {"decisions": 1, "rewards": 1, "reward_sum": 1.0}
    (d,) = log.decisions()
    assert d.item_ids[d.chosen] == "c" and d.propensity == 0.3 and d.reward == 1.0
    assert np.array_equal(d.actions, actions) and np.array_equal(d.shared, shared)
    raw = sqlite3.connect(tmp_path / "e.sqlite")
    for sql in ("UPDATE rewards SET reward = 5", "DELETE FROM decisions", "UPDATE decisions SET chosen = 0"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute(sql)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_simulator_on_a_synthetic_world(tmp_path):
    from llmfeat.bandit.report import plot_curves, section
    from llmfeat.bandit.simulate import simulate

    world = synthetic_world(n_items=150, n_users=40)
    cfg = load_config(None, ["bandit.proj_dim=8", "bandit.sim_max_sessions=120", "bandit.sim_warmup_sessions=120",
                             "bandit.sim_seeds=2", "bandit.explorers=['--squarecb', '--bag 3']"])  # fmt: skip
    res = simulate(cfg, dt.date(2024, 5, 1), world=world, log=lambda _: None)
    s = res.summary
    assert s["exploration"] in ("--squarecb", "--bag 3") and len(s["selection"]) == 2
    assert len(s["per_seed"]) == 2 and s["sessions"]["test"] == 120
    for row in s["per_seed"]:
        assert row["vw"]["reward"] > 2 * row["random"]["reward"]  # ~120 vs ~30: the features carry the taste
        assert {r["decisions"] for k, r in row.items() if k != "seed"} == {s["decisions"]["test"]}
    vs_random = next(c for c in s["comparisons"] if c["b"] == "random")
    assert vs_random["session_bootstrap"]["lo"] > 0 and vs_random["value"] > 0
    for r in s["ope"]:
        assert 0 <= r["true_value"] <= 1 and r["dr"]["lo"] <= r["dr"]["value"] <= r["dr"]["hi"]
    assert len(res.curves["vw"]) == 2 and len(res.curves["vw"][0]["rewards"]) == s["decisions"]["test"]
    text = section(s, plot_curves(tmp_path, res.curves))
    assert "VW policy" in text and (tmp_path / "bandit_curves.png").stat().st_size > 10_000


def test_policy_trained_on_the_event_log_learns_what_was_rewarded(tmp_path):
    syn = make_data(tmp_path / "data")
    cfg = config(syn.data_dir, "bandit.proj_dim=8", "bandit.exploration=--epsilon 0.1")
    ix.run_index(cfg, log=lambda _: None)
    space = FeatureSpace.fit(syn.vectors, 8)
    first = publish_policy(policy_root(syn.data_dir), VWPolicy(space, "--epsilon 0.1", seed=1), {})
    log = EventLog(syn.data_dir / "bandit" / "events.sqlite")
    rng = np.random.default_rng(0)
    good = 0  # item row 0 of every slate (a fixed item) is the one that pays
    for n in range(300):
        slate = [0, *rng.choice(np.arange(1, 240), 5, replace=False)]
        user = syn.user_vectors[n % 12]
        shared = shared_row(space, user, None, 0, dt.datetime(2024, 3, 1, tzinfo=dt.UTC))
        actions = action_rows(space, syn.vectors[slate], np.zeros(6), np.zeros(6), user, None)
        chosen = int(rng.integers(6))
        log.log_decision(event_id=f"e{n}", ts=1000.0 + n, user_id="u", policy_version=first, space_id=space.id,
                         item_ids=[syn.item_ids[i] for i in slate], chosen=chosen, pmf=np.full(6, 1 / 6),
                         shared=shared, actions=actions)  # fmt: skip
        if chosen == good:
            log.add_reward(f"e{n}", 1.0, window_s=1e9, now=1000.0 + n)
    out = train_policy(cfg, now=1e10, log=lambda _: None)
    assert out["logged_decisions"] == 300 and out["simulated_decisions"] == 0
    loaded = load_policy(policy_root(syn.data_dir))
    assert loaded.version == out["version"] != first and loaded.space.id == space.id
    wins = 0
    for n in range(20):
        slate = [0, *rng.choice(np.arange(1, 240), 5, replace=False)]
        shared = shared_row(space, syn.user_vectors[n % 12], None, 0, dt.datetime(2024, 3, 1, tzinfo=dt.UTC))
        actions = action_rows(
            space, syn.vectors[slate], np.zeros(6), np.zeros(6), syn.user_vectors[n % 12], None
        )
        wins += int(np.argmax(loaded.policy.pmf(shared, actions)) == 0)
    assert wins >= 18
    # While a window is open an unrewarded decision is left out (its reward may still come); a rewarded one is
    # final (a reward counts once) and is learnt.
    rewarded = log.counts()["rewards"]
    assert (
        0 < rewarded < 300
        and train_policy(cfg, now=1000.0, log=lambda _: None)["logged_decisions"] == rewarded
    )


def test_explanations_in_retrieval_and_the_cli(tmp_path):
    syn = make_data(tmp_path / "data")
    cfg = config(syn.data_dir)
    ix.run_index(cfg, log=lambda _: None)
    r = Retriever.load(cfg)
    user = syn.user_ids[0]
    liked = [i for n, i in enumerate(sorted(syn.seen[user])) if n % 2]
    res = r.for_user(user, 5)
    because = r.explain(user, res.ids, 3)
    for item, why in zip(res.ids, because, strict=True):
        exact = sorted(((float(r.item_vector(item) @ r.item_vector(i)), i) for i in liked), reverse=True)[:3]
        assert [(b.item_id, round(b.similarity, 5)) for b in why] == [(i, round(s, 5)) for s, i in exact]
        assert why[0].title == f"Item {why[0].item_id}"
    assert r.explain(liked[0], ["i0001"]) == [[]]  # an id with no liked history gets no explanation
    assert all(b.item_id != liked[0] for b in r.explain(user, [liked[0]])[0])  # never explained by itself
    from llmfeat.cli import app

    out = CliRunner().invoke(app, ["retrieve", "--user", user, "-k", "3", "--data-dir", str(syn.data_dir),
                                   "-s", "serve.user_source=parquet", "-s", "index.tune_queries=100"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "because you liked" in out.output and f"Item {because[0][0].item_id}" in out.output


def test_bandit_reports_go_to_the_data_dirs_reports_unless_told_otherwise(tmp_path):
    """``paths.reports_dir`` unset means ``<data_dir>/reports`` (it used to reach ``Path(None)`` and crash)."""
    from llmfeat.bandit.evaluate import write_ope_report

    est = {"value": 0.5, "lo": 0.4, "hi": 0.6}
    result = {"decisions": 3, "rewarded": 1, "event_log": "events.sqlite",
              "rows": [{"policy": "uniform random", "ips": est, "snips": est, "dr": est}]}  # fmt: skip
    path = write_ope_report(load_config(None, [f"paths.data_dir={tmp_path / 'd'}"]), result)
    assert path.parent == (tmp_path / "d" / "reports" / "bandit").resolve()
    assert "| uniform random | 0.5000 [0.4000, 0.6000]" in path.read_text()
    other = load_config(None, [f"paths.data_dir={tmp_path / 'd'}", f"paths.reports_dir={tmp_path / 'r'}"])
    assert write_ope_report(other, result).parent == (tmp_path / "r" / "bandit").resolve()
