"""spark-submit entry point for CTR training (Feast's Spark offline store runs in the submitted session).

spark-submit --properties-file infra/spark/cpu.conf jobs/train_ctr.py --as-of 2024-01-31
"""

from llmfeat.ctr.train import run_train
from llmfeat.jobs import log, run_job

if __name__ == "__main__":
    run_job("train", __doc__, lambda spark, cfg, as_of, args: run_train(cfg, as_of, log=log))
