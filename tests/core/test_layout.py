"""The data directory's layout lives in ``layout.DataDir``: the stages' path helpers agree with it, and the
nightly's leftovers are derived from it (a dead writer's staging areas are found under every table root)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from llmfeat.core.config import load_config, reports_dir
from llmfeat.core.errors import ConfigError
from llmfeat.core.layout import DataDir


def test_stage_paths_come_from_the_layout(tmp_path):
    from llmfeat.core.tables import canonical_dir
    from llmfeat.ctr.train import models_dir
    from llmfeat.embedding.embed import embedding_paths
    from llmfeat.feast.store import feast_dir
    from llmfeat.features.stats import stats_paths
    from llmfeat.features.training_frames import frame_root
    from llmfeat.nightly import run_dir
    from llmfeat.retrieval.index import index_root

    cfg = load_config(None, [f"paths.data_dir={tmp_path}", "embed.embedding_set=fine"])
    d = DataDir.of(cfg)
    assert d.root == tmp_path.resolve()
    assert embedding_paths(d.root, "fine").root == d.embeddings("fine") == d.root / "embeddings" / "fine"
    assert stats_paths(d.root).root == d.features == d.root / "features"
    assert index_root(d.root, "fine") == d.index("fine")
    assert canonical_dir(d.root, "items") == d.canonical("items")
    assert frame_root(d.root, "fine") == d.training_frame("fine")
    assert feast_dir(cfg) == d.feast("fine") == d.root / "feast" / "sets" / "fine"
    assert d.feast("default") == d.root / "feast"
    assert models_dir(cfg) == d.ctr_models("fine") == d.root / "models" / "ctr" / "sets" / "fine"
    assert run_dir(cfg, dt.date(2024, 1, 2)) == d.root / "runs" / "2024-01-02"
    assert reports_dir(cfg) == d.reports
    with pytest.raises(ConfigError):
        d.feast("bad/name")


def test_leftovers_are_found_under_every_table_root(tmp_path):
    from llmfeat.nightly import remove_leftovers

    d = DataDir(tmp_path)
    dead = [
        d.work(d.embeddings("default"), "r1"),
        d.work(d.features, "r2"),
        d.canonical("items") / ".staging-items-1234",
        d.canonical("items") / ".old-items-1234",
        d.embeddings("fine") / "item_text" / ".staging-x",
        d.features / "item_stats" / ".old-y",
        d.index("default") / "versions" / ".deleting-v1",
    ]
    kept = [
        d.canonical("items") / "snapshot_date=2024-01-01",
        d.embeddings("fine") / "item_text" / "snapshot_date=2024-01-01",
        d.index("default") / "versions" / "v1",
        d.run(dt.date(2024, 1, 1)),
    ]
    for p in [*dead, *kept]:
        p.mkdir(parents=True)
    link = d.index("default") / ".current-tmp"
    link.symlink_to("versions/v1")
    removed = remove_leftovers(tmp_path)
    assert set(removed) == {*dead, link}
    assert all(p.is_dir() for p in kept) and not any(Path(p).exists() for p in dead)
