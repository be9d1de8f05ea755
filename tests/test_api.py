"""The public Python API: ``import llmfeat`` is cheap and lists its names; the README example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from llmfeat.retrieval import index as ix
from tests.synthetic import config, make_data

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_is_lazy_and_lists_the_api():
    code = (
        "import sys, llmfeat\n"
        "heavy = [m for m in ('torch', 'pyspark', 'feast', 'faiss', 'pandas') if m in sys.modules]\n"
        "print(heavy, sorted(llmfeat.__all__) == sorted(n for n in llmfeat.__all__ if hasattr(llmfeat, n)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] True"  # nothing heavy at import; every listed name resolves


def test_readme_example_runs(tmp_path, capsys):
    source = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    data = make_data(tmp_path / "data")
    ix.run_index(config(data.data_dir), log=lambda _: None)
    item = data.item_ids[3]
    # The example names the demo's data dir and item "50"; point it at this synthetic data dir instead.
    assert "paths.data_dir=var/data" in source and '"50"' in source
    source = source.replace("var/data", str(data.data_dir)).replace('"50"', repr(item))
    exec(compile(source, str(README), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    pairs = eval(printed[0])  # noqa: S307 - the example's own printed list of (id, title)
    assert len(pairs) == 5 and item not in [iid for iid, _ in pairs]
    assert printed[1] == "(1, 384)"
