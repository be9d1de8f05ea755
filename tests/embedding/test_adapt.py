"""The collaborative adapter: propagation by hand, the leakage canary, new items without retraining."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from llmfeat.core.config import AdaptConfig  # noqa: E402
from llmfeat.core.results import AdaptResult  # noqa: E402
from llmfeat.embedding import adapt as A  # noqa: E402
from llmfeat.retrieval import evaluate as E  # noqa: E402

SMALL = {"dim": 8, "hidden": 16, "layers": 2, "epochs": 3, "patience": 2, "batch_size": 16, "negatives": 8,
         "lr": 1e-2, "weight_decay": 0.0, "half_life_days": None, "seed": 3, "device": "cpu", "threads": 1,
         "temperature": 0.2}  # fmt: skip


def test_propagation_matches_a_hand_computed_graph():
    # users u0 -> {i0, i1}, u1 -> {i1, i2}; degrees u: 2, 2; i: 1, 2, 1
    X = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32))
    u0 = np.array([[1.0], [2.0]])
    i0 = np.array([[10.0], [20.0], [30.0]])
    a, b = 1 / np.sqrt(2 * 1), 1 / np.sqrt(2 * 2)  # 1/sqrt(d_u d_i)
    # layer 1: users from items, items from users
    u1 = np.array([[a * 10 + b * 20], [b * 20 + a * 30]])
    i1 = np.array([[a * 1], [b * 1 + b * 2], [a * 2]])
    # layer 2
    u2 = np.array([[a * i1[0, 0] + b * i1[1, 0]], [b * i1[1, 0] + a * i1[2, 0]]])
    i2 = np.array([[a * u1[0, 0]], [b * u1[0, 0] + b * u1[1, 0]], [a * u1[1, 0]]])
    want_u, want_i = (u0 + u1 + u2) / 3, (i0 + i1 + i2) / 3
    g = A.make_graph(X)
    got_u, got_i = A.propagate(
        g, torch.tensor(u0, dtype=torch.float32), torch.tensor(i0, dtype=torch.float32), 2
    )
    np.testing.assert_allclose(got_u.numpy(), want_u, rtol=1e-5)
    np.testing.assert_allclose(got_i.numpy(), want_i, rtol=1e-5)
    np_u, np_i = E.lightgcn_propagate(X, u0, i0, 2)  # the training-free baseline uses the same propagation
    np.testing.assert_allclose(np_u, want_u, rtol=1e-6)
    np.testing.assert_allclose(np_i, want_i, rtol=1e-6)
    # an isolated item keeps its layer-0 embedding (scaled): a new item's direction is its tower output
    X3 = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0]], dtype=np.float32))
    _, iso = A.propagate(A.make_graph(X3), torch.tensor(u0, dtype=torch.float32),
                         torch.tensor(i0, dtype=torch.float32), 2)  # fmt: skip
    assert iso[2, 0].item() == pytest.approx(30.0 / 3)


def _data(seed: int = 0, n_users: int = 40, n_items: int = 30):
    from tests.retrieval.test_evaluate import synthetic_data

    return synthetic_data(seed, n_users=n_users, n_items=n_items, days=60)


def _train(data: E.EvalData, cut: pd.Timestamp, **params):
    ctx = E.context(data, cut)
    inputs = A.make_inputs(ctx.X, ctx.item_vecs, None, None)
    res = A.train_adapter(ctx.X, ctx.click_u, ctx.click_i, ctx.click_age_days, inputs, {**SMALL, **params})
    return ctx, inputs, res


def test_no_click_at_or_after_the_snapshot_reaches_the_graph():
    """Leakage canary: scramble every click at or after the cut (and add clicks exactly at it): the graph,
    the trained weights and the published vectors must not change."""
    data = _data()
    cut = pd.Timestamp("2024-02-10")
    cut_np = np.datetime64("2024-02-10T00:00:00", "us")
    inter = data.inter.copy()
    late = inter["ts"].to_numpy() >= cut_np
    assert late.any() and (~late).any()
    rng = np.random.default_rng(1)
    inter.loc[late, "i"] = rng.integers(0, data.n_items, int(late.sum()))
    inter.loc[late, "label"] = 1
    at_cut = pd.DataFrame({"u": [0, 1, 2], "i": [5, 6, 7], "ts": [cut_np] * 3, "label": np.int8(1)})
    leaked = E.EvalData(data.user_ids, data.item_ids, pd.concat([inter, at_cut], ignore_index=True),
                        data.item_vecs, None, data.model_id)  # fmt: skip
    ctx_a, inp_a, res_a = _train(data, cut)
    ctx_b, inp_b, res_b = _train(leaked, cut)
    assert (ctx_a.X != ctx_b.X).nnz == 0
    last = data.inter[(data.inter["ts"] < cut_np) & (data.inter["label"] == 1)]
    assert ctx_a.X.nnz == len(last[["u", "i"]].drop_duplicates())
    ua, ia = res_a.model.vectors(ctx_a.X, inp_a)
    ub, ib = res_b.model.vectors(ctx_b.X, inp_b)
    np.testing.assert_array_equal(ua, ub)
    np.testing.assert_array_equal(ia, ib)


def test_a_new_item_gets_a_vector_without_retraining():
    data = _data(2)
    ctx, inputs, res = _train(data, pd.Timestamp("2024-02-10"))
    model = res.model
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    rng = np.random.default_rng(9)
    new = rng.standard_normal((1, data.item_vecs.shape[1])).astype(np.float32)
    new /= np.linalg.norm(new)
    v = model.item_vectors(new)
    assert v.shape == (1, SMALL["dim"]) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    # the same vector as the item gets inside the catalogue while it has no click yet
    X2 = sp.hstack([ctx.X, sp.csr_matrix((ctx.X.shape[0], 1))]).tocsr()
    inputs2 = A.make_inputs(X2, np.vstack([data.item_vecs, new]), None, None)
    _, items = model.vectors(X2, inputs2)
    np.testing.assert_allclose(items[-1], v[0], atol=1e-5)
    assert all(torch.equal(before[k], t) for k, t in model.module.state_dict().items())
    # and it is ranked among the others: its nearest catalogue items are not arbitrary
    assert np.isfinite(items @ v[0]).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_training_is_seeded(threads):
    """Same data, seed and threads: the same weights. With 2 threads the sparse propagation's backward added up
    in a thread-dependent order (this graph gave three checksums in three runs) until training switched on
    PyTorch's deterministic algorithms."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 400, 12_000), rng.integers(0, 600, 12_000)
    X = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(400, 600))
    X.data[:] = 1.0
    c = X.tocoo()
    vecs = rng.standard_normal((600, 32)).astype(np.float32)
    inputs = A.make_inputs(X, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), None, None)
    params = {**SMALL, "dim": 64, "hidden": 256, "batch_size": 1024, "negatives": 256, "epochs": 2,
              "threads": threads}  # fmt: skip
    a, b = (A.train_adapter(X, c.row, c.col, np.ones(len(c.row)), inputs, params) for _ in range(2))
    assert a.model.checksum() == b.model.checksum()
    np.testing.assert_array_equal(a.model.vectors(X, inputs)[1], b.model.vectors(X, inputs)[1])
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide switch is restored


