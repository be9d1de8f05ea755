from pathlib import Path

import pytest

from llmfeat.core.config import Config, ConfigError, load_config


def test_defaults_are_embedded():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.paths.data_dir == Path("var/data")
    assert cfg.ingest.click_rating_threshold == 4.0


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("paths:\n  data_dir: /data/x\ningest:\n  click_rating_threshold: 3\n  max_text_chars: 50\n")
    cfg = load_config(f, ["ingest.max_text_chars=70", "ingest.source=mind", "ingest.source_path=/data/mind"])
    assert cfg.paths.data_dir == Path("/data/x")
    assert cfg.ingest.click_rating_threshold == 3.0  # int in YAML coerced to the declared float
    assert cfg.ingest.max_text_chars == 70  # the override wins over the file
    assert cfg.ingest.source == "mind"


@pytest.mark.parametrize(
    "override, message",
    [
        ("ingest.nope=1", "unknown config key"),
        ("nosection.x=1", "unknown config key"),
        ("ingest.max_text_chars=lots", "expected an integer"),
        ("ingest.click_rating_threshold=true", "expected a number"),
        ("ingest", "section.key=value"),
        # choices (Literal), ranges (__post_init__) and cross-field rules, all at load time
        ("embed.pooling=meen", r"embed.pooling: 'meen' is not one of auto, mean, cls, last"),
        ("ingest.source=csv", "ingest.source: 'csv' is not one of movielens, mind, mapped"),
        ("feast.online_store=Redis", "is not one of sqlite, redis"),
        ("feast.batch_engine=spark", "is not one of local, spark.engine"),
        ("train.models=[deep_lm, deep_llm]", "train.models: 'deep_llm' is not one of"),
        ("train.protocols=[temporal, random]", "train.protocols: 'random' is not one of"),
        ("serve.user_vectors=txt", "serve.user_vectors"),
        ("serve.user_source=redis", "serve.user_source"),
        ("finetune.method=qlora", "finetune.method"),
        ("index.gpu=always", "index.gpu"),
        ("embed.precision=fp16", "embed.precision"),
        ("embed.device=gpu", "embed.device: must be auto, cpu, cuda or cuda:N"),
        ("serve.port=70000", "serve.port: must be a TCP port"),
        ("index.target_recall=1.5", r"index.target_recall: must be in \(0, 1\]"),
        ("embed.token_budget=0", "embed.token_budget: must be > 0"),
        ("finetune.batch_size=1", "finetune.batch_size: must be at least 2"),
        ("train.split_quantiles=[0.9, 0.8]", "train.split_quantiles: must be two quantiles"),
        ("train.t1=yesterday", "train.t1: 'yesterday' is not an ISO date"),
        ("ingest.source=mind", "ingest.source_path is required for source 'mind'"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_round_trip_to_dict():
    d = load_config(None, ["paths.data_dir=/tmp/q"]).to_dict()
    assert d["paths"]["data_dir"] == "/tmp/q"


def test_string_overrides_are_taken_verbatim():
    cfg = load_config(
        None,
        ["embed.item_template={title}: {description}", "embed.model_dir=null", "spark.executor_memory=2g"],
    )
    assert cfg.embed.item_template == "{title}: {description}"
    assert cfg.embed.model_dir is None and cfg.spark.executor_memory == "2g"


def test_list_overrides_are_yaml():
    cfg = load_config(None, ["train.protocols=[temporal]", "train.split_quantiles=[0.7, 0.85]"])
    assert cfg.train.protocols == ["temporal"] and cfg.train.split_quantiles == [0.7, 0.85]


def test_good_choices_load():
    cfg = load_config(None, ["embed.pooling=cls", "feast.online_store=redis", "finetune.method=full",
                             "train.models=[deep_lm]", "embed.device=cuda:1"])  # fmt: skip
    assert (cfg.embed.pooling, cfg.feast.online_store, cfg.finetune.method) == ("cls", "redis", "full")
    assert cfg.train.models == ["deep_lm"] and cfg.embed.device == "cuda:1"
