"""The Spark embedding job on the real MovieLens-100k: counts, dims, norms, point-in-time user texts,
incremental reuse, a changed text re-encoded, mixed model ids refused, empty texts quarantined."""

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmfeat.core import tables
from llmfeat.core.config import load_config
from llmfeat.data.ingest import run_ingest
from llmfeat.data.texts import history_text, render
from llmfeat.embedding.embed import ModelMismatchError, embedding_paths, run_embed

pytestmark = [pytest.mark.spark, pytest.mark.slow]
AS_OF = dt.date(1998, 4, 23)


def read(path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


@pytest.fixture(scope="module")
def state(tmp_path_factory, movielens_dir, movielens_embedded):
    from tests.conftest import ML_OVERRIDES, copy_data_dir

    data_dir = copy_data_dir(movielens_embedded, tmp_path_factory.mktemp("embed") / "data")
    cfg = load_config(
        None, [f"paths.data_dir={data_dir}", f"ingest.source_path={movielens_dir}", *ML_OVERRIDES]
    )
    return {
        "cfg": cfg,
        "paths": embedding_paths(data_dir, "default"),
        "first": read_manifest(data_dir),
        "data_dir": data_dir,
    }


def read_manifest(data_dir):
    """The manifest of the one embed run that produced the shared copy."""
    import json

    (only,) = embedding_paths(data_dir, "default").manifests.glob("*.json")
    return json.loads(only.read_text())


def test_item_rows_dims_norms(state):
    items = read(state["paths"].item_text)
    assert len(items) == 1682 and items["item_id"].is_unique
    vecs = np.stack(items["embedding"].to_numpy())
    assert vecs.shape == (1682, 384) and (items["dim"] == 384).all()
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert items["model_id"].nunique() == 1 and items["model_id"].iloc[0].startswith("all-MiniLM-L6-v2@")
    c = state["first"]["counts"]["items"]
    assert c["written"] == 1682 and c["encoded"] + c["reused"] == 1682 and c["quarantined"] == 0
    # identical texts within a run are encoded once
    assert c["encoded"] == items["content_hash"].nunique()


def test_user_texts_are_point_in_time(state, movielens_dir):
    users = read(state["paths"].user_text)
    m = state["first"]
    assert len(users) == m["counts"]["users"]["written"] > 943
    assert np.allclose(np.linalg.norm(np.stack(users["embedding"].to_numpy()), axis=1), 1.0, atol=1e-5)
    # recompute a sample of texts with pandas straight from the canonical tables
    canon = tables.canonical_dir(state["data_dir"], "interactions")
    inter = read(tables.snapshot_dir(canon, AS_OF))
    titles = read(tables.snapshot_dir(tables.canonical_dir(state["data_dir"], "items"), AS_OF)).set_index(
        "item_id"
    )["title"]
    profiles = read(tables.snapshot_dir(tables.canonical_dir(state["data_dir"], "users"), AS_OF)).set_index(
        "user_id"
    )
    clicks = inter[inter["label"] == 1]
    cfg = state["cfg"].embed
    for row in users.sample(60, random_state=0).itertuples():
        s = (
            pd.Timestamp(row.event_timestamp).tz_localize("UTC")
            if pd.Timestamp(row.event_timestamp).tzinfo is None
            else row.event_timestamp
        )
        mine = clicks[(clicks["user_id"] == row.user_id) & (clicks["event_ts"] < s)].sort_values(
            ["event_ts"], kind="stable"
        )
        recent = [titles[i] for i in mine["item_id"]][-cfg.user_history_n :][::-1]
        later = clicks[(clicks["user_id"] == row.user_id) & (clicks["event_ts"] >= s)]
        expected = render(
            cfg.user_template, {**profiles.loc[row.user_id].to_dict(), "history": history_text(recent)}
        )
        assert row.n_history == len(recent)
        assert row.content_hash == __import__("hashlib").sha256(expected.encode()).hexdigest(), (
            row.user_id,
            s,
        )
        # nothing clicked at or after the snapshot time leaks into it (unless also clicked before)
        leaked = set(titles[later["item_id"]]) - set(titles[mine["item_id"]])
        assert not any(t in expected for t in leaked if len(t) > 12)


def test_user_history_vectors(state):
    hist = read(state["paths"].user_history)
    assert len(hist) == state["first"]["counts"]["user_history"]["written"] > 0
    assert np.allclose(np.linalg.norm(np.stack(hist["embedding"].to_numpy()), axis=1), 1.0, atol=1e-5)
    assert (hist["last_click_ts"] < hist["event_timestamp"]).all()


def test_second_run_reuses_everything(state, spark):
    m = run_embed(spark, state["cfg"], AS_OF, log=lambda _: None)
    assert m["counts"]["items"]["encoded"] == 0 and m["counts"]["items"]["reused"] == 1682
    assert m["snapshots"]["count"] == 0  # already covered
    assert len(read(state["paths"].item_text)) == 1682  # the partition was replaced, not appended to


def test_a_few_texts_encode_in_the_driver_as_in_a_spark_job(state, spark, tmp_path):
    """A night's few new texts are encoded in the driver (embed.driver_encode_max) instead of a Spark job: the
    same encoder spec, batches and thread count as the one-partition job the Spark path makes of them."""
    from dataclasses import replace

    from llmfeat.core.stage_run import Phases
    from llmfeat.embedding.embed import _Run, describe_model, encoder_spec, make_encoder_udf
    from llmfeat.embedding.user_state import content_hash

    cfg = state["cfg"]
    items = read(tables.snapshot_dir(tables.canonical_dir(state["data_dir"], "items"), AS_OF)).head(40)
    texts = [render(cfg.embed.item_template, r) for r in items.to_dict("records")]
    df = spark.createDataFrame(
        pd.DataFrame({"content_hash": [content_hash(t) for t in texts], "text": texts})
    )
    out, runtimes = {}, {}
    for limit in (0, 256):  # 0: always Spark
        c = replace(cfg, embed=replace(cfg.embed, driver_encode_max=limit))
        spec = encoder_spec(c)
        model, dim = describe_model(spec)
        run = _Run(spark=spark, cfg=c, as_of=AS_OF, staging=tmp_path / str(limit), model_id=model, dim=dim,
                   created=pd.Timestamp.now(tz="UTC"), udf=make_encoder_udf(spec, c.embed.udf_batch_rows),
                   pools={"item": None, "user": None}, phases=Phases("embed", lambda _: None), runtimes=set())  # fmt: skip
        vectors, n_new = run.encode(df, "items")
        assert n_new == len(set(texts)) and (run.driver_encoder is not None) == (limit > 0)
        out[limit] = vectors.toPandas().set_index("content_hash").sort_index()
        runtimes[limit] = run.runtimes
    assert list(out[0].index) == list(out[256].index) and runtimes[0] == runtimes[256]
    np.testing.assert_allclose(np.stack(out[256]["embedding"]), np.stack(out[0]["embedding"]), atol=1e-6)
    assert (out[256]["n_tokens"] == out[0]["n_tokens"]).all()


def test_changed_text_is_reencoded(state, spark):
    d2 = AS_OF + dt.timedelta(days=1)
    data_dir = state["data_dir"]
    for name in ("users", "interactions", "quarantine"):
        root = tables.canonical_dir(data_dir, name)
        tables.write_snapshot(root, d2, pq.read_table(tables.snapshot_dir(root, AS_OF)))
    items = read(tables.snapshot_dir(tables.canonical_dir(data_dir, "items"), AS_OF))
    items.loc[items["item_id"] == "1", "title"] = "Toy Story, remastered (1995)"
    tables.write_snapshot(
        tables.canonical_dir(data_dir, "items"),
        d2,
        pq.read_table(tables.snapshot_dir(tables.canonical_dir(data_dir, "items"), AS_OF)).from_pandas(
            items, preserve_index=False
        ),
    )
    m = run_embed(spark, state["cfg"], d2, log=lambda _: None)
    assert m["counts"]["items"]["encoded"] == 1 and m["counts"]["items"]["written"] == 1
    assert m["runtime"] == state["first"]["runtime"]  # encoded in the driver, by the same kind of encoder
    new = read(tables.snapshot_dir(state["paths"].item_text, d2))
    assert list(new["item_id"]) == ["1"]
    old = read(tables.snapshot_dir(state["paths"].item_text, AS_OF)).set_index("item_id")
    assert float(np.dot(new["embedding"].iloc[0], old.loc["1", "embedding"])) < 0.9999
    # users whose recent clicks include Toy Story get a new text at the d2 snapshot; nobody else does
    users_d2 = read(tables.snapshot_dir(state["paths"].user_text, d2))
    assert len(users_d2) > 0 and users_d2["n_history"].gt(0).all()


def test_mixed_model_ids_are_refused(state, spark):
    cfg = load_config(None, [f"paths.data_dir={state['data_dir']}", "embed.pooling=cls"])
    with pytest.raises(
        ModelMismatchError,
        match=r"holds vectors of model all-MiniLM-L6-v2@\w+; this run uses all-MiniLM-L6-v2@\w+\+cls",
    ):
        run_embed(spark, cfg, AS_OF, log=lambda _: None)


def test_empty_texts_are_quarantined(tmp_path, spark, fixtures):
    src = tmp_path / "mind"
    shutil.copytree(fixtures / "mind_small", src)
    cfg = load_config(None, [f"paths.data_dir={tmp_path / 'data'}", "ingest.source=mind", f"ingest.source_path={src}",
                             "embed.item_template={title}: {description}"])  # fmt: skip
    day = dt.date(2019, 11, 15)
    run_ingest(cfg, day)
    m = run_embed(spark, cfg, day, log=lambda _: None)
    q = read(tables.snapshot_dir(embedding_paths(tmp_path / "data", "default").quarantine, day))
    # every item has a title, so no item is empty; MIND users have no profile, and U4 never clicked
    assert m["counts"]["items"]["quarantined"] == 0
    assert list(q["reason"]) == ["EMPTY_TEXT"] and list(q["table"]) == ["user_text"]
    assert '"user_id":"U4"' in q["raw"].iloc[0]
    assert m["counts"]["users"]["quarantined"] == 1
    users = read(embedding_paths(tmp_path / "data", "default").user_text)
    assert "U4" not in set(users["user_id"]) and {"U1", "U2", "U3"} <= set(users["user_id"])
