"""The ranker's in-process item feature cache on a real Feast store (SQLite online store, file registry):
values equal to the plain SDK path (get_online_features) value by value, keyed by the publish version
(stale on purpose until the registry records a new materialisation, then refreshed), users read per
request. A tiny repository written here, so no Spark is needed."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.repo_config import RegistryConfig, RepoConfig
from feast.types import Array, Float32, Int32, String

from llmfeat.features.feature_vector import build_feature_matrix
from llmfeat.features.online import OnlineFeatures
from llmfeat.features.stats import packed_columns

DIM = 4
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
AT = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
W_ITEM, W_USER = len(packed_columns("impressions")), len(packed_columns("events"))


def _vec(seed: int, n: int = DIM) -> list[float]:
    v = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture()
def store(tmp_path):
    src = tmp_path / "src.parquet"
    pd.DataFrame({"user_id": ["x"], "item_id": ["x"], "event_timestamp": [T0]}).to_parquet(src)
    source = FileSource(path=str(src), timestamp_field="event_timestamp")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
    views = {
        "user_text_embedding": FeatureView(name="user_text_embedding", entities=[user], source=source, schema=[
            Field(name="embedding", dtype=Array(Float32)), Field(name="model_id", dtype=String)]),
        "user_history_embedding": FeatureView(name="user_history_embedding", entities=[user], source=source,
            schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="n_clicks", dtype=Int32)]),
        "user_stats_packed": FeatureView(name="user_stats_packed", entities=[user], source=source,
                                         schema=[Field(name="packed", dtype=Array(Float32))]),
        "item_text_embedding": FeatureView(name="item_text_embedding", entities=[item], source=source,
                                           schema=[Field(name="embedding", dtype=Array(Float32))]),
        "item_stats_packed": FeatureView(name="item_stats_packed", entities=[item], source=source,
                                         schema=[Field(name="packed", dtype=Array(Float32))]),
    }  # fmt: skip
    service = FeatureService(name="ranker", features=list(views.values()))
    config = RepoConfig(project="cache_test", provider="local", registry=RegistryConfig(path=str(tmp_path / "registry.db")),
                        online_store=SqliteOnlineStoreConfig(path=str(tmp_path / "online.db")), offline_store="file",
                        entity_key_serialization_version=3, repo_path=str(tmp_path))  # fmt: skip
    fs = FeatureStore(config=config)
    fs.apply([user, item, *views.values(), service])
    ts = pd.Timestamp(T0)
    fs.write_to_online_store(
        "user_text_embedding",
        pd.DataFrame(
            {"user_id": ["U1"], "embedding": [_vec(1)], "model_id": ["m@1"], "event_timestamp": [ts]}
        ),
    )
    fs.write_to_online_store(
        "user_stats_packed",
        pd.DataFrame(
            {"user_id": ["U1"], "packed": [[1.0] * (W_USER - 1) + [19_700.0]], "event_timestamp": [ts]}
        ),
    )
    fs.write_to_online_store(
        "item_text_embedding",
        pd.DataFrame(
            {
                "item_id": ["A", "B", "C"],
                "embedding": [_vec(2), _vec(3), _vec(4)],
                "event_timestamp": [ts] * 3,
            }
        ),
    )
    fs.write_to_online_store("item_stats_packed", pd.DataFrame(
        {"item_id": ["A", "B"], "packed": [[3.0] * (W_ITEM - 1) + [19_720.0], [0.5] * W_ITEM],
         "event_timestamp": [ts] * 2}))  # fmt: skip
    for name in views:  # as `llmfeat publish` leaves it: every view has a materialised interval
        fs.registry.apply_materialization(
            fs.get_feature_view(name), fs.project, T0 - dt.timedelta(days=1), T0
        )
    return fs


def reference(fs, user_id: str, item_ids: list[str]) -> np.ndarray:
    """The plain SDK path: two get_online_features calls, the same matrix assembly."""
    online = OnlineFeatures(fs, dim=DIM, cache_items=False)
    refs = lambda views: [f"{r.view.name}:{f}" for r in views for f in r.features]  # noqa: E731
    user = fs.get_online_features(features=refs(online.user_views), entity_rows=[{"user_id": user_id}],
                                  full_feature_names=True).to_dict()  # fmt: skip
    cols = fs.get_online_features(features=refs(online.item_views), full_feature_names=True,
                                  entity_rows=[{"item_id": i} for i in item_ids]).to_dict()  # fmt: skip
    cols.update({k: v * len(item_ids) for k, v in user.items()})
    return build_feature_matrix(cols, AT, DIM, len(item_ids)).matrix


def test_cached_items_equal_the_sdk_path_and_refresh_on_publish(store):
    items = ["A", "nope", "C", "A", "B"]
    online = OnlineFeatures(store, dim=DIM)
    assert online.item_cache is not None
    first = online.ranker_features("U1", items, at=AT)
    np.testing.assert_allclose(first.matrix, reference(store, "U1", items), atol=1e-6)
    assert list(first.item_known) == [True, False, True, True, True]
    cached, direct = (
        online.fetch("U1", items)[1],
        OnlineFeatures(store, DIM, cache_items=False).fetch("U1", items)[1],
    )
    for name, values in direct.items():  # value by value, None where the store has none
        for a, b in zip(cached[name], values, strict=True):
            assert (a is None and b is None) or np.array_equal(a, b), name
    assert online.item_cache.preload(["A", "B", "C", "D"]) == 5  # A, nope, C, B + D

    # a write to the online store without a publish: the cache keeps serving the published version ...
    store.write_to_online_store("item_text_embedding", pd.DataFrame(
        {"item_id": ["A"], "embedding": [_vec(99)], "event_timestamp": [pd.Timestamp(T0 + dt.timedelta(days=1))]}))  # fmt: skip
    # ... and users are read per request: a new user value shows at once
    store.write_to_online_store("user_text_embedding", pd.DataFrame(
        {"user_id": ["U1"], "embedding": [_vec(7)], "model_id": ["m@1"], "event_timestamp": [pd.Timestamp(T0 + dt.timedelta(days=1))]}))  # fmt: skip
    stale = online.ranker_features("U1", items, at=AT)
    fresh_ref = reference(store, "U1", items)
    with_a, without_a = [0, 3], [1, 2, 4]
    assert not np.allclose(
        stale.matrix[with_a], fresh_ref[with_a], atol=1e-6
    )  # A: still the published vector
    emb = "item_text_embedding__embedding"
    np.testing.assert_allclose(online.fetch("U1", ["A"])[1][emb][0], _vec(2), atol=1e-7)
    direct = OnlineFeatures(store, DIM, cache_items=False).fetch("U1", ["A"])[1]
    np.testing.assert_allclose(direct[emb][0], _vec(99), atol=1e-7)
    np.testing.assert_allclose(
        stale.matrix[without_a], fresh_ref[without_a], atol=1e-6
    )  # the new user vector
    assert not np.allclose(stale.matrix[without_a], first.matrix[without_a], atol=1e-6)
    assert online.item_cache.refreshes == 0

    # the publish records its interval in the registry: the next request reads every cached item again
    view = store.get_feature_view("item_text_embedding")
    store.registry.apply_materialization(view, store.project, T0, T0 + dt.timedelta(days=1))
    before = online.item_cache.version
    after = online.ranker_features("U1", items, at=AT)
    assert online.item_cache.refreshes == 1 and online.item_cache.version != before
    np.testing.assert_allclose(after.matrix, fresh_ref, atol=1e-6)
    assert set(online.item_cache._state.values) == {"A", "nope", "C", "B", "D"}  # the hot set, re-read
    online.ranker_features("U1", items, at=AT)
    assert online.item_cache.refreshes == 1  # nothing published since: no more reads


def test_cache_bound_reads_through(store):
    online = OnlineFeatures(store, dim=DIM)
    online.item_cache.max_items = 2
    got = online.ranker_features("U1", ["A", "B", "C"], at=AT)
    np.testing.assert_allclose(got.matrix, reference(store, "U1", ["A", "B", "C"]), atol=1e-6)
    assert len(online.item_cache._state.values) <= 2


def test_user_vectors_direct_read_equals_get_online_features(store):
    from llmfeat.features.online import FeastUserVectors

    ids = ["U1", "ghost", "U1"]
    direct = FeastUserVectors(store, "text")
    plain = FeastUserVectors(store, "text", direct=False)
    got, want = direct.get(ids), plain.get(ids)
    np.testing.assert_array_equal(got[0], want[0])
    assert list(got[1]) == list(want[1]) == [True, False, True]
    assert got[2] == want[2] == "m@1"


def test_held_user_vectors_equal_the_plain_path_and_refresh_on_publish(store):
    """The retrieval service's held user vectors: the same values as the plain SDK path; a write to the online
    store shows only once the registry records a publish of the user view, on the next refresh."""
    from llmfeat.features.online import FeastUserVectors
    from llmfeat.retrieval.retriever import HeldUserVectors

    plain = FeastUserVectors(store, "text", direct=False)
    held = HeldUserVectors(FeastUserVectors(store, "text"), ["U1", "ghost"])
    assert len(held) == 1  # ghost has no vector: not held, read through
    ids = ["U1", "ghost", "U1"]
    got, want = held.get(ids), plain.get(ids)
    np.testing.assert_array_equal(got[0], want[0])
    assert list(got[1]) == list(want[1]) == [True, False, True] and got[2] == want[2] == "m@1"
    assert held.get(["U1"])[0].shape == (1, DIM) and held.refresh() is False  # nothing published since

    store.write_to_online_store("user_text_embedding", pd.DataFrame(
        {"user_id": ["U1", "U2"], "embedding": [_vec(7), _vec(8)], "model_id": ["m@1"] * 2,
         "event_timestamp": [pd.Timestamp(T0 + dt.timedelta(days=1))] * 2}))  # fmt: skip
    np.testing.assert_array_equal(held.get(["U1"])[0][0], np.float32(_vec(1)))  # the published version
    vecs, found, _ = held.get(["U2", "U1"])  # U2, not held, is read through (the online store as it is)
    assert list(found) == [True, True]
    np.testing.assert_array_equal(vecs, np.float32([_vec(8), _vec(1)]))
    assert held.refresh() is False

    before = held.version
    store.registry.apply_materialization(
        store.get_feature_view("user_text_embedding"), store.project, T0, T0 + dt.timedelta(days=1)
    )
    assert held.refresh() is True and held.version != before
    got, want = held.get(ids), plain.get(ids)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[0][0], np.float32(_vec(7)))
    assert len(held) == 1 and held.refresh() is False  # the same ids re-read (U2 was never held)
