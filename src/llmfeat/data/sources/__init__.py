"""Loaders: each turns one source format into ``RawTables`` (canonical columns + provenance)."""

from __future__ import annotations

from pathlib import Path

from llmfeat.core.errors import ConfigError
from llmfeat.data.sources import mapped, mind, movielens
from llmfeat.data.sources.raw import InputError, RawTables

SOURCES = ("movielens", "mind", "mapped")


def load_source(source: str, path: Path, *, click_rating_threshold: float) -> RawTables:
    if source == "movielens":
        return movielens.load(path, click_rating_threshold=click_rating_threshold)
    if source == "mind":
        return mind.load(path)
    if source == "mapped":
        return mapped.load(path, click_rating_threshold=click_rating_threshold)
    raise ConfigError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


__all__ = ["SOURCES", "InputError", "RawTables", "load_source"]
