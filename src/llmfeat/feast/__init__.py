"""The Feast adapter: the one place llmfeat touches Feast's API and its protobufs.

- ``names``: every entity, view, feature, service and table name, and the stats windows (no imports; the
  repository definitions in ``feature_repo/features.py`` import it too);
- ``store``: the effective config of a data directory's store, opening it (writes nothing but a registry
  rebase after a move), the portable feature_store.yaml ``publish`` writes, loading the definitions;
- ``online``: online reads straight from the online store, stored protobuf values decoded to numpy;
- ``offline``: point-in-time retrieval (``get_historical_features``) for training frames.

Importing this package imports nothing from Feast; each module imports it when used. Within the package
``import feast`` is absolute (Python 3), so the name of this subpackage does not shadow the library.
"""
