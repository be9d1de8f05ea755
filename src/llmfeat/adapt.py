"""The collaborative adapter: frozen LM vectors mapped into the space of the click graph (AlphaRec-style).

AlphaRec (Sheng et al., "Language representations can be what recommenders need", ICLR 2025): a small MLP over
the frozen language-model item vector, LightGCN propagation over the user-item graph, InfoNCE. Here:

- **item tower**: ``MLP(LM item vector)``; an item without clicks (new, or unclicked) gets ``MLP(its vector)``
  (an isolated node keeps its layer-0 embedding), so a new item has a vector at once, without retraining;
- **users**: layer 0 is the same MLP over the mean LM vector of the user's clicked items, propagated with the
  items; a user without any click before the snapshot gets the **user text tower**, ``MLP_text(user text
  vector)`` (profile, as of the snapshot), trained to point at the items the clicking users clicked;
- **propagation**: LightGCN (He et al., SIGIR 2020): ``E^{l+1} = D^-1/2 A D^-1/2 E^l`` over the bipartite graph
  of clicks strictly before the snapshot, the final embedding the mean of layers 0..L; torch sparse ops;
- **loss**: InfoNCE over cosine / temperature, the batch's other positives plus ``negatives`` uniformly
  sampled items as negatives (the same item elsewhere in the batch is masked); Adam; seeded;
- **early stopping** on validation recall@k (the caller's validation window), temperature chosen the same way.

Hybrid score (``hybrid_scores``): ``cos(u, i) + w * log(1 + recent clicks of i)``, w chosen on validation.

Written by hand on torch rather than with a graph library (PyG / DGL): LightGCN without training parameters in
the propagation is two sparse matrix products per layer, and a graph library would be a large dependency for it.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ADAPTER_FILE = "adapter.pt"
CARD_FILE = "adapter.json"


def _torch():
    import torch

    return torch


def resolve_device(device: str) -> str:
    torch = _torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def make_mlp(d_in: int, hidden: int, dim: int):
    nn = _torch().nn
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, dim))


def build_adapter(d_in: int, hidden: int, dim: int):
    nn = _torch().nn

    class _Adapter(nn.Module):
        def __init__(self):
            super().__init__()
            self.item = make_mlp(d_in, hidden, dim)
            self.user_text = make_mlp(d_in, hidden, dim)

    return _Adapter()


@dataclass
class Graph:
    """The normalised bipartite adjacency ``D_u^-1/2 X D_i^-1/2`` as torch sparse matrices (both directions)."""

    n_users: int
    n_items: int
    ui: object
    iu: object
    user_degree: np.ndarray
    item_degree: np.ndarray


def normalised_adjacency(X: sp.spmatrix) -> sp.csr_matrix:
    X = sp.csr_matrix(X, dtype=np.float64)
    X.data[:] = 1.0
    du = np.asarray(X.sum(axis=1)).ravel()
    di = np.asarray(X.sum(axis=0)).ravel()
    iu = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1e-12)), 0.0)
    ii = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1e-12)), 0.0)
    return sp.csr_matrix(sp.diags(iu) @ X @ sp.diags(ii))


def _to_torch_sparse(m: sp.spmatrix, device: str):
    torch = _torch()
    coo = sp.coo_matrix(m)
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    val = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(idx, val, coo.shape).coalesce().to(device)


def make_graph(X: sp.spmatrix, device: str = "cpu") -> Graph:
    A = normalised_adjacency(X)
    deg_u = np.asarray((X > 0).sum(axis=1)).ravel()
    deg_i = np.asarray((X > 0).sum(axis=0)).ravel()
    return Graph(X.shape[0], X.shape[1], _to_torch_sparse(A, device), _to_torch_sparse(A.T, device), deg_u, deg_i)


def propagate(graph: Graph, users0, items0, layers: int):
    """LightGCN: the mean of layers 0..L, ``E^{l+1} = A_hat E^l`` (users <- items, items <- users)."""
    torch = _torch()
    eu, ei = users0, items0
    su, si = users0, items0
    for _ in range(layers):
        eu, ei = torch.sparse.mm(graph.ui, ei), torch.sparse.mm(graph.iu, eu)
        su = su + eu
        si = si + ei
    return su / (layers + 1), si / (layers + 1)


@dataclass
class Inputs:
    """Frozen LM vectors the adapter reads (numpy, L2-normalised rows; zeros where absent)."""

    item_x: np.ndarray
    user_hist_x: np.ndarray
    """Mean LM vector of each user's clicked items before the snapshot (normalised); zeros without clicks."""
    user_text_x: np.ndarray
    user_text_found: np.ndarray


def make_inputs(X: sp.spmatrix, item_vecs: np.ndarray, user_text: np.ndarray | None,
                user_text_found: np.ndarray | None) -> Inputs:  # fmt: skip
    X = sp.csr_matrix(X, dtype=np.float32)
    X.data[:] = 1.0
    H = np.asarray(X @ item_vecs, dtype=np.float32)
    n = np.linalg.norm(H, axis=1, keepdims=True)
    H = H / np.where(n > 0, n, 1.0)
    if user_text is None:
        user_text = np.zeros((X.shape[0], item_vecs.shape[1]), np.float32)
        user_text_found = np.zeros(X.shape[0], bool)
    return Inputs(item_vecs.astype(np.float32), H, user_text.astype(np.float32), user_text_found.astype(bool))


