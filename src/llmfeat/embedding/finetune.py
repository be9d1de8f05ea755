"""Fine-tune the text encoder on the click signal (``llmfeat finetune``).

A two-tower model whose towers share one encoder: the user tower encodes the user's text *as of the
interaction* (profile + titles of the clicks strictly before it, built by ``user_state.user_snapshots``, the
function the embedding job uses), the item tower the item's templated text; both are mean-pooled and
L2-normalised exactly as ``TextEncoder`` does. The loss is the in-batch softmax (InfoNCE) over cosine
similarities divided by a temperature: each positive (user text, clicked item text) pair is pulled together
and pushed away from the other items of the batch. That is the quantity retrieval ranks by (cosine of user
and item vectors), so it optimises retrieval directly. Other rows of the batch with the same item are masked
out of a row's negatives.

Data: the labelled interactions of the canonical snapshot, split by ``splits.temporal_split`` with the CTR
job's boundaries (``train.split_quantiles`` / ``train.t1`` / ``train.t2``): positive pairs (label 1) of the
training part train, those of the validation part measure the validation loss; the test part is never read.

Methods: ``lora`` (peft adapters on the attention query/value Linear layers, merged into the weights on
save), ``full``, ``top_layers``. Seeded; validation loss every ``eval_every`` steps (and before training),
early stopping with patience, the best checkpoint kept. bf16 autocast on CUDA, fp32 on CPU.

The result is an ordinary Hugging Face model directory (merged weights, tokenizer, the sentence-transformers
files of the base) plus ``llmfeat_model.json`` (``encoder.MODEL_CARD``: name, base model id, method, steps,
validation loss before / after, data as of). ``TextEncoder`` loads it like any model; its model id is
``<name>@<sha256 of the new weights>``, so its vectors never mix with the base model's.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.core import tables
from llmfeat.core.config import Config, ConfigError
from llmfeat.core.errors import TooLittleDataError
from llmfeat.core.layout import DataDir
from llmfeat.core.results import FinetuneResult
from llmfeat.core.stage_run import StageRun
from llmfeat.data.splits import Split, temporal_split
from llmfeat.data.texts import render
from llmfeat.embedding.encoder import (
    MODEL_CARD,
    EncoderSpec,
    available_cores,
    default_model_dir,
    model_id,
    model_name,
    model_token_limit,
    pool_and_normalise,
    resolve_device,
)
from llmfeat.embedding.user_state import UserStateParams, user_snapshots

METHODS = ("lora", "full", "top_layers")
DEFAULT_LR = {"lora": 1e-3, "full": 3e-5, "top_layers": 1e-4}
SENTENCE_TRANSFORMERS_FILES = (
    "sentence_bert_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "1_Pooling",
)
LORA_TARGETS = ["query", "value"]
"""BERT's attention query and value projections (``BertSelfAttention.query`` / ``.value``)."""


@dataclass
class ClickPairs:
    """Positive (user text as of the click, item text) pairs of one split part."""

    user_text: list[str]
    item_text: list[str]
    item_id: np.ndarray
    user_id: np.ndarray
    event_ts: np.ndarray

    def __len__(self) -> int:
        return len(self.user_text)

    def take(self, idx: np.ndarray) -> ClickPairs:
        return ClickPairs([self.user_text[i] for i in idx], [self.item_text[i] for i in idx], self.item_id[idx],
                          self.user_id[idx], self.event_ts[idx])  # fmt: skip


def _canonical(data_dir: Path, name: str, as_of: dt.date) -> pd.DataFrame:
    return pd.read_parquet(tables.snapshot_dir(tables.canonical_dir(data_dir, name), as_of))


def split_interactions(cfg: Config, interactions: pd.DataFrame) -> Split:
    """The CTR job's temporal split (same boundaries for the same config and data)."""
    t = cfg.train
    t1 = pd.Timestamp(t.t1, tz="UTC") if t.t1 else None
    t2 = pd.Timestamp(t.t2, tz="UTC") if t.t2 else None
    return temporal_split(interactions, t1, t2, tuple(t.split_quantiles))