def test_item_dropout_isolates_the_dropped_items_and_trains_them_from_text():
    data = _data(5)
    ctx = E.context(data, pd.Timestamp("2024-02-10"))
    inputs = A.make_inputs(ctx.X, ctx.item_vecs, None, None)
    clicked = np.nonzero(np.asarray(ctx.X.sum(axis=0)).ravel() > 0)[0]
    dropped = clicked[:3]
    graph, t = A._dropped_items_graph(ctx.X, inputs, dropped, "cpu")
    # the dropped items lose every edge (their vector is the tower output alone) and leave their users' histories
    assert (graph.item_degree[dropped] == 0).all() and (graph.item_degree[clicked[3:]] > 0).all()
    kept = sp.csr_matrix(ctx.X)[:, [i for i in range(ctx.X.shape[1]) if i not in set(dropped)]]
    assert graph.ui.to_dense().numpy().astype(bool).sum() == kept.nnz
    users_of_dropped = np.unique(sp.csr_matrix(ctx.X)[:, dropped].nonzero()[0])
    keep = (~np.isin(np.arange(ctx.X.shape[1]), dropped)).astype(np.float32)
    only = A.make_inputs(sp.csr_matrix(ctx.X) @ sp.diags(keep), inputs.item_x, None, None)
    np.testing.assert_allclose(t["user_hist_x"].numpy()[users_of_dropped], only.user_hist_x[users_of_dropped],
                               atol=1e-6)  # fmt: skip
    # training with it: the tower is trained (weights differ from plain training), seeded, and vectors are finite
    plain = A.train_adapter(ctx.X, ctx.click_u, ctx.click_i, ctx.click_age_days, inputs, SMALL)
    runs = [A.train_adapter(ctx.X, ctx.click_u, ctx.click_i, ctx.click_age_days, inputs,
                            {**SMALL, "item_dropout": 0.5}) for _ in range(2)]  # fmt: skip
    assert runs[0].model.checksum() == runs[1].model.checksum() != plain.model.checksum()
    assert np.isfinite(runs[0].model.vectors(ctx.X, inputs)[1]).all()


