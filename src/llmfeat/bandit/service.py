"""``POST /rank`` and ``POST /reward``: the bandit's routes on ``llmfeat serve``.

``POST /rank`` ``{"user_id": "1", "k": 10}`` ranks ``bandit.candidates`` items retrieved from FAISS (the
k best are returned), ``{"user_id": "1", "item_ids": [...]}`` ranks the given items; an optional ``context``
object may carry ``time`` (ISO 8601; default: now), other keys are logged as given. The answer holds the
chosen item (sampled from the policy's distribution), its ``propensity`` (the probability it had), an
``event_id``, the deadline for its reward, and the ranked list: the chosen item first, then the others by
probability, each with its "because you liked" explanation.

``POST /reward`` ``{"event_id": "...", "reward": 1}`` (a number in [0, 1]) within ``bandit.reward_window_s``:
404 for an unknown event id, 410 once the window has closed (the decision then counts as reward 0), 409 for
a second reward (the first counts). Features come from the Feast online store through the same lookup as
the CTR ranker (``online.OnlineFeatures.fetch``). Every decision is in the event log (fsynced) before the
answer goes out. The policy is the published version, hot-reloaded like the FAISS index.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations.
import datetime as dt
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from llmfeat.bandit.events import (
    DuplicateRewardError,
    EventLog,
    ExpiredEventError,
    UnknownEventError,
    event_log_path,
)
from llmfeat.bandit.features import action_rows, shared_row
from llmfeat.bandit.policy import PolicyHolder, policy_root
from llmfeat.features.feature_vector import (
    HISTORY_CLICKS,
    ITEM_STATS,
    ITEM_TEXT,
    USER_HISTORY,
    USER_TEXT,
    vectors,
)
from llmfeat.features.stats import packed_columns
from llmfeat.retrieval.retriever import UnknownItemError, UnknownUserError

ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=ID_PATTERN)]
_PACKED = packed_columns("impressions")
IMPRESSIONS, CTR = _PACKED.index("impressions_total"), _PACKED.index("ctr_total")


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    k: int | None = Field(None, ge=1, description="Retrieve candidates from FAISS and return the k best.")
    item_ids: list[Id] | None = Field(None, min_length=1, max_length=1000, description="Rank these items.")
    context: dict[str, Any] | None = Field(None, description='Optional: {"time": ISO 8601, ...}.')


class Because(BaseModel):
    item_id: str
    title: str | None = None
    similarity: float


class Ranked(BaseModel):
    rank: int
    item_id: str
    title: str | None = None
    probability: float = Field(description="The probability the policy gave this item.")
    because: list[Because] = Field(default_factory=list)


class RankResponse(BaseModel):
    event_id: str
    user_id: str
    chosen: Ranked
    propensity: float = Field(description="Probability of the chosen item under the exploring policy.")
    policy_version: str
    index_version: str
    reward_deadline: str
    results: list[Ranked]


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=ID_PATTERN)]
    reward: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class RewardResponse(BaseModel):
    event_id: str
    user_id: str
    item_id: str
    reward: float


class PolicyInfo(BaseModel):
    policy_version: str
    exploration: str
    space_id: str
    manifest: dict[str, Any]
    events: dict[str, Any]
    last_reload_error: str | None = None


class BadRequest(ValueError):
    """A request the service cannot act on (422)."""


class BanditService:
    """Decides with the published policy, logs, takes rewards. ``features``: anything with
    ``fetch(user_id, item_ids) -> (user columns, item columns)`` (``online.OnlineFeatures``)."""

    def __init__(self, policies: PolicyHolder, features, events: EventLog, *, candidates: int = 100,
                 reward_window_s: float = 3600.0, explain_n: int = 3, k_max: int = 1000):  # fmt: skip
        self.policies, self.features, self.events = policies, features, events
        self.candidates, self.window, self.explain_n, self.k_max = (
            candidates,
            reward_window_s,
            explain_n,
            k_max,
        )

    @classmethod
    def from_config(cls, cfg) -> "BanditService":
        """Features from the Feast online store (``serve.user_source=feast``, the default) or, with
        ``parquet``, from the embedding tables (no Feast; no item stats: every item looks cold)."""
        policies = PolicyHolder(policy_root(cfg.paths.data_dir))
        if cfg.serve.user_source == "feast":
            from llmfeat.feast.store import open_store
            from llmfeat.features.online import OnlineFeatures

            features = OnlineFeatures(open_store(cfg), dim=policies.get().space.dim)
        else:
            features = ParquetFeatures(cfg.paths.data_dir, cfg.embed.embedding_set)
        b = cfg.bandit
        return cls(policies, features, EventLog(event_log_path(cfg)), candidates=b.candidates,
                   reward_window_s=b.reward_window_s, explain_n=b.explain_n, k_max=cfg.serve.k_max)  # fmt: skip

    def start(self, interval_s: float) -> None:
        self.policies.start(interval_s)

    def stop(self) -> None:
        self.policies.stop()

    # -- the decision ------------------------------------------------------------------------------

    def rank(self, retriever, req: RankRequest) -> RankResponse:
        loaded = self.policies.get()  # once: a reload during this request does not change it
        space = loaded.space
        when = _when(req.context)
        if req.item_ids is not None and req.k is not None:
            raise BadRequest("give either k (candidates from FAISS) or item_ids, not both")
        if req.k is not None and req.k > self.k_max:
            raise BadRequest(f"k must be within 1..{self.k_max}")
        if req.item_ids is not None:
            candidates = list(dict.fromkeys(req.item_ids))
            known = retriever.known_items(candidates)
            if not known.all():
                missing = [c for c, ok in zip(candidates, known, strict=True) if not ok]
                raise UnknownItemError(f"unknown item {missing[0]!r}: not in index version {retriever.version}"
                                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))  # fmt: skip
            k = len(candidates)
        else:
            found = retriever.for_user(req.user_id, max(self.candidates, req.k or 10))
            candidates, k = list(found.ids), req.k or 10
            if not candidates:
                raise BadRequest(f"no candidate items left for user {req.user_id!r} (all seen?)")
        user, items = self.features.fetch(req.user_id, candidates)
        text = _first(user.get(USER_TEXT))
        hist = _first(user.get(USER_HISTORY))
        if text is None and hist is None:
            raise UnknownUserError(
                f"unknown user {req.user_id!r}: no text or history vector in the online store"
            )
        for name, v in ((USER_TEXT, text), (USER_HISTORY, hist)):
            if v is not None and len(v) != space.dim:
                raise BadRequest(f"{name} has {len(v)} dimensions, policy {loaded.version} expects {space.dim}: "
                                 "publish a policy for the current features")  # fmt: skip
        item_vecs, _ = vectors(items.get(ITEM_TEXT, [None] * len(candidates)), space.dim)
        packed, has = vectors(items.get(ITEM_STATS, [None] * len(candidates)), len(_PACKED))
        impressions = np.where(has, packed[:, IMPRESSIONS], 0.0)
        clicks = np.where(has, packed[:, CTR] * packed[:, IMPRESSIONS], 0.0)
        n_clicks = _first(user.get(HISTORY_CLICKS)) or 0
        shared = shared_row(space, text, hist, float(n_clicks), when)
        actions = action_rows(space, item_vecs, impressions, clicks, text, hist)
        pmf = loaded.policy.pmf(shared, actions)
        chosen = int(np.random.default_rng().choice(len(candidates), p=pmf))
        event_id = uuid.uuid4().hex
        now = time.time()
        self.events.log_decision(event_id=event_id, ts=now, user_id=req.user_id, policy_version=loaded.version,
                                 space_id=space.id, item_ids=candidates, chosen=chosen, pmf=pmf, shared=shared,
                                 actions=actions, context={**(req.context or {}), "time": when.isoformat()})  # fmt: skip
        rest = sorted((i for i in range(len(candidates)) if i != chosen), key=lambda i: (-pmf[i], i))
        order = [chosen, *rest][:k]
        ids = [candidates[i] for i in order]
        titles = retriever.titles_of(ids)
        because = retriever.explain(req.user_id, ids, self.explain_n)
        ranked = [Ranked(rank=r + 1, item_id=ids[r], title=titles[r], probability=float(pmf[i]),
                         because=[Because(**vars(b)) for b in because[r]]) for r, i in enumerate(order)]  # fmt: skip
        deadline = dt.datetime.fromtimestamp(now + self.window, dt.UTC).isoformat(timespec="seconds")
        return RankResponse(event_id=event_id, user_id=req.user_id, chosen=ranked[0], propensity=float(pmf[chosen]),
                            policy_version=loaded.version, index_version=retriever.version, reward_deadline=deadline,
                            results=ranked)  # fmt: skip

    def reward(self, req: RewardRequest) -> RewardResponse:
        return RewardResponse(**self.events.add_reward(req.event_id, req.reward, window_s=self.window))

    # -- HTTP ----------------------------------------------------------------------------------------

    def register(self, app: FastAPI, provider) -> None:
        problem = {"description": "see detail"}

        @app.exception_handler(BadRequest)
        async def _bad(request: Request, exc: BadRequest) -> JSONResponse:
            return JSONResponse(status_code=422, content={"detail": str(exc)})

        @app.exception_handler(ExpiredEventError)
        async def _expired(request: Request, exc: ExpiredEventError) -> JSONResponse:
            return JSONResponse(status_code=410, content={"detail": str(exc.args[0])})

        @app.exception_handler(DuplicateRewardError)
        async def _dup(request: Request, exc: DuplicateRewardError) -> JSONResponse:
            return JSONResponse(status_code=409, content={"detail": str(exc.args[0])})

        @app.exception_handler(UnknownEventError)
        async def _unknown(request: Request, exc: UnknownEventError) -> JSONResponse:
            return JSONResponse(status_code=404, content={"detail": str(exc)})

        @app.post("/rank", response_model=RankResponse, responses={404: problem, 422: problem})
        def rank(req: RankRequest) -> RankResponse:
            """Rank candidates for a user with the exploring policy; log the decision."""
            return self.rank(provider.get(), req)

        @app.post(
            "/reward", response_model=RewardResponse, responses={404: problem, 409: problem, 410: problem}
        )
        def reward(req: RewardRequest) -> RewardResponse:
            """The reward of a decision, once, within the reward window."""
            return self.reward(req)

        @app.get("/bandit/policy", response_model=PolicyInfo)
        def policy() -> PolicyInfo:
            p = self.policies.get()
            return PolicyInfo(policy_version=p.version, exploration=p.policy.exploration, space_id=p.space.id,
                              manifest=p.manifest, events=self.events.counts(),
                              last_reload_error=self.policies.last_error)  # fmt: skip

        @app.post("/bandit/reload")
        def reload() -> dict:
            """Load the published policy version now if it changed."""
            try:
                changed, version = self.policies.reload()
            except Exception as exc:  # noqa: BLE001
                raise HTTPException(status_code=409, detail=f"policy reload failed: {exc}") from exc
            return {"reloaded": changed, "policy_version": version}


class ParquetFeatures:
    """``fetch`` over the embedding tables (latest vectors): the service without Feast. No stats."""

    def __init__(self, data_dir, embedding_set: str):
        from llmfeat.core.layout import embedding_paths
        from llmfeat.embedding.vectors import read_latest
        from llmfeat.retrieval.retriever import ParquetUserVectors

        self.text = ParquetUserVectors(data_dir, embedding_set, "text")
        try:
            self.history = ParquetUserVectors(data_dir, embedding_set, "history")
        except FileNotFoundError:
            self.history = None
        latest = read_latest(embedding_paths(data_dir, embedding_set).item_text, "item_id")
        self.items = dict(zip(latest.ids.tolist(), latest.vectors, strict=True))

    def fetch(self, user_id: str, item_ids: list[str]) -> tuple[dict, dict]:
        text, found, _ = self.text.get([user_id])
        user = {USER_TEXT: [text[0] if found[0] else None], HISTORY_CLICKS: [None]}
        if self.history is not None:
            hist, hfound, _ = self.history.get([user_id])
            user[USER_HISTORY] = [hist[0] if hfound[0] else None]
        items = {ITEM_TEXT: [self.items.get(i) for i in item_ids], ITEM_STATS: [None] * len(item_ids)}
        return user, items


def _first(values):
    if not values:
        return None
    v = values[0]
    if v is None or isinstance(v, float) and np.isnan(v):
        return None
    return v


def _when(context: dict | None) -> dt.datetime:
    raw = (context or {}).get("time")
    if raw is None:
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(str(raw))
    except ValueError as exc:
        raise BadRequest(f"context.time {raw!r} is not an ISO 8601 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
