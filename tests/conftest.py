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
    from llmfeat.demo_data import ensure_movielens_100k

    return ensure_movielens_100k(REPO / "var" / "cache")


@pytest.fixture()
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session for the whole test run."""
    from llmfeat.config import SparkConfig
    from llmfeat.spark import build_spark

    session = build_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def encoder():
    from llmfeat.encoder import EncoderSpec, TextEncoder, default_model_dir

    return TextEncoder(EncoderSpec(str(default_model_dir()), precision="fp32", threads=2))
