"""Commands pay only for what they use: the whole process's import graph (``python -X importtime``), checked
on the synthetic index. No command imports Feast unless it reads Feast; nothing that only searches the
index imports torch or Spark. Timings are in bench/cli_startup.py (BENCHMARKS.md), not here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmfeat.retrieval import index as ix
from tests.synthetic import make_data

HEAVY = ("feast", "torch", "pyspark", "transformers")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from tests.synthetic import config

    data = make_data(tmp_path_factory.mktemp("imports") / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    return data


def imported(*args: str) -> tuple[int, set[str], str]:
    """(exit code, top-level packages imported, output) of ``llmfeat ARGS`` as its own process."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmfeat.cli", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return proc.returncode, modules, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize(
    "args, allowed",
    [
        (["--help"], ()),
        (["retrieve", "--item", "i0003", "-k", "3"], ()),
        (["retrieve", "--item", "nope"], ()),
        (["retrieve", "--user", "u001", "-k", "3", "-s", "serve.user_source=parquet"], ()),
        (["retrieve", "--user", "ghost", "-s", "serve.user_source=parquet"], ()),
    ],
)
def test_import_graph(data_dir, args, allowed):
    if args != ["--help"]:
        args = [*args, "--data-dir", str(data_dir.data_dir)]
    code, modules, output = imported(*args)
    assert code in (0, 6), output
    assert "faiss" in modules or args == ["--help"]
    unexpected = {m for m in HEAVY if m in modules} - set(allowed)
    assert not unexpected, f"llmfeat {' '.join(args)} imported {sorted(unexpected)}"
