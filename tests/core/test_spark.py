"""The driver JVM's class-data-sharing archive: recorded once by a night, then mapped by every Spark start; an
archive that does not fit (another JDK, a corrupt file) is ignored by the JVM, never an error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llmfeat.core.config import SparkConfig
from llmfeat.core.spark import _archive_options, class_archive, jit_options, spark_conf

_SESSION = """
import json, sys
from llmfeat.core.config import SparkConfig
from llmfeat.core.spark import build_spark, stop_spark
cfg = SparkConfig(master="local[1]", shuffle_partitions=2, driver_memory="1g", class_archive_dir=sys.argv[1])
spark = build_spark(cfg, record_classes=sys.argv[2] == "record")
rows = spark.range(100).selectExpr("id % 7 AS k").groupBy("k").count().count()
args = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
stop_spark(spark)
print(json.dumps({"rows": rows, "args": [a for a in args if "Archive" in a]}))
"""


def _session(tmp_path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _SESSION, str(tmp_path), mode], capture_output=True, text=True,
                         timeout=600, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_archive_options_follow_the_file_and_the_master(tmp_path):
    cfg = SparkConfig(master="local[2]", class_archive_dir=tmp_path)
    archive = class_archive(cfg)
    assert archive is not None and archive.parent == tmp_path.resolve() and archive.suffix == ".jsa"
    assert _archive_options(cfg, record=False) == ("", None)  # nothing to map, nothing asked to record
    options, recording = _archive_options(cfg, record=True)
    assert recording is not None and recording[1] == archive
    assert f"-XX:ArchiveClassesAtExit={recording[0]}" in options and recording[0].parent == archive.parent
    archive.write_bytes(b"x")
    assert _archive_options(cfg, record=True) == (f" -XX:SharedArchiveFile={archive} -Xlog:cds=off "
                                                  "-Xlog:cds+dynamic=off", None)  # fmt: skip
    assert (
        f"-XX:SharedArchiveFile={archive}"
        in spark_conf(cfg, java_options=_archive_options(cfg, False)[0])["spark.driver.extraJavaOptions"]
    )
    # Driver options of the user's (spark.conf) keep the archive's too.
    own = SparkConfig(
        master="local[2]", class_archive_dir=tmp_path, conf={"spark.driver.extraJavaOptions": "-Dx=1"}
    )
    options = spark_conf(own, java_options=_archive_options(own, False)[0])["spark.driver.extraJavaOptions"]
    assert options.startswith("-Dx=1") and f"-XX:SharedArchiveFile={archive}" in options
    # A cluster master's driver is not this machine's; None turns the archive off.
    assert class_archive(SparkConfig(master="spark://10.0.0.1:7077", class_archive_dir=tmp_path)) is None
    assert class_archive(SparkConfig(master="local[2]", class_archive_dir=None)) is None


def test_a_night_records_the_archive_and_later_sessions_map_it(tmp_path):
    archive = class_archive(SparkConfig(master="local[1]", class_archive_dir=tmp_path))
    first = _session(tmp_path, "record")
    assert first["rows"] == 7 and any(a.startswith("-XX:ArchiveClassesAtExit=") for a in first["args"])
    assert archive.is_file() and archive.stat().st_size > 10 << 20  # the JVM wrote it at exit
    assert not list(tmp_path.glob(".*.tmp"))  # published by a rename, nothing left behind

    second = _session(tmp_path, "plain")
    assert second == {"rows": 7, "args": [f"-XX:SharedArchiveFile={archive}"]}

    archive.chmod(0o644)
    archive.write_bytes(b"not an archive" * 1000)  # corrupt (or another JDK's): the JVM runs without it
    third = _session(tmp_path, "record")
    assert third["rows"] == 7 and third["args"] == [f"-XX:SharedArchiveFile={archive}"]


def test_the_quick_compiler_goes_to_short_local_jvms_or_where_asked():
    local = SparkConfig(master="local[2]")
    assert jit_options(local) == "" and jit_options(local, short=True) == " -XX:TieredStopAtLevel=1"
    assert jit_options(SparkConfig(master="local[2]", jit="tiered"), short=True) == ""
    assert jit_options(SparkConfig(master="local[2]", jit="c1")) == " -XX:TieredStopAtLevel=1"
    assert jit_options(SparkConfig(master="spark://10.0.0.1:7077", jit="c1"), short=True) == ""  # not ours


def test_a_short_session_runs_on_the_quick_compiler(tmp_path):
    """The option reaches the driver JVM (its input arguments), and the session works."""
    code = _SESSION.replace('record_classes=sys.argv[2] == "record"', "short=True").replace(
        '"Archive" in a', '"Tiered" in a'
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), "plain"], capture_output=True, text=True,
                         timeout=600, check=True)  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rows": 7, "args": ["-XX:TieredStopAtLevel=1"]}


_HIDDEN = """
import sys
from llmfeat.core.config import SparkConfig
from llmfeat.core.spark import build_spark
spark = build_spark(SparkConfig(master="local[1]", shuffle_partitions=2, driver_memory="1g", class_archive_dir=None))
for name in ("_compact", "_other"):
    path = sys.argv[1] + "/t/" + name
    spark.range(3).write.parquet(path)
    print(name, spark.read.parquet(path).count(), flush=True)
"""


def test_only_the_compact_copies_ignored_path_warning_is_dropped(tmp_path):
    """Spark warns "All paths were ignored" for a directory whose name starts with "_", then reads it whole.
    llmfeat's log configuration drops that warning for the compact copies (core/compact.py) only."""
    out = subprocess.run([sys.executable, "-c", _HIDDEN, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, check=True)  # fmt: skip
    assert out.stdout.split() == ["_compact", "3", "_other", "3"]  # both read whole
    assert "All paths were ignored" in out.stderr and f"{tmp_path}/t/_other" in out.stderr
    assert f"{tmp_path}/t/_compact" not in out.stderr
