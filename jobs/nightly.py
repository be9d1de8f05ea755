"""spark-submit entry point for the whole nightly run (all stages share the submitted Spark session).

spark-submit --properties-file infra/spark/cpu.conf jobs/nightly.py --as-of 2024-01-31
"""

from llmfeat.jobs import finish, log, parse
from llmfeat.nightly import run_nightly
from llmfeat.spark import build_spark

if __name__ == "__main__":
    cfg, as_of, args = parse(__doc__, lambda ap: ap.add_argument("--force", action="append", default=[]))
    spark = build_spark(cfg.spark)  # run_nightly joins this active session instead of starting its own
    try:
        finish(run_nightly(cfg, as_of, force=tuple(args.force), log=log).to_dict())
    finally:
        spark.stop()
