"""spark-submit entry point for CTR training (Feast's Spark offline store runs in the submitted session).

spark-submit --properties-file infra/spark/cpu.conf jobs/train_ctr.py --as-of 2024-01-31
"""

from llmfeat.jobs import finish, log, parse
from llmfeat.spark import build_spark
from llmfeat.train import run_train

if __name__ == "__main__":
    cfg, as_of, _ = parse(__doc__)
    spark = build_spark(cfg.spark)
    try:
        finish(run_train(cfg, as_of, log=log))
    finally:
        spark.stop()
