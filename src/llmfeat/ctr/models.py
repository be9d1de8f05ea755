"""CTR models (torch) and their training loop: seeded, early stopping on validation AUC, CPU or GPU.

- ``LogisticRegression``: one linear layer on a dense vector (the seed's concatenated, normalised vector).
- ``DeepCTR``: DCN-v2 style. User and item id embeddings are concatenated with the dense features; a stack of
  low-rank cross layers (explicit feature crosses) runs beside an MLP with dropout; both feed the logit.
  L2 regularisation is the optimiser's weight decay. Ids unseen in training map to index 0, an "unknown"
  embedding that is trained by randomly hiding known ids (id dropout), so cold users and items fall back on
  their dense (text, stats) features.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from llmfeat.ctr.metrics import auc


@dataclass
class CtrInputs:
    dense: np.ndarray
    """(n, d) float32"""
    user_idx: np.ndarray
    """(n,) int64; 0 = unknown"""
    item_idx: np.ndarray
    labels: np.ndarray
    """(n,) float32 in {0, 1}"""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> CtrInputs:
        return CtrInputs(self.dense[mask], self.user_idx[mask], self.item_idx[mask], self.labels[mask])


class LogisticRegression(nn.Module):
    def __init__(self, dense_dim: int):
        super().__init__()
        self.linear = nn.Linear(dense_dim, 1)

    def forward(self, dense, user_idx, item_idx):
        return self.linear(dense).squeeze(-1)


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (U (V^T x_l)) + b + x_l (DCN-v2, low rank)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.v = nn.Linear(dim, rank, bias=False)
        self.u = nn.Linear(rank, dim)

    def forward(self, x0, x):
        return x0 * self.u(self.v(x)) + x


class DeepCTR(nn.Module):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        dense_dim: int,
        id_dim: int = 16,
        hidden: tuple[int, ...] = (256, 64),
        cross_layers: int = 2,
        cross_rank: int = 32,
        dropout: float = 0.2,
        use_ids: bool = True,
        id_dropout: float = 0.1,
        text_blocks: int = 0,
        text_dim: int = 0,
        text_proj: int = 8,
    ):
        super().__init__()
        self.use_ids = use_ids
        self.id_dropout = id_dropout
        # The first text_blocks * text_dim dense columns are embedding blocks; each gets its own learnt
        # projection to text_proj dims (a bottleneck: hundreds of raw embedding dims overfit quickly).
        self.text_blocks, self.text_dim = text_blocks, text_dim
        self.projections = nn.ModuleList(nn.Linear(text_dim, text_proj) for _ in range(text_blocks))
        dense_dim = dense_dim - text_blocks * text_dim + text_blocks * text_proj
        self.user_emb = nn.Embedding(n_users + 1, id_dim) if use_ids else None
        self.item_emb = nn.Embedding(n_items + 1, id_dim) if use_ids else None
        width = dense_dim + (2 * id_dim if use_ids else 0)
        self.crosses = nn.ModuleList(CrossLayer(width, cross_rank) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        prev = width
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
            prev = h
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width + prev, 1)
        if use_ids:
            nn.init.normal_(self.user_emb.weight, std=0.01)
            nn.init.normal_(self.item_emb.weight, std=0.01)

    def forward(self, dense, user_idx, item_idx):
        if self.text_blocks:
            cut = self.text_blocks * self.text_dim
            blocks = dense[:, :cut].view(-1, self.text_blocks, self.text_dim)
            projected = [proj(blocks[:, i]) for i, proj in enumerate(self.projections)]
            dense = torch.cat([*projected, dense[:, cut:]], dim=1)
        parts = [dense]
        if self.use_ids:
            if self.training and self.id_dropout > 0:
                # Train the "unknown id" embedding too, so cold users and items get a learnt fallback and the
                # model learns to lean on their dense features (DropoutNet-style).
                user_idx = user_idx.masked_fill(
                    torch.rand_like(user_idx, dtype=torch.float32) < self.id_dropout, 0
                )
                item_idx = item_idx.masked_fill(
                    torch.rand_like(item_idx, dtype=torch.float32) < self.id_dropout, 0
                )
            parts += [self.user_emb(user_idx), self.item_emb(item_idx)]
        x0 = torch.cat(parts, dim=1)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        return self.head(torch.cat([x, self.mlp(x0)], dim=1)).squeeze(-1)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 2
    seed: int = 7
    device: str = "auto"


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    """Per epoch: train loss, validation loss and AUC."""
    best_epoch: int = 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _tensors(inputs: CtrInputs, device: torch.device):
    return (
        torch.from_numpy(np.ascontiguousarray(inputs.dense, dtype=np.float32)).to(device),
        torch.from_numpy(inputs.user_idx.astype(np.int64)).to(device),
        torch.from_numpy(inputs.item_idx.astype(np.int64)).to(device),
        torch.from_numpy(inputs.labels.astype(np.float32)).to(device),
    )


@torch.no_grad()
def predict(model: nn.Module, inputs: CtrInputs, batch_size: int = 4096, device: str = "auto") -> np.ndarray:
    dev = _device(device)
    model = model.to(dev).eval()
    dense, users, items, _ = _tensors(inputs, dev)
    out = [torch.sigmoid(model(dense[i : i + batch_size], users[i : i + batch_size], items[i : i + batch_size]))
           for i in range(0, len(inputs), batch_size)]  # fmt: skip
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


def fit(
    model: nn.Module,
    train: CtrInputs,
    validation: CtrInputs,
    cfg: TrainConfig,
    progress: Callable[[int, dict], None] | None = None,
    fixed_rows: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """Adam on BCE; keeps the weights of the epoch with the best validation AUC; stops after ``patience``
    epochs without improvement. Deterministic for a given seed on CPU. ``fixed_rows``: parameter name -> rows
    held at their starting values (a warm fit's ids without training rows: llmfeat.ctr.warm_start)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = _device(cfg.device)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    dense, users, items, labels = _tensors(train, dev)
    result = FitResult(model)
    params = dict(model.named_parameters())
    held = [(params[n], i.to(dev), params[n].detach()[i.to(dev)].clone()) for n, i in (fixed_rows or {}).items()
            if n in params]  # fmt: skip
    best_auc, best_state, stale = -math.inf, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.from_numpy(rng.permutation(len(train))).to(dev)
        total = 0.0
        for start in range(0, len(train), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(dense[idx], users[idx], items[idx]), labels[idx])
            loss.backward()
            opt.step()
            with torch.no_grad():
                for param, rows, values in held:
                    param[rows] = values
            total += float(loss.detach()) * len(idx)
        probs = predict(model, validation, device=cfg.device)
        val_auc = auc(validation.labels, probs)
        val_loss = float(
            loss_fn(
                torch.logit(torch.from_numpy(np.clip(probs, 1e-7, 1 - 1e-7))),
                torch.from_numpy(validation.labels),
            )
        )
        row = {
            "epoch": epoch,
            "train_loss": total / max(len(train), 1),
            "val_loss": val_loss,
            "val_auc": val_auc,
        }
        result.history.append(row)
        if progress:
            progress(epoch, row)
        if val_auc > best_auc:
            best_auc, best_state, stale, result.best_epoch = (
                val_auc,
                copy.deepcopy(model.state_dict()),
                0,
                epoch,
            )
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return result
