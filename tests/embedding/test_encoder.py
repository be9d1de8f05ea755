"""The encoder on the real all-MiniLM-L6-v2 weights (shipped in a package; offline)."""

import numpy as np
import pytest
import torch

from llmfeat.embedding.encoder import EncoderSpec, TextEncoder, default_model_dir, pool_and_normalise

TEXTS = ["Toy Story (1995). Animation, Children's, Comedy", "GoldenEye (1995). Action", "a", "Heat " * 40]


def test_pooling_and_normalisation_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third position is padding and must not count
    mean = pool_and_normalise(hidden, mask, "mean")[0].numpy()
    assert np.allclose(mean, np.array([2.0, 3.0]) / np.sqrt(13.0))
    cls = pool_and_normalise(hidden, mask, "cls")[0].numpy()
    assert np.allclose(cls, np.array([1.0, 2.0]) / np.sqrt(5.0))
    zero = pool_and_normalise(torch.zeros(1, 2, 2), torch.ones(1, 2), "mean")
    assert torch.equal(zero, torch.zeros(1, 2))  # no division by zero


def test_matches_a_plain_forward_pass(encoder):
    from transformers import AutoModel, AutoTokenizer

    d = default_model_dir()
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    model = AutoModel.from_pretrained(d, local_files_only=True).eval()
    out = encoder.encode(TEXTS)
    for i, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt", truncation=True, max_length=256)
        with torch.inference_mode():
            h = model(**enc).last_hidden_state
        v = h[0].mean(0)
        assert np.allclose(out.vectors[i], (v / v.norm()).numpy(), atol=1e-5)
    assert out.vectors.dtype == np.float32 and out.vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)


def test_deterministic_and_order_independent(encoder):
    a = encoder.encode(TEXTS)
    b = encoder.encode(TEXTS)
    assert np.array_equal(a.vectors, b.vectors)
    rev = encoder.encode(TEXTS[::-1])
    assert np.allclose(rev.vectors[::-1], a.vectors, atol=1e-6)


def test_truncation_is_flagged():
    enc = TextEncoder(EncoderSpec(str(default_model_dir()), max_tokens=8, precision="fp32"))
    out = enc.encode(["one two three four five six seven eight nine ten", "short"])
    assert list(out.truncated) == [True, False]
    assert out.n_tokens[0] == 8
    assert enc.model_id.endswith("+t8")  # a non-default limit is part of the model id


def test_model_id_names_model_and_weights(encoder):
    name, digest = encoder.model_id.split("@")
    assert name == "all-MiniLM-L6-v2" and len(digest) == 12
    cls = TextEncoder(EncoderSpec(str(default_model_dir()), pooling="cls", precision="fp32"))
    assert cls.model_id == encoder.model_id + "+cls"


def test_batches_respect_the_token_budget(encoder):
    lengths = np.array([5, 300, 40, 40, 7, 256, 12] * 20)
    spec_budget, rows_cap = encoder.spec.token_budget, encoder.spec.max_batch_rows
    batches = encoder.batches(lengths)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= rows_cap
        assert len(b) == 1 or len(b) * lengths[b].max() <= spec_budget
    assert lengths[batches[0][0]] == lengths.max()  # longest first


def test_bf16_close_to_fp32(encoder):
    bf16 = TextEncoder(EncoderSpec(str(default_model_dir()), precision="bf16", threads=2))
    assert bf16.precision == "bf16"
    cos = (bf16.encode(TEXTS[:2]).vectors * encoder.encode(TEXTS[:2]).vectors).sum(1)
    assert cos.min() > 0.99


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(EncoderSpec(str(default_model_dir()), pooling="max"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(EncoderSpec("/nonexistent/model"))
