"""bench/cold_start_signal.py reads only what is before each origin's test window (a canary), and its shares
are shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cold_start_signal import read_release_dates, release_recency, run

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


def _u_item(tmp_path, data: E.EvalData, released: np.ndarray) -> object:
    """A GroupLens-style u.item for the synthetic items (both date formats the files in the wild use)."""
    lines = []
    for k, (item, day) in enumerate(zip(data.item_ids, released, strict=True)):
        date = pd.Timestamp(day)
        text = date.strftime("%d-%b-%Y") if k % 2 else date.strftime("%d-%m-%Y")
        lines.append(f"{item}|Film {k} ({date.year})|{text}||http://example.invalid/{k}|0|1")
    lines.append("extra|Undated film (1990)|||http://example.invalid/x|0|1")
    path = tmp_path / "u.item"
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


def test_release_dates_are_read_from_a_u_item_and_order_the_new_items(tmp_path):
    cfg = fast_cfg()
    data = synthetic_data(2, n_users=120, n_items=200)  # many items without a click at each cut
    # synthetic_data releases item i around day (i - 5) / (1.1 * n_items) * days: its release date
    days = np.clip((np.arange(data.n_items) - 5) / (1.1 * data.n_items) * 120, 0, None).astype(int)
    released = np.datetime64("2024-01-01", "D") + days.astype("timedelta64[D]")
    read = read_release_dates(
        _u_item(tmp_path, data, released), np.append(data.item_ids, ["extra", "absent"])
    )
    assert (read[:-2] == released).all() and np.isnat(read[-2:]).all()
    score = release_recency(read, pd.Timestamp("2024-02-01"))
    assert score[-1] == score[-2] == -1e9  # undated: last
    out = read[:-2] <= np.datetime64("2024-02-01")
    assert (score[:-2][out] > -1e9).all()
    assert (np.diff(score[:-2][out]) >= 0).all()  # items are in release order here: a later one scores higher
    assert (score[read > np.datetime64("2024-02-01")] == -1e9).all()  # not released yet at t: last too

    rows = run(data, cfg, read[:-2])
    for r in rows:
        assert all(s is None or 0.0 <= s <= 1.0 for s in r["release_recency"].values())
    # items appear over time here, so the latest releases are where the cold clicks go
    recency = np.mean([r["cold_only_recall@20"]["release_recency"] for r in rows])
    assert recency > np.mean([r["cold_only_recall@20"]["random"] for r in rows])
    origins = E.make_origins(data.inter["ts"].to_numpy(), cfg.origins, cfg.span)
    assert run(_scramble_after(data, origins[-1].t_test), cfg, read[:-2]) == rows  # still never a test window


def test_a_release_date_that_cannot_be_read_names_the_file_and_line(tmp_path):
    path = tmp_path / "u.item"
    path.write_text(
        "1|Toy Story (1995)|01-Jan-1995||x\n2|GoldenEye (1995)|1995-01-01||x\n", encoding="latin-1"
    )
    with pytest.raises(ValueError, match=r"u\.item:2: release date '1995-01-01'"):
        read_release_dates(path, np.array(["1", "2"], dtype=object))
    path.write_text("1 Toy Story\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"u\.item:1: expected"):
        read_release_dates(path, np.array(["1"], dtype=object))
