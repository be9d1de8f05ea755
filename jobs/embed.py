"""spark-submit entry point for the embedding stage.

spark-submit --properties-file infra/spark/cpu.conf jobs/embed.py --as-of 2024-01-31 [--from 2024-01-01]
"""

import datetime as dt

from llmfeat.embedding.embed import run_embed
from llmfeat.jobs import log, run_job

if __name__ == "__main__":
    run_job(
        "embed",
        __doc__,
        lambda spark, cfg, as_of, args: run_embed(spark, cfg, as_of, snapshot_from=args.start, log=log),
        lambda ap: ap.add_argument("--from", dest="start", type=dt.date.fromisoformat),
    )
