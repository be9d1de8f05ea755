"""The append-only event log of bandit decisions and rewards: one SQLite file.

Why SQLite: one writer process (the service) and readers in others (the nightly, ``llmfeat bandit ope``),
transactions that make "a reward is counted at most once" a primary-key constraint, and durability per
write. WAL mode with ``synchronous=FULL``: each acknowledged decision or reward is fsynced before the HTTP
answer goes out, so a crash (even SIGKILL, or power loss) loses at most the request in flight; readers never
block the writer. Triggers refuse UPDATE and DELETE: the log only grows.

Tables::

    decisions(seq, event_id UNIQUE, ts, user_id, policy_version, space_id, item_ids JSON, chosen, propensity,
              pmf BLOB float64[n], shared BLOB float32[w], actions BLOB float32[n, w'], context JSON)
    rewards(event_id PRIMARY KEY -> decisions, ts, reward)

The feature rows the policy saw are stored with each decision (after projection: ~15 kB for 100
candidates), so training and off-policy evaluation use exactly what was served, never a later re-fetch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmfeat.core.errors import MissingInputError
from llmfeat.core.layout import DataDir
from llmfeat.retrieval.retriever import NotFoundError

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    user_id TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    space_id TEXT NOT NULL,
    item_ids TEXT NOT NULL,
    chosen INTEGER NOT NULL,
    propensity REAL NOT NULL CHECK (propensity > 0 AND propensity <= 1),
    pmf BLOB NOT NULL,
    shared BLOB NOT NULL,
    actions BLOB NOT NULL,
    action_width INTEGER NOT NULL,
    context TEXT
);
CREATE TABLE IF NOT EXISTS rewards (
    event_id TEXT PRIMARY KEY REFERENCES decisions(event_id),
    ts REAL NOT NULL,
    reward REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS rewards_no_update BEFORE UPDATE ON rewards
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS rewards_no_delete BEFORE DELETE ON rewards
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""


class UnknownEventError(NotFoundError):
    """No decision with this event id (404)."""


class ExpiredEventError(LookupError):
    """The reward window of this decision has closed (410)."""


class DuplicateRewardError(LookupError):
    """This decision already has its reward (409); the first one counts."""


@dataclass
class Decision:
    seq: int
    event_id: str
    ts: float
    user_id: str
    policy_version: str
    space_id: str
    item_ids: list[str]
    chosen: int
    propensity: float
    pmf: np.ndarray
    shared: np.ndarray
    actions: np.ndarray
    context: dict
    reward: float | None
    """None: no reward (yet)."""


def event_log_path(cfg) -> Path:
    return (
        Path(cfg.bandit.event_log)
        if cfg.bandit.event_log
        else DataDir(Path(cfg.paths.data_dir)).bandit / "events.sqlite"
    )


class EventLog:
    """One connection, serialised by a lock (SQLite allows one writer at a time anyway)."""

    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise MissingInputError(f"no bandit event log at {self.path}")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                       isolation_level=None)  # fmt: skip
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def log_decision(self, *, event_id: str, ts: float, user_id: str, policy_version: str, space_id: str,
                     item_ids: list[str], chosen: int, pmf: np.ndarray, shared: np.ndarray, actions: np.ndarray,
                     context: dict | None = None) -> None:  # fmt: skip
        """Append one decision; returns once it is on disk."""
        actions = np.ascontiguousarray(actions, dtype=np.float32)
        row = (event_id, ts, user_id, policy_version, space_id, json.dumps(list(item_ids)), int(chosen),
               min(float(pmf[chosen]), 1.0), np.asarray(pmf, np.float64).tobytes(), np.asarray(shared, np.float32).tobytes(),
               actions.tobytes(), actions.shape[1], json.dumps(context or {}, default=str))  # fmt: skip
        with self._lock:
            self._db.execute(
                "INSERT INTO decisions (event_id, ts, user_id, policy_version, space_id, item_ids, chosen, propensity,"
                " pmf, shared, actions, action_width, context) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )

    def add_reward(self, event_id: str, reward: float, *, window_s: float, now: float | None = None) -> dict:
        """Record the reward of a decision: once, within ``window_s`` seconds of it. Raises
        UnknownEventError, ExpiredEventError or DuplicateRewardError (nothing is written then)."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                got = self._db.execute("SELECT ts, user_id, item_ids, chosen FROM decisions WHERE event_id = ?",
                                       (event_id,)).fetchone()  # fmt: skip
                if got is None:
                    raise UnknownEventError(f"unknown event_id {event_id!r}: no decision was logged with it")
                ts, user_id, item_ids, chosen = got
                if now > ts + window_s:
                    raise ExpiredEventError(
                        f"event_id {event_id!r}: the reward window ({window_s:g} s after the decision at "
                        f"{_iso(ts)}) closed at {_iso(ts + window_s)}; the decision counts as reward 0"
                    )
                prior = self._db.execute(
                    "SELECT reward, ts FROM rewards WHERE event_id = ?", (event_id,)
                ).fetchone()
                if prior is not None:
                    raise DuplicateRewardError(
                        f"event_id {event_id!r} already has its reward ({prior[0]:g}, at {_iso(prior[1])}); "
                        "a reward is counted once"
                    )
                self._db.execute(
                    "INSERT INTO rewards (event_id, ts, reward) VALUES (?,?,?)",
                    (event_id, now, float(reward)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return {
            "event_id": event_id,
            "user_id": user_id,
            "item_id": json.loads(item_ids)[chosen],
            "reward": float(reward),
        }

    def counts(self) -> dict:
        with self._lock:
            d = self._db.execute("SELECT count(*) FROM decisions").fetchone()[0]
            r = self._db.execute("SELECT count(*), coalesce(sum(reward), 0) FROM rewards").fetchone()
        return {"decisions": d, "rewards": r[0], "reward_sum": float(r[1])}

    def decisions(self, *, closed_before: float | None = None, space_id: str | None = None,
                  default_reward: float | None = 0.0) -> Iterator[Decision]:  # fmt: skip
        """Decisions in log order, each with its reward. A decision without one gets ``default_reward`` once
        its window is closed (``closed_before``: decisions at or after it are still open and left out)."""
        sql = ("SELECT d.seq, d.event_id, d.ts, d.user_id, d.policy_version, d.space_id, d.item_ids, d.chosen,"
               " d.propensity, d.pmf, d.shared, d.actions, d.action_width, d.context, r.reward"
               " FROM decisions d LEFT JOIN rewards r ON r.event_id = d.event_id")  # fmt: skip
        where, args = [], []
        if space_id is not None:
            where.append("d.space_id = ?")
            args.append(space_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY d.seq", args).fetchall()
        for (
            seq,
            eid,
            ts,
            user,
            ver,
            sid,
            items,
            chosen,
            prop,
            pmf,
            shared,
            actions,
            width,
            ctx,
            reward,
        ) in rows:
            if reward is None:
                if closed_before is not None and ts >= closed_before:
                    continue
                reward = default_reward
                if reward is None:
                    continue
            acts = np.frombuffer(actions, np.float32).reshape(-1, width)
            yield Decision(seq, eid, ts, user, ver, sid, json.loads(items), chosen, prop, np.frombuffer(pmf, np.float64),
                           np.frombuffer(shared, np.float32), acts, json.loads(ctx or "{}"), reward)  # fmt: skip


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
