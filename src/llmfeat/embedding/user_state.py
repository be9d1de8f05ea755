"""Point-in-time user state at each snapshot time: the user's text and the pooled history vector.

Pure pandas / numpy, one user at a time, so it is tested without Spark; ``embed.py`` runs it per user with
``cogroup(...).applyInPandas``.

At snapshot time ``s`` a user is seen as of ``s``: their profile if ``updated_at <= s``, and only clicks with
``event_ts < s`` (strictly before), so a point-in-time join on the snapshot's event_timestamp never sees the
future. A row is emitted only when the state differs from the user's previous row (the table is a change
log: a user without a row at ``s`` keeps their latest earlier row, which is what a point-in-time join picks).

The pooled-history vector is the time-decayed mean of the clicked items' vectors, L2-normalised. With
exponential decay every weight shrinks by the same factor as time passes, so the normalised vector only
changes when a new click becomes visible; it is computed relative to the newest visible click.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmfeat.data.texts import history_text, render


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utc(value) -> pd.Timestamp | None:
    """Spark hands timestamps to pandas as naive UTC; tests use aware ones. Compare them as aware UTC."""
    if value is None or pd.isna(value):
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class UserStateParams:
    template: str
    history_n: int
    half_life_days: float


TEXT_COLUMNS = ["user_id", "snapshot_ts", "text", "content_hash", "n_history", "recent_titles"]
HISTORY_COLUMNS = ["user_id", "snapshot_ts", "embedding", "n_clicks", "last_click_ts", "pooled_norm"]


@dataclass(frozen=True)
class Prior:
    """A user's state at the last covered snapshot, as their latest rows keep it, for a run that reads only the
    clicks since (``embed``'s windowed pass): the titles of the latest ``history_n`` clicks, oldest first (the
    text row's ``recent_titles``: a title that changed since makes that pass read every click), the pooled sum
    (the history row's ``embedding`` times its ``pooled_norm``: the time-decayed sum before normalising,
    relative to ``last_click``) and ``n_clicks``.

    With exponential decay the sum after a later click is the old sum times the decay over the gap plus the
    new click's vector, so the pooled vector continues from the prior exactly (up to float rounding)."""

    titles: list[str]
    pooled: np.ndarray | None = None
    last_click: pd.Timestamp | None = None
    n_clicks: int = 0


def user_snapshots(
    profile: dict,
    clicks: pd.DataFrame,
    times: list[pd.Timestamp],
    params: UserStateParams,
    prev_text_hash: str | None = None,
    prev_n_clicks: int = 0,
    prior: Prior | None = None,
) -> tuple[list[dict], list[dict]]:
    """Text rows and history rows for one user.

    ``clicks``: columns event_ts (UTC), item_id, title, embedding (item vector or None); any order. Clicks
    at the same instant are ordered by item_id, as in the canonical interactions table.
    ``prev_*``: the state of the user's latest row before ``times[0]`` (None / 0 for a new user).
    ``prior``: ``clicks`` hold only the clicks after the prior state's (``Prior``); None: every click.
    """
    clicks = clicks.sort_values(["event_ts", "item_id"], kind="stable")
    ts = (
        clicks["event_ts"].to_numpy(dtype="datetime64[us]")
        if len(clicks)
        else np.array([], dtype="datetime64[us]")
    )
    titles = clicks["title"].tolist()
    if prior is not None:
        titles = [*prior.titles, *titles]
    before = len(prior.titles) if prior is not None else 0  # clicks known before ``clicks``
    base_n = prior.n_clicks if prior is not None else 0
    base_sum = prior.pooled if prior is not None and prior.n_clicks else None
    base_ts = np.datetime64(_utc(prior.last_click).tz_localize(None), "us") if base_sum is not None else None
    has_vec = (
        clicks["embedding"].map(lambda v: v is not None and len(v) > 0).to_numpy(bool)
        if len(clicks)
        else np.zeros(0, bool)
    )
    vectors = np.stack(clicks["embedding"][has_vec].tolist()).astype(np.float32) if has_vec.any() else None
    vec_ts = ts[has_vec]
    half_life_us = params.half_life_days * 86_400e6

    text_rows: list[dict] = []
    hist_rows: list[dict] = []
    updated_at = _utc(profile.get("updated_at"))
    for s in times:
        if updated_at is not None and updated_at > s:
            continue  # the user does not exist yet at s
        s64 = np.datetime64(s.tz_convert("UTC").tz_localize(None), "us")
        visible = before + int(np.searchsorted(ts, s64, side="left"))
        first = max(0, visible - params.history_n)
        recent = titles[first:visible][::-1]
        text = render(params.template, {**profile, "history": history_text(recent)})
        digest = content_hash(text)
        if digest != prev_text_hash:
            text_rows.append({"user_id": profile["user_id"], "snapshot_ts": s, "text": text, "content_hash": digest,
                              "n_history": len(recent), "recent_titles": titles[first:visible]})  # fmt: skip
            prev_text_hash = digest
        n_vec = int(np.searchsorted(vec_ts, s64, side="left"))
        if base_n + n_vec > prev_n_clicks:
            last = vec_ts[n_vec - 1] if n_vec else base_ts
            ages = (last - vec_ts[:n_vec]).astype("int64").astype(np.float64)
            pooled = np.exp2(-ages / half_life_us) @ vectors[:n_vec] if n_vec else 0.0
            if base_sum is not None:  # the prior sum, decayed over the gap to the newest click
                pooled = pooled + base_sum * np.exp2(-float((last - base_ts).astype("int64")) / half_life_us)
            norm = float(np.linalg.norm(pooled))
            hist_rows.append({"user_id": profile["user_id"], "snapshot_ts": s,
                              "embedding": (pooled / norm if norm > 0 else pooled).astype(np.float32),
                              "n_clicks": base_n + n_vec, "last_click_ts": pd.Timestamp(last, tz="UTC"),
                              "pooled_norm": norm})  # fmt: skip
            prev_n_clicks = base_n + n_vec
    return text_rows, hist_rows