def user_texts_at(
    users: pd.DataFrame, clicks: pd.DataFrame, events: pd.DataFrame, params: UserStateParams
) -> pd.Series:
    """The user text of each ``events`` row (user_id, event_ts) as of its event time: the profile and the
    titles of the user's clicks strictly before it, exactly as the embedding job renders user snapshots.
    Index aligned with ``events``; NaN where the user does not exist yet at that time."""
    out = pd.Series(np.nan, index=events.index, dtype=object)
    profiles = users.set_index("user_id", drop=False)
    by_user = {u: g for u, g in clicks.groupby("user_id", sort=False)}
    empty = pd.DataFrame({"event_ts": pd.Series([], dtype="datetime64[us, UTC]"), "item_id": [], "title": [],
                          "embedding": []})  # fmt: skip
    for user, ev in events.groupby("user_id", sort=False):
        if user not in profiles.index:
            continue
        profile = profiles.loc[user].to_dict()
        mine = by_user.get(user, empty).assign(embedding=None)
        times = sorted(set(pd.to_datetime(ev["event_ts"], utc=True)))
        rows, _ = user_snapshots(profile, mine, times, params)
        if not rows:
            continue
        # user_snapshots emits a row only when the text changes: the text at t is the latest row at or before t
        at = pd.DatetimeIndex([r["snapshot_ts"] for r in rows])
        texts = np.array([r["text"] for r in rows], dtype=object)
        pos = at.searchsorted(pd.DatetimeIndex(pd.to_datetime(ev["event_ts"], utc=True)), side="right") - 1
        ok = pos >= 0
        out.loc[ev.index[ok]] = texts[pos[ok]]
    return out


def click_pairs(cfg: Config, as_of: dt.date) -> tuple[ClickPairs, ClickPairs, dict]:
    """(train pairs, validation pairs, data description) from the canonical snapshot of ``as_of``."""
    data_dir = Path(cfg.paths.data_dir)
    items = _canonical(data_dir, "items", as_of)
    users = _canonical(data_dir, "users", as_of)
    inter = _canonical(data_dir, "interactions", as_of)
    inter["event_ts"] = pd.to_datetime(inter["event_ts"], utc=True)
    split = split_interactions(cfg, inter)
    item_text = pd.Series(
        [render(cfg.embed.item_template, r) for r in items.to_dict("records")], index=items["item_id"]
    )
    titles = items.set_index("item_id")["title"]
    clicks = inter[inter["label"] == 1][["user_id", "item_id", "event_ts"]].copy()
    clicks["title"] = clicks["item_id"].map(titles)
    params = UserStateParams(
        cfg.embed.user_template, cfg.embed.user_history_n, cfg.embed.history_half_life_days
    )
    parts = {}
    for name, frame in (("train", split.train), ("validation", split.validation)):
        pos = frame[frame["label"] == 1]
        u = user_texts_at(users, clicks, pos, params)
        i = pos["item_id"].map(item_text)
        keep = u.notna() & i.notna() & (u.str.len() > 0) & (i.str.len() > 0)
        pos = pos[keep.to_numpy()]
        parts[name] = ClickPairs(u[keep].tolist(), i[keep].tolist(), pos["item_id"].astype(str).to_numpy(),
                                 pos["user_id"].astype(str).to_numpy(), pos["event_ts"].to_numpy())  # fmt: skip
    info = {
        "as_of": as_of.isoformat(), "split": "temporal", **split.boundaries,
        "train_pairs": len(parts["train"]), "validation_pairs": len(parts["validation"]),
        "train_items": int(len(set(parts["train"].item_id))),
    }  # fmt: skip
    return parts["train"], parts["validation"], info


def sample_pairs(train: ClickPairs, val: ClickPairs, f) -> tuple[ClickPairs, list[ClickPairs]]:
    """The training pairs used (a seeded sample of at most ``max_train_pairs``) and the fixed validation
    batches (a seeded sample of ``eval_pairs``): a pure function of the config, so a check can redo it."""
    rng = np.random.default_rng(f.seed)
    if f.max_train_pairs is not None and len(train) > f.max_train_pairs:
        train = train.take(np.sort(rng.choice(len(train), f.max_train_pairs, replace=False)))
    sample = val.take(rng.permutation(len(val))[: f.eval_pairs])
    batches = [sample.take(np.arange(s, min(s + f.batch_size, len(sample))))
               for s in range(0, len(sample), f.batch_size)]  # fmt: skip
    return train, [b for b in batches if len(b) >= 2]


def in_batch_loss(user_vecs, item_vecs, item_ids: np.ndarray, temperature: float):
    """InfoNCE over the batch: row i's positive is item i; the other items are its negatives, except those
    equal to item i (the same item clicked by another user of the batch is not a negative)."""
    import torch

    logits = user_vecs @ item_vecs.T / temperature
    same = torch.from_numpy(item_ids[:, None] == item_ids[None, :]).to(logits.device)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(item_ids), device=logits.device)
    return torch.nn.functional.cross_entropy(logits.float(), target)


