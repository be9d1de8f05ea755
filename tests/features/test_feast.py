"""The Feast repository on real stores: point-in-time joins that a leak would change, online values equal to
the Parquet sources (SQLite, Redis, and `feast serve` over HTTP), and the ranker API's masks."""

import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmfeat.embedding.embed import embedding_paths
from llmfeat.feast.offline import historical_features
from llmfeat.features.feature_vector import build_feature_matrix
from llmfeat.features.online import OnlineFeatures
from llmfeat.features.publish import feast_dir, open_store, run_publish
from llmfeat.features.stats import packed_columns, stats_paths
from tests.services import free_port, start_redis

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def latest_at(table: Path, key: str, entity: str, t: pd.Timestamp) -> pd.Series | None:
    """The change-log row in force at t, computed with pandas straight from the Parquet table."""
    df = pq.read_table(table).to_pandas()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    rows = df[(df[key] == entity) & (df["event_timestamp"] <= t)].sort_values(
        ["event_timestamp", "created_timestamp"]
    )
    return None if rows.empty else rows.iloc[-1]


ENTITY_ROWS = pd.DataFrame(
    {
        "user_id": ["U1", "U2", "U1", "U2", "U1"],
        "item_id": ["A", "A", "B", "C", "A"],
        "event_timestamp": [
            utc("2024-01-02 10:00"),
            utc("2024-01-03 09:00"),
            utc("2024-01-04 15:00"),
            utc("2024-01-05 08:00"),
            utc("2024-01-06 12:00"),
        ],  # fmt: skip
        "label": [1, 0, 1, 1, -1],
    }
)


def test_point_in_time_join_sees_no_future(pit_store):
    cfg, store = pit_store
    out = historical_features(store, ENTITY_ROWS)
    assert len(out) == len(ENTITY_ROWS) and list(out["label"]) == list(ENTITY_ROWS["label"])
    total = packed_columns("impressions").index("impressions_total")
    item_totals = [
        None if v is None or isinstance(v, float) else int(v[total]) for v in out["item_stats_packed__packed"]
    ]
    # Each interaction itself is never counted; A's 01-02 click is visible from the 01-03 snapshot on.
    assert item_totals == [0, 1, 0, 0, 2]
    # U1's text: profile only at 01-02 10:00, then one, then two clicked titles
    assert list(out["user_text_embedding__n_history"]) == [0, 0, 1, 0, 2]
    hist = out["user_history_embedding__n_clicks"]
    assert pd.isna(hist.iloc[0]) and hist.iloc[2] == 1 and hist.iloc[4] == 2 and pd.isna(hist.iloc[3])

    # and every embedding equals the Parquet row in force at that time (computed independently)
    emb = embedding_paths(cfg.paths.data_dir, "default")
    for i, row in ENTITY_ROWS.iterrows():
        want = latest_at(emb.user_text, "user_id", row.user_id, row.event_timestamp)
        assert np.allclose(out["user_text_embedding__embedding"].iloc[i], want["embedding"])
        want_item = latest_at(emb.item_text, "item_id", row.item_id, row.event_timestamp)
        assert np.allclose(out["item_text_embedding__embedding"].iloc[i], want_item["embedding"])
        stats = latest_at(
            stats_paths(cfg.paths.data_dir).table("item_stats"), "item_id", row.item_id, row.event_timestamp
        )
        assert stats["event_timestamp"] <= row.event_timestamp
        assert np.allclose(out["item_stats_packed__packed"].iloc[i], stats["packed"], equal_nan=True)


def _online_equals_parquet(cfg, store):
    emb = embedding_paths(cfg.paths.data_dir, "default")
    online = store.get_online_features(
        features=["user_text_embedding:embedding", "user_text_embedding:n_history"],
        entity_rows=[{"user_id": "U1"}, {"user_id": "U2"}],
        full_feature_names=True,
    ).to_dict()
    for i, user in enumerate(["U1", "U2"]):
        want = latest_at(emb.user_text, "user_id", user, utc("2024-01-07"))
        assert np.allclose(online["user_text_embedding__embedding"][i], want["embedding"])
        assert online["user_text_embedding__n_history"][i] == want["n_history"]