def test_fresh_slots_lift_the_best_items_without_clicks_and_nothing_else():
    base = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    fresh = np.array([[0.0, 0.0, 0.1, 0.9, 0.5], [0.9, 0.0, 0.0, 0.2, 0.0]])
    is_new = np.array([False, False, True, True, True])
    assert A.fresh_slot_scores(base, fresh, is_new, 0) is base
    out = A.fresh_slot_scores(base, fresh, is_new, 2)
    order = np.argsort(-out, axis=1)
    # user 0: the new items 3 and 4 (best fresh scores) first, in fresh order, then the base order
    assert order[0].tolist() == [3, 4, 0, 1, 2]
    # user 1: item 0 has the best fresh score but has clicks: only new items (3, then 2 or 4) are lifted
    assert order[1][:2].tolist()[0] == 3 and set(order[1][:2]) <= {2, 3, 4}
    assert order[1][2:].tolist() == [o for o in np.argsort(-base[1]) if o not in order[1][:2]]


def test_fresh_candidates_are_the_recent_releases_without_clicks():
    is_new = np.array([True, True, True, True, False, True])
    age = np.array([10.0, 59.5, 61.0, -3.0, 5.0, np.nan])  # days since release at the cut; NaN: unknown
    assert A.fresh_candidates(is_new, age, 60).tolist() == [True, True, False, False, False, False]
    assert A.fresh_candidates(is_new, age, None).tolist() == is_new.tolist()  # any item without clicks
    assert A.fresh_candidates(is_new, None, 60).tolist() == is_new.tolist()  # a catalogue without dates
    cfg = AdaptConfig(fresh_slots=[0, 2, 3], fresh_release_days=[30, None])
    assert A.fresh_grid(cfg) == [(0, None), (2, 30), (2, None), (3, 30), (3, None)]
    assert A.fresh_grid(cfg, dated=False) == [(0, None), (2, None), (3, None)]  # no dates: windows all "any"


