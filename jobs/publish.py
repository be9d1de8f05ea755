"""spark-submit entry point for Feast apply + materialisation.

spark-submit --properties-file infra/spark/cpu.conf jobs/publish.py --as-of 2024-01-31 [--full]
"""

from llmfeat.jobs import finish, log, parse
from llmfeat.publish import run_publish
from llmfeat.spark import build_spark

if __name__ == "__main__":
    cfg, as_of, args = parse(__doc__, lambda ap: ap.add_argument("--full", action="store_true"))
    spark = build_spark(cfg.spark)
    try:
        finish(run_publish(cfg, as_of, full=args.full, log=log))
    finally:
        spark.stop()
