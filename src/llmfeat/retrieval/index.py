"""Stage 3, index: the current item embeddings -> a versioned FAISS index, published atomically.

Layout, under ``<data_dir>/index/<embedding_set>/``::

    versions/<version>/index.faiss     the FAISS index; inner product on L2-normalised vectors (cosine)
                       ids.parquet     faiss_id (int64) -> item_id, title, category labels
                       vectors.npy     the indexed vectors, row i = faiss_id i (exact re-scoring, item queries)
                       manifest.json   model id, dim, count, index string, parameters, training sample, seed,
                                       recall measured at build, file sizes and sha256, build time
    current -> versions/<version>      a symlink, replaced with one rename

A version is written into a hidden staging directory and renamed into ``versions/`` complete, and only then
does ``current`` move to it, so a reader that follows ``current`` never sees a half-written version. The
newest ``index.keep_versions`` versions are kept (never the current one is removed, even after a rollback).

FAISS ids are the positions 0..n-1 of the items sorted by item_id; ``ids.parquet`` is the stored mapping.
Which index: FAISS's guidelines (https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index)
by catalogue size, exact ``IDMap2,Flat`` up to ``index.exact_max_items`` and otherwise ``index.large_factory``
(inverted lists + 4-bit fast-scan PQ, re-ranked exactly; ``bench/faiss_bench.py`` measured the choice), or
any factory string given in ``index.factory``. Search parameters left unset (nprobe, efSearch) are tuned at
build time to reach ``index.target_recall`` against exact search, and recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmfeat.core import tables
from llmfeat.core.config import Config, IndexConfig
from llmfeat.core.errors import (  # noqa: F401 - re-exported
    ConfigError,
    CorruptIndexError,
    IndexModelMismatchError,
    IndexNotFoundError,
    MissingInputError,
)
from llmfeat.core.faults import NO_FAULTS, Faults
from llmfeat.core.layout import DataDir, embedding_paths
from llmfeat.core.results import IndexResult
from llmfeat.embedding.vectors import normalise, read_latest

FORMAT_VERSION = 1
INDEX_FILE, IDS_FILE, VECTORS_FILE, MANIFEST_FILE = (
    "index.faiss",
    "ids.parquet",
    "vectors.npy",
    "manifest.json",
)
CURRENT = "current"
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TUNE_K = 10


def index_root(data_dir: Path, embedding_set: str) -> Path:
    return DataDir(Path(data_dir)).index(embedding_set)


# --- inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """What one index version is built from: item vectors in faiss-id order, with their category labels."""

    item_ids: np.ndarray
    vectors: np.ndarray
    titles: list[str | None]
    labels: list[list[str]]
    model_id: str
    as_of: dt.date
    notes: dict[str, Any] = field(default_factory=dict)


def item_labels(category: str | None, subcategory: str | None, tags: Any) -> list[str]:
    """The names an item can be filtered by: its category, its subcategory and its tags (MovieLens: genres)."""
    out: list[str] = []
    for value in [category, subcategory, *(list(tags) if tags is not None else [])]:
        if isinstance(value, str) and value.strip() and value.strip() not in out:
            out.append(value.strip())
    return out


def read_catalogue(data_dir: Path, embedding_set: str, as_of: dt.date | None = None) -> Catalogue:
    """The current vector of every item in the catalogue as of ``as_of`` (default: the latest snapshot).

    Items come from the latest canonical items snapshot <= as_of (an item gone from it is not indexed) and
    their vectors from the item_text change log (latest row per item in partitions <= as_of).
    """
    item_root = embedding_paths(data_dir, embedding_set).item_text
    items_root = tables.canonical_dir(data_dir, "items")
    emb_dates, item_dates = tables.snapshot_dates(item_root), tables.snapshot_dates(items_root)
    if not emb_dates:
        raise MissingInputError(f"no item embeddings at {item_root}: run `llmfeat embed` first")
    if not item_dates:
        raise MissingInputError(f"no canonical items at {items_root}: run `llmfeat ingest` first")
    day = as_of or max(emb_dates[-1], item_dates[-1])
    items_day = max((d for d in item_dates if d <= day), default=None)
    if items_day is None or not any(d <= day for d in emb_dates):
        raise MissingInputError(f"no item embeddings or canonical items at or before {day} under {data_dir}")
    latest = read_latest(item_root, "item_id", as_of=day)
    items = tables.read_snapshot(items_root, items_day).to_pandas()
    items = items.drop_duplicates("item_id", keep="last").set_index("item_id")
    known = np.isin(latest.ids, items.index.to_numpy(dtype=object))
    ids, vecs = latest.ids[known], latest.vectors[known]
    meta = items.loc[ids]
    labels = [
        item_labels(c, s, t)
        for c, s, t in zip(meta["category"], meta["subcategory"], meta["tags"], strict=True)
    ]
    notes = {
        "item_text": str(item_root),
        "items_snapshot": items_day.isoformat(),
        "items_in_catalogue": len(items),
        "items_without_vector": int(len(items) - len(ids)),
        "vectors_not_in_catalogue": int((~known).sum()),
    }
    return Catalogue(ids, normalise(vecs), [None if pd.isna(t) else t for t in meta["title"]], labels,
                     latest.model_id or "", day, notes)  # fmt: skip


# --- choosing and building ----------------------------------------------------------------------------


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest 4 * sqrt(n), the guidelines' lower end
    (fewer lists train faster on few cores; tuning nprobe recovers recall)."""
    return max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))


