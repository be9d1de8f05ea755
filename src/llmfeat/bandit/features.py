"""Bandit features: one shared row per decision (user + context), one row per candidate item (action).

Layout (``proj`` = ``bandit.proj_dim``, or the full vector dimension when it is 0):

    shared  [ U: user text vector (proj) | H: pooled-history vector (proj) | C: context (CONTEXT) ]
    action  [ A: item text vector (proj) | S: stats (ACTION_STATS) ]

CONTEXT: has_text, has_history, log1p(history clicks), 4 time-of-day buckets (6 h each), 7 weekdays (from
the request time, UTC unless the request says otherwise). ACTION_STATS: the cosine of the user's text and
pooled-history vectors with the item's (computed on the full vectors before projection), log1p(impressions),
the smoothed click rate (clicks + 10 * 0.5) / (impressions + 10), and "cold" (no impression yet).

Vectors are projected with the first ``proj`` principal axes of the item vectors (``FeatureSpace``) and
re-normalised; the projection is saved with each policy version and its id is logged with each decision, so a
policy is only ever trained on rows of its own feature space. Why a projection: VW's ADF learner needs the
user x item crosses (``-q UA -q HA``) to personalise, and a cross of two full 384-d vectors is 147k features
per action: 206 ms per 60-action decision against 5 ms at 32 dims on this machine (BENCHMARKS.md, "Bandits").

The arrays are what the event log stores; ``vw_lines`` turns them into VW's multi-line text format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONTEXT = ["has_text", "has_history", "log_history_clicks", *[f"hour_{h}" for h in range(4)],
           *[f"weekday_{d}" for d in range(7)]]  # fmt: skip
ACTION_STATS = ["cos_text", "cos_history", "log_impressions", "ctr", "cold"]
CTR_PRIOR, CTR_PRIOR_WEIGHT = 0.5, 10.0
SHARED_NS = ("U", "H", "C")
ACTION_NS = ("A", "S")


@dataclass(frozen=True)
class FeatureSpace:
    """The projection of published vectors into the bandit's feature space."""

    matrix: np.ndarray | None
    """(dim, proj) float32, or None: the full vectors."""
    dim: int

    @property
    def proj(self) -> int:
        return self.dim if self.matrix is None else self.matrix.shape[1]

    @property
    def id(self) -> str:
        h = hashlib.sha256(f"{self.dim}".encode())
        if self.matrix is not None:
            h.update(np.ascontiguousarray(self.matrix, dtype=np.float32).tobytes())
        return h.hexdigest()[:12]

    @classmethod
    def fit(cls, item_vectors: np.ndarray, proj: int) -> FeatureSpace:
        """The first ``proj`` principal axes of the item vectors (0 or >= dim: no projection)."""
        x = np.asarray(item_vectors, dtype=np.float64)
        dim = x.shape[1]
        if proj <= 0 or proj >= dim:
            return cls(None, dim)
        _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
        axes = vt[:proj].T
        axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(proj)])  # a deterministic sign per axis
        return cls(axes.astype(np.float32), dim)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(n, dim) -> (n, proj), rows re-normalised; zero rows (missing vectors) stay zero."""
        v = np.asarray(vectors, dtype=np.float32)
        # einsum, not BLAS: a threaded BLAS product of this size costs ~25x more on a busy machine (measured:
        # 7 ms vs 0.3 ms for 100 x 384 @ 384 x 32), and one request is too small to share out anyway.
        out = v if self.matrix is None else np.einsum("ij,jk->ik", v, self.matrix)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def save(self, path: Path) -> None:
        np.save(path, np.zeros((self.dim, 0), np.float32) if self.matrix is None else self.matrix)

    @classmethod
    def load(cls, path: Path) -> FeatureSpace:
        m = np.load(path)
        return cls(None if m.shape[1] == 0 else m.astype(np.float32), m.shape[0])

    @property
    def shared_width(self) -> int:
        return 2 * self.proj + len(CONTEXT)

    @property
    def action_width(self) -> int:
        return self.proj + len(ACTION_STATS)


def context_row(when: dt.datetime) -> np.ndarray:
    """Time-of-day bucket and weekday one-hots (7 + 4 values) of ``when``."""
    out = np.zeros(11, np.float32)
    out[when.hour // 6] = 1.0
    out[4 + when.weekday()] = 1.0
    return out


def _vec(v, dim: int) -> np.ndarray | None:
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float32).reshape(-1)
    return a if len(a) == dim and np.any(a) else None


def shared_row(
    space: FeatureSpace, user_text, user_history, history_clicks: float, when: dt.datetime
) -> np.ndarray:
    """The shared row for one decision; ``user_text`` / ``user_history`` are full vectors or None."""
    t, h = _vec(user_text, space.dim), _vec(user_history, space.dim)
    zeros = np.zeros(space.dim, np.float32)
    vecs = space.project(np.stack([t if t is not None else zeros, h if h is not None else zeros]))
    ctx = np.concatenate([[float(t is not None), float(h is not None), np.log1p(max(float(history_clicks or 0), 0.0))],
                          context_row(when)])  # fmt: skip
    return np.concatenate([vecs[0], vecs[1], ctx]).astype(np.float32)


def action_rows(
    space: FeatureSpace,
    item_vectors: np.ndarray,
    impressions: np.ndarray,
    clicks: np.ndarray,
    user_text=None,
    user_history=None,
    projected: np.ndarray | None = None,
) -> np.ndarray:
    """(n, action_width): one row per candidate. ``item_vectors`` (n, dim), zeros for an item without a vector;
    ``projected``: ``space.project(item_vectors)`` when the caller has it already (the simulator caches it)."""
    items = np.asarray(item_vectors, dtype=np.float32)
    t, h = _vec(user_text, space.dim), _vec(user_history, space.dim)
    cos_t = items @ t if t is not None else np.zeros(len(items), np.float32)
    cos_h = items @ h if h is not None else np.zeros(len(items), np.float32)
    impressions = np.nan_to_num(np.asarray(impressions, dtype=np.float64))
    clicks = np.nan_to_num(np.asarray(clicks, dtype=np.float64))
    ctr = (clicks + CTR_PRIOR_WEIGHT * CTR_PRIOR) / (impressions + CTR_PRIOR_WEIGHT)
    stats = np.stack([cos_t, cos_h, np.log1p(np.maximum(impressions, 0)), ctr, (impressions <= 0)], axis=1)
    proj = space.project(items) if projected is None else projected
    return np.concatenate([proj, stats.astype(np.float32)], axis=1).astype(np.float32)


def _ns(name: str, values: np.ndarray) -> str:
    return f"|{name} " + " ".join(f"{i}:{v:.5g}" for i, v in enumerate(values.tolist()) if v != 0.0)


def shared_line(space: FeatureSpace, shared: np.ndarray) -> str:
    p = space.proj
    return "shared " + " ".join(
        (_ns("U", shared[:p]), _ns("H", shared[p : 2 * p]), _ns("C", shared[2 * p :]))
    )


def action_line(space: FeatureSpace, row: np.ndarray) -> str:
    p = space.proj
    return f"{_ns('A', row[:p])} {_ns('S', row[p:])}"


def vw_lines(
    space: FeatureSpace,
    shared: np.ndarray,
    actions: np.ndarray,
    label: tuple[int, float, float] | None = None,
    a_text: list[str] | None = None,
) -> list[str]:
    """VW's ADF multi-line example: the shared line, then one line per action. ``label`` = (chosen index,
    cost, probability) marks the chosen action (``0:cost:probability``) for learning. ``a_text``: the
    actions' ``|A ...`` parts when the caller formatted them already (the simulator caches them per item)."""
    p = space.proj
    lines = [shared_line(space, shared)]
    for i, row in enumerate(actions):
        text = (a_text[i] if a_text is not None else _ns("A", row[:p])) + " " + _ns("S", row[p:])
        if label is not None and i == label[0]:
            lines.append(f"0:{label[1]:.6g}:{label[2]:.6g} {text}")
        else:
            lines.append(text)
    return lines


def a_text(space: FeatureSpace, projected: np.ndarray) -> list[str]:
    """The ``|A ...`` part of each row of projected item vectors."""
    return [_ns("A", row) for row in projected]