def test_text_popularity_prior_is_fitted_on_clicked_items_and_given_to_the_others():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    true = rng.normal(size=8)
    log_pop = np.maximum(X @ true + 2.0, 0.0)
    clicked = np.ones(400, bool)
    clicked[::5] = False  # every fifth item has no clicks
    log_pop[~clicked] = 0.0  # what a popularity count says about them
    coef, b0 = A.text_popularity(X, log_pop, clicked, lam=1e-3)
    pred = A.predicted_popularity(X, coef, b0)
    assert np.corrcoef(pred[~clicked], np.maximum(X @ true + 2.0, 0)[~clicked])[0, 1] > 0.95
    # the items without clicks never enter the fit: changing their targets changes nothing
    other = log_pop.copy()
    other[~clicked] = 50.0
    np.testing.assert_allclose(A.text_popularity(X, other, clicked, lam=1e-3)[0], coef)
    prior = A.new_item_prior(log_pop, X, clicked, 2.0, 1e-3)
    np.testing.assert_array_equal(prior[clicked], log_pop[clicked])
    np.testing.assert_allclose(prior[~clicked], 2.0 * pred[~clicked])
    np.testing.assert_array_equal(A.new_item_prior(log_pop, X, clicked, 0.0, 1e-3), log_pop)  # off: as before
    assert (A.predicted_popularity(X, coef, -1000.0) == 0).all()  # never below 0


def _adapt_data_dir(tmp_path, model_id: str = "test-model@0001"):
    """tests/synthetic.py's data dir with clicks spread over the two months before the snapshot."""
    import pyarrow as pa

    from llmfeat.core import tables
    from llmfeat.data import schemas
    from tests.synthetic import AS_OF, make_data

    syn = make_data(tmp_path / "data", n_items=60, n_users=30, model_id=model_id)
    rng = np.random.default_rng(0)
    rows = []
    for n, u in enumerate(syn.user_ids):
        near = np.argsort(-(syn.vectors @ syn.user_vectors[n]))[:15]
        for j in rng.choice(near, 10, replace=False):
            day = pd.Timestamp(AS_OF, tz="UTC") - pd.Timedelta(minutes=int(rng.integers(100, 50 * 1440)))
            rows.append((u, syn.item_ids[j], day, 1))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "label"])
    inter["label"] = inter["label"].astype("int8")
    inter["impression_id"], inter["rating"], inter["dwell_s"] = None, np.nan, np.nan
    tables.write_snapshot(tmp_path / "data" / "canonical" / "interactions", AS_OF,
                          pa.Table.from_pandas(inter, schema=schemas.INTERACTIONS, preserve_index=False))  # fmt: skip
    return syn, AS_OF


def _adapt_cfg(data_dir, *extra):
    from tests.synthetic import config

    return config(data_dir, "adapt.dim=8", "adapt.hidden=16", "adapt.epochs=2", "adapt.batch_size=32",
                  "adapt.negatives=16", "adapt.temperatures=[0.2]", "adapt.threads=1", "adapt.device=cpu",
                  "adapt.validation_days=10", "index.tune_queries=20", *extra)  # fmt: skip


