"""MovieLens-100k in two layouts: RecBole's atomic files (the demo) and GroupLens's original u.* files.

- RecBole (``ml-100k.inter`` / ``.item`` / ``.user``, tab-separated, typed headers like ``user_id:token``).
- GroupLens (``u.data`` tab-separated; ``u.item`` and ``u.user`` pipe-separated, no header; ``u.item`` is
  ISO-8859-1 as GroupLens ships it).

Mapping to the canonical tables: title keeps the release year ("Toy Story (1995)"), category is the
comma-joined genre list, tags the genres, ``released_at`` the release date (u.item's third field; in the RecBole
layout an optional ``<stem>.release`` file, ``item_id`` and ``release_date``, which the demo writes; RecBole's own
files keep only the year). MovieLens has no catalogue or profile timestamps, so items and users get
``updated_at`` = the first interaction in the file ("the catalogue as of the start of the log").
A rating >= ``click_rating_threshold`` (default 4) is a click: label 1.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmfeat.data.sources.raw import (
    INTER_COLS,
    ITEM_COLS,
    USER_COLS,
    InputError,
    RawTables,
    base,
    blank_to_none,
    check_first_record,
    frame,
    parse_timestamps,
    read_delimited,
    read_header,
    require_columns,
    require_file,
)

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def detect_layout(directory: Path) -> str:
    if (directory / "u.data").is_file():
        return "grouplens"
    if list(directory.glob("*.inter")):
        return "recbole"
    raise InputError(
        f"{directory}: no MovieLens files found (expected RecBole's ml-100k.inter/.item/.user "
        "or GroupLens's u.data/u.item/u.user)"
    )


def load(directory: Path, *, click_rating_threshold: float = 4.0) -> RawTables:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"MovieLens source {directory} is not a directory")
    if detect_layout(directory) == "grouplens":
        items, users, inter = _grouplens(directory)
    else:
        items, users, inter = _recbole(directory)
    return _finish(items, users, inter, click_rating_threshold)


def _recbole(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    (inter_path,) = directory.glob("*.inter")
    stem = inter_path.with_suffix("")
    item_path = require_file(stem.with_suffix(".item"), "MovieLens items")
    user_path = require_file(stem.with_suffix(".user"), "MovieLens users")

    def columns(path: Path, required: list[str]) -> dict[str, int]:
        names = [h.split(":")[0] for h in read_header(path, "\t")]
        require_columns(path, names, required)
        return {n: i for i, n in enumerate(names)}

    ic = columns(inter_path, ["user_id", "item_id", "rating", "timestamp"])
    mc = columns(item_path, ["item_id", "movie_title"])
    uc = columns(user_path, ["user_id"])

    inter = []
    for rec in read_delimited(inter_path, sep="\t", n_fields=len(ic), skip_header=True):
        f = rec.fields or [None] * len(ic)
        inter.append(
            {**base(inter_path, rec), "user_id": f[ic["user_id"]], "item_id": f[ic["item_id"]],
             "_event_ts_raw": f[ic["timestamp"]], "rating": f[ic["rating"]]}
        )  # fmt: skip
    items = []
    for rec in read_delimited(item_path, sep="\t", n_fields=len(mc), skip_header=True):
        f = rec.fields or [None] * len(mc)
        genres = (f[mc["class"]] or "").split() if "class" in mc else []
        year = blank_to_none(f[mc["release_year"]]) if "release_year" in mc else None
        title = f[mc["movie_title"]]
        if title is not None and year and title.strip():
            title = f"{title} ({year})"
        items.append({**base(item_path, rec), "item_id": f[mc["item_id"]], "title": title, "genres": genres})
    release_path = stem.with_suffix(".release")
    if release_path.is_file():
        rc = columns(release_path, ["item_id", "release_date"])
        dates = {}
        for rec in read_delimited(release_path, sep="\t", n_fields=len(rc), skip_header=True):
            if rec.fields:
                dates[rec.fields[rc["item_id"]].strip()] = rec.fields[rc["release_date"]]
        for item in items:
            item["_released_at_raw"] = dates.get((item["item_id"] or "").strip())
    users = []
    for rec in read_delimited(user_path, sep="\t", n_fields=len(uc), skip_header=True):
        f = rec.fields or [None] * len(uc)

        def get(name: str, f=f) -> str | None:
            return f[uc[name]] if name in uc else None

        users.append(
            {**base(user_path, rec), "user_id": get("user_id"), "age": get("age"), "gender": get("gender"),
             "occupation": get("occupation"), "location": get("zip_code")}
        )  # fmt: skip
    return (
        frame(items, ITEM_COLS + ["genres", "_released_at_raw"]),
        frame(users, USER_COLS),
        frame(inter, INTER_COLS),
    )


def _grouplens(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    inter_path = directory / "u.data"
    item_path = require_file(directory / "u.item", "MovieLens items")
    user_path = require_file(directory / "u.user", "MovieLens users")

    recs = list(read_delimited(inter_path, sep="\t", n_fields=4))
    check_first_record(inter_path, recs, "a GroupLens u.data file (user, item, rating, timestamp)")
    inter = []
    for rec in recs:
        f = rec.fields or [None] * 4
        inter.append(
            {**base(inter_path, rec), "user_id": f[0], "item_id": f[1], "rating": f[2], "_event_ts_raw": f[3]}
        )
    n_item_fields = 5 + len(GENRES)
    recs = list(read_delimited(item_path, sep="|", n_fields=n_item_fields, encoding="latin-1"))
    check_first_record(item_path, recs, "a GroupLens u.item file")
    items = []
    for rec in recs:
        f = rec.fields or [None] * n_item_fields
        flags = f[5:] if rec.fields else []
        genres = [g for g, flag in zip(GENRES, flags, strict=False) if flag == "1" and g != "unknown"]
        items.append({**base(item_path, rec), "item_id": f[0], "title": f[1], "genres": genres,
                      "_released_at_raw": f[2]})  # fmt: skip
    recs = list(read_delimited(user_path, sep="|", n_fields=5))
    check_first_record(user_path, recs, "a GroupLens u.user file")
    users = []
    for rec in recs:
        f = rec.fields or [None] * 5
        users.append(
            {**base(user_path, rec), "user_id": f[0], "age": f[1], "gender": f[2], "occupation": f[3],
             "location": f[4]}
        )  # fmt: skip
    return (
        frame(items, ITEM_COLS + ["genres", "_released_at_raw"]),
        frame(users, USER_COLS),
        frame(inter, INTER_COLS),
    )


def _finish(items: pd.DataFrame, users: pd.DataFrame, inter: pd.DataFrame, threshold: float) -> RawTables:
    inter["event_ts"] = parse_timestamps(inter["_event_ts_raw"], unit="s")
    rating = pd.to_numeric(inter["rating"], errors="coerce")
    inter["rating"] = rating
    inter["label"] = (rating >= threshold).astype("Int8").where(rating.notna())
    bad_rating = rating.isna() & inter["_reject"].isna()
    inter.loc[bad_rating, "_reject"] = "BAD_LABEL"
    inter.loc[bad_rating, "_detail"] = "rating is missing or not a number"
    catalog_time = inter["event_ts"].min()
    if pd.isna(catalog_time):
        raise InputError(
            f"{inter['_file'].iloc[0] if len(inter) else 'MovieLens'}: no interaction has a valid timestamp"
        )

    items["category"] = items["genres"].map(lambda g: ", ".join(g) if g else None)
    items["tags"] = items["genres"].map(lambda g: list(g) if g else None)
    items = items.drop(columns=["genres"])
    items["updated_at"] = catalog_time
    # GroupLens writes release dates as 01-Jan-1995; an unreadable one is quarantined (BAD_TIMESTAMP)
    items["released_at"] = parse_timestamps(items["_released_at_raw"], fmt="%d-%b-%Y")
    users["age"] = pd.to_numeric(users["age"], errors="coerce")
    users["updated_at"] = catalog_time
    return RawTables(items=items, users=users, interactions=inter, notes={})
