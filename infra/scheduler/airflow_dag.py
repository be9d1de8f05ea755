"""Airflow DAG for the nightly run: one task per stage, each an idempotent `llmfeat nightly` call that
stops after its stage (the run markers make the per-stage calls resume where the last one ended).

Importable without side effects; tests/test_infra.py imports it when Airflow is installed.
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.operators.bash import BashOperator

LLMFEAT = "/opt/llmfeat/.venv/bin/llmfeat"
CONFIG = "/etc/llmfeat/production.yaml"
STAGES = ("ingest", "embed", "stats", "publish", "index", "train")

with DAG(
    dag_id="llmfeat_nightly",
    schedule="15 2 * * *",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # the data-directory lock would refuse a second run anyway
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    tags=["llmfeat"],
) as dag:
    previous = None
    for stage in STAGES:
        task = BashOperator(
            task_id=stage,
            # `{{ ds }}` is the logical date; exit code 4 (rows quarantined, run complete) is not a failure
            bash_command=f"{LLMFEAT} nightly --as-of {{{{ ds }}}} --config {CONFIG} --until {stage}; rc=$?; "
            "[ $rc -eq 0 ] || [ $rc -eq 4 ]",
        )
        if previous is not None:
            previous >> task
        previous = task
