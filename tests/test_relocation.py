"""A finished data directory copied or moved elsewhere works there, through the real processes (`llmfeat
retrieve / score / serve`, the plain `feast serve`, a resumed nightly), and the original is never touched.

One lean fixture serves the whole module: the day-1 nightly directory (``pit_day1``, shared with the fault
tests) copied to ``orig`` plus a CTR model (untrained weights saved the way ``llmfeat train`` saves them: what
is checked here is which files are read, not the model's quality), then ``orig`` copied to ``copy``.
Every command runs from a working directory outside the repository and the data directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmfeat.core.config import load_config
from tests.pit_runs import DAY1, pit_overrides
from tests.services import free_port, wait_for_port

FEAST = Path(sys.executable).parent / "feast"
RUN_ID = "2024-01-05T000000-reloc"
UNKNOWN = "999999"


def tree_digest(root: Path) -> dict[str, str]:
    """Every file (and symlink target) under ``root`` -> its sha256: byte-for-byte identity."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def save_ctr_model(data_dir: Path) -> None:
    """A deep_lm model for the pit catalogue, saved and pointed at as `llmfeat train` does."""
    import torch

    from llmfeat.ctr.data import TEXT_BLOCKS, Vocab, dense_names
    from llmfeat.ctr.models import DeepCTR
    from llmfeat.ctr.train import _save_model, models_dir, write_current

    cfg = load_config(None, pit_overrides(data_dir))
    manifest = json.loads((data_dir / "index" / "default" / "current" / "manifest.json").read_text())
    dim = manifest["dim"]
    users, items = Vocab.fit(["U1", "U2"]), Vocab.fit(["A", "B", "C"])
    names = dense_names("lm", dim)
    kwargs = {"n_users": len(users), "n_items": len(items), "dense_dim": len(names),
              "text_blocks": len(TEXT_BLOCKS), "text_dim": dim}  # fmt: skip
    torch.manual_seed(0)
    out = models_dir(cfg) / RUN_ID
    out.mkdir(parents=True)
    _save_model(out, "deep_lm", DeepCTR(**kwargs).eval(), "lm", {"names": names, "dim": dim}, users, items,
                manifest["model_id"], [], kwargs)  # fmt: skip
    write_current(models_dir(cfg), RUN_ID, out)


@pytest.fixture(scope="module")
def dirs(pit_day1, tmp_path_factory):
    base = tmp_path_factory.mktemp("relocation")
    orig = base / "orig"
    shutil.copytree(pit_day1, orig, symlinks=True)
    save_ctr_model(orig)
    copy = base / "elsewhere" / "copy"
    shutil.copytree(orig, copy, symlinks=True)
    workdir = base / "cwd"
    workdir.mkdir()
    return {"orig": orig, "copy": copy, "cwd": workdir, "digest": tree_digest(orig)}


