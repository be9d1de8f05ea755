"""The nightly run on the tiny point-in-time catalogue (tests/fixtures/pit), shared by the fault and cluster
tests: day 1 and day 2, and the overrides every such run uses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

PIT = Path(__file__).resolve().parent / "fixtures" / "pit"
DAY1, DAY2 = dt.date(2024, 1, 5), dt.date(2024, 1, 7)


def pit_overrides(data_dir: Path, mapping: Path = PIT / "mapping.yaml") -> list[str]:
    return [
        f"paths.data_dir={data_dir}",
        "ingest.source=mapped",
        f"ingest.source_path={mapping}",
        "train.enabled=false",  # the tiny catalogue cannot be split for training; not what these tests check
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=1g",
    ]