class AdaptedModel:
    """A trained adapter: turns (graph, frozen vectors) into unit user and item vectors."""

    def __init__(self, module, params: dict, device: str = "cpu"):
        self.module = module
        self.params = params
        self.device = device

    def vectors(self, X: sp.spmatrix, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors, item vectors), L2-normalised, for the graph ``X`` (clicks before the snapshot).
        Users without clicks get the text tower (zeros when they have no text vector either)."""
        torch = _torch()
        graph = make_graph(X, self.device)
        self.module.eval()
        with torch.no_grad():
            U, I, T = _forward(self.module, graph, _tensors(inputs, self.device), self.params["layers"])
            U = torch.nn.functional.normalize(U, dim=1)
            I = torch.nn.functional.normalize(I, dim=1)
            T = torch.nn.functional.normalize(T, dim=1)
        U, I, T = U.cpu().numpy(), I.cpu().numpy(), T.cpu().numpy()
        has = graph.user_degree > 0
        users = np.where(has[:, None], U, np.where(inputs.user_text_found[:, None], T, 0.0)).astype(np.float32)
        return users, I.astype(np.float32)

    def item_vectors(self, item_x: np.ndarray) -> np.ndarray:
        """Vectors of items from their LM vectors alone (new items: no clicks, no retraining)."""
        torch = _torch()
        self.module.eval()
        with torch.no_grad():
            v = self.module.item(torch.from_numpy(np.asarray(item_x, np.float32)).to(self.device))
            v = torch.nn.functional.normalize(v, dim=1)
        return v.cpu().numpy()

    def state_bytes(self) -> bytes:
        torch = _torch()
        buf = io.BytesIO()
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        torch.save(state, buf)
        return buf.getvalue()

    def checksum(self) -> str:
        """sha256 of the weights' raw values (independent of the pickle layout)."""
        h = hashlib.sha256()
        for k, v in sorted(self.module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()


def _tensors(inputs: Inputs, device: str) -> dict:
    torch = _torch()
    return {
        "item_x": torch.from_numpy(inputs.item_x).to(device),
        "user_hist_x": torch.from_numpy(inputs.user_hist_x).to(device),
        "user_text_x": torch.from_numpy(inputs.user_text_x).to(device),
    }


def _forward(module, graph: Graph, t: dict, layers: int):
    items0 = module.item(t["item_x"])
    users0 = module.item(t["user_hist_x"])
    U, I = propagate(graph, users0, items0, layers)
    T = module.user_text(t["user_text_x"])
    return U, I, T


@dataclass
class TrainResult:
    model: AdaptedModel
    best_epoch: int
    best_val: float
    history: list
    seconds: float


def train_adapter(
    X: sp.spmatrix,
    click_u: np.ndarray,
    click_i: np.ndarray,
    click_age_days: np.ndarray,
    inputs: Inputs,
    params: dict,
    *,
    validate: Callable[[AdaptedModel], float] | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> TrainResult:
    """Train on the clicks (click_u, click_i) whose graph is ``X``. With ``validate`` (model -> validation
    recall), stop early and keep the best epoch; without it, train exactly ``epochs`` epochs."""
    torch = _torch()
    started = time.perf_counter()
    device = resolve_device(params.get("device", "auto"))
    if device == "cpu" and params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    seed = int(params.get("seed", 7))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    d_in = inputs.item_x.shape[1]
    module = build_adapter(d_in, params["hidden"], params["dim"]).to(device)
    opt = torch.optim.Adam(module.parameters(), lr=params["lr"], weight_decay=params.get("weight_decay", 0.0))
    graph = make_graph(X, device)
    t = _tensors(inputs, device)
    n_items = inputs.item_x.shape[0]
    tau = float(params["temperature"])
    layers = int(params["layers"])
    bsz, n_neg = int(params["batch_size"]), int(params["negatives"])
    n = len(click_u)
    if n == 0:
        raise ValueError("no clicks before the snapshot: the adapter has nothing to learn from")
    hl = params.get("half_life_days")
    prob = None
    if hl:
        w = np.power(0.5, np.asarray(click_age_days) / float(hl))
        prob = w / w.sum()
    text_ok = torch.from_numpy(inputs.user_text_found).to(device)
    cu_all = torch.from_numpy(np.asarray(click_u, np.int64))
    ci_all = torch.from_numpy(np.asarray(click_i, np.int64))
    max_epochs = int(epochs if epochs is not None else params["epochs"])
    patience = int(params.get("patience", 4))
    model = AdaptedModel(module, params, device)
    best_val, best_epoch, best_state, waited, history = -1.0, 0, copy.deepcopy(module.state_dict()), 0, []
    steps = max(1, n // bsz)
    for epoch in range(1, max_epochs + 1):
        module.train()
        order = rng.choice(n, size=steps * bsz, p=prob) if prob is not None else rng.permutation(n)[: steps * bsz]
        losses = []
        for s in range(steps):
            idx = torch.from_numpy(order[s * bsz : (s + 1) * bsz])
            u, i = cu_all[idx].to(device), ci_all[idx].to(device)
            neg = torch.from_numpy(rng.integers(0, n_items, n_neg)).to(device)
            U, I, T = _forward(module, graph, t, layers)
            zi = torch.nn.functional.normalize(I[torch.cat([i, neg])], dim=1)
            same = torch.cat([i, neg])[None, :] == i[:, None]
            same[torch.arange(len(i)), torch.arange(len(i))] = False
            zu = torch.nn.functional.normalize(U[u], dim=1)
            logits = (zu @ zi.T / tau).masked_fill(same, float("-inf"))
            target = torch.arange(len(i), device=device)
            loss = torch.nn.functional.cross_entropy(logits, target)
            tmask = text_ok[u]
            if bool(tmask.any()):
                zt = torch.nn.functional.normalize(T[u[tmask]], dim=1)
                lt = (zt @ zi.detach().T / tau).masked_fill(same[tmask], float("-inf"))
                loss = loss + torch.nn.functional.cross_entropy(lt, target[tmask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        entry = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4)}
        if validate is not None:
            v = validate(model)
            entry["val"] = round(v, 5)
            if v > best_val:
                best_val, best_epoch, best_state, waited = v, epoch, copy.deepcopy(module.state_dict()), 0
            else:
                waited += 1
        history.append(entry)
        log(f"adapt: epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in entry.items() if k != "epoch"))
        if validate is not None and waited >= patience:
            break
    if validate is not None:
        module.load_state_dict(best_state)
    else:
        best_epoch = max_epochs
    return TrainResult(model, best_epoch, best_val, history, time.perf_counter() - started)


def hybrid_scores(user_vecs: np.ndarray, item_vecs: np.ndarray, log_pop: np.ndarray, weight: float) -> np.ndarray:
    """cos(u, i) + weight * log(1 + recent clicks of i): the optional hybrid score of the retriever."""
    return user_vecs @ item_vecs.T + weight * log_pop[None, :]


# --- the methods `llmfeat evaluate` runs -------------------------------------------------------------------


def adapter_params(cfg_adapt) -> dict:
    a = cfg_adapt
    return {"dim": a.dim, "hidden": a.hidden, "layers": a.layers, "epochs": a.epochs, "patience": a.patience,
            "batch_size": a.batch_size, "negatives": a.negatives, "lr": a.lr, "weight_decay": a.weight_decay,
            "half_life_days": a.half_life_days, "seed": a.seed, "device": a.device, "threads": a.threads}  # fmt: skip


def evaluation_methods(cfg_adapt) -> list:
    """``adapted`` (cosine of adapted vectors) and ``adapted_hybrid`` (+ w log recent popularity)."""
    from llmfeat import evaluate as E

    base = adapter_params(cfg_adapt)

    def fit_adapted(ctx, params, val=None):
        inputs = make_inputs(ctx.X, ctx.item_vecs, ctx.user_text, ctx.user_text_found)
        if "_model" in params:  # chosen at selection: the trained weights, re-propagated over this graph
            model = params["_model"]
        else:
            tg, k = val

            def validate(m: AdaptedModel) -> float:
                U, I = m.vectors(ctx.X, inputs)
                return E.selection_score(lambda users: U[users] @ I.T, ctx, tg, k)

            res = train_adapter(ctx.X, ctx.click_u, ctx.click_i, ctx.click_age_days, inputs, params, validate=validate)
            model = res.model
            chosen = {"epochs": res.best_epoch, "train_seconds": round(res.seconds, 1), "_model": model}
            U, I = model.vectors(ctx.X, inputs)
            return E.Fit(lambda users: U[users] @ I.T, chosen)
        U, I = model.vectors(ctx.X, inputs)
        return E.Fit(lambda users: U[users] @ I.T)

    def fit_hybrid(ctx, params, val=None):
        inputs = make_inputs(ctx.X, ctx.item_vecs, ctx.user_text, ctx.user_text_found)
        U, I = params["adapted"]["_model"].vectors(ctx.X, inputs)
        log_pop = np.log1p(E.recent_counts(ctx, params["recent"]))
        w = params["weight"]
        return E.Fit(lambda users: hybrid_scores(U[users], I, log_pop, w))

    return [
        E.Method("adapted", lambda ch: [{**base, "temperature": float(t)} for t in cfg_adapt.temperatures],
                 fit_adapted, needs_vectors=True),
        E.Method("adapted_hybrid", lambda ch: [{"adapted": ch["adapted"], "recent": ch["recent_popularity"],
                                                "weight": float(w)} for w in cfg_adapt.hybrid_weights],
                 fit_hybrid, needs_vectors=True),
    ]  # fmt: skip
