"""Warm start of the CTR models from the previous night's (``train.warm_start``).

A model starts from the weights of the model of the same name that ``current.json`` points at, instead of a
random initialisation, and is then trained as usual (same epochs, early stopping on validation): a warm model
reaches its best validation AUC in fewer epochs, so early stopping ends the fit sooner.

Only where it cannot leak or mislead:

- the temporal protocol only, and only when the previous run's T1 and T2 are not after tonight's: the previous
  model then saw only rows before tonight's validation window's end and none of tonight's test rows (its
  training rows are a subset of tonight's). Leave-last-k test rows lie anywhere in time: never warm-started;
- the same class, constructor arguments (apart from the id vocabulary sizes), feature set, dense feature names
  and embedding model id; not ``deep_tfidf``, whose TF-IDF space is refitted every night on the current items
  (the same column names would mean other directions);
- id embeddings are carried over by id: a user or item in both vocabularies keeps its learnt row, a new one
  keeps its fresh initialisation, the "unknown" row (0) is carried over;
- a warm fit's vocabulary is tonight's training ids *and* the previous model's (``carried_vocab``): a night that
  fits a sample of the history (a refresh window and its replay) would otherwise forget every user and item
  that has no row in tonight's sample (a ranker would then score that user as an unknown id), and an id must
  be sampled night after night to keep its learnt row. On MovieLens this changed no test AUC measurably
  (BENCHMARKS.md "Refresh window": most test users there are new users). The rows of ids without a training row
  tonight are held at their learnt values during the fit (``fixed_rows``): they get no gradient, and Adam's
  L2 term alone would move them by about the learning rate per step, to zero within a few batches.

Anything else starts cold, and the summary says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from llmfeat.ctr.data import Vocab

ID_TABLES = {"user_emb.weight": "user_vocab", "item_emb.weight": "item_vocab"}


def previous_run(models_dir: Path) -> tuple[dict, Path] | None:
    """The summary and directory of the run ``current.json`` points at; None when there is none."""
    from llmfeat.ctr.train import run_dir_of

    pointer = Path(models_dir) / "current.json"
    if not pointer.is_file():
        return None
    run = run_dir_of(pointer)
    summary = run / "summary.json"
    return (json.loads(summary.read_text()), run) if summary.is_file() else None


def eligible(previous: dict | None, protocol: str, boundaries: dict) -> str | None:
    """None when the split may start from the previous run's models, else why not."""
    if previous is None:
        return "no previous models"
    if protocol != "temporal":
        return f"protocol {protocol}: its test rows may precede the previous run's training rows"
    before = previous.get("protocols", {}).get("temporal", {})
    if not before.get("t1") or not before.get("t2"):
        return "the previous run has no temporal split"
    if before["t1"] > boundaries["t1"] or before["t2"] > boundaries["t2"]:
        return f"the previous run's split ({before['t1']}, {before['t2']}) is after tonight's"
    return None


def carried_vocab(previous_run: Path, ids: dict[str, pd.Series]) -> dict[str, Vocab]:
    """Tonight's vocabularies (``ids``: "user_vocab" / "item_vocab" -> tonight's training ids) joined with the
    previous run's, read from its first saved model with ids (tonight's alone when it has none)."""
    old: dict = {}
    for path in sorted(Path(previous_run).glob("*.pt")):
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("user_vocab"):
            old = saved
            break
    return {key: Vocab.fit([*map(str, values), *old.get(key, {})]) for key, values in ids.items()}


def fixed_rows(vocabs: dict[str, Vocab], ids: dict[str, pd.Series]) -> dict[str, torch.Tensor]:
    """Id-table parameter name -> the rows of ids in the vocabulary but not among tonight's training ids."""
    out = {}
    for param, key in ID_TABLES.items():
        present = set(map(str, ids[key]))
        rows = [i for k, i in vocabs[key].index.items() if k not in present]
        if rows:
            out[param] = torch.tensor(sorted(rows), dtype=torch.long)
    return out


@torch.no_grad()
def as_unknown(model: torch.nn.Module, fixed: dict[str, torch.Tensor]) -> None:
    """Give the ``fixed`` rows the learnt "unknown id" row (0): for a model that started cold on a carried
    vocabulary, whose carried ids have no learnt row of their own."""
    params = dict(model.named_parameters())
    for name, rows in fixed.items():
        if name in params:
            params[name][rows] = params[name][0].clone()


def load_into(model: torch.nn.Module, checkpoint_path: Path, *, kwargs: dict, feature_set: str, dense_names: list,
              users: Vocab, items: Vocab, embedding_model_id: str | None) -> str | None:  # fmt: skip
    """Copy the previous model's weights into ``model`` (ids mapped by id); None when done, else why not."""
    if feature_set == "tfidf":
        return "the TF-IDF space is refitted every night"
    if not Path(checkpoint_path).is_file():
        return "no previous model of this name"
    old = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    sizes = ("n_users", "n_items")
    same = {
        "class": old["class"] == type(model).__name__,
        "kwargs": {k: v for k, v in old["kwargs"].items() if k not in sizes}
        == {k: v for k, v in kwargs.items() if k not in sizes},
        "feature set": old["feature_set"] == feature_set and list(old["dense_names"]) == list(dense_names),
        "embedding model": old.get("embedding_model_id") == embedding_model_id,
    }
    if not all(same.values()):
        return f"the previous model differs in {', '.join(k for k, ok in same.items() if not ok)}"
    vocabs = {"user_vocab": users, "item_vocab": items}
    state = model.state_dict()
    for key, value in old["state_dict"].items():
        if key in ID_TABLES:
            state[key] = _carry_rows(value, old[ID_TABLES[key]], state[key], vocabs[ID_TABLES[key]])
        else:
            state[key] = value
    model.load_state_dict(state)
    return None


def _carry_rows(old: torch.Tensor, old_index: dict, new: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    out = new.clone()
    out[0] = old[0]  # the learnt "unknown id" row
    pairs = [(i, old_index[k]) for k, i in vocab.index.items() if k in old_index]
    if pairs:
        to, frm = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs, strict=True))
        out[to] = old[frm]
    return out
