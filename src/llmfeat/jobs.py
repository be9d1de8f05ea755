"""What the thin ``jobs/*.py`` entry points share: argument parsing, the Spark session, progress on stderr,
the JSON summary on stdout, and llmfeat's exit codes (``llmfeat.core.errors``) for every failure."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from llmfeat.core.config import Config, load_config
from llmfeat.core.errors import ExitCode, describe


def parse(description: str, extra: Callable | None = None) -> tuple[Config, dt.date, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--as-of", required=True, type=dt.date.fromisoformat, help="snapshot date YYYY-MM-DD")
    ap.add_argument("--config", "-c", help="YAML config file")
    ap.add_argument(
        "--set", "-s", action="append", default=[], help="override section.key=value (repeatable)"
    )
    if extra:
        extra(ap)
    args = ap.parse_args()  # a bad option exits 2 (argparse), the same code as a bad config value
    return load_config(args.config, args.set), args.as_of, args


def log(message: str) -> None:
    """Progress goes to stderr; the JSON summary is printed last, on stdout. (spark-submit merges the driver's
    stderr into its stdout: a reader takes the last JSON object.)"""
    print(message, file=sys.stderr, flush=True)


def finish(summary: dict) -> None:
    json.dump(summary, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def run_job(
    name: str,
    description: str,
    body: Callable[[Any, Config, dt.date, argparse.Namespace], Any],
    options: Callable | None = None,
) -> None:
    """Parse the arguments, start Spark, run ``body(spark, cfg, as_of, args)`` and print its summary; exit with
    llmfeat's code for whatever it raises (an unexpected exception: 1, traceback on stderr)."""
    from llmfeat.core.spark import build_spark

    spark = None
    try:
        cfg, as_of, args = parse(description, options)
        spark = build_spark(cfg.spark)
        result = body(spark, cfg, as_of, args)
        finish(result.to_dict() if hasattr(result, "to_dict") else result)
    except Exception as exc:  # noqa: BLE001 - the one place a job's exceptions become exit codes
        code, message = describe(exc, f"job {name}")
        if code == ExitCode.FAILURE:
            traceback.print_exc()
        log(message)
        for hint in getattr(exc, "hints", ()):
            log(f"  {hint}")
        sys.exit(int(code))
    finally:
        if spark is not None:
            spark.stop()
