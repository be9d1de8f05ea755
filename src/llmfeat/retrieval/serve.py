"""The retrieval HTTP service (``llmfeat serve``): FastAPI over a ``Retriever``, with hot reload.

Endpoints (OpenAPI schema at ``/openapi.json``; Swagger UI at ``/docs`` and ReDoc at ``/redoc`` load their
scripts from the service itself, via fastapi-offline, so they work on a host without internet access):

- ``GET /items/{item_id}/similar?k=10&category=C&allow=I&deny=J``: similar items (content-based), the item
  itself excluded
- ``GET /users/{user_id}/recommendations?k=10&category=C&allow=I&deny=J&exclude_seen=true``: items for a user
- ``POST`` to either path with a JSON body ``{k, categories, allow, deny, exclude_seen}``: the same, for
  allow-/deny-lists too long for a URL (up to ``serve.filter_ids_max`` ids each)
- ``GET /health``, ``GET /version`` (the loaded index version and its manifest summary)
- ``POST /reload``: load the published version now if it changed (the background check does it every
  ``serve.reload_interval_s``)

``k`` must be 1..``serve.k_max`` and ids printable, else 422; an unknown item, user or category is a 404
with a message. A filter that lets no item through (an allow-list disjoint from the category, every allowed
item seen) is a 200 with no results and a ``reason``; allow/deny ids the index does not hold are ignored
and counted in ``ignored_ids``. Reload never disturbs a request: each request takes the current retriever once, at its
start, and uses only that one; a new version is loaded on the side and swapped in with one assignment, and
the old one is freed when its last request ends. A version that fails to load (checksum, model mismatch) is
refused and the service keeps the one it has.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, built inside create_app.
import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field, StringConstraints
from pydantic_core import to_json

from llmfeat.core.config import Config, ServeConfig
from llmfeat.core.errors import ReloadError  # noqa: F401 - re-exported
from llmfeat.core.reloading import PeriodicReload
from llmfeat.retrieval.index import IndexModelMismatchError, current_version, index_root
from llmfeat.retrieval.retriever import (
    NotFoundError,
    Results,
    Retriever,
    UserVectorSource,
    load_hybrid_if_adapted,
)

log = logging.getLogger("llmfeat.serve")
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""Ids are any printable text; control characters are malformed input (422)."""


@dataclass(frozen=True)
class ReloadOutcome:
    reloaded: bool
    index_version: str
    previous_version: str


class RetrieverProvider(Protocol):
    """What the app needs: the retriever to answer with now, and a way to pick up a newer version."""

    def get(self) -> Retriever: ...

    def reload(self) -> ReloadOutcome: ...


class RetrieverHolder:
    """Holds the current retriever; ``reload`` swaps in the published version when it changed."""

    def __init__(self, load: Callable[[str | None], Retriever], published: Callable[[], str]):
        self._load, self._published = load, published
        self._retriever = load(None)
        self.loaded_at = dt.datetime.now(dt.UTC)
        self.last_error: str | None = None
        self._reload_lock = threading.Lock()
        self._periodic = PeriodicReload(self.reload, "index-reload")

    @classmethod
    def from_config(cls, cfg: Config, users: UserVectorSource | None = None) -> "RetrieverHolder":
        """Retrievers of ``cfg``'s published index; ``users`` (e.g. the Feast online store) or the Parquet
        user vectors, re-read at each reload; Feast user vectors held in process per loaded version unless
        ``serve.hold_user_vectors`` is off (``retrieval.HeldUserVectors``)."""
        root = index_root(cfg.paths.data_dir, cfg.embed.embedding_set)
        hold = cfg.serve.hold_user_vectors

        def load(version: str | None) -> Retriever:
            # an adapted set also answers ?hybrid=true (prior from its card and item_stats, read per version)
            return load_hybrid_if_adapted(
                cfg, Retriever.load(cfg, version=version, users=users, hold_users=hold)
            )

        return cls(load, lambda: current_version(root))

    def get(self) -> Retriever:
        return self._retriever

    def reload(self) -> ReloadOutcome:
        with self._reload_lock:
            old = self._retriever
            try:
                latest = self._published()
                # held user vectors (HeldUserVectors) are read again when their source published since
                refresh = getattr(getattr(old, "users", None), "refresh", None)
                if latest == old.version and refresh is not None and refresh():
                    log.info("user vectors reloaded for index %s", old.version)
                if latest == old.version:
                    # e.g. a broken version was rolled back: what is published is served, nothing is wrong
                    self.last_error = None
                    return ReloadOutcome(False, old.version, old.version)
                new = self._load(latest)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise ReloadError(
                    f"could not load the published index ({self.last_error}); still serving {old.version}"
                ) from exc
            self._retriever = new  # one reference assignment: requests in flight keep the old one
            self.loaded_at = dt.datetime.now(dt.UTC)
            self.last_error = None
            log.info("index reloaded: %s -> %s", old.version, new.version)
            return ReloadOutcome(True, new.version, old.version)

    def start(self, interval_s: float) -> None:
        """Check for a newly published version every ``interval_s`` seconds, in a daemon thread."""
        self._periodic.start(interval_s)

    def stop(self) -> None:
        self._periodic.stop()


