"""Warm start of the CTR models (llmfeat.ctr.warm_start): weights carried over from the previous night's model,
ids mapped by id, and a cold start (with the reason) wherever a warm one could leak or mislead."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from llmfeat.ctr import warm_start
from llmfeat.ctr.data import Vocab
from llmfeat.ctr.models import CtrInputs, DeepCTR, TrainConfig, fit
from llmfeat.ctr.train import _save_model

KW = {"n_users": 3, "n_items": 2, "dense_dim": 6}
NAMES = [f"d{i}" for i in range(6)]


def _previous(tmp_path, users: Vocab, items: Vocab, model_id="m1"):
    torch.manual_seed(0)
    model = DeepCTR(**KW)
    path = _save_model(tmp_path, "deep_x", model, "ids_stats", {"names": NAMES, "dim": 0}, users, items, model_id,
                       [], KW)  # fmt: skip
    return model, path


def test_weights_and_ids_carried_over_by_id(tmp_path):
    old_users, items = Vocab.fit(["u1", "u2", "u3"]), Vocab.fit(["a", "b"])
    old, path = _previous(tmp_path, old_users, items)
    users = Vocab.fit(["u0", "u2", "u3", "u9"])  # u1 gone, u0 and u9 new: indices shift
    kwargs = {**KW, "n_users": len(users)}
    torch.manual_seed(1)
    new = DeepCTR(**kwargs)
    fresh = new.user_emb.weight.detach().clone()
    why = warm_start.load_into(new, path, kwargs=kwargs, feature_set="ids_stats", dense_names=NAMES, users=users,
                               items=items, embedding_model_id="m1")  # fmt: skip
    assert why is None
    got, was = new.user_emb.weight.detach(), old.user_emb.weight.detach()
    for uid in ("u2", "u3"):
        assert torch.equal(got[users.index[uid]], was[old_users.index[uid]])
    for uid in ("u0", "u9"):  # new ids keep their fresh rows
        assert torch.equal(got[users.index[uid]], fresh[users.index[uid]])
    assert torch.equal(got[0], was[0])  # the learnt unknown-id row
    assert torch.equal(new.head.weight, old.head.weight) and torch.equal(
        new.item_emb.weight, old.item_emb.weight
    )

    # and it trains from there
    rng = np.random.default_rng(0)
    data = CtrInputs(rng.normal(size=(64, 6)).astype(np.float32), rng.integers(0, 5, 64), rng.integers(0, 3, 64),
                     rng.integers(0, 2, 64).astype(np.float32))  # fmt: skip
    result = fit(new, data, data, TrainConfig(epochs=2, batch_size=16, patience=2))
    assert len(result.history) == 2 and not torch.equal(result.model.head.weight, old.head.weight)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"embedding_model_id": "m2"}, "embedding model"),
        ({"dense_names": NAMES[:-1] + ["other"]}, "feature set"),
        ({"kwargs": {**KW, "id_dim": 8}}, "kwargs"),
        ({"feature_set": "tfidf"}, "TF-IDF"),
    ],
)
def test_starts_cold_when_the_previous_model_does_not_fit(tmp_path, change, reason):
    users, items = Vocab.fit(["u1", "u2", "u3"]), Vocab.fit(["a", "b"])
    _, path = _previous(tmp_path, users, items)
    args = {"kwargs": KW, "feature_set": "ids_stats", "dense_names": NAMES, "users": users, "items": items,
            "embedding_model_id": "m1"} | change  # fmt: skip
    model = DeepCTR(**args["kwargs"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert reason in warm_start.load_into(model, path, **args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_only_the_temporal_protocol_with_no_later_previous_split():
    prev = {"protocols": {"temporal": {"t1": "1998-03-01T00:00:00+00:00", "t2": "1998-03-20T00:00:00+00:00"}}}
    now = {"t1": "1998-03-02T00:00:00+00:00", "t2": "1998-03-21T00:00:00+00:00"}
    assert warm_start.eligible(prev, "temporal", now) is None
    assert "leave_last_k" in warm_start.eligible(prev, "leave_last_k", {})
    assert "after tonight" in warm_start.eligible(
        prev, "temporal", {"t1": now["t1"], "t2": "1998-03-19T00:00:00+00:00"}
    )
    assert warm_start.eligible(None, "temporal", now) == "no previous models"


def test_a_warm_fit_keeps_the_ids_without_rows_tonight(tmp_path):
    """A refresh that fits a sample of the history: ids of the previous model without a row tonight stay in the
    vocabulary with their learnt rows, untouched by the fit (Adam's L2 term would otherwise zero them); a model
    that started cold gives them the learnt unknown-id row."""
    old_users, items = Vocab.fit(["u1", "u2", "u3"]), Vocab.fit(["a", "b"])
    old, _ = _previous(tmp_path, old_users, items)
    with torch.no_grad():
        old.user_emb.weight.mul_(50)  # learnt rows, far from the 0.01 initialisation
    _save_model(
        tmp_path, "deep_x", old, "ids_stats", {"names": NAMES, "dim": 0}, old_users, items, "m1", [], KW
    )
    ids = {
        "user_vocab": pd.Series(["u2", "u7"]),
        "item_vocab": pd.Series(["a", "b"]),
    }  # tonight: u1, u3 absent
    vocabs = warm_start.carried_vocab(tmp_path, ids)
    assert sorted(vocabs["user_vocab"].index) == ["u1", "u2", "u3", "u7"]
    assert sorted(vocabs["item_vocab"].index) == ["a", "b"]
    fixed = warm_start.fixed_rows(vocabs, ids)
    users = vocabs["user_vocab"]
    assert fixed["user_emb.weight"].tolist() == sorted([users.index["u1"], users.index["u3"]])
    assert "item_emb.weight" not in fixed  # every item has rows tonight

    kwargs = {**KW, "n_users": len(users)}
    new = DeepCTR(**kwargs)
    assert warm_start.load_into(new, tmp_path / "deep_x.pt", kwargs=kwargs, feature_set="ids_stats",
                                dense_names=NAMES, users=users, items=vocabs["item_vocab"],
                                embedding_model_id="m1") is None  # fmt: skip
    rng = np.random.default_rng(0)
    present = np.array([users.index["u2"], users.index["u7"]])
    data = CtrInputs(rng.normal(size=(64, 6)).astype(np.float32), rng.choice(present, 64), rng.integers(1, 3, 64),
                     rng.integers(0, 2, 64).astype(np.float32))  # fmt: skip
    cfg = TrainConfig(epochs=3, batch_size=8, patience=3, weight_decay=1e-3)
    held = fit(copy.deepcopy(new), data, data, cfg, fixed_rows=fixed).model.user_emb.weight.detach()
    free = fit(copy.deepcopy(new), data, data, cfg).model.user_emb.weight.detach()
    was = old.user_emb.weight.detach()
    for uid in ("u1", "u3"):
        assert torch.equal(held[users.index[uid]], was[old_users.index[uid]])
        # the check can fail: without the held rows Adam's L2 step moves them by about lr per step
        assert not torch.allclose(free[users.index[uid]], was[old_users.index[uid]], atol=1e-3)
    assert not torch.equal(held[users.index["u2"]], was[old_users.index["u2"]])  # rows with data still learn

    cold = DeepCTR(**kwargs)
    warm_start.as_unknown(cold, fixed)
    for uid in ("u1", "u3"):
        assert torch.equal(cold.user_emb.weight[users.index[uid]], cold.user_emb.weight[0])