def llmfeat(dirs, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llmfeat.cli", *args, "--data-dir", str(dirs["copy"])]
    return subprocess.Popen(cmd, cwd=dirs["cwd"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=240)
    return proc.returncode, " ".join(out.split())  # rich wraps long lines: compare on single spaces


def test_nothing_stored_names_the_directory(dirs):
    """The yaml, the registry's location, the model pointer and the index pointer are all relative."""
    orig = str(dirs["orig"])
    for rel in ("feast/feature_store.yaml", "models/ctr/current.json"):
        text = (dirs["copy"] / rel).read_text()
        assert orig not in text and "/tmp" not in text, f"{rel} names a location: {text}"
    assert not os.readlink(dirs["copy"] / "index" / "default" / "current").startswith("/")
    assert (dirs["copy"] / "feast" / "features.py").is_file()  # the definitions, for `feast -c <dir> apply`


def test_commands_on_a_copy_and_the_original_untouched(dirs):
    """retrieve, score, serve and `feast serve` on the copy, concurrently, with the original in place; then
    every file of the original is byte-for-byte what it was. Unknown ids: exit 6 / HTTP 404 naming the id."""
    port, feast_port = free_port(), free_port()
    server = llmfeat(dirs, "serve", "--port", str(port))
    feast = subprocess.Popen([str(FEAST), "-c", str(dirs["copy"] / "feast"), "serve", "-h", "127.0.0.1", "-p",
                              str(feast_port)], cwd=dirs["cwd"], env={k: v for k, v in os.environ.items() if not k.startswith("LLMFEAT_")},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    procs = {
        "item": llmfeat(dirs, "retrieve", "--item", "A", "-k", "2"),
        "item?": llmfeat(dirs, "retrieve", "--item", UNKNOWN),
        "user": llmfeat(dirs, "retrieve", "--user", "U1", "-k", "2"),
        "user?": llmfeat(dirs, "retrieve", "--user", UNKNOWN),
        "score": llmfeat(dirs, "score", "--user", "U1", "-k", "2"),
        "score?": llmfeat(dirs, "score", "--user", UNKNOWN),
    }
    try:
        done = {name: finish(p) for name, p in procs.items()}
        assert done["item"][0] == 0 and {"B", "C"} <= set(done["item"][1].split()), done["item"]
        assert done["user"][0] == 0 and "Gamma plate" in done["user"][1], done["user"]
        assert done["score"][0] == 0 and "Gamma plate" in done["score"][1], done["score"]
        assert done["item?"][0] == 6 and f"unknown item '{UNKNOWN}'" in done["item?"][1], done["item?"]
        for name in ("user?", "score?"):
            assert done[name][0] == 6 and f"unknown user '{UNKNOWN}'" in done[name][1], done[name]
            assert "Traceback" not in done[name][1]

        assert wait_for_port(port, timeout=120), finish(server)
        url = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{url}/users/U1/recommendations?k=2", timeout=30)
        assert r.status_code == 200 and [h["item_id"] for h in r.json()["results"]] == ["C"], r.text
        for path, message in ((f"/users/{UNKNOWN}/recommendations", f"unknown user '{UNKNOWN}'"),
                              (f"/items/{UNKNOWN}/similar", f"unknown item '{UNKNOWN}'")):  # fmt: skip
            r = httpx.get(url + path, timeout=30)
            assert r.status_code == 404 and message in r.json()["detail"], r.text

        assert wait_for_port(feast_port, timeout=120), finish(feast)
        items = ["A", "B"]  # C has no interaction before day 1, hence no stats row yet
        body = {"feature_service": "ranker", "entities": {"user_id": ["U1"] * len(items), "item_id": items},
                "full_feature_names": True}  # fmt: skip
        r = httpx.post(f"http://127.0.0.1:{feast_port}/get-online-features", json=body, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()
        for name, column in zip(data["metadata"]["feature_names"], data["results"], strict=True):
            assert column["statuses"] == ["PRESENT"] * len(items), (name, column["statuses"])
    finally:
        for p in (server, feast):
            p.terminate()
            p.wait(timeout=30)
    assert tree_digest(dirs["orig"]) == dirs["digest"]


def test_moved_directory_resumes_its_nightly(dirs, spark):
    """The original moved away: a nightly resumed at publish (Feast apply + materialise, index) on the copy
    reads and writes only the copy, and scoring works there afterwards."""
    from llmfeat.features.publish import open_store
    from llmfeat.nightly import run_nightly

    away = dirs["orig"].with_name("orig-moved-away")
    dirs["orig"].rename(away)
    try:
        markers = dirs["copy"] / "runs" / DAY1.isoformat()
        for stage in ("publish", "index"):
            (markers / f"{stage}.json").unlink()
        summary = run_nightly(load_config(None, pit_overrides(dirs["copy"])), DAY1, log=lambda _: None)
        assert [r.status for r in summary.results] == ["skipped"] * 3 + ["done", "done", "disabled"]
        store = open_store(load_config(None, pit_overrides(dirs["copy"])))
        paths = [s.path for s in store.list_data_sources() if getattr(s, "path", None)]
        assert paths and all(Path(p).is_relative_to(dirs["copy"].resolve()) for p in paths), paths
        code, out = finish(llmfeat(dirs, "score", "--user", "U1", "-k", "2"))
        assert code == 0 and "Gamma plate" in out, out
        assert not dirs["orig"].exists(), "something recreated the original's path"
    finally:
        away.rename(dirs["orig"])
    assert tree_digest(dirs["orig"]) == dirs["digest"]


def test_rebase_registry_moves_only_the_paths(tmp_path):
    """Unit level, no Spark: a registry applied in one directory and copied is rebased once, its sources
    pointing into the copy and the materialised interval kept; a second open changes nothing."""
    import datetime as dt

    from llmfeat.features.publish import load_definitions, open_store, rebase_registry

    old = tmp_path / "old"
    for rel in ("embeddings/default/item_text", "embeddings/default/user_text", "embeddings/default/user_history",
                "features/item_stats", "features/user_stats", "features/item_meta"):  # fmt: skip
        (old / rel).mkdir(parents=True)
    store = open_store(load_config(None, [f"paths.data_dir={old}"]))
    store.apply(load_definitions(load_config(None, [f"paths.data_dir={old}"])))
    span = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 5, tzinfo=dt.UTC))
    store.registry.apply_materialization(store.get_feature_view("item_stats"), store.project, *span)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    cfg = load_config(None, [f"paths.data_dir={new}"])
    assert rebase_registry(cfg) > 0 and rebase_registry(cfg) == 0
    moved = open_store(cfg)
    paths = {s.path for s in moved.list_data_sources()}
    assert len(paths) == 6 and all(p.startswith(str(new.resolve()) + "/") for p in paths), paths
    assert moved.get_feature_view("item_stats").materialization_intervals == [span]
    assert {s.path for s in open_store(load_config(None, [f"paths.data_dir={old}"])).list_data_sources()} == {
        p.replace(str(new.resolve()), str(old.resolve())) for p in paths
    }  # the original's registry still names its own tables
