"""The bandit routes of `llmfeat serve` on a real loopback server: /rank, /reward, bad input, hot reload of
a new policy under load, and a SIGKILL that loses no acknowledged reward."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from llmfeat.bandit.events import EventLog
from llmfeat.bandit.features import FeatureSpace
from llmfeat.bandit.policy import PolicyHolder, VWPolicy, policy_root, publish_policy
from llmfeat.bandit.service import BanditService, ParquetFeatures
from llmfeat.retrieval import index as ix
from llmfeat.retrieval.serve import RetrieverHolder, create_app
from tests.services import running
from tests.synthetic import config, make_data

REPO = Path(__file__).resolve().parents[2]


def _publish(data_dir: Path, vectors: np.ndarray, exploration: str = "--epsilon 0.2") -> str:
    space = FeatureSpace.fit(vectors, 8)
    return publish_policy(
        policy_root(data_dir), VWPolicy(space, exploration, "-q UA -q HA", seed=1), {"test": True}
    )


@pytest.fixture()
def syn(tmp_path):
    data = make_data(tmp_path / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    _publish(data.data_dir, data.vectors)
    return data


def _service(syn, window_s: float = 3600.0) -> BanditService:
    return BanditService(PolicyHolder(policy_root(syn.data_dir)), ParquetFeatures(syn.data_dir, "default"),
                         EventLog(syn.data_dir / "bandit" / "events.sqlite"), candidates=50,
                         reward_window_s=window_s, k_max=50)  # fmt: skip


@pytest.fixture()
def client(syn):
    bandit = _service(syn)
    app = create_app(RetrieverHolder.from_config(config(syn.data_dir)), k_max=50, bandit=bandit)
    with running(app) as url, httpx.Client(base_url=url, timeout=20) as c:
        yield c, bandit


def test_rank_then_reward_once(syn, client):
    c, bandit = client
    user = syn.user_ids[0]
    r = c.post("/rank", json={"user_id": user, "k": 5, "context": {"time": "2024-03-01T20:30:00+00:00"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 5 and body["results"][0] == body["chosen"]
    assert 0 < body["propensity"] <= 1 and body["propensity"] == body["chosen"]["probability"]
    assert not {h["item_id"] for h in body["results"]} & syn.seen[user]  # FAISS candidates skip seen items
    probs = [h["probability"] for h in body["results"][1:]]
    assert probs == sorted(probs, reverse=True)
    liked = {i for n, i in enumerate(sorted(syn.seen[user])) if n % 2}  # synthetic.py: label = n % 2
    for h in body["results"]:
        assert 1 <= len(h["because"]) <= 3 and {b["item_id"] for b in h["because"]} <= liked
        assert h["item_id"] not in {b["item_id"] for b in h["because"]}
        sims = [b["similarity"] for b in h["because"]]
        assert sims == sorted(sims, reverse=True) and h["because"][0]["title"].startswith("Item ")
    assert (
        list(EventLog(bandit.events.path, readonly=True).decisions(default_reward=None)) == []
    )  # no reward yet
    decisions = list(EventLog(bandit.events.path, readonly=True).decisions())
    assert [d.event_id for d in decisions] == [body["event_id"]]
    d = decisions[0]
    assert d.item_ids[d.chosen] == body["chosen"]["item_id"] and d.propensity == pytest.approx(
        body["propensity"]
    )
    assert (
        d.pmf.sum() == pytest.approx(1.0)
        and len(d.item_ids) == 50
        and d.context["time"].startswith("2024-03-01T20:30")
    )
    assert d.shared[d.shared.shape[0] - 11 + 3] == 1.0  # 20:30 -> the last time-of-day bucket

    ok = c.post("/reward", json={"event_id": body["event_id"], "reward": 1})
    assert ok.status_code == 200 and ok.json()["item_id"] == body["chosen"]["item_id"], ok.text
    again = c.post("/reward", json={"event_id": body["event_id"], "reward": 1})
    assert again.status_code == 409 and "already has its reward" in again.json()["detail"]
    assert bandit.events.counts() == {"decisions": 1, "rewards": 1, "reward_sum": 1.0}

    given = ["i0003", "i0100", "i0007", "i0100"]
    r = c.post("/rank", json={"user_id": user, "item_ids": given})
    assert r.status_code == 200, r.text
    assert sorted(h["item_id"] for h in r.json()["results"]) == ["i0003", "i0007", "i0100"]
    assert sum(h["probability"] for h in r.json()["results"]) == pytest.approx(1.0)
    info = c.get("/bandit/policy").json()
    assert info["events"]["decisions"] == 2 and info["exploration"] == "--epsilon 0.2"


def test_recommendations_carry_explanations(syn, client):
    c, _ = client
    user = syn.user_ids[1]
    liked = {i for n, i in enumerate(sorted(syn.seen[user])) if n % 2}
    r = c.get(f"/users/{user}/recommendations", params={"k": 4})
    assert r.status_code == 200
    for hit in r.json()["results"]:
        assert 1 <= len(hit["because"]) <= 3 and {b["item_id"] for b in hit["because"]} <= liked
    assert all(h["because"] == [] for h in c.get("/items/i0001/similar", params={"k": 3}).json()["results"])


@pytest.mark.parametrize(
    "route, payload, status, message",
    [
        ("/rank", {"user_id": "ghost", "k": 5}, 404, "unknown user 'ghost'"),
        ("/rank", {"user_id": "u000", "item_ids": []}, 422, ""),
        ("/rank", {"user_id": "u000", "item_ids": ["i0001", "nope"]}, 404, "unknown item 'nope'"),
        ("/rank", {"user_id": "u000", "k": 5, "item_ids": ["i0001"]}, 422, "not both"),
        ("/rank", {"user_id": "u000", "k": 0}, 422, ""),
        ("/rank", {"user_id": "u000", "k": 5, "context": {"time": "yesterday"}}, 422, "ISO 8601"),
        ("/rank", {"user_id": "u000", "k": 5, "extra": 1}, 422, ""),
        ("/reward", {"event_id": "0" * 32, "reward": 1}, 404, "unknown event_id"),
        ("/reward", {"event_id": "abc", "reward": 2}, 422, ""),
        ("/reward", {"event_id": "abc"}, 422, ""),
    ],
)
def test_bad_input_is_a_clear_4xx(client, route, payload, status, message):
    c, bandit = client
    r = c.post(route, json=payload)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()["detail"])
    assert bandit.events.counts()["rewards"] == 0


def test_malformed_json_and_expired_reward(syn):
    bandit = _service(syn, window_s=0.3)
    app = create_app(RetrieverHolder.from_config(config(syn.data_dir)), k_max=50, bandit=bandit)
    with running(app) as url, httpx.Client(base_url=url, timeout=20) as c:
        bad = c.post(
            "/rank", content=b'{"user_id": "u000", "k": ', headers={"content-type": "application/json"}
        )
        assert bad.status_code == 422 and "JSON" in bad.text
        event = c.post("/rank", json={"user_id": "u001", "k": 3}).json()["event_id"]
        time.sleep(0.5)
        late = c.post("/reward", json={"event_id": event, "reward": 1})
        assert late.status_code == 410 and "reward window" in late.json()["detail"]
        assert bandit.events.counts()["rewards"] == 0


def test_policy_hot_reload_during_requests_fails_none(syn):
    bandit = _service(syn)
    app = create_app(RetrieverHolder.from_config(config(syn.data_dir)), k_max=50, bandit=bandit,
                     reload_interval_s=0.05)  # fmt: skip
    first = bandit.policies.get().version
    failures: list[str] = []
    seen: dict[int, list[str]] = {}
    stop = threading.Event()

    def hammer(url: str, n: int) -> None:
        seq = seen.setdefault(n, [])
        with httpx.Client(base_url=url, timeout=20) as c:
            while not stop.is_set():
                r = c.post("/rank", json={"user_id": syn.user_ids[n], "k": 10})
                if r.status_code != 200 or len(r.json()["results"]) != 10:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seq.append(r.json()["policy_version"])

    with running(app) as url:
        threads = [threading.Thread(target=hammer, args=(url, n)) for n in range(4)]
        for t in threads:
            t.start()
        published = [first]
        try:
            for k in range(3):
                time.sleep(0.3)
                published.append(
                    _publish(syn.data_dir, syn.vectors, ["--squarecb", "--softmax", "--bag 3"][k])
                )
                r = httpx.post(f"{url}/bandit/reload", timeout=20)
                assert r.status_code == 200 and r.json()["policy_version"] == published[-1], r.text
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        final = httpx.get(f"{url}/bandit/policy").json()
    assert not failures, failures[:5]
    assert final["policy_version"] == published[-1] and final["exploration"] == "--bag 3"
    for seq in seen.values():
        assert seq and [published.index(v) for v in seq] == sorted(published.index(v) for v in seq)
    assert {v for seq in seen.values() for v in seq} >= {published[0], published[-1]}


def _serve(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "llmfeat.cli", "serve", "-s", "serve.user_source=parquet", "--data-dir",
           str(data_dir), "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/bandit/policy", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "llmfeat serve did not come up"
        time.sleep(0.2)


def test_sigkill_loses_no_acknowledged_reward(syn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = _serve(syn.data_dir, port)
    acked: list[str] = []
    unrewarded: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            ranked = 0
            while not stop.is_set():
                try:
                    event = c.post("/rank", json={"user_id": syn.user_ids[n], "k": 5}).json()["event_id"]
                    ranked += 1
                    if ranked % 3 == 0:  # every third decision is left without a reward
                        unrewarded.append(event)
                        continue
                    if c.post("/reward", json={"event_id": event, "reward": 1}).status_code == 200:
                        acked.append(event)
                except httpx.TransportError:
                    return  # the server died mid-request: that request was never acknowledged

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60  # a loaded machine acknowledges slowly: wait for a few, bounded
        while len(acked) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # no shutdown code runs, whatever is in flight
        proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 5, "too few rewards acknowledged before the kill to mean anything"
    log = EventLog(syn.data_dir / "bandit" / "events.sqlite", readonly=True)
    rewarded = {d.event_id for d in log.decisions(default_reward=None)}
    assert set(acked) <= rewarded
    log.close()
    proc = _serve(syn.data_dir, port)  # restarted: the rewards are still counted once
    try:
        r = httpx.post(f"{url}/reward", json={"event_id": acked[0], "reward": 1}, timeout=10)
        assert r.status_code == 409
        if unrewarded:
            assert (
                httpx.post(
                    f"{url}/reward", json={"event_id": unrewarded[0], "reward": 1}, timeout=10
                ).status_code
                == 200
            )
        counts = httpx.get(f"{url}/bandit/policy", timeout=10).json()["events"]
        assert counts["rewards"] == len(rewarded) + (1 if unrewarded else 0)
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.spark
def test_rank_reads_its_features_from_the_feast_online_store(pit_day1, tmp_path):
    """The default feature source: the ranker's Feast lookup. The logged rows are the online store's values."""
    import shutil

    from llmfeat.bandit.features import action_rows, shared_row
    from llmfeat.core.config import load_config
    from llmfeat.features.publish import open_store
    from llmfeat.retrieval.index import index_root, load_version
    from tests.pit_runs import pit_overrides

    data_dir = tmp_path / "data"
    shutil.copytree(pit_day1, data_dir, symlinks=True)  # the index's `current` is a relative symlink
    cfg = load_config(None, pit_overrides(data_dir))
    vectors = load_version(index_root(data_dir, "default")).vectors
    space = FeatureSpace.fit(vectors, 0)  # three items: the full vectors
    publish_policy(policy_root(data_dir), VWPolicy(space, "--epsilon 0.2", "-q HA", seed=1), {})
    bandit = BanditService.from_config(cfg)
    app = create_app(RetrieverHolder.from_config(cfg), bandit=bandit)
    with running(app) as url, httpx.Client(base_url=url, timeout=20) as c:
        r = c.post(
            "/rank",
            json={"user_id": "U1", "item_ids": ["C", "A", "B"], "context": {"time": "2024-01-05T09:00:00Z"}},
        )
        assert r.status_code == 200, r.text
        assert c.post("/rank", json={"user_id": "nobody", "item_ids": ["A"]}).status_code == 404
    (d,) = EventLog(bandit.events.path, readonly=True).decisions()
    import datetime as dt

    from llmfeat.bandit.service import CTR, IMPRESSIONS

    when = dt.datetime(2024, 1, 5, 9, tzinfo=dt.UTC)
    full = open_store(cfg).get_online_features(
        features=["user_text_embedding:embedding", "user_history_embedding:embedding", "user_history_embedding:n_clicks",
                  "item_text_embedding:embedding", "item_stats_packed:packed"],
        entity_rows=[{"user_id": "U1", "item_id": i} for i in ("C", "A", "B")], full_feature_names=True,
    ).to_dict()  # fmt: skip
    text, hist = full["user_text_embedding__embedding"][0], full["user_history_embedding__embedding"][0]
    packed = np.array(full["item_stats_packed__packed"], dtype=np.float64)
    expected_shared = shared_row(space, text, hist, full["user_history_embedding__n_clicks"][0] or 0, when)
    expected = action_rows(space, np.array(full["item_text_embedding__embedding"], np.float32), packed[:, IMPRESSIONS],
                           packed[:, CTR] * packed[:, IMPRESSIONS], text, hist)  # fmt: skip
    assert d.item_ids == ["C", "A", "B"]
    np.testing.assert_allclose(d.shared, expected_shared, atol=1e-6)
    np.testing.assert_allclose(d.actions, expected, atol=1e-6)