def test_adapted_set_is_written_indexed_retrievable_and_never_mixed(tmp_path, monkeypatch):
    from llmfeat.embedding.vectors import read_latest
    from llmfeat.retrieval.index import IndexModelMismatchError, check_model, run_index
    from llmfeat.retrieval.retriever import Retriever

    syn, as_of = _adapt_data_dir(tmp_path)
    cfg = _adapt_cfg(syn.data_dir)
    quiet = lambda m: None  # noqa: E731
    s = A.run_adapt(cfg, as_of, log=quiet)
    mid = s["model_id"]
    assert isinstance(s, AdaptResult) and s.model_id == mid and s.rows_written == sum(s.counts.values())
    assert mid.startswith("test-model@0001+adapter@") and mid.endswith(f"@graph={as_of.isoformat()}")
    root = syn.data_dir / "embeddings" / "adapted"
    items = read_latest(root / "item_text", "item_id")
    base = read_latest(syn.data_dir / "embeddings" / "default" / "item_text", "item_id")
    assert items.model_id == mid and list(items.ids) == list(base.ids)  # every item with a base vector
    np.testing.assert_allclose(np.linalg.norm(items.vectors, axis=1), 1.0, atol=1e-5)
    # the published weights reproduce the item vectors of items without clicks, and new items get one
    model, card = A.load_adapter(cfg)
    assert card["weights_sha256"] == model.checksum() and mid == card["model_id"]
    out_cfg = A.output_config(cfg)
    run_index(out_cfg, as_of, log=quiet)
    r = Retriever.load(out_cfg)
    res = r.for_user(syn.user_ids[0], 5)
    assert len(res.ids) == 5
    # hybrid: the nearest candidates re-ranked by cosine + weight x log(1 + clicks_7d) from item_stats
    _write_item_stats(syn, as_of)
    from llmfeat.retrieval.retriever import popularity_prior

    prior = popularity_prior(syn.data_dir, r._item_ids.tolist(), 7, as_of)
    assert prior.max() > 0 and prior[list(r._item_ids).index("i0003")] == pytest.approx(np.log1p(3))
    plain = r.for_user(syn.user_ids[0], 60)
    heavy = r.with_prior(prior, 100.0).for_user(syn.user_ids[0], 5, hybrid=True)
    assert heavy.method.startswith("hybrid") and set(heavy.ids) <= set(plain.ids)
    got = prior[r._row_of.get_indexer(heavy.ids)]
    assert list(got) == sorted(got, reverse=True)
    assert r.with_prior(prior, 0.0).for_user(syn.user_ids[0], 5, hybrid=True).ids == res.ids
    # fresh slots: the user's nearest items among those without clicks come first, then the hybrid ranking
    new_rows = np.nonzero(prior == 0)[0]
    seen = set(r._item_ids[r._seen.get(syn.user_ids[0], [])])
    fresh = r.with_prior(prior, 100.0, new_rows=new_rows, fresh_slots=2).for_user(
        syn.user_ids[0], 5, hybrid=True
    )
    want_new = [i for i in plain.ids if i in set(r._item_ids[new_rows])][:2]
    assert fresh.ids[:2] == want_new and not seen & set(fresh.ids) and fresh.method.endswith("+fresh(2)")
    assert fresh.ids[2:] == [i for i in heavy.ids if i not in want_new][:3]
    # the text-popularity prior of items without clicks (adapt.new_item_prior), as the retriever applies it:
    # the card's multiplier x the ridge prediction from the base set's frozen vectors
    from llmfeat.retrieval import retriever as R

    assert {"window_days", "weight", "new_item_prior", "fresh_slots", "fresh_release_days"} <= set(
        card["hybrid"]
    )
    coef = np.linspace(-1, 1, base.vectors.shape[1])
    crafted = {**card, "hybrid": {"window_days": 7, "weight": 1.0, "new_item_prior": 2.0, "fresh_slots": 0,
                                  "text_popularity": {"coef": coef.tolist(), "intercept": 3.0, "ridge": 1.0}}}  # fmt: skip
    new_ids = [i for i, p in zip(r._item_ids, prior, strict=True) if p == 0][:5]
    want = 2.0 * np.maximum(base.vectors[pd.Index(base.ids).get_indexer(new_ids)] @ coef + 3.0, 0)
    np.testing.assert_allclose(R.new_item_priors(cfg, crafted, new_ids, as_of), want, rtol=1e-5)
    with pytest.raises(R.ModelMismatchError, match="text-popularity prior"):
        R.new_item_priors(cfg, {**crafted, "base_model_id": "other-model@9999"}, new_ids, as_of)
    monkeypatch.setattr(A, "load_card", lambda _cfg: crafted)
    hyb = R.load_hybrid(out_cfg, r)
    zero_clicks = R.item_clicks(syn.data_dir, r._item_ids.tolist(), "clicks_total", as_of) == 0
    rows = r._row_of.get_indexer(new_ids)
    assert zero_clicks[rows].all()
    np.testing.assert_allclose(hyb._prior[rows], want, rtol=1e-5)
    np.testing.assert_allclose(hyb._prior[~zero_clicks], prior[~zero_clicks])  # clicked items: their own
    # served: the hybrid answer is the best of cos + weight x prior over the catalogue (new items included)
    user = syn.user_ids[0]
    got = hyb.for_user(user, 8, hybrid=True)
    everything = r.for_user(user, r.count)
    rows_all = r._row_of.get_indexer(everything.ids)
    brute = np.asarray(everything.scores) + 1.0 * hyb._prior[rows_all]
    assert got.ids == [everything.ids[j] for j in np.argsort(-brute, kind="stable")[:8]]
    assert set(got.ids) & set(new_ids)  # with this prior the new items do come up
    # fresh slots limited to recent releases (card: fresh_release_days): only items without clicks released in
    # the 30 days before the snapshot (items.released_at) may take them
    released = _release_some_items(syn, as_of)
    monkeypatch.setattr(A, "load_card", lambda _cfg: {**crafted, "hybrid": {**crafted["hybrid"], "fresh_slots": 2,
                                                                           "fresh_release_days": 30}})  # fmt: skip
    recent = R.load_hybrid(out_cfg, r)
    age = (pd.Timestamp(as_of) - released).dt.days  # NaN: unknown
    unclicked = set(r._item_ids[zero_clicks])
    recent_new = [i for i in age.index[(age >= 0) & (age <= 30)] if i in unclicked]
    want_rows = sorted(r._row_of.get_indexer(recent_new))
    assert sorted(recent._fresh_rows.tolist()) == want_rows and 0 < len(want_rows) < len(unclicked)
    got = recent.for_user(user, 5, hybrid=True)
    assert set(got.ids[:2]) <= set(recent_new) and got.method.endswith("+fresh(2)")
    # mixing refused: frozen user vectors against the adapted index, a set of another base, the base set
    with pytest.raises(IndexModelMismatchError):
        check_model(mid, "test-model@0001")
    with pytest.raises(A.AdaptedSetMismatchError):
        A.check_output_set({mid}, "other-model@9999", "adapted", "default")
    with pytest.raises(A.AdaptedSetMismatchError):
        A.run_adapt(_adapt_cfg(syn.data_dir, "adapt.output_set=default"), as_of, log=quiet)
    # a second run (new weights, same base) replaces the set whole: one model id in every table
    s2 = A.run_adapt(_adapt_cfg(syn.data_dir, "adapt.seed=8"), as_of, log=quiet)
    assert s2["model_id"] != mid
    for name, key in (("item_text", "item_id"), ("user_text", "user_id"), ("user_history", "user_id")):
        assert read_latest(root / name, key).model_id == s2["model_id"]
    assert A._existing_model_ids(root) == {s2["model_id"]}


