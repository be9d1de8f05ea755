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

from llmfeat.core import tables
from llmfeat.core.errors import FailureError, MissingInputError, ModelMismatchError, TooLittleDataError
from llmfeat.core.layout import DataDir
from llmfeat.core.results import AdaptResult
from llmfeat.feast.names import WINDOWS

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
    torch = _torch()
    nn = torch.nn

    class Tower(nn.Module):
        """MLP plus a linear skip initialised as a scaled orthogonal projection: at step 0 the tower keeps the
        LM geometry (cosines approximately preserved), so training starts from training-free propagation
        (TextGCN-like) instead of from a random non-linear map."""

        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, dim))
            self.skip = nn.Linear(d_in, dim, bias=False)
            nn.init.orthogonal_(self.skip.weight)
            with torch.no_grad():
                self.mlp[2].weight.mul_(0.1)
                self.mlp[2].bias.zero_()

        def forward(self, x):
            return self.skip(x) + self.mlp(x)

    return Tower()


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
    t = torch.sparse_coo_tensor(idx, val, coo.shape, check_invariants=False).coalesce()
    return (t.to_sparse_csr() if device == "cpu" else t).to(device)


def make_graph(X: sp.spmatrix, device: str = "cpu") -> Graph:
    A = normalised_adjacency(X)
    deg_u = np.asarray((X > 0).sum(axis=1)).ravel()
    deg_i = np.asarray((X > 0).sum(axis=0)).ravel()
    return Graph(
        X.shape[0], X.shape[1], _to_torch_sparse(A, device), _to_torch_sparse(A.T, device), deg_u, deg_i
    )


_SPMM = None


def _spmm():
    """``A @ x`` for a constant sparse A whose transpose is given: the backward pass is ``A^T @ grad``, one
    more sparse product, instead of torch's generic sparse backward (4-8x slower here)."""
    global _SPMM
    if _SPMM is None:
        torch = _torch()

        class SpMM(torch.autograd.Function):
            @staticmethod
            def forward(ctx, a, a_t, x):
                ctx.a_t = a_t
                return torch.sparse.mm(a, x)

            @staticmethod
            def backward(ctx, grad):
                return None, None, torch.sparse.mm(ctx.a_t, grad)

        _SPMM = SpMM.apply
    return _SPMM


def propagate(graph: Graph, users0, items0, layers: int):
    """LightGCN: the mean of layers 0..L, ``E^{l+1} = A_hat E^l`` (users <- items, items <- users)."""
    mm = _spmm()
    eu, ei = users0, items0
    su, si = users0, items0
    for _ in range(layers):
        eu, ei = mm(graph.ui, graph.iu, ei), mm(graph.iu, graph.ui, eu)
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
        layers = self.params["layers"]
        with torch.no_grad():
            U, IV, T, I0 = _forward(
                self.module, graph, _tensors(inputs, self.device), layers, with_tower=True
            )
            U = torch.nn.functional.normalize(U, dim=1)
            T = torch.nn.functional.normalize(T, dim=1)
        U, IV, T, I0 = U.cpu().numpy(), IV.cpu().numpy(), T.cpu().numpy(), I0.cpu().numpy()
        k = int(self.params.get("cold_neighbours") or 0)
        warm = graph.item_degree > 0
        self._cold_ref = None
        if k > 0 and warm.any() and (~warm).any():
            # An item without clicks has no propagated part (layers 1..L are zero), so it lacks the component
            # every clicked item shares with the users and ranks below random. Give it the mean propagated part
            # of its k nearest clicked items in LM space (content-based neighbourhood imputation).
            resid = IV[warm] - I0[warm] / (layers + 1)
            ref_x = inputs.item_x[warm]
            self._cold_ref = (ref_x, resid, k)
            cold = np.nonzero(~warm)[0]
            IV[cold] = I0[cold] / (layers + 1) + _impute(inputs.item_x[cold], ref_x, resid, k)
        IV = IV / np.maximum(np.linalg.norm(IV, axis=1, keepdims=True), 1e-12)
        has = graph.user_degree > 0
        users = np.where(has[:, None], U, np.where(inputs.user_text_found[:, None], T, 0.0)).astype(
            np.float32
        )
        return users, IV.astype(np.float32)

    def item_vectors(self, item_x: np.ndarray) -> np.ndarray:
        """Vectors of items from their LM vectors alone (new items: no clicks, no retraining); with
        ``cold_neighbours`` the same imputation as ``vectors`` (after a ``vectors`` call on the catalogue)."""
        torch = _torch()
        self.module.eval()
        x = np.asarray(item_x, np.float32)
        with torch.no_grad():
            v = self.module.item(torch.from_numpy(x).to(self.device)).cpu().numpy()
        ref = getattr(self, "_cold_ref", None)
        if ref is not None:
            v = v / (self.params["layers"] + 1) + _impute(x, *ref)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

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


