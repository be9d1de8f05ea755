"""Point-in-time user state: no click at or after a snapshot time ever shows up in that snapshot."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from llmfeat.core.changelog import snapshot_times
from llmfeat.embedding.user_state import UserStateParams, content_hash, user_snapshots

P = UserStateParams(template="{occupation}. Recently liked: {history}", history_n=2, half_life_days=1.0)


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def clicks(*rows):
    df = pd.DataFrame(rows, columns=["event_ts", "title", "embedding"])
    df["item_id"] = df["title"]
    return df


def test_snapshot_times_include_end():
    got = snapshot_times(dt.date(2024, 1, 1), dt.date(2024, 1, 8), 3)
    assert [t.day for t in got] == [1, 4, 7, 8]
    assert all(t.tzinfo is not None and t.hour == 0 for t in got)
    assert snapshot_times(dt.date(2024, 1, 2), dt.date(2024, 1, 1), 1) == []


def test_click_at_or_after_snapshot_is_invisible():
    profile = {"user_id": "u", "occupation": "chef", "updated_at": ts("2024-01-01")}
    c = clicks(
        (ts("2024-01-01 10:00"), "Soup", None),
        (ts("2024-01-03 00:00"), "Future", None),  # exactly at the 2024-01-03 snapshot: not visible there
    )
    times = snapshot_times(dt.date(2024, 1, 2), dt.date(2024, 1, 4), 1)
    text_rows, _ = user_snapshots(profile, c, times, P)
    by_time = {r["snapshot_ts"]: r["text"] for r in text_rows}
    assert by_time[ts("2024-01-02")] == "chef. Recently liked: Soup"
    assert ts("2024-01-03") not in by_time  # unchanged, so no row: the 01-02 row stays current
    assert by_time[ts("2024-01-04")] == "chef. Recently liked: Future; Soup"
    for r in text_rows:
        assert ("Future" in r["text"]) == (r["snapshot_ts"] > ts("2024-01-03"))


def test_history_is_latest_n_newest_first_and_user_must_exist():
    profile = {"user_id": "u", "occupation": "chef", "updated_at": ts("2024-01-02 12:00")}
    c = clicks(*[(ts(f"2024-01-0{d} 08:00"), f"T{d}", None) for d in (1, 2, 3)])
    times = snapshot_times(dt.date(2024, 1, 1), dt.date(2024, 1, 4), 1)
    text_rows, _ = user_snapshots(profile, c, times, P)
    assert [r["snapshot_ts"].day for r in text_rows] == [3, 4]  # the profile only exists from 01-02 12:00
    assert text_rows[-1]["text"] == "chef. Recently liked: T3; T2" and text_rows[-1]["n_history"] == 2


def test_previous_state_suppresses_unchanged_rows():
    profile = {"user_id": "u", "occupation": "chef", "updated_at": ts("2024-01-01")}
    times = snapshot_times(dt.date(2024, 1, 2), dt.date(2024, 1, 3), 1)
    text_rows, _ = user_snapshots(profile, clicks(), times, P, prev_text_hash=content_hash("chef"))
    assert text_rows == []


def test_pooled_history_vector_by_hand():
    profile = {"user_id": "u", "occupation": None, "updated_at": ts("2024-01-01")}
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    c = clicks(
        (ts("2024-01-01 00:00"), "A", a),
        (ts("2024-01-02 00:00"), "B", b),
        (ts("2024-01-02 12:00"), "X", None),
    )
    _, hist = user_snapshots(profile, c, snapshot_times(dt.date(2024, 1, 2), dt.date(2024, 1, 3), 1), P)
    assert [h["snapshot_ts"] for h in hist] == [ts("2024-01-02"), ts("2024-01-03")]
    assert hist[0]["n_clicks"] == 1 and np.allclose(hist[0]["embedding"], a)
    # at 01-03: A is one half-life older than B -> weights 0.5 and 1; the item without a vector is skipped
    expected = (0.5 * a + 1.0 * b) / np.linalg.norm(0.5 * a + 1.0 * b)
    assert hist[1]["n_clicks"] == 2 and np.allclose(hist[1]["embedding"], expected, atol=1e-6)
    assert hist[1]["last_click_ts"] == ts("2024-01-02")


@pytest.mark.parametrize("naive", [True, False])
def test_naive_spark_timestamps_are_utc(naive):
    when = pd.Timestamp("2024-01-01 10:00")
    profile = {"user_id": "u", "occupation": "chef", "updated_at": when if naive else when.tz_localize("UTC")}
    c = clicks((when if naive else when.tz_localize("UTC"), "Soup", None))
    rows, _ = user_snapshots(profile, c, snapshot_times(dt.date(2024, 1, 2), dt.date(2024, 1, 2), 1), P)
    assert rows[0]["text"] == "chef. Recently liked: Soup"


def test_a_run_from_the_prior_state_and_the_new_clicks_equals_one_over_every_click():
    """``Prior``: the state the latest rows keep at a covered snapshot (the recent clicks' titles, the pooled sum = vector x pooled_norm, the last click and the count), continued with only the later clicks,
    gives the rows a run over every click gives (texts exactly, vectors to float rounding)."""
    from llmfeat.embedding.user_state import Prior

    rng = np.random.default_rng(3)
    profile = {"user_id": "u", "occupation": "chef", "updated_at": ts("2024-01-01")}
    stamps = [
        ts("2024-01-01 09:00") + pd.Timedelta(hours=int(h)) for h in sorted(rng.integers(0, 24 * 9, 12))
    ]
    names = [f"T{i % 5}" for i in range(12)]
    vecs = [
        rng.normal(size=4).astype(np.float32) if i % 4 else None for i in range(12)
    ]  # some without a vector
    every = clicks(*zip(stamps, names, vecs, strict=True))
    every["item_id"] = [f"i{i}" for i in range(12)]
    covered = dt.date(2024, 1, 5)
    cut = ts(str(covered))
    before_rows = user_snapshots(profile, every, snapshot_times(dt.date(2024, 1, 2), covered, 1), P)
    text, hist = before_rows[0][-1], before_rows[1][-1]  # the latest rows at the covered snapshot
    prior = Prior(list(text["recent_titles"]), hist["embedding"].astype(np.float64) * hist["pooled_norm"],
                  hist["last_click_ts"], hist["n_clicks"])  # fmt: skip
    later = snapshot_times(dt.date(2024, 1, 6), dt.date(2024, 1, 10), 1)
    want = user_snapshots(
        profile, every, later, P, prev_text_hash=text["content_hash"], prev_n_clicks=hist["n_clicks"]
    )
    got = user_snapshots(profile, every[every["event_ts"] >= cut], later, P, prev_text_hash=text["content_hash"],
                         prev_n_clicks=hist["n_clicks"], prior=prior)  # fmt: skip
    assert len(want[0]) > 1 and len(want[1]) > 1  # the later days do change the text and the vector
    assert [(r["snapshot_ts"], r["text"], r["recent_titles"]) for r in got[0]] == [
        (r["snapshot_ts"], r["text"], r["recent_titles"]) for r in want[0]
    ]
    assert [(r["snapshot_ts"], r["n_clicks"], r["last_click_ts"]) for r in got[1]] == [
        (r["snapshot_ts"], r["n_clicks"], r["last_click_ts"]) for r in want[1]
    ]
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g["embedding"], w["embedding"], atol=1e-6)
        assert g["pooled_norm"] == pytest.approx(w["pooled_norm"], rel=1e-6)
