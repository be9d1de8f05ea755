"""One error model: every CLI command and every ``jobs/*.py`` exits with the documented code for each cause,
run as a real process (exit code + the first line of the message). No test here needs Spark except the
three ``jobs/*.py`` runs that get as far as starting it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmfeat.core.errors import ExitCode
from llmfeat.retrieval import index as ix
from tests.synthetic import config, make_data

REPO = Path(__file__).resolve().parents[1]
PIT = Path(__file__).resolve().parent / "fixtures" / "pit"
BAD_VALUE = "embed.pooling=meen"

# Every command with the least arguments that get it past option parsing.
COMMANDS = {
    "fetch-demo": [],
    "ingest": ["--as-of", "2024-01-01"],
    "embed": ["--as-of", "2024-01-01"],
    "stats": ["--as-of", "2024-01-01"],
    "publish": ["--as-of", "2024-01-01"],
    "nightly": ["--as-of", "2024-01-01"],
    "index": [],
    "retrieve": ["--item", "x"],
    "serve": [],
    "train": ["--as-of", "2024-01-01"],
    "finetune": ["--as-of", "2024-01-01"],
    "score": ["--user", "1"],
    "show-config": [],
}
JOBS = ["embed", "stats", "publish", "train_ctr", "nightly"]


def cli(*args: str, timeout: float = 120) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "llmfeat.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},  # rich wraps long lines at the terminal width
    )
    return proc.returncode, proc.stdout + proc.stderr


def job(name: str, *args: str, timeout: float = 300) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def first_error_line(out: str) -> str:
    kinds = ("configuration error:", "input error:", "locked:", "not found:", "failure:")
    return next((line.strip() for line in out.splitlines() if line.strip().startswith(kinds)), "")


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    data = make_data(tmp_path_factory.mktemp("exit") / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    return data


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_config_value_is_refused_by_every_command_before_any_work(command, tmp_path):
    started = time.perf_counter()
    code, out = cli(command, *COMMANDS[command], "--set", BAD_VALUE, "--set", f"paths.data_dir={tmp_path}")
    assert code == ExitCode.CONFIG_ERROR, out
    assert (
        first_error_line(out)
        == "configuration error: embed.pooling: 'meen' is not one of auto, mean, cls, last"
    )
    assert not any(tmp_path.iterdir())  # nothing written
    assert time.perf_counter() - started < 60  # refused at load, not after a Spark start


def test_show_config_checks_choices_in_yaml_and_takes_a_data_dir(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("feast:\n  online_store: reddis\n")
    code, out = cli("show-config", "-c", str(cfg))
    assert code == ExitCode.CONFIG_ERROR
    assert (
        first_error_line(out)
        == "configuration error: feast.online_store: 'reddis' is not one of sqlite, redis"
    )
    code, out = cli("show-config", "--data-dir", str(tmp_path / "d"))
    assert code == ExitCode.OK and str(tmp_path / "d") in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--source", "mapped", "--path", "{missing}"], ExitCode.INPUT_ERROR,
         "input error: ingest.source_path {missing} does not exist"),
        (["--source", "csvv", "--path", "{tmp}"], ExitCode.CONFIG_ERROR,
         "configuration error: ingest.source: 'csvv' is not one of movielens, mind, mapped"),
        (["--source", "mind"], ExitCode.CONFIG_ERROR,
         "configuration error: ingest.source_path is required for source 'mind'"),
        (["--source", "mapped", "--path", "{corrupt}"], ExitCode.INPUT_ERROR, "input error: "),
    ],
    ids=["missing-source-path", "unknown-source-kind", "source-needs-path", "corrupt-input"],
)  # fmt: skip
def test_ingest_input_cases(args, code, message, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(PIT, corrupt)
    (corrupt / "items.csv").write_text(
        "sku,dept,modified\nA,kitchen,2024-01-01T00:00:00Z\n"
    )  # no title column
    paths = {
        "missing": str(tmp_path / "nope.yaml"),
        "tmp": str(tmp_path),
        "corrupt": str(corrupt / "mapping.yaml"),
    }
    data_dir = tmp_path / "data"
    got, out = cli(
        "ingest", *[a.format(**paths) for a in args], "--as-of", "2024-01-07", "--data-dir", str(data_dir)
    )
    assert got == code, out
    assert first_error_line(out).startswith(message.format(**paths)), out
    if code == ExitCode.INPUT_ERROR and "corrupt" in str(args):
        assert "items.csv" in out and "name" in out  # names the file and the missing column
    assert not (data_dir / "canonical").exists()


def test_locked_data_dir(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from llmfeat.nightly import data_dir_lock\n"
         f"with data_dir_lock(Path({str(tmp_path)!r}), 'the other run'):\n"
         "    print('locked', flush=True); time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out = cli("nightly", "--as-of", "2024-01-07", "--data-dir", str(tmp_path))
        assert code == ExitCode.LOCKED, out
        assert first_error_line(out).startswith(f"locked: data directory {tmp_path} is in use by pid")
        code, out = job("nightly", "--as-of", "2024-01-07", "--set", f"paths.data_dir={tmp_path}")
        assert code == ExitCode.LOCKED, out
        assert "locked: data directory" in out
    finally:
        holder.kill()
        holder.wait()


def test_unknown_ids_and_categories_are_not_found(syn):
    base = [
        "--data-dir",
        str(syn.data_dir),
        "-s",
        "serve.user_source=parquet",
        "-s",
        "index.tune_queries=100",
    ]
    for args, message in [
        (["--item", "no-such-item"], "not found: unknown item 'no-such-item'"),
        (["--user", "no-such-user"], "not found: "),
        (["--item", syn.item_ids[0], "--category", "NoSuchCategory"], "not found: "),
    ]:
        code, out = cli("retrieve", *args, *base)
        assert code == ExitCode.NOT_FOUND, out
        assert first_error_line(out).startswith(message), out
        assert "no-such" in out or "NoSuchCategory" in out


def test_set_mismatch_is_a_config_error(tmp_path):
    data = make_data(tmp_path / "data", user_model_id="other-model@9999")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    code, out = cli("retrieve", "--user", data.user_ids[0], "--data-dir", str(data.data_dir),
                    "-s", "serve.user_source=parquet")  # fmt: skip
    assert code == ExitCode.CONFIG_ERROR, out
    assert first_error_line(out).startswith("configuration error: ") and "other-model@9999" in out


def test_crash_is_failure_naming_the_command_with_traceback(syn, tmp_path):
    data_dir = shutil.copytree(syn.data_dir, tmp_path / "data")
    part = next((data_dir / "embeddings" / "default" / "item_text").rglob("*.parquet"))
    part.write_bytes(b"this is not parquet")  # an unreadable table: no llmfeat error describes it
    code, out = cli("index", "--data-dir", str(data_dir), "-s", "index.tune_queries=100")
    assert code == ExitCode.FAILURE, out
    assert first_error_line(out).startswith("failure: index failed: "), out
    assert "Traceback (most recent call last)" in out


@pytest.mark.parametrize("name", JOBS)
def test_jobs_refuse_bad_config_with_code_2(name, tmp_path):
    code, out = job(name, "--as-of", "2024-01-07", "--set", BAD_VALUE, "--set", f"paths.data_dir={tmp_path}")
    assert code == ExitCode.CONFIG_ERROR, out
    assert "configuration error: embed.pooling: 'meen' is not one of auto, mean, cls, last" in out
    assert not any(tmp_path.iterdir())


@pytest.mark.spark
def test_jobs_missing_source_path_is_an_input_error(tmp_path):
    code, out = job("nightly", "--as-of", "2024-01-07", "--set", f"paths.data_dir={tmp_path / 'data'}",
                    "--set", "ingest.source=mapped", "--set", f"ingest.source_path={tmp_path / 'nope.yaml'}",
                    "--set", "spark.master=local[1]", "--set", "spark.driver_memory=1g")  # fmt: skip
    assert code == ExitCode.INPUT_ERROR, out
    assert f"input error: ingest.source_path {tmp_path / 'nope.yaml'} does not exist" in out