class ResponseCache:
    """Encoded answers of one retriever, least recently used evicted beyond ``max_bytes``.

    An answer depends only on the request and on the retriever's data (index version, seen items, and for a
    user the user's vector): within one retriever and one user-vector token it never changes. The cache
    belongs to one retriever at a time; the first ``put`` for another one (after a reload) empties it, and a
    lookup with another one misses, so a request never gets an answer from a version it did not start with."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._owner: Retriever | None = None
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # the cached routes answer on the event loop; a sync route would not

    def get(self, owner: Retriever, key: Hashable) -> bytes | None:
        with self._lock:
            body = self._entries.get(key) if owner is self._owner else None
            if body is not None:
                self._entries.move_to_end(key)
            return body

    def put(self, owner: Retriever, key: Hashable, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            if owner is not self._owner:
                self._owner, self._entries, self._bytes = owner, OrderedDict(), 0
            old = self._entries.pop(key, None)
            self._bytes += len(body) - (len(old) if old is not None else 0)
            self._entries[key] = body
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)


# --- response models ----------------------------------------------------------------------------------


class BecauseItem(BaseModel):
    item_id: str
    title: str | None = None
    similarity: float = Field(description="Cosine of this liked item's vector with the recommended item's.")


class Hit(BaseModel):
    item_id: str
    score: float = Field(description="Inner product of unit vectors: cosine similarity, higher is closer.")
    title: str | None = None
    same_title: list[str] | None = Field(
        default=None, description="Other catalogue items with exactly this title (absent when it is unique)"
    )
    because: list[BecauseItem] = Field(
        default_factory=list,
        description='User recommendations: the 1-3 liked history items nearest to this one ("because you liked").',
    )


class Recommendations(BaseModel):
    kind: str = Field(description="item (similar items) or user (recommendations)")
    id: str
    k: int
    index_version: str
    model_id: str
    method: str = Field(
        description="index: answered by the FAISS index; exact: exact scoring of the filtered items; "
        "none: no item passes the filter"
    )
    results: list[Hit]
    plan: str = Field("", description="The planner's path: none, index, exact or index-filtered")
    selectivity: float = Field(1.0, description="Fraction of the indexed items the filter lets through")
    reason: str | None = Field(None, description="Why there are no results (an empty filter)")
    ignored_ids: int = Field(0, description="Allow/deny ids not in the index version (ignored)")


class Health(BaseModel):
    status: str
    index_version: str
    items: int
    last_reload_error: str | None = None


class VersionInfo(BaseModel):
    index_version: str
    embedding_set: str | None
    model_id: str
    dim: int
    count: int
    factory: str
    exact: bool
    params: dict[str, Any]
    as_of: str | None
    built_at: str | None
    recall_at_10: float | None
    device: str
    loaded_at: str


class Reloaded(BaseModel):
    reloaded: bool
    index_version: str
    previous_version: str


class Problem(BaseModel):
    detail: str


Category = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=ID_PATTERN)]
FilterId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=ID_PATTERN)]


class Query_(BaseModel):
    """The body of a POST query: the GET parameters, with lists as JSON arrays."""

    k: int = Field(10, ge=1)
    categories: list[Category] | None = Field(None, max_length=50, description="Any of these categories")
    allow: list[FilterId] | None = Field(None, description="Only these item ids (None: no allow-list)")
    deny: list[FilterId] | None = Field(None, description="Never these item ids")
    exclude_seen: bool = True
    hybrid: bool = Field(
        False, description="Adapted sets: cosine + weight x log recent popularity, fresh slots"
    )


def create_app(
    provider: RetrieverProvider,
    *,
    k_max: int = 1000,
    reload_interval_s: float = 0.0,
    filter_ids_max: int = 100_000,
    response_cache_mb: float = ServeConfig.response_cache_mb,
    bandit: Any = None,
) -> FastAPI:
    """The FastAPI app over ``provider``; a ``RetrieverHolder`` also gets its background reload check.
    ``response_cache_mb``: memory for repeated GET answers (``ResponseCache``; 0: off).
    ``bandit``: a ``llmfeat.bandit.service.BanditService`` adds ``POST /rank`` and ``POST /reward``."""
    cache = ResponseCache(int(response_cache_mb * 2**20)) if response_cache_mb > 0 else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starter = getattr(provider, "start", None)
        if starter is not None:
            starter(reload_interval_s)
        if bandit is not None:
            bandit.start(reload_interval_s)
        yield
        stopper = getattr(provider, "stop", None)
        if stopper is not None:
            stopper()
        if bandit is not None:
            bandit.stop()

    app = FastAPIOffline(
        title="llmfeat retrieval",
        version="1",
        description="Nearest-neighbour retrieval over the published FAISS item index.",
        lifespan=lifespan,
    )
    not_found = {404: {"model": Problem, "description": "Unknown item, user or category"}}
    K = Annotated[int, Query(ge=1, le=k_max, description=f"How many items, 1..{k_max}")]
    Categories = Annotated[
        list[Category] | None,
        Query(
            alias="category", max_length=50, description="Only items in any of these categories (repeatable)"
        ),
    ]
    ItemId = Annotated[str, Path(min_length=1, max_length=200, pattern=ID_PATTERN)]
    UserId = Annotated[str, Path(min_length=1, max_length=200, pattern=ID_PATTERN)]

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(IndexModelMismatchError)
    async def _mismatch(request: Request, exc: IndexModelMismatchError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    Allow = Annotated[
        list[FilterId] | None,
        Query(max_length=1000, description="Only these item ids (repeatable; POST for more)"),
    ]
    Deny = Annotated[
        list[FilterId] | None,
        Query(max_length=1000, description="Never these item ids (repeatable; POST for more)"),
    ]

    def check_hybrid(r: Retriever, hybrid: bool, allow, deny) -> None:
        if not hybrid:
            return
        if not r.has_prior:
            raise HTTPException(status_code=409, detail="hybrid scoring needs a set written by `llmfeat adapt` "
                                f"(embed.embedding_set=adapted); this service serves index {r.version}")  # fmt: skip
        if allow is not None or deny:
            raise HTTPException(
                status_code=422, detail="hybrid scoring takes category filters only, not allow/deny"
            )

    def check(body: Query_) -> None:
        if body.k > k_max:
            raise HTTPException(status_code=422, detail=f"k must be within 1..{k_max}, got {body.k}")
        for name, ids in (("allow", body.allow), ("deny", body.deny)):
            if ids is not None and len(ids) > filter_ids_max:
                raise HTTPException(
                    status_code=422, detail=f"{name}: at most {filter_ids_max} ids, got {len(ids)}"
                )

    # The retrieval routes are coroutines and answer on the event loop: their work (one online-store read of
    # the user, a FAISS search over one query) takes well under a millisecond, less than handing the request
    # to a worker thread and back, and worker threads contending for the GIL with the event loop made p99
    # several times p50 under concurrent clients (docs/retrieval.md, "Throughput"; bench/serve_bench.py).
    @app.get("/items/{item_id}/similar", response_model=Recommendations, responses=not_found)
    async def similar(
        item_id: ItemId, k: K = 10, categories: Categories = None, allow: Allow = None, deny: Deny = None
    ) -> Response:
        """Items whose vectors are closest to this item's (content-based filtering)."""
        r = provider.get()
        key = ("item", item_id, k, _key(categories)) if allow is None and deny is None else None
        return _cached(cache, r, key, lambda: _response(
            "item", item_id, k, r, r.similar_items(item_id, k, categories, allow=allow, deny=deny)))  # fmt: skip

    @app.post("/items/{item_id}/similar", response_model=Recommendations, responses=not_found)
    def similar_post(item_id: ItemId, body: Query_) -> Response:
        """As GET, with the filters in a JSON body (long allow-/deny-lists)."""
        check(body)
        r = provider.get()
        res = r.similar_items(item_id, body.k, body.categories, allow=body.allow, deny=body.deny)
        return _response("item", item_id, body.k, r, res)

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=not_found)
    async def for_user(
        user_id: UserId,
        k: K = 10,
        categories: Categories = None,
        exclude_seen: bool = True,
        allow: Allow = None,
        deny: Deny = None,
        hybrid: Annotated[
            bool,
            Query(
                description="Adapted sets: cosine + weight x log recent popularity, "
                "fresh slots for new items (docs/adapt.md)"
            ),
        ] = False,  # fmt: skip
    ) -> Response:
        """Items closest to the user's vector, without the items the user already interacted with; with
        ``hybrid`` (an adapted set), re-ranked by the adapter's popularity prior (docs/adapt.md)."""
        r = provider.get()
        check_hybrid(r, hybrid, allow, deny)
        key = None
        if allow is None and deny is None and cache is not None:
            token = r.answer_token(user_id)  # None: the user's vector is read live, the answer may change
            key = (
                ("user", user_id, k, _key(categories), exclude_seen, hybrid, token)
                if token is not None
                else None
            )
        return _cached(cache, r, key, lambda: _response("user", user_id, k, r, r.for_user(
            user_id, k, categories, exclude_seen, allow=allow, deny=deny, hybrid=hybrid)))  # fmt: skip

    @app.post("/users/{user_id}/recommendations", response_model=Recommendations, responses=not_found)
    def for_user_post(user_id: UserId, body: Query_) -> Response:
        """As GET, with the filters in a JSON body (long allow-/deny-lists)."""
        check(body)
        r = provider.get()
        check_hybrid(r, body.hybrid, body.allow, body.deny)
        res = r.for_user(user_id, body.k, body.categories, body.exclude_seen, allow=body.allow, deny=body.deny,
                         hybrid=body.hybrid)  # fmt: skip
        return _response("user", user_id, body.k, r, res)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        r = provider.get()
        return Health(status="ok", index_version=r.version, items=r.count,
                      last_reload_error=getattr(provider, "last_error", None))  # fmt: skip

    @app.get("/version", response_model=VersionInfo)
    def version() -> VersionInfo:
        r = provider.get()
        loaded_at = getattr(provider, "loaded_at", None)
        return VersionInfo(**r.info(), loaded_at=loaded_at.isoformat() if loaded_at else "")

    @app.post("/reload", response_model=Reloaded, responses={409: {"model": Problem}})
    def reload() -> Reloaded:
        """Load the published index version now if it differs from the one served."""
        try:
            out = provider.reload()
        except ReloadError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return Reloaded(
            reloaded=out.reloaded, index_version=out.index_version, previous_version=out.previous_version
        )

    if bandit is not None:
        bandit.register(app, provider)
    return app