def choose_factory(n: int, dim: int, cfg: IndexConfig) -> str:
    """The index_factory string for a catalogue of ``n`` vectors of ``dim`` dimensions."""
    if cfg.factory:
        return cfg.factory
    if n <= cfg.exact_max_items:
        return "IDMap2,Flat"
    nlist = cfg.nlist or default_nlist(n)
    if dim % 2:  # 4-bit PQ needs an even number of sub-vectors of >= 1 dimension; keep it exact per list
        return f"IVF{nlist},Flat"
    return cfg.large_factory.format(nlist=nlist, m=dim // 2)


@dataclass
class BuiltIndex:
    index: faiss.Index
    factory: str
    params: dict[str, Any]
    training: dict[str, Any]
    tuning: dict[str, Any]
    seconds: dict[str, float]


def _layers(index: faiss.Index) -> list[faiss.Index]:
    """The index and the indexes it wraps (IDMap, refine, pre-transform), outermost first."""
    out, cur = [], faiss.downcast_index(index)
    while cur is not None:
        out.append(cur)
        inner = getattr(cur, "index", None) or getattr(cur, "base_index", None)
        cur = faiss.downcast_index(inner) if inner is not None else None
    return out


def _ivf(index: faiss.Index):
    return faiss.try_extract_index_ivf(index)


def _hnsw(index: faiss.Index):
    for layer in _layers(index):
        if isinstance(layer, faiss.IndexHNSW):
            return layer
    return None


def _refine(index: faiss.Index):
    for layer in _layers(index):
        if isinstance(layer, faiss.IndexRefine):
            return layer
    return None


def is_exact(index: faiss.Index) -> bool:
    """Flat (possibly behind an id map): every search is exhaustive."""
    return all(
        isinstance(layer, faiss.IndexFlat | faiss.IndexIDMap | faiss.IndexIDMap2) for layer in _layers(index)
    )


def _seed(index: faiss.Index, seed: int) -> None:
    """Seed every k-means FAISS will run while training, so one input builds one index."""
    ivf = _ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        pq_ = getattr(faiss.downcast_index(ivf), "pq", None)
        if pq_ is not None:
            pq_.cp.seed = seed
    for layer in _layers(index):
        pq_ = getattr(layer, "pq", None)
        if pq_ is not None and hasattr(pq_, "cp"):
            pq_.cp.seed = seed


def _add(index: faiss.Index, vectors: np.ndarray) -> None:
    """Add with explicit ids 0..n-1 where the index stores ids; elsewhere the position is the id."""
    ids = np.arange(len(vectors), dtype=np.int64)
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap | faiss.IndexIDMap2) or isinstance(top, faiss.IndexIVF):
        index.add_with_ids(vectors, ids)
    else:
        index.add(vectors)


def set_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Apply the recorded search-time parameters (nprobe, efSearch, k_factor) to a loaded index."""
    if params.get("nprobe") is not None and (ivf := _ivf(index)) is not None:
        ivf.nprobe = int(params["nprobe"])
    if params.get("ef_search") is not None and (hnsw := _hnsw(index)) is not None:
        hnsw.hnsw.efSearch = int(params["ef_search"])
    if params.get("k_factor") is not None and (ref := _refine(index)) is not None:
        ref.k_factor = float(params["k_factor"])


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ids, -1 = none) that ``found`` also holds."""
    hits = [
        len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum()))
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


