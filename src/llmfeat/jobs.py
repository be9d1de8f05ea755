"""What the thin ``jobs/*.py`` entry points share: argument parsing, progress on stderr and the JSON summary
they print on stdout."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from llmfeat.config import Config, load_config


def parse(description: str, extra: callable | None = None) -> tuple[Config, dt.date, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--as-of", required=True, type=dt.date.fromisoformat, help="snapshot date YYYY-MM-DD")
    ap.add_argument("--config", "-c", help="YAML config file")
    ap.add_argument(
        "--set", "-s", action="append", default=[], help="override section.key=value (repeatable)"
    )
    if extra:
        extra(ap)
    args = ap.parse_args()
    return load_config(args.config, args.set), args.as_of, args


def log(message: str) -> None:
    """Progress goes to stderr; the JSON summary is printed last, on stdout. (spark-submit merges the driver's
    stderr into its stdout: a reader takes the last JSON object.)"""
    print(message, file=sys.stderr, flush=True)


def finish(summary: dict) -> None:
    json.dump(summary, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
