"""Whole-process time of the CLI's everyday commands on a finished data directory (what a user waits for).

    .venv/bin/python bench/cli_startup.py --data-dir var/data --rounds 5 --write BENCHMARKS.md

Each command runs as its own process (the ``llmfeat`` console script beside the interpreter), rounds
interleaved so a noisy neighbour hits every command alike; the median and the fastest of the rounds are
reported, and each as a ratio to the bare interpreter (``python -c pass``) measured in the same run. A
separate ``python -X importtime`` run of each command says which heavy packages it imported and what they cost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_md import cpu_model, write_section  # noqa: E402

TITLE = "CLI start-up (whole process)"
HEAVY = ("feast", "torch", "pyspark", "fastapi", "faiss", "pandas")


def commands(data_dir: Path, item: str, user: str) -> dict[str, list[str] | None]:
    """Command name -> llmfeat arguments (None: the bare interpreter, the baseline)."""
    d = ["--data-dir", str(data_dir)]
    return {
        "python -c pass (baseline)": None,
        "llmfeat --help": ["--help"],
        f"llmfeat retrieve --item {item} -k 10": ["retrieve", "--item", item, "-k", "10", *d],
        f"llmfeat retrieve --user {user} -k 10": ["retrieve", "--user", user, "-k", "10", *d],
        f"llmfeat score --user {user} -k 10": ["score", "--user", user, "-k", "10", *d],
    }


def argv_of(args: list[str] | None) -> list[str]:
    if args is None:
        return [sys.executable, "-c", "pass"]
    script = Path(sys.executable).parent / "llmfeat"
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "llmfeat.cli", *args]


def run_once(argv: list[str]) -> tuple[float, int, str]:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    return time.perf_counter() - t, proc.returncode, (proc.stdout + proc.stderr)[-300:]


def import_costs(args: list[str] | None) -> dict[str, float]:
    """Cumulative import seconds of each heavy top-level package the command imported."""
    if args is None:
        return {}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmfeat.cli", *args],
                          capture_output=True, text=True)  # fmt: skip
    costs: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if name in HEAVY:  # the top-level package line carries its whole subtree
            costs[name] = max(costs.get(name, 0.0), int(cumulative) / 1e6)
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("var/data"))
    ap.add_argument("--item", default="50")
    ap.add_argument("--user", default="1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("var/bench/cli_startup.json"))
    ap.add_argument("--write", type=Path, default=None, help="BENCHMARKS.md to update")
    args = ap.parse_args()

    cmds = commands(args.data_dir, args.item, args.user)
    for name, cli_args in cmds.items():  # warm the page cache and check every command works
        _, code, tail = run_once(argv_of(cli_args))
        if code != 0:
            raise SystemExit(f"{name} exited {code}: {tail}")
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.rounds):
        for name, cli_args in cmds.items():
            times[name].append(run_once(argv_of(cli_args))[0])
    base = statistics.median(times["python -c pass (baseline)"])
    rows = []
    for name, cli_args in cmds.items():
        med, best = statistics.median(times[name]), min(times[name])
        rows.append({"command": name, "median_s": round(med, 3), "min_s": round(best, 3),
                     "x_baseline": round(med / base, 1), "imports_s": import_costs(cli_args)})  # fmt: skip
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_before": os.getloadavg(),
        "rounds": args.rounds,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['command']:<40} median {r['median_s']:6.2f} s  min {r['min_s']:6.2f} s  "
              f"x{r['x_baseline']:<5} {r['imports_s']}")  # fmt: skip
    if args.write:
        lines = [
            f"## {TITLE}",
            "",
            f"Run {result['when']} ({result['machine']}; load average {result['load_before'][0]:.2f} at the start):",
            "",
            "```",
            f".venv/bin/python bench/cli_startup.py --data-dir {args.data_dir} --rounds {args.rounds} --write BENCHMARKS.md",
            "```",
            "",
            f"Each command a fresh process on the `make run` data directory, {args.rounds} rounds interleaved; "
            "x baseline = median / the bare interpreter's median in the same run. Imports: cumulative seconds "
            "of the heavy packages the command imported (one `python -X importtime` run; none = not imported).",
            "",
            "| command | median s | fastest s | x baseline | heavy imports (s) |",
            "|---|---:|---:|---:|---|",
        ]
        for r in rows:
            imports = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(r["imports_s"].items(), key=lambda kv: -kv[1])
            )
            lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['x_baseline']} | "
                         f"{imports or 'none'} |")  # fmt: skip
        write_section(args.write, TITLE, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
