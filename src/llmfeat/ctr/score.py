"""The multi-stage path: retrieve candidates from FAISS, fetch their online features from Feast, score
them with the trained CTR model, rank.

The model is the one ``current.json`` points at (``llmfeat train``); its feature set, id vocabularies and
embedding model id travel with it, and scoring refuses features made by another embedding model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.core.config import Config
from llmfeat.core.errors import ScoringModelError  # noqa: F401 - re-exported
from llmfeat.ctr.data import Vocab, build_dense
from llmfeat.ctr.models import CtrInputs, DeepCTR, LogisticRegression, predict
from llmfeat.features.feature_vector import USER_MODEL_ID


@dataclass
class LoadedModel:
    name: str
    model: object
    feature_set: str
    embedding_dim: int
    embedding_model_id: str | None
    users: Vocab
    items: Vocab
    run_dir: Path


def load_model(cfg: Config, name: str = "deep_lm") -> LoadedModel:
    import torch

    from llmfeat.ctr.train import models_dir, run_dir_of

    pointer = models_dir(cfg) / "current.json"
    if not pointer.is_file():
        raise ScoringModelError(f"no trained CTR model under {models_dir(cfg)}: run `llmfeat train` first")
    run_dir = run_dir_of(pointer)
    path = run_dir / f"{name}.pt"
    if not path.is_file():
        have = sorted(p.stem for p in run_dir.glob("*.pt"))
        raise ScoringModelError(f"model {name!r} is not in {run_dir} (have: {', '.join(have) or 'none'})")
    blob = torch.load(path, weights_only=False, map_location="cpu")
    if blob["feature_set"] == "tfidf":
        raise ScoringModelError(
            "the TF-IDF baseline is not served online (its text vectors are not in Feast)"
        )
    if blob["feature_set"] == "adapted":
        raise ScoringModelError(
            "deep_adapted is not served online yet: its adapter is trained inside `llmfeat train` (before the "
            "split's T1), not the published `adapted` set's (docs/adapt.md, \"CTR\")"
        )
    cls = {"DeepCTR": DeepCTR, "LogisticRegression": LogisticRegression}[blob["class"]]
    model = cls(**blob["kwargs"])
    model.load_state_dict(blob["state_dict"])
    return LoadedModel(name, model.eval(), blob["feature_set"], blob["embedding_dim"], blob["embedding_model_id"],
                       Vocab(blob["user_vocab"]), Vocab(blob["item_vocab"]), run_dir)  # fmt: skip


class Scorer:
    """retrieve -> online features -> CTR model -> ranked list, for one user at a time."""

    def __init__(self, cfg: Config, model: str = "deep_lm"):
        from llmfeat.feast.store import open_store
        from llmfeat.features.online import OnlineFeatures
        from llmfeat.retrieval.retriever import Retriever

        self.cfg = cfg
        self.model = load_model(cfg, model)
        store = open_store(cfg)
        self.features = OnlineFeatures(store, dim=self.model.embedding_dim)
        self.retriever = Retriever.load(cfg)
        if self.model.embedding_model_id and self.retriever.model_id != self.model.embedding_model_id:
            raise ScoringModelError(
                f"the CTR model was trained on {self.model.embedding_model_id} features but the published index holds "
                f"{self.retriever.model_id}: retrain, or switch embed.embedding_set back"
            )

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        candidates: int = 100,
        categories: list[str] | None = None,
        at: dt.datetime | None = None,
    ) -> pd.DataFrame:
        found = self.retriever.for_user(user_id, k=candidates, categories=categories)
        item_ids = list(found.ids)
        if not item_ids:
            return pd.DataFrame(columns=["rank", "item_id", "title", "ctr", "retrieval_score", "because"])
        columns = self.features.columns(user_id, item_ids)
        model_ids = {m for m in columns.get(USER_MODEL_ID, []) if m}
        if self.model.embedding_model_id and model_ids and model_ids != {self.model.embedding_model_id}:
            raise ScoringModelError(
                f"online user features come from {model_ids}, the model from {self.model.embedding_model_id}"
            )
        n = len(item_ids)
        when = at or dt.datetime.now(dt.UTC)
        dense = build_dense(self.model.feature_set, columns, when, self.model.embedding_dim, n)
        inputs = CtrInputs(
            dense.astype(np.float32),
            self.model.users.encode([user_id] * n),
            self.model.items.encode(item_ids),
            np.zeros(n, np.float32),
        )
        ctr = predict(self.model.model, inputs, device="cpu")
        out = pd.DataFrame({"item_id": item_ids, "ctr": ctr, "retrieval_score": found.scores})
        if getattr(found, "titles", None) is not None:
            out["title"] = list(found.titles)
        out = out.sort_values("ctr", ascending=False, kind="stable").head(k).reset_index(drop=True)
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        # "Because you liked ...": the liked history items nearest to each recommendation.
        out["because"] = self.retriever.explain(user_id, out["item_id"].tolist(), self.cfg.bandit.explain_n)
        return out
