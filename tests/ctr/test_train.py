"""CTR training: a leakage canary, and a short end-to-end run on MovieLens-100k that beats the base rate."""

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from llmfeat.core.tables import write_parquet
from llmfeat.feast.offline import historical_features

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_leakage_canary_is_not_available(pit_store, tmp_path):
    """A feature that copies each interaction's label, stamped one second after it, must never reach that
    interaction's own training row: at time t only canary rows with event_timestamp <= t exist."""
    from feast import FeatureView, Field
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
    from feast.types import Int32

    cfg, store = pit_store
    inter = pd.read_parquet(Path(cfg.paths.data_dir) / "canonical" / "interactions")
    canary = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "label_copy": inter["label"].astype("int32"),
            "event_timestamp": inter["event_ts"] + pd.Timedelta(seconds=1),
            "created_timestamp": inter["event_ts"] + pd.Timedelta(seconds=1),
        }
    )
    (tmp_path / "canary").mkdir()
    write_parquet(pa.Table.from_pandas(canary, preserve_index=False), tmp_path / "canary" / "part-0.parquet")
    view = FeatureView(
        name="label_canary",
        entities=[store.get_entity("user")],
        schema=[Field(name="label_copy", dtype=Int32)],
        source=SparkSource(
            name="label_canary",
            path=str(tmp_path / "canary"),
            file_format="parquet",
            timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp",
        ),  # fmt: skip
    )
    store.apply([view])
    try:
        rows = inter[["user_id", "item_id", "event_ts", "label"]].rename(
            columns={"event_ts": "event_timestamp"}
        )
        out = historical_features(store, rows, extra=["label_canary:label_copy"])
        got = out.set_index(["user_id", "item_id"])["label_canary__label_copy"]
        # each user's first interaction has no earlier canary; later ones see the *previous* label only
        assert pd.isna(got.loc[("U1", "A")]) and pd.isna(got.loc[("U2", "A")])
        assert got.loc[("U2", "C")] == 0  # the label of U2's earlier interaction (A), not its own (1)
        assert got.loc[("U1", "B")] == 1
    finally:
        store.delete_feature_view("label_canary")


def test_too_little_data_is_refused_before_any_work(pit_store):
    from llmfeat.core.config import load_config
    from llmfeat.ctr.train import TooLittleDataError, run_train

    cfg, _ = pit_store
    with pytest.raises(TooLittleDataError, match=r"only 4 labelled interactions .*min_interactions=500"):
        run_train(
            load_config(None, [f"paths.data_dir={cfg.paths.data_dir}"]),
            dt.date(2024, 1, 7),
            log=lambda _: None,
        )


def _train_cfg(movielens_store, *overrides: str):
    """The shared MovieLens feature store's config with its reports beside the data and ``overrides``."""
    from llmfeat.core.config import load_config

    data_dir = Path(movielens_store[0].paths.data_dir)
    return load_config(None, [f"paths.data_dir={data_dir}", f"paths.reports_dir={data_dir / 'reports'}",
                              "embed.backfill_every_days=7", *overrides])  # fmt: skip


def test_short_training_run_beats_the_base_rate(movielens_store):
    from llmfeat.ctr.train import run_train

    cfg = _train_cfg(movielens_store, "train.protocols=[temporal]", "train.models=[popularity, deep_ids_stats, deep_lm]",
                     "train.epochs=3")  # fmt: skip
    summary = run_train(cfg, dt.date(1998, 4, 23), log=lambda _: None)
    results = pd.DataFrame(summary["results"])
    overall = results[results["slice"] == "all"].set_index("model")
    assert set(overall.index) == {"popularity", "deep_ids_stats", "deep_lm"}
    assert (overall["logloss"] < overall["base_logloss"]).all(), overall[["logloss", "base_logloss"]]
    assert (overall["auc"] > 0.6).all()
    assert set(results["slice"]) >= {"all", "cold_user", "warm"}
    # artefacts: the model with its features and embedding model id; the report with its plots
    from llmfeat.ctr.train import run_dir_of

    run_dir = run_dir_of(
        Path(cfg.paths.data_dir) / "models" / "ctr" / "current.json"
    )  # relative: relocatable
    import torch

    model = torch.load(run_dir / "deep_lm.pt", weights_only=False)
    assert model["embedding_model_id"].startswith("all-MiniLM-L6-v2@") and model["feature_set"] == "lm"
    assert len(model["dense_names"]) == 3 * 384 + 5 + 19
    report = Path(summary["report"])
    assert "| deep_lm | all |" in report.read_text()
    assert (report.parent / "roc_calibration_temporal.png").is_file()
    assert (
        summary["protocols"]["temporal"]["train"]
        + summary["protocols"]["temporal"]["validation"]
        + summary["protocols"]["temporal"]["test"]
        == 100_000
    )

    # the multi-stage path on top: FAISS candidates -> online features -> this model -> ranked list
    from llmfeat.ctr.score import Scorer
    from llmfeat.retrieval.index import run_index
    from llmfeat.retrieval.retriever import Retriever

    run_index(cfg, dt.date(1998, 4, 23), log=lambda _: None)
    ranked = Scorer(cfg).recommend("1", k=5, candidates=50)
    assert len(ranked) == 5 and list(ranked["rank"]) == [1, 2, 3, 4, 5]
    assert ranked["ctr"].is_monotonic_decreasing and ranked["ctr"].between(0, 1).all()
    seen = set(Retriever.load(cfg).seen_items("1"))
    assert not seen & set(ranked["item_id"])