def test_online_sqlite_holds_the_latest_rows(pit_store):
    cfg, store = pit_store
    assert cfg.feast.online_store == "sqlite" and (feast_dir(cfg) / "online.db").is_file()
    _online_equals_parquet(cfg, store)


def test_ranker_api_masks_unknown_ids(pit_store):
    cfg, store = pit_store
    rf = OnlineFeatures(store, dim=384).ranker_features(
        "U1", ["A", "nope", "C"], at=dt.datetime(2024, 1, 7, tzinfo=dt.UTC)
    )
    assert rf.matrix.shape == (3, 3 * 384 + len(rf.features.names) - 3 * 384)
    assert list(rf.item_known) == [True, False, True] and rf.user_known
    assert np.allclose(np.linalg.norm(rf.matrix, axis=1), 1.0)
    assert np.allclose(rf.matrix[1, 384 : 3 * 384], 0.0)
    assert rf.user_model_id.startswith("all-MiniLM-L6-v2@")
    unknown = OnlineFeatures(store, dim=384).ranker_features("ghost", ["A"])
    assert not unknown.user_known and list(unknown.item_known) == [True]


def _same_value(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(b, list | np.ndarray):
        return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)
    return a == b


def _ranker_matches_get_online_features(store, user_id: str, item_ids: list[str]) -> None:
    """OnlineFeatures' direct store reads == Feast's get_online_features on the ranker service, value by value,
    and the matrix equals one built from get_online_features' columns (the reference path)."""
    online = OnlineFeatures(store, dim=384)
    user, items = online.fetch(user_id, item_ids)
    refs = lambda views: [f"{r.view.name}:{f}" for r in views for f in r.features]  # noqa: E731
    ref_user = store.get_online_features(features=refs(online.user_views), entity_rows=[{"user_id": user_id}],
                                         full_feature_names=True).to_dict()  # fmt: skip
    ref_items = store.get_online_features(features=refs(online.item_views), full_feature_names=True,
                                          entity_rows=[{"item_id": i} for i in item_ids]).to_dict()  # fmt: skip
    for got, want in ((user, ref_user), (items, ref_items)):
        for name, values in got.items():
            assert len(values) == len(want[name]), name
            assert all(_same_value(a, b) for a, b in zip(values, want[name], strict=True)), name
    assert set(user) == {k for k in ref_user if "__" in k} and set(items) == {
        k for k in ref_items if "__" in k
    }
    at = dt.datetime(2024, 1, 7, tzinfo=dt.UTC)
    columns = {k: v for k, v in ref_items.items() if "__" in k and k in items}
    columns.update({k: v * len(item_ids) for k, v in ref_user.items() if k in user})
    want = build_feature_matrix(columns, at, 384, len(item_ids))
    got = online.ranker_features(user_id, item_ids, at=at)
    assert np.allclose(got.matrix, want.matrix, atol=1e-6)
    assert list(got.item_known) == list(want.item_known) and got.features.names == want.names


def test_ranker_reads_equal_get_online_features(pit_store):
    _, store = pit_store
    _ranker_matches_get_online_features(store, "U1", ["A", "nope", "C", "A", "B"])
    _ranker_matches_get_online_features(store, "ghost", ["C", "nope"])


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise TimeoutError(url)


