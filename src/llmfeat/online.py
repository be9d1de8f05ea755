"""Online feature lookup for rankers: 1 user x N candidate items -> the model input matrix.

One Feast call for the user's views (1 entity row) and one for the items' views (N rows), instead of one
call with the user repeated N times; the features fetched are those of the ``ranker`` feature service (its
stats come packed, one array per entity, which keeps a 100-item lookup within a few milliseconds).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from llmfeat.feature_vector import (
    HISTORY_CLICKS,
    ITEM_STATS,
    ITEM_TEXT,
    USER_STATS,
    USER_TEXT,
    FeatureMatrix,
    assemble,
    epoch_days,
    ranker_layout,
    stats_block,
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


class OnlineFeatures:
    """Reads the ``ranker`` service's features for one user and their candidate items."""

    def __init__(self, store, dim: int, service: str = "ranker"):
        self.store = store
        self.dim = dim
        self.user_refs: list[str] = []
        self.item_refs: list[str] = []
        for projection in store.get_feature_service(service).feature_view_projections:
            view = store.get_feature_view(projection.name)
            refs = [f"{projection.name}:{f.name}" for f in projection.features]
            (self.user_refs if "user_id" in view.join_keys else self.item_refs).extend(refs)

    def fetch(self, user_id: str, item_ids: list[str]) -> tuple[dict, dict]:
        """The raw feature values: (user features, 1 row), (item features, one row per item id)."""
        user = self.store.get_online_features(
            features=self.user_refs, entity_rows=[{"user_id": user_id}], full_feature_names=True
        ).to_dict()
        items = self.store.get_online_features(
            features=self.item_refs, entity_rows=[{"item_id": i} for i in item_ids], full_feature_names=True
        ).to_dict()
        return user, items

    def ranker_features(
        self, user_id: str, item_ids: list[str], at: dt.datetime | None = None
    ) -> RankerFeatures:
        """The feature matrix for (user_id, each item) in the order of ``item_ids``, with masks."""
        item_ids = list(item_ids)
        n = len(item_ids)
        user, items = self.fetch(user_id, item_ids)
        user_vec, user_known = vectors(user.get(USER_TEXT, [None]), self.dim)
        item_vec, item_known = vectors(items.get(ITEM_TEXT, [None] * n), self.dim)
        now = epoch_days(at or dt.datetime.now(dt.UTC), n)
        stats = stats_block(
            items.get(ITEM_STATS, [None] * n),
            user.get(USER_STATS, [None]) * n,
            user.get(HISTORY_CLICKS, [None]) * n,
            now,
        )
        matrix = assemble(np.repeat(user_vec, n, axis=0), item_vec, stats)
        features = FeatureMatrix(matrix, ranker_layout(self.dim), np.repeat(user_known, n), item_known)
        model_id = (user.get("user_text_embedding__model_id") or [None])[0]
        return RankerFeatures(user_id, item_ids, features, model_id)


class FeastUserVectors:
    """User query vectors for retrieval from the Feast online store (``kind``: text or history); implements
    ``retrieval.UserVectorSource``. The model id is learnt from the vectors fetched."""

    VIEWS = {"text": "user_text_embedding", "history": "user_history_embedding"}

    def __init__(self, store, kind: str = "text"):
        if kind not in self.VIEWS:
            raise ValueError(f"user vector kind {kind!r}: expected one of {sorted(self.VIEWS)}")
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
