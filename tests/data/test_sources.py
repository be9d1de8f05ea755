"""Loaders: each source format to raw canonical frames, and fail-fast errors for files of the wrong shape."""

import shutil

import pandas as pd
import pytest

from llmfeat.core.errors import ConfigError
from llmfeat.data.sources import load_source, mind, movielens
from llmfeat.data.sources.raw import InputError


def test_grouplens_layout(fixtures):
    raw = movielens.load(fixtures / "grouplens_small")
    items = raw.items.set_index("item_id")
    assert items.loc["2", "title"] == "Café Society (1995)"  # ISO-8859-1 decoded
    assert items.loc["1", "tags"] == ["Animation", "Children's", "Comedy"]
    assert items.loc["3", "category"] == "Action, Adventure, Thriller"
    assert list(raw.users["user_id"]) == ["1", "2"]
    inter = raw.interactions
    assert list(inter["label"]) == [1, 0, 1, 0]  # rating >= 4
    assert inter["event_ts"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
    # no catalogue timestamps in MovieLens: the first interaction time stands in
    assert (raw.items["updated_at"] == inter["event_ts"].min()).all()
    # the release date (u.item's third field) is catalogue metadata: released_at
    assert items.loc["1", "released_at"] == pd.Timestamp("1995-01-01", tz="UTC")


def test_click_threshold_is_configurable(fixtures):
    raw = movielens.load(fixtures / "grouplens_small", click_rating_threshold=3)
    assert list(raw.interactions["label"]) == [1, 1, 1, 0]


def test_recbole_layout_real_data(movielens_dir):
    raw = movielens.load(movielens_dir)
    assert len(raw.items) == 1682 and len(raw.users) == 943 and len(raw.interactions) == 100_000
    assert raw.items["_reject"].isna().all() and raw.interactions["_reject"].isna().all()
    toy = raw.items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)" and toy["category"] == "Animation, Children's, Comedy"
    # release dates from the demo's ml-100k.release (GroupLens's u.item; RecBole keeps only the year)
    released = raw.items.set_index("item_id")["released_at"]
    assert released["10"] == pd.Timestamp("1996-01-22", tz="UTC")  # Richard III
    assert released.isna().sum() == 1  # item 267 has no release date in u.item either


def test_recbole_layout_without_the_release_file_has_no_release_dates(tmp_path, movielens_dir):
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        shutil.copy(movielens_dir / name, tmp_path / name)
    raw = movielens.load(tmp_path)
    assert len(raw.items) == 1682 and raw.items["released_at"].isna().all()


def test_an_unreadable_release_date_is_quarantined_with_its_row(tmp_path, movielens_dir):
    from llmfeat.data.validate import validate

    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user", "ml-100k.release"):
        shutil.copy(movielens_dir / name, tmp_path / name)
    text = (tmp_path / "ml-100k.release").read_text().replace("10\t22-Jan-1996\n", "10\t1996-01-22\n")
    (tmp_path / "ml-100k.release").write_text(text)
    out = validate(movielens.load(tmp_path), snapshot_time=pd.Timestamp("1998-04-23", tz="UTC"),
                   max_text_chars=10_000, now=pd.Timestamp("1998-04-23", tz="UTC"))  # fmt: skip
    quarantine = out.quarantine.to_pandas()
    q = quarantine[quarantine["table"] == "items"]
    assert (quarantine.loc[quarantine["table"] != "items", "reason"] == "UNKNOWN_ITEM").all()  # its ratings
    assert list(q["reason"]) == ["BAD_TIMESTAMP"]
    assert q["detail"].iloc[0] == "column 'released_at' = 1996-01-22 does not parse"
    assert q["source_file"].iloc[0].endswith("ml-100k.item") and list(q["row"]) == [
        11
    ]  # item 10, header + 10
    assert out.items.num_rows == 1681


def test_movielens_missing_column_fails_fast(tmp_path, movielens_dir):
    for f in movielens_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    inter = tmp_path / "ml-100k.inter"
    lines = inter.read_text().splitlines()
    lines[0] = lines[0].replace("rating:float", "stars:float")
    inter.write_text("\n".join(lines[:50]) + "\n")
    with pytest.raises(InputError, match=r"ml-100k\.inter: missing required column 'rating'"):
        movielens.load(tmp_path)


def test_grouplens_wrong_shape_fails_fast(tmp_path, fixtures):
    for f in (fixtures / "grouplens_small").iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "u.user").write_text("1,24,M,technician,85711\n")  # commas, not pipes
    with pytest.raises(
        InputError,
        match=r"u\.user: does not look like a GroupLens u\.user file: line 1: expected 5 fields, found 1",
    ):
        movielens.load(tmp_path)


def test_not_a_movielens_directory(tmp_path):
    with pytest.raises(InputError, match="no MovieLens files found"):
        movielens.load(tmp_path)


