"""Online reads straight from a Feast store's online store, and the stored protobuf values decoded to numpy.

``OnlineStore.online_read`` is the call ``get_online_features`` makes underneath; reading a view with it and
decoding the ``Value`` protos here skips the registry lookups and response building that dominate a small
lookup (BENCHMARKS.md, "Feast"). ``llmfeat.features.online`` builds the ranker's and retrieval's reads on this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from llmfeat.core.errors import ConfigError
from llmfeat.feast.names import USER_KEY, full_name

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
class ViewRead:
    """What to read of one feature view: the Feast FeatureView, its one join key, the feature names."""

    view: object
    join_key: str
    features: tuple[str, ...]

    @property
    def is_user(self) -> bool:
        return self.join_key == USER_KEY

    @property
    def full_names(self) -> list[str]:
        return [full_name(self.view.name, f) for f in self.features]


class OnlineReader:
    """Reads views of ``store`` from its online store, one ``online_read`` per view and id list."""

    def __init__(self, store):
        from feast.infra.online_stores.helpers import get_online_store_from_config

        self.store = store
        self._online_store = get_online_store_from_config(store.config.online_store)

    def view(self, name: str, features=None) -> ViewRead:
        """The read of view ``name``: ``features`` (names, in that order; those the view has), or all of them."""
        view = self.store.get_feature_view(name)
        if len(view.join_keys) != 1:
            raise ConfigError(f"feature view {view.name}: expected one join key, got {view.join_keys}")
        have = [f.name for f in view.features]
        wanted = tuple(have if features is None else [f for f in features if f in have])
        return ViewRead(view, view.join_keys[0], wanted)

    def service(self, name: str) -> list[ViewRead]:
        """One read per view of feature service ``name``, with the features the service projects."""
        service = self.store.get_feature_service(name)
        return [self.view(p.name, [f.name for f in p.features]) for p in service.feature_view_projections]

    def read(self, read: ViewRead, ids: list[str]) -> dict[str, list]:
        """Full feature name -> one value per id (None when the id or the value is missing)."""
        keys = [EntityKey(join_keys=[read.join_key], entity_values=[Value(string_val=str(i))]) for i in ids]
        rows = self._online_store.online_read(self.store.config, read.view, keys, list(read.features))
        return {
            full_name(read.view.name, name): [
                python_value(values.get(name)) if values else None for _, values in rows
            ]
            for name in read.features
        }

    def materialized(self, name: str) -> tuple:
        """View ``name``'s materialisation intervals as the registry file records them now (not its cache)."""
        view = self.store.get_feature_view(name)
        return tuple((i[0].isoformat(), i[1].isoformat()) for i in view.materialization_intervals)

    def registry_file(self) -> Path | None:
        """The store's registry when it is a local file (its stat tells when a publish changed it)."""
        reg = self.store.config.registry
        path = getattr(reg, "path", None) if not isinstance(reg, str) else reg
        if not path or "://" in str(path) or getattr(reg, "registry_type", "file") != "file":
            return None
        path = Path(path)
        return path if path.is_absolute() else Path(self.store.repo_path) / path