def _tune(
    index: faiss.Index,
    vectors: np.ndarray,
    cfg: IndexConfig,
    rng: np.random.Generator,
    user_queries: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measure recall@10 against exact search and, for a search parameter left unset, pick the smallest value
    on its ladder that reaches ``target_recall``.

    Queries are sampled catalogue items (item -> similar items) and, when given, user vectors (user -> items):
    users sit between items, and an index tuned on items alone can fall short for them. The target must hold
    for each kind."""
    n = len(vectors)
    k = min(TUNE_K, n)
    sets = {"items": vectors[np.sort(rng.choice(n, size=min(n, cfg.tune_queries), replace=False))]}
    if user_queries is not None and len(user_queries):
        m = len(user_queries)
        sets["users"] = normalise(
            user_queries[np.sort(rng.choice(m, size=min(m, cfg.tune_queries), replace=False))]
        )
    truths = {
        name: faiss.knn(q, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)[1] for name, q in sets.items()
    }

    def recalls() -> dict[str, float]:
        return {name: round(recall_at(index.search(q, k)[1], truths[name]), 4) for name, q in sets.items()}

    out: dict[str, Any] = {"queries": {name: len(q) for name, q in sets.items()}, "k": k,
                           "target_recall": cfg.target_recall, "ladder": []}  # fmt: skip
    knob = None
    ivf, hnsw = _ivf(index), _hnsw(index)
    if ivf is not None and cfg.nprobe is None:
        knob, ladder = "nprobe", [p for p in NPROBE_LADDER if p < ivf.nlist] + [ivf.nlist]
    elif hnsw is not None and cfg.hnsw_ef_search is None:
        knob, ladder = "ef_search", list(EF_LADDER)
    if knob is not None:
        chosen = ladder[-1]
        for value in ladder:
            set_search_params(index, {knob: value})
            rec = recalls()
            out["ladder"].append({knob: value, **rec})
            if min(rec.values()) >= cfg.target_recall:
                chosen = value
                break
        set_search_params(index, {knob: chosen})
        out["tuned"] = knob
    final = recalls()
    out["recall"] = final
    out["recall_at_10"] = min(final.values())
    out["reached_target"] = out["recall_at_10"] >= cfg.target_recall
    return out


def build_index(
    vectors: np.ndarray, factory: str, cfg: IndexConfig, user_queries: np.ndarray | None = None
) -> BuiltIndex:
    """Train (on a seeded sample), add and tune one FAISS index over ``vectors`` (rows = faiss ids);
    ``user_queries``, when given, also serve as tuning queries."""
    n, dim = vectors.shape
    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(
            f"index factory {factory!r} is not valid for dim {dim}: {str(exc).splitlines()[-1]}"
        ) from None
    _seed(index, cfg.seed)
    seconds: dict[str, float] = {}
    training: dict[str, Any] = {"seed": cfg.seed, "sample_size": 0}
    start = time.perf_counter()
    if not index.is_trained:
        ivf = _ivf(index)
        wanted = cfg.train_sample or (40 * ivf.nlist if ivf is not None else 100_000)
        size = min(n, max(wanted, 1))
        if ivf is not None and n < ivf.nlist:
            raise ConfigError(
                f"{factory}: {n} vectors cannot train {ivf.nlist} inverted lists; lower index.nlist"
            )
        sample = np.sort(rng.choice(n, size=size, replace=False))
        index.train(vectors[sample])
        training.update(sample_size=int(size), sample="uniform without replacement, numpy default_rng(seed)")
    seconds["train"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    _add(index, vectors)
    seconds["add"] = round(time.perf_counter() - start, 3)
    set_search_params(
        index, {"nprobe": cfg.nprobe, "ef_search": cfg.hnsw_ef_search, "k_factor": cfg.k_factor}
    )
    start = time.perf_counter()
    tuning = _tune(index, vectors, cfg, rng, user_queries)
    seconds["tune"] = round(time.perf_counter() - start, 3)
    params: dict[str, Any] = {}
    if (ivf := _ivf(index)) is not None:
        params.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
    if (hnsw := _hnsw(index)) is not None:
        params.update(ef_search=int(hnsw.hnsw.efSearch), ef_construction=int(hnsw.hnsw.efConstruction))
    if (ref := _refine(index)) is not None:
        params.update(k_factor=float(ref.k_factor))
    return BuiltIndex(index, factory, params, training, tuning, seconds)


# --- versions on disk ---------------------------------------------------------------------------------


def new_version(now: dt.datetime | None = None) -> str:
    """A version name that sorts by build time: 20240131T021500123456Z-1a2b3c."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:6]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _ids_table(cat: Catalogue) -> pa.Table:
    return pa.table(
        {
            "faiss_id": pa.array(np.arange(len(cat.item_ids), dtype=np.int64)),
            "item_id": pa.array(cat.item_ids.tolist(), pa.string()),
            "title": pa.array(cat.titles, pa.string()),
            "labels": pa.array(cat.labels, pa.list_(pa.string())),
        }
    )


def write_version(
    root: Path,
    cat: Catalogue,
    built: BuiltIndex,
    embedding_set: str,
    version: str | None = None,
    faults: Faults = NO_FAULTS,
) -> Path:
    """Write one complete version directory (staged, then renamed into ``versions/``); returns its path."""
    version = version or new_version()
    final = Path(root) / "versions" / version
    with tables.staged_dir(final) as staging:
        start = time.perf_counter()
        faiss.write_index(built.index, str(staging / INDEX_FILE))
        faults.reach("index.write")
        pq.write_table(_ids_table(cat), staging / IDS_FILE)
        np.save(staging / VECTORS_FILE, np.ascontiguousarray(cat.vectors, dtype=np.float32))
        files = {
            name: {"bytes": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
            for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE)
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "embedding_set": embedding_set,
            "model_id": cat.model_id,
            "dim": int(cat.vectors.shape[1]),
            "count": len(cat.item_ids),
            "metric": "inner_product",
            "normalised": True,
            "index": {
                "factory": built.factory,
                "class": type(faiss.downcast_index(built.index)).__name__,
                "exact": is_exact(built.index),
            },
            "params": built.params,
            "training": built.training,
            "tuning": built.tuning,
            "as_of": cat.as_of.isoformat(),
            "inputs": cat.notes,
            "files": files,
            "seconds": {**built.seconds, "write": round(time.perf_counter() - start, 3)},
            "faiss_version": faiss.__version__,
            "built_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return final


def list_versions(root: Path) -> list[str]:
    """Complete versions, oldest first (staging and half-deleted directories are hidden names)."""
    vdir = Path(root) / "versions"
    if not vdir.is_dir():
        return []
    return sorted(p.name for p in vdir.iterdir() if p.is_dir() and not p.name.startswith("."))


def current_version(root: Path) -> str:
    """The published version ``current`` points at."""
    link = Path(root) / CURRENT
    try:
        target = os.readlink(link)
    except FileNotFoundError as exc:
        raise IndexNotFoundError(f"no published index at {root}: run `llmfeat index` first") from exc
    return Path(target).name


def publish(root: Path, version: str) -> None:
    """Point ``current`` at ``version`` with one rename of a fresh symlink (atomic on POSIX)."""
    root = Path(root)
    if not (root / "versions" / version / MANIFEST_FILE).is_file():
        raise IndexNotFoundError(f"index version {version} does not exist under {root / 'versions'}")
    tmp = root / f".{CURRENT}-{uuid.uuid4().hex[:8]}"
    os.symlink(f"versions/{version}", tmp)
    try:
        os.replace(tmp, root / CURRENT)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(root: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions, never the current one; returns the removed names.

    A version is first renamed to a hidden name, so it disappears from ``versions/`` in one step."""
    versions = list_versions(root)
    try:
        current = current_version(root)
    except IndexNotFoundError:
        current = None
    kept = set(versions[-max(1, keep) :]) | {current}
    removed = []
    for name in versions:
        if name in kept:
            continue
        path = Path(root) / "versions" / name
        doomed = path.parent / f".deleting-{name}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(name)
    return removed


# --- loading ------------------------------------------------------------------------------------------


@dataclass
class LoadedIndex:
    """One version, in memory: the index, the id map (with titles and labels) and the vectors (memory-mapped)."""

    version: str
    path: Path
    manifest: dict[str, Any]
    index: faiss.Index
    ids: pa.Table
    """ids.parquet: faiss_id, item_id, title, labels; row i is faiss id i."""
    vectors: np.ndarray

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def as_of(self) -> dt.date:
        return dt.date.fromisoformat(self.manifest["as_of"])


def verify_version(path: Path, manifest: dict[str, Any]) -> None:
    """Check each file's size and sha256 against the manifest."""
    for name, expect in manifest["files"].items():
        file = Path(path) / name
        if not file.is_file():
            raise CorruptIndexError(f"index version {path.name}: {name} is missing")
        if file.stat().st_size != expect["bytes"] or sha256_file(file) != expect["sha256"]:
            raise CorruptIndexError(f"index version {path.name}: {name} does not match its manifest checksum")


def load_version(root: Path, version: str | None = None, *, verify: bool = True) -> LoadedIndex:
    """Load ``version`` (default: the current one). Retries when a version is pruned while being read."""
    root = Path(root)
    for attempt in range(3):
        name = version or current_version(root)
        path = root / "versions" / name
        try:
            return _load(path, verify)
        except FileNotFoundError as exc:
            if version is not None or attempt == 2:
                raise IndexNotFoundError(f"index version {name} is not readable under {root}: {exc}") from exc
    raise AssertionError("unreachable")


def _load(path: Path, verify: bool) -> LoadedIndex:
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptIndexError(
            f"index version {path.name}: format {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    if verify:
        verify_version(path, manifest)
    index = faiss.read_index(str(path / INDEX_FILE))
    ids = pq.read_table(path / IDS_FILE)
    vectors = np.load(path / VECTORS_FILE, mmap_mode="r")
    count = manifest["count"]
    if not (index.ntotal == ids.num_rows == len(vectors) == count):
        raise CorruptIndexError(
            f"index version {path.name}: counts disagree (index {index.ntotal}, ids {ids.num_rows}, "
            f"vectors {len(vectors)}, manifest {count})"
        )
    if not np.array_equal(ids.column("faiss_id").to_numpy(), np.arange(count)):
        raise CorruptIndexError(f"index version {path.name}: ids.parquet faiss_id is not 0..{count - 1}")
    set_search_params(index, manifest.get("params", {}))
    return LoadedIndex(path.name, path, manifest, index, ids, vectors)


def check_model(index_model_id: str, query_model_id: str | None, what: str = "user embeddings") -> None:
    """Refuse to search an index with query vectors of another model: the scores would be meaningless."""
    if query_model_id is not None and query_model_id != index_model_id:
        raise IndexModelMismatchError(
            f"the index holds vectors of model {index_model_id} but the {what} come from {query_model_id}; "
            "rebuild the index (`llmfeat index`) or the embeddings with the same model"
        )


# --- the stage ----------------------------------------------------------------------------------------


def tuning_user_vectors(cfg: Config, cat: Catalogue) -> np.ndarray | None:
    """The latest user text vectors, to tune with user queries; None (noted) when absent or of another model."""
    root = embedding_paths(cfg.paths.data_dir, cfg.embed.embedding_set).user_text
    if not tables.snapshot_dates(root):
        cat.notes["tuning_user_vectors"] = f"none: no table at {root}"
        return None
    users = read_latest(root, "user_id", as_of=cat.as_of)
    if users.model_id != cat.model_id or users.dim != cat.vectors.shape[1]:
        cat.notes["tuning_user_vectors"] = f"none: {root} holds model {users.model_id}, not {cat.model_id}"
        return None
    cat.notes["tuning_user_vectors"] = str(root)
    return users.vectors


def run_index(
    cfg: Config,
    as_of: dt.date | None = None,
    *,
    log: Callable[[str], None] = print,
    faults: Faults = NO_FAULTS,
) -> IndexResult:
    """Build an index from the current item embeddings, write it as a new version, publish it, prune old
    versions; returns the manifest (plus ``path`` and ``pruned``) as an ``IndexResult``."""
    started = time.perf_counter()
    root = index_root(cfg.paths.data_dir, cfg.embed.embedding_set)
    log("index: read item vectors ...")
    t0 = time.perf_counter()
    cat = read_catalogue(cfg.paths.data_dir, cfg.embed.embedding_set, as_of)
    read_s = round(time.perf_counter() - t0, 3)
    if len(cat.item_ids) == 0:
        raise MissingInputError(f"no item has a vector in {cat.notes['item_text']} as of {cat.as_of}")
    users = tuning_user_vectors(cfg, cat)
    factory = choose_factory(len(cat.item_ids), cat.vectors.shape[1], cfg.index)
    log(f"index: build {factory} over {len(cat.item_ids)} x {cat.vectors.shape[1]} ({cat.model_id}) ...")
    built = build_index(cat.vectors, factory, cfg.index, users)
    built.seconds["read"] = read_s
    path = write_version(root, cat, built, cfg.embed.embedding_set, faults=faults)
    faults.reach("index.before_publish")
    publish(root, path.name)
    pruned = prune(root, cfg.index.keep_versions)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return IndexResult({**manifest, "path": str(path), "pruned": pruned})
