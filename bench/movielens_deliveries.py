"""MovieLens as a landing directory of delivered event files, one per day (issue 16's day-over-day run with a
source that is not a full dump).

The catalogue (items.csv, users.csv, with the ``updated_at`` the MovieLens loader gives them: the first event's
time) and ``events/<YYYY-MM-DD>.csv``, each day's ratings by the UTC date of their timestamp, plus the
``mapping.yaml`` that reads them with ``interactions.files``. Ingesting it gives the canonical tables the
``movielens`` source gives (tests/bench/test_movielens_deliveries.py), so a night on it compares with a night
on the dump.

    .venv/bin/python bench/movielens_deliveries.py var/cache/ml-100k var/bench/ml-landing
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmfeat.data.sources import movielens

MAPPING = """\
# MovieLens as delivered files (bench/movielens_deliveries.py)
items:
  path: items.csv
  id: item_id
  columns: {title: title, category: category, tags: tags}
  tags_separator: "|"
  updated_at: updated_at
  released_at: released_at
users:
  path: users.csv
  id: user_id
  columns: {age: age, gender: gender, occupation: occupation, location: location}
  updated_at: updated_at
interactions:
  files: "events/*.csv"
  user_id: user_id
  item_id: item_id
  timestamp: ts
  rating: rating
  timestamp_format: unix_s
"""


def write_landing(ml_dir: Path, out: Path) -> Path:
    """Write the landing directory for the MovieLens files in ``ml_dir``; returns its mapping file."""
    raw = movielens.load(Path(ml_dir))
    out = Path(out)
    (out / "events").mkdir(parents=True, exist_ok=True)
    iso = "%Y-%m-%dT%H:%M:%S%z"
    items = raw.items.assign(
        tags=raw.items["tags"].map(lambda t: "|".join(t) if t else None),
        updated_at=raw.items["updated_at"].dt.strftime(iso),
        released_at=raw.items["released_at"].dt.strftime(iso),
    )[["item_id", "title", "category", "tags", "updated_at", "released_at"]]
    items.to_csv(out / "items.csv", index=False)
    users = raw.users.assign(updated_at=raw.users["updated_at"].dt.strftime(iso))
    users[["user_id", "age", "gender", "occupation", "location", "updated_at"]].to_csv(
        out / "users.csv", index=False
    )
    events = raw.interactions.assign(ts=raw.interactions["_event_ts_raw"])
    for day, rows in events.groupby(events["event_ts"].dt.strftime("%Y-%m-%d"), sort=True):
        rows[["user_id", "item_id", "rating", "ts"]].to_csv(out / "events" / f"{day}.csv", index=False)
    (out / "mapping.yaml").write_text(MAPPING)
    return out / "mapping.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ml_dir", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    print(write_landing(args.ml_dir, args.out))


if __name__ == "__main__":
    main()
