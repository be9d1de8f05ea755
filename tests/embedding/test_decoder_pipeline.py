"""A decoder-architecture model dir (tiny Qwen2, built in the test) through the nightly pipeline on the tiny
point-in-time catalogue, Matryoshka-cut to 16 of its 32 dimensions: the model dir's own last-token pooling
and query prompt are used without llmfeat config, vectors match the encoder in-process, the stored width
reaches Feast (online and point-in-time), the FAISS index and the CTR job's inputs, and a run with other
prompts or another width is refused on the same tables."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from llmfeat.core import tables
from llmfeat.core.config import load_config
from llmfeat.data.texts import render, render_all, template_fields
from llmfeat.embedding.embed import ModelMismatchError, embedding_paths, run_embed
from llmfeat.embedding.encoder import EncoderSpec, TextEncoder
from llmfeat.nightly import run_nightly
from tests.pit_runs import DAY2, pit_overrides
from tests.tiny_models import QUERY_PROMPT, decoder_model_dir

pytestmark = [pytest.mark.spark, pytest.mark.slow]
DIMS = 16


def test_decoder_model_dir_through_the_nightly_pipeline(spark, tmp_path):
    model = decoder_model_dir(tmp_path / "tiny-qwen2-embedding", "qwen2", hidden=32)
    cfg = load_config(
        # fp32 as the reference encode below: "auto" is bf16 on a CPU with AVX-512 BF16 (~2e-3 apart)
        None,
        [
            *pit_overrides(tmp_path / "data"),
            f"embed.model_dir={model}",
            f"embed.dims={DIMS}",
            "embed.precision=fp32",
        ],  # fmt: skip
    )
    summary = run_nightly(cfg, DAY2, log=lambda _: None)
    assert [r.status for r in summary.results] == ["done"] * 5 + ["disabled"]
    embed = next(r.summary for r in summary.results if r.stage == "embed")
    assert embed["pooling"] == "last" and embed["dims"] == DIMS and embed["dim"] == DIMS
    assert embed["prompts"] == {"item": "", "user": QUERY_PROMPT}  # from config_sentence_transformers.json
    mid = embed["model_id"]
    assert mid.startswith("tiny-qwen2-embedding@") and "+last+p" in mid and mid.endswith(f"+d{DIMS}")

    # the stored vectors are the encoder's, each kind with its own prompt
    enc = TextEncoder(EncoderSpec(str(model), precision="fp32", dims=DIMS, threads=1))
    assert enc.model_id == mid
    paths = embedding_paths(cfg.paths.data_dir, "default")
    items = pd.read_parquet(paths.item_text).set_index("item_id").sort_index()
    assert (items["dim"] == DIMS).all() and set(items["model_id"]) == {mid}
    canon = tables.read_snapshot(tables.canonical_dir(cfg.paths.data_dir, "items"), DAY2).to_pandas()
    canon = canon.set_index("item_id").loc[items.index]
    texts = render_all(cfg.embed.item_template, canon.reset_index().to_dict("records"))
    assert np.allclose(np.stack(items["embedding"]), enc.encode(texts, prompt_name="item").vectors, atol=1e-4)
    users = pd.read_parquet(paths.user_text)
    assert (users["dim"] == DIMS).all() and set(users["model_id"]) == {mid}
    first = users.sort_values("event_timestamp").groupby("user_id").first()  # before any click: profile only
    profiles = {"U1": "chef", "U2": "artist"}
    for uid, occupation in profiles.items():
        fields = dict.fromkeys(
            template_fields(cfg.embed.user_template)
        )  # age, gender, bio: not in the fixture
        text = render(cfg.embed.user_template, {**fields, "occupation": occupation, "history": ""})
        assert text == occupation
        got = np.asarray(first.loc[uid, "embedding"])
        assert np.allclose(got, enc.encode([text], prompt_name="user").vectors[0], atol=1e-4)
        assert not np.allclose(got, enc.encode([text], prompt_name="item").vectors[0], atol=1e-3)

    # the FAISS index, Feast online and point-in-time, and the CTR inputs follow the stored width
    index = next(r.summary for r in summary.results if r.stage == "index")
    assert index["dim"] == DIMS and index["model_id"] == mid
    from llmfeat.features.publish import open_store

    online = (
        open_store(cfg)
        .get_online_features(
            features=["item_text_embedding:embedding", "item_text_embedding:model_id"],
            entity_rows=[{"item_id": "A"}],
        )
        .to_dict()
    )
    assert len(online["embedding"][0]) == DIMS and online["model_id"] == [mid]
    from llmfeat.ctr.data import build_dense, dense_names
    from llmfeat.ctr.train import _embedding_dim, training_rows
    from llmfeat.feast.offline import historical_features

    frame = historical_features(open_store(cfg), training_rows(cfg, DAY2))
    dim = _embedding_dim(frame)
    dense = build_dense("lm", frame, pd.to_datetime(frame["event_timestamp"], utc=True), dim, len(frame))
    assert dim == DIMS and dense.shape == (len(frame), len(dense_names("lm", DIMS)))

    # vectors made with other prompts or another width never join these tables
    for override in ("embed.user_prompt=query: ", "embed.dims=8"):
        other = load_config(None, [*pit_overrides(tmp_path / "data"), f"embed.model_dir={model}", f"embed.dims={DIMS}",
                                   override])  # fmt: skip
        with pytest.raises(ModelMismatchError, match=r"holds vectors of model .*\+d16; this run uses"):
            run_embed(spark, other, DAY2, snapshot_from=dt.date(2024, 1, 7), log=lambda _: None)
    manifests = sorted(paths.manifests.glob("*.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["model_id"] == mid
