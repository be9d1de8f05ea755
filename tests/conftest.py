"""Shared fixtures. Tests never reach a model hub: offline mode is forced before anything imports transformers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """The real MovieLens-100k (RecBole layout), downloaded once into the repo's ignored var/cache."""
    from llmfeat.data.demo_data import ensure_movielens_100k

    return ensure_movielens_100k(REPO / "var" / "cache")


@pytest.fixture()
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session for the whole test run."""
    from llmfeat.core.config import SparkConfig
    from llmfeat.core.spark import build_spark

    session = build_spark(SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory="4g"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def encoder():
    from llmfeat.embedding.encoder import EncoderSpec, TextEncoder, default_model_dir

    return TextEncoder(EncoderSpec(str(default_model_dir()), precision="fp32", threads=2))


def build_feature_store(spark, data_dir: Path, as_of, overrides: list[str] = ()):
    """Run ingest -> embed -> stats -> publish into ``data_dir``; returns (config, FeatureStore)."""
    from llmfeat.core.config import load_config
    from llmfeat.data.ingest import run_ingest
    from llmfeat.embedding.embed import run_embed
    from llmfeat.features.publish import open_store, run_publish
    from llmfeat.features.stats import run_stats

    cfg = load_config(None, [f"paths.data_dir={data_dir}", *overrides])
    quiet = lambda _msg: None  # noqa: E731
    run_ingest(cfg, as_of)
    run_embed(spark, cfg, as_of, log=quiet)
    run_stats(spark, cfg, as_of, log=quiet)
    run_publish(cfg, as_of, log=quiet)
    return cfg, open_store(cfg)


@pytest.fixture(scope="session")
def pit_store(spark, tmp_path_factory):
    """The tiny point-in-time catalogue (tests/fixtures/pit) through the whole feature pipeline."""
    import datetime as dt

    data_dir = tmp_path_factory.mktemp("pit")
    return build_feature_store(
        spark,
        data_dir,
        dt.date(2024, 1, 7),
        ["ingest.source=mapped", f"ingest.source_path={FIXTURES / 'pit' / 'mapping.yaml'}"],
    )


ML_AS_OF = "1998-04-23"
ML_OVERRIDES = ("embed.backfill_every_days=7",)  # weekly user snapshots keep the one real-data embed quick


@pytest.fixture(scope="session")
def pit_day1(spark, tmp_path_factory) -> Path:
    """A data directory where the nightly run of day 1 (tests/pit_runs.py) finished, training off. Tests copy
    it, never change it: the previous complete state in tests/test_faults.py, the local-mode embeddings
    that tests/test_cluster.py compares a cluster's with."""
    from llmfeat.core.config import load_config
    from llmfeat.nightly import run_nightly
    from tests.pit_runs import DAY1, pit_overrides

    data_dir = tmp_path_factory.mktemp("pit_day1")
    summary = run_nightly(load_config(None, pit_overrides(data_dir)), DAY1, log=lambda _: None)
    assert [r.status for r in summary.results] == ["done"] * 5 + ["disabled"]
    return data_dir


@pytest.fixture(scope="session")
def movielens_embedded(spark, tmp_path_factory, movielens_dir) -> Path:
    """MovieLens-100k ingested and embedded once per test run; tests copy it (``copy_data_dir``), never
    write into it, so the ~1 M tokens are encoded a single time."""
    import datetime as dt

    from llmfeat.core.config import load_config
    from llmfeat.data.ingest import run_ingest
    from llmfeat.embedding.embed import run_embed

    data_dir = tmp_path_factory.mktemp("ml_embedded")
    cfg = load_config(
        None, [f"paths.data_dir={data_dir}", f"ingest.source_path={movielens_dir}", *ML_OVERRIDES]
    )
    run_ingest(cfg, dt.date.fromisoformat(ML_AS_OF))
    run_embed(spark, cfg, dt.date.fromisoformat(ML_AS_OF), log=lambda _msg: None)
    return data_dir


def copy_data_dir(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def movielens_store(spark, tmp_path_factory, movielens_dir, movielens_embedded):
    """MovieLens-100k through the whole feature pipeline (the embed stage finds everything already encoded)."""
    import datetime as dt

    data_dir = copy_data_dir(movielens_embedded, tmp_path_factory.mktemp("ml") / "data")
    return build_feature_store(
        spark,
        data_dir,
        dt.date.fromisoformat(ML_AS_OF),
        [f"ingest.source_path={movielens_dir}", *ML_OVERRIDES],
    )
