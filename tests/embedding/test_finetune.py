"""Encoder fine-tuning on the click signal: a short LoRA run on MovieLens-100k lowers the validation loss
(checked again through TextEncoder on the saved, merged model), the saved model has its own model id, the
user text of a pair is the text as of the click, and the fine-tuned vectors live in their own embedding set
and Feast project beside the frozen ones; mixing them into one set is refused."""

import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from llmfeat.core.config import load_config
from llmfeat.data.ingest import run_ingest
from llmfeat.embedding.encoder import MODEL_CARD, EncoderSpec, TextEncoder, default_model_dir
from llmfeat.embedding.finetune import click_pairs, in_batch_loss, run_finetune, sample_pairs

pytestmark = [pytest.mark.slow]
AS_OF = dt.date(1998, 4, 23)
PIT_AS_OF = dt.date(2024, 1, 7)
TINY = [
    "finetune.max_steps=8", "finetune.eval_every=4", "finetune.eval_pairs=64", "finetune.batch_size=16",
    "finetune.max_tokens=48", "finetune.lr=0.002", "finetune.warmup_steps=1", "finetune.max_train_pairs=2000",
    "finetune.patience=2", "finetune.threads=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, movielens_dir):
    data_dir = tmp_path_factory.mktemp("ft")
    cfg = load_config(None, [f"paths.data_dir={data_dir}", f"ingest.source_path={movielens_dir}", *TINY])
    run_ingest(cfg, AS_OF)
    card = run_finetune(cfg, AS_OF, log=lambda m: None)
    return cfg, card


def test_validation_loss_goes_down(tuned):
    cfg, card = tuned
    assert card["steps"] == 8 and card["method"] == "lora"
    assert card["best_step"] > 0, card["history"]
    assert card["val_loss_after"] < card["val_loss_before"], card["history"]
    assert [h["step"] for h in card["history"]] == [0, 4, 8]
    saved = json.loads((cfg.paths.data_dir / "models" / "encoders" / "finetuned" / MODEL_CARD).read_text())
    assert saved["model_id"] == card["model_id"] and saved["data"]["as_of"] == AS_OF.isoformat()


def test_saved_model_loads_with_a_new_id_and_lower_loss(tuned):
    """The merged weights on disk are the trained ones: recompute the validation loss through TextEncoder."""
    cfg, card = tuned
    base = TextEncoder(EncoderSpec(str(default_model_dir()), max_tokens=48, precision="fp32", threads=2))
    new = TextEncoder(EncoderSpec(card["model_dir"], max_tokens=48, precision="fp32", threads=2))
    assert new.model_id.startswith("all-MiniLM-L6-v2-ft-lora@")
    assert new.model_id.split("+")[0] == card["model_id"].split("+")[0]
    assert new.model_id.split("@")[1] != base.model_id.split("@")[1]
    assert card["base_model_id"] == TextEncoder(EncoderSpec(str(default_model_dir()), threads=2)).model_id
    train, val, _ = click_pairs(cfg, AS_OF)
    _, batches = sample_pairs(train, val, cfg.finetune)

    def loss(enc: TextEncoder) -> float:
        import torch

        total = 0.0
        for b in batches:
            u = torch.from_numpy(enc.encode(b.user_text).vectors)
            i = torch.from_numpy(enc.encode(b.item_text).vectors)
            total += float(in_batch_loss(u, i, b.item_id, cfg.finetune.temperature)) * len(b)
        return total / sum(map(len, batches))

    before, after = loss(base), loss(new)
    assert before == pytest.approx(card["val_loss_before"], abs=2e-3)
    assert after == pytest.approx(card["val_loss_after"], abs=2e-3)
    assert after < before
    vecs = new.encode(["Toy Story (1995). Animation", "Age 24, gender M, technician"]).vectors
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(
        vecs, base.encode(["Toy Story (1995). Animation", "Age 24, gender M, technician"]).vectors
    )


def test_pairs_use_the_user_text_as_of_the_click(tuned):
    """Each pair's user text lists the titles of the user's clicks strictly before the pair's click, newest
    first: never the clicked item's own or later clicks (no leakage)."""
    cfg, _ = tuned
    train, val, info = click_pairs(cfg, AS_OF)
    assert pd.Timestamp(info["t1"]) < pd.Timestamp(info["t2"]) and len(train) > 5 * len(val) > 0
    assert pd.Timestamp(train.event_ts.max()) < pd.Timestamp(info["t1"]) <= pd.Timestamp(val.event_ts.min())
    snap = lambda t: next((cfg.paths.data_dir / "canonical" / t).iterdir())  # noqa: E731
    inter = pd.read_parquet(snap("interactions"))
    titles = pd.read_parquet(snap("items")).set_index("item_id")["title"]
    clicks = inter[inter["label"] == 1].sort_values(["event_ts", "item_id"], kind="stable")
    rng = np.random.default_rng(0)
    checked_history = 0
    for part in (train, val):
        for i in rng.choice(len(part), 40, replace=False):
            u, ts = part.user_id[i], pd.Timestamp(part.event_ts[i])
            before = clicks[(clicks["user_id"] == u) & (pd.to_datetime(clicks["event_ts"], utc=True) < ts)]
            recent = titles[before["item_id"]].tolist()[::-1][: cfg.embed.user_history_n]
            text = part.user_text[i]
            if recent:
                assert text.endswith("Recently liked: " + "; ".join(recent)), (text, recent)
                checked_history += 1
            else:
                assert "Recently liked" not in text
    assert checked_history > 40


def test_sets_coexist_and_mixing_is_refused(tuned, spark, tmp_path, fixtures):
    from llmfeat.embedding.embed import ModelMismatchError, embedding_paths, run_embed, set_for_model
    from llmfeat.features.publish import feast_dir, feast_project, feature_store_yaml, run_publish

    _, card = tuned
    model_dir = card["model_dir"]
    assert set_for_model(model_dir) == "finetuned" and set_for_model(default_model_dir()) == "default"
    base = [
        f"paths.data_dir={tmp_path}",
        "ingest.source=mapped",
        f"ingest.source_path={fixtures / 'pit' / 'mapping.yaml'}",
    ]
    frozen = load_config(None, base)
    fine = load_config(None, [*base, f"embed.model_dir={model_dir}", "embed.embedding_set=finetuned"])
    quiet = lambda _m: None  # noqa: E731
    run_ingest(frozen, PIT_AS_OF)
    m1 = run_embed(spark, frozen, PIT_AS_OF, log=quiet)
    m2 = run_embed(spark, fine, PIT_AS_OF, log=quiet)
    assert m1["model_id"] != m2["model_id"] and m2["model_id"] == card["model_id"]
    items = {}
    for name, want in (("default", m1["model_id"]), ("finetuned", m2["model_id"])):
        table = pd.read_parquet(embedding_paths(tmp_path, name).item_text)
        assert set(table["model_id"]) == {want}
        items[name] = table.sort_values("item_id")
    assert (
        items["default"]["content_hash"].to_numpy() == items["finetuned"]["content_hash"].to_numpy()
    ).all()
    assert not np.allclose(np.stack(items["default"]["embedding"]), np.stack(items["finetuned"]["embedding"]))

    wrong = load_config(None, [*base, f"embed.model_dir={model_dir}"])  # the fine-tuned model into "default"
    with pytest.raises(ModelMismatchError):
        run_embed(spark, wrong, PIT_AS_OF, log=quiet)
    back = load_config(None, [*base, "embed.embedding_set=finetuned"])  # the base model into "finetuned"
    with pytest.raises(ModelMismatchError):
        run_embed(spark, back, PIT_AS_OF, log=quiet)

    # one Feast project (registry, online store) per set: both published, both readable, never mixed
    assert feast_project(frozen) == "llmfeat" and feast_project(fine) == "llmfeat_finetuned"
    assert feast_dir(frozen) != feast_dir(fine)
    assert (
        feature_store_yaml(frozen)["online_store"]["path"] != feature_store_yaml(fine)["online_store"]["path"]
    )
    from llmfeat.features.publish import open_store
    from llmfeat.features.stats import run_stats

    run_stats(spark, frozen, PIT_AS_OF, log=quiet)
    for cfg in (frozen, fine):
        run_publish(cfg, PIT_AS_OF, log=quiet)
    item = items["default"]["item_id"].iloc[0]
    seen = {}
    for name, cfg in (("default", frozen), ("finetuned", fine)):
        online = (
            open_store(cfg)
            .get_online_features(
                features=["item_text_embedding:embedding", "item_text_embedding:model_id"],
                entity_rows=[{"item_id": item}],
            )
            .to_dict()
        )
        seen[name] = (online["model_id"][0], np.array(online["embedding"][0], dtype=np.float32))
    assert seen["default"][0] == m1["model_id"] and seen["finetuned"][0] == m2["model_id"]
    assert not np.allclose(seen["default"][1], seen["finetuned"][1])
    shutil.rmtree(tmp_path / "feast", ignore_errors=True)
