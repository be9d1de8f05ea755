"""Policies over one decision's feature rows: each returns the probability of every candidate (``pmf``).

- ``VWPolicy``: Vowpal Wabbit ``--cb_explore_adf`` with an exploration algorithm (epsilon-greedy, squarecb,
  softmax, bag); learns from (chosen action, cost = -reward, logged probability).
- Baselines read the action rows' stats: ``RandomPolicy`` (uniform), ``PopularityPolicy`` (most impressions),
  ``GreedyCtrPolicy`` (highest smoothed click rate: a per-item CTR model, greedy, no exploration). Ties share
  the probability equally.
- ``LinUCBPolicy``: LinUCB in numpy over the same features, a transparent second baseline.

``PolicyStore`` publishes trained VW policies as versions (``<data_dir>/bandit/policies/versions/<v>/``:
``policy.vw``, ``space.npy``, ``manifest.json``; ``current`` a symlink swapped with one rename) and
``PolicyHolder`` keeps the loaded one for the service, reloading when ``current`` moves, as the FAISS index
does: requests take the policy once and keep it; a new one is loaded on the side and swapped in.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmfeat.bandit.features import ACTION_STATS, FeatureSpace, vw_lines
from llmfeat.core.errors import MissingInputError
from llmfeat.core.layout import DataDir
from llmfeat.core.reloading import PeriodicReload

log = logging.getLogger("llmfeat.bandit")


class PolicyNotFoundError(MissingInputError):
    """No published policy (run the nightly train stage, or `llmfeat bandit train`)."""


class VWPolicy:
    """One VW ``--cb_explore_adf`` workspace. Thread-safe (a VW workspace is not: calls are serialised)."""

    name = "vw"

    def __init__(self, space: FeatureSpace, exploration: str = "--epsilon 0.1", vw_args: str = "", seed: int = 0,
                 model: Path | None = None):  # fmt: skip
        import vowpalwabbit

        self.space = space
        self.exploration = exploration
        if model is not None:
            # The saved model carries its reductions and options; an exploration given here overrides its own.
            args = f"--quiet -i {model}" + (
                f" {exploration}" if exploration and exploration != "auto" else ""
            )
        else:
            args = f"--cb_explore_adf {exploration} {vw_args} --quiet --random_seed {seed}"
        self.args = args
        self._ws = vowpalwabbit.Workspace(args)
        self._lock = threading.Lock()

    def pmf(self, shared: np.ndarray, actions: np.ndarray, a_text: list[str] | None = None) -> np.ndarray:
        lines = vw_lines(self.space, shared, actions, a_text=a_text)
        with self._lock:
            p = np.asarray(self._ws.predict(lines), dtype=np.float64)
        p = np.clip(p, 0.0, None)
        return p / p.sum()

    def learn(self, shared: np.ndarray, actions: np.ndarray, chosen: int, reward: float, prob: float,
              a_text: list[str] | None = None) -> None:  # fmt: skip
        lines = vw_lines(
            self.space, shared, actions, label=(chosen, -float(reward), float(prob)), a_text=a_text
        )
        with self._lock:
            self._ws.learn(lines)

    def save(self, path: Path) -> None:
        with self._lock:
            self._ws.save(str(path))

    def clone(self, path: Path) -> VWPolicy:
        """A frozen copy (saved to ``path`` and loaded back)."""
        self.save(path)
        return VWPolicy(self.space, "", model=path)


def _argmax_pmf(values: np.ndarray) -> np.ndarray:
    best = values >= values.max() - 1e-12
    return best / best.sum()


class RandomPolicy:
    name = "random"

    def pmf(self, shared, actions, a_text=None) -> np.ndarray:
        return np.full(len(actions), 1.0 / len(actions))

    def learn(self, *args, **kwargs) -> None:
        pass


class _StatPolicy:
    column = ""

    def __init__(self, space: FeatureSpace):
        self.col = space.proj + ACTION_STATS.index(self.column)

    def pmf(self, shared, actions, a_text=None) -> np.ndarray:
        return _argmax_pmf(np.asarray(actions[:, self.col], dtype=np.float64))

    def learn(self, *args, **kwargs) -> None:
        pass  # the stats in the action rows already follow the data stream


class PopularityPolicy(_StatPolicy):
    name = "popularity"
    column = "log_impressions"


class GreedyCtrPolicy(_StatPolicy):
    name = "greedy_ctr"
    column = "ctr"


class LinUCBPolicy:
    """LinUCB with one linear model shared by all items (Li et al., WWW 2010, over action features), in numpy:
    a transparent baseline beside VW. Features of (user, item): the item's stats, the projected item vector and
    its element-wise product with the projected pooled-history vector (what VW's ``-q HA`` crosses).
    Deterministic: all probability on the highest upper confidence bound (ties shared)."""

    name = "linucb"

    def __init__(self, space: FeatureSpace, alpha: float = 0.5, ridge: float = 1.0):
        self.p = space.proj
        d = 2 * self.p + len(ACTION_STATS) + 1
        self.alpha = alpha
        self.a_inv = np.eye(d) / ridge
        self.b = np.zeros(d)

    def _phi(self, shared: np.ndarray, actions: np.ndarray) -> np.ndarray:
        p = self.p
        hist = shared[p : 2 * p]
        items = actions[:, :p]
        return np.concatenate([actions[:, p:], items, items * hist, np.ones((len(actions), 1))], axis=1)

    def pmf(self, shared, actions, a_text=None) -> np.ndarray:
        phi = self._phi(shared, actions).astype(np.float64)
        theta = self.a_inv @ self.b
        width = np.sqrt(np.einsum("ij,jk,ik->i", phi, self.a_inv, phi))
        return _argmax_pmf(phi @ theta + self.alpha * width)

    def learn(self, shared, actions, chosen: int, reward: float, prob: float, a_text=None) -> None:
        x = self._phi(shared, actions[chosen : chosen + 1])[0].astype(np.float64)
        ax = self.a_inv @ x
        self.a_inv -= np.outer(ax, ax) / (1.0 + x @ ax)  # Sherman-Morrison
        self.b += reward * x


# --- the versioned store ------------------------------------------------------------------------------


def policy_root(data_dir: Path) -> Path:
    return DataDir(Path(data_dir)).bandit / "policies"


def current_policy_version(root: Path) -> str:
    link = Path(root) / "current"
    if not link.is_symlink() and not link.exists():
        raise PolicyNotFoundError(
            f"no published bandit policy under {root}: run the nightly (train stage) first"
        )
    return Path(os.readlink(link)).name


@dataclass
class LoadedPolicy:
    version: str
    policy: VWPolicy
    space: FeatureSpace
    manifest: dict


def publish_policy(root: Path, policy: VWPolicy, manifest: dict) -> str:
    """Write ``policy`` as a new version (staged, renamed in whole) and point ``current`` at it."""
    root = Path(root)
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    version = f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:6]}"
    staging = versions / f".staging-{version}"
    staging.mkdir()
    try:
        policy.save(staging / "policy.vw")
        policy.space.save(staging / "space.npy")
        body = {**manifest, "version": version, "space_id": policy.space.id, "exploration": policy.exploration,
                "created_at": dt.datetime.now(dt.UTC).isoformat()}  # fmt: skip
        (staging / "manifest.json").write_text(json.dumps(body, indent=2, default=str))
        for f in staging.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        os.rename(staging, versions / version)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    tmp = root / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, root / "current")
    return version


def load_policy(root: Path, version: str | None = None) -> LoadedPolicy:
    root = Path(root)
    version = version or current_policy_version(root)
    path = root / "versions" / version
    if not (path / "policy.vw").is_file():
        raise PolicyNotFoundError(f"bandit policy version {version} not found under {root}")
    manifest = json.loads((path / "manifest.json").read_text())
    space = FeatureSpace.load(path / "space.npy")
    policy = VWPolicy(space, "", model=path / "policy.vw")
    policy.exploration = manifest.get("exploration", "")
    return LoadedPolicy(version, policy, space, manifest)


class PolicyHolder:
    """The policy the service decides with; ``reload`` swaps in a newly published version."""

    def __init__(self, root: Path, load: Callable[[str | None], LoadedPolicy] | None = None):
        self.root = Path(root)
        self._load = load or (lambda v: load_policy(self.root, v))
        self._current = self._load(None)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._periodic = PeriodicReload(self.reload, "policy-reload")

    def get(self) -> LoadedPolicy:
        return self._current

    def reload(self) -> tuple[bool, str]:
        with self._lock:
            old = self._current
            try:
                latest = current_policy_version(self.root)
                if latest == old.version:
                    return False, old.version
                new = self._load(latest)
            except Exception as exc:  # noqa: BLE001 - keep serving the old one, say why
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("bandit policy reload failed (%s); still serving %s", self.last_error, old.version)
                raise
            self._current = new  # one assignment: requests in flight keep the policy they took
            self.last_error = None
            log.info("bandit policy reloaded: %s -> %s", old.version, new.version)
            return True, new.version

    def start(self, interval_s: float) -> None:
        self._periodic.start(interval_s)

    def stop(self) -> None:
        self._periodic.stop()