class TwoTower:
    """One shared encoder; ``encode(texts)`` -> unit vectors (mean pooling, as TextEncoder)."""

    def __init__(self, model, tokenizer, device: str, max_tokens: int):
        self.model, self.tokenizer, self.device, self.max_tokens = model, tokenizer, device, max_tokens

    def encode(self, texts: list[str]):
        import torch

        enc = self.tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=True, return_tensors="pt",
                             return_token_type_ids=False)  # fmt: skip
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda")):
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool_and_normalise(hidden.float(), mask, "mean")

    def loss(self, pairs: ClickPairs, temperature: float):
        return in_batch_loss(
            self.encode(pairs.user_text), self.encode(pairs.item_text), pairs.item_id, temperature
        )

    def val_loss(self, batches: list[ClickPairs], temperature: float) -> float:
        import torch

        was_training = self.model.training
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                total += float(self.loss(b, temperature)) * len(b)
                n += len(b)
        self.model.train(was_training)
        return total / max(n, 1)


def prepare_model(base_dir: Path, method: str, cfg, device: str):
    """The base encoder made trainable per ``method``; returns (model, trainable parameter count)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(base_dir, local_files_only=True, dtype=torch.float32)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       target_modules=LORA_TARGETS, bias="none"),
        )  # fmt: skip
    elif method == "top_layers":
        layers = model.encoder.layer
        if not 1 <= cfg.top_layers <= len(layers):
            raise ConfigError(f"finetune.top_layers must be within 1..{len(layers)}")
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers[-cfg.top_layers :]:
            for p in layer.parameters():
                p.requires_grad_(True)
    elif method != "full":
        raise ConfigError(f"finetune.method must be one of {METHODS}, not {method!r}")
    model.to(device).train()
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _trainable_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def output_dir(cfg: Config) -> Path:
    f = cfg.finetune
    return Path(f.output_dir) if f.output_dir else DataDir(Path(cfg.paths.data_dir)).encoders(f.name)


def run_finetune(
    cfg: Config,
    as_of: dt.date,
    *,
    base_model: Path | None = None,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune, save the merged model directory, return its card (also written as llmfeat_model.json)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    f = cfg.finetune
    out = output_dir(cfg)
    if out.exists() and not f.overwrite:
        raise ConfigError(
            f"{out} exists: choose another finetune.name / output_dir, or finetune.overwrite=true"
        )
    run = StageRun.start("finetune", as_of, log)
    base = Path(base_model or cfg.embed.model_dir or default_model_dir()).resolve()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    base_limit = model_token_limit(base, tokenizer, AutoConfig.from_pretrained(base, local_files_only=True))
    device = resolve_device(f.device)
    if device == "cpu":
        torch.set_num_threads(f.threads or available_cores())
    torch.manual_seed(f.seed)

    log(f"finetune: building click pairs as of {as_of} ...")
    train, val, data = click_pairs(cfg, as_of)
    if len(train) < f.batch_size or len(val) < 2:
        raise TooLittleDataError(
            f"too few click pairs to fine-tune: {len(train)} train, {len(val)} validation"
        )
    train, val_batches = sample_pairs(train, val, f)
    log(f"finetune: {len(train)} training pairs, {sum(map(len, val_batches))} validation pairs "
        f"({data['t1']} / {data['t2']})")  # fmt: skip
    model, n_trainable = prepare_model(base, f.method, f, device)
    lr = f.lr if f.lr is not None else DEFAULT_LR[f.method]
    log(f"finetune: {f.method}, {n_trainable:,} trainable parameters, lr {lr:g}, device {device}")
    loop = _train(model, TwoTower(model, tokenizer, device, f.max_tokens), train, val_batches, f, lr, log)
    trained = run.mark("train", run.started_clock)
    model.load_state_dict(loop.best_state, strict=False)
    if f.method == "lora":
        model = model.merge_and_unload()
    model.eval()
    card = _card(cfg, base, model_id(EncoderSpec(str(base)), base_limit), lr, n_trainable, loop, val_batches,
                 data, device)  # fmt: skip
    card["seconds"] = {"train": round(trained - run.started_clock, 1)}
    _save(model, tokenizer, base, out, card)
    card["seconds"]["total"] = round(run.elapsed, 1)
    card["model_dir"] = str(out.resolve())
    card["model_id"] = model_id(EncoderSpec(str(out.resolve())), base_limit)
    (out / MODEL_CARD).write_text(json.dumps(card, indent=2))
    log(f"finetune: validation loss {loop.before:.4f} -> {loop.best:.4f} (best step {loop.best_step}); "
        f"saved {out} as {card['model_id']}")  # fmt: skip
    return FinetuneResult(card)


@dataclass
class _Loop:
    """What the training loop ends with: validation losses before and at the best step, that step's weights."""

    before: float
    best: float
    best_step: int
    best_state: dict
    steps: int
    history: list[dict]


