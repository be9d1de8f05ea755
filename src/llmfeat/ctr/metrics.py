"""Ranking and calibration metrics, plain numpy (checked against hand-computed values in the tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with a single class."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def base_rate_logloss(train_labels: np.ndarray, labels: np.ndarray) -> float:
    """The logloss of always predicting the training click rate: what every model must beat."""
    return logloss(labels, np.full(len(labels), float(np.mean(train_labels))))


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-group AUC weighted by group size, over groups that have both classes."""
    frame = pd.DataFrame({"g": groups, "y": np.asarray(labels).astype(int), "s": scores})
    total, weight = 0.0, 0
    for _, g in frame.groupby("g", sort=False):
        if 0 < g["y"].sum() < len(g):
            total += auc(g["y"].to_numpy(), g["s"].to_numpy()) * len(g)
            weight += len(g)
    return total / weight if weight else float("nan")


def _dcg(relevance: np.ndarray) -> float:
    return float(np.sum(relevance / np.log2(np.arange(2, len(relevance) + 2))))


def ndcg_at(labels_in_rank_order: np.ndarray, k: int) -> float:
    rel = np.asarray(labels_in_rank_order, dtype=np.float64)
    ideal = _dcg(np.sort(rel)[::-1][:k])
    return _dcg(rel[:k]) / ideal if ideal > 0 else float("nan")


def impression_metrics(impressions: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """MIND-style metrics averaged over impressions with at least one click: AUC (where both classes), MRR,
    nDCG@5 and nDCG@10."""
    frame = pd.DataFrame({"i": impressions, "y": np.asarray(labels).astype(int), "s": scores})
    aucs, mrrs, n5, n10 = [], [], [], []
    for _, g in frame.groupby("i", sort=False):
        if g["y"].sum() == 0:
            continue
        ranked = g.sort_values("s", ascending=False, kind="stable")["y"].to_numpy()
        if g["y"].sum() < len(g):
            aucs.append(auc(g["y"].to_numpy(), g["s"].to_numpy()))
        mrrs.append(float(np.sum(ranked / np.arange(1, len(ranked) + 1)) / ranked.sum()))
        n5.append(ndcg_at(ranked, 5))
        n10.append(ndcg_at(ranked, 10))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"imp_auc": mean(aucs), "mrr": mean(mrrs), "ndcg@5": mean(n5), "ndcg@10": mean(n10)}


def calibration_curve(
    labels: np.ndarray, probs: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed rate, count) per equal-width probability bin (empty bins dropped)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(probs, edges) - 1, 0, bins - 1)
    pred, obs, cnt = [], [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            pred.append(float(np.mean(probs[m])))
            obs.append(float(np.mean(labels[m])))
            cnt.append(int(m.sum()))
    return np.array(pred), np.array(obs), np.array(cnt)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every threshold."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    y = np.asarray(labels).astype(bool)[order]
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(~y)])
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)