def _impute(x: np.ndarray, ref_x: np.ndarray, resid: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``resid`` over the k rows of ``ref_x`` most similar (cosine of LM vectors) to each row of x."""
    sim = x @ ref_x.T
    k = min(k, ref_x.shape[0])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return resid[top].mean(axis=1)


def _dropped_items_graph(
    X: sp.spmatrix, inputs: Inputs, dropped: np.ndarray, device: str
) -> tuple[Graph, dict]:
    """The graph and inputs with every click on ``dropped`` removed (those items become isolated nodes)."""
    keep = np.ones(X.shape[1], np.float32)
    keep[dropped] = 0.0
    Xd = sp.csr_matrix(X @ sp.diags(keep))
    Xd.eliminate_zeros()
    part = make_inputs(Xd, inputs.item_x, inputs.user_text_x, inputs.user_text_found)
    return make_graph(Xd, device), _tensors(part, device)


def _tensors(inputs: Inputs, device: str) -> dict:
    torch = _torch()
    return {
        "item_x": torch.from_numpy(inputs.item_x).to(device),
        "user_hist_x": torch.from_numpy(inputs.user_hist_x).to(device),
        "user_text_x": torch.from_numpy(inputs.user_text_x).to(device),
    }


def _forward(module, graph: Graph, t: dict, layers: int, with_tower: bool = False):
    items0 = module.item(t["item_x"])
    users0 = module.item(t["user_hist_x"])
    U, IV = propagate(graph, users0, items0, layers)
    T = module.user_text(t["user_text_x"])
    return (U, IV, T, items0) if with_tower else (U, IV, T)


@dataclass
class TrainResult:
    model: AdaptedModel
    best_epoch: int
    best_val: float
    history: list
    seconds: float
    cpu_seconds: float = 0.0
    """CPU time of the process while training (all threads): on a shared machine wall time says little."""


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
    recall), stop early and keep the best epoch; without it, train exactly ``epochs`` epochs. Repeatable: the
    same data, params (seed, threads) and device give the same weights."""
    torch = _torch()
    # With more than one CPU thread the backward of the sparse propagation adds up in a thread-dependent
    # order, so two runs drifted apart (another model id, other epochs chosen); PyTorch's deterministic
    # algorithms remove that at no measurable cost here (docs/adapt.md). Process-wide in PyTorch, so restored.
    was, was_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, where CUDA has no such kernel
    try:
        return _train_adapter(X, click_u, click_i, click_age_days, inputs, params, validate=validate,
                              epochs=epochs, log=log)  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)


