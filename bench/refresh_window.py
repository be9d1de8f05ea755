"""A week of refresh nights on a training window (``train.refresh_window_days`` + ``train.replay_rows``)
against the same week refreshed on every stored row.

A refresh night (docs/training.md) retrains ``train.refresh_models`` warm from the previous night's models. On
a window it reads back and fits the last N days' labelled rows plus whole random older stored days up to
``train.replay_rows`` (the replay), a bounded number of rows however long the history, instead of all of them.
This bench asks what that costs in quality, on the same test rows. For each origin O and seed s, on a data
directory holding the stored point-in-time frame (bench/day_over_day.py leaves one; nothing is fetched from
Feast):

1. the weekly full evaluation: a cold fit as of O - ``--chain`` (temporal protocol, ``--models``, seed s);
2. then each night up to O, two arms, each warm from its own previous night's models:
   ``window``: the nightly's refresh (``fetch_training_frame`` + ``run_train`` with the window and replay, at
   ``train.refresh_lr`` as the nightly's refresh fits); its temporal split (T1, T2) is the window's quantiles;
   ``all``: every row at ``train.lr`` (the refresh before the window and ``refresh_lr`` were the default), with
   the same T1 and T2, so both arms are tested on exactly the same rows (asserted) and differ only in the rows
   they fit on and the learning rate (``--window-set`` / ``--all-set`` override either arm's configuration:
   ``--window-set train.lr=0.002`` isolates the window, ``--all-set train.lr=0.0005`` the learning rate).

Reported per origin, seed and model: both arms' test AUC on night O (and each night's difference), rows fitted,
fit seconds; pooled per model: the mean difference ``window - all`` on night O over origins and seeds with a
paired bootstrap 95% interval (test rows resampled within each origin, one resample for both arms and every
seed) and the seed standard deviation of the ``all`` arm, the noise the difference is read against. Every
night's frame is the origin's stored frame cut at the night (MovieLens has no late events). The runs add model
and report directories to the data directory; its ``current.json`` is restored at the end.

    .venv/bin/python bench/refresh_window.py --data-dir var/bench/day_over_day/data \
        --origins 1998-03-12 1998-04-02 1998-04-23 --seeds 1 2 3 --out var/bench/refresh_window.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def fit(cfg, day: dt.date, frame, models: list[str]) -> dict:
    """One train run; its test AUC per model, the rows fitted, seconds, the split and the test predictions."""
    from llmfeat.ctr.train import run_train

    predictions: dict = {}
    t0 = time.perf_counter()
    s = run_train(cfg, day, frame=frame, log=lambda _m: None, predictions=predictions)
    rows = {r["model"]: r for r in s["results"] if r["slice"] == "all" and r["protocol"] == "temporal"}
    split = s["protocols"]["temporal"]
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "fit_seconds": s["seconds"]["training"],
        "rows": s["rows"],
        "train_rows": split["train"],
        "split": {k: split[k] for k in ("t1", "t2", "validation", "test")},
        "epochs": s["fit_epochs"],
        "warm_start": s.get("warm_start"),
        "auc": {m: round(rows[m]["auc"], 5) for m in models},
        "_pred": predictions["temporal"],
    }


def paired_bootstrap(per_origin: list[dict], model: str, rounds: int, seed: int = 0) -> list[float]:
    """95% interval of the mean (over origins and seeds) of AUC(window) - AUC(all), resampling each origin's
    test rows with replacement (one resample shared by both arms and every seed of that origin)."""
    from llmfeat.ctr.metrics import auc

    rng = np.random.default_rng(seed)
    means = []
    for _ in range(rounds):
        diffs = []
        for origin in per_origin:
            labels = origin["labels"]
            idx = rng.integers(0, len(labels), len(labels))
            y = labels[idx]
            if y.min() == y.max():
                continue
            for w, a in zip(origin["window"][model], origin["all"][model], strict=True):
                diffs.append(auc(y, w[idx]) - auc(y, a[idx]))
        means.append(float(np.mean(diffs)))
    return [round(float(q), 5) for q in np.quantile(means, [0.025, 0.975])]


def main() -> None:
    import torch

    from llmfeat.core.config import load_config
    from llmfeat.ctr.train import fetch_training_frame, models_dir, refresh_lr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "bench" / "day_over_day" / "data")
    ap.add_argument("--origins", nargs="+", default=["1998-03-12", "1998-04-02", "1998-04-23"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--window-days", type=int, default=30)
    ap.add_argument("--replay-rows", type=int, default=30_000, help="train.replay_rows (0: the window only)")
    ap.add_argument(
        "--window-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a configuration override of the window arm only (e.g. train.lr=0.002)",
    )
    ap.add_argument(
        "--all-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a configuration override of the every-row arm only (e.g. train.lr=0.0005)",
    )
    ap.add_argument("--chain", type=int, default=6, help="refresh nights after the full fit (a week: 6)")
    ap.add_argument("--models", nargs="+", default=["popularity", "deep_lm"], help="train.refresh_models")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every training run")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "refresh_window.json")
    args = ap.parse_args()
    from warm_start import ensure_snapshot, pointer_kept  # bench/ (this script's folder) is on sys.path

    base = [f"paths.data_dir={args.data_dir}", f"paths.reports_dir={args.data_dir / 'reports' / 'window_bench'}",
            "train.protocols=[temporal]", f"train.models=[{', '.join(args.models)}]"]  # fmt: skip
    cfg = load_config(None, base)
    lr = refresh_lr(cfg.train)  # the nightly's refresh rate (plan_evaluation)
    models = models_dir(cfg)
    torch.set_num_threads(args.threads)
    runs, per_origin = [], []
    with pointer_kept(models):
        for origin in map(dt.date.fromisoformat, args.origins):
            nights = [origin - dt.timedelta(days=k) for k in range(args.chain, -1, -1)]  # the full one first
            for night in nights:
                ensure_snapshot(cfg, night)
            # every night's frame from the origin's (no late events in MovieLens: a night's snapshot holds the
            # events stamped before it, and the stored frame's rows never change: tests/features)
            whole = fetch_training_frame(cfg, origin, log=lambda _m: None)
            ts = whole["event_timestamp"]

            def frame_of(night, window=None, whole=whole, ts=ts):
                end = pd.Timestamp(night, tz="UTC")
                keep = (ts < end) if window is None else (ts < end) & (ts >= end - pd.Timedelta(days=window))
                return whole[keep].reset_index(drop=True)

            kept = {
                "labels": None,
                "window": {m: [] for m in args.models},
                "all": {m: [] for m in args.models},
            }
            for seed in args.seeds:
                load = os.getloadavg()
                full = fit(load_config(None, [*base, f"train.seed={seed}"]), nights[0], frame_of(nights[0]),
                           args.models)  # fmt: skip
                full.pop("_pred")
                pointer = dict.fromkeys(("window", "all"), (models / "current.json").read_text())
                warm = [*base, f"train.seed={seed}", "train.warm_start=true"]
                chain = []
                for night in nights[1:]:  # refresh nights, each arm warm from its own previous night
                    (models / "current.json").write_text(pointer["window"])
                    # the nightly's refresh: the window's rows and the replayed older days, as it reads them
                    win_cfg = load_config(None, [*warm, f"train.window_days={args.window_days}",
                                                 f"train.replay_rows={args.replay_rows}", f"train.lr={lr}",
                                                 *args.window_set])  # fmt: skip
                    frame = fetch_training_frame(win_cfg, night, log=lambda _m: None)
                    window = fit(win_cfg, night, frame, args.models)
                    pointer["window"] = (models / "current.json").read_text()
                    (models / "current.json").write_text(pointer["all"])
                    t1, t2 = window["split"]["t1"], window["split"]["t2"]
                    every = fit(load_config(None, [*warm, f"train.t1={t1}", f"train.t2={t2}", *args.all_set]),
                                night, frame_of(night), args.models)  # fmt: skip
                    pointer["all"] = (models / "current.json").read_text()
                    w_pred, a_pred = window.pop("_pred"), every.pop("_pred")
                    if not np.array_equal(w_pred["_labels"], a_pred["_labels"]) or every["split"]["t2"] != t2:
                        raise SystemExit(f"{night}: the two arms' test rows differ")
                    chain.append({"night": night.isoformat(), "window": window, "all": every,
                                  "window_minus_all_auc": {m: round(window["auc"][m] - every["auc"][m], 5)
                                                           for m in args.models}})  # fmt: skip
                kept["labels"] = w_pred["_labels"]  # the origin's (the last refresh night's) test rows
                for m in args.models:
                    kept["window"][m].append(np.asarray(w_pred[m], dtype=np.float64))
                    kept["all"][m].append(np.asarray(a_pred[m], dtype=np.float64))
                last = chain[-1]
                runs.append({"origin": origin.isoformat(), "seed": seed, "load_before": [round(x, 2) for x in load],
                             "full": full, "chain": chain, "window": last["window"], "all": last["all"],
                             "window_minus_all_auc": last["window_minus_all_auc"]})  # fmt: skip
                print(json.dumps({k: runs[-1][k] for k in ("origin", "seed", "window_minus_all_auc")}
                                 | {"per_night": [c["window_minus_all_auc"] for c in chain]}), flush=True)  # fmt: skip
            per_origin.append(kept)
    pooled = {}
    for m in args.models:
        d = [r["window_minus_all_auc"][m] for r in runs]
        sd = [statistics.stdev([r["all"]["auc"][m] for r in runs if r["origin"] == o])
              for o in args.origins if len(args.seeds) > 1]  # fmt: skip
        pooled[m] = {"mean_window_minus_all": round(statistics.mean(d), 5),
                     "bootstrap_95": paired_bootstrap(per_origin, m, args.bootstrap),
                     "all_auc_seed_sd_per_origin": [round(x, 5) for x in sd]}  # fmt: skip
    fit_s = {k: round(sum(r[k]["fit_seconds"] for r in runs), 1) for k in ("window", "all")}
    rows = {k: [r[k]["train_rows"] for r in runs if r["seed"] == args.seeds[0]] for k in ("window", "all")}
    out = {"bench": "refresh_window", "command": " ".join(["python", *sys.argv]), "window_days": args.window_days,
           "window_set": [f"train.lr={lr}", *args.window_set], "all_set": args.all_set,
           "runs": runs, "pooled": pooled, "fit_seconds": fit_s, "train_rows_per_origin": rows,
           "test_rows_per_origin": [len(o["labels"]) for o in per_origin]}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("pooled", "fit_seconds", "train_rows_per_origin",
                                          "test_rows_per_origin")}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
