"""The retrieval HTTP service (``llmfeat serve``): FastAPI over a ``Retriever``, with hot reload.

Endpoints (OpenAPI schema at ``/openapi.json``, docs at ``/docs``):

- ``GET /items/{item_id}/similar?k=10&category=C``: similar items (content-based), the item itself excluded
- ``GET /users/{user_id}/recommendations?k=10&category=C&exclude_seen=true``: items for a user
- ``GET /health``, ``GET /version`` (the loaded index version and its manifest summary)
- ``POST /reload``: load the published version now if it changed (the background check does it every
  ``serve.reload_interval_s``)

``k`` must be 1..``serve.k_max`` and ids printable, else 422; an unknown item, user or category is a 404
with a message. Reload never disturbs a request: each request takes the current retriever once, at its
start, and uses only that one; a new version is loaded on the side and swapped in with one assignment, and
the old one is freed when its last request ends. A version that fails to load (checksum, model mismatch) is
refused and the service keeps the one it has.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, built inside create_app.
import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from llmfeat.config import Config
from llmfeat.index import IndexModelMismatchError, current_version, index_root
from llmfeat.retrieval import NotFoundError, Results, Retriever, UserVectorSource

log = logging.getLogger("llmfeat.serve")
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""Ids are any printable text; control characters are malformed input (422)."""


class ReloadError(RuntimeError):
    """The published version could not be loaded; the previous one is still served."""


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: Config, users: UserVectorSource | None = None) -> "RetrieverHolder":
        """Retrievers of ``cfg``'s published index; ``users`` (e.g. the Feast online store) or the Parquet
        user vectors, re-read at each reload."""
        root = index_root(cfg.paths.data_dir, cfg.embed.embedding_set)
        return cls(
            lambda version: Retriever.load(cfg, version=version, users=users), lambda: current_version(root)
        )

    def get(self) -> Retriever:
        return self._retriever

    def reload(self) -> ReloadOutcome:
        with self._reload_lock:
            old = self._retriever
            try:
                latest = self._published()
                if latest == old.version:
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
        if interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.reload()
                except ReloadError as exc:
                    log.error("%s", exc)

        self._thread = threading.Thread(target=loop, name="index-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# --- response models ----------------------------------------------------------------------------------


class BecauseItem(BaseModel):
    item_id: str
    title: str | None = None
    similarity: float = Field(description="Cosine of this liked item's vector with the recommended item's.")


class Hit(BaseModel):
    item_id: str
    score: float = Field(description="Inner product of unit vectors: cosine similarity, higher is closer.")
    title: str | None = None
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
        description="index: answered by the FAISS index; exact: exact scoring of the filtered items"
    )
    results: list[Hit]


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


def create_app(
    provider: RetrieverProvider, *, k_max: int = 1000, reload_interval_s: float = 0.0, bandit: Any = None
) -> FastAPI:
    """The FastAPI app over ``provider``; a ``RetrieverHolder`` also gets its background reload check.
    ``bandit``: a ``llmfeat.bandit.service.BanditService`` adds ``POST /rank`` and ``POST /reward``."""

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

    app = FastAPI(
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

    @app.get("/items/{item_id}/similar", response_model=Recommendations, responses=not_found)
    def similar(item_id: ItemId, k: K = 10, categories: Categories = None) -> Recommendations:
        """Items whose vectors are closest to this item's (content-based filtering)."""
        r = provider.get()
        return _response("item", item_id, k, r, r.similar_items(item_id, k, categories))

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=not_found)
    def for_user(
        user_id: UserId, k: K = 10, categories: Categories = None, exclude_seen: bool = True
    ) -> Recommendations:
        """Items closest to the user's vector, without the items the user already interacted with."""
        r = provider.get()
        return _response("user", user_id, k, r, r.for_user(user_id, k, categories, exclude_seen))

    @app.get("/health", response_model=Health)
    def health() -> Health:
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


def _response(kind: str, id_: str, k: int, r: Retriever, res: Results) -> Recommendations:
    explain = getattr(r, "explain", None)
    because = explain(id_, res.ids) if kind == "user" and explain else [[] for _ in res.ids]
    hits = [Hit(item_id=i, score=s, title=t, because=[BecauseItem(**vars(x)) for x in b])
            for i, s, t, b in zip(res.ids, res.scores, res.titles, because, strict=True)]  # fmt: skip
    return Recommendations(kind=kind, id=id_, k=k, index_version=res.index_version, model_id=r.model_id,
                           method=res.method, results=hits)  # fmt: skip
