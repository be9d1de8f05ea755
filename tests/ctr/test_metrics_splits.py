"""Metrics against hand-computed values; splits that do not overlap and respect time."""

import numpy as np
import pandas as pd
import pytest

from llmfeat.ctr.metrics import auc, base_rate_logloss, gauc, impression_metrics, logloss, ndcg_at
from llmfeat.data.splits import leave_last_k, slice_masks, temporal_split


def test_auc_by_hand():
    # pairs (pos, neg): (0.9,0.1) (0.9,0.8) (0.4,0.1) (0.4,0.8) -> 3 of 4 ranked right
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts half
    assert np.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_logloss_by_hand():
    assert logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    # base rate 0.75 from training, evaluated on [1, 0]
    assert base_rate_logloss(np.array([1, 1, 1, 0]), np.array([1, 0])) == pytest.approx(
        -(np.log(0.75) + np.log(0.25)) / 2
    )


def test_gauc_weights_groups_and_skips_single_class():
    g = np.array(["a", "a", "a", "b", "b", "c"])
    y = np.array([1, 0, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.95, 0.2, 0.3, 0.5])
    # a: pos 0.9 vs negs 0.1 (right), 0.95 (wrong) -> 0.5, 3 rows; b: 0.2 vs 0.3 -> 0, 2 rows; c skipped
    assert gauc(g, y, s) == pytest.approx((0.5 * 3 + 0.0 * 2) / 5)


def test_ndcg_and_impression_metrics():
    assert ndcg_at(np.array([0, 1]), 5) == pytest.approx((1 / np.log2(3)) / 1.0)
    m = impression_metrics(
        np.array([1, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0]), np.array([0.9, 0.5, 0.1, 0.8, 0.2])
    )
    # impression 1: the click is ranked 2nd -> RR 0.5, AUC 0.5; impression 2: ranked 1st -> RR 1, AUC 1
    assert m["mrr"] == pytest.approx(0.75) and m["imp_auc"] == pytest.approx(0.75)
    assert m["ndcg@5"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)


def _frame():
    rng = np.random.default_rng(0)
    n = 300
    return pd.DataFrame(
        {"user_id": rng.integers(0, 20, n).astype(str), "item_id": rng.integers(0, 50, n).astype(str),
         "event_ts": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
         "label": rng.integers(0, 2, n)}
    )  # fmt: skip


def test_temporal_split_has_no_overlap_and_respects_time():
    df = _frame()
    s = temporal_split(df)
    assert len(s.train) + len(s.validation) + len(s.test) == len(df)
    assert not set(s.train.index) & set(s.validation.index) and not set(s.validation.index) & set(
        s.test.index
    )
    assert s.train["event_ts"].max() < s.validation["event_ts"].min()
    assert s.validation["event_ts"].max() < s.test["event_ts"].min()
    with pytest.raises(ValueError, match="T1 < T2"):
        temporal_split(df, pd.Timestamp("2024-02-01", tz="UTC"), pd.Timestamp("2024-01-15", tz="UTC"))


def test_leave_last_k():
    df = _frame()
    s = leave_last_k(df, k=2)
    assert len(s.train) + len(s.validation) + len(s.test) == len(df)
    for user, g in df.groupby("user_id"):
        test = s.test[s.test["user_id"] == user]
        train = s.train[s.train["user_id"] == user]
        if len(g) >= 5:
            assert len(test) == 2 and test["event_ts"].min() >= train["event_ts"].max()


def test_slices():
    train = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"]})
    ev = pd.DataFrame({"user_id": ["u1", "u3", "u2"], "item_id": ["c", "a", "b"]})
    m = slice_masks(train, ev, light_user_max=1)
    assert list(m["cold_item"]) == [True, False, False]
    assert list(m["cold_user"]) == [False, True, False]
    assert list(m["light_user"]) == [False, False, True]
    assert list(m["warm"]) == [False, False, True]
