"""Decoder-LLM embedders, prompts and Matryoshka widths, on tiny models built in the test (no download):
last-token pooling against a hand computation with left and right padding, a model dir bringing its own
pooling and prompts, prompts and dims in the model id and the vectors."""

import json

import numpy as np
import pytest
import torch

from llmfeat.embedding.encoder import EncoderSpec, TextEncoder, model_id, pool_and_normalise, read_st_config
from tests.tiny_models import QUERY_PROMPT, decoder_model_dir, encoder_model_dir

TEXTS = [
    "Alpha kettle. kitchen",
    "Beta mug",
    "Gamma plate. dining, chef artist: Toy Story (1995). Comedy",
    "a",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def decoder_dir(request, tmp_path_factory):
    return decoder_model_dir(tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}", request.param)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return encoder_model_dir(tmp_path_factory.mktemp("enc") / "tiny-bert")


def unit(v: torch.Tensor) -> np.ndarray:
    return (v / v.norm()).numpy()


def test_last_token_pooling_of_padded_tensors_by_hand():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2) + 1
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])  # row 0's last real token is position 1
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # row 0 ends at position 3, as every left-padded row
    got_right = pool_and_normalise(hidden, right, "last").numpy()
    got_left = pool_and_normalise(hidden, left, "last").numpy()
    assert np.allclose(got_right[0], unit(hidden[0, 1])) and np.allclose(got_right[1], unit(hidden[1, 3]))
    assert np.allclose(got_left[0], unit(hidden[0, 3])) and np.allclose(got_left[1], unit(hidden[1, 3]))
    # Matryoshka: the first d dimensions, re-normalised
    assert np.allclose(pool_and_normalise(hidden, right, "last", dims=1).numpy(), [[1.0], [1.0]])


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_last_token_pooling_matches_a_hand_computation(decoder_dir, side):
    """Each text alone through the bare model (no padding at all), its last hidden state normalised by hand,
    against the encoder's batched, padded run."""
    from transformers import AutoModel, AutoTokenizer

    enc = TextEncoder(EncoderSpec(str(decoder_dir), precision="fp32", padding_side=side, threads=1))
    assert enc.spec.pooling == "last" and enc.padding_side == side  # from 1_Pooling/config.json
    tok = AutoTokenizer.from_pretrained(decoder_dir, local_files_only=True)
    model = AutoModel.from_pretrained(decoder_dir, local_files_only=True).eval()
    for prompt_name, prompt in (
        ("item", ""),
        ("user", QUERY_PROMPT),
    ):  # the dir's prompts: document "", query
        out = enc.encode(TEXTS, prompt_name=prompt_name)
        assert len(set(out.n_tokens)) > 2, "the batch must need padding"
        for i, text in enumerate(TEXTS):
            ids = tok(prompt + text, return_tensors="pt")["input_ids"]
            assert ids[0, -1] == tok.eos_token_id and len(ids[0]) == out.n_tokens[i]
            with torch.inference_mode():
                h = model(input_ids=ids).last_hidden_state[0]
            assert np.allclose(out.vectors[i], unit(h[-1]), atol=1e-5), (side, prompt_name, text)
            assert not np.allclose(out.vectors[i], unit(h.mean(0)), atol=1e-3)  # not mean pooling


def test_model_dir_brings_pooling_and_prompts(decoder_dir):
    st = read_st_config(decoder_dir)
    assert st["pooling"] == "last" and st["prompts"] == {"item": "", "user": QUERY_PROMPT}
    ident = model_id(EncoderSpec(str(decoder_dir)), 64)
    assert "+last" in ident and "+p" in ident
    # llmfeat's config overrides the dir: no prompts at all is another id
    assert model_id(EncoderSpec(str(decoder_dir), user_prompt=""), 64) == ident.split("+p")[0]


