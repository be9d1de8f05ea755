"""The deployment files under infra/ parse, hold what they claim, and agree with the code: Spark properties
with resource settings, the production Feast profile through Feast's own loader, cron / systemd / Airflow
entries that run `llmfeat nightly` and treat its exit codes right."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmfeat.cli import Exit
from llmfeat.nightly import STAGES

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
MEMORY = re.compile(r"^\d+[kmgt]$", re.IGNORECASE)


def spark_properties(path: Path) -> dict[str, str]:
    """A spark-submit --properties-file: `key value` (whitespace, '=' or ':' separated), '#' comments."""
    props: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        match = re.match(r"^(\S+?)\s*[=:\s]\s*(\S.*)$", line)
        assert match, f"{path.name}:{n}: not a `key value` line: {line!r}"
        key, value = match.groups()
        assert key.startswith("spark."), f"{path.name}:{n}: {key} is not a Spark property"
        assert key not in props, f"{path.name}:{n}: {key} is set twice"
        props[key] = value.strip()
    return props


@pytest.mark.parametrize("name", ["cpu.conf", "gpu.conf"])
def test_spark_properties_hold_consistent_resources(name):
    props = spark_properties(INFRA / "spark" / name)
    for key in ("spark.master", "spark.executor.memory", "spark.executor.cores", "spark.task.cpus"):
        assert key in props, f"{name} lacks {key}"
    assert re.match(r"^spark://[\w.-]+:\d+$", props["spark.master"])
    assert MEMORY.match(props["spark.executor.memory"])
    cores, task_cpus = int(props["spark.executor.cores"]), int(props["spark.task.cpus"])
    assert 1 <= task_cpus <= cores and cores % task_cpus == 0, "executor cores must hold whole tasks"
    # llmfeat relies on these whatever the file: UTC timestamps, Arrow UDFs, reused workers, offline models
    assert props["spark.sql.session.timeZone"] == "UTC"
    assert props["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert props["spark.python.worker.reuse"] == "true"
    assert props["spark.executorEnv.HF_HUB_OFFLINE"] == "1"
    if "spark.executorEnv.OMP_NUM_THREADS" in props:  # torch threads per task = the task's cores
        assert int(props["spark.executorEnv.OMP_NUM_THREADS"]) == task_cpus
    if name == "gpu.conf":
        executor_gpus = float(props["spark.executor.resource.gpu.amount"])
        task_gpus = float(props["spark.task.resource.gpu.amount"])
        assert 0 < task_gpus <= executor_gpus
        assert props["spark.executor.resource.gpu.discoveryScript"].startswith("/")
        # tasks per executor allowed by GPUs must not exceed those allowed by cores (else cores sit idle)
        assert executor_gpus / task_gpus <= cores / task_cpus


def test_feast_production_profile_loads_with_feast(monkeypatch):
    from feast.repo_config import load_repo_config

    from llmfeat.core.config import load_config
    from llmfeat.features.publish import feature_store_yaml

    monkeypatch.setenv("LLMFEAT_DATA_DIR", "/srv/llmfeat")
    monkeypatch.setenv("REDIS_URL", "redis.internal:6379")
    monkeypatch.setenv("SPARK_MASTER", "spark://spark-master:7077")
    config = load_repo_config(REPO / "feature_repo", INFRA / "feast" / "feature_store.production.yaml")
    # these are validated lazily: touching them parses each section with its store's own model
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "redis.internal:6379"
    assert config.offline_store.type == "spark"
    assert config.offline_store.spark_conf["spark.master"] == "spark://spark-master:7077"
    assert config.offline_store.spark_conf["spark.sql.session.timeZone"] == "UTC"
    assert config.batch_engine.type == "spark.engine"
    assert config.registry.path == "/srv/llmfeat/feast/registry.db"

    # the same shape llmfeat generates for its production settings
    cfg = load_config(None, ["feast.online_store=redis", "feast.batch_engine=spark.engine"])
    generated = feature_store_yaml(cfg)
    assert config.project == generated["project"]
    assert config.entity_key_serialization_version == generated["entity_key_serialization_version"]
    assert (
        generated["online_store"]["type"] == "redis" and generated["batch_engine"]["type"] == "spark.engine"
    )


def test_crontab_runs_nightly_with_valid_schedule():
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    entries = []
    for line in (INFRA / "scheduler" / "crontab").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, f"not `m h dom mon dow command`: {line!r}"
        for value, (lo, hi) in zip(fields[:5], ranges, strict=True):
            for part in value.split(","):
                base = part.split("/")[0]
                if base != "*":
                    for bound in base.split("-"):
                        assert lo <= int(bound) <= hi, f"{value!r} out of {lo}..{hi}"
        command = fields[5]
        # cron turns an unescaped % into a newline: every % must be written \%
        assert not re.search(r"(?<!\\)%", command), f"unescaped % in {command!r}"
        entries.append(command)
    assert len(entries) == 1 and "llmfeat nightly" in entries[0] and "--as-of" in entries[0]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_systemd_units():
    service = unit(INFRA / "scheduler" / "llmfeat-nightly.service")
    timer = unit(INFRA / "scheduler" / "llmfeat-nightly.timer")
    exec_start = service["Service"]["ExecStart"]
    assert "llmfeat nightly" in exec_start and "--as-of" in exec_start
    assert service["Service"]["Type"] == "oneshot"
    # systemd expands %-specifiers in ExecStart: a literal % must be %%
    assert not re.search(r"(?<!%)%(?!%)", exec_start.replace("%%", "")), exec_start
    # quarantined rows (exit 4) end a complete run: not a failure for systemd
    assert str(Exit.QUARANTINED) in service["Service"]["SuccessExitStatus"].split()
    assert "OnCalendar" in timer["Timer"] and timer["Install"]["WantedBy"] == "timers.target"
    if shutil.which("systemd-analyze"):
        out = subprocess.run(["systemd-analyze", "calendar", timer["Timer"]["OnCalendar"]],
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr


def test_airflow_dag_runs_every_stage_in_order_static():
    """Without Airflow: the DAG file's stage list is the pipeline's, and its command stops after each."""
    source = (INFRA / "scheduler" / "airflow_dag.py").read_text()
    tree = ast.parse(source)
    stages = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "STAGES" for t in node.targets)
    )
    assert tuple(stages) == STAGES
    assert "nightly --as-of {{{{ ds }}}}" in source and "--until {stage}" in source
    assert f"[ $rc -eq {Exit.QUARANTINED} ]" in source


def test_airflow_dag_imports():
    if importlib.util.find_spec("airflow") is None:
        pytest.skip(
            "Airflow is not installed: the DAG file is checked statically only (pip install apache-airflow)"
        )
    spec = importlib.util.spec_from_file_location(
        "llmfeat_airflow_dag", INFRA / "scheduler" / "airflow_dag.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    assert dag.dag_id == "llmfeat_nightly" and [t.task_id for t in dag.topological_sort()] == list(STAGES)
    for task in dag.tasks:
        assert "llmfeat nightly" in task.bash_command and f"--until {task.task_id}" in task.bash_command


def test_production_config_loads_and_requires_a_token(tmp_path):
    """infra/llmfeat/production.yaml is a valid llmfeat config; its service binds beyond loopback, so it turns
    serve.auth on (with a token file, not a token in the config)."""
    from llmfeat.core.config import load_config
    from llmfeat.retrieval.serve_auth import resolve_token

    cfg = load_config(INFRA / "llmfeat" / "production.yaml")
    assert cfg.feast.online_store == "redis" and cfg.feast.batch_engine == "spark.engine"
    assert cfg.paths.reports_dir is None  # reports under the data directory
    assert cfg.serve.host not in ("127.0.0.1", "localhost") and cfg.serve.auth.token is None
    assert cfg.serve.auth.token_file is not None and cfg.serve.auth.token_file.is_absolute()
    (tmp_path / "serve.token").write_text("t0ken\n")
    moved = load_config(
        INFRA / "llmfeat" / "production.yaml", [f"serve.auth.token_file={tmp_path / 'serve.token'}"]
    )
    assert resolve_token(moved.serve.auth) == "t0ken"
