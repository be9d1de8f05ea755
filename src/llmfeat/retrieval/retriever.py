"""Nearest-neighbour retrieval over one published index version: item -> similar items, user -> items.

A ``Retriever`` holds one loaded version (index, id map, vectors), each item's category labels, each user's
seen items (every interaction in the canonical snapshot as of the index) and a ``UserVectorSource`` for user
queries. It never changes after construction: the service swaps whole retrievers to reload.

Filters (categories, an allow-list and a deny-list of item ids, seen items, the query item itself) are
resolved to an ``ItemFilter`` of rows whose size is known exactly, and ``llmfeat.retrieval.filters.plan`` picks the
search by it: nothing (an empty filter, with the reason), a plain index search, exact scoring of the allowed
items (at most ``index.exact_filter_max``), or an index search inside the filter (an ``IDSelector``) whose
effort scales with 1 / selectivity; IVF indexes probe the lists nearest the query that hold allowed items
(``llmfeat.retrieval.faiss_tools.search_lists``). If the index returns fewer than k, the allowed items are scored exactly
instead: a filter is answered correctly, never with holes.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from llmfeat.core import tables
from llmfeat.core.config import Config
from llmfeat.core.errors import (  # noqa: F401 - re-exported
    ConfigError,
    MissingInputError,
    ModelMismatchError,
    NotFoundError,
    UnknownCategoryError,
    UnknownItemError,
    UnknownUserError,
)
from llmfeat.core.layout import DataDir, embedding_paths
from llmfeat.embedding.vectors import normalise, read_latest
from llmfeat.feast.names import ITEM_STATS_TABLE
from llmfeat.retrieval import faiss_tools as ft
from llmfeat.retrieval.filters import (
    ItemFilter,
    coverage_target,
    effort_scale,
    plan,
    probe_lists,
    scan_target,
)
from llmfeat.retrieval.index import LoadedIndex, check_model, index_root, is_exact, load_version

_PARTIAL_LISTS = 512
"""Filtered IVF searches order the best this many lists first (a partial sort), all of them if too few."""
GPU_MAX_K = 2048
"""FAISS GPU indexes return at most this many neighbours per query."""


@runtime_checkable
class UserVectorSource(Protocol):
    """Where user query vectors come from (Parquet tables here; the Feast online store in production).

    ``model_id`` is the model of the vectors when known up front (checked when a retriever is built), else
    None. ``get`` returns (vectors (n, dim) float32, found (n,) bool, model id of the vectors); rows that are
    not found are ignored (zeros).
    """

    @property
    def model_id(self) -> str | None: ...

    def get(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray, str]: ...


class ParquetUserVectors:
    """The latest user vector per user from the embedding tables: ``kind="text"`` reads user_text (the
    profile + recent history text), ``"history"`` user_history (the pooled vector of clicked items).

    ``at`` keeps only rows with event_timestamp <= at (a point-in-time query, e.g. a temporal holdout)."""

    def __init__(self, data_dir: Path, embedding_set: str, kind: str = "text", *, at: Any = None):
        paths = embedding_paths(data_dir, embedding_set)
        tables_by_kind = {"text": paths.user_text, "history": paths.user_history}
        if kind not in tables_by_kind:
            raise ConfigError(f"user vector kind {kind!r}: expected one of {sorted(tables_by_kind)}")
        self.kind = kind
        latest = read_latest(tables_by_kind[kind], "user_id", at=at)
        self._model_id = latest.model_id
        self._vectors = latest.vectors
        self._rows = pd.Index(latest.ids)

    @property
    def model_id(self) -> str | None:
        return self._model_id

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def ids(self) -> list[str]:
        return self._rows.tolist()

    @property
    def vectors(self) -> np.ndarray:
        """All users' vectors, in ``ids`` order (for batch jobs and benchmarks)."""
        return self._vectors

    def fixed_token(self, user_id: str) -> object | None:
        """Read once at load, never changed: the same token for every user (see ``Retriever.answer_token``)."""
        return "fixed"

    def get(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
        pos = self._rows.get_indexer(pd.Index(user_ids, dtype=object))
        found = pos >= 0
        dim = self._vectors.shape[1] if self._vectors.ndim == 2 else 0
        out = np.zeros((len(user_ids), dim), dtype=np.float32)
        out[found] = self._vectors[pos[found]]
        return out, found, self._model_id or ""


@dataclass(frozen=True)
class _HeldState:
    version: object
    rows: dict[str, int]
    vectors: np.ndarray
    model_id: str
    ids: list[str]
    """Every id asked for at load, found or not (a refresh reads them all again)."""
    serial: int = field(default_factory=lambda: next(_HELD_READS))
    """A number no other read of this process has (``HeldUserVectors.fixed_token``)."""


_HELD_READS = itertools.count()


class HeldUserVectors:
    """A ``UserVectorSource`` whose vectors for ``user_ids`` are read once and then served from memory, so a
    user -> items request does no online-store read (``serve.hold_user_vectors``).

    Keyed by the source's publish version when it has one (``publish_version()``: for Feast, the user view's
    materialisation intervals in the registry): ``refresh()``, called by the service's reload check, reads the
    held users again when it changed and swaps them in with one assignment, so a request sees one version or
    the other. A user not held (first embedded after the load, or unknown) is read through from the source
    on each request and not kept, so unknown ids cannot grow the process."""

    CHUNK = 10_000
    """Users per read of the source at load / refresh."""

    def __init__(self, source: UserVectorSource, user_ids: Sequence[str]):
        self.source = source
        self._state = self._read([str(u) for u in dict.fromkeys(user_ids)])

    @property
    def model_id(self) -> str | None:
        return self.source.model_id  # what is known up front, as the source says (Feast: learnt per read)

    @property
    def version(self) -> object:
        return self._state.version

    def __len__(self) -> int:
        return len(self._state.rows)

    def _read(self, ids: list[str]) -> _HeldState:
        version = _publish_version(self.source)  # before the read: a publish during it shows next refresh
        vecs, found, model = [], [], ""
        for start in range(0, len(ids), self.CHUNK):
            v, f, m = self.source.get(ids[start : start + self.CHUNK])
            vecs.append(np.asarray(v, np.float32)[f])
            found.append(f)
            model = model or m
        found_all = np.concatenate(found) if found else np.zeros(0, bool)
        held = [u for u, f in zip(ids, found_all.tolist(), strict=True) if f]
        matrix = np.ascontiguousarray(np.concatenate(vecs)) if held else np.zeros((0, 0), np.float32)
        return _HeldState(version, {u: r for r, u in enumerate(held)}, matrix, model, ids)

    def refresh(self) -> bool:
        """Read the held users again if the source published since; True when it did."""
        version = _publish_version(self.source)
        if version is None or version == self._state.version:
            return False
        self._state = self._read(self._state.ids)  # one assignment
        return True

    def fixed_token(self, user_id: str) -> object | None:
        """The held version when ``user_id`` is held (its vector changes only with a refresh, which makes a new
        token), else None: a user read through from the source may change at any time."""
        state = self._state
        return ("held", state.serial) if user_id in state.rows else None

    def get(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
        state = self._state  # once: a refresh during this call does not mix versions
        rows = np.fromiter((state.rows.get(u, -1) for u in user_ids), np.int64, len(user_ids))
        held = rows >= 0
        if held.all():
            return state.vectors[rows], held, state.model_id
        missing = [u for u, h in zip(user_ids, held.tolist(), strict=True) if not h]
        vecs, found, model = self.source.get(missing)
        dim = state.vectors.shape[1] if len(state.rows) else np.shape(vecs)[1]
        out = np.zeros((len(user_ids), dim), np.float32)
        out[held] = state.vectors[rows[held]]
        if np.asarray(found).any():  # none found: the source may answer zero-width rows
            out[~held] = vecs
        got = held.copy()
        got[~held] = found
        return out, got, (state.model_id if held.any() else model)


def _publish_version(source: object) -> object:
    version = getattr(source, "publish_version", None)
    return version() if version is not None else None


def read_seen(data_dir: Path, as_of, *, with_label: bool = False) -> pd.DataFrame:
    """(user_id, item_id) of every interaction in the latest canonical interactions snapshot <= as_of
    (``with_label``: and its label, 1 = click, and time)."""
    root = tables.canonical_dir(data_dir, "interactions")
    days = [d for d in tables.snapshot_dates(root) if d <= as_of]
    if not days:
        raise MissingInputError(f"no canonical interactions snapshot at or before {as_of} under {root}")
    columns = ["user_id", "item_id", "label", "event_ts"] if with_label else ["user_id", "item_id"]
    return tables.read_snapshot(root, days[-1]).select(columns).to_pandas()


@dataclass(frozen=True)
class Because:
    """One liked history item that explains a recommendation ("because you liked ...")."""

    item_id: str
    title: str | None
    similarity: float
    """Cosine of the liked item's vector with the recommended item's (the index vectors)."""


@dataclass(frozen=True)
class Results:
    """Top-k items, best first."""

    ids: list[str]
    scores: list[float]
    index_version: str
    method: str
    """index: answered by the FAISS index; exact: by exact scoring of the remaining items; none: no item
    passes the filter (see ``reason``)."""
    titles: list[str | None]
    plan: str = ""
    """The planner's path (llmfeat.retrieval.filters.plan): none, index, exact or index-filtered."""
    selectivity: float = 1.0
    """The fraction of the index's items the filter lets through."""
    reason: str | None = None
    """Why the answer is empty (no item passes the filter); None otherwise."""
    ignored_ids: int = 0
    """Allow- or deny-list ids not in this index version (ignored)."""
    same_title: list[list[str]] = field(default_factory=list)
    """Per result: the other catalogue items with exactly this title (MovieLens lists some films twice
    under two ids); empty when the title is unique."""


class Retriever:
    """Item -> similar items and user -> items over one loaded index version. Thread-safe; immutable."""

    def __init__(
        self,
        loaded: LoadedIndex,
        users: UserVectorSource | None = None,
        seen: pd.DataFrame | Mapping[str, Sequence[str]] | None = None,
        *,
        exact_filter_max: int = 20_000,
        gpu: str = "auto",
        search_threads: int = 1,
        filter_widen: float = 32.0,
        filter_coverage: float = 0.5,
        filter_rescore: float = 2.0,
        filter_scan: float = 0.25,
        filter_scan_cap: float = 64.0,
        liked: pd.DataFrame | Mapping[str, Sequence[str]] | None = None,
    ):
        self.loaded = loaded
        self.version = loaded.version
        self.model_id = loaded.model_id
        self.count = loaded.count
        self.exact_filter_max = exact_filter_max
        self.search_threads = search_threads
        self.filter_widen = filter_widen
        self.filter_coverage = filter_coverage
        self.filter_rescore = filter_rescore
        self.filter_scan, self.filter_scan_cap = filter_scan, filter_scan_cap
        if users is not None:
            check_model(self.model_id, users.model_id)
        self.users = users
        self._item_ids = np.asarray(loaded.ids.column("item_id").to_pylist(), dtype=object)
        self._titles = loaded.ids.column("title").to_pylist()
        self._same_title = _shared_titles(self._titles)
        self._row_of = pd.Index(self._item_ids)
        self._id_list = [str(i) for i in self._item_ids.tolist()]
        self._row_dict = {i: r for r, i in enumerate(self._id_list)}
        self._members = _category_members(loaded)
        self._seen = self._seen_rows(seen)
        self._liked = self._seen_rows(liked)
        self._vectors = loaded.vectors
        if (
            isinstance(self._vectors, np.ndarray)
            and self._vectors.dtype == np.float32
            and self._vectors.flags.c_contiguous
        ):
            self._flat_vectors = self._vectors  # FAISS scans them in place (a memory map: no copy)
        else:
            self._flat_vectors = None
        self._index = loaded.index
        self._exact_index = is_exact(loaded.index)
        self._filters: dict[tuple[str, ...], ItemFilter] = {}
        self._ivf = _preassignable_ivf(loaded.index)
        self._refine = ft.refine_layer(loaded.index) if self._ivf is not None else None
        if self._ivf is not None:  # filter-aware probing: which list holds each row, and the centroids
            self._list_of = ft.list_of_rows(self._ivf, self.count)
            self._list_sizes = np.bincount(self._list_of[self._list_of >= 0], minlength=self._ivf.nlist)
            self._centroids = np.ascontiguousarray(ft.centroids(self._ivf), dtype=np.float32)
        self._selectors = True
        self._max_k = self.count
        self._lock: threading.Lock | None = None
        self.device = "cpu"
        if gpu != "never" and faiss.get_num_gpus() > 0:
            self._index, self.device = _to_gpu(loaded)
            self._selectors = False  # GPU indexes take no IDSelector: filters over-fetch instead
            self._ivf = None
            self._max_k = min(self.count, GPU_MAX_K)
            self._lock = threading.Lock()  # one GPU index is not safe for concurrent searches

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        cfg: Config,
        *,
        version: str | None = None,
        users: UserVectorSource | None = None,
        user_kind: str | None = None,
        need_users: bool = True,
        hold_users: bool = False,
    ) -> Retriever:
        """The published (or given) version of ``cfg``'s embedding set, user vectors from the Parquet tables
        unless ``users`` is given, and seen items as of the index's snapshot. ``need_users=False``: item ->
        items only (no user vectors are opened, so Feast is not even imported). ``hold_users``: the Feast user
        vectors of the snapshot's users are read once and held (``HeldUserVectors``; the service does this)."""
        data_dir, emb_set = cfg.paths.data_dir, cfg.embed.embedding_set
        loaded = load_version(index_root(data_dir, emb_set), version)
        if not need_users:
            pass
        elif users is None and cfg.serve.user_source == "feast":
            from llmfeat.feast.store import open_store
            from llmfeat.features.online import FeastUserVectors

            users = FeastUserVectors(open_store(cfg), user_kind or cfg.serve.user_vectors)
        elif users is None:
            try:
                users = ParquetUserVectors(data_dir, emb_set, user_kind or cfg.serve.user_vectors)
            except FileNotFoundError:  # item -> items still works; user queries say why they cannot
                users = None
        seen = read_seen(data_dir, loaded.as_of, with_label=True)
        liked = seen[seen["label"] == 1]
        # Parquet user vectors are in memory already; any other source (Feast) is held when asked.
        if hold_users and users is not None and not isinstance(users, ParquetUserVectors):
            users = HeldUserVectors(users, seen["user_id"].unique().tolist())
        return cls(loaded, users, seen, exact_filter_max=cfg.index.exact_filter_max, gpu=cfg.index.gpu,
                   search_threads=cfg.index.search_threads, filter_widen=cfg.index.filter_widen,
                   filter_coverage=cfg.index.filter_coverage, filter_rescore=cfg.index.filter_rescore,
                   filter_scan=cfg.index.filter_scan, filter_scan_cap=cfg.index.filter_scan_cap,
                   liked=liked)  # fmt: skip

    def _seen_rows(self, seen) -> dict[str, np.ndarray]:
        if seen is None:
            return {}
        if not isinstance(seen, pd.DataFrame):
            seen = pd.DataFrame(
                [(u, i) for u, items in seen.items() for i in items], columns=["user_id", "item_id"]
            )
        rows = self._row_of.get_indexer(seen["item_id"].astype(object))
        frame = pd.DataFrame({"user_id": seen["user_id"].to_numpy(), "row": rows})
        frame = frame[frame["row"] >= 0]
        return {u: np.unique(g.to_numpy(np.int64)) for u, g in frame.groupby("user_id")["row"]}

    # -- public API -------------------------------------------------------------------------------

    @property
    def categories(self) -> list[str]:
        return sorted(self._members)

    def has_item(self, item_id: str) -> bool:
        return item_id in self._row_of

    def seen_items(self, user_id: str) -> list[str]:
        return self._item_ids[self._seen.get(user_id, np.zeros(0, np.int64))].tolist()

    def titles_of(self, item_ids: Sequence[str]) -> list[str | None]:
        """Titles of items by id (None for an item the index does not know)."""
        rows = self._row_of.get_indexer(pd.Index(list(item_ids), dtype=object))
        return [self._titles[r] if r >= 0 else None for r in rows]

    def known_items(self, item_ids: Sequence[str]) -> np.ndarray:
        return self._row_of.get_indexer(pd.Index(list(item_ids), dtype=object)) >= 0

    def explain(self, user_id: str, item_ids: Sequence[str], n: int = 3) -> list[list[Because]]:
        """For each item: the (up to) ``n`` items the user liked (clicked) that are nearest to it, by cosine of
        the index vectors, best first; the item itself is never its own explanation. Empty for a user with no
        liked item in the index version's snapshot (a cold user: nothing to explain with)."""
        liked = self._liked.get(user_id)
        if liked is None or len(liked) == 0 or n < 1:
            return [[] for _ in item_ids]
        rows = np.fromiter((self._row_dict.get(i, -1) for i in item_ids), np.int64, len(item_ids))
        known = rows[rows >= 0]
        if len(known) == 0:
            return [[] for _ in item_ids]
        # The (results x liked) cosines in one call of FAISS's kernel on one thread (no BLAS threads), the
        # liked vectors read in place; then one stable sort per result: ties keep the liked items' order.
        if self._flat_vectors is not None:
            flat = np.asarray(self._flat_vectors)  # a plain view of the memory map: no per-index overhead
            with self._threads():
                sims = ft.inner_products_by_idx(flat[known], flat, np.tile(liked, (len(known), 1)))
        else:
            hist = np.ascontiguousarray(self._vectors[liked], dtype=np.float32)
            cand = np.ascontiguousarray(self._vectors[known], dtype=np.float32)
            sims = np.stack([ft.inner_products(v, hist) for v in cand])
        sims[liked[None, :] == known[:, None]] = -np.inf
        best = np.argsort(-sims, axis=1, kind="stable")[:, : min(n, len(liked))]
        top = np.take_along_axis(sims, best, axis=1)
        ids, titles, liked_rows = self._id_list, self._titles, liked.tolist()
        found = iter(
            [Because(ids[liked_rows[j]], titles[liked_rows[j]], s) for j, s in zip(b, t, strict=True) if math.isfinite(s)]
            for b, t in zip(best.tolist(), top.tolist(), strict=True)
        )  # fmt: skip
        return [next(found) if row >= 0 else [] for row in rows]

    def item_vector(self, item_id: str) -> np.ndarray:
        return np.asarray(self._vectors[self._row(item_id)], dtype=np.float32)

    def similar_items(
        self,
        item_id: str,
        k: int = 10,
        categories: Sequence[str] | None = None,
        *,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
        item_filter: ItemFilter | None = None,
    ) -> Results:
        """The k items closest to ``item_id`` (itself excluded), optionally only from ``categories`` (any of
        them) AND the ``allow`` list, never from the ``deny`` list; or through a prepared ``item_filter``."""
        row = self._row(item_id)
        flt = item_filter or self.make_filter(categories, allow, deny)
        return self.search(self._vectors[row], k, exclude_rows=np.array([row], np.int64), item_filter=flt)

    def with_prior(self, log_popularity: np.ndarray, weight: float, *, new_rows: np.ndarray | None = None,
                   fresh_slots: int = 0, fresh_rows: np.ndarray | None = None) -> Retriever:  # fmt: skip
        """A copy whose ``for_user(..., hybrid=True)`` ranks by ``cos + weight * log_popularity[item]``
        (``log_popularity`` aligned with the index rows; see ``popularity_prior``), with the user's
        ``fresh_slots`` nearest items among ``fresh_rows`` (default ``new_rows``, the items without clicks;
        e.g. only the recent releases among them) first: an item without clicks cannot win on a
        popularity-shaped score, so new items get reserved slots."""
        import copy

        out = copy.copy(self)
        out._prior = np.asarray(log_popularity, dtype=np.float32)
        out._prior_weight = float(weight)
        out._new_rows = np.unique(np.asarray(new_rows if new_rows is not None else [], np.int64))
        out._fresh_rows = out._new_rows if fresh_rows is None else np.unique(np.asarray(fresh_rows, np.int64))
        out._fresh_slots = int(fresh_slots)
        return out

    @property
    def has_prior(self) -> bool:
        """Whether ``for_user(..., hybrid=True)`` can answer (``with_prior`` / ``load_hybrid`` was applied)."""
        return getattr(self, "_prior", None) is not None

    def for_user(
        self,
        user_id: str,
        k: int = 10,
        categories: Sequence[str] | None = None,
        exclude_seen: bool = True,
        *,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
        item_filter: ItemFilter | None = None,
        hybrid: bool = False,
    ) -> Results:
        """The k items closest to the user's vector, by default without the items the user interacted with;
        filters as in ``similar_items``. ``hybrid``: re-rank the nearest ``max(10 k, 200)`` by cosine + weight
        x log recent popularity (needs ``with_prior``; category filters only); the plain nearest neighbours
        otherwise."""
        if hybrid:
            if allow or deny or item_filter is not None:
                raise ConfigError("hybrid scoring takes category filters only, not allow/deny lists")
            return self._hybrid_for_user(user_id, k, categories, exclude_seen)
        if self.users is None:
            raise UnknownUserError(f"no user vectors to look up user {user_id!r} (no user embedding table)")
        flt = item_filter or self.make_filter(categories, allow, deny)
        vectors, found, model = self.users.get([user_id])
        if not found[0]:  # before the model check: an unknown user has no vector, hence no model id
            raise UnknownUserError(
                f"unknown user {user_id!r}: no user vector (never seen, or not embedded yet)"
            )
        check_model(self.model_id, model)
        exclude = self._seen.get(user_id) if exclude_seen else None
        return self.search(vectors[0], k, exclude_rows=exclude, item_filter=flt)

    def answer_token(self, user_id: str) -> object | None:
        """A token that stays the same exactly as long as ``for_user(user_id, ...)`` gives the same answer on
        this retriever (the user's vector is fixed: held or read once at load), else None (read live)."""
        fixed = getattr(self.users, "fixed_token", None)
        return fixed(user_id) if fixed is not None else None

    def make_filter(
        self,
        categories: Sequence[str] | None = None,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
    ) -> ItemFilter:
        """Resolve a filter once (reusable across queries, e.g. an in-stock list): items in any of
        ``categories`` AND in ``allow`` (None: no allow-list; empty: nothing), minus ``deny``. Unknown
        categories raise ``UnknownCategoryError``; allow/deny ids not in the index are ignored and counted."""
        key = tuple(sorted(set(categories))) if categories else ()
        if allow is None and not deny:
            cached = self._filters.get(key)
            if cached is None:
                cached = self._category_filter(key)
                if len(self._filters) < 256:
                    self._filters[key] = cached
            return cached
        flt = self._category_filter(key)
        rows, ignored, parts = flt.rows, 0, [flt.description] if key else []
        if allow is not None:
            found = self._rows_of(allow)
            ignored += len(allow) - len(found)
            rows = found if rows is None else np.intersect1d(rows, found, assume_unique=True)
            parts.append(f"allow-list of {len(allow):,} ids")
        out = ItemFilter(self.count, rows, ignored_ids=ignored)
        if deny:
            found = self._rows_of(deny)
            out = out.without(found)
            out.ignored_ids = ignored + len(deny) - len(found)
            parts.append(f"not in deny-list of {len(deny):,} ids")
        out.description = " AND ".join(parts) or "all items"
        return out

    def _hybrid_for_user(self, user_id, k, categories, exclude_seen) -> Results:
        prior = getattr(self, "_prior", None)
        if prior is None:
            raise ValueError(
                "hybrid scoring needs a popularity prior (Retriever.with_prior / --hybrid on an adapted set)"
            )
        width = min(self.count, max(10 * k, 200))
        wide = self.for_user(user_id, width, categories, exclude_seen)
        rows = self._row_of.get_indexer(pd.Index(wide.ids, dtype=object))
        cos = np.asarray(wide.scores, np.float32)
        new_rows = getattr(self, "_new_rows", None)
        if self._prior_weight and new_rows is not None and (prior[new_rows] > 0).any():
            # items without clicks that have a (text-predicted) prior: their vectors are the bare item tower,
            # far from every user, so they are rarely among the nearest -- add the user's nearest of them
            extra = self._nearest_among(
                user_id, new_rows[prior[new_rows] > 0], width, categories, exclude_seen
            )
            if extra is not None and len(extra.ids):
                more = self._row_of.get_indexer(pd.Index(extra.ids, dtype=object))
                keep = ~np.isin(more, rows)
                rows = np.concatenate([rows, more[keep]])
                cos = np.concatenate([cos, np.asarray(extra.scores, np.float32)[keep]])
        scores = cos + self._prior_weight * prior[rows]
        order = np.argsort(-scores, kind="stable")
        rows, scores, method = rows[order], scores[order], f"hybrid({wide.method})"
        fresh = self._nearest_among(  # the fresh slots: the user's nearest items without clicks (recent ones)
            user_id,
            getattr(self, "_fresh_rows", new_rows),
            min(k, getattr(self, "_fresh_slots", 0)),
            categories,
            exclude_seen,
        )
        if fresh is not None and len(fresh.ids):
            new = self._row_of.get_indexer(pd.Index(fresh.ids, dtype=object))
            rest = ~np.isin(rows, new)
            rows = np.concatenate([new, rows[rest]])
            scores = np.concatenate([np.asarray(fresh.scores, np.float32), scores[rest]])
            method += f"+fresh({len(new)})"
        rows, scores = rows[:k], scores[:k]
        return Results(ids=self._item_ids[rows].tolist(), scores=[float(x) for x in scores],
                       index_version=self.version, method=method, titles=[self._titles[r] for r in rows])  # fmt: skip

    def _nearest_among(self, user_id, new_rows, n: int, categories, exclude_seen) -> Results | None:
        """The user's ``n`` nearest items among the rows ``new_rows`` (within ``categories``), or None."""
        if n <= 0 or new_rows is None or not len(new_rows):
            return None
        flt = self.make_filter(categories)
        rows = new_rows if flt.rows is None else np.intersect1d(new_rows, flt.rows, assume_unique=True)
        return self.for_user(user_id, n, exclude_seen=exclude_seen, item_filter=ItemFilter(self.count, rows))

    def search(
        self,
        vector: np.ndarray,
        k: int,
        categories: Sequence[str] | None = None,
        exclude_rows: np.ndarray | None = None,
        *,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
        item_filter: ItemFilter | None = None,
    ) -> Results:
        """Top-k for one query vector (any length-dim vector; normalised here), with optional filters."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        q = normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self._vectors.shape[1]:
            raise ModelMismatchError(f"query has {q.shape[1]} dimensions, the index {self._vectors.shape[1]}")
        base = item_filter or self.make_filter(categories, allow, deny)
        flt = base.without(exclude_rows)
        chosen = plan(flt, k, self.exact_filter_max)
        rows, scores, method = self._search(q, k, flt, chosen)
        reason = None
        if chosen == "none":
            excluded = base.remaining - flt.remaining
            reason = f"no item passes the filter ({base.description}: {base.remaining:,} items"
            reason += f", {excluded:,} of them excluded as seen or the query item)" if excluded else ")"
            if base.ignored_ids:
                reason += f"; {base.ignored_ids:,} allow/deny ids are not in index version {self.version}"
        return Results(
            ids=self._item_ids[rows].tolist(), scores=[float(s) for s in scores], index_version=self.version,
            method=method, titles=[self._titles[r] for r in rows], plan=chosen,
            selectivity=flt.selectivity, reason=reason, ignored_ids=base.ignored_ids,
            same_title=[self._item_ids[self._same_title.get(int(r), [])].tolist() for r in rows],
        )  # fmt: skip

    def info(self) -> dict[str, Any]:
        m = self.loaded.manifest
        return {
            "index_version": self.version, "embedding_set": m.get("embedding_set"), "model_id": self.model_id,
            "dim": m["dim"], "count": self.count, "factory": m["index"]["factory"], "exact": m["index"]["exact"],
            "params": m.get("params", {}), "as_of": m.get("as_of"), "built_at": m.get("built_at"),
            "recall_at_10": m.get("tuning", {}).get("recall_at_10"), "device": self.device,
        }  # fmt: skip

    # -- internals --------------------------------------------------------------------------------

    def _row(self, item_id: str) -> int:
        try:
            return int(self._row_of.get_loc(item_id))
        except KeyError:
            raise UnknownItemError(f"unknown item {item_id!r}: not in index version {self.version}") from None

    def _rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Sorted unique rows of the ``item_ids`` the index holds (unknown ids dropped)."""
        pos = self._row_of.get_indexer(pd.Index(list(item_ids), dtype=object))
        return np.unique(pos[pos >= 0]).astype(np.int64)

    def _category_filter(self, key: tuple[str, ...]) -> ItemFilter:
        if not key:
            return ItemFilter(self.count)
        key = tuple(self.category_label(c) for c in key)  # case-insensitive; unknown: UnknownCategoryError
        rows = (
            self._members[key[0]]
            if len(key) == 1
            else np.unique(np.concatenate([self._members[c] for c in key]))
        )
        return ItemFilter(self.count, rows, description="category " + " OR ".join(key))

    def category_label(self, name: str) -> str:
        """The stored label ``name`` stands for: itself, else the one label equal to it ignoring case; an
        UnknownCategoryError names it and lists the known labels, the most frequent first."""
        if name in self._members:
            return name
        folded = [label for label in self._members if label.casefold() == str(name).casefold()]
        if len(folded) == 1:
            return folded[0]
        by_size = sorted(self._members, key=lambda label: (-len(self._members[label]), label))
        # Single labels first (MovieLens' category is a comma-joined genre list; its genres are tags too).
        single = [label for label in by_size if ", " not in label] or by_size
        shown = ", ".join(f"{label} ({len(self._members[label])})" for label in single[:25])
        more = len(self._members) - min(25, len(single))
        hint = f"; did you mean one of {sorted(folded)}?" if folded else ""
        raise UnknownCategoryError(
            f"unknown category {name!r}{hint}; known (items per category, most first): {shown}"
            + (f" and {more} more (combinations included)" if more > 0 else "")
        )

    def _search(
        self, q: np.ndarray, k: int, flt: ItemFilter, chosen: str
    ) -> tuple[np.ndarray, np.ndarray, str]:
        want = min(k, flt.remaining)
        if chosen == "none":
            return np.zeros(0, np.int64), np.zeros(0, np.float32), "none"
        if chosen == "index":
            # No positive filter and few exclusions (the query item, a light user): k + len(excluded)
            # neighbours always hold the filtered top k; no selector needed.
            rows, scores = self._index_search(q, min(self.count, k + len(flt.excluded)), None)
            keep = flt.keeps(rows)
            rows, scores = rows[keep][:want], scores[keep][:want]
            if len(rows) == want:
                return rows, scores, "index"
        if chosen == "exact" or flt.remaining <= self.exact_filter_max:
            return (*self._exact(q, flt, want), "exact")
        rows, scores = self._index_search(q, want, flt)
        if len(rows) < want:  # the approximate search ran dry inside the filter: answer exactly
            return (*self._exact(q, flt, want), "exact")
        return rows, scores, "index"

    def _selector(self, flt: ItemFilter) -> tuple[faiss.IDSelector, Any]:
        """The filter as an IDSelector (cached on the filter): a bitmap of the allowed rows, or, with no
        positive filter, "not one of the excluded" (O(excluded) to build)."""
        if flt._selector is None:
            flt._selector = (
                ft.bitmap_selector(flt.bitmap()) if flt.restricted else ft.exclusion_selector(flt.excluded)
            )
        return flt._selector

    def _index_search(self, q: np.ndarray, k: int, flt: ItemFilter | None) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (row, score) from the index, best first, only rows the filter keeps."""
        if flt is None:
            scores, rows = self._locked_search(q, min(k, self._max_k), None)
        elif self._ivf is not None:
            return self._ivf_filtered(q, k, flt)
        elif self._selectors:
            sel, _keep = self._selector(flt)
            # HNSW (or an IVF behind a transform): raise efSearch (nprobe) with 1 / selectivity, capped.
            widen = effort_scale(flt.selectivity, self.filter_widen)
            params, keep_params = search_params(self._index, sel, k, widen)
            scores, rows = self._locked_search(q, k, params)
            del keep_params  # the parameters read these until the search has returned
        else:
            # Without selectors, over-fetch: k + every filtered-out item is always enough; 2k x the filtered
            # fraction is enough when they are spread evenly. Whenever k survive they are the filtered top k
            # (anything the fetch missed scores lower); fewer make the caller answer exactly.
            dropped = self.count - flt.remaining
            fetch = min(k + dropped, int(np.ceil(2 * k * self.count / flt.remaining)), self._max_k)
            scores, rows = self._locked_search(q, fetch, None)
            ok = flt.keeps(rows[0])
            return rows[0][ok][:k], scores[0][ok][:k]
        ok = rows[0] >= 0
        return rows[0][ok], scores[0][ok]

    def _ivf_filtered(self, q: np.ndarray, k: int, flt: ItemFilter) -> tuple[np.ndarray, np.ndarray]:
        """Filter-aware IVF search: probe the lists nearest the query among those holding allowed rows, until
        they hold ``coverage_target`` allowed rows and (category / allow-list) ``scan_target`` rows in all;
        FAISS scans them with the filter's selector, and a refine index re-ranks its best
        k x k_factor x filter_rescore candidates exactly."""
        ivf = self._ivf
        counts = flt.list_counts(self._list_of, ivf.nlist)
        k_factor = float(self._refine.k_factor) if self._refine is not None else 1.0
        target = coverage_target(ivf.nprobe, self.count, ivf.nlist, k, k_factor, self.filter_coverage)
        plain = ivf.nprobe * self.count / ivf.nlist
        scan = (
            scan_target(flt.remaining, plain, self.filter_scan, self.filter_scan_cap) if flt.restricted else 0
        )
        lists = np.flatnonzero(counts)
        coarse = ft.inner_products(q, self._centroids)[lists]  # all centroids: cheaper than gathering some
        # Order only the best _PARTIAL_LISTS lists when they meet both targets (they nearly always do); else all.
        order = None
        if len(lists) > _PARTIAL_LISTS:
            part = np.argpartition(-coarse, _PARTIAL_LISTS - 1)[:_PARTIAL_LISTS]
            part = part[np.argsort(-coarse[part], kind="stable")]
            if probe_lists(counts, lists[part], target, self._list_sizes, scan) < len(part):
                order = part
        if order is None:
            order = np.argsort(-coarse, kind="stable")
        m = probe_lists(counts, lists[order], target, self._list_sizes, scan)
        probe, dis = lists[order[:m]], coarse[order[:m]]
        fetch = int(min(flt.remaining, math.ceil(k * k_factor * self.filter_rescore)))
        sel, _keep = self._selector(flt)
        with self._threads():
            scores, rows = ft.search_lists(ivf, q, fetch, probe, dis, sel)
            rows = rows[rows >= 0]
            if self._refine is None:
                return rows[:k], scores[: len(rows)][:k]
            exact = ft.rescore(self._refine, q, rows)
        return top_k(rows, exact, k)

    def _threads(self):
        """OpenMP's thread count is per calling thread: set it for one search only."""
        return _OmpThreads(self.search_threads)

    def _locked_search(self, q: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        if self._lock is not None:
            with self._lock:
                return self._index.search(q, k)
        with self._threads():
            return self._index.search(q, k, params=params) if params is not None else self._index.search(q, k)

    def _exact(self, q: np.ndarray, flt: ItemFilter, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the rows the filter allows; ties broken by faiss id.

        Few rows: gathered and scored with FAISS's single-threaded SIMD inner products, not BLAS (a threaded
        BLAS matrix-vector product costs ~30x more on a busy machine, and numpy's einsum took twice as long:
        docs/retrieval.md, "Throughput"). Many rows (> 1/32 of the catalogue): FAISS scans the vectors in
        place with the filter's selector (``knn_inner_product``), no copy."""
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if flt.remaining > self.count // 32 and self._flat_vectors is not None:
            sel = None if not flt.restricted and len(flt.excluded) == 0 else self._selector(flt)[0]
            with self._threads():
                scores, rows = ft.exact_knn(self._flat_vectors, q, k, sel)
            ok = rows >= 0
            return top_k(rows[ok], scores[ok], k)
        rows = flt.allowed_rows()
        scores = ft.inner_products(q[0], np.ascontiguousarray(self._vectors[rows], dtype=np.float32))
        return top_k(rows, scores, k)


class _OmpThreads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> None:
        self.before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        faiss.omp_set_num_threads(self.before)


def _preassignable_ivf(index: faiss.Index) -> Any | None:
    """The IVF layer when filtered searches can pick its lists directly (an IVF, possibly behind an id map or
    a refine; not behind a pre-transform, whose queries would need transforming first)."""
    layer = faiss.downcast_index(index)
    while isinstance(layer, faiss.IndexRefine | faiss.IndexIDMap | faiss.IndexIDMap2):
        inner = layer.base_index if isinstance(layer, faiss.IndexRefine) else layer.index
        layer = faiss.downcast_index(inner)
    return layer if isinstance(layer, faiss.IndexIVF) else None


def top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (highest score, then lowest row), best first."""
    if len(rows) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        threshold = scores[part].min()
        part = np.flatnonzero(scores >= threshold)  # keep every tie at the boundary, then order
        rows, scores = rows[part], scores[part]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order].astype(np.int64), scores[order]


def search_params(
    index: faiss.Index, sel: faiss.IDSelector, k: int, widen: float = 1.0
) -> tuple[Any, list[Any]]:
    """SearchParameters carrying ``sel`` down to the layer that scans (IDMap translates ids itself), with
    nprobe / efSearch multiplied by ``widen``; returns the parameters and the objects that must stay alive
    while they are used."""
    layer = faiss.downcast_index(index)
    if isinstance(layer, faiss.IndexIDMap | faiss.IndexIDMap2):
        return search_params(layer.index, sel, k, widen)
    if isinstance(layer, faiss.IndexRefine):
        base, keep = search_params(layer.base_index, sel, k, widen)
        params = faiss.IndexRefineSearchParameters(k_factor=layer.k_factor, base_index_params=base)
        return params, [base, *keep]
    if isinstance(layer, faiss.IndexPreTransform):
        inner, keep = search_params(layer.index, sel, k, widen)
        return faiss.SearchParametersPreTransform(index_params=inner), [inner, *keep]
    if isinstance(layer, faiss.IndexIVF):
        nprobe = min(layer.nlist, math.ceil(layer.nprobe * widen))
        return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe), [sel]
    if isinstance(layer, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=max(math.ceil(layer.hnsw.efSearch * widen), k)), [
            sel
        ]
    return faiss.SearchParameters(sel=sel), [sel]


def _shared_titles(titles: list[str | None]) -> dict[int, list[int]]:
    """row -> the other rows with the same (non-empty) title, only for titles held by several items."""
    frame = pd.DataFrame({"title": titles, "row": np.arange(len(titles))}).dropna()
    frame = frame[frame["title"].str.strip() != ""]
    dup = frame[frame.duplicated("title", keep=False)]
    out: dict[int, list[int]] = {}
    for _, group in dup.groupby("title")["row"]:
        rows = group.tolist()
        for r in rows:
            out[r] = [o for o in rows if o != r]
    return out


def _category_members(loaded: LoadedIndex) -> dict[str, np.ndarray]:
    """label -> faiss ids of the items carrying it, from the labels column without a Python loop per item."""
    labels = loaded.ids.column("labels").combine_chunks()
    if len(labels) == 0:
        return {}
    flat = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(labels).to_numpy()
    if len(flat) == 0:
        return {}
    frame = pd.DataFrame({"label": flat, "row": parents.astype(np.int64)})
    return {str(label): np.unique(g.to_numpy()) for label, g in frame.groupby("label")["row"]}


def _to_gpu(loaded: LoadedIndex) -> tuple[faiss.Index, str]:
    """The index on every GPU; an index type FAISS cannot move (e.g. fast-scan PQ) is replaced by exact
    search over the vectors on the GPU, which is both exact and fast there."""
    try:
        return faiss.index_cpu_to_all_gpus(loaded.index), f"gpu x{faiss.get_num_gpus()}"
    except RuntimeError:
        flat = faiss.IndexFlatIP(loaded.vectors.shape[1])
        flat.add(np.ascontiguousarray(loaded.vectors, dtype=np.float32))
        return faiss.index_cpu_to_all_gpus(flat), f"gpu x{faiss.get_num_gpus()} (exact flat)"


def item_clicks(data_dir: Path, item_ids: Sequence[str], col: str, as_of) -> np.ndarray:
    """The item_stats column ``col`` (e.g. ``clicks_7d``, ``clicks_total``) per item, from the published change
    log (latest row per item with event_timestamp <= as_of; 0 for items without one)."""
    import pyarrow.dataset as ds

    from llmfeat.embedding.vectors import _PARTITIONING, utc

    root = DataDir(Path(data_dir)).features / ITEM_STATS_TABLE
    if not tables.snapshot_dates(root):
        raise FileNotFoundError(f"no item_stats under {root}: run `llmfeat stats` first")
    at = utc(pd.Timestamp(as_of))
    import pyarrow as pa

    t = (
        ds.dataset(root, format="parquet", partitioning=_PARTITIONING)
        .to_table(
            columns=["item_id", "event_timestamp", "created_timestamp", col],
            filter=ds.field("event_timestamp") <= pa.scalar(at, pa.timestamp("us", tz="UTC")),
        )
        .to_pandas()
    )
    latest = t.sort_values(["item_id", "event_timestamp", "created_timestamp"]).drop_duplicates(
        "item_id", keep="last"
    )
    clicks = pd.Index(latest["item_id"]).get_indexer(pd.Index(list(item_ids), dtype=object))
    return np.where(clicks >= 0, latest[col].to_numpy()[np.maximum(clicks, 0)], 0).astype(np.float64)


def popularity_prior(data_dir: Path, item_ids: Sequence[str], window_days: int, as_of) -> np.ndarray:
    """log(1 + clicks in the trailing ``window_days``) per item, from the published item_stats change log
    (latest row per item with event_timestamp <= as_of; 0 for items without one)."""
    return np.log1p(item_clicks(data_dir, item_ids, f"clicks_{int(window_days)}d", as_of)).astype(np.float32)


def load_hybrid(cfg: Config, retriever: Retriever) -> Retriever:
    """Attach the adapter's hybrid prior (window and weight chosen on validation, from its card) to a retriever
    of the adapted set."""
    from llmfeat.embedding.adapt import load_card

    card = load_card(cfg)
    h = card.get("hybrid") or {}
    ids, as_of = retriever._item_ids.tolist(), retriever.loaded.as_of
    weight = float(h.get("weight") or 0.0) if h.get("window_days") else 0.0
    prior = popularity_prior(cfg.paths.data_dir, ids, h["window_days"], as_of) if weight \
        else np.zeros(retriever.count, np.float32)  # fmt: skip
    slots = int(h.get("fresh_slots") or 0)
    text_pop = h.get("text_popularity") if weight and float(h.get("new_item_prior") or 0) > 0 else None
    new_rows = None
    if slots or text_pop:
        new_rows = np.nonzero(item_clicks(cfg.paths.data_dir, ids, "clicks_total", as_of) == 0)[0]
    if text_pop and len(new_rows):
        prior = prior.copy()
        prior[new_rows] = new_item_priors(cfg, card, [ids[r] for r in new_rows], as_of)
    fresh_rows = None
    if slots and h.get("fresh_release_days"):  # only the recent releases among them (items.released_at)
        from llmfeat.data.catalogue import days_since_release, read_release_dates
        from llmfeat.embedding.adapt import fresh_candidates

        released = read_release_dates(cfg.paths.data_dir, as_of, np.asarray(ids, dtype=object))
        is_new = np.zeros(len(ids), bool)
        is_new[new_rows] = True
        age = days_since_release(released, pd.Timestamp(as_of))  # the snapshot, as the adapter's cut
        fresh_rows = np.nonzero(fresh_candidates(is_new, age, h["fresh_release_days"]))[0]
    return retriever.with_prior(prior, weight, new_rows=new_rows, fresh_slots=slots, fresh_rows=fresh_rows)


def load_hybrid_if_adapted(cfg: Config, retriever: Retriever) -> Retriever:
    """``load_hybrid`` when the served set was written by ``llmfeat adapt`` (its card is there), else the
    retriever as it is (a hybrid request on it is then refused): what ``llmfeat serve`` loads."""
    from llmfeat.embedding.adapt import card_path

    return load_hybrid(cfg, retriever) if card_path(cfg, cfg.embed.embedding_set).is_file() else retriever


def new_item_priors(cfg: Config, card: dict, item_ids: Sequence[str], as_of) -> np.ndarray:
    """The hybrid prior of items without clicks: the card's multiplier x their log recent popularity as
    predicted from their frozen LM vectors (``adapt.text_popularity``, coefficients in the card), the vectors
    read from the adapter's base embedding set, whose model id must be the one the adapter was trained on."""
    from llmfeat.embedding.adapt import predicted_popularity

    h = card["hybrid"]
    base = read_latest(
        embedding_paths(cfg.paths.data_dir, card["base_set"]).item_text, "item_id", as_of=as_of
    )
    if base.model_id != card["base_model_id"]:
        raise ModelMismatchError(
            f"the adapter's text-popularity prior was fitted on {card['base_model_id']} vectors, but embedding set "
            f"{card['base_set']!r} holds {base.model_id}: run the adapt stage again"
        )
    rows = pd.Index(base.ids).get_indexer(pd.Index(list(item_ids), dtype=object))
    out = np.zeros(len(rows), np.float32)
    found = rows >= 0  # an item without a base vector (none in a consistent data dir) keeps no prior
    tp = h["text_popularity"]
    out[found] = float(h["new_item_prior"]) * predicted_popularity(base.vectors[rows[found]], tp["coef"],
                                                                   tp["intercept"])  # fmt: skip
    return out
