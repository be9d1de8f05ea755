"""bench/gpu.sh --dry-run on the CPU: the steps of the GPU run (setup checks, the encoder sweep, the FAISS
bench) run at toy sizes and write their BENCHMARKS.md sections, marked as a dry run, to the file they are
given; installs are only printed. No GPU is needed or used. The Spark job is left out (--no-spark) to keep
the test to seconds: its harness is bench/encode.py's, and a full dry run (`bench/gpu.sh --dry-run`) runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run_writes_both_sections(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Something else\n\nkept\n")
    before = (REPO / "BENCHMARKS.md").read_text()
    env = {**os.environ, "LLMFEAT_PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--no-spark", "--benchmarks-md", str(md)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "1/3 setup" in out and "2/3 encoder bench" in out and "3/3 FAISS bench" in out
    text = md.read_text()
    assert "## Something else\n\nkept" in text  # other sections untouched
    for title in ("## Encoder on GPU", "## FAISS on GPU"):
        section = text[text.index(title) :]
        assert "DRY RUN on the CPU" in section.split("\n## ")[0]
    encoder = text[text.index("## Encoder on GPU") :].split("\n## ")[0]
    assert "| fp32 | 4,096 |" in encoder and "| bf16 | 8,192 |" in encoder
    assert "The Spark job was not run: --spark-texts 0." in encoder  # said, not silently dropped
    faiss_part = text[text.index("## FAISS on GPU") :]
    assert "| exact (IndexFlatIP), CPU | 1.0000 |" in faiss_part
    assert (REPO / "BENCHMARKS.md").read_text() == before  # a dry run never touches the real file


def test_gpu_script_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
