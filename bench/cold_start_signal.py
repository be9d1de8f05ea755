"""Is there a cold-item signal to find? A validation-only look at the items without a click before each origin's
validation cut (issue 12's cold-item bar; docs/adapt.md "Results").

    .venv/bin/python bench/cold_start_signal.py --data-dir var/data [--out var/bench/cold_start_signal.json]

For each rolling origin of `llmfeat evaluate` (same cuts), on the data cut at the origin's test start (the test
window is never read), with the validation window [t_val, t_test) as the held-out clicks:

- concentration: how many items without a click exist at t_val, how many of them get clicked in the window, and
  the share of the window's cold clicks on its top 1 / 3 such items;
- a text-popularity model trained on earlier cold-start transitions (weekly cuts before t_val: which items
  without a click got clicked in the following window-length, from the frozen LM item vector plus the item's
  earlier non-click interactions, scikit-learn Ridge on log(1 + clicks)): the share of the window's cold clicks
  on its top 1 / 5 / 20 predicted items;
- the cold-only ranking (only items without a click ranked, as the `cold_start` slice): recall@20 of random,
  frozen LM user text and frozen LM history.

When the data dir's items carry ``released_at`` (the demo's do: docs/data.md): the same shares and the
cold-only recall@20 of a **release-recency** ranking (the items released on or before ``t_val``, the latest
first; undated or later-dated items last). It measures whether arrival metadata, which the item texts lack,
sets the coming cold hits apart. Release dates are theatrical dates, and about a third of the 1997-98 films
carry only a year (``01-Jan-YYYY``), which sorts them as the year's first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def release_recency(release: np.ndarray, t: pd.Timestamp) -> np.ndarray:
    """Per-item score at ``t``: minus the days since release; undated or later-dated items far below."""
    from llmfeat.data.catalogue import days_since_release

    age = days_since_release(release, t)
    return np.where(np.isnan(age) | (age < 0), -1e9, -age)


def _top_shares(order: np.ndarray, truth: np.ndarray, total: float, tops=(1, 5, 20)) -> dict:
    return {f"top{k}": round(float(truth[order[:k]].sum() / total), 4) for k in tops}


def _counts(data, t0, t1, clicks_only: bool) -> np.ndarray:
    ts = data.inter["ts"].to_numpy()
    m = (ts >= np.datetime64(t0)) & (ts < np.datetime64(t1))
    if clicks_only:
        m &= data.inter["label"].to_numpy() == 1
    return np.bincount(data.inter["i"].to_numpy()[m], minlength=data.n_items)


def _features(data, t: pd.Timestamp) -> np.ndarray:
    start = pd.Timestamp(data.inter["ts"].min())
    seen = np.log1p(_counts(data, start, t, False))[:, None]
    recent = np.log1p(_counts(data, t - pd.Timedelta(days=7), t, False))[:, None]
    return np.hstack([data.item_vecs, seen, recent])


def text_popularity_shares(data, t_val: pd.Timestamp, length: pd.Timedelta, truth: np.ndarray,
                           cold: np.ndarray, tops=(1, 5, 20)) -> dict:  # fmt: skip
    """Share of the window's cold clicks (``truth`` per item) on the top predicted items without a click."""
    from sklearn.linear_model import Ridge

    start = pd.Timestamp(data.inter["ts"].min())
    X, y = [], []
    t = t_val - length
    while t > start + pd.Timedelta(days=14):
        had = _counts(data, start, t, True) > 0
        X.append(_features(data, t)[~had])
        y.append(np.log1p(_counts(data, t, t + length, True)[~had]))
        t -= pd.Timedelta(days=7)
    total = truth[cold].sum()
    if not X or total == 0:
        return {f"top{k}": None for k in tops}
    model = Ridge(alpha=1.0).fit(np.vstack(X), np.concatenate(y))
    idx = np.flatnonzero(cold)
    order = idx[np.argsort(-model.predict(_features(data, t_val)[idx]), kind="stable")]
    return _top_shares(order, truth, total, tops)


