"""bench/movielens_deliveries.py: MovieLens as delivered daily files ingests to the tables the dump gives, and
a later night reads only its new day's file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from movielens_deliveries import write_landing

from llmfeat.core import tables
from llmfeat.core.config import load_config
from llmfeat.data.ingest import run_ingest

ML = Path(__file__).resolve().parents[1] / "fixtures" / "grouplens_small"


def snapshot(data_dir, name, night) -> pd.DataFrame:
    frame = pq.read_table(tables.snapshot_dir(tables.canonical_dir(data_dir, name), night)).to_pandas()
    cols = [c for c in frame.columns if c not in ("_file", "_row", "_raw")]
    frame = frame[cols]
    frame[cols] = frame[cols].astype(str)  # lists and missing values compared as text
    return frame.sort_values(cols).reset_index(drop=True)


def test_the_landing_directory_ingests_to_the_dumps_tables_night_after_night(tmp_path):
    mapping = write_landing(ML, tmp_path / "landing")
    ts = pd.read_csv(ML / "u.data", sep="\t", header=None)[3]
    days = sorted({dt.datetime.fromtimestamp(t, dt.UTC).date() for t in ts})
    assert sorted(p.stem for p in (tmp_path / "landing" / "events").glob("*.csv")) == [
        d.isoformat() for d in days
    ]
    dump = load_config(
        None, [f"paths.data_dir={tmp_path / 'dump'}", "ingest.source=movielens", f"ingest.source_path={ML}"]
    )
    files = load_config(
        None,
        [f"paths.data_dir={tmp_path / 'files'}", "ingest.source=mapped", f"ingest.source_path={mapping}"],
    )
    nights = [days[0] + dt.timedelta(days=1), days[-1] + dt.timedelta(days=1)]
    assert nights[0] < nights[1]
    for night in nights:
        run_ingest(dump, night)
        got = run_ingest(files, night)
        for name in ("items", "users", "interactions", "quarantine"):
            want = snapshot(tmp_path / "dump", name, night)
            have = snapshot(tmp_path / "files", name, night)
            if name == "quarantine":  # the same rows, from other files
                want, have = want[["table", "reason"]], have[["table", "reason"]]
            pd.testing.assert_frame_equal(have, want, obj=f"{name} {night}")
    assert got.deliveries["appended_to"] == nights[0].isoformat(), got.deliveries
    assert got.deliveries["read"] == sum(1 for d in days if d >= nights[0])
