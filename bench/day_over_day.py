"""Day over day: what tonight costs, given what changed today (issue 16).

On a fresh data directory, ``llmfeat nightly --as-of D`` (the full night: everything since the first event),
then ``llmfeat nightly --as-of D+1`` on the same directory (the incremental night: ingest now sees the events
of day D, and the items and users that appeared by then). Each night runs as its own CLI process, as cron
would run it. Recorded per stage: seconds, rows read and rows written (the ``rows_io`` each stage's summary
carries, src/llmfeat/core/costs.py) and peak memory (the process tree sampled every 0.5 s,
bench/stage_memory.py), and for the night: wall seconds, peak memory, load average before and after; then the
ratio D+1 / D per stage and for the night (the bar: <= 0.20). bench/scale_curve.py runs the same nights on
synthetic data at several sizes.

    .venv/bin/python bench/day_over_day.py --day 1998-04-22 --out var/bench/day_over_day.json

``--deliveries``: the same nights on MovieLens as delivered daily event files (bench/movielens_deliveries.py),
where ingest reads only the files it has not consumed (data/deliveries.py) instead of the whole dump.

The data is MovieLens-100k (var/cache/ml-100k, fetched by ``make run``); everything is seeded by the config
(train.seed, bandit.seed), so a rerun differs only in timings. ``--set`` passes config overrides to both
nights (e.g. a smaller bench config); they are recorded in the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stage_memory import StageSampler

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "embed", "stats", "publish", "index", "train")


def nightly_command(day: dt.date, data_dir: Path, overrides: list[str]) -> list[str]:
    """``llmfeat nightly`` for ``day`` on ``data_dir``, as cron would run it."""
    cmd = [
        sys.executable,
        "-m",
        "llmfeat.cli",
        "nightly",
        "--as-of",
        day.isoformat(),
        "--data-dir",
        str(data_dir),
    ]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def bench_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def markers(data_dir: Path, day: dt.date) -> Path:
    return data_dir / "runs" / day.isoformat()


def stage_markers(data_dir: Path, day: dt.date) -> list[dict]:
    """The night's success markers (each stage's summary and seconds), in stage order."""
    found = [json.loads(p.read_text()) for p in markers(data_dir, day).glob("*.json") if p.stem in STAGES]
    return sorted(found, key=lambda m: STAGES.index(m["stage"]))


def night(day: dt.date, data_dir: Path, overrides: list[str], log_path: Path) -> dict:
    """One nightly run in its own process; its summary plus wall time, peak memory (per stage and for the
    night, bench/stage_memory.py) and load average."""
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(nightly_command(day, data_dir, overrides), cwd=REPO, env=bench_env(), stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        with StageSampler(proc.pid, markers(data_dir, day), STAGES) as memory:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    stages = stage_markers(data_dir, day)
    if rc not in (0, 4) and len(stages) < len(STAGES):  # (a failure after the last stage leaves every marker)
        raise SystemExit(f"nightly --as-of {day} exited {rc}; see {log_path}")
    peaks = memory.peaks()
    return {
        "as_of": day.isoformat(),
        "exit_code": rc,  # non-zero with every marker present: the run failed after its last stage
        "wall_s": round(wall, 1),
        "nightly_s": round(sum(m["seconds"] for m in stages), 3),
        # the largest RSS of any finished child process of this bench process so far (the CLI's Python, or
        # the Spark JVM it started): after several nights, the largest of all of them
        "peak_rss_mib_max_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "peak_memory": memory.night(),  # sampled, this night only
        "teardown_peak_memory": peaks["teardown"],
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "stages": {
            s["stage"]: {
                "seconds": s["seconds"],
                "rows_io": s["summary"].get("rows_io"),
                "peak_memory": peaks.get(s["stage"]),
                "detail": detail(s["stage"], s["summary"]),
            }  # fmt: skip
            for s in stages
        },
    }


def detail(stage: str, s: dict) -> dict:
    """The parts of a stage summary that say why it cost what it did."""
    if stage == "train":
        bandit = s.get("bandit") or {}
        return {"frame": s.get("frame"), "seconds": s.get("seconds"), "evaluation": s.get("evaluation"),
                "bandit_seconds": bandit.get("seconds") if isinstance(bandit, dict) else None}  # fmt: skip
    if stage in ("embed", "stats"):
        return {"snapshots": s.get("snapshots"), "seconds": s.get("seconds")}
    if stage == "publish":
        return {"full": s.get("full_materialization"), "incremental": s.get("incremental"),
                "seconds": s.get("seconds"), "views": (s.get("materialized") or {}).get("views")}  # fmt: skip
    if stage == "index":
        return {"count": s.get("count"), "seconds": s.get("seconds")}
    return {"counts": s.get("counts")}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--day", default="1998-04-22", help="D: the full night; D+1 is the incremental one")
    ap.add_argument("--work", type=Path, default=REPO / "var" / "bench" / "day_over_day")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "day_over_day.json")
    ap.add_argument("--resume", action="store_true", help="keep the data dir and the nights already recorded")
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, both nights"
    )
    ap.add_argument("--deliveries", action="store_true", help="MovieLens as delivered daily event files "
                    "(bench/movielens_deliveries.py), not the dump: ingest reads only the new day's file")  # fmt: skip
    args = ap.parse_args()
    day = dt.date.fromisoformat(args.day)
    data_dir = args.work / "data"
    if not args.resume:
        shutil.rmtree(data_dir, ignore_errors=True)  # the full night starts from nothing
    args.work.mkdir(parents=True, exist_ok=True)
    if args.deliveries:
        from movielens_deliveries import write_landing

        shutil.rmtree(args.work / "landing", ignore_errors=True)
        mapping = write_landing(REPO / "var" / "cache" / "ml-100k", args.work / "landing")
        args.overrides += ["ingest.source=mapped", f"ingest.source_path={mapping}"]
    nights = {}
    for name, d in (("full", day), ("incremental", day + dt.timedelta(days=1))):
        record = args.work / f"{name}.json"
        if args.resume and record.is_file():
            nights[name] = json.loads(record.read_text())
            continue
        print(f"{name} night: nightly --as-of {d} ...", flush=True)
        nights[name] = night(d, data_dir, args.overrides, args.work / f"{name}.log")
        record.write_text(json.dumps(nights[name]))
        print(json.dumps({k: nights[name][k] for k in ("wall_s", "load_before", "load_after")}), flush=True)
    full, inc = nights["full"], nights["incremental"]
    ratios = {
        stage: ratio(inc["stages"][stage]["seconds"], s["seconds"])
        for stage, s in full["stages"].items()
        if stage in inc["stages"]
    }
    out = {
        "bench": "day_over_day",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "overrides": args.overrides,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "nights": nights,
        "ratio_incremental_over_full": {"night_wall": ratio(inc["wall_s"], full["wall_s"]),
                                        "nightly_s": ratio(inc["nightly_s"], full["nightly_s"]), "stages": ratios},
        "bar_met": (ratio(inc["wall_s"], full["wall_s"]) or 1) <= 0.20,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["ratio_incremental_over_full"], indent=2))
    for name in nights:
        print(name, {s: (v["seconds"], v["rows_io"]) for s, v in nights[name]["stages"].items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
