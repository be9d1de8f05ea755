"""The rolling-origin retrieval evaluation: metrics by hand, and the canary that selection and the bootstrap
never read the test window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmfeat.core.config import EvaluateConfig
from llmfeat.retrieval import evaluate as E


def synthetic_data(seed: int = 0, n_users: int = 80, n_items: int = 50, days: int = 120) -> E.EvalData:
    """Users click items near their taste vector; item popularity drifts over time (so recency matters)."""
    rng = np.random.default_rng(seed)
    dim = 8
    items = rng.standard_normal((n_items, dim))
    users = rng.standard_normal((n_users, dim))
    rows = []
    start = np.datetime64("2024-01-01T00:00:00", "us")
    for u in range(n_users):
        first = rng.integers(0, days - 10)
        for _ in range(rng.integers(5, 30)):
            day = min(days - 1, first + rng.integers(0, 30))
            trend = np.exp(-((np.arange(n_items) / n_items * days - day) ** 2) / (2 * 30.0**2))
            released = np.arange(n_items) <= day / days * n_items * 1.1 + 5  # items appear over time
            p = np.exp(users[u] @ items.T / 2) * (0.2 + trend) * released
            i = rng.choice(n_items, p=p / p.sum())
            ts = start + np.timedelta64(int(day * 86400 + rng.integers(0, 86400)), "s")
            rows.append((u, i, ts, int(rng.random() < 0.7)))
    frame = pd.DataFrame(rows, columns=["u", "i", "ts", "label"]).drop_duplicates(["u", "i"])
    frame["ts"] = frame["ts"].astype("datetime64[us]")
    frame["label"] = frame["label"].astype(np.int8)
    frame = frame.sort_values(["ts", "u", "i"], kind="stable").reset_index(drop=True)
    vecs = items / np.linalg.norm(items, axis=1, keepdims=True)
    return E.EvalData(np.array([f"u{u}" for u in range(n_users)], dtype=object),
                      np.array([f"i{i}" for i in range(n_items)], dtype=object), frame, vecs.astype(np.float32),
                      None, "test-model@1")  # fmt: skip


def fast_cfg() -> EvaluateConfig:
    return EvaluateConfig(
        origins=2, span=0.4, ks=[5, 10], select_k=5, bootstrap=200, ease_lambdas=[1.0, 50.0]
    )


def fast_methods(cfg: EvaluateConfig) -> list[E.Method]:
    keep = {"random", "popularity", "recent_popularity", "ease", "ease+recent_pop", "lm_history", "textgcn"}
    return [m for m in E.baseline_methods(cfg) if m.name in keep]


def test_metrics_by_hand():
    tg = E.Targets(np.array([0, 1]), [np.array([3, 7]), np.array([2])], [np.array([7]), np.array([], int)],
                   np.array([True, False]))  # fmt: skip
    top = np.array([[7, 1, 3, 4], [0, 1, 5, 6]])
    m = E.user_metrics(top, tg, (2, 4))
    assert m["recall@2"].tolist() == [0.5, 0.0]
    assert m["recall@4"].tolist() == [1.0, 0.0]
    ideal = 1 + 1 / np.log2(3)
    assert m["ndcg@4"][0] == pytest.approx((1 + 1 / np.log2(4)) / ideal)
    assert m["cold_recall@2"][0] == 1.0 and np.isnan(m["cold_recall@2"][1])
    # The cold-start protocol's ranking is scored on the cold clicks only: item 7 at rank 2 of its own list.
    m = E.user_metrics(top, tg, (1, 2), cold_top=np.array([[5, 7, 0, 0], [5, 6, 0, 0]]))
    assert m["coldrank_recall@1"][0] == 0.0 and m["coldrank_recall@2"][0] == 1.0
    assert m["coldrank_ndcg@2"][0] == pytest.approx(1 / np.log2(3)) and np.isnan(m["coldrank_recall@2"][1])
    assert m["cold_recall@2"][0] == 1.0  # the full ranking's metrics are unchanged


def test_cold_only_ranks_only_items_without_clicks_before_the_cut():
    data = synthetic_data(3)
    cut = pd.Timestamp(data.inter["ts"].quantile(0.5)).floor("D")
    ctx = E.context(data, cut)
    warm = ctx.item_clicks > 0
    assert warm.any() and (~warm).sum() >= 3
    users = np.arange(5)
    popular_first = lambda u: np.tile(ctx.item_clicks.astype(float), (len(u), 1))  # noqa: E731
    top = E.rank_top(E.cold_only(popular_first, ctx)(users), ctx.seen[users], int((~warm).sum()))
    assert not warm[top].any()  # every candidate is an item without a click before the cut
    full = E.rank_top(popular_first(users), ctx.seen[users], 3)
    assert warm[full].all()  # while the plain ranking puts the clicked items first


def test_rank_top_excludes_seen_and_breaks_ties_by_index():
    import scipy.sparse as sp

    scores = np.array([[0.5, 0.9, 0.9, 0.1]])
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0]], dtype=np.float32))
    assert E.rank_top(scores, seen, 3).tolist() == [[2, 0, 3]]


def test_context_and_targets_use_only_the_right_windows():
    data = synthetic_data()
    cut = pd.Timestamp("2024-03-01")
    ctx = E.context(data, cut)
    before = data.inter[(data.inter["ts"] < np.datetime64("2024-03-01")) & (data.inter["label"] == 1)]
    assert ctx.X.nnz == len(before[["u", "i"]].drop_duplicates())
    tg = E.targets(data, ctx, cut, pd.Timestamp("2024-03-15"))
    for u, rel in zip(tg.users, tg.relevant, strict=True):
        assert not ctx.seen[u].toarray()[0, rel].any()  # items seen before the cut are never targets


def _alter_test_windows(data: E.EvalData, origins: list[E.Origin], seed: int = 99) -> E.EvalData:
    """The same data with every click in any test window moved to a random other item."""
    rng = np.random.default_rng(seed)
    inter = data.inter.copy()
    first_test = np.datetime64(E._naive(origins[0].t_test))
    m = inter["ts"].to_numpy() >= first_test
    inter.loc[m, "i"] = rng.integers(0, data.n_items, int(m.sum()))
    return E.EvalData(data.user_ids, data.item_ids, inter, data.item_vecs, None, data.model_id)


def test_selection_and_bootstrap_never_read_the_test_window():
    """Canary: scramble every test window. The hyperparameters chosen and their validation scores must not
    change (else selection read the test window), the test metrics must (else the canary is blind)."""
    cfg = fast_cfg()
    data = synthetic_data()
    origins = E.make_origins(data.inter["ts"].to_numpy(), cfg.origins, cfg.span)
    altered = _alter_test_windows(data, origins)
    # the windows depend on event times only, which the alteration keeps
    assert E.make_origins(altered.inter["ts"].to_numpy(), cfg.origins, cfg.span) == origins
    quiet = lambda m: None  # noqa: E731
    a = E.run_evaluation(data, cfg, fast_methods(cfg), quiet, compare=[("ease", "popularity")])
    b = E.run_evaluation(altered, cfg, fast_methods(cfg), quiet, compare=[("ease", "popularity")])
    # The validation window of origin 1 is the test window of origin 0 and is scrambled too: compare origin 0
    # here, and every origin against a copy whose events at or after its own t_test are garbage.
    assert a["origins"][0]["chosen"] == b["origins"][0]["chosen"]
    assert a["origins"][0]["validation"] == b["origins"][0]["validation"]
    for o in origins:
        real = E.run_origin(data, o, fast_methods(cfg), (5,), 5, quiet)
        garbage = E.run_origin(_with_future_replaced(data, o), o, fast_methods(cfg), (5,), 5, quiet)
        assert real.chosen == garbage.chosen and real.validation == garbage.validation
    ra, rb = a["_results"], b["_results"]
    assert any(
        not np.array_equal(ra[0].metrics[m]["recall@5"], rb[0].metrics[m]["recall@5"], equal_nan=True)
        for m in ("ease", "popularity")
    ), "altering the test window changed no test metric: the canary cannot detect anything"
    # the bootstrap plan is a function of the seed and the users per origin, not of outcomes
    sizes = [len(r.targets) for r in ra]
    p1, p2 = E.bootstrap_plan(sizes, 50, 7), E.bootstrap_plan(sizes, 50, 7)
    assert all(np.array_equal(x, y) for x, y in zip(p1, p2, strict=True))


def _with_future_replaced(data: E.EvalData, o: E.Origin) -> E.EvalData:
    """Everything at or after t_test replaced by garbage of the same times (users and items scrambled)."""
    rng = np.random.default_rng(5)
    inter = data.inter.copy()
    m = inter["ts"].to_numpy() >= np.datetime64(E._naive(o.t_test))
    inter.loc[m, "u"] = rng.integers(0, data.n_users, int(m.sum()))
    inter.loc[m, "i"] = rng.integers(0, data.n_items, int(m.sum()))
    inter.loc[m, "label"] = 1
    return E.EvalData(data.user_ids, data.item_ids, inter, data.item_vecs, None,
                      data.model_id)  # fmt: skip


def test_report_has_baselines_intervals_and_counts():
    cfg = fast_cfg()
    rep = E.run_evaluation(synthetic_data(1), cfg, fast_methods(cfg), lambda m: None,
                           compare=[("ease+recent_pop", "recent_popularity")])  # fmt: skip
    names = {r["method"] for r in rep["table"]}
    assert {"random", "popularity", "recent_popularity", "ease", "lm_history"} <= names
    for r in rep["table"]:
        if r["users"]:
            assert r["lo"] <= r["value"] + 1e-12 and r["value"] <= r["hi"] + 1e-12
    assert (
        any(d["slice"] == "cold_item" for d in rep["differences"])
        or rep["pooled_counts"]["cold_item_clicks"] == 0
    )
    md = E.markdown(rep)
    assert "recall@5" in md and "Paired differences" in md
    pop = next(r for r in rep["table"] if r["method"] == "popularity" and r["slice"] == "cold_item"
               and r["metric"] == "recall@5")  # fmt: skip
    assert pop["users"] == 0 or pop["value"] == 0.0  # popularity cannot rank an item without clicks
    start = {
        r["method"]: r for r in rep["table"] if r["slice"] == "cold_start" and r["metric"] == "recall@10"
    }
    cold = {r["method"]: r for r in rep["table"] if r["slice"] == "cold_item" and r["metric"] == "recall@10"}
    assert start["random"]["users"] == cold["random"]["users"] == rep["pooled_counts"]["cold_item_users"] > 0
    # Among the cold items alone a ranking can only do better than in the whole catalogue.
    assert all(start[m]["value"] >= cold[m]["value"] - 1e-12 for m in start)
    assert "cold_start" in md


def test_adapter_runs_inside_the_evaluation_with_validation_selection():
    pytest.importorskip("torch")
    from llmfeat.core.config import AdaptConfig
    from llmfeat.embedding.adapt import evaluation_methods

    cfg = fast_cfg()
    acfg = AdaptConfig(dim=8, hidden=16, epochs=2, patience=1, batch_size=64, negatives=16, temperatures=[0.1, 0.3],
                       hybrid_weights=[0.0, 1.0], new_item_prior=[0.0, 2.0], fresh_slots=[0, 2], threads=1,
                       device="cpu")  # fmt: skip
    methods = [m for m in E.baseline_methods(cfg) if m.name == "recent_popularity"] + evaluation_methods(acfg)
    rep = E.run_evaluation(synthetic_data(3), cfg, methods, lambda m: None)
    for o in rep["origins"]:
        assert len(o["validation"]["adapted"]) == 2 and len(o["validation"]["adapted_hybrid"]) == 2 * 2
        assert o["chosen"]["adapted_hybrid"]["new_item_prior"] in (0.0, 2.0)
        assert (
            o["chosen"]["adapted"]["temperature"] in (0.1, 0.3) and 1 <= o["chosen"]["adapted"]["epochs"] <= 2
        )
        assert "_model" not in o["chosen"]["adapted"]  # trained weights stay out of the report
        # no slots, then 2 slots with each release window; each scored overall and on the cold items
        assert len(o["validation"]["adapted_fresh"]) == 1 + len(acfg.fresh_release_days)
        assert all(set(v) == {"recall", "cold_recall"} for v in o["validation"]["adapted_fresh"].values())
        assert o["chosen"]["adapted_fresh"]["slots"] in (0, 2)
    assert any(d["a"] == "adapted_hybrid" and d["b"] == "recent_popularity" for d in rep["differences"])
    assert any(d["a"] == "adapted_fresh" and d["b"] == "adapted_hybrid" for d in rep["differences"])


def test_the_report_goes_to_the_data_dirs_reports_unless_told_otherwise(tmp_path, monkeypatch):
    from llmfeat.core.config import load_config

    data = synthetic_data(2)
    data.info.update(interactions=len(data.inter), clicks=int(data.inter["label"].sum()), users=data.n_users,
                     items=data.n_items)  # fmt: skip
    monkeypatch.setattr(E, "load_eval_data", lambda *a: data)
    monkeypatch.setattr(E, "methods_for", lambda cfg, **_: fast_methods(cfg.evaluate))
    quick = ["evaluate.origins=2", "evaluate.ks=[5]", "evaluate.select_k=5", "evaluate.bootstrap=50"]
    cfg = load_config(None, [f"paths.data_dir={tmp_path / 'd'}", *quick])
    rep = E.run_evaluate(cfg, None, log=lambda m: None)
    assert Path(rep["path"]).parent == (tmp_path / "d" / "reports").resolve() and Path(rep["path"]).is_file()
    assert Path(rep["path"]).with_suffix(".md").is_file()
    other = load_config(
        None, [f"paths.data_dir={tmp_path / 'd'}", f"paths.reports_dir={tmp_path / 'r'}", *quick]
    )
    assert Path(E.run_evaluate(other, None, log=lambda m: None)["path"]).parent == (tmp_path / "r").resolve()


def test_choose_within_takes_the_best_cold_recall_inside_the_budget():
    scores = [(0.200, 0.0), (0.199, 0.05), (0.197, 0.20), (0.150, 0.90), (0.199, float("nan"))]
    assert E.choose_within(scores, 0.02) == 2  # 0.197 >= 0.98 x 0.2; 0.150 is outside the budget
    assert E.choose_within(scores, 0.0) == 0  # no budget: only what costs nothing
    assert E.choose_within(scores, 0.3) == 3
    assert E.choose_within([(0.2, 0.1), (0.21, 0.1)], 0.1) == 1  # a tie on cold items: the better overall
    assert E.choose_within([(0.2, float("nan")), (0.2, float("nan"))], 0.1) == 0  # no cold clicks: the first


def test_release_dates_reach_the_context_as_item_ages_at_the_cut(tmp_path):
    import pyarrow as pa

    from llmfeat.core import tables
    from llmfeat.data import schemas

    root = tables.canonical_dir(tmp_path, "items")
    as_of = dt.date(2024, 3, 1)
    items = pd.DataFrame({"item_id": ["i0", "i1", "i2"], "title": ["a", "b", "c"], "description": None,
                          "category": None, "subcategory": None, "tags": None,
                          "updated_at": pd.Timestamp("2024-01-01", tz="UTC"),
                          "released_at": pd.to_datetime(pd.Series(["2024-02-20", None, "2024-03-10"]), utc=True)})  # fmt: skip
    tables.write_snapshot(
        root, as_of, pa.Table.from_pandas(items, schema=schemas.ITEMS, preserve_index=False)
    )
    ids = np.array(["i2", "i0", "i1", "i9"], dtype=object)
    released = E.read_release_dates(tmp_path, as_of, ids)
    assert released[:2].tolist() == [np.datetime64("2024-03-10", "us"), np.datetime64("2024-02-20", "us")]
    assert np.isnat(released[2:]).all()  # unknown date, unknown item
    assert E.read_release_dates(tmp_path, dt.date(2024, 2, 1), ids) is None  # no snapshot that early
    data = synthetic_data(1, n_items=4)
    data = E.EvalData(data.user_ids, ids, data.inter, data.item_vecs, None, data.model_id, {}, released)
    ctx = E.context(data.before(pd.Timestamp("2024-03-01")), pd.Timestamp("2024-03-01"))
    np.testing.assert_allclose(ctx.item_age_days[:2], [-9.0, 10.0])
    assert np.isnan(ctx.item_age_days[2:]).all()
    from llmfeat.data.catalogue import days_since_release

    aware = days_since_release(released, pd.Timestamp("2024-03-01T12:00", tz="UTC"))  # a UTC cut, naive dates
    np.testing.assert_allclose(aware[:2], [-8.5, 10.5])
    assert days_since_release(None, pd.Timestamp("2024-03-01")) is None
