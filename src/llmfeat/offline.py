"""Point-in-time retrieval moved to the Feast adapter (``llmfeat.feast.offline``); this name stays for
existing imports."""

from llmfeat.feast.offline import ROW_ID, RetrievalError, historical_features  # noqa: F401
