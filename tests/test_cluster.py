"""The embedding job on a real Spark standalone cluster (a master and a worker started from the pyspark
installation, on loopback), submitted with spark-submit as in production: its tables equal a local-mode
run's (same rows, vectors within 1e-5, same model id).

The cluster side runs in separate processes (one SparkContext per Python process; the session-scoped local
`spark` fixture stays untouched). The local side is the day-1 nightly run of the shared `pit_day1` fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmfeat.core.config import load_config
from llmfeat.data.ingest import run_ingest
from tests.pit_runs import DAY1, pit_overrides
from tests.services import free_port

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def cluster_env(tmp: Path) -> dict[str, str]:
    """What the master, the worker and spark-submit share: the venv's Python (executors must import llmfeat,
    torch, numpy), this checkout's sources, loopback only."""
    return {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(tmp / "logs"),
        "SPARK_PID_DIR": str(tmp),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO / "src"),
    }


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for(check, what: str, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                pytest.fail(
                    f"{log.name} exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
                )
        try:
            if check():
                return
        except (OSError, httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(log.read_text()[-2000:] for log in logs))


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """spark://127.0.0.1:PORT with one worker (1 core, 1 GiB), torn down afterwards whatever happens."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Java is not installed (Spark needs Java 17+): cannot start a standalone cluster")
    tmp = tmp_path_factory.mktemp("cluster")
    env = cluster_env(tmp)
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, master_ui, worker_ui = free_port(), free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    logs = [tmp / "master.log", tmp / "worker.log"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                            "--port", str(port), "--webui-port", str(master_ui)], env, logs[0]))  # fmt: skip
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() is None,
                 "the master to listen", procs, logs[:1])  # fmt: skip
        procs.append(start([spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                            "--cores", "1", "--memory", "1g", "--webui-port", str(worker_ui),
                            "--work-dir", str(tmp / "work")], env, logs[1]))  # fmt: skip

        def registered() -> bool:
            state = httpx.get(f"http://127.0.0.1:{master_ui}/json/", timeout=2).json()
            return state.get("aliveworkers", 0) >= 1

        wait_for(registered, "the worker to register with the master", procs, logs)
        yield {"url": url, "env": env, "work": tmp / "work", "tmp": tmp}
    finally:
        for proc in reversed(procs):
            stop(proc)


def table_frame(path: Path) -> pd.DataFrame:
    df = pq.read_table(path).to_pandas().drop(columns=["created_timestamp"])
    df["snapshot_date"] = df["snapshot_date"].astype(str)
    key = "item_id" if "item_id" in df.columns else "user_id"
    return df.sort_values([key, "event_timestamp"]).reset_index(drop=True)


def test_embed_job_on_a_standalone_cluster_equals_local_mode(standalone_cluster, pit_day1, tmp_path):
    data_dir = tmp_path / "data"
    sets = [*pit_overrides(data_dir), f"spark.master={standalone_cluster['url']}"]
    run_ingest(load_config(None, sets), DAY1)  # pandas only; the Spark part is what runs on the cluster

    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", standalone_cluster["url"],
           "--conf", "spark.executor.memory=768m", "--conf", "spark.executor.cores=1",
           "--conf", f"spark.executorEnv.PYTHONPATH={REPO / 'src'}",
           str(REPO / "jobs" / "embed.py"), "--as-of", DAY1.isoformat()]  # fmt: skip
    for item in sets:
        cmd += ["--set", item]
    log = tmp_path / "spark-submit.log"
    with log.open("w") as err:
        proc = subprocess.run(cmd, cwd=REPO, env=standalone_cluster["env"], stdout=subprocess.PIPE, stderr=err,
                              text=True, timeout=420)  # fmt: skip
    assert proc.returncode == 0, log.read_text()[-5000:]
    # the job's summary is the JSON object it prints last (spark-submit merges the driver's stderr into stdout)
    text = "\n" + proc.stdout
    manifest = json.loads(text[text.rindex("\n{") + 1 :])
    assert manifest["spark_master"] == standalone_cluster["url"]
    # the encoding ran in the worker's executor, not in the driver
    assert list(standalone_cluster["work"].glob("app-*/*/stderr")), "no executor was launched on the worker"

    local = json.loads(next((pit_day1 / "embeddings/default/manifests").glob("*.json")).read_text())
    assert manifest["model_id"] == local["model_id"]
    assert manifest["counts"] == local["counts"]
    for table in ("item_text", "user_text", "user_history"):
        got = table_frame(data_dir / "embeddings/default" / table)
        want = table_frame(pit_day1 / "embeddings/default" / table)
        key = "item_id" if table == "item_text" else "user_id"
        assert list(got[key]) == list(want[key]) and list(got["event_timestamp"]) == list(
            want["event_timestamp"]
        )
        assert set(got["model_id"]) == {local["model_id"]}
        for a, b in zip(got["embedding"], want["embedding"], strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert np.allclose(a, b, atol=1e-5), table
        rest = [c for c in got.columns if c not in ("embedding",)]
        pd.testing.assert_frame_equal(got[rest], want[rest], obj=table)