@contextlib.contextmanager
def feast_serve(cfg):
    """The plain `feast serve` on the data directory's feast folder, as docs/features.md shows it: no
    environment, not run from the repository; yields the base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFEAT_")}
    cmd = [str(Path(sys.executable).parent / "feast"), "-c", str(feast_dir(cfg)), "serve", "-h", "127.0.0.1",
           "-p", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=Path(cfg.paths.data_dir).parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_feast_serve_over_http(pit_store):
    cfg, _ = pit_store
    with feast_serve(cfg) as url:
        body = {"features": ["item_text_embedding:embedding", "item_stats_packed:packed"],
                "entities": {"item_id": ["C", "A", "missing"]}, "full_feature_names": True}  # fmt: skip
        resp = httpx.post(f"{url}/get-online-features", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        names = data["metadata"]["feature_names"]  # columns come in this order, not the request's
        results = {name: r for name, r in zip(names, data["results"], strict=True)}
        emb = results["item_text_embedding__embedding"]
        want = latest_at(
            embedding_paths(cfg.paths.data_dir, "default").item_text, "item_id", "A", utc("2024-01-07")
        )
        assert np.allclose(emb["values"][1], want["embedding"], atol=1e-6)
        assert emb["statuses"][2] == "NOT_FOUND" and emb["values"][2] is None


def test_feast_serve_answers_the_ranker_service(movielens_store):
    """Feast's own server, `feature_service: ranker`, 1 user + 100 items: the documented request shape
    (docs/features.md: full_feature_names, since several views name a feature `embedding`) answers with
    every value present, equal to the SDK's; without it Feast refuses the collision (HTTP 500)."""
    cfg, store = movielens_store
    items = [str(i) for i in range(1, 101)]
    entities = {"user_id": ["1"] * len(items), "item_id": items}
    with feast_serve(cfg) as url, httpx.Client(timeout=60) as client:
        body = {"feature_service": "ranker", "entities": entities, "full_feature_names": True}
        resp = client.post(f"{url}/get-online-features", json=body)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        served = dict(zip(data["metadata"]["feature_names"], data["results"], strict=True))
        want = store.get_online_features(
            features=store.get_feature_service("ranker"),
            entity_rows=[{"user_id": "1", "item_id": i} for i in items],
            full_feature_names=True,
        ).to_dict()
        assert set(served) == set(want) and len(served) == 2 + 7  # the join keys + the service's features
        for name, column in served.items():
            assert column["statuses"] == ["PRESENT"] * len(items), name
            if name not in ("user_id", "item_id"):
                got = [np.asarray(v, dtype=float) if isinstance(v, list) else v for v in column["values"]]
                assert all(np.allclose(g, w) if isinstance(g, np.ndarray) else g == w
                           for g, w in zip(got, want[name], strict=True)), name  # fmt: skip
        short = client.post(f"{url}/get-online-features", json={**body, "full_feature_names": False})
        assert short.status_code == 500 and "FeatureNameCollisionError" in short.text


