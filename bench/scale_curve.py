"""Scale curve: seconds and peak memory per nightly stage at k x MovieLens-100k, full and incremental night (issue 16).

    .venv/bin/python bench/scale_curve.py --scales 1 10 100 --out var/bench/scale_curve.json
    .venv/bin/python bench/scale_curve.py --report var/bench/scale_curve.json   # the tables for BENCHMARKS.md

For each scale k: the synthetic data set (bench/synthetic_data.py, seeded: ``--seed``; written once to
``<work>/data/x<k>`` and reused while its manifest matches), then for each day D of ``--days``, on a fresh data
directory, the full night D and the incremental night D+1 with ``ingest.source=movielens`` on that data: the
nights of bench/day_over_day.py (each its own CLI process; seconds and rows read / written per stage from the
run markers; peak memory per stage from the process tree sampled every 0.5 s, bench/stage_memory.py). Each
night's record is kept in ``<work>/x<k>/<D>/``, so ``--resume`` continues after an interruption; the data
directory is removed after its two nights unless ``--keep-data-dirs`` (its size is recorded first).

Then, for the full and the incremental night, per stage and for the whole night: the exponent b of
cost = a * k^b, a least-squares line on log-log over the scales (a is the cost at 1x), for seconds and for peak
memory (the tree's PSS). The fit uses the latest of ``--days``.

History length: with two days, e.g. ``--days 1997-12-01 1998-04-22``, the incremental night runs after ~70 and
after ~214 stored days of the same data (the generator's days are the same size in expectation), and the report
sets its train stage's seconds and rows trained on side by side: the bar is that they do not grow with the
stored days (with ``--set train.window_days=30``; without it, training reads the whole stored frame).

``--set`` passes config overrides to every night; they are recorded in the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from day_over_day import REPO, STAGES, night, ratio
from synthetic_data import START_TS, ensure

NIGHT = "night"  # the whole night, next to the stages
KINDS = ("full", "incremental")
FIRST_DAY = dt.datetime.fromtimestamp(START_TS, dt.UTC).date()


def label(scale: float) -> str:
    return f"x{scale:g}"


def fit_exponent(sizes: Sequence[float], costs: Sequence[float | None]) -> dict | None:
    """b and a of cost = a * size^b, least squares on log-log over the points with a positive cost; None with
    fewer than two distinct sizes."""
    points = [(s, c) for s, c in zip(sizes, costs, strict=True) if c is not None and c > 0 and s > 0]
    if len({s for s, _ in points}) < 2:
        return None
    x = np.log([s for s, _ in points])
    y = np.log([c for _, c in points])
    b, log_a = np.polyfit(x, y, 1)
    return {"b": round(float(b), 3), "a": round(math.exp(log_a), 3), "points": len(points)}


def dir_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / (1 << 20), 1)


def recorded(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def night_pair(work: Path, day: dt.date, overrides: list[str], *, resume: bool, keep: bool) -> dict:
    """The full night ``day`` on a fresh data directory, then the incremental night ``day`` + 1 on it."""
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    full = recorded(work / "full.json") if resume else None
    inc = recorded(work / "incremental.json") if resume else None
    if inc is None and not data_dir.is_dir():
        full = None  # the incremental night needs the full night's data directory
    for name, d in (("full", day), ("incremental", day + dt.timedelta(days=1))):
        if (full if name == "full" else inc) is not None:
            continue
        if name == "full":
            shutil.rmtree(data_dir, ignore_errors=True)  # the full night starts from nothing
        print(f"  {name} night: nightly --as-of {d} ...", flush=True)
        record = night(d, data_dir, overrides, work / f"{name}.log")
        record["data_dir_mib"] = dir_mib(data_dir)
        (work / f"{name}.json").write_text(json.dumps(record))
        print(f"  {name}: wall {record['wall_s']} s, peak {record['peak_memory']}", flush=True)
        full, inc = (record, inc) if name == "full" else (full, record)
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"day": day.isoformat(), "stored_days": (day - FIRST_DAY).days, "full": full, "incremental": inc}


def peak_mib(peak: dict | None) -> float | None:
    """A peak's tree PSS (what the tree holds), or its RSS sum where PSS could not be read."""
    if not peak:
        return None
    return peak["tree_pss_mib"] if peak.get("tree_pss_mib") is not None else peak["tree_rss_mib"]


def costs(record: dict, part: str) -> tuple[float | None, float | None]:
    """(seconds, peak MiB) of one stage of a night record, or of the whole night."""
    if part == NIGHT:
        return record["wall_s"], peak_mib(record["peak_memory"])
    stage = record["stages"].get(part)
    return (stage["seconds"], peak_mib(stage["peak_memory"])) if stage else (None, None)


def curves(runs: list[dict]) -> dict:
    """Per kind and part: seconds and peak MiB at each scale (the latest day), and their fitted exponents."""
    sizes = [r["scale"] for r in runs]
    out: dict = {}
    for kind in KINDS:
        out[kind] = {}
        for part in (*STAGES, NIGHT):
            seconds, mib = zip(*(costs(r["pairs"][-1][kind], part) for r in runs), strict=True)
            out[kind][part] = {
                "seconds": list(seconds),
                "peak_mib": list(mib),
                "seconds_fit": fit_exponent(sizes, seconds),
                "peak_mib_fit": fit_exponent(sizes, mib),
            }
    return {"scales": sizes, **out}