def _release_some_items(syn, as_of) -> pd.Series:
    """Rewrite the canonical items snapshot with release dates: item j released j days before ``as_of`` (every
    third one unknown, the last one released after it). Returns released_at (naive) by item id."""
    import pyarrow as pa

    from llmfeat.core import tables
    from llmfeat.data import schemas

    root = syn.data_dir / "canonical" / "items"
    items = tables.read_snapshot(root, as_of).to_pandas()
    day = pd.Timestamp(as_of, tz="UTC")
    released = [None if j % 3 == 2 else day - pd.Timedelta(days=j) for j in range(len(items))]
    released[-1] = day + pd.Timedelta(days=5)
    items["released_at"] = pd.to_datetime(pd.Series(released), utc=True)
    tables.write_snapshot(
        root, as_of, pa.Table.from_pandas(items, schema=schemas.ITEMS, preserve_index=False)
    )
    return pd.Series(items["released_at"].dt.tz_localize(None).to_numpy(), index=items["item_id"])


def _write_item_stats(syn, as_of):
    import pyarrow as pa

    from llmfeat.core import tables
    from llmfeat.data import schemas

    ids = syn.item_ids
    ts = pd.Timestamp(as_of, tz="UTC") - pd.Timedelta(days=1)
    clicks = pa.array([j % 5 for j in range(len(ids))], pa.int32())
    windows = {f"clicks_{w}d": clicks for w in A.WINDOWS}  # every window the hybrid may choose
    t = pa.table({"item_id": pa.array(ids), **windows, "clicks_total": clicks,
                  "event_timestamp": pa.array([ts] * len(ids), schemas.UTC_TS),
                  "created_timestamp": pa.array([ts] * len(ids), schemas.UTC_TS)})  # fmt: skip
    tables.write_snapshot(syn.data_dir / "features" / "item_stats", ts.date(), t)


