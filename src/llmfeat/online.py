"""Online feature lookup for rankers: 1 user x N candidate items -> the model input matrix.

The features are those of the ``ranker`` feature service. They are read view by view straight from Feast's
online store (``OnlineStore.online_read``, the call ``get_online_features`` makes underneath): one read per
user view with 1 key, one per item view with the N keys, and the stored protobuf values decoded straight to
numpy. ``get_online_features(...).to_dict()`` on the same store returns the same numbers, but spends most of
a 100-item lookup on registry lookups, response building and converting 38,400 floats to Python objects and
back (BENCHMARKS.md, "Feast"); the test suite checks the two paths agree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from llmfeat.errors import ConfigError
from llmfeat.feature_vector import USER_MODEL_ID, FeatureMatrix, build_feature_matrix, vectors


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


LIST_DTYPES = {"float_list_val": np.float32, "double_list_val": np.float64, "int32_list_val": np.int32,
               "int64_list_val": np.int64, "bool_list_val": bool}  # fmt: skip


def python_value(value):
    """A stored Feast ``Value`` proto -> None, a Python scalar, or a numpy array for list values."""
    if value is None:
        return None
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    got = getattr(value, kind)
    if kind.endswith("_list_val"):
        return np.array(got.val, dtype=LIST_DTYPES.get(kind, object))
    return got


@dataclass(frozen=True)
class _ViewRead:
    view: object
    """The Feast FeatureView."""
    join_key: str
    features: tuple[str, ...]


class OnlineFeatures:
    """Reads the ``ranker`` service's features for one user and their candidate items."""

    def __init__(self, store, dim: int, service: str = "ranker"):
        from feast.infra.online_stores.helpers import get_online_store_from_config

        self.store = store
        self.dim = dim
        self._online_store = get_online_store_from_config(store.config.online_store)
        self.user_views: list[_ViewRead] = []
        self.item_views: list[_ViewRead] = []
        for projection in store.get_feature_service(service).feature_view_projections:
            view = store.get_feature_view(projection.name)
            if len(view.join_keys) != 1:
                raise ConfigError(f"feature view {view.name}: expected one join key, got {view.join_keys}")
            read = _ViewRead(view, view.join_keys[0], tuple(f.name for f in projection.features))
            (self.user_views if read.join_key == "user_id" else self.item_views).append(read)

    def _read(self, read: _ViewRead, ids: list[str]) -> dict[str, list]:
        keys = [EntityKey(join_keys=[read.join_key], entity_values=[Value(string_val=str(i))]) for i in ids]
        rows = self._online_store.online_read(self.store.config, read.view, keys, list(read.features))
        return {
            f"{read.view.name}__{name}": [
                python_value(values.get(name)) if values else None for _, values in rows
            ]
            for name in read.features
        }

    def fetch(self, user_id: str, item_ids: list[str]) -> tuple[dict, dict]:
        """The raw feature values by full name (``view__feature``): (user features, 1 row), (item features,
        one row per item id). Missing values are None; list values are numpy arrays."""
        user: dict[str, list] = {}
        for read in self.user_views:
            user.update(self._read(read, [user_id]))
        items: dict[str, list] = {}
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
        columns = self.columns(user_id, item_ids)
        features = build_feature_matrix(columns, at or dt.datetime.now(dt.UTC), self.dim, len(item_ids))
        model_id = next(iter(columns.get(USER_MODEL_ID, [])), None)
        return RankerFeatures(user_id, item_ids, features, model_id)


class FeastUserVectors:
    """User query vectors for retrieval from the Feast online store (``kind``: text or history); implements
    ``retrieval.UserVectorSource``. The model id is learnt from the vectors fetched."""

    VIEWS = {"text": "user_text_embedding", "history": "user_history_embedding"}

    def __init__(self, store, kind: str = "text"):
        if kind not in self.VIEWS:
            raise ConfigError(f"user vector kind {kind!r}: expected one of {sorted(self.VIEWS)}")
        self.store = store
        self.view = self.VIEWS[kind]
        self._model_id: str | None = None

    @property
    def model_id(self) -> str | None:
        return self._model_id

    def get(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
        refs = [f"{self.view}:embedding", f"{self.view}:model_id"]
        got = self.store.get_online_features(
            features=refs, entity_rows=[{"user_id": u} for u in user_ids], full_feature_names=True
        ).to_dict()
        values = got[f"{self.view}__embedding"]
        dim = next((len(v) for v in values if v is not None), 0)
        vecs, found = vectors(values, dim)
        ids = [m for m in got.get(f"{self.view}__model_id", []) if m]
        if ids:
            self._model_id = ids[0]
        return vecs, found, self._model_id or ""
