"""bench/cold_start_signal.py reads only what is before each origin's test window (a canary), and its shares
are shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cold_start_signal import release_recency, run

from llmfeat.retrieval import evaluate as E
from tests.retrieval.test_evaluate import fast_cfg, synthetic_data


def _scramble_after(data: E.EvalData, cut, seed: int = 5) -> E.EvalData:
    """The same data with every event at or after ``cut`` moved to a random item."""
    inter = data.inter.copy()
    m = inter["ts"].to_numpy() >= np.datetime64(E._naive(cut))
    inter.loc[m, "i"] = np.random.default_rng(seed).integers(0, data.n_items, int(m.sum()))
    return E.EvalData(data.user_ids, data.item_ids, inter, data.item_vecs, None, data.model_id)


def test_the_diagnosis_never_reads_a_test_window():
    cfg = fast_cfg()
    data = synthetic_data(2, n_users=120, n_items=60)
    rows = run(data, cfg)
    assert [r["origin"] for r in rows] == list(range(cfg.origins))
    for r in rows:
        for share in (r["share_top1_item"], r["share_top3_items"], *r["text_popularity"].values()):
            assert share is None or 0.0 <= share <= 1.0
    origins = E.make_origins(data.inter["ts"].to_numpy(), cfg.origins, cfg.span)
    assert run(_scramble_after(data, origins[-1].t_test), cfg) == rows  # the last test window: never read
    # ... while the last validation window is read (the canary is not blind)
    assert run(_scramble_after(data, origins[-1].t_val), cfg)[-1] != rows[-1]


def test_release_recency_orders_the_new_items_when_the_items_have_release_dates():
    cfg = fast_cfg()
    data = synthetic_data(2, n_users=120, n_items=200)  # many items without a click at each cut
    # synthetic_data releases item i around day (i - 5) / (1.1 * n_items) * days: its release date
    days = np.clip((np.arange(data.n_items) - 5) / (1.1 * data.n_items) * 120, 0, None).astype(int)
    released = (np.datetime64("2024-01-01", "D") + days.astype("timedelta64[D]")).astype("datetime64[us]")
    released[-1] = np.datetime64("NaT")
    score = release_recency(released, pd.Timestamp("2024-02-01"))
    assert score[-1] == -1e9  # undated: last
    out = released[:-1] <= np.datetime64("2024-02-01")
    assert (score[:-1][out] > -1e9).all() and (score[:-1][~out] == -1e9).all()  # not released yet: last too
    assert (np.diff(score[:-1][out]) >= 0).all()  # items are in release order here: a later one scores higher

    dated = E.EvalData(
        data.user_ids, data.item_ids, data.inter, data.item_vecs, None, data.model_id, {}, released
    )
    rows = run(dated, cfg)
    for r in rows:
        assert all(s is None or 0.0 <= s <= 1.0 for s in r["release_recency"].values())
    # items appear over time here, so the latest releases are where the cold clicks go
    recency = np.mean([r["cold_only_recall@20"]["release_recency"] for r in rows])
    assert recency > np.mean([r["cold_only_recall@20"]["random"] for r in rows])
    assert all("release_recency" not in r for r in run(data, cfg))  # no dates, no such ranking
    origins = E.make_origins(data.inter["ts"].to_numpy(), cfg.origins, cfg.span)
    scrambled = _scramble_after(dated, origins[-1].t_test)
    scrambled.item_released = released
    assert run(scrambled, cfg) == rows  # still never a test window