def test_mind_format(fixtures):
    raw = mind.load(fixtures / "mind_small")
    items = raw.items.set_index("item_id")
    assert items.loc["N1", "category"] == "sports" and items.loc["N1", "subcategory"] == "football_nfl"
    assert items.loc["N4", "description"] is None  # empty abstract
    inter = raw.interactions
    shown = inter[inter["impression_id"].notna()]
    # one row per shown item, label from the -0/-1 suffix, impression id kept
    imp1 = shown[shown["impression_id"] == "1"].set_index("item_id")["label"].to_dict()
    assert imp1 == {"N3": 1, "N4": 0, "N5": 0}
    # history clicks become label-1 rows at the first impression that lists them, without impression id
    hist = inter[inter["impression_id"].isna() & inter["event_ts"].notna()]
    u1 = hist[hist["user_id"] == "U1"].set_index("item_id")["event_ts"]
    assert u1["N1"] == pd.Timestamp("2019-11-11 09:05:58", tz="UTC")
    assert u1["N3"] == pd.Timestamp("2019-11-13 15:15:00", tz="UTC")
    assert (hist["label"] == 1).all()
    assert raw.notes["history_repeats_folded"] == 2
    # a malformed impression token is flagged for quarantine, not dropped
    bad = inter[inter["_reject"] == "BAD_LABEL"]
    assert list(bad["item_id"]) == ["N4"] and bad["_row"].iloc[0] == 4
    assert sorted(raw.users["user_id"]) == ["U1", "U2", "U3", "U4"]


def test_mind_missing_file(tmp_path, fixtures):
    shutil.copy(fixtures / "mind_small" / "news.tsv", tmp_path / "news.tsv")
    with pytest.raises(InputError, match="behaviors.tsv does not exist"):
        mind.load(tmp_path)


def test_mind_wrong_shape(tmp_path, fixtures):
    shutil.copy(fixtures / "mind_small" / "behaviors.tsv", tmp_path / "behaviors.tsv")
    (tmp_path / "news.tsv").write_text("N1,sports,title\n")
    with pytest.raises(InputError, match=r"news\.tsv: does not look like a MIND news\.tsv file"):
        mind.load(tmp_path)


def test_mapped_parquet_source(tmp_path):
    pd.DataFrame(
        {"id": [1, 2], "name": ["Lamp", "Desk"], "kind": ["home", "office"], "tags": [["a", "b"], None],
         "ts": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True)}
    ).to_parquet(tmp_path / "items.parquet")  # fmt: skip
    pd.DataFrame({"u": ["x", "y"], "i": [1, 2], "t": [1704153600, 1704240000], "stars": [5, 2]}).to_parquet(
        tmp_path / "ev.parquet"
    )
    (tmp_path / "m.yaml").write_text(
        "items: {path: items.parquet, id: id, columns: {title: name, category: kind, tags: tags}, updated_at: ts}\n"
        "interactions: {path: ev.parquet, user_id: u, item_id: i, timestamp: t, timestamp_format: unix_s, rating: stars}\n"
    )
    raw = load_source("mapped", tmp_path / "m.yaml", click_rating_threshold=4)
    assert list(raw.items["item_id"]) == ["1", "2"] and raw.items["tags"].iloc[0] == ["a", "b"]
    assert list(raw.interactions["label"]) == [1, 0]
    assert list(raw.interactions["item_id"]) == ["1", "2"]
    assert sorted(raw.users["user_id"]) == ["x", "y"]  # no users section: derived from interactions
    assert raw.interactions["event_ts"].iloc[0] == pd.Timestamp("2024-01-02", tz="UTC")


def test_mapped_missing_column(tmp_path, fixtures):
    for f in (fixtures / "bad_rows").iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "events.csv").write_text("uid,sku,when,clicked,dwell\nU1,A1,2024-01-01,1,\n")
    with pytest.raises(InputError, match=r"events\.csv: missing required column 'ts'"):
        load_source("mapped", tmp_path / "mapping.yaml", click_rating_threshold=4)


def test_mapped_not_parquet(tmp_path):
    (tmp_path / "items.parquet").write_text("this is not parquet")
    (tmp_path / "ev.csv").write_text("u,i,t,l\nx,1,2024-01-01,1\n")
    (tmp_path / "m.yaml").write_text(
        "items: {path: items.parquet, id: id, columns: {title: name}}\n"
        "interactions: {path: ev.csv, user_id: u, item_id: i, timestamp: t, label: l}\n"
    )
    with pytest.raises(InputError, match=r"items\.parquet: not a readable Parquet file"):
        load_source("mapped", tmp_path / "m.yaml", click_rating_threshold=4)


def test_unknown_source(tmp_path):
    with pytest.raises(ConfigError, match="unknown source"):  # a config value, not an input file (exit 2)
        load_source("kafka", tmp_path, click_rating_threshold=4)