def test_a_refresh_night_trains_warm_on_the_first_protocol_and_points_at_the_full_report(movielens_store):
    """The nightly's refresh (train.evaluate_every_days): after a full evaluation, the next night fits the first
    protocol only, warm-started, and its report names the full one."""
    from llmfeat.ctr.train import models_dir, plan_evaluation, run_dir_of, run_train

    cfg = _train_cfg(movielens_store, "train.protocols=[temporal, leave_last_k]",
                     "train.models=[popularity, lr_lm, deep_lm]", "train.epochs=2")  # fmt: skip
    night = dt.date(1998, 4, 23)  # the one ingested snapshot: the "next night" is the same date again
    first = plan_evaluation(cfg, night, forced=True)
    assert first.kind == "full" and first.reason == "train was forced"
    full = run_train(cfg, night, log=lambda _: None, plan=first)
    assert full["evaluation"] == "full" and set(full["protocols"]) == {"temporal", "leave_last_k"}

    plan = plan_evaluation(cfg, night)
    assert plan.kind == "refresh" and plan.last_full["run_id"] == full["run_id"], plan
    refresh = run_train(cfg, night, log=lambda _: None, plan=plan)
    assert refresh["evaluation"] == "refresh" and list(refresh["protocols"]) == ["temporal"]
    assert refresh["warm_start"] == {"temporal/deep_lm": "warm"}  # from the full night's model
    # on the last train.refresh_window_days (30, the default) days only: fewer rows read back and fitted than the full run's
    assert refresh["frame"]["window_days"] == 30 and full["frame"]["window_days"] is None
    assert (
        refresh["rows"] < full["rows"]
        and refresh["frame"]["interactions_read"] < full["frame"]["interactions_read"]
    )
    assert refresh.rows_io["trained_on"] == refresh["rows"]
    replayed = refresh["frame"]["replayed_rows"]  # whole older days, up to train.replay_rows, train rows only
    assert 0 < replayed <= 30_000 and refresh["rows"] == refresh["frame"]["rows"] + replayed
    assert refresh["protocols"]["temporal"]["train"] > replayed
    t1 = {run["evaluation"]: run["protocols"]["temporal"]["t1"] for run in (full, refresh)}
    assert t1["refresh"] > t1["full"]  # the split's quantiles over the window
    # lr_lm is not in train.refresh_models: carried over unchanged, so the run stays complete for rankers
    assert refresh["carried_over"] == {"lr_lm": full["run_id"]}
    carried = Path(refresh["models"]["lr_lm"])
    assert carried.parent.name == refresh["run_id"]
    assert carried.read_bytes() == Path(full["models"]["lr_lm"]).read_bytes()
    assert refresh["last_full_evaluation"] == plan.last_full
    report = Path(refresh["report"]).read_text()
    assert "**Refresh night**" in report and plan.last_full["report"] in report
    assert "## Protocol: leave_last_k" not in report
    assert run_dir_of(models_dir(cfg) / "current.json").name == refresh["run_id"]  # the rankers take it
    assert (run_dir_of(models_dir(cfg) / "current.json") / "deep_lm.pt").is_file()
