"""bench/cold_start_signal.py reads only what is before each origin's test window (a canary), and its shares
are shares."""

from __future__ import annotations

import numpy as np
from cold_start_signal import run

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
