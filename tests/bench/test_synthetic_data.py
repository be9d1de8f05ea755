"""bench/synthetic_data.py: deterministic, linear in the scale, MovieLens-shaped, and loadable as MovieLens
with nothing quarantined."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import synthetic_data as sd

from llmfeat.data.sources import movielens
from llmfeat.data.validate import validate

FILES = ("u.data", "u.item", "u.user", "manifest.json")


def test_same_seed_and_scale_give_identical_files(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        sd.generate(0.02, seed, tmp_path / name)
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "u.data").read_bytes() != (tmp_path / "c" / "u.data").read_bytes()


def test_counts_scale_linearly(tmp_path):
    small = sd.generate(0.05, 0, tmp_path / "small")["counts"]
    large = sd.generate(0.1, 0, tmp_path / "large")["counts"]
    assert (small["ratings"], large["ratings"]) == (5_000, 10_000)
    for key in ("users", "items"):
        assert large[key] / small[key] == pytest.approx(2.0, rel=0.05), key


def test_the_shape_of_movielens_at_1x(tmp_path):
    m = sd.generate(1, 0, tmp_path)["counts"]
    assert (m["users"], m["items"], m["ratings"]) == (943, 1682, 100_000)
    assert m["repeated_pairs"] == 0  # a user rates an item once
    assert m["ratings_per_user"]["min"] >= 20 and m["ratings_per_user"]["max"] <= 740
    assert 50 <= m["ratings_per_user"]["median"] <= 80  # MovieLens: 65
    assert 0.53 <= m["share_rating_ge_4"] <= 0.58  # MovieLens: 0.554
    assert m["first"] >= "1997-09-20" and m["last"] < "1998-04-23" and m["days"] >= 210
    assert 300 <= m["ratings_per_day"]["median"] <= 600  # ~467 a day
    assert 0.1 <= m["share_items_first_rated_after_30_days"] <= 0.4  # items keep appearing


def test_loads_through_the_movielens_loader_with_nothing_quarantined(tmp_path):
    manifest = sd.generate(0.02, 0, tmp_path)
    raw = movielens.load(tmp_path)
    out = validate(raw, snapshot_time=pd.Timestamp("1998-04-23", tz="UTC"), max_text_chars=20_000)
    sizes = manifest["sizes"]
    for table, n in (
        ("items", sizes["items"]),
        ("users", sizes["users"]),
        ("interactions", sizes["ratings"]),
    ):
        assert out.counts[table]["kept"] == n and out.counts[table]["quarantined"] == 0, out.counts[table]
    items = out.items.to_pandas()
    assert items["title"].str.fullmatch(r".+ \((19[2-9]\d)\)").all()
    genres = {g for tags in items["tags"] for g in tags}
    assert genres and genres <= set(movielens.GENRES)
    assert set(out.interactions.to_pandas()["label"]) == {0, 1}


def test_a_matching_directory_is_reused_and_another_seed_regenerates(tmp_path):
    first = sd.ensure(0.02, 0, tmp_path)
    assert "reused" not in first
    assert sd.ensure(0.02, 0, tmp_path)["reused"] is True
    assert "reused" not in sd.ensure(0.02, 1, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 1
