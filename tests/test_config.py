from pathlib import Path

import pytest

from llmfeat.config import Config, ConfigError, load_config


def test_defaults_are_embedded():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.paths.data_dir == Path("var/data")
    assert cfg.ingest.click_rating_threshold == 4.0


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("paths:\n  data_dir: /data/x\ningest:\n  click_rating_threshold: 3\n  max_text_chars: 50\n")
    cfg = load_config(f, ["ingest.max_text_chars=70", "ingest.source=mind"])
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
