"""Whole-process time of the CLI's everyday commands on a finished data directory (what a user waits for).

    git archive f7cbd19 src | (mkdir -p /tmp/f7cbd19 && tar -x -C /tmp/f7cbd19)   # optional: the code before
    .venv/bin/python bench/cli_startup.py --data-dir var/data --rounds 5 --before-src /tmp/f7cbd19 \
        --write BENCHMARKS.md

Each command runs as its own process (``python -m llmfeat.cli``), rounds interleaved so a noisy neighbour
hits every command alike; the median and the fastest of the rounds are reported, with ratios of medians
measured in the same run (to the bare interpreter, and to ``retrieve --item``). A separate
``python -X importtime`` run of each command says which heavy packages it imported and what they cost.
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


BEFORE = " (before: {})"


def commands(data_dir: Path, item: str, user: str, before: str | None) -> dict[str, list[str] | None]:
    """Command name -> llmfeat arguments (None: the bare interpreter, the baseline). With ``before`` (a
    source tree of an older llmfeat), ``retrieve --item`` runs from it too: the change measured side by side."""
    d = ["--data-dir", str(data_dir)]
    item_cmd = f"llmfeat retrieve --item {item} -k 10"
    out: dict[str, list[str] | None] = {
        "python -c pass (baseline)": None,
        "llmfeat --help": ["--help"],
        item_cmd: ["retrieve", "--item", item, "-k", "10", *d],
        f"llmfeat retrieve --user {user} -k 10": ["retrieve", "--user", user, "-k", "10", *d],
        f"llmfeat score --user {user} -k 10": ["score", "--user", user, "-k", "10", *d],
    }
    if before:
        out[item_cmd + BEFORE.format(before)] = out[item_cmd]
    return out


def argv_of(args: list[str] | None) -> list[str]:
    return [sys.executable, "-c", "pass"] if args is None else [sys.executable, "-m", "llmfeat.cli", *args]


def env_of(name: str, before_src: Path | None) -> dict[str, str]:
    """A command's environment: the older source tree on the path for a "before" command."""
    env = dict(os.environ)
    if before_src is not None and name.endswith(BEFORE.format(before_src.name)):
        env["PYTHONPATH"] = str(before_src.resolve() / "src")
    return env


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, proc.returncode, (proc.stdout + proc.stderr)[-300:]


def import_costs(args: list[str] | None, env: dict[str, str]) -> dict[str, float]:
    """Cumulative import seconds of each heavy top-level package the command imported."""
    if args is None:
        return {}
    argv = [sys.executable, "-X", "importtime", "-m", "llmfeat.cli", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
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
    ap.add_argument("--before-src", type=Path, default=None,
                    help="an older llmfeat source tree (git archive COMMIT src | tar -x -C /tmp/COMMIT)")  # fmt: skip
    args = ap.parse_args()

    before = args.before_src.name if args.before_src else None
    cmds = commands(args.data_dir, args.item, args.user, before)
    envs = {name: env_of(name, args.before_src) for name in cmds}
    for name, cli_args in cmds.items():  # warm the page cache and check every command works
        _, code, tail = run_once(argv_of(cli_args), envs[name])
        if code != 0:
            raise SystemExit(f"{name} exited {code}: {tail}")
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.rounds):
        for name, cli_args in cmds.items():
            times[name].append(run_once(argv_of(cli_args), envs[name])[0])
    base = statistics.median(times["python -c pass (baseline)"])
    item_now = statistics.median(times[f"llmfeat retrieve --item {args.item} -k 10"])
    rows = []
    for name, cli_args in cmds.items():
        med, best = statistics.median(times[name]), min(times[name])
        rows.append({"command": name, "median_s": round(med, 3), "min_s": round(best, 3),
                     "x_baseline": round(med / base, 1), "x_retrieve_item": round(med / item_now, 2),
                     "imports_s": import_costs(cli_args, envs[name])})  # fmt: skip
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
        print(f"{r['command']:<58} median {r['median_s']:6.2f} s  min {r['min_s']:6.2f} s  "
              f"x{r['x_retrieve_item']:<6} {r['imports_s']}")  # fmt: skip
    if args.write:
        command = f".venv/bin/python bench/cli_startup.py --data-dir {args.data_dir} --rounds {args.rounds}"
        command += f" --before-src /tmp/{before}" if before else ""
        lines = [
            f"## {TITLE}",
            "",
            f"Run {result['when']} ({result['machine']}; load average {result['load_before'][0]:.2f} at the start):",
            "",
            "```",
            command + " --write BENCHMARKS.md",
            "```",
            "",
            f"Each command a fresh process (`python -m llmfeat.cli`) on the `make run` data directory, {args.rounds} "
            "rounds interleaved; ratios are of medians measured in the same run. Heavy imports: cumulative seconds "
            "of the big packages the command imported (one `python -X importtime` run; none = not imported)."
            + (
                f" `(before: {before})`: the same command from the source tree of commit {before}, before "
                "`retrieve --item` stopped opening the Feast user vectors."
                if before
                else ""
            ),  # fmt: skip
            "",
            "| command | median s | fastest s | x bare interpreter | x `retrieve --item` | heavy imports (s) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            imports = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(r["imports_s"].items(), key=lambda kv: -kv[1])
            )
            lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['x_baseline']} | "
                         f"{r['x_retrieve_item']} | {imports or 'none'} |")  # fmt: skip
        write_section(args.write, TITLE, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
