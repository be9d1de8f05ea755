"""Building the Spark session: every setting llmfeat relies on, in one place."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from llmfeat.core.config import ConfigError, SparkConfig

_LOOPBACK = re.compile(r"^(local(\[.*\])?|spark://(127\.0\.0\.1|localhost)(:\d+)?)$")


def spark_conf(cfg: SparkConfig, python: str = sys.executable) -> dict[str, str]:
    conf = {
        "spark.app.name": cfg.app_name,
        "spark.master": cfg.master,
        "spark.driver.memory": cfg.driver_memory,
        # Every timestamp in llmfeat is UTC; without this Spark shifts them by the machine's zone.
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        # Reused Python workers keep the encoder loaded between tasks (once per worker, not per task).
        "spark.python.worker.reuse": "true",
        "spark.task.cpus": str(cfg.task_cpus),
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Executors must run the same interpreter (the venv's); the system python3 lacks numpy & torch.
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        "spark.executorEnv.HF_HUB_OFFLINE": "1",
        "spark.executorEnv.TRANSFORMERS_OFFLINE": "1",
        "spark.executorEnv.TOKENIZERS_PARALLELISM": "false",
        "spark.executorEnv.OMP_NUM_THREADS": str(cfg.task_cpus),
    }
    if _LOOPBACK.match(cfg.master):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    if cfg.master.startswith("local"):
        # Change-log tables have a partition per snapshot day. Past 32 paths Spark lists them with a Spark
        # job of its own (meant for object stores on a cluster); on a local disk the driver lists thousands of
        # directories in milliseconds, while that job costs about a second per table read, several per stage.
        conf["spark.sql.sources.parallelPartitionDiscovery.threshold"] = "100000"
    log4j = Path(__file__).with_name("log4j2.properties")
    conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{log4j}"
    conf["spark.executor.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{log4j}"
    if cfg.executor_memory:
        conf["spark.executor.memory"] = cfg.executor_memory
    conf.update({k: str(v) for k, v in cfg.conf.items()})
    if cfg.task_cpus < 1:
        raise ConfigError("spark.task_cpus must be >= 1")
    return conf


def build_spark(cfg: SparkConfig, python: str = sys.executable):
    """Start (or join) the Spark session for this process."""
    import os

    from pyspark.sql import SparkSession

    # PySpark picks the workers' interpreter from PYSPARK_PYTHON when the context starts (the conf key
    # alone is not enough in local mode); without it workers run `python3` from PATH, which lacks llmfeat.
    os.environ["PYSPARK_PYTHON"] = python
    if _LOOPBACK.match(cfg.master):
        # Bind the JVM to loopback before it starts (else it warns and picks the first interface).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    # Under spark-submit the master (and the rest of its --conf) is already decided: keep it.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    for key, value in spark_conf(cfg, python).items():
        if submitted and key in ("spark.master", "spark.app.name", "spark.driver.memory"):
            continue
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def buckets(spark, key: str):
    """A bucket number per row from ``key`` (one bucket per shuffle partition), for grouped pandas functions
    that take many entities at once: Spark's ``cogroup(...).applyInPandas`` costs about 7 ms per group before
    any work (10 s for 1,400 entities on 2 cores), so a group per entity is the wrong unit."""
    from pyspark.sql import functions as F

    return F.pmod(F.hash(key), F.lit(int(spark.conf.get("spark.sql.shuffle.partitions"))))