def origin_signal(data, origin, cfg_eval) -> dict:
    """Everything for one origin, from ``data`` cut at the origin's test start (the caller's guarantee)."""
    from llmfeat.retrieval import evaluate as E

    ctx = E.context(data, origin.t_val)
    tg = E.targets(data, ctx, origin.t_val, origin.t_test)
    cold = ctx.item_clicks == 0
    truth = np.zeros(data.n_items)
    for items in tg.cold:
        np.add.at(truth, items, 1)
    clicked = np.sort(truth[truth > 0])[::-1]
    total = float(truth.sum())
    out = {
        "validation": [str(origin.t_val.date()), str(origin.t_test.date())],
        "items_without_clicks": int(cold.sum()),
        "cold_clicks": int(total),
        "cold_items_clicked": int((truth > 0).sum()),
        "share_top1_item": round(float(clicked[:1].sum() / total), 4) if total else None,
        "share_top3_items": round(float(clicked[:3].sum() / total), 4) if total else None,
        "text_popularity": text_popularity_shares(
            data, origin.t_val, origin.t_test - origin.t_val, truth, cold
        ),
    }
    released = data.item_released  # items.released_at, when the data dir has it
    recency = None if released is None else release_recency(released, origin.t_val)
    if recency is not None:
        idx = np.flatnonzero(cold)
        order = idx[np.argsort(-recency[idx], kind="stable")]
        out["release_recency"] = _top_shares(order, truth, total) if total else {"top1": None, "top5": None,
                                                                                 "top20": None}  # fmt: skip
    ranking = {}
    methods = {m.name: m for m in E.baseline_methods(cfg_eval)}
    for name in ("random", "lm_text", "lm_history"):
        if methods[name].needs_vectors and (
            data.item_vecs is None or (name == "lm_text" and ctx.user_text is None)
        ):
            continue
        fitted = methods[name].fit(ctx, {}, val=None)
        top = E.score_users(E.cold_only(fitted.score, ctx), ctx, tg, 20)
        m = E.user_metrics(top, tg, (20,))
        ranking[name] = round(float(np.nanmean(m["cold_recall@20"])), 4) if len(tg) and total else None
    if recency is not None:
        top = E.score_users(E.cold_only(lambda users: np.broadcast_to(recency, (len(users), len(recency))), ctx),
                            ctx, tg, 20)  # fmt: skip
        m = E.user_metrics(top, tg, (20,))
        ranking["release_recency"] = (
            round(float(np.nanmean(m["cold_recall@20"])), 4) if len(tg) and total else None
        )
    out["cold_only_recall@20"] = ranking
    return out


def run(data, cfg_eval) -> list[dict]:
    from llmfeat.retrieval import evaluate as E

    origins = E.make_origins(data.inter["ts"].to_numpy(), cfg_eval.origins, cfg_eval.span)
    return [{"origin": o.index, **origin_signal(data.before(o.t_test), o, cfg_eval)} for o in origins]


def markdown(rows: list[dict]) -> str:
    lines = ["| origin | validation window | items w/o clicks | cold clicks (items) | top-1 / top-3 items' share | "
             "text model: top-1 / 5 / 20 share | cold-only recall@20: random / lm_text / lm_history |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip

    def f(x):
        return "-" if x is None else f"{x:.2f}"

    for r in rows:
        tp, cr = r["text_popularity"], r["cold_only_recall@20"]
        lines.append(f"| {r['origin']} | {r['validation'][0]} - {r['validation'][1]} | {r['items_without_clicks']} | "
                     f"{r['cold_clicks']} ({r['cold_items_clicked']}) | {f(r['share_top1_item'])} / {f(r['share_top3_items'])} | "
                     f"{f(tp['top1'])} / {f(tp['top5'])} / {f(tp['top20'])} | "
                     f"{' / '.join(f(cr.get(m)) for m in ('random', 'lm_text', 'lm_history'))} |")  # fmt: skip
    if any("release_recency" in r for r in rows):
        lines += ["", "| origin | release recency: top-1 / 5 / 20 share | cold-only recall@20: random / release recency |",
                  "|---|---:|---:|"]  # fmt: skip
        for r in rows:
            rr, cr = r["release_recency"], r["cold_only_recall@20"]
            lines.append(f"| {r['origin']} | {f(rr['top1'])} / {f(rr['top5'])} / {f(rr['top20'])} | "
                         f"{f(cr.get('random'))} / {f(cr.get('release_recency'))} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "data")
    ap.add_argument("--embedding-set", default="default")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "cold_start_signal.json")
    args = ap.parse_args()
    from llmfeat.core.config import load_config
    from llmfeat.retrieval.evaluate import load_eval_data

    cfg = load_config(None)
    data = load_eval_data(args.data_dir, args.embedding_set)
    rows = run(data, cfg.evaluate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
