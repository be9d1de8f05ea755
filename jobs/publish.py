"""spark-submit entry point for Feast apply + materialisation.

spark-submit --properties-file infra/spark/cpu.conf jobs/publish.py --as-of 2024-01-31 [--full]
"""

from llmfeat.features.publish import run_publish
from llmfeat.jobs import log, run_job

if __name__ == "__main__":
    run_job(
        "publish",
        __doc__,
        lambda spark, cfg, as_of, args: run_publish(cfg, as_of, full=args.full, log=log),
        lambda ap: ap.add_argument("--full", action="store_true"),
    )
