"""Online feature lookup for rankers: 1 user x N candidate items -> the model input matrix.

The features are those of the ``ranker`` feature service. They are read view by view straight from Feast's
online store (``OnlineStore.online_read``, the call ``get_online_features`` makes underneath, through the Feast
adapter's ``llmfeat.feast.online.OnlineReader``): one read per user view with 1 key, one per item view with
the N keys, and the stored protobuf values decoded straight to numpy. ``get_online_features(...).to_dict()`` on the same store returns the same numbers, but spends most of
a 100-item lookup on registry lookups, response building and converting 38,400 floats to Python objects and
back (BENCHMARKS.md, "Feast"); the test suite checks the two paths agree.

Item features change only when a night publishes, so the item views are held in the ranker's process
(``ItemFeatureCache``), keyed by the publish version: the materialisation intervals the Feast registry records
for the item views (Feast records a view's interval only after its online rows are written). A request
stats the registry file (microseconds); when it changed and the item views' intervals differ, every cached
item is read again from the online store and the new cache replaces the old with one assignment, so a
request sees one version or the other, never a mix. User features are still read per request.
``get_online_features`` stays the reference path: tests compare the two value by value.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from llmfeat.core.errors import ConfigError
from llmfeat.feast.names import EMBEDDING, MODEL_ID, RANKER, USER_VECTOR_VIEWS, full_name, ref
from llmfeat.feast.online import OnlineReader, python_value  # noqa: F401 - python_value re-exported
from llmfeat.feast.online import ViewRead as _ViewRead
from llmfeat.features.feature_vector import (
    USER_MODEL_ID,
    FeatureMatrix,
    build_user_items_matrix,
    vectors,
)


@dataclass
class RankerFeatures:
    user_id: str
    item_ids: list[str]
    features: FeatureMatrix
    user_model_id: str | None
    """The embedding model id of the user's text vector (None when the user is unknown)."""

    @property
    def matrix(self) -> np.ndarray:
        return self.features.matrix

    @property
    def user_known(self) -> bool:
        return bool(self.features.user_known.any())

    @property
    def item_known(self) -> np.ndarray:
        return self.features.item_known


@dataclass
class _CacheState:
    version: tuple
    values: dict[str, dict[str, object]] = field(default_factory=dict)
    """item id -> {full feature name -> value}; an id the online store does not know maps to all-None."""


class ItemFeatureCache:
    """The item views' online values, held in process and keyed by the publish version (see module doc).

    Filled lazily (an id read once is served from memory until the next publish) or up front with
    ``preload`` (the whole catalogue at start). At most ``max_items`` ids are held; beyond that, ids are read
    through without being kept, so unknown ids sent by a client cannot grow the process without bound.
    A registry that is not a local file (object store, SQL) is checked every ``check_interval_s`` seconds.
    """

    def __init__(self, online: OnlineFeatures, *, max_items: int = 2_000_000, check_interval_s: float = 5.0):
        self.online = online
        self.max_items = max_items
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._registry_file = online.reader.registry_file()
        self._stamp: object = None
        self._checked_at = 0.0
        self._state = _CacheState(self._publish_version())
        self._stamp = self._registry_stamp()
        self.refreshes = 0

    def _registry_stamp(self) -> object:
        if self._registry_file is None:
            return None
        try:
            st = os.stat(self._registry_file)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _publish_version(self) -> tuple:
        """The item views' materialisation intervals, as the registry records them now."""
        reader = self.online.reader
        return tuple((read.view.name, reader.materialized(read.view.name)) for read in self.online.item_views)

    @property
    def version(self) -> tuple:
        return self._state.version

    def _current(self) -> _CacheState:
        state = self._state
        if self._registry_file is not None:
            stamp = self._registry_stamp()
            if stamp == self._stamp:
                return state
        elif time.monotonic() - self._checked_at < self.check_interval_s:
            return state
        if not self._lock.acquire(blocking=False):
            return state  # another request is refreshing: answer from the version we have, do not wait
        try:
            if self._state is not state:
                return self._state
            self._checked_at = time.monotonic()
            stamp = self._registry_stamp()
            try:
                version = self._publish_version()
            except Exception:  # a registry caught half-written: keep the cache, look again next request
                return state
            if version != state.version:
                fresh = _CacheState(version, self._read(list(state.values)))
                self._state = fresh  # one assignment: a request sees the old version or the new one
                self.refreshes += 1
            self._stamp = stamp
            return self._state
        finally:
            self._lock.release()

    def _read(self, ids: list[str]) -> dict[str, dict[str, object]]:
        if not ids:
            return {}
        got: dict[str, list] = {}
        for read in self.online.item_views:
            got.update(self.online._read(read, ids))
        names = list(got)
        return {i: {n: got[n][k] for n in names} for k, i in enumerate(ids)}

    def preload(self, item_ids) -> int:
        """Read ``item_ids`` (e.g. the whole catalogue) into the cache now; returns how many are held."""
        state = self._current()
        missing = [str(i) for i in dict.fromkeys(item_ids) if str(i) not in state.values]
        room = max(0, self.max_items - len(state.values))
        state.values.update(self._read(missing[:room]))
        return len(state.values)

    def get(self, item_ids: list[str]) -> dict[str, list]:
        """Item feature values by full name, one per id in order (the shape of ``OnlineFeatures.fetch``)."""
        state = self._current()
        values = state.values
        missing = [i for i in dict.fromkeys(item_ids) if i not in values]
        if missing:
            fetched = self._read(missing)
            if len(values) + len(fetched) <= self.max_items:
                values.update(fetched)  # one dict update per id: atomic under the GIL
            lookup = {**fetched, **{i: values[i] for i in item_ids if i in values}}
        else:
            lookup = values
        names = [n for r in self.online.item_views for n in r.full_names]
        rows = [lookup[i] for i in item_ids]
        return {n: [row[n] for row in rows] for n in names}


