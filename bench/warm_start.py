"""CTR warm start (``train.warm_start``): quality and time of the incremental night's training, cold vs warm.

On a data directory where the nightly ran for D and D+1 (bench/day_over_day.py leaves one), for each seed:

1. train as of D, cold (the "previous night's" models, seed s);
2. train as of D+1, cold (seed s): the baseline;
3. train as of D+1, warm from the models of step 1 (seed s).

The training frames come from the stored point-in-time frame (no Feast fetch). Reported per seed and model:
test AUC / logloss (temporal protocol, all rows), epochs run and fit seconds; then warm - cold per model with
its mean and range over seeds, next to the seed noise of the cold runs (their standard deviation). Then, with
``train.window_days`` (``--window-days``), the train stage as of two dates with a short and a long stored
history (``--history-days``): rows, frame read and fit seconds. The runs
add model and report directories to the data directory; its ``current.json`` is restored at the end.

    .venv/bin/python bench/warm_start.py --data-dir var/bench/day_over_day/data --day 1998-04-22 \
        --seeds 1 2 3 --out var/bench/warm_start.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODELS = ["lr_lm", "deep_ids_stats", "deep_lm"]


def one(cfg, day: dt.date, frame, log) -> dict:
    from llmfeat.ctr.train import run_train

    t0 = time.perf_counter()
    s = run_train(cfg, day, frame=frame, log=log)
    rows = {r["model"]: r for r in s["results"] if r["slice"] == "all" and r["protocol"] == "temporal"}
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "fit_seconds": s["seconds"]["training"],
        "epochs": s["fit_epochs"],
        "warm_start": s.get("warm_start"),
        "auc": {m: round(rows[m]["auc"], 5) for m in MODELS},
        "logloss": {m: round(rows[m]["logloss"], 5) for m in MODELS},
    }


def ensure_snapshot(cfg, day: dt.date) -> None:
    """The canonical snapshot of ``day`` (what that night's ingest would have written), made if missing."""
    from llmfeat.core import tables
    from llmfeat.data.ingest import run_ingest

    if not tables.snapshot_dir(tables.canonical_dir(cfg.paths.data_dir, "interactions"), day).is_dir():
        run_ingest(cfg, day)


@contextlib.contextmanager
def pointer_kept(models: Path):
    """Keep the models directory's ``current.json`` (the bench's runs move it) and put it back at the end."""
    saved = models / "current.json.before-bench"
    if (models / "current.json").is_file():
        shutil.copy2(models / "current.json", saved)
    try:
        yield
    finally:
        if saved.is_file():
            os.replace(saved, models / "current.json")


def history_lengths(base: list[str], window_days: int, dates: list[str], log) -> list[dict]:
    """Train (cold, seed 1) with ``train.window_days`` as of each date: the stage's cost at two lengths of
    stored history should not differ beyond noise (the rows trained on are bounded by the window)."""
    from llmfeat.core.config import load_config
    from llmfeat.ctr.train import fetch_training_frame

    cfg = load_config(None, [*base, "train.seed=1", f"train.window_days={window_days}"])
    out = []
    for day in map(dt.date.fromisoformat, dates):
        ensure_snapshot(cfg, day)
        t0, stats = time.perf_counter(), {}
        frame = fetch_training_frame(cfg, day, log=log, stats=stats)
        read_s = time.perf_counter() - t0
        first = dt.date(1997, 9, 20)  # MovieLens-100k's first event day
        run = one(cfg, day, frame, log)
        out.append({"as_of": day.isoformat(), "stored_history_days": (day - first).days, "rows": len(frame),
                    "frame_read_s": round(read_s, 2), "load": [round(x, 2) for x in os.getloadavg()],
                    **{k: run[k] for k in ("seconds", "fit_seconds", "epochs")}})  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    import torch

    from llmfeat.core.config import load_config
    from llmfeat.ctr.train import fetch_training_frame, models_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "bench" / "day_over_day" / "data")
    ap.add_argument("--day", default="1998-04-22")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "warm_start.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every training run")
    ap.add_argument("--window-days", type=int, default=30, help="0: skip the two-history-lengths runs")
    ap.add_argument(
        "--history-days",
        nargs=2,
        default=["1997-12-20", "1998-04-23"],
        help="two as-of dates with a short and a long stored history",
    )
    args = ap.parse_args()
    day = dt.date.fromisoformat(args.day)
    nxt = day + dt.timedelta(days=1)
    quiet = lambda _m: None  # noqa: E731
    base = [f"paths.data_dir={args.data_dir}", f"paths.reports_dir={args.data_dir / 'reports' / 'warm_bench'}",
            "train.protocols=[temporal]", f"train.models=[{', '.join(MODELS)}]"]  # fmt: skip
    cfg = load_config(None, base)
    models = models_dir(cfg)
    torch.set_num_threads(args.threads)  # the same for every arm; 1 keeps a shared machine's other runs fair
    for d in (day, nxt):
        ensure_snapshot(cfg, d)
    frames = {d: fetch_training_frame(cfg, d, log=quiet) for d in (day, nxt)}
    runs = []
    with pointer_kept(models):
        for seed in args.seeds:
            cold_cfg = load_config(None, [*base, f"train.seed={seed}"])
            warm_cfg = load_config(None, [*base, f"train.seed={seed}", "train.warm_start=true"])
            load = os.getloadavg()
            previous = one(cold_cfg, day, frames[day], quiet)
            pointer = (models / "current.json").read_text()
            cold = one(cold_cfg, nxt, frames[nxt], quiet)
            (models / "current.json").write_text(pointer)  # warm from step 1's models, not step 2's
            warm = one(warm_cfg, nxt, frames[nxt], quiet)
            runs.append({"seed": seed, "load_before": [round(x, 2) for x in load], "previous": previous,
                         "cold": cold, "warm": warm})  # fmt: skip
            print(json.dumps(runs[-1]), flush=True)
        window = (
            history_lengths(base, args.window_days, args.history_days, quiet) if args.window_days else None
        )
    diffs = {}
    for m in MODELS:
        d = [r["warm"]["auc"][m] - r["cold"]["auc"][m] for r in runs]
        cold = [r["cold"]["auc"][m] for r in runs]
        diffs[m] = {"warm_minus_cold_auc": [round(x, 5) for x in d], "mean": round(statistics.mean(d), 5),
                    "cold_auc_sd_over_seeds": round(statistics.stdev(cold), 5) if len(cold) > 1 else None,
                    "epochs_cold": [r["cold"]["epochs"][f"temporal/{m}"] for r in runs],
                    "epochs_warm": [r["warm"]["epochs"][f"temporal/{m}"] for r in runs]}  # fmt: skip
    fit = {k: [r[k]["fit_seconds"] for r in runs] for k in ("cold", "warm")}
    out = {"bench": "warm_start", "command": " ".join(["python", *sys.argv]), "runs": runs, "auc": diffs,
           "fit_seconds": fit, "fit_ratio_warm_over_cold": round(sum(fit["warm"]) / sum(fit["cold"]), 3),
           "window": window}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(
        json.dumps(
            {k: out[k] for k in ("auc", "fit_seconds", "fit_ratio_warm_over_cold", "window")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