def _key(categories: list[str] | None) -> tuple[str, ...]:
    return tuple(sorted(set(categories))) if categories else ()


def _cached(
    cache: ResponseCache | None, r: Retriever, key: Hashable | None, answer: Callable[[], Response]
) -> Response:
    """The answer from ``cache`` when it holds ``key`` for ``r``, else computed (and kept when ``key``).
    A hit says ``x-cache: hit`` (a computed answer ``miss``; none when the request is not cacheable)."""
    if cache is None or key is None:
        return answer()
    body = cache.get(r, key)
    if body is not None:
        return Response(body, media_type="application/json", headers={"x-cache": "hit"})
    out = answer()
    cache.put(r, key, out.body)
    out.headers["x-cache"] = "miss"
    return out


def _response(kind: str, id_: str, k: int, r: Retriever, res: Results) -> Response:
    """The ``Recommendations`` JSON, built as plain dicts and encoded by pydantic-core in one call: the
    routes return it as is, so FastAPI neither builds nor re-validates ~40 models per request
    (tests/retrieval/test_serve.py checks it against the model; the model stays the OpenAPI schema)."""
    shared = res.same_title or [[]] * len(res.ids)
    explain = getattr(r, "explain", None)
    because = explain(id_, res.ids) if kind == "user" and explain else [[] for _ in res.ids]
    hits = [{"item_id": i, "score": s, "title": t, "same_title": d or None,
             "because": [{"item_id": x.item_id, "title": x.title, "similarity": x.similarity} for x in b]}
            for i, s, t, d, b in zip(res.ids, res.scores, res.titles, shared, because, strict=True)]  # fmt: skip
    return json_response({"kind": kind, "id": id_, "k": k, "index_version": res.index_version,
                          "model_id": r.model_id, "method": res.method, "results": hits, "plan": res.plan,
                          "selectivity": res.selectivity, "reason": res.reason,
                          "ignored_ids": res.ignored_ids})  # fmt: skip


def json_response(body: dict[str, Any]) -> Response:
    """A 200 JSON response of ``body`` (plain JSON types), encoded by pydantic-core (NaN as null, as the
    models write it)."""
    return Response(to_json(body, inf_nan_mode="null"), media_type="application/json")


def run_server(app: FastAPI, host: str, port: int, cfg: Config | None = None) -> None:
    """Serve ``app`` with uvicorn as ``llmfeat serve`` does (the load bench serves the same way)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
