"""llmfeat: text -> language-model embeddings -> recommender features (Spark, Feast, FAISS).

The public Python API; each name is imported on first use, so ``import llmfeat`` stays fast and pulls in
neither torch nor Spark nor Feast::

    import llmfeat

    cfg = llmfeat.load_config(overrides=["paths.data_dir=var/data", "serve.user_source=parquet"])
    print(llmfeat.Retriever.load(cfg).similar_items("50", k=5).titles)

(README.md "Python API" has the same example with the encoder.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "llmfeat.core.config",
    "load_config": "llmfeat.core.config",
    "EncoderSpec": "llmfeat.embedding.encoder",
    "TextEncoder": "llmfeat.embedding.encoder",
    "default_model_dir": "llmfeat.embedding.encoder",
    "Retriever": "llmfeat.retrieval.retriever",
    "OnlineFeatures": "llmfeat.features.online",
    "Scorer": "llmfeat.ctr.score",
    "run_nightly": "llmfeat.nightly",
    "LlmfeatError": "llmfeat.core.errors",
    "ConfigError": "llmfeat.core.errors",
    "InputError": "llmfeat.core.errors",
    "ModelMismatchError": "llmfeat.core.errors",
    "LockedError": "llmfeat.core.errors",
    "NotFoundError": "llmfeat.core.errors",
    "ExitCode": "llmfeat.core.errors",
}

__all__ = [
    "Config",
    "ConfigError",
    "EncoderSpec",
    "ExitCode",
    "InputError",
    "LlmfeatError",
    "LockedError",
    "ModelMismatchError",
    "NotFoundError",
    "OnlineFeatures",
    "Retriever",
    "Scorer",
    "TextEncoder",
    "default_model_dir",
    "load_config",
    "run_nightly",
]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from llmfeat.core.config import Config, load_config
    from llmfeat.core.errors import (
        ConfigError,
        ExitCode,
        InputError,
        LlmfeatError,
        LockedError,
        ModelMismatchError,
        NotFoundError,
    )
    from llmfeat.ctr.score import Scorer
    from llmfeat.embedding.encoder import EncoderSpec, TextEncoder, default_model_dir
    from llmfeat.features.online import OnlineFeatures
    from llmfeat.nightly import run_nightly
    from llmfeat.retrieval.retriever import Retriever


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmfeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
