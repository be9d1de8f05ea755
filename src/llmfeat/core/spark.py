"""Building the Spark session: every setting llmfeat relies on, in one place."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

from llmfeat.core.config import ConfigError, SparkConfig

_LOOPBACK = re.compile(r"^(local(\[.*\])?|spark://(127\.0\.0\.1|localhost)(:\d+)?)$")
# The JVM checks an archive itself (JDK build, class path) and runs without it when it does not match; these
# keep that check, and the warnings a dump prints for classes it cannot archive, out of the command's output.
_QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"
_recording: tuple[Path, Path] | None = None
"""(temporary file, archive): what this process's driver JVM writes when it exits, and where it goes."""


def class_archive(cfg: SparkConfig) -> Path | None:
    """The driver JVM's class-data-sharing archive for this JDK and Spark build (it may not exist yet); None
    when off or on a cluster master (there the driver is not this machine's concern)."""
    if cfg.class_archive_dir is None or not cfg.master.startswith("local"):
        return None
    import pyspark

    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else shutil.which("java")
    binary = Path(java).resolve() if java else None
    try:
        st = binary.stat() if binary else None
    except OSError:
        st = None
    jdk = f"{binary}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}"
    key = hashlib.sha256(f"{jdk}|{pyspark.__version__}".encode()).hexdigest()[:12]
    return Path(cfg.class_archive_dir).resolve() / f"spark-{pyspark.__version__}-{key}.jsa"


def _archive_options(cfg: SparkConfig, record: bool) -> tuple[str, tuple[Path, Path] | None]:
    """JVM options for the archive: map it when it exists; else, when ``record``, dump the classes this JVM
    loads to a temporary file at exit (returned with the archive's path: :func:`stop_spark` publishes it)."""
    archive = class_archive(cfg)
    if archive is None:
        return "", None
    if archive.is_file():
        return f" -XX:SharedArchiveFile={archive} {_QUIET_CDS}", None
    if not record:
        return "", None
    archive.parent.mkdir(parents=True, exist_ok=True)
    for stale in archive.parent.glob(".*.jsa.tmp"):  # left by a killed run
        if time.time() - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    tmp = archive.parent / f".{archive.stem}-{uuid.uuid4().hex[:8]}.jsa.tmp"
    return f" -XX:ArchiveClassesAtExit={tmp} {_QUIET_CDS}", (tmp, archive)


def jit_options(cfg: SparkConfig, short: bool = False) -> str:
    """The driver JVM's compiler option (``SparkConfig.jit``) on a local master: ``c1`` stops at the quick
    compiler, ``auto`` does for a ``short`` JVM (the nightly's incremental night); ``tiered`` and cluster
    masters keep the JVM's default."""
    if not cfg.master.startswith("local"):
        return ""
    mode = ("c1" if short else "tiered") if cfg.jit == "auto" else cfg.jit
    return " -XX:TieredStopAtLevel=1" if mode == "c1" else ""


def spark_conf(cfg: SparkConfig, python: str = sys.executable, java_options: str = "") -> dict[str, str]:
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
    conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{log4j}{java_options}"
    conf["spark.executor.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{log4j}"
    if cfg.executor_memory:
        conf["spark.executor.memory"] = cfg.executor_memory
    conf.update({k: str(v) for k, v in cfg.conf.items()})
    if java_options and "spark.driver.extraJavaOptions" in cfg.conf:  # the user's options, and the archive's
        conf["spark.driver.extraJavaOptions"] += java_options
    if cfg.task_cpus < 1:
        raise ConfigError("spark.task_cpus must be >= 1")
    return conf


def build_spark(
    cfg: SparkConfig, python: str = sys.executable, record_classes: bool = False, short: bool = False
):
    """Start (or join) the Spark session for this process. On a local master the driver JVM maps the class
    archive (``spark.class_archive_dir``) when there is one; with ``record_classes`` and none yet, it records
    one, which :func:`stop_spark` publishes (the nightly does: a whole night loads the classes that matter).
    ``short``: the JVM will do little work (an incremental night): ``spark.jit=auto`` gives it the quick
    compiler only (:func:`jit_options`)."""
    global _recording
    from pyspark import SparkContext
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
    options, recording = "", None
    if not submitted and SparkContext._gateway is None:  # JVM options apply only to a JVM not started yet
        options, recording = _archive_options(cfg, record_classes)
        options = jit_options(cfg, short) + options
    for key, value in spark_conf(cfg, python, options).items():
        if submitted and key in ("spark.master", "spark.app.name", "spark.driver.memory"):
            continue
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if recording is not None:
        _recording = recording
    return spark


def stop_spark(spark) -> None:
    """Stop the session. If this process's JVM is recording the class archive, also end the JVM (it writes the
    archive as it exits) and publish the archive with one rename; a later session in this process starts a
    new JVM."""
    global _recording
    spark.stop()
    recording, _recording = _recording, None
    if recording is None:
        return
    tmp, archive = recording
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if gateway is not None:
        gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
    if proc is not None:
        proc.stdin.close()  # the gateway JVM exits at end of input
        try:
            proc.wait(timeout=300)
        except Exception:  # noqa: BLE001 - an archive is an optimisation; a stuck dump must not fail the run
            proc.kill()
    if tmp.is_file() and tmp.stat().st_size > 0 and proc is not None and proc.returncode == 0:
        os.replace(tmp, archive)
    else:
        tmp.unlink(missing_ok=True)


def buckets(spark, key: str):
    """A bucket number per row from ``key`` (one bucket per shuffle partition), for grouped pandas functions
    that take many entities at once: Spark's ``cogroup(...).applyInPandas`` costs about 7 ms per group before
    any work (10 s for 1,400 entities on 2 cores), so a group per entity is the wrong unit."""
    from pyspark.sql import functions as F

    return F.pmod(F.hash(key), F.lit(int(spark.conf.get("spark.sql.shuffle.partitions"))))