def history(runs: list[dict]) -> list[dict]:
    """The incremental night's train stage at each stored-history length (one row per scale and day)."""
    rows = []
    for run in runs:
        for pair in run["pairs"]:
            train = pair["incremental"]["stages"].get("train") or {}
            io = train.get("rows_io") or {}
            rows.append({"scale": run["scale"], "day": pair["day"], "stored_days": pair["stored_days"],
                         "train_s": train.get("seconds"), "trained_on": io.get("trained_on"),
                         "new_rows": io.get("fetched_from_feast"), "night_s": pair["incremental"]["wall_s"]})  # fmt: skip
    return rows


def run_scale(scale: float, args: argparse.Namespace) -> dict:
    data = args.work / "data" / label(scale)
    print(f"{label(scale)}: data in {data} ...", flush=True)
    manifest = ensure(scale, args.seed, data)
    source = ["ingest.source=movielens", f"ingest.source_path={data.resolve()}"]
    pairs = [
        night_pair(args.work / label(scale) / day.isoformat(), day, [*source, *args.overrides],
                   resume=args.resume, keep=args.keep_data_dirs)
        for day in args.days
    ]  # fmt: skip
    return {"scale": scale, "data": manifest, "pairs": pairs}


def measure(args: argparse.Namespace) -> dict:
    runs = [run_scale(k, args) for k in sorted(args.scales)]
    for run in runs:
        for pair in run["pairs"]:
            pair["ratio_incremental_over_full"] = ratio(pair["incremental"]["wall_s"], pair["full"]["wall_s"])
    return {
        "bench": "scale_curve",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "overrides": args.overrides,
        "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "memory_method": "process tree (CLI + Spark JVM + workers) sampled with psutil every 0.5 s (RSS) and "
        "every 5 s or at a new RSS high (PSS), bench/stage_memory.py; peak_mib: the summed PSS (RSS where PSS "
        "is unavailable), attributed to the stage without a run marker yet",
        "runs": runs,
        "curves": curves(runs),
        "history": history(runs),
    }


def _num(v: float | None, digits: int = 1) -> str:
    return "" if v is None else f"{v:,.{digits}f}"


def _fit(fit: dict | None) -> str:
    return "" if fit is None else f"{fit['b']:.2f}"


def report(result: dict) -> str:
    """Markdown tables for BENCHMARKS.md: seconds and peak memory per stage and scale, exponents, history."""
    c = result["curves"]
    heads = [label(k) for k in c["scales"]]
    lines = [f"Command: `{result['command']}`; overrides: {result['overrides'] or 'none'}.", ""]
    data = ", ".join(
        f"{label(r['scale'])}: {r['data']['counts']['ratings']:,} ratings, {r['data']['counts']['items']:,} items, "
        f"{r['data']['counts']['users']:,} users" for r in result["runs"]
    )  # fmt: skip
    lines += [f"Data: {data}.", ""]
    for what, key, fit_key, digits in (("seconds", "seconds", "seconds_fit", 1),
                                       ("peak memory, MiB (process tree PSS)", "peak_mib", "peak_mib_fit", 0)):  # fmt: skip
        cols = [f"full {h}" for h in heads] + ["b full"] + [f"incr. {h}" for h in heads] + ["b incr."]
        lines += [f"**{what}** (b: fitted exponent of cost = a * size^b)", ""]
        lines += ["| stage | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for part in (*STAGES, NIGHT):
            cells = []
            for kind in KINDS:
                cells += [_num(v, digits) for v in c[kind][part][key]] + [_fit(c[kind][part][fit_key])]
            name = f"**{part}**" if part == NIGHT else part
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    days = {h["day"] for h in result["history"]}
    if len(days) > 1:
        lines += ["**incremental night vs stored history**", ""]
        lines += ["| scale | D | stored days | train s | trained on | new rows | night s |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for h in result["history"]:
            lines.append(f"| {label(h['scale'])} | {h['day']} | {h['stored_days']} | {_num(h['train_s'])} | "
                         f"{_num(h['trained_on'], 0)} | {_num(h['new_rows'], 0)} | {_num(h['night_s'])} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=float, nargs="+", help="k: sizes as multiples of MovieLens-100k")
    ap.add_argument("--days", type=dt.date.fromisoformat, nargs="+", default=[dt.date(1998, 4, 22)],
                    help="D: each a full night D then the incremental D+1 (the latest feeds the fit)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="the generator's seed")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "bench" / "scale_curve")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "scale_curve.json")
    ap.add_argument("--resume", action="store_true", help="keep the nights already recorded in --work")
    ap.add_argument("--keep-data-dirs", action="store_true", help="keep each night pair's data directory")
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, every night"
    )
    ap.add_argument("--report", type=Path, metavar="JSON", help="print a result's markdown tables and exit")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return
    if not args.scales:
        ap.error("--scales is required (or --report)")
    args.days = sorted(args.days)
    result = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