@pytest.fixture()
def redis_server(tmp_path):
    """A private redis-server on a free loopback port (the machine's own Redis is left alone)."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    if proc is None:
        pytest.skip("redis-server is not installed (.ci/run installs it from Debian's packages)")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_profile_matches_sqlite(pit_store, redis_server, tmp_path):
    cfg, sqlite_store = pit_store
    from llmfeat.core.config import load_config

    redis_cfg = load_config(None, [f"paths.data_dir={cfg.paths.data_dir}", "feast.online_store=redis",
                                   f"feast.redis_connection=127.0.0.1:{redis_server},db=0", "feast.project=llmfeat_redis"])  # fmt: skip
    run_publish(redis_cfg, dt.date(2024, 1, 7), log=lambda _: None)
    redis_store = open_store(redis_cfg)
    assert redis_store.config.online_store.type == "redis"
    _online_equals_parquet(redis_cfg, redis_store)
    refs = ["item_text_embedding:embedding", "item_stats_packed:packed"]
    rows = [{"item_id": i} for i in ("A", "B", "C")]
    a = redis_store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).to_dict()
    b = sqlite_store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).to_dict()
    for k in a:
        assert (
            np.allclose(np.array(a[k], dtype=float), np.array(b[k], dtype=float), equal_nan=True)
            if k != "item_id"
            else a[k] == b[k]
        )
    _ranker_matches_get_online_features(redis_store, "U2", ["C", "nope", "A"])
    at = dt.datetime(2024, 1, 7, tzinfo=dt.UTC)
    from_redis = OnlineFeatures(redis_store, dim=384).ranker_features("U1", ["B", "A", "zzz"], at=at)
    from_sqlite = OnlineFeatures(sqlite_store, dim=384).ranker_features("U1", ["B", "A", "zzz"], at=at)
    assert (
        np.allclose(from_redis.matrix, from_sqlite.matrix)
        and from_redis.user_model_id == from_sqlite.user_model_id
    )
    # restore the SQLite registry view for other tests (the Redis run wrote the same registry file)
    run_publish(cfg, dt.date(2024, 1, 7), log=lambda _: None)


def test_movielens_training_rows_are_point_in_time(movielens_store):
    cfg, store = movielens_store
    inter = pq.read_table(Path(cfg.paths.data_dir) / "canonical" / "interactions").to_pandas()
    rows = inter.sample(3000, random_state=1)[["user_id", "item_id", "event_ts", "label"]].rename(
        columns={"event_ts": "event_timestamp"}
    )
    out = historical_features(store, rows)
    assert len(out) == len(rows)
    emb = embedding_paths(cfg.paths.data_dir, "default")
    users = pq.read_table(emb.user_text).to_pandas()
    users["event_timestamp"] = pd.to_datetime(users["event_timestamp"], utc=True).astype(
        "datetime64[ns, UTC]"
    )
    users = users.sort_values("event_timestamp")
    probe = out[["user_id", "event_timestamp", "user_text_embedding__n_history"]].copy()
    probe["event_timestamp"] = pd.to_datetime(probe["event_timestamp"], utc=True).astype(
        "datetime64[ns, UTC]"
    )
    want = pd.merge_asof(probe.sort_values("event_timestamp").reset_index(), users[["user_id", "event_timestamp", "n_history"]],
                         on="event_timestamp", by="user_id", direction="backward").set_index("index").sort_index()  # fmt: skip
    got = out["user_text_embedding__n_history"]
    assert (got.isna() == want["n_history"].isna()).all()
    assert (got.dropna().astype(int) == want["n_history"].dropna().astype(int)).all()
    # a user's text at an interaction never includes that interaction (ML users rate in bursts: the same-day
    # ratings are invisible until the next snapshot), so n_history never exceeds the clicks strictly before
    clicks = inter[inter["label"] == 1]
    before = [
        ((clicks["user_id"] == u) & (clicks["event_ts"] < t)).sum()
        for u, t in zip(rows["user_id"], rows["event_timestamp"], strict=True)
    ]
    assert (got.fillna(0).astype(int).to_numpy() <= np.minimum(before, cfg.embed.user_history_n)).all()


def test_retrieval_queries_the_feast_online_store(pit_store):
    """user -> items with the user's vector from the online store, seen items excluded."""
    from llmfeat.retrieval.index import run_index
    from llmfeat.retrieval.retriever import Retriever

    cfg, store = pit_store
    run_index(cfg, dt.date(2024, 1, 7), log=lambda _: None)
    retriever = Retriever.load(cfg)  # serve.user_source defaults to feast
    assert type(retriever.users).__name__ == "FeastUserVectors"
    res = retriever.for_user("U1", k=3)
    assert set(res.ids) == {"C"}  # U1 interacted with A and B
    online = store.get_online_features(
        features=["user_text_embedding:embedding"], entity_rows=[{"user_id": "U1"}]
    ).to_dict()
    item_c = latest_at(
        embedding_paths(cfg.paths.data_dir, "default").item_text, "item_id", "C", utc("2024-01-07")
    )
    assert np.isclose(res.scores[0], float(np.dot(online["embedding"][0], item_c["embedding"])), atol=1e-5)
    # the service's way (serve.hold_user_vectors): the snapshot's users read once and held, the same answer
    held = Retriever.load(cfg, hold_users=True)
    assert type(held.users).__name__ == "HeldUserVectors" and len(held.users) >= 1
    again = held.for_user("U1", k=3)
    assert again.ids == res.ids and again.scores == res.scores
