"""Synthetic MovieLens-shaped data at k times MovieLens-100k, for the scale curve (issue 16).

    .venv/bin/python bench/synthetic_data.py --scale 10 --seed 0 --out var/synth/x10

Writes GroupLens's layout (``u.data``, ``u.item``, ``u.user``), which llmfeat's movielens loader reads, so a
night runs on it with ``--set ingest.source=movielens --set ingest.source_path=var/synth/x10``; plus
``manifest.json`` (the parameters and counts; bench/scale_curve.py reuses a directory whose manifest matches).
The same seed and scale give byte-identical files.

The shape of MovieLens-100k at k times its size: round(943 k) users, round(1,682 k) items and round(100,000 k)
ratings between 1997-09-20 and 1998-04-22, so each day holds ~k x 467 events.

- Users: at least 20 ratings each, the rest lognormal (MovieLens: median 65, mean 106, at most 740, 44 % of the
  catalogue); age, gender, occupation (MovieLens's 21, at its frequencies) and a zip code.
- Items: a title composed from word lists with its year ("Silent Harbor (1996)", "Long Goodbye, The (1994)"),
  a release date, an IMDb-style URL and the 19 genre flags at MovieLens's frequencies. Popularity is
  Zipf-like in the item's rank (the same curve over rank / items at every scale); 75 % of the catalogue is
  there from the first day, the rest appears uniformly over the span (an item is rated only after it appears).
- Times: each user arrives at a uniform time; half of their ratings fall in a first session (minutes to hours),
  the rest spread over the following weeks. Times wrap around the span, so every day's expected volume is
  the same and a night early in the span and one late in it see the same size of day.
- Ratings: 1-5 from a latent user bias + item quality (popular items rate higher), cut at MovieLens's shares
  (6 / 11 / 27 / 34 / 21 %: 55 % are >= 4, a click at the default threshold).
- A user rates an item once; only below ~1x, where a heavy user's history is larger than the catalogue, some
  (user, item) pairs repeat (at distinct times; ``repeated_pairs`` in the manifest).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

VERSION = 1  # bump when the generated data changes, so a stale directory is not reused
BASE_USERS, BASE_ITEMS, BASE_RATINGS = 943, 1682, 100_000
START_TS = 874_724_710  # 1997-09-20 03:05:10 UTC: MovieLens-100k's first rating
END_TS = 893_286_638  # 1998-04-22 23:10:38 UTC: its last
MIN_RATINGS = 20
MAX_HISTORY_SHARE = 0.44  # MovieLens's heaviest user rated 737 of 1,682 items
ACTIVITY_SIGMA = 1.14  # lognormal ratings above the minimum: median 65, mean 106 as in MovieLens
POPULARITY = (0.05, 0.82, 0.45)  # weight(x) = (x + c)^-a * exp(-x / s), x = popularity rank / items
LATE_ITEM_SHARE = 0.25
FIRST_SESSION_SHARE = 0.5
FIRST_SESSION_MEAN_S = 3_600.0
LATER_MEAN_S = 30 * 86_400.0
RATING_SHARES = (0.0611, 0.1137, 0.2715, 0.3417, 0.2120)  # 1..5 stars in MovieLens-100k
REDRAW_ROUNDS = 30  # by popularity for the first few, then uniformly among the items available

GENRE_SHARES = {
    "unknown": 0.0, "Action": 0.149, "Adventure": 0.080, "Animation": 0.025, "Children's": 0.073,
    "Comedy": 0.300, "Crime": 0.065, "Documentary": 0.030, "Drama": 0.431, "Fantasy": 0.013,
    "Film-Noir": 0.014, "Horror": 0.055, "Musical": 0.033, "Mystery": 0.036, "Romance": 0.147,
    "Sci-Fi": 0.060, "Thriller": 0.149, "War": 0.042, "Western": 0.016,
}  # fmt: skip
OCCUPATIONS = {
    "student": 196, "other": 105, "educator": 95, "administrator": 79, "engineer": 67, "programmer": 66,
    "librarian": 51, "writer": 45, "executive": 32, "scientist": 31, "artist": 28, "technician": 27,
    "marketing": 26, "entertainment": 18, "healthcare": 16, "retired": 14, "lawyer": 12, "salesman": 12,
    "none": 9, "homemaker": 7, "doctor": 7,
}  # fmt: skip
ADJECTIVES = (
    "Silent", "Last", "Dark", "Lost", "Broken", "Golden", "Wild", "Hidden", "Final", "Long", "Little", "Dead",
    "Secret", "Crimson", "Lonely", "Perfect", "Dangerous", "Sweet", "Cold", "Burning", "Frozen", "Empty",
    "Eternal", "Forgotten", "Midnight", "Electric", "Crazy", "Brave", "Blue", "Black", "White", "Red", "Green",
    "Hollow", "Quiet", "Restless", "Fatal", "Naked", "Innocent", "Endless", "Savage", "Gentle", "Bitter",
    "Shallow", "Deep", "Strange", "Distant", "Private", "Fallen", "Rising", "Wicked", "Holy", "Blind",
    "Stolen", "Sacred", "Twisted", "Royal", "Lucky", "Mad", "Happy", "Tender", "Cruel", "Silver", "Iron",
    "American", "English", "French", "Mexican", "Texas", "Chinese", "Jungle", "Desert", "Summer", "Winter",
)  # fmt: skip
NOUNS = (
    "Harbor", "River", "Night", "Heart", "Road", "City", "Storm", "Dream", "Game", "Kiss", "Shadow", "Island",
    "Highway", "Garden", "Mirror", "Promise", "Secret", "Stranger", "Hunter", "Witness", "Angel", "Ghost",
    "Kingdom", "Empire", "Legend", "Journey", "Horizon", "Fire", "Rain", "Thunder", "Moon", "Sun", "Star",
    "Ocean", "Mountain", "Valley", "Forest", "Castle", "Bridge", "Tower", "House", "Hotel", "Train", "Party",
    "Wedding", "Funeral", "Affair", "Escape", "Return", "Revenge", "Justice", "Truth", "Lie", "Memory",
    "Silence", "Voice", "Song", "Dance", "Letter", "Ticket", "Crossing", "Frontier", "Border", "Paradise",
    "Heaven", "Hell", "Soldier", "Doctor", "Detective", "Spy", "Thief", "Killer", "Lover", "Brother",
    "Sister", "Father", "Mother", "Daughter", "Son", "King", "Queen", "Prince", "Outlaw", "Sheriff", "Pilot",
    "Sailor", "Runner", "Fighter", "Dragon", "Tiger", "Wolf", "Horse", "Eagle", "Snake", "Spider", "Machine",
    "Planet", "Signal", "Code", "Mission", "Target", "Contract", "Fortune", "Jewel", "Crown", "Sword",
    "Circle", "Line", "Edge", "Game", "Season", "Weekend", "Holiday", "Christmas", "Summer", "Alibi",
)  # fmt: skip
PLURALS = (
    "Monkeys", "Rooms", "Days", "Nights", "Angels", "Brothers", "Sisters", "Friends", "Strangers", "Soldiers",
    "Kings", "Lovers", "Ghosts", "Wolves", "Horses", "Stars", "Roads", "Secrets", "Dreams", "Women", "Men",
    "Sons", "Daughters", "Witches", "Pirates", "Cowboys", "Spies", "Thieves", "Weddings", "Lies",
)  # fmt: skip
NAMES = (
    "Amy", "Grace", "Harry", "Sally", "Annie", "Jack", "Maria", "Frankie", "Johnny", "Emma", "Lucy", "Max",
    "Rosie", "Eddie", "Billy", "Kate", "Nell", "Sam", "Toby", "Clara", "Ruby", "Oscar", "Vincent", "Louis",
    "Henry", "Walter", "Dolores", "Marty", "Gilbert", "Ed", "Jerry", "Tom", "Nina", "Lola", "Vera", "Otto",
    "Hugo", "Felix", "Iris", "Jules", "Leon", "Mona", "Ned", "Olive", "Pablo", "Quinn", "Rita", "Stella",
    "Teddy", "Ulysses", "Violet", "Wanda", "Yuri", "Zelda", "Bruno", "Carmen", "Dexter", "Elsa", "Franz",
    "Gus", "Hank", "Ivy", "Joey", "Kurt", "Lenny", "Molly", "Norma", "Percy", "Rex", "Sid", "Trixie",
)  # fmt: skip
PLACES = (
    "Brooklyn", "Paris", "Chicago", "Tokyo", "Berlin", "Vegas", "Dallas", "Rome", "London", "Shanghai",
    "Manhattan", "Casablanca", "Vienna", "Havana", "Memphis", "Boston", "Seattle", "Montana", "Alaska",
    "Sicily", "Bombay", "Cairo", "Dublin", "Lisbon", "Madrid", "Moscow", "Nevada", "Oregon", "Venice",
    "Bangkok", "the Dead", "the Apes", "the Lambs", "the Wind", "the North", "the Damned", "the Sea",
    "the Rose", "the Jungle", "the Worlds",
)  # fmt: skip
VERBS = (
    "Chasing", "Saving", "Finding", "Leaving", "Killing", "Loving", "Kissing", "Hunting", "Waiting for",
    "Searching for", "Looking for", "Dancing with", "Running from", "Living with", "Meeting", "Becoming",
    "Remembering", "Forgetting", "Following", "Escaping", "Catching", "Raising", "Dating", "Burying",
    "Blaming", "Trusting",
)  # fmt: skip
NUMBERS = ("Two", "Three", "Four", "Five", "Seven", "Nine", "Ten", "Twelve", "Hundred", "Thousand")
SEQUELS = ("II", "III", "2", "3", "IV")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TITLE_PATTERNS = (
    (0.20, "{adj} {noun}"),
    (0.08, "{noun}"),
    (0.12, "{noun} of {place}, The"),
    (0.10, "{adj} {noun}, The"),
    (0.08, "{name}'s {noun}"),
    (0.06, "{adj} {noun} {sequel}"),
    (0.08, "{noun} and the {noun2}"),
    (0.10, "{verb} {name}"),
    (0.06, "{number} {plural}"),
    (0.06, "{noun} in {place}"),
    (0.06, "{name} and {name2}"),
)


@dataclass(frozen=True)
class Sizes:
    users: int
    items: int
    ratings: int


def sizes(scale: float) -> Sizes:
    """MovieLens-100k's counts times ``scale`` (at least one user and one item)."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return Sizes(
        max(1, round(BASE_USERS * scale)),
        max(1, round(BASE_ITEMS * scale)),
        max(1, round(BASE_RATINGS * scale)),
    )