def test_prompts_change_the_id_and_the_vectors(encoder_dir):
    plain = TextEncoder(EncoderSpec(str(encoder_dir), precision="fp32", threads=1))
    e5 = TextEncoder(EncoderSpec(str(encoder_dir), precision="fp32", threads=1, item_prompt="passage: ",
                                 user_prompt="query: "))  # fmt: skip
    other = TextEncoder(EncoderSpec(str(encoder_dir), precision="fp32", threads=1, item_prompt="passage: ",
                                    user_prompt="search: "))  # fmt: skip
    assert plain.spec.pooling == "mean" and "+p" not in plain.model_id
    assert len({plain.model_id, e5.model_id, other.model_id}) == 3
    base = plain.encode(TEXTS).vectors
    item, user = e5.encode(TEXTS, prompt_name="item").vectors, e5.encode(TEXTS, prompt_name="user").vectors
    assert np.allclose(item, plain.encode(["passage: " + t for t in TEXTS]).vectors, atol=1e-6)
    assert np.allclose(user, plain.encode(["query: " + t for t in TEXTS]).vectors, atol=1e-6)
    cos = lambda a, b: (a * b).sum(1)  # noqa: E731
    assert (cos(item, base) < 0.9999).all() and (cos(item, user) < 0.9999).all()
    assert np.allclose(e5.encode(TEXTS).vectors, base)  # no prompt name: no prompt
    with pytest.raises(ValueError, match="prompt name"):
        e5.encode(TEXTS, prompt_name="passage")


def test_dims_truncate_renormalise_and_enter_the_id(encoder_dir):
    full = TextEncoder(EncoderSpec(str(encoder_dir), precision="fp32", threads=1))
    cut = TextEncoder(EncoderSpec(str(encoder_dir), precision="fp32", threads=1, dims=8))
    assert cut.dim == 8 and cut.model_id == full.model_id + "+d8"
    v, w = full.encode(TEXTS).vectors, cut.encode(TEXTS).vectors
    assert w.shape == (len(TEXTS), 8)
    assert np.allclose(w, v[:, :8] / np.linalg.norm(v[:, :8], axis=1, keepdims=True), atol=1e-6)
    same = TextEncoder(EncoderSpec(str(encoder_dir), precision="fp32", threads=1, dims=32))
    assert same.model_id == full.model_id  # the full width is no truncation
    with pytest.raises(ValueError, match="wider than"):
        TextEncoder(EncoderSpec(str(encoder_dir), dims=64))


def test_unsupported_sentence_transformers_modules_are_refused(encoder_dir, tmp_path):
    import shutil

    d = shutil.copytree(encoder_dir, tmp_path / "dense")
    modules = json.loads((d / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense.*not supported"):
        TextEncoder(EncoderSpec(str(d)))
    (d / "modules.json").write_text(json.dumps(modules[:2]))
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(ValueError, match=r"pooling \['max'\] is not supported"):
        TextEncoder(EncoderSpec(str(d)))
    legacy = {
        "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
        "word_embedding_dimension": 32,
    }
    (d / "1_Pooling" / "config.json").write_text(json.dumps(legacy))  # sentence-transformers < 5 keys
    assert read_st_config(d)["pooling"] == "cls"


def test_config_reaches_the_encoder_and_a_bad_width_is_a_config_error(decoder_dir):
    from llmfeat.core.config import ConfigError, load_config
    from llmfeat.embedding.embed import describe_model, encoder_spec

    cfg = load_config(
        None, [f"embed.model_dir={decoder_dir}", "embed.dims=16", "embed.item_prompt=passage: "]
    )
    ident, dim = describe_model(encoder_spec(cfg))
    enc = TextEncoder(encoder_spec(cfg))
    assert dim == 16 == enc.dim and ident == enc.model_id and ident.endswith("+d16")
    assert (
        enc.spec.item_prompt == "passage: " and enc.spec.user_prompt == QUERY_PROMPT
    )  # config, then the dir
    wide = load_config(None, [f"embed.model_dir={decoder_dir}", "embed.dims=64"])
    with pytest.raises(ConfigError, match="embed.dims=64 is wider than the model's 32"):
        describe_model(encoder_spec(wide))