class OnlineFeatures:
    """Reads the ``ranker`` service's features for one user and their candidate items.

    ``cache_items=True`` (the default) serves item features from an ``ItemFeatureCache``; ``False`` reads
    them from the online store on every call, like users."""

    def __init__(self, store, dim: int, service: str = RANKER, *, cache_items: bool = True):
        self.store = store
        self.dim = dim
        self.reader = OnlineReader(store)
        reads = self.reader.service(service)
        self.user_views: list[_ViewRead] = [r for r in reads if r.is_user]
        self.item_views: list[_ViewRead] = [r for r in reads if not r.is_user]
        self.item_cache = ItemFeatureCache(self) if cache_items and self.item_views else None

    def _read(self, read: _ViewRead, ids: list[str]) -> dict[str, list]:
        return self.reader.read(read, ids)

    def fetch(self, user_id: str, item_ids: list[str]) -> tuple[dict, dict]:
        """The raw feature values by full name (``view__feature``): (user features, 1 row), (item features,
        one row per item id). Missing values are None; list values are numpy arrays."""
        user: dict[str, list] = {}
        for read in self.user_views:
            user.update(self._read(read, [user_id]))
        items: dict[str, list] = {}
        if self.item_cache is not None:
            items = self.item_cache.get([str(i) for i in item_ids])
        else:
            for read in self.item_views:
                items.update(self._read(read, list(item_ids)))
        return user, items

    def columns(self, user_id: str, item_ids: list[str]) -> dict[str, list]:
        """``fetch`` as one row per (user, item): the user's values repeated on each item's row, the input
        ``feature_vector.build_feature_matrix`` and ``ctr_data.build_dense`` take."""
        user, items = self.fetch(user_id, item_ids)
        return {**items, **{name: values * len(item_ids) for name, values in user.items()}}

    def ranker_features(
        self, user_id: str, item_ids: list[str], at: dt.datetime | None = None
    ) -> RankerFeatures:
        """The feature matrix for (user_id, each item) in the order of ``item_ids``, with masks."""
        item_ids = list(item_ids)
        user, items = self.fetch(user_id, item_ids)
        at = at or dt.datetime.now(dt.UTC)
        features = build_user_items_matrix(user, items, at, self.dim, len(item_ids))
        model_id = next(iter(user.get(USER_MODEL_ID, [])), None)
        return RankerFeatures(user_id, item_ids, features, model_id)


class FeastUserVectors:
    """User query vectors for retrieval from the Feast online store (``kind``: text or history); implements
    ``retrieval.UserVectorSource``. The model id is learnt from the vectors fetched.

    ``direct=True`` (the default) reads the view straight from the online store (``online_read``, one
    call per request), as ``OnlineFeatures`` does; ``False`` goes through ``get_online_features``, the
    reference path the tests compare it with (a retrieval service spent most of a user request there)."""

    VIEWS = USER_VECTOR_VIEWS

    def __init__(self, store, kind: str = "text", *, direct: bool = True):
        if kind not in self.VIEWS:
            raise ConfigError(f"user vector kind {kind!r}: expected one of {sorted(self.VIEWS)}")
        self.store = store
        self.view = self.VIEWS[kind]
        self._model_id: str | None = None
        self._direct = None
        if direct:
            reader = OnlineReader(store)
            self._direct = (reader, reader.view(self.view, (EMBEDDING, MODEL_ID)))

    def _read_direct(self, user_ids: list[str]) -> dict[str, list]:
        reader, read = self._direct
        return reader.read(read, user_ids)

    @property
    def model_id(self) -> str | None:
        return self._model_id

    def publish_version(self) -> tuple:
        """The view's materialisation intervals as the registry file records them now (a publish adds one);
        ``retrieval.HeldUserVectors`` re-reads its users when this changes."""
        view = self.store.get_feature_view(self.view)
        return tuple((a.isoformat(), b.isoformat()) for a, b in view.materialization_intervals)

    def get(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
        if self._direct is not None:
            got = self._read_direct(user_ids)
        else:
            refs = [ref(self.view, EMBEDDING), ref(self.view, MODEL_ID)]
            got = self.store.get_online_features(
                features=refs, entity_rows=[{"user_id": u} for u in user_ids], full_feature_names=True
            ).to_dict()
        values = got[full_name(self.view, EMBEDDING)]
        dim = next((len(v) for v in values if v is not None), 0)
        vecs, found = vectors(values, dim)
        ids = [m for m in got.get(full_name(self.view, MODEL_ID), []) if m]
        if ids:
            self._model_id = ids[0]
        return vecs, found, self._model_id or ""
