"""Tiny models built inside the tests (random weights, a tokenizer trained on a few sentences): no download.

``decoder_model_dir`` saves a 2-layer Llama- or Qwen2-architecture model (the families of e5-mistral and
gte-Qwen / Qwen3-Embedding) whose tokenizer appends an end-of-text token, with sentence-transformers files
that declare last-token pooling and a query prompt, as real decoder embedders ship them.
``encoder_model_dir`` saves a 2-layer BERT with mean pooling and no sentence-transformers prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "Alpha kettle. kitchen", "Beta mug. kitchen", "Gamma plate. dining", "chef artist Recently liked",
    "Age gender occupation bio history", "Instruct: find items this user will like. Query: passage: query:",
    "Toy Story (1995). Animation, Children's, Comedy", "GoldenEye (1995). Action, Adventure, Thriller",
    "the of and to in a is that for it as was with be by on not this are or from at which but have an",
    "0 1 2 3 4 5 6 7 8 9 . , : ; ( ) ' - !",
]  # fmt: skip
QUERY_PROMPT = "Instruct: find items this user will like. Query: "


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = (
        ["<pad>", "<unk>", "<s>", "</s>"] if kind == "decoder" else ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    )
    tok = Tokenizer(models.BPE(unk_token=specials[1]))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    )
    ids = {t: tok.token_to_id(t) for t in specials}
    if (
        kind == "decoder"
    ):  # like Qwen3-Embedding: the end-of-text token closes every text; it is what gets pooled
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", ids["</s>"])]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                       eos_token="</s>", model_max_length=64)  # fmt: skip
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=64)  # fmt: skip


def _save(model, tokenizer, out: Path, pooling: str, prompts: dict | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": model.config.hidden_size, "pooling_mode": pooling})
    )
    if prompts is not None:
        (out / "config_sentence_transformers.json").write_text(
            json.dumps({"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})
        )
    return out


def decoder_model_dir(out: Path, arch: str = "qwen2", hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    tokenizer = _tokenizer("decoder")
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    model = (LlamaModel if arch == "llama" else Qwen2Model)(config).eval()
    return _save(model, tokenizer, out, "lasttoken", {"query": QUERY_PROMPT, "document": ""})


def encoder_model_dir(out: Path, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = _tokenizer("encoder")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return _save(BertModel(config).eval(), tokenizer, out, "mean", None)
