"""Nearest-neighbour retrieval over one published index version: item -> similar items, user -> items.

A ``Retriever`` holds one loaded version (index, id map, vectors), each item's category labels, each user's
seen items (every interaction in the canonical snapshot as of the index) and a ``UserVectorSource`` for user
queries. It never changes after construction: the service swaps whole retrievers to reload.

Filters (category, seen items, the query item itself) are applied inside FAISS with an ``IDSelectorBitmap``
when the index supports it, so k results come back without guessing an over-fetch. When few items remain
(at most ``index.exact_filter_max``), or the approximate search returns fewer than k, the search is done
exactly over the remaining items instead: a small category is answered correctly, never with holes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from llmfeat import tables
from llmfeat.config import Config
from llmfeat.embed import embedding_paths
from llmfeat.index import LoadedIndex, check_model, index_root, is_exact, load_version
from llmfeat.vectors import normalise, read_latest

GPU_MAX_K = 2048
"""FAISS GPU indexes return at most this many neighbours per query."""
_CHUNK = 65_536


class NotFoundError(LookupError):
    """An id or category the index (or the user vectors) does not know. ``str()`` is the message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownItemError(NotFoundError):
    pass


class UnknownUserError(NotFoundError):
    pass


class UnknownCategoryError(NotFoundError):
    pass


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
            raise ValueError(f"user vector kind {kind!r}: expected one of {sorted(tables_by_kind)}")
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

    def get(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
        pos = self._rows.get_indexer(pd.Index(user_ids, dtype=object))
        found = pos >= 0
        dim = self._vectors.shape[1] if self._vectors.ndim == 2 else 0
        out = np.zeros((len(user_ids), dim), dtype=np.float32)
        out[found] = self._vectors[pos[found]]
        return out, found, self._model_id or ""


def read_seen(data_dir: Path, as_of) -> pd.DataFrame:
    """(user_id, item_id) of every interaction in the latest canonical interactions snapshot <= as_of."""
    root = tables.canonical_dir(data_dir, "interactions")
    days = [d for d in tables.snapshot_dates(root) if d <= as_of]
    if not days:
        raise FileNotFoundError(f"no canonical interactions snapshot at or before {as_of} under {root}")
    return tables.read_snapshot(root, days[-1]).select(["user_id", "item_id"]).to_pandas()


@dataclass(frozen=True)
class Results:
    """Top-k items, best first."""

    ids: list[str]
    scores: list[float]
    index_version: str
    method: str
    """index: answered by the FAISS index; exact: by exact scoring of the remaining items."""
    titles: list[str | None]


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
    ):
        self.loaded = loaded
        self.version = loaded.version
        self.model_id = loaded.model_id
        self.count = loaded.count
        self.exact_filter_max = exact_filter_max
        self.search_threads = search_threads
        self.filter_widen = filter_widen
        if users is not None:
            check_model(self.model_id, users.model_id)
        self.users = users
        self._item_ids = np.asarray(loaded.ids.column("item_id").to_pylist(), dtype=object)
        self._titles = loaded.ids.column("title").to_pylist()
        self._row_of = pd.Index(self._item_ids)
        self._members = _category_members(loaded)
        self._seen = self._seen_rows(seen)
        self._vectors = loaded.vectors
        self._index = loaded.index
        self._exact_index = is_exact(loaded.index)
        self._selectors = True
        self._max_k = self.count
        self._lock: threading.Lock | None = None
        self.device = "cpu"
        if gpu != "never" and faiss.get_num_gpus() > 0:
            self._index, self.device = _to_gpu(loaded)
            self._selectors = False  # GPU indexes take no IDSelector: filters over-fetch instead
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
    ) -> Retriever:
        """The published (or given) version of ``cfg``'s embedding set, user vectors from the Parquet tables
        unless ``users`` is given, and seen items as of the index's snapshot."""
        data_dir, emb_set = cfg.paths.data_dir, cfg.embed.embedding_set
        loaded = load_version(index_root(data_dir, emb_set), version)
        if users is None and cfg.serve.user_source == "feast":
            from llmfeat.online import FeastUserVectors
            from llmfeat.publish import open_store

            users = FeastUserVectors(open_store(cfg), user_kind or cfg.serve.user_vectors)
        elif users is None:
            try:
                users = ParquetUserVectors(data_dir, emb_set, user_kind or cfg.serve.user_vectors)
            except FileNotFoundError:  # item -> items still works; user queries say why they cannot
                users = None
        seen = read_seen(data_dir, loaded.as_of)
        return cls(loaded, users, seen, exact_filter_max=cfg.index.exact_filter_max, gpu=cfg.index.gpu,
                   search_threads=cfg.index.search_threads, filter_widen=cfg.index.filter_widen)  # fmt: skip

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

    def item_vector(self, item_id: str) -> np.ndarray:
        return np.asarray(self._vectors[self._row(item_id)], dtype=np.float32)

    def similar_items(self, item_id: str, k: int = 10, categories: Sequence[str] | None = None) -> Results:
        """The k items closest to ``item_id`` (itself excluded), optionally only from ``categories``."""
        row = self._row(item_id)
        return self.search(self._vectors[row], k, categories, exclude_rows=np.array([row], np.int64))

    def for_user(
        self, user_id: str, k: int = 10, categories: Sequence[str] | None = None, exclude_seen: bool = True
    ) -> Results:
        """The k items closest to the user's vector, by default without the items the user interacted with."""
        if self.users is None:
            raise UnknownUserError(f"no user vectors to look up user {user_id!r} (no user embedding table)")
        vectors, found, model = self.users.get([user_id])
        check_model(self.model_id, model)
        if not found[0]:
            raise UnknownUserError(
                f"unknown user {user_id!r}: no user vector (never seen, or not embedded yet)"
            )
        exclude = self._seen.get(user_id) if exclude_seen else None
        return self.search(vectors[0], k, categories, exclude_rows=exclude)

    def search(
        self,
        vector: np.ndarray,
        k: int,
        categories: Sequence[str] | None = None,
        exclude_rows: np.ndarray | None = None,
    ) -> Results:
        """Top-k for one query vector (any length-dim vector; normalised here), with optional filters."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self._vectors.shape[1]:
            raise ValueError(f"query has {q.shape[1]} dimensions, the index {self._vectors.shape[1]}")
        allowed = self._allowed(categories)
        exclude = np.zeros(0, np.int64) if exclude_rows is None else np.asarray(exclude_rows, np.int64)
        rows, scores, method = self._search(q, k, allowed, exclude)
        return Results(
            ids=self._item_ids[rows].tolist(), scores=[float(s) for s in scores], index_version=self.version,
            method=method, titles=[self._titles[r] for r in rows],
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

    def _allowed(self, categories: Sequence[str] | None) -> np.ndarray | None:
        if not categories:
            return None
        missing = [c for c in categories if c not in self._members]
        if missing:
            known = ", ".join(sorted(self._members)[:20])
            raise UnknownCategoryError(f"unknown category {missing[0]!r}; known: {known}")
        mask = np.zeros(self.count, dtype=bool)
        for c in categories:
            mask[self._members[c]] = True
        return mask

    def _search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, str]:
        flt = _Filter(self.count, allowed, np.unique(exclude))
        want = min(k, flt.remaining)
        if want == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), "exact"
        if flt.allowed is None and len(flt.exclude) <= k:
            # No category and few exclusions (the query item, a light user): k + len(exclude) neighbours
            # always hold the filtered top k; no selector needed.
            rows, scores = self._index_search(q, min(self.count, k + len(flt.exclude)), None)
            keep = flt.keeps(rows)
            rows, scores = rows[keep][:want], scores[keep][:want]
            if len(rows) == want:
                return rows, scores, "index"
        if flt.remaining <= self.exact_filter_max:
            return (*self._exact(q, flt.mask(), want), "exact")
        rows, scores = self._index_search(q, want, flt)
        if len(rows) < want:  # the approximate search ran dry inside the filter: answer exactly
            return (*self._exact(q, flt.mask(), want), "exact")
        return rows, scores, "index"

    def _index_search(self, q: np.ndarray, k: int, flt: _Filter | None) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (row, score) from the index, best first, only rows the filter keeps."""
        if flt is None:
            scores, rows = self._locked_search(q, min(k, self._max_k), None)
        elif self._selectors:
            sel, keep = flt.selector()
            # A category clusters in embedding space: its nearest members may lie in lists far from the query,
            # so a category search probes filter_widen times more lists (efSearch). Exclusions alone remove
            # few items and need no widening.
            widen = self.filter_widen if flt.allowed is not None else 1.0
            params, keep_params = search_params(self._index, sel, k, widen)
            scores, rows = self._locked_search(q, k, params)
            del keep, keep_params  # the selector and parameters read these until the search has returned
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

    def _locked_search(self, q: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        if self._lock is not None:
            with self._lock:
                return self._index.search(q, k)
        # OpenMP's thread count is per calling thread: set it for this search only.
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.search_threads)
        try:
            return self._index.search(q, k, params=params) if params is not None else self._index.search(q, k)
        finally:
            faiss.omp_set_num_threads(before)

    def _exact(self, q: np.ndarray, mask: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the rows in ``mask`` (all rows when None); ties broken by faiss id.

        Scores use FAISS's single-threaded SIMD inner products, not BLAS: a threaded BLAS matrix-vector
        product costs ~30x more on a busy machine (its threads wait on each other), and one query is too small
        to share out anyway; numpy's einsum, used before, took twice as long (it was the largest single cost
        of a user -> items request: docs/retrieval.md, "Throughput")."""
        q1 = np.ascontiguousarray(q[0], dtype=np.float32)
        if mask is not None and mask.sum() < self.count // 8:
            rows = np.flatnonzero(mask)
            scores = inner_products(np.asarray(self._vectors[rows], dtype=np.float32), q1)
        else:
            rows = np.arange(self.count)
            scores = np.empty(self.count, dtype=np.float32)
            for start in range(0, self.count, _CHUNK):
                scores[start : start + _CHUNK] = inner_products(self._vectors[start : start + _CHUNK], q1)
            if mask is not None:
                rows, scores = rows[mask], scores[mask]
        return top_k(rows, scores, k)


class _Filter:
    """Which rows a query may return: those in ``allowed`` (a category mask; None = all) minus ``exclude``."""

    def __init__(self, count: int, allowed: np.ndarray | None, exclude: np.ndarray):
        self.count, self.allowed, self.exclude = count, allowed, exclude
        if allowed is None:
            self.remaining = count - len(exclude)
        else:
            self.remaining = int(allowed.sum()) - int(allowed[exclude].sum())
        self._mask: np.ndarray | None = None

    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = np.ones(self.count, dtype=bool) if self.allowed is None else self.allowed.copy()
            self._mask[self.exclude] = False
        return self._mask

    def keeps(self, rows: np.ndarray) -> np.ndarray:
        ok = rows >= 0
        if self.allowed is not None:
            ok &= self.allowed[np.clip(rows, 0, None)]
        return ok & ~np.isin(rows, self.exclude)

    def selector(self) -> tuple[faiss.IDSelector, list[Any]]:
        """An IDSelector and the objects it reads (keep them alive while it is used). Exclusions alone: a
        hash set of them, O(excluded) to build; a category: a bitmap over the catalogue."""
        if self.allowed is None:
            batch = faiss.IDSelectorBatch(len(self.exclude), faiss.swig_ptr(self.exclude))
            return faiss.IDSelectorNot(batch), [batch]
        bitmap = np.packbits(self.mask(), bitorder="little")
        return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), [bitmap]


def inner_products(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``vectors @ q`` (float32) with FAISS's SIMD kernel, in the calling thread."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != q.shape[0]:
        raise ValueError(f"inner_products: vectors {v.shape} and query {q.shape} do not match")
    out = np.empty(v.shape[0], dtype=np.float32)
    if len(v):
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(v), v.shape[1], v.shape[0]
        )
    return out


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
