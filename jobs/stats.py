"""spark-submit entry point for the behaviour-stats stage.

spark-submit --properties-file infra/spark/cpu.conf jobs/stats.py --as-of 2024-01-31
"""

import datetime as dt

from llmfeat.jobs import finish, log, parse
from llmfeat.spark import build_spark
from llmfeat.stats import run_stats

if __name__ == "__main__":
    cfg, as_of, args = parse(
        __doc__, lambda ap: ap.add_argument("--from", dest="start", type=dt.date.fromisoformat)
    )
    spark = build_spark(cfg.spark)
    try:
        finish(run_stats(spark, cfg, as_of, snapshot_from=args.start, log=log))
    finally:
        spark.stop()
