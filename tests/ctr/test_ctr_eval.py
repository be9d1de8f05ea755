"""CTR with adapted vectors (src/llmfeat/ctr/evaluate.py): the leakage canary of the per-origin features, and the
comparison end to end on a tiny input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from llmfeat.ctr import evaluate as C  # noqa: E402
from llmfeat.ctr.models import TrainConfig  # noqa: E402
from llmfeat.features.feature_vector import ITEM_TEXT  # noqa: E402
from llmfeat.retrieval import evaluate as E  # noqa: E402
from tests.retrieval.test_evaluate import synthetic_data  # noqa: E402

SMALL = {"dim": 8, "hidden": 16, "layers": 2, "epochs": 3, "patience": 2, "batch_size": 32, "negatives": 16,
         "lr": 1e-2, "weight_decay": 0.0, "half_life_days": None, "seed": 3, "device": "cpu", "threads": 1,
         "temperature": 0.2}  # fmt: skip


def frame_of(data: E.EvalData) -> pd.DataFrame:
    """A training frame of every interaction, with the item's frozen vector as its Feast column would be
    (no stats columns: they count as "no activity")."""
    inter = data.inter
    return pd.DataFrame({
        "user_id": data.user_ids[inter["u"].to_numpy()].astype(str),
        "item_id": data.item_ids[inter["i"].to_numpy()].astype(str),
        "event_timestamp": pd.to_datetime(inter["ts"]).dt.tz_localize("UTC"),
        "label": inter["label"].to_numpy(np.int64),
        ITEM_TEXT: list(data.item_vecs[inter["i"].to_numpy()]),
    })  # fmt: skip


def _scramble_from(data: E.EvalData, cut: np.datetime64, seed: int = 5) -> E.EvalData:
    """Every event at or after ``cut`` replaced by garbage clicks at the same times, plus clicks exactly at it."""
    rng = np.random.default_rng(seed)
    inter = data.inter.copy()
    m = inter["ts"].to_numpy() >= cut
    inter.loc[m, "u"] = rng.integers(0, data.n_users, int(m.sum()))
    inter.loc[m, "i"] = rng.integers(0, data.n_items, int(m.sum()))
    inter.loc[m, "label"] = 1
    at_cut = pd.DataFrame({"u": [0, 1, 2], "i": [3, 4, 5], "ts": [cut] * 3, "label": np.int8(1)})
    inter = pd.concat([inter, at_cut], ignore_index=True).sort_values(["ts", "u", "i"], kind="stable")
    return E.EvalData(data.user_ids, data.item_ids, inter.reset_index(drop=True), data.item_vecs, None,
                      data.model_id)  # fmt: skip


def test_per_origin_features_never_include_an_event_at_or_after_the_cut():
    """Leakage canary. The adapter of an origin reads nothing at or after t_val; a row of day D reads nothing
    at or after D 00:00. Scramble everything from a day D inside the test window on (and add clicks at D 00:00):
    the adapter's weights and every feature of the rows of D and before must not move; the rows after D must
    (else the canary is blind)."""
    data = synthetic_data(2, n_users=60, n_items=40, days=90)
    origin = E.make_origins(data.inter["ts"].to_numpy(), 2, 0.4)[0]
    frame = frame_of(data)
    res_a = C.origin_adapter(data, origin.t_val, SMALL, validation_days=7, select_k=5)
    # the adapter's weights: everything at or after t_val is garbage, the weights are the same
    late_val = C.origin_adapter(_scramble_from(data, np.datetime64(E._naive(origin.t_val))), origin.t_val, SMALL,
                                validation_days=7, select_k=5)  # fmt: skip
    assert res_a.model.checksum() == late_val.model.checksum()
    # the features of each row: day D reads the graph strictly before D
    days = np.unique(C.row_days(frame))
    cut = days[len(days) * 3 // 4]
    assert cut > np.datetime64(E._naive(origin.t_test))
    scrambled = _scramble_from(data, cut)
    fa = C.adapted_features(data, res_a.model, frame)
    fb = C.adapted_features(scrambled, res_a.model, frame)
    before = C.row_days(frame) <= cut  # the rows of the cut day itself read only what precedes it
    assert (C.row_days(frame) == cut).any() and (~before).any()
    np.testing.assert_array_equal(fa.user[before], fb.user[before])
    np.testing.assert_array_equal(fa.item[before], fb.item[before])
    np.testing.assert_array_equal(fa.scalars[before], fb.scalars[before])
    assert not np.array_equal(fa.scalars[~before], fb.scalars[~before]), "the canary cannot see anything"
    # recent popularity by hand for one row: the item's clicks in the 7 days before its day
    r = int(np.nonzero(before)[0][-1])
    day = C.row_days(frame)[r]
    i = int(np.nonzero(data.item_ids == frame["item_id"].iloc[r])[0][0])
    ts = data.inter["ts"].to_numpy()
    want = ((data.inter["i"] == i) & (data.inter["label"] == 1) & (ts < day)
            & (ts >= day - np.timedelta64(7, "D"))).sum()  # fmt: skip
    assert fa.scalars[r, 2] == pytest.approx(np.log1p(want))


def test_comparison_runs_end_to_end_on_a_tiny_input(tmp_path):
    data = synthetic_data(3, n_users=60, n_items=40, days=90)
    frame = frame_of(data)
    train_cfg = TrainConfig(epochs=2, batch_size=64, patience=1, device="cpu")
    kw = {
        "origins": 2,
        "span": 0.4,
        "variants": list(C.VARIANTS),
        "seeds": [1, 2],
        "adapter_params": SMALL,
        "validation_days": 7,
        "select_k": 5,
        "train_cfg": train_cfg,
        "draws": 50,
        "log": lambda m: None,
    }
    rep = C.run_ctr_eval(data, frame, save_dir=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["origin-0.pkl", "origin-1.pkl"]
    # saved origins are read back, not run again: the same report from garbage data
    again = C.run_ctr_eval(
        _scramble_from(data, data.inter["ts"].to_numpy()[0]), frame, save_dir=tmp_path, **kw
    )
    for key in ("table", "differences"):  # (NaN AUCs of empty cold slices: compared as equal)
        pd.testing.assert_frame_equal(pd.DataFrame(again[key]), pd.DataFrame(rep[key]))
    assert len(rep["origins"]) == 2 and all(o["adapter"]["best_epoch"] >= 1 for o in rep["origins"])
    table = pd.DataFrame(rep["table"])
    assert set(table["variant"]) == set(C.VARIANTS) and set(table["seed"]) == {1, 2}
    assert table[table["slice"] == "all"]["auc"].between(0, 1).all()
    diffs = [d for d in rep["differences"] if d["slice"] == "all"]
    assert {d["variant"] for d in diffs} == set(C.VARIANTS) - {"ids_stats"}
    for d in diffs:
        assert d["runs"] == 4 and d["t_lo"] <= d["diff"] <= d["t_hi"] and d["boot_lo"] <= d["boot_hi"]
    md = C.markdown(rep)
    assert "adapted" in md and "bootstrap" in md
    # the test rows of each origin are its test window, and their cold items had no click before t_test
    for o in rep["origins"]:
        assert o["rows"]["test"] > 0 and 0 <= o["cold_rows"] <= o["rows"]["test"]


def test_unknown_variant_is_a_config_error():
    from llmfeat.core.errors import ConfigError

    data = synthetic_data(3, n_users=30, n_items=20, days=60)
    with pytest.raises(ConfigError):
        C.run_ctr_eval(data, frame_of(data), origins=2, span=0.4, variants=["ids_stats", "nope"], seeds=[1],
                       adapter_params=SMALL, validation_days=7, select_k=5, train_cfg=TrainConfig())  # fmt: skip


def test_train_fits_deep_adapted_on_the_temporal_split_and_skips_it_with_a_reason_otherwise(tmp_path):
    """`llmfeat train` with `deep_adapted`: trained and reported on the temporal split (its adapter trained
    before T1), skipped with its reason on leave-last-k; the saved model names its features; scoring refuses
    it (not served online yet)."""
    import pyarrow as pa
    import torch

    from llmfeat.core import tables
    from llmfeat.core.errors import ScoringModelError
    from llmfeat.ctr.score import load_model
    from llmfeat.ctr.train import run_train
    from llmfeat.data import schemas
    from tests.embedding.test_adapt import _adapt_cfg, _adapt_data_dir

    syn, as_of = _adapt_data_dir(tmp_path)
    root = syn.data_dir / "canonical" / "interactions"
    inter = pd.read_parquet(tables.snapshot_dir(root, as_of))
    inter["label"] = (np.random.default_rng(0).random(len(inter)) < 0.6).astype(
        "int8"
    )  # clicks and non-clicks
    tables.write_snapshot(
        root, as_of, pa.Table.from_pandas(inter, schema=schemas.INTERACTIONS, preserve_index=False)
    )
    vec = dict(zip(syn.item_ids, syn.vectors, strict=True))
    frame = pd.DataFrame({"user_id": inter["user_id"], "item_id": inter["item_id"],
                          "event_timestamp": pd.to_datetime(inter["event_ts"], utc=True), "label": inter["label"],
                          "impression_id": None, ITEM_TEXT: [vec[i] for i in inter["item_id"]],
                          "item_text_embedding__model_id": "test-model@0001"})  # fmt: skip
    cfg = _adapt_cfg(syn.data_dir, "train.models=[deep_ids_stats, deep_adapted]", "train.protocols=[temporal, leave_last_k]",
                     "train.epochs=2", "train.min_interactions=10", "train.device=cpu", "evaluate.select_k=5",
                     f"paths.reports_dir={tmp_path / 'reports'}")  # fmt: skip
    s = run_train(cfg, as_of, log=lambda m: None, frame=frame)
    assert "temporal" in s["skipped"]["leave_last_k/deep_adapted"]
    got = {(r["protocol"], r["model"]) for r in s["results"] if r["slice"] == "all"}
    assert ("temporal", "deep_adapted") in got and ("leave_last_k", "deep_adapted") not in got
    blob = torch.load(s["models"]["deep_adapted"], weights_only=False)
    assert blob["feature_set"] == "adapted" and len(blob["dense_names"]) == blob["kwargs"]["dense_dim"]
    with pytest.raises(ScoringModelError, match="not served online"):
        load_model(cfg, "deep_adapted")


def test_an_origin_saved_under_the_old_flat_module_paths_still_loads(tmp_path):
    """``--save-dir`` files of a long run written before the package split name ``llmfeat.ctr_eval`` and
    ``llmfeat.evaluate``; they load into today's classes."""
    import pickle

    ts = pd.Timestamp("2024-01-01", tz="UTC")
    run = C.OriginRun(
        E.Origin(0, ts, ts, ts), np.array([0, 1]), np.array([True, False]), {("a", 1): [0.5]}, {}
    )
    old = pickle.dumps(run, protocol=0)  # text GLOBAL opcodes: module paths can be rewritten in place
    old = old.replace(b"llmfeat.ctr.evaluate\n", b"llmfeat.ctr_eval\n")
    old = old.replace(b"llmfeat.retrieval.evaluate\n", b"llmfeat.evaluate\n")
    assert b"llmfeat.ctr_eval\n" in old and b"llmfeat.evaluate\n" in old
    (tmp_path / "origin-0.pkl").write_bytes(old)
    loaded = C.load_saved_origin(tmp_path / "origin-0.pkl")
    assert isinstance(loaded, C.OriginRun) and isinstance(loaded.origin, E.Origin)
    assert (
        loaded.origin.t_end == ts and loaded.labels.tolist() == [0, 1] and loaded.probs == {("a", 1): [0.5]}
    )
