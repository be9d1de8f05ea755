"""CTR quality benchmark: every configured model over several seeds, on one point-in-time training frame.

The frame is fetched from Feast once (``fetch_training_frame``) and each seed retrains all models on it
(``run_train(..., frame=...)``), so the models differ only by their seed. Reports mean and standard deviation
of AUC / logloss per protocol, model and slice, and the gap of ``deep_lm`` over the id-only baseline
(``deep_ids_stats``) per seed, overall and on cold-start items.

    .venv/bin/python bench/ctr_bench.py --data-dir var/data --as-of 1998-04-23 --seeds 7 8 9 \
        --out var/bench/ctr.json

The data directory must hold a published feature store (``make run``); it is copied, never written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks_md import cpu_model  # noqa: E402

from llmfeat.core.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "data")
    ap.add_argument("--as-of", default="1998-04-23")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--protocols", nargs="+", default=["temporal", "leave_last_k"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config overrides.")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "ctr.json")
    args = ap.parse_args()
    as_of = dt.date.fromisoformat(args.as_of)
    started = time.perf_counter()

    from llmfeat.core.spark import build_spark
    from llmfeat.ctr.train import fetch_training_frame, run_train

    with tempfile.TemporaryDirectory(prefix="ctr-bench-") as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(
            args.data_dir, data, ignore=shutil.ignore_patterns("models", "reports", "index", "runs")
        )
        base = [f"paths.data_dir={data}", f"paths.reports_dir={Path(tmp) / 'reports'}",
                f"train.protocols=[{', '.join(args.protocols)}]", *args.overrides]  # fmt: skip
        cfg = load_config(None, base)
        spark = build_spark(cfg.spark)
        try:
            t0 = time.perf_counter()
            frame = fetch_training_frame(cfg, as_of, log=print)
            fetch_s = time.perf_counter() - t0
        finally:
            spark.stop()
        runs = []
        for seed in args.seeds:
            print(f"seed {seed} ...", flush=True)
            summary = run_train(load_config(None, [*base, f"train.seed={seed}"]), as_of, log=lambda _: None,
                                frame=frame)  # fmt: skip
            for r in summary["results"]:
                runs.append({**r, "seed": seed})
            print(f"  {summary['seconds']['training']:.0f} s", flush=True)

    results = pd.DataFrame(runs)
    metrics = ["auc", "logloss", "gauc"]
    table = (
        results.groupby(["protocol", "model", "slice"])
        .agg(
            rows=("rows", "first"),
            base_logloss=("base_logloss", "first"),
            **{f"{m}_{s}": (m, s) for m in metrics for s in ("mean", "std")},
        )  # fmt: skip
        .reset_index()
    )
    gaps = (
        results[results["model"].isin(["deep_lm", "deep_ids_stats"])]
        .pivot_table(index=["protocol", "slice", "seed"], columns="model", values="auc")
        .assign(gap=lambda d: d["deep_lm"] - d["deep_ids_stats"])
        .reset_index()
    )
    out = {
        "command": " ".join(sys.argv),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "rows": len(frame),
        "fetch_seconds": round(fetch_s, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "table": table.to_dict("records"),
        "gaps": gaps.to_dict("records"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    shown = table[table["slice"].isin(["all", "cold_item", "cold_user"])]
    print(shown.to_markdown(index=False, floatfmt=".4f"))
    print(
        gaps.groupby(["protocol", "slice"])["gap"]
        .agg(["mean", "std", "min", "max"])
        .to_markdown(floatfmt=".4f")
    )


if __name__ == "__main__":
    main()