def _train(model, towers: TwoTower, train: ClickPairs, val_batches, f, lr: float, log) -> _Loop:
    """In-batch softmax steps with linear warm-up and decay, validated every ``eval_every`` steps, stopped
    after ``patience`` validations without improvement."""
    import torch

    rng = np.random.default_rng(f.seed + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=f.weight_decay)
    warmup = max(0, min(f.warmup_steps, f.max_steps - 1))

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 0 at max_steps
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (f.max_steps - step) / max(1, f.max_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    before = towers.val_loss(val_batches, f.temperature)
    history = [{"step": 0, "val_loss": round(before, 5)}]
    log(f"finetune: validation loss before {before:.4f}")
    best, best_step, best_state, waited = before, 0, _trainable_state(model), 0
    order, cursor, step, train_losses = rng.permutation(len(train)), 0, 0, []
    while step < f.max_steps:
        if cursor + f.batch_size > len(order):
            order, cursor = rng.permutation(len(train)), 0
        batch = train.take(order[cursor : cursor + f.batch_size])
        cursor += f.batch_size
        loss = towers.loss(batch, f.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        train_losses.append(loss.item())
        if step % f.eval_every == 0 or step == f.max_steps:
            v = towers.val_loss(val_batches, f.temperature)
            history.append(
                {"step": step, "val_loss": round(v, 5), "train_loss": round(float(np.mean(train_losses)), 5)}
            )
            train_losses = []
            log(f"finetune: step {step}: train loss {history[-1]['train_loss']:.4f}, validation loss {v:.4f}")
            if v < best:
                best, best_step, best_state, waited = v, step, _trainable_state(model), 0
            else:
                waited += 1
                if waited >= f.patience:
                    log(f"finetune: early stop at step {step} (best step {best_step})")
                    break
    return _Loop(before, best, best_step, best_state, step, history)


def _card(cfg: Config, base: Path, base_id: str, lr: float, n_trainable: int, loop: _Loop, val_batches, data: dict,
          device: str) -> dict:  # fmt: skip
    """The fine-tuned model's card (``llmfeat_model.json``): how it was trained and on what."""
    f = cfg.finetune
    return {
        "name": f"{model_name(base)}-ft-{f.method}",
        "base_model_id": base_id,
        "base_model_dir": str(base),
        "method": f.method,
        "loss": "in-batch softmax (InfoNCE) on cosine / temperature",
        "temperature": f.temperature,
        "lr": lr,
        "batch_size": f.batch_size,
        "max_tokens": f.max_tokens,
        "eval_every": f.eval_every,
        "eval_pairs": sum(map(len, val_batches)),
        "lora": {"r": f.lora_r, "alpha": f.lora_alpha, "dropout": f.lora_dropout, "targets": LORA_TARGETS}
        if f.method == "lora" else None,
        "top_layers": f.top_layers if f.method == "top_layers" else None,
        "trainable_parameters": n_trainable,
        "steps": loop.steps,
        "best_step": loop.best_step,
        "val_loss_before": round(loop.before, 5),
        "val_loss_after": round(loop.best, 5),
        "history": loop.history,
        "data": data,
        "user_template": cfg.embed.user_template,
        "item_template": cfg.embed.item_template,
        "seed": f.seed,
        "device": device,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def _save(model, tokenizer, base: Path, out: Path, card: dict) -> None:
    """Write the model directory next to its final place, then move it in (no half-written model dirs)."""
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model = copy.deepcopy(model).to("cpu").float()
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    for name in SENTENCE_TRANSFORMERS_FILES:  # the same token limit and pooling for sentence-transformers
        src = base / name
        if src.is_dir():
            shutil.copytree(src, staging / name)
        elif src.is_file():
            shutil.copy2(src, staging / name)
    (staging / MODEL_CARD).write_text(json.dumps(card, indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
