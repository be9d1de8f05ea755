"""Microsoft News Dataset (MIND) format: ``news.tsv`` + ``behaviors.tsv``, tab-separated, no header.

news.tsv:      news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities
behaviors.tsv: impression_id, user_id, time ("11/15/2019 8:55:22 AM", taken as UTC), history
               (space-separated news ids the user clicked before), impressions ("N1-1 N2-0": shown news id
               and whether it was clicked)

Mapping:
- items: title, description = abstract, category, subcategory.
- users: one per user id seen in behaviors (MIND has no profile); updated_at = their first impression.
- interactions: one row per shown item with label 1 (clicked) or 0 and the impression id kept; every news
  id in a user's click history becomes a label-1 interaction at the time of the first impression that
  lists it, with no impression id (MIND repeats the whole history in every impression; the repeats are
  counted in the run summary as ``history_repeats_folded``).
- items have no timestamp in MIND: updated_at = the first impression time in the file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmfeat.data.sources.raw import (
    INTER_COLS,
    ITEM_COLS,
    InputError,
    RawTables,
    base,
    blank_to_none,
    check_first_record,
    frame,
    parse_timestamps,
    read_delimited,
    record_json,
    require_file,
)

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def load(directory: Path) -> RawTables:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"MIND source {directory} is not a directory")
    news_path = require_file(directory / "news.tsv", "MIND news")
    beh_path = require_file(directory / "behaviors.tsv", "MIND behaviors")

    recs = list(read_delimited(news_path, sep="\t", n_fields=8))
    check_first_record(news_path, recs, "a MIND news.tsv file (8 tab-separated fields)")
    items = []
    for rec in recs:
        f = rec.fields or [None] * 8
        items.append(
            {**base(news_path, rec), "item_id": f[0], "category": blank_to_none(f[1]),
             "subcategory": blank_to_none(f[2]), "title": f[3], "description": blank_to_none(f[4])}
        )  # fmt: skip
    items_df = frame(items, ITEM_COLS)

    recs = list(read_delimited(beh_path, sep="\t", n_fields=5))
    check_first_record(beh_path, recs, "a MIND behaviors.tsv file (5 tab-separated fields)")
    impressions: list[dict] = []
    history: list[dict] = []
    rejects: list[dict] = []
    for rec in recs:
        if rec.fields is None:
            rejects.append({**base(beh_path, rec)})
            continue
        imp_id, user_id, time_raw, hist, shown = rec.fields
        common = {"user_id": user_id, "_event_ts_raw": time_raw}
        for news_id in hist.split():
            history.append(
                {**base(beh_path, rec), **common, "item_id": news_id, "label": 1, "impression_id": None}
            )
        for token in shown.split():
            news_id, sep, clicked = token.rpartition("-")
            row = {**base(beh_path, rec), **common, "item_id": news_id or token, "impression_id": imp_id}
            row["_raw"] = record_json(
                {"impression_id": imp_id, "user_id": user_id, "time": time_raw, "shown": token}
            )
            if not sep or clicked not in ("0", "1") or not news_id:
                row.update(
                    _reject="BAD_LABEL", _detail=f"impression token {token!r} is not NEWS_ID-0 or NEWS_ID-1"
                )
            else:
                row["label"] = int(clicked)
            impressions.append(row)
        if not shown.split():
            rejects.append({**base(beh_path, rec), **common, "_reject": "MALFORMED_ROW",
                            "_detail": "impression lists no shown items"})  # fmt: skip

    inter = frame(impressions + rejects, INTER_COLS)
    inter["event_ts"] = parse_timestamps(inter["_event_ts_raw"], fmt=TIME_FORMAT)

    hist_df = frame(history, INTER_COLS)
    hist_df["event_ts"] = parse_timestamps(hist_df["_event_ts_raw"], fmt=TIME_FORMAT)
    # Fold MIND's repeated histories: keep each (user, news) click once, at its earliest impression time.
    # Rows whose time does not parse are all kept so validation quarantines them with their line numbers.
    valid = hist_df["event_ts"].notna()
    folded = (
        hist_df[valid].sort_values(["event_ts", "_row"]).drop_duplicates(["user_id", "item_id"], keep="first")
    )
    repeats = int(valid.sum()) - len(folded)
    inter = pd.concat([inter, folded, hist_df[~valid]], ignore_index=True)
    inter["label"] = pd.to_numeric(inter["label"], errors="coerce").astype("Int8")

    first_seen = inter["event_ts"].min()
    if pd.isna(first_seen):
        raise InputError(
            f"{beh_path}: no impression has a parseable time (expected like '11/15/2019 8:55:22 AM')"
        )
    items_df["updated_at"] = first_seen

    ok = inter[inter["event_ts"].notna() & inter["user_id"].notna()]
    first_by_user = ok.groupby("user_id")["event_ts"].min()
    users_df = first_by_user.rename("updated_at").reset_index()
    first_rows = ok.sort_values("_row").drop_duplicates("user_id").set_index("user_id")
    users_df["_file"] = str(beh_path)
    users_df["_row"] = users_df["user_id"].map(first_rows["_row"]).astype("int64")
    users_df["_raw"] = users_df["user_id"]
    users_df["_reject"] = None
    users_df["_detail"] = None
    for col in ("age", "gender", "occupation", "location", "bio"):
        users_df[col] = None
    return RawTables(
        items=items_df, users=users_df, interactions=inter, notes={"history_repeats_folded": repeats}
    )