def test_nightly_runs_adapt_only_when_enabled_and_redoes_it_after_embed(tmp_path, monkeypatch):
    import datetime as dt

    from llmfeat import nightly
    from llmfeat.core.config import load_config

    calls: list = []

    def factory(cfg, as_of, spark, log, markers, faults=None):
        names = list(nightly.STAGES) + (["adapt"] if cfg.adapt.enabled else [])
        return {s: (lambda forced, s=s: calls.append((s, forced)) or {"stage": s}) for s in names}

    monkeypatch.setattr(nightly, "_stage_functions", factory)
    day = dt.date(2024, 3, 1)
    off = load_config(None, [f"paths.data_dir={tmp_path}"])
    nightly.run_nightly(off, day, log=lambda m: None)
    assert [c[0] for c in calls] == list(nightly.STAGES)
    calls.clear()
    on = load_config(None, [f"paths.data_dir={tmp_path}", "adapt.enabled=true"])
    summary = nightly.run_nightly(on, day, log=lambda m: None)
    assert calls == [("adapt", False)] and summary.results[-1].stage == "adapt"
    calls.clear()
    nightly.run_nightly(on, day, force=("embed",), log=lambda m: None)
    assert ("adapt", True) in calls and calls[-1] == ("adapt", True)


def test_the_service_answers_hybrid_requests_on_an_adapted_set_only(tmp_path):
    import httpx

    from llmfeat.retrieval.index import run_index
    from llmfeat.retrieval.retriever import Retriever, load_hybrid
    from llmfeat.retrieval.serve import RetrieverHolder, create_app
    from tests.services import running

    quiet = lambda m: None  # noqa: E731
    syn, as_of = _adapt_data_dir(tmp_path)
    cfg = _adapt_cfg(syn.data_dir)
    A.run_adapt(cfg, as_of, log=quiet)
    out_cfg = A.output_config(cfg)
    run_index(out_cfg, as_of, log=quiet)
    _write_item_stats(syn, as_of)
    user = syn.user_ids[0]
    want = load_hybrid(out_cfg, Retriever.load(out_cfg)).for_user(user, 5, hybrid=True)
    plain = Retriever.load(out_cfg).for_user(user, 5)
    url_path = f"/users/{user}/recommendations"
    with (
        running(create_app(RetrieverHolder.from_config(out_cfg))) as url,
        httpx.Client(base_url=url, timeout=20) as c,
    ):
        got = c.get(url_path, params={"k": 5, "hybrid": "true"}).json()
        assert [h["item_id"] for h in got["results"]] == want.ids and got["method"].startswith("hybrid")
        again = c.get(url_path, params={"k": 5, "hybrid": "true"})  # cached apart from the plain answer
        assert again.json()["results"] == got["results"] and again.headers.get("x-cache") == "hit"
        assert [h["item_id"] for h in c.get(url_path, params={"k": 5}).json()["results"]] == plain.ids
        posted = c.post(url_path, json={"k": 5, "hybrid": True}).json()
        assert [h["item_id"] for h in posted["results"]] == want.ids
        refused = c.get(url_path, params={"k": 5, "hybrid": "true", "allow": [want.ids[0]]})
        assert refused.status_code == 422 and "category filters only" in refused.json()["detail"]
    # the frozen set has no adapter card: a hybrid request is refused (409), a plain one is answered
    run_index(cfg, as_of, log=quiet)
    with (
        running(create_app(RetrieverHolder.from_config(cfg))) as url,
        httpx.Client(base_url=url, timeout=20) as c,
    ):
        refused = c.get(url_path, params={"k": 5, "hybrid": "true"})
        assert refused.status_code == 409 and "llmfeat adapt" in refused.json()["detail"]
        assert c.get(url_path, params={"k": 5}).status_code == 200
