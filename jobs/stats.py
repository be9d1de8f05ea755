"""spark-submit entry point for the behaviour-stats stage.

spark-submit --properties-file infra/spark/cpu.conf jobs/stats.py --as-of 2024-01-31
"""

import datetime as dt

from llmfeat.features.stats import run_stats
from llmfeat.jobs import log, run_job

if __name__ == "__main__":
    run_job(
        "stats",
        __doc__,
        lambda spark, cfg, as_of, args: run_stats(spark, cfg, as_of, snapshot_from=args.start, log=log),
        lambda ap: ap.add_argument("--from", dest="start", type=dt.date.fromisoformat),
    )