def user_activity(rng: np.random.Generator, n_users: int, n_ratings: int) -> np.ndarray:
    """Ratings per user, summing to ``n_ratings`` exactly: a floor plus a lognormal share, capped at
    MovieLens's heaviest user at every scale (a user's appetite does not grow with the catalogue)."""
    floor = min(MIN_RATINGS, n_ratings // n_users)
    room = max(1, int(MAX_HISTORY_SHARE * BASE_ITEMS) - floor)
    budget = n_ratings - floor * n_users
    weight = rng.lognormal(0.0, ACTIVITY_SIGMA, n_users)
    capped = np.zeros(n_users, dtype=bool)
    while True:  # water-filling: share the budget in proportion to weight, users over the cap get the cap
        level = (budget - room * capped.sum()) / weight[~capped].sum()
        over = ~capped & (level * weight > room)
        if not over.any() or over.sum() == (~capped).sum():
            break
        capped |= over
    extra = np.where(capped, room, np.minimum(level * weight, room))
    counts = np.floor(extra).astype(np.int64)
    order = np.argsort(-(extra - counts), kind="stable")  # the largest remainders get one more
    counts[order[: budget - int(counts.sum())]] += 1
    return counts + floor


def popularity(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """Item weights: a Zipf-like curve over a random popularity rank, the same curve at every scale."""
    c, a, s = POPULARITY
    x = (rng.permutation(n_items) + 0.5) / n_items
    return (x + c) ** -a * np.exp(-x / s)


def availability(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """When each item can first be rated: the first day for most, a uniform time in the span for the rest."""
    late = rng.random(n_items) < LATE_ITEM_SHARE
    return np.where(late, rng.integers(START_TS, END_TS, n_items), START_TS)


def event_times(rng: np.random.Generator, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user index, unix time) per rating: arrival + a first-session or a later offset, wrapped to the span."""
    user = np.repeat(np.arange(len(counts)), counts)
    arrival = rng.integers(START_TS, END_TS, len(counts))[user]
    first = rng.random(len(user)) < FIRST_SESSION_SHARE
    offset = rng.exponential(np.where(first, FIRST_SESSION_MEAN_S, LATER_MEAN_S))
    span = END_TS - START_TS
    return user, START_TS + (arrival - START_TS + offset.astype(np.int64)) % span


class ItemPicker:
    """Draws items among those available at each event's time (a prefix of availability order)."""

    def __init__(self, weight: np.ndarray, available_from: np.ndarray):
        self.order = np.argsort(available_from, kind="stable")
        self.since = available_from[self.order]
        self.cumulative = np.cumsum(weight[self.order])

    def __call__(self, rng: np.random.Generator, ts: np.ndarray, *, uniform: bool = False) -> np.ndarray:
        """By popularity, or ``uniform``ly (what finds an unrated item for a heavy user)."""
        n_available = np.searchsorted(self.since, ts, side="right")
        if uniform:
            return self.order[np.floor(rng.random(len(ts)) * n_available).astype(np.int64)]
        u = rng.random(len(ts)) * self.cumulative[n_available - 1]
        pos = np.minimum(np.searchsorted(self.cumulative, u, side="right"), n_available - 1)
        return self.order[pos]


def pick_items(rng: np.random.Generator, picker: ItemPicker, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """One item per event, redrawn where the user already rated it; what remains after the rounds repeats
    (only where a user's history is larger than the items available to it)."""
    item = picker(rng, ts)
    rows = np.arange(len(user))  # the rows of users with a repeat, narrowed each round
    for round_ in range(REDRAW_ROUNDS):
        dup = pd.DataFrame({"u": user[rows], "i": item[rows]}).duplicated().to_numpy()
        if not dup.any():
            break
        redo = rows[dup]
        item[redo] = picker(rng, ts[redo], uniform=round_ >= 3)
        rows = rows[np.isin(user[rows], user[redo])]
    return item


def distinct_times(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """A repeated (user, item) pair at the same second would be a duplicate event: move it a second later."""
    ts = ts.copy()
    while True:
        dup = pd.DataFrame({"u": user, "i": item, "t": ts}).duplicated().to_numpy()
        if not dup.any():
            return ts
        ts[dup] += 1


def ratings(rng: np.random.Generator, user: np.ndarray, item: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """1-5 stars: user bias + item quality (popular items rate higher) + noise, cut at MovieLens's shares."""
    n_users, n_items = int(user.max()) + 1, len(weight)
    log_pop = np.log(weight)
    quality = rng.normal(0.0, 0.7, n_items) + 0.5 * (log_pop - log_pop.mean()) / (log_pop.std() or 1.0)
    bias = rng.normal(0.0, 0.6, n_users)
    score = quality[item] + bias[user] + rng.normal(0.0, 1.0, len(user))
    cuts = np.quantile(score, np.cumsum(RATING_SHARES)[:-1])
    return np.searchsorted(cuts, score, side="right").astype(np.int64) + 1


def users_table(rng: np.random.Generator, n_users: int) -> pd.DataFrame:
    occupations = np.array(list(OCCUPATIONS))
    share = np.array(list(OCCUPATIONS.values()), dtype=float)
    return pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "age": np.clip(np.round(rng.normal(34.0, 12.0, n_users)), 7, 73).astype(np.int64),
            "gender": np.where(rng.random(n_users) < 0.71, "M", "F"),
            "occupation": occupations[rng.choice(len(share), n_users, p=share / share.sum())],
            "zip": [f"{z:05d}" for z in rng.integers(0, 100_000, n_users)],
        }
    )


def titles(rng: np.random.Generator, n_items: int) -> list[str]:
    """Titles composed from the word lists, MovieLens style ("Usual Suspects, The")."""
    shares = np.array([p for p, _ in TITLE_PATTERNS])
    pattern = rng.choice(len(TITLE_PATTERNS), n_items, p=shares / shares.sum())
    lists = {"adj": ADJECTIVES, "noun": NOUNS, "noun2": NOUNS, "place": PLACES, "name": NAMES,
             "name2": NAMES, "sequel": SEQUELS, "verb": VERBS, "number": NUMBERS, "plural": PLURALS}  # fmt: skip
    picks = {key: rng.integers(0, len(words), n_items) for key, words in lists.items()}
    out = []
    for n in range(n_items):
        words = {key: lists[key][picks[key][n]] for key in lists}
        out.append(TITLE_PATTERNS[pattern[n]][1].format(**words))
    return out


def release_dates(rng: np.random.Generator, available_from: np.ndarray) -> list[dt.date]:
    """Late items were released shortly before they appear; the rest mostly in the 1990s, some much older."""
    n = len(available_from)
    late = available_from > START_TS
    age_years = np.minimum(np.floor(rng.exponential(6.0, n)), 1997 - 1922)
    old_year = 1997 - age_years.astype(np.int64)
    day_of_year = np.where(rng.random(n) < 0.5, 0, rng.integers(0, 365, n))
    lead_days = rng.integers(0, 60, n)
    out = []
    for k in range(n):
        if late[k]:
            out.append(
                dt.datetime.fromtimestamp(int(available_from[k]), dt.UTC).date()
                - dt.timedelta(days=int(lead_days[k]))
            )
        else:
            out.append(dt.date(int(old_year[k]), 1, 1) + dt.timedelta(days=int(day_of_year[k])))
    return out


def genre_flags(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """(items x 19) 0/1 flags at MovieLens's genre shares, at least one genre per item."""
    share = np.array(list(GENRE_SHARES.values()))
    flags = (rng.random((n_items, len(share))) < share).astype(np.int64)
    none = flags.sum(axis=1) == 0
    flags[none, rng.choice(len(share), int(none.sum()), p=share / share.sum())] = 1
    return flags


def items_table(rng: np.random.Generator, available_from: np.ndarray) -> pd.DataFrame:
    n = len(available_from)
    released = release_dates(rng, available_from)
    named = [f"{t} ({d.year})" for t, d in zip(titles(rng, n), released, strict=True)]
    table = pd.DataFrame(
        {
            "item_id": np.arange(1, n + 1),
            "title": named,
            "release_date": [f"{d.day:02d}-{MONTHS[d.month - 1]}-{d.year}" for d in released],
            "video_release_date": "",
            "url": ["http://us.imdb.com/M/title-exact?" + quote(t, safe="(),'") for t in named],
        }
    )
    flags = pd.DataFrame(genre_flags(rng, n), columns=[f"g{i}" for i in range(len(GENRE_SHARES))])
    return pd.concat([table, flags], axis=1)


def interactions_table(rng: np.random.Generator, size: Sizes, weight: np.ndarray,
                       available_from: np.ndarray) -> pd.DataFrame:  # fmt: skip
    user, ts = event_times(rng, user_activity(rng, size.users, size.ratings))
    item = pick_items(rng, ItemPicker(weight, available_from), user, ts)
    ts = distinct_times(user, item, ts)
    table = pd.DataFrame({"user_id": user + 1, "item_id": item + 1, "rating": ratings(rng, user, item, weight),
                          "timestamp": ts})  # fmt: skip
    return table.sort_values(["timestamp", "user_id", "item_id"], kind="stable", ignore_index=True)


def write_tables(out: Path, users: pd.DataFrame, items: pd.DataFrame, inter: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plain = {"header": False, "index": False, "lineterminator": "\n", "quoting": csv.QUOTE_NONE}
    inter.to_csv(out / "u.data", sep="\t", **plain)
    items.to_csv(out / "u.item", sep="|", encoding="latin-1", **plain)
    users.to_csv(out / "u.user", sep="|", **plain)


def describe(inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> dict:
    """Counts and shape checks, written to the manifest and printed."""
    day = pd.to_datetime(inter["timestamp"], unit="s").dt.date
    per_day = day.value_counts()
    first_seen = inter.groupby("item_id")["timestamp"].min()
    per_user = inter.groupby("user_id").size()
    per_item = inter.groupby("item_id").size()
    return {
        "users": len(users),
        "items": len(items),
        "ratings": len(inter),
        "rated_items": int(inter["item_id"].nunique()),
        "share_rating_ge_4": round(float((inter["rating"] >= 4).mean()), 4),
        "ratings_per_user": {
            "min": int(per_user.min()),
            "median": float(per_user.median()),
            "max": int(per_user.max()),
        },  # fmt: skip
        "ratings_per_item": {"median": float(per_item.median()), "max": int(per_item.max())},
        "repeated_pairs": int(inter.duplicated(["user_id", "item_id"]).sum()),
        "days": int(per_day.size),
        "ratings_per_day": {
            "min": int(per_day.min()),
            "median": float(per_day.median()),
            "max": int(per_day.max()),
        },  # fmt: skip
        "share_items_first_rated_after_30_days": round(
            float((first_seen > START_TS + 30 * 86_400).mean()), 4
        ),
        "first": dt.datetime.fromtimestamp(int(inter["timestamp"].min()), dt.UTC).isoformat(),
        "last": dt.datetime.fromtimestamp(int(inter["timestamp"].max()), dt.UTC).isoformat(),
    }


def params(scale: float, seed: int) -> dict:
    return {"generator": "bench/synthetic_data.py", "version": VERSION, "scale": scale, "seed": seed}


def generate(scale: float, seed: int, out: Path) -> dict:
    """Write the data set for ``scale`` and ``seed`` into ``out``; returns the manifest (also written there)."""
    t0 = time.perf_counter()
    size = sizes(scale)
    rng = np.random.default_rng(seed)
    weight = popularity(rng, size.items)
    available_from = availability(rng, size.items)
    items = items_table(rng, available_from)
    users = users_table(rng, size.users)
    inter = interactions_table(rng, size, weight, available_from)
    write_tables(Path(out), users, items, inter)
    manifest = {**params(scale, seed), "sizes": asdict(size), "counts": describe(inter, items, users)}
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "seconds": round(time.perf_counter() - t0, 2)}


def ensure(scale: float, seed: int, out: Path) -> dict:
    """The data set in ``out``: reused when its manifest has the same generator version, scale and seed."""
    path = Path(out) / "manifest.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
        if {k: manifest.get(k) for k in params(scale, seed)} == params(scale, seed):
            return {**manifest, "reused": True}
    return generate(scale, seed, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--scale", type=float, required=True, help="k: k x MovieLens-100k's users, items, ratings"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="directory for u.data, u.item, u.user")
    args = ap.parse_args()
    print(json.dumps(generate(args.scale, args.seed, args.out), indent=2))


if __name__ == "__main__":
    main()