def _train_adapter(X, click_u, click_i, click_age_days, inputs: Inputs, params: dict, *, validate, epochs, log,
                   ) -> TrainResult:  # fmt: skip
    torch = _torch()
    started, cpu_started = time.perf_counter(), time.process_time()
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
    # Sampled negatives come from items with clicks in the graph: items without clicks never appear as
    # positives, and pushing them away as negatives would teach the tower that "unclicked-looking" text is
    # bad, which is exactly the cold items the tower exists for.
    neg_pool = np.nonzero(graph.item_degree > 0)[0] if params.get("negatives_from", "clicked") == "clicked" \
        else np.arange(n_items)  # fmt: skip
    tau = float(params["temperature"])
    tower_weight = float(params.get("tower_loss", 0.0))
    layers = int(params["layers"])
    bsz, n_neg = int(params["batch_size"]), int(params["negatives"])
    n = len(click_u)
    if n == 0:
        raise TooLittleDataError("no clicks before the snapshot: the adapter has nothing to learn from")
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
    dropout = float(params.get("item_dropout") or 0.0)
    clicked = np.nonzero(graph.item_degree > 0)[0]
    for epoch in range(1, max_epochs + 1):
        module.train()
        if dropout > 0:
            # DropoutNet-style: this epoch a random share of the clicked items lose their edges (and leave their
            # users' histories), so they are scored by their tower output alone against the other items'
            # propagated vectors -- in the same softmax. That is the situation of an item without clicks at
            # serving time, and it keeps the two kinds of item vector comparable.
            graph, t = _dropped_items_graph(X, inputs, rng.choice(clicked, int(dropout * len(clicked)),
                                                                      replace=False), device)  # fmt: skip
        order = (
            rng.choice(n, size=steps * bsz, p=prob) if prob is not None else rng.permutation(n)[: steps * bsz]
        )
        losses = []
        for s in range(steps):
            idx = torch.from_numpy(order[s * bsz : (s + 1) * bsz])
            u, i = cu_all[idx].to(device), ci_all[idx].to(device)
            neg = torch.from_numpy(neg_pool[rng.integers(0, len(neg_pool), n_neg)]).to(device)
            U, IV, T, I0 = _forward(module, graph, t, layers, with_tower=True)
            cand = torch.cat([i, neg])
            zi = torch.nn.functional.normalize(IV[cand], dim=1)
            same = torch.cat([i, neg])[None, :] == i[:, None]
            same[torch.arange(len(i)), torch.arange(len(i))] = False
            zu = torch.nn.functional.normalize(U[u], dim=1)
            logits = (zu @ zi.T / tau).masked_fill(same, float("-inf"))
            target = torch.arange(len(i), device=device)
            loss = torch.nn.functional.cross_entropy(logits, target)
            if tower_weight > 0:
                # the item tower alone (no propagation) must also find the clicked item: that is the vector an
                # item without clicks (cold, new) gets, so it has to live in the same space
                z0 = torch.nn.functional.normalize(I0[cand], dim=1)
                l0 = (zu @ z0.T / tau).masked_fill(same, float("-inf"))
                loss = loss + tower_weight * torch.nn.functional.cross_entropy(l0, target)
            tmask = text_ok[u]
            if bool(tmask.any()):
                zt = torch.nn.functional.normalize(T[u[tmask]], dim=1)
                lt = (zt @ zi.detach().T / tau).masked_fill(same[tmask], float("-inf"))
                loss = loss + torch.nn.functional.cross_entropy(lt, target[tmask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
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
    return TrainResult(model, best_epoch, best_val, history, time.perf_counter() - started,
                       time.process_time() - cpu_started)  # fmt: skip


def hybrid_scores(
    user_vecs: np.ndarray, item_vecs: np.ndarray, log_pop: np.ndarray, weight: float
) -> np.ndarray:
    """cos(u, i) + weight * log(1 + recent clicks of i): the optional hybrid score of the retriever."""
    return user_vecs @ item_vecs.T + weight * log_pop[None, :]


def text_popularity(item_vecs: np.ndarray, log_pop: np.ndarray, has_clicks: np.ndarray, lam: float
                    ) -> tuple[np.ndarray, float]:  # fmt: skip
    """Ridge regression of log recent popularity on the frozen LM item vectors, fitted on the items with
    clicks only (intercept not penalised): (coefficients, intercept). It learns which texts were clicked lately
    (in MovieLens, for one, the titles of the newest releases), which is what an item without clicks has."""
    from sklearn.linear_model import Ridge

    X = np.asarray(item_vecs, np.float64)[has_clicks]
    y = np.asarray(log_pop, np.float64)[has_clicks]
    if len(y) == 0:
        return np.zeros(np.shape(item_vecs)[1]), 0.0
    fit = Ridge(alpha=lam, fit_intercept=True, solver="cholesky").fit(X, y)
    return np.asarray(fit.coef_, np.float64), float(fit.intercept_)


def predicted_popularity(item_vecs: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    """The ``text_popularity`` prediction for items (never below 0, as log(1 + clicks) is not)."""
    return np.maximum(np.asarray(item_vecs, np.float64) @ np.asarray(coef, np.float64) + intercept, 0.0)


def new_item_prior(log_pop: np.ndarray, item_vecs: np.ndarray, has_clicks: np.ndarray, beta: float,
                   lam: float) -> np.ndarray:  # fmt: skip
    """The hybrid prior with items without clicks given ``beta`` x their text-predicted log popularity
    (``beta`` 0: the plain prior, 0 for them)."""
    prior = np.asarray(log_pop, np.float64).copy()
    if beta > 0 and (~has_clicks).any():
        coef, b0 = text_popularity(item_vecs, log_pop, has_clicks, lam)
        prior[~has_clicks] = beta * predicted_popularity(np.asarray(item_vecs)[~has_clicks], coef, b0)
    return prior


def fresh_slot_scores(base: np.ndarray, fresh: np.ndarray, is_new: np.ndarray, slots: int) -> np.ndarray:
    """``base`` scores (users x items) with each user's ``slots`` best items without clicks, by ``fresh``
    (their adapted cosine: the item tower), lifted above every other item -- the "new items get a few
    reserved slots" policy of a recommender, since an item without clicks cannot win on a popularity-shaped
    score. ``slots=0`` returns ``base`` unchanged."""
    cand = np.nonzero(is_new)[0]
    if slots <= 0 or len(cand) == 0:
        return base
    k = min(int(slots), len(cand))
    f = np.asarray(fresh)[:, cand]
    top = np.argpartition(-f, k - 1, axis=1)[:, :k]
    out = np.array(base, dtype=np.float64, copy=True)
    lift = float(np.max(out)) - float(np.min(out)) + 1.0
    rows = np.arange(out.shape[0])[:, None]
    out[rows, cand[top]] = np.max(out, axis=1, keepdims=True) + lift + np.take_along_axis(f, top, axis=1)
    return out


def fresh_candidates(
    is_new: np.ndarray, item_age_days: np.ndarray | None, release_days: int | None
) -> np.ndarray:
    """The items that may take a fresh slot: without clicks and, when ``release_days`` is set and release
    dates are known, released in the last ``release_days`` days before the cut (not after it; an item without
    a date is left out). Without dates, or with ``release_days`` None: every item without clicks."""
    if release_days is None or item_age_days is None:
        return np.asarray(is_new, bool)
    age = np.nan_to_num(np.asarray(item_age_days, np.float64), nan=-1.0)
    return np.asarray(is_new, bool) & (age >= 0) & (age <= float(release_days))


def fresh_grid(cfg_adapt, dated: bool = True) -> list[tuple[int, int | None]]:
    """(slots, release_days) candidates: no slots once, then every positive count with every window; without
    release dates (``dated`` False) every window means "any item without clicks", so only that one."""
    windows = cfg_adapt.fresh_release_days if dated else [None]
    return [(0, None)] + [(int(n), d) for n in cfg_adapt.fresh_slots if n > 0 for d in windows]


# --- the methods `llmfeat evaluate` runs -------------------------------------------------------------------


def adapter_params(cfg_adapt) -> dict:
    a = cfg_adapt
    return {"dim": a.dim, "hidden": a.hidden, "layers": a.layers, "epochs": a.epochs, "patience": a.patience,
            "batch_size": a.batch_size, "negatives": a.negatives, "negatives_from": a.negatives_from, "tower_loss": a.tower_loss, "item_dropout": a.item_dropout, "cold_neighbours": a.cold_neighbours, "lr": a.lr, "weight_decay": a.weight_decay,
            "half_life_days": a.half_life_days, "seed": a.seed, "device": a.device, "threads": a.threads}  # fmt: skip


def evaluation_methods(cfg_adapt, log: Callable[[str], None] = lambda m: None, dated: bool = True) -> list:
    """``adapted`` (cosine of adapted vectors) and ``adapted_hybrid`` (+ w log recent popularity)."""
    from llmfeat.retrieval import evaluate as E

    base = adapter_params(cfg_adapt)

    def fit_adapted(ctx, params, val=None):
        inputs = make_inputs(ctx.X, ctx.item_vecs, ctx.user_first_text, ctx.user_text_found)
        if "_model" in params:  # chosen at selection: the trained weights, re-propagated over this graph
            model = params["_model"]
        else:
            tg, k = val

            def validate(m: AdaptedModel) -> float:
                U, IV = m.vectors(ctx.X, inputs)
                return E.selection_score(lambda users: U[users] @ IV.T, ctx, tg, k)

            res = train_adapter(
                ctx.X,
                ctx.click_u,
                ctx.click_i,
                ctx.click_age_days,
                inputs,
                params,
                validate=validate,
                log=log,
            )
            model = res.model
            chosen = {"epochs": res.best_epoch, "train_seconds": round(res.seconds, 1),
                      "train_cpu_seconds": round(res.cpu_seconds, 1), "_model": model}  # fmt: skip
            U, IV = model.vectors(ctx.X, inputs)
            return E.Fit(lambda users: U[users] @ IV.T, chosen)
        U, IV = model.vectors(ctx.X, inputs)
        return E.Fit(lambda users: U[users] @ IV.T)

    # The hybrid and fresh-slot grids score many candidates on one context: the adapted vectors (a propagation
    # over the graph) and the prior are computed once per context (``ctx.cache``), not once per candidate.
    def vectors_at(ctx, model):
        key = ("adapted_vectors", id(model))
        if key not in ctx.cache:
            inputs = make_inputs(ctx.X, ctx.item_vecs, ctx.user_first_text, ctx.user_text_found)
            ctx.cache[key] = (model, model.vectors(ctx.X, inputs))  # the model kept: its id stays unique
        return ctx.cache[key][1]

    def prior_at(ctx, recent: dict, beta: float):
        key = ("hybrid_prior", json.dumps(recent, sort_keys=True), beta)
        if key not in ctx.cache:
            ctx.cache[key] = new_item_prior(np.log1p(E.recent_counts(ctx, recent)), ctx.item_vecs,
                                            ctx.item_clicks > 0, beta, cfg_adapt.new_item_ridge)  # fmt: skip
        return ctx.cache[key]

    def fit_hybrid(ctx, params, val=None):
        U, IV = vectors_at(ctx, params["adapted"]["_model"])
        log_pop = prior_at(ctx, params["recent"], params["new_item_prior"])
        w = params["weight"]
        return E.Fit(lambda users: hybrid_scores(U[users], IV, log_pop, w))

    def fit_fresh(ctx, params, val=None):
        hyb = params["hybrid"]
        U, IV = vectors_at(ctx, hyb["adapted"]["_model"])
        eligible = fresh_candidates(ctx.item_clicks == 0, ctx.item_age_days, params["release_days"])
        log_pop = prior_at(ctx, hyb["recent"], hyb["new_item_prior"])
        return E.Fit(lambda users: fresh_slot_scores(hybrid_scores(U[users], IV, log_pop, hyb["weight"]),
                                                     U[users] @ IV.T, eligible, params["slots"]))  # fmt: skip

    return [
        E.Method("adapted", lambda ch: [{**base, "temperature": float(t)} for t in cfg_adapt.temperatures],
                 fit_adapted, needs_vectors=True),
        E.Method("adapted_hybrid", lambda ch: [{"adapted": ch["adapted"], "recent": ch["recent_popularity"],
                                                "weight": float(w), "new_item_prior": float(b)}
                                               for w in cfg_adapt.hybrid_weights
                                               for b in cfg_adapt.new_item_prior],
                 fit_hybrid, needs_vectors=True),
        E.Method("adapted_fresh", lambda ch: [{"hybrid": ch["adapted_hybrid"], "slots": n, "release_days": d}
                                              for n, d in fresh_grid(cfg_adapt, dated)],
                 fit_fresh, needs_vectors=True, cold_tolerance=cfg_adapt.fresh_tolerance),
    ]  # fmt: skip


# --- the nightly stage: train, write the `adapted` embedding set ----------------------------------------------


class AdaptedSetMismatchError(ModelMismatchError):
    """The output set holds vectors adapted from another base model (or is the base set itself)."""


def adapted_model_id(base_model_id: str, checksum: str, snapshot: dt.date) -> str:
    """``<base model id>+adapter@<12 hex of the weights' sha256>@graph=<snapshot date>``: vectors of another
    adapter, base model or graph snapshot never share an id, so they never mix in a table or an index."""
    return f"{base_model_id}+adapter@{checksum[:12]}@graph={snapshot.isoformat()}"


def base_of(model_id: str) -> str:
    return model_id.split("+adapter@", 1)[0]


def adapter_dir(cfg) -> Path:
    return DataDir(Path(cfg.paths.data_dir)).adapters(cfg.adapt.output_set)


def check_output_set(
    existing_model_ids: set[str], base_model_id: str, output_set: str, base_set: str
) -> None:
    """Refuse to write adapted vectors where they would mix with another model's: into the base set, or into a
    set that holds vectors adapted from another base model. (A new adapter of the same base replaces the set
    whole, so one set never holds two adapters' rows.)"""
    if output_set == base_set:
        raise AdaptedSetMismatchError(
            f"adapt.output_set {output_set!r} is the base embedding set: adapted vectors need a set of their own"
        )
    others = sorted(m for m in existing_model_ids if base_of(m) != base_model_id)
    if others:
        raise AdaptedSetMismatchError(
            f"embedding set {output_set!r} holds vectors adapted from {', '.join(others)}, not from "
            f"{base_model_id}. Mixing models in one set is refused: choose another adapt.output_set."
        )


def _existing_model_ids(root: Path) -> set[str]:
    import pyarrow.dataset as ds

    from llmfeat.embedding.vectors import _PARTITIONING

    out: set[str] = set()
    for name in ("item_text", "user_text", "user_history"):
        path = root / name
        if tables.snapshot_dates(path):
            t = ds.dataset(path, format="parquet", partitioning=_PARTITIONING).to_table(columns=["model_id"])
            out |= set(t.column("model_id").unique().to_pylist())
    return out


def _emb_table(key: str, ids, vectors: np.ndarray, model: str, ts, created, extra: dict) -> object:
    import pyarrow as pa

    from llmfeat.data import schemas

    n = len(ids)
    hashes = [hashlib.sha256(v.tobytes()).hexdigest()[:32] for v in vectors]
    cols = {
        key: pa.array([str(i) for i in ids], pa.string()),
        "embedding": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32())),
        "dim": pa.array([vectors.shape[1]] * n, pa.int32()),
        "model_id": pa.array([model] * n, pa.string()),
        "content_hash": pa.array(hashes, pa.string()),
        "n_tokens": pa.array([0] * n, pa.int32()),
        "truncated": pa.array([False] * n, pa.bool_()),
        **{k: pa.array(v, pa.int32()) for k, v in extra.items()},
        "event_timestamp": pa.array([ts] * n, schemas.UTC_TS),
        "created_timestamp": pa.array([created] * n, schemas.UTC_TS),
    }
    return pa.table(cols)


@dataclass
class ValidationSplit:
    """Training at ``cut``: the clicks before ``start`` (= cut - validation days) are the graph and the training
    clicks, the clicks in [start, cut) the validation targets that ``validate(model)`` scores (recall@k)."""

    start: object
    ctx: object
    targets: object
    inputs: Inputs
    validate: Callable[[AdaptedModel], float]


def validation_split(data, cut, validation_days: int, k: int) -> ValidationSplit:
    """How the nightly stage trains at ``cut`` (and ``ctr_eval`` per origin): reads ``data`` before ``cut`` only."""
    import pandas as pd

    from llmfeat.retrieval import evaluate as E

    sel = data.before(cut)
    start = pd.Timestamp(cut) - pd.Timedelta(days=validation_days)
    ctx = E.context(sel, start)
    tg = E.targets(sel, ctx, start, cut)
    inputs = make_inputs(ctx.X, ctx.item_vecs, ctx.user_first_text, ctx.user_text_found)

    def validate(m: AdaptedModel) -> float:
        U, IV = m.vectors(ctx.X, inputs)
        return E.selection_score(lambda users: U[users] @ IV.T, ctx, tg, k)

    return ValidationSplit(start, ctx, tg, inputs, validate)


def run_adapt(cfg, as_of: dt.date, *, log: Callable[[str], None] = print) -> AdaptResult:
    """Train the adapter on the clicks before ``as_of`` (00:00 UTC) of the canonical snapshot, with the last
    ``adapt.validation_days`` as validation window (temperature, early stopping, hybrid weight), and write the
    ``adapt.output_set`` embedding set (item_text, user_text, user_history tables; all rows one model id),
    replacing the previous one whole. Returns the manifest."""
    import pandas as pd

    from llmfeat.core.layout import embedding_paths
    from llmfeat.retrieval import evaluate as E

    started = time.perf_counter()
    a = cfg.adapt
    base_set = cfg.embed.embedding_set
    data = E.load_eval_data(cfg.paths.data_dir, base_set, as_of)
    if data.item_vecs is None or data.model_id is None:
        raise MissingInputError(f"embedding set {base_set!r} has no item vectors: run `llmfeat embed` first")
    if "+adapter@" in data.model_id:
        raise AdaptedSetMismatchError(f"embedding set {base_set!r} is already adapted ({data.model_id})")
    out_root = embedding_paths(cfg.paths.data_dir, a.output_set).root
    check_output_set(_existing_model_ids(out_root), data.model_id, a.output_set, base_set)
    snapshot = pd.Timestamp(as_of, tz="UTC")
    data = data.before(snapshot)  # nothing at or after the snapshot exists for this stage
    k = cfg.evaluate.select_k
    v = validation_split(data, snapshot, a.validation_days, k)
    ctx_v, tg, t_val = v.ctx, v.targets, v.start
    if len(tg) == 0 or ctx_v.X.nnz == 0:
        raise TooLittleDataError(f"too few clicks to train the adapter: {ctx_v.X.nnz} before {t_val.date()}, "
                         f"{len(tg)} users with clicks in the validation window")  # fmt: skip

    params, res, tried = _train_best(a, v, k, log)
    model = res.model
    hybrid = _choose_hybrid(a, model, v, k, res.best_val)
    # vectors over the graph at the snapshot (clicks before it), with the weights trained above
    ctx = E.context(data, snapshot)
    if hybrid["new_item_prior"] > 0 and hybrid["window_days"]:
        hybrid["text_popularity"] = _text_popularity_at(ctx, hybrid["window_days"], a.new_item_ridge)
    inputs = make_inputs(ctx.X, ctx.item_vecs, ctx.user_first_text, ctx.user_text_found)
    users, items = model.vectors(ctx.X, inputs)
    checksum = model.checksum()
    mid = adapted_model_id(data.model_id, checksum, as_of)
    has_vec = np.linalg.norm(users, axis=1) > 0
    created = pd.Timestamp(dt.datetime.now(dt.UTC))
    n_clicks = ctx.user_clicks.astype(np.int64)
    card = {
        "model_id": mid, "base_model_id": data.model_id, "base_set": base_set, "output_set": a.output_set,
        "weights_sha256": checksum, "graph_snapshot": as_of.isoformat(), "graph_clicks": int(ctx.X.nnz),
        "validation_window": [t_val.isoformat(), snapshot.isoformat()], "validation_users": len(tg),
        "params": params, "tried": tried, "best_epoch": res.best_epoch, f"val_recall@{k}": round(res.best_val, 5),
        "hybrid": hybrid, "history": res.history, "train_seconds": round(sum(t["seconds"] for t in tried), 1),
        "train_cpu_seconds": round(sum(t["cpu_seconds"] for t in tried), 1),
        "created": created.isoformat(),
    }  # fmt: skip
    # the adapter's weights and card, then the embedding set, each swapped in whole
    with tables.staged_dir(adapter_dir(cfg)) as staging:
        (staging / ADAPTER_FILE).write_bytes(model.state_bytes())
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    manifest = {**card, "embedding_set": a.output_set, "counts": {"items": len(items), "users": int(has_vec.sum()),
                "users_text_tower": int((has_vec & (n_clicks == 0)).sum())}}  # fmt: skip
    _write_set(out_root, data, items, users, has_vec, n_clicks, mid, snapshot, created, manifest, started)
    log(f"adapt: {mid}: {len(items)} items, {int(has_vec.sum())} users; validation recall@{k} {res.best_val:.4f}, "
        f"hybrid { {k2: v for k2, v in hybrid.items() if k2 != 'text_popularity'} }")  # fmt: skip
    return AdaptResult({k2: v for k2, v in manifest.items() if k2 not in ("history",)})


def _train_best(a, v: ValidationSplit, k: int, log: Callable[[str], None]):
    """Train once per temperature on the validation split; the best validation recall wins:
    (params, TrainResult, what was tried)."""
    best, tried = None, []
    for tau in a.temperatures:
        params = {**adapter_params(a), "temperature": float(tau)}
        ctx = v.ctx
        res = train_adapter(ctx.X, ctx.click_u, ctx.click_i, ctx.click_age_days, v.inputs, params,
                            validate=v.validate, log=log)  # fmt: skip
        tried.append({"temperature": tau, "val_recall": round(res.best_val, 5), "best_epoch": res.best_epoch,
                      "seconds": round(res.seconds, 1), "cpu_seconds": round(res.cpu_seconds, 1)})  # fmt: skip
        log(f"adapt: temperature {tau}: validation recall@{k} {res.best_val:.4f} at epoch {res.best_epoch}")
        if best is None or res.best_val > best[1].best_val:
            best = (params, res)
    return best[0], best[1], tried


def _choose_hybrid(a, model: AdaptedModel, v: ValidationSplit, k: int, plain_recall: float) -> dict:
    """The hybrid score's settings, on the validation split: the trailing window of the popularity prior (the
    ``clicks_<w>d`` that item_stats publishes), its weight, the multiplier of the text-predicted prior of items
    without clicks, each kept only if it beats the plain cosine's recall; then reserved fresh slots on top, the
    best validation recall on items without clicks within ``adapt.fresh_tolerance`` of the hybrid's recall."""
    from llmfeat.retrieval import evaluate as E

    ctx, tg = v.ctx, v.targets
    U, IV = model.vectors(ctx.X, v.inputs)
    clicked = ctx.item_clicks > 0

    def prior(window: int, beta: float) -> np.ndarray:
        log_pop = np.log1p(E.recent_counts(ctx, {"window_days": window}))
        return new_item_prior(log_pop, ctx.item_vecs, clicked, beta, a.new_item_ridge)

    hybrid = {"window_days": None, "weight": 0.0, "new_item_prior": 0.0, "val_recall": round(plain_recall, 5)}
    for w_days in WINDOWS:
        for beta in a.new_item_prior:
            log_pop = prior(w_days, beta)
            for w in a.hybrid_weights:
                s = E.selection_score(lambda users: hybrid_scores(U[users], IV, log_pop, w), ctx, tg, k)  # noqa: B023
                if s > hybrid["val_recall"] + 1e-12:
                    hybrid = {"window_days": w_days, "weight": float(w), "new_item_prior": float(beta),
                              "val_recall": round(s, 5)}  # fmt: skip
    log_pop = prior(hybrid["window_days"] or 1, hybrid["new_item_prior"])

    def with_slots(n: int, days: int | None):
        eligible = fresh_candidates(~clicked, ctx.item_age_days, days)

        def score(users):
            base = hybrid_scores(U[users], IV, log_pop, hybrid["weight"])
            return fresh_slot_scores(base, U[users] @ IV.T, eligible, n)

        return score

    # fresh slots: the best validation recall on items without clicks within the overall-recall budget
    grid = fresh_grid(a, dated=ctx.item_age_days is not None)
    scores = [E.selection_scores(with_slots(n, d), ctx, tg, k) for n, d in grid]
    best = E.choose_within(scores, a.fresh_tolerance)
    (n, days), (recall, cold) = grid[best], scores[best]
    hybrid.update(fresh_slots=n, fresh_release_days=days, val_recall=round(recall, 5),
                  val_cold_recall=None if np.isnan(cold) else round(cold, 5))  # fmt: skip
    return hybrid


def _text_popularity_at(ctx, window_days: int, ridge: float) -> dict:
    """The text-popularity regression refitted on the clicks before the snapshot, as the card stores it (the
    retriever applies it to the items without clicks: ``retriever.new_item_priors``)."""
    from llmfeat.retrieval import evaluate as E

    log_pop = np.log1p(E.recent_counts(ctx, {"window_days": window_days}))
    coef, b0 = text_popularity(ctx.item_vecs, log_pop, ctx.item_clicks > 0, ridge)
    return {"coef": [round(float(c), 7) for c in coef], "intercept": float(b0), "ridge": ridge}


def _write_set(out_root, data, items, users, has_vec, n_clicks, mid: str, snapshot, created, manifest: dict,
               started: float) -> None:  # fmt: skip
    """The adapted embedding set (item_text, user_text, user_history, one model id) and its manifest, swapped
    in whole."""
    as_of = snapshot.date()
    with tables.staged_dir(out_root) as staging:
        for name, key, ids, vecs, extra in (
            ("item_text", "item_id", data.item_ids, items, {}),
            ("user_text", "user_id", data.user_ids[has_vec], users[has_vec], {"n_history": n_clicks[has_vec]}),
            ("user_history", "user_id", data.user_ids[has_vec], users[has_vec], {"n_clicks": n_clicks[has_vec]}),
        ):  # fmt: skip
            part = tables.snapshot_dir(staging / name, as_of)
            part.mkdir(parents=True)
            tables.write_parquet(
                _emb_table(key, ids, vecs, mid, snapshot, created, extra), part / tables.PARQUET_FILE
            )
        manifest["seconds"] = {"total": round(time.perf_counter() - started, 1)}
        run_id = f"{as_of.isoformat()}T{created.strftime('%H%M%S')}-adapt"
        (staging / "manifests").mkdir()
        (staging / "manifests" / f"{run_id}.json").write_text(json.dumps(manifest, indent=2, default=str))


def card_path(cfg, embedding_set: str) -> Path:
    """Where the card of the adapter that wrote ``embedding_set`` is (a set not written by one has none)."""
    return DataDir(Path(cfg.paths.data_dir)).adapters(embedding_set) / CARD_FILE


def load_card(cfg) -> dict:
    """The card of the adapter that made ``cfg.embed.embedding_set`` (or ``adapt.output_set``)."""
    default = cfg.embed.embedding_set == "default"
    path = card_path(cfg, cfg.adapt.output_set if default else cfg.embed.embedding_set)
    if not path.is_file():
        raise MissingInputError(
            f"no adapter card at {path}: the hybrid score needs a set written by `llmfeat adapt`"
        )
    return json.loads(path.read_text())


def load_adapter(cfg) -> tuple[AdaptedModel, dict]:
    """The published adapter of ``adapt.output_set`` (weights + card), e.g. to embed a new item at once."""
    torch = _torch()
    root = adapter_dir(cfg)
    if not (root / CARD_FILE).is_file():
        raise MissingInputError(f"no adapter at {root}: run `llmfeat adapt` first")
    card = json.loads((root / CARD_FILE).read_text())
    p = card["params"]
    module = build_adapter(int(card.get("input_dim", 0)) or _input_dim(root), p["hidden"], p["dim"])
    module.load_state_dict(torch.load(io.BytesIO((root / ADAPTER_FILE).read_bytes()), weights_only=True))
    model = AdaptedModel(module, p, "cpu")
    if model.checksum() != card["weights_sha256"]:
        raise FailureError(f"{root / ADAPTER_FILE} does not match its card's checksum")
    return model, card


def _input_dim(root: Path) -> int:
    torch = _torch()
    state = torch.load(io.BytesIO((root / ADAPTER_FILE).read_bytes()), weights_only=True)
    return int(state["item.skip.weight"].shape[1])


def output_config(cfg):
    """``cfg`` pointed at the adapted set (for publish / index / retrieve)."""
    out = copy.deepcopy(cfg)
    out.embed.embedding_set = cfg.adapt.output_set
    return out


def run_adapt_stage(cfg, as_of: dt.date, *, spark=None, publish: bool = True, log: Callable[[str], None] = print
                    ) -> AdaptResult:  # fmt: skip
    """The nightly stage: train + write the set, then publish it as its own Feast project (full
    materialisation: the set was replaced) and build its own FAISS index."""
    summary = run_adapt(cfg, as_of, log=log)
    out_cfg = output_config(cfg)
    if publish:
        from llmfeat.features.publish import run_publish

        t0 = time.perf_counter()
        run_publish(out_cfg, as_of, full=True, log=log)
        summary.data["seconds"]["publish"] = round(time.perf_counter() - t0, 1)
    from llmfeat.retrieval.index import run_index

    t0 = time.perf_counter()
    idx = run_index(out_cfg, as_of, log=log)
    summary.data["seconds"]["index"] = round(time.perf_counter() - t0, 1)
    summary.data["index_version"] = idx.version
    return summary
