"""FAISS retrieval benchmark: recall@10 against exact search, queries/s, build time and index size, on the
MovieLens item vectors and on a synthetic >= 1M x 384 catalogue; plus user -> items quality on MovieLens-100k
with a temporal holdout, side by side with a popularity baseline. Writes the "FAISS retrieval" section of
BENCHMARKS.md.

    nice -n 10 python bench/faiss_bench.py --data-dir var/data [--n 1000000] [--compare IDMap2,HNSW32,Flat]

The indexes are built with the project's own code (``llmfeat.retrieval.index.build_index``, default ``index`` config),
so the numbers are those of what ``llmfeat index`` would publish.

Synthetic catalogue: real sentence embeddings are neither uniform nor isotropic (MiniLM item vectors of
MovieLens share a mean direction of norm 0.62 and have a decaying spectrum), and uniform random vectors make
every index look far worse than it is on real data. So: a Gaussian mixture of 1,000 components in 384-d with
a power-law spectrum (axis i has std i^-0.5 in a random rotation), shifted along one common direction and
L2-normalised; its three scales are calibrated so a 1,682-vector sample matches the MovieLens item vectors'
mean-vector norm, mean pairwise cosine and mean nearest-neighbour cosine (printed in the report). Queries are
fresh draws from the same mixture, not catalogue members.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from benchmarks_md import cpu_model, write_section

from llmfeat.core import tables
from llmfeat.core.config import IndexConfig
from llmfeat.embedding.vectors import normalise
from llmfeat.retrieval.index import build_index, choose_factory, read_catalogue, recall_at, set_search_params
from llmfeat.retrieval.retriever import ParquetUserVectors

DIM = 384
K = 10
MIXTURE = {"n_components": 1000, "alpha": 0.5, "centre_scale": 0.95, "noise_scale": 0.95, "shift": 2.7}
TARGET_RECALL, TARGET_QPS = 0.95, 5000


# --- synthetic catalogue ------------------------------------------------------------------------------


class Mixture:
    """The calibrated clustered catalogue described in the module docstring; rows are unit vectors."""

    def __init__(self, dim: int = DIM, seed: int = 0, **p: float):
        p = {**MIXTURE, **p}
        rng = np.random.default_rng(seed)
        self.spectrum = np.arange(1, dim + 1) ** -p["alpha"]
        self.rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        shift = rng.standard_normal(dim)
        self.shift = shift / np.linalg.norm(shift) * p["shift"]
        comps = int(p["n_components"])
        self.centres = (
            (rng.standard_normal((comps, dim)) * self.spectrum) @ self.rotation.T * p["centre_scale"]
        )
        self.noise = p["noise_scale"]

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        return self.sample_with_components(n, seed, chunk)[0]

    def sample_with_components(
        self, n: int, seed: int, chunk: int = 100_000
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.rotation.shape[0]), dtype=np.float32)
        comps = np.empty(n, dtype=np.int64)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            comp = rng.integers(0, len(self.centres), m)
            comps[start : start + m] = comp
            noise = (
                (rng.standard_normal((m, len(self.spectrum))) * self.spectrum) @ self.rotation.T * self.noise
            )
            x = self.centres[comp] + noise + self.shift
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out, comps


def shape_stats(x: np.ndarray) -> dict[str, float]:
    """Mean-vector norm, mean pairwise cosine, mean nearest-neighbour cosine (the calibration targets)."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    n = len(x)
    pair = (np.where(np.isfinite(s), s, 0).sum()) / (n * n - n)
    return {
        "mean_norm": float(np.linalg.norm(x.mean(0))),
        "pair_cos": float(pair),
        "nn_cos": float(s.max(1).mean()),
    }


# --- measuring ----------------------------------------------------------------------------------------


@dataclass
class Row:
    catalogue: str
    index: str
    params: str
    recall: float
    batched_qps: float
    single_qps: float
    single_qps_1t: float
    build_s: float | None
    bytes: int
    note: str = ""


def batched_qps(
    index: faiss.Index, queries: np.ndarray, k: int = K, repeats: int = 3
) -> tuple[float, np.ndarray]:
    """All queries in one call; the median of ``repeats`` timed runs (the machine is shared and noisy)."""
    index.search(queries[: min(64, len(queries))], k)  # warm up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        rates.append(len(queries) / (time.perf_counter() - start))
    return float(np.median(rates)), ids


def single_qps(index: faiss.Index, queries: np.ndarray, threads: int | None = None, k: int = K) -> float:
    """One query per call, as a request handler would; ``threads`` pins OpenMP for the calls."""
    before = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    try:
        for q in queries[:20]:
            index.search(q[None], k)
        start = time.perf_counter()
        for q in queries:
            index.search(q[None], k)
        return len(queries) / (time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(before)


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).size)


def measure(
    catalogue: str,
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    n_single: int,
    build_s,
    params,
    note="",
) -> Row:
    qps, ids = batched_qps(index, queries)
    single = queries[:n_single]
    return Row(catalogue, _describe(index), params, recall_at(ids, truth), qps, single_qps(index, single),
               single_qps(index, single, threads=1), build_s, index_bytes(index), note)  # fmt: skip


def _describe(index: faiss.Index) -> str:
    return type(faiss.downcast_index(index)).__name__


def exact_baseline(
    catalogue: str, vectors: np.ndarray, queries: np.ndarray, n_single: int
) -> tuple[Row, np.ndarray]:
    """IndexFlatIP: the ground truth and the exact baseline's speed."""
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    build = time.perf_counter() - start
    qps, truth = batched_qps(flat, queries, repeats=1)  # minutes at 1M: once
    single = queries[: max(1, n_single // 10)]  # exact single queries are slow: fewer of them
    row = Row(catalogue, "IndexFlatIP (exact)", "-", 1.0, qps, single_qps(flat, single),
              single_qps(flat, single, threads=1), build, int(vectors.nbytes), "ground truth")  # fmt: skip
    del flat
    return row, truth


def build_row(
    catalogue: str, vectors: np.ndarray, factory: str, cfg: IndexConfig, queries, truth, n_single, note="",
    tune_users=None,
):  # fmt: skip
    start = time.perf_counter()
    built = build_index(vectors, factory, cfg, tune_users)
    build_s = time.perf_counter() - start
    params = ", ".join(f"{k}={v}" for k, v in built.params.items()) or "-"
    row = measure(catalogue, built.index, queries, truth, n_single, build_s, f"{factory}: {params}", note)
    return row, built


def sweep(built, queries, truth, knob: str, values) -> list[tuple[int, float, float]]:
    """(value, recall@10, batched q/s) along one search parameter; the index is left as it was."""
    original = built.params.get(knob)
    out = []
    for v in values:
        set_search_params(built.index, {knob: v})
        qps, ids = batched_qps(built.index, queries)
        out.append((v, recall_at(ids, truth), qps))
    set_search_params(built.index, {knob: original})
    return out


def api_rows(built, xb: np.ndarray, comps: np.ndarray, xq: np.ndarray, n_single: int, n_recall: int = 200):
    """Single queries through ``Retriever.search`` (what the service runs), plain and with each filter path:
    50 excluded items (a user's history) and categories of several sizes. The mixture's components stand in
    for categories, so a category clusters in embedding space as real ones do (the hard case for filtered
    search); the 100-item one is random. Recall@10 is against exact search under the same filter."""
    import pyarrow as pa

    from llmfeat.retrieval.index import LoadedIndex
    from llmfeat.retrieval.retriever import Retriever

    n = len(xb)
    labels = [f"c{c % 10}" for c in comps]
    offsets = np.arange(n + 1, dtype=np.int32)
    ids = pa.table({"faiss_id": np.arange(n), "item_id": [f"s{i}" for i in range(n)], "title": pa.nulls(n, pa.string()),
                    "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels))})  # fmt: skip
    manifest = {"model_id": "synthetic", "count": n, "as_of": "2000-01-01", "dim": xb.shape[1],
                "index": {"factory": built.factory, "exact": False}}  # fmt: skip
    r = Retriever(LoadedIndex("bench", Path("."), manifest, built.index, ids, xb))
    rng = np.random.default_rng(5)
    masks = {
        "c3": comps % 10 == 3,
        "one": comps % 100 == 7,
        "tiny": np.isin(np.arange(n), rng.choice(n, 100, replace=False)),
    }
    r._members["one"] = np.flatnonzero(masks["one"])
    r._members["tiny"] = np.flatnonzero(masks["tiny"])
    excl = [rng.choice(n, 50, replace=False) for _ in range(len(xq))]
    cases = {
        "plain": (None, False),
        "50 items excluded (seen)": (None, True),
        f"category of {masks['c3'].sum():,} items (~10%, clustered)": ("c3", True),
        f"category of {masks['one'].sum():,} items (~1%, clustered)": ("one", False),
        "category of 100 random items": ("tiny", False),
    }
    out = []
    for name, (category, exclude) in cases.items():

        def call(i, category=category, exclude=exclude):
            return r.search(xq[i], K, [category] if category else None, excl[i] if exclude else None)

        for i in range(20):
            call(i)
        start = time.perf_counter()
        methods = [call(i).method for i in range(n_single)]
        qps = n_single / (time.perf_counter() - start)
        hits = []
        for i in range(n_recall):
            mask = masks[category].copy() if category else np.ones(n, bool)
            if exclude:
                mask[excl[i]] = False
            rows = np.flatnonzero(mask)
            exact = rows[np.argsort(-np.einsum("ij,j->i", xb[rows], xq[i]), kind="stable")[:K]]
            hits.append(len({int(x[1:]) for x in call(i).ids} & set(exact.tolist())) / K)
        used = ", ".join(f"{m} {methods.count(m) / len(methods):.0%}" for m in sorted(set(methods)))
        out.append((name, float(np.mean(hits)), qps, used))
    return out


# --- MovieLens temporal holdout ------------------------------------------------------------------------


def ranking_metrics(ranked: list[str], held_out: set[str], k: int = 20) -> tuple[float, float]:
    """recall@k = hits / |held out|; nDCG@k with binary gains."""
    hits = [1.0 if i in held_out else 0.0 for i in ranked[:k]]
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(held_out))))
    return sum(hits) / len(held_out), dcg / idcg


def holdout(data_dir: Path, emb_set: str, cfg: IndexConfig, k: int = 20, quantile: float = 0.9) -> dict:
    """Cut T = the 90% time quantile of interactions, floored to midnight (user vectors are snapshotted at
    midnights). Users with clicks at or after T are evaluated on those clicks: query = their vector as of T
    (latest row with event_timestamp <= T), candidates = every item not interacted with before T."""
    from llmfeat.retrieval.index import LoadedIndex
    from llmfeat.retrieval.retriever import Retriever

    cat = read_catalogue(data_dir, emb_set)
    inter_root = tables.canonical_dir(data_dir, "interactions")
    inter = tables.read_snapshot(inter_root).to_pandas()
    cut = inter["event_ts"].quantile(quantile).floor("D")
    before, after = inter[inter["event_ts"] < cut], inter[inter["event_ts"] >= cut]
    held = after[after["label"] == 1].groupby("user_id")["item_id"].apply(set)
    seen_before = before[["user_id", "item_id"]]
    popular = before[before["label"] == 1]["item_id"].value_counts()
    indexed = set(cat.item_ids)
    popular = [i for i in popular.index if i in indexed]

    built = build_index(cat.vectors, choose_factory(len(cat.item_ids), cat.vectors.shape[1], cfg), cfg)
    import pyarrow as pa

    ids = pa.table({"faiss_id": np.arange(len(cat.item_ids)), "item_id": cat.item_ids.tolist(),
                    "title": cat.titles, "labels": pa.array(cat.labels, pa.list_(pa.string()))})  # fmt: skip
    manifest = {"model_id": cat.model_id, "count": len(cat.item_ids), "as_of": cat.as_of.isoformat(), "dim": DIM,
                "index": {"factory": built.factory, "exact": True}}  # fmt: skip
    loaded = LoadedIndex("holdout", Path("."), manifest, built.index, ids, cat.vectors)
    seen_by_user = seen_before.groupby("user_id")["item_id"].apply(set).to_dict()
    results: dict[str, dict] = {}
    sources = {kind: ParquetUserVectors(data_dir, emb_set, kind, at=cut) for kind in ("text", "history")}
    retrievers = {kind: Retriever(loaded, src, seen_before) for kind, src in sources.items()}
    # One user set for every method: held-out clicks and a vector of each kind as of T.
    users = [u for u in held.index if all(src.get([u])[1][0] for src in sources.values())]
    rng = np.random.default_rng(0)
    scores: dict[str, list[tuple[float, float]]] = {"popularity": [], "random": [], "text": [], "history": []}
    for u in users:
        truth = held[u]
        seen = seen_by_user.get(u, set())
        scores["popularity"].append(ranking_metrics([i for i in popular if i not in seen][:k], truth, k))
        pool = [i for i in cat.item_ids if i not in seen]
        scores["random"].append(ranking_metrics(list(rng.choice(pool, k, replace=False)), truth, k))
        for kind, r in retrievers.items():
            scores[kind].append(ranking_metrics(r.for_user(u, k).ids, truth, k))
    for name, vals in scores.items():
        arr = np.array(vals)
        results[name] = {"recall": float(arr[:, 0].mean()), "ndcg": float(arr[:, 1].mean())}
    # Every user with held-out clicks has a text vector as of T (profile text); only those with a click before T
    # have a history vector. The text method and popularity on all of them:
    text_users = [u for u in held.index if sources["text"].get([u])[1][0]]
    everyone = np.array([ranking_metrics([i for i in popular if i not in seen_by_user.get(u, set())][:k], held[u], k)
                         for u in text_users])  # fmt: skip
    results["popularity_all"] = {"recall": float(everyone[:, 0].mean()), "ndcg": float(everyone[:, 1].mean())}
    text_all = np.array(
        [ranking_metrics(retrievers["text"].for_user(u, k).ids, held[u], k) for u in text_users]
    )
    results["text_all"] = {"recall": float(text_all[:, 0].mean()), "ndcg": float(text_all[:, 1].mean())}
    no_click_before = sum(1 for u in held.index if not sources["history"].get([u])[1][0])
    return {
        "cut": cut, "users": len(users), "users_with_heldout": int(len(held)), "text_users": len(text_users),
        "no_click_before": no_click_before,
        "heldout_clicks": int(sum(len(held[u]) for u in users)), "k": k, "results": results,
        "train_interactions": len(before), "test_interactions": len(after),
    }  # fmt: skip


# --- report ---------------------------------------------------------------------------------------------


def machine() -> str:
    model = cpu_model()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; faiss {faiss.__version__} (CPU), numpy {np.__version__}, Python {platform.python_version()}"


def table(rows: list[Row], flat_qps: dict[str, float]) -> list[str]:
    out = [
        "| catalogue | index | parameters | recall@10 | batched q/s | × exact | single q/s (2 thr / 1 thr) | build s | size MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        build = f"{r.build_s:.1f}" if r.build_s is not None else "-"
        out.append(
            f"| {r.catalogue} | {r.index} | {r.params} | {r.recall:.4f} | {r.batched_qps:,.0f} | "
            f"{r.batched_qps / flat_qps[r.catalogue]:.1f} | {r.single_qps:,.0f} / {r.single_qps_1t:,.0f} | {build} | "
            f"{r.bytes / 2**20:,.1f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data-dir", type=Path, required=True, help="Data dir with embeddings and canonical tables"
    )
    ap.add_argument("--embedding-set", default="default")
    ap.add_argument("--n", type=int, default=1_000_000, help="Synthetic catalogue size")
    ap.add_argument("--queries", type=int, default=5000, help="Batched queries (synthetic)")
    ap.add_argument("--single", type=int, default=1000, help="Queries timed one at a time")
    ap.add_argument(
        "--compare", action="append", default=[], help="Another factory to build on the synthetic set"
    )
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument(
        "--note", default="", help="A sentence about this run for the report (e.g. where the data came from)"
    )
    args = ap.parse_args()
    command = "nice -n 10 python " + " ".join(shlex.quote(a) for a in sys.argv)
    cfg = IndexConfig()
    loads = [os.getloadavg()[0]]
    started = time.perf_counter()
    rows: list[Row] = []
    flat_qps: dict[str, float] = {}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    # MovieLens: the item vectors, queried with every user's latest text vector.
    cat = read_catalogue(args.data_dir, args.embedding_set)
    ml_queries = normalise(ParquetUserVectors(args.data_dir, args.embedding_set, "text").vectors)
    ml = f"MovieLens ({len(cat.item_ids):,})"
    log(f"{ml}: {len(ml_queries)} user queries")
    base, truth = exact_baseline(ml, cat.vectors, ml_queries, len(ml_queries))
    rows.append(base)
    flat_qps[ml] = base.batched_qps
    auto = choose_factory(len(cat.item_ids), DIM, cfg)
    rows.append(build_row(ml, cat.vectors, auto, cfg, ml_queries, truth, len(ml_queries), "auto choice")[0])
    forced = cfg.large_factory.format(nlist=64, m=DIM // 2)
    rows.append(build_row(ml, cat.vectors, forced, cfg, ml_queries, truth, len(ml_queries),
                          "large-catalogue type forced onto 1.7k items", tune_users=ml_queries)[0])  # fmt: skip

    # Synthetic >= 1M catalogue.
    mix = Mixture()
    calib = {
        "MovieLens items": shape_stats(cat.vectors),
        "mixture sample of 1,682": shape_stats(mix.sample(len(cat.item_ids), seed=7)),
    }
    log(f"generate {args.n:,} x {DIM} synthetic vectors")
    t0 = time.perf_counter()
    xb, comps = mix.sample_with_components(args.n, seed=1)
    xq = mix.sample(args.queries, seed=2)
    tune_users = mix.sample(cfg.tune_queries, seed=3)  # stands in for the user vectors run_index tunes with
    gen_s = time.perf_counter() - t0
    syn = f"synthetic ({args.n / 1e6:g}M)"
    log("exact baseline (ground truth)")
    base, truth = exact_baseline(syn, xb, xq, args.single)
    rows.append(base)
    flat_qps[syn] = base.batched_qps
    auto = choose_factory(args.n, DIM, cfg)
    log(f"build {auto}")
    row, chosen = build_row(syn, xb, auto, cfg, xq, truth, args.single, "auto choice", tune_users=tune_users)
    rows.append(row)
    log(f"{auto}: recall {row.recall:.4f}, {row.batched_qps:,.0f} q/s; API-level single queries")
    api = api_rows(chosen, xb, comps, xq, args.single)
    nprobes = sorted({4, 8, 16, 32, 64, chosen.params.get("nprobe", 4)})
    nprobe_sweep = sweep(chosen, xq, truth, "nprobe", nprobes) if "nprobe" in chosen.params else []
    kf_sweep = sweep(chosen, xq, truth, "k_factor", [2, 4, 8, 16]) if "k_factor" in chosen.params else []
    tuning, training = chosen.tuning, chosen.training
    big_nprobe = chosen.params.get("nprobe")
    del chosen
    for factory in args.compare:
        log(f"build {factory}")
        rows.append(
            build_row(syn, xb, factory, cfg, xq, truth, args.single, "comparison", tune_users=tune_users)[0]
        )
    loads.append(os.getloadavg()[0])

    log("MovieLens temporal holdout")
    ho = holdout(args.data_dir, args.embedding_set, cfg)
    loads.append(os.getloadavg()[0])
    total = time.perf_counter() - started

    big = next(r for r in rows if r.catalogue == syn and r.note == "auto choice")
    # The same setting is measured again in the nprobe sweep, later in the run: judge by the lower of the two.
    again = [q for v, r, q in nprobe_sweep if v == big_nprobe]
    low_qps = min([big.batched_qps, *again])
    meets = big.recall >= TARGET_RECALL and low_qps >= TARGET_QPS
    verdict = (
        f"Target {'met' if meets else 'NOT met'}."
        if args.n >= 1_000_000
        else "(Below 1M: the target does not apply.)"
    )
    ladder = "; ".join(
        f"nprobe {step.get('nprobe')}: " + ", ".join(f"{k} {v}" for k, v in step.items() if k != "nprobe")
        for step in tuning.get("ladder", [])
    )
    lines = [
        "## FAISS retrieval",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({total / 60:.1f} min) from the repository root:",
        "",
        "```",
        command,
        "```",
        "",
        *([args.note, ""] if args.note else []),
        f"Machine: {machine()}. The 2 cores were shared with another engineer's Spark jobs (1-min load average "
        f"{' / '.join(f'{x:.1f}' for x in loads)} at start / after the synthetic part / at the end), so q/s are "
        "conservative and noisy. Indexes are built by `llmfeat.retrieval.index.build_index` with the default `index` "
        "config. recall@10 is against exact inner-product search (IndexFlatIP) on the same queries; batched = "
        f"all queries in one call (FAISS's 2 OpenMP threads; median of 3 runs, exact baselines 1); single = {args.single} queries, one call each "
        "(exact baselines: a tenth of that), with 2 OpenMP threads and with 1 (what the service uses).",
        "",
        f"**Target** (synthetic >= 1M x 384, this 2-core CPU): recall@10 >= {TARGET_RECALL} at >= {TARGET_QPS:,} "
        f"batched q/s. **Measured: recall@10 {big.recall:.4f} at {big.batched_qps:,.0f} q/s"
        + (
            f" (the same setting measured {', '.join(f'{q:,.0f}' for q in again)} q/s later in the run, under the "
            "other workload)"
            if again
            else ""
        )
        + f": {low_qps / TARGET_QPS:.1f}x the target q/s at the lower measurement, {low_qps / flat_qps[syn]:.0f}x "
        f"exact search. {verdict}**",
        "",
        *table(rows, flat_qps),
        "",
        f"Queries: MovieLens, the {len(ml_queries)} users' latest text vectors (user -> items); synthetic, "
        f"{args.queries:,} fresh draws from the mixture. Build s = training + adding + build-time tuning; size = "
        f"the serialised index (a published version also keeps the vectors for exact re-scoring and item "
        f"queries: {args.n * DIM * 4 / 2**20:,.0f} MiB more for the synthetic catalogue). Generating the synthetic "
        f"vectors took {gen_s:.0f} s.",
        "",
        f"Build-time tuning of the synthetic auto choice (target {tuning['target_recall']} for each query kind; "
        f"{', '.join(f'{v} {k}' for k, v in tuning['queries'].items())} queries): {ladder or 'nothing to tune'}. "
        f"Training sample {training['sample_size']:,} vectors, seed {training['seed']}.",
        "",
        "Through the Python API (`Retriever.search`, one query per call, 1 OpenMP thread; synthetic catalogue, "
        "auto choice):",
        "",
        f"| query | recall@10 vs exact (same filter) | q/s | answered by (index.exact_filter_max={cfg.exact_filter_max:,}, filter_coverage={cfg.filter_coverage:g}) |",
        "|---|---:|---:|---|",
        *[f"| {name} | {rec:.4f} | {qps:,.0f} | {method} |" for name, rec, qps, method in api],
        "",
    ]
    if nprobe_sweep or kf_sweep:
        lines += ["Trade-off of the synthetic auto choice (the other parameter as built):", "",
                  "| parameter | value | recall@10 | batched q/s |", "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| nprobe | {v} | {r:.4f} | {q:,.0f} |" for v, r, q in nprobe_sweep]
        lines += [f"| k_factor | {v} | {r:.4f} | {q:,.0f} |" for v, r, q in kf_sweep]
        lines.append("")
    lines += [
        "Synthetic catalogue: "
        + ", ".join(f"{k}={v}" for k, v in MIXTURE.items())
        + " (see the docstring of `bench/faiss_bench.py`). Calibration (mean-vector norm / mean pairwise cosine /"
        " mean nearest-neighbour cosine): "
        + "; ".join(
            f"{name} {s['mean_norm']:.3f} / {s['pair_cos']:.3f} / {s['nn_cos']:.3f}"
            for name, s in calib.items()
        )
        + ".",
        "",
        "### User -> items on MovieLens-100k, temporal holdout",
        "",
        f"Cut T = {ho['cut']:%Y-%m-%d} (the 90% time quantile of interactions, floored to midnight): "
        f"{ho['train_interactions']:,} interactions before, {ho['test_interactions']:,} after. Evaluated: the "
        f"{ho['users']} users with clicks (rating >= 4) after T that have both user vectors as of T, "
        f"{ho['heldout_clicks']:,} held-out clicks. Of the {ho['users_with_heldout']} users with held-out clicks, "
        f"{ho['text_users']} have a text vector as of T but {ho['no_click_before']} had no click before T, hence no "
        "history vector; the last two rows cover all users with a text vector. Query = the user's vector as of T "
        "(latest row with event_timestamp <= T); items the user interacted with before T are excluded for every "
        "method. Popularity = the most clicked items before T.",
        "",
        f"| method | recall@{ho['k']} | nDCG@{ho['k']} | recall vs popularity |",
        "|---|---:|---:|---:|",
    ]
    pop = ho["results"]["popularity"]
    names = {"text": "user text vector -> items (FAISS)", "history": "pooled-history vector -> items (FAISS)",
             "popularity": "popularity baseline", "random": "random items",
             "popularity_all": f"popularity baseline, {ho['text_users']} users",
             "text_all": f"user text vector -> items (FAISS), {ho['text_users']} users"}  # fmt: skip
    for key in ("text", "history", "popularity", "random", "text_all", "popularity_all"):
        res = ho["results"][key]
        lines.append(
            f"| {names[key]} | {res['recall']:.4f} | {res['ndcg']:.4f} | {res['recall'] / pop['recall']:.2f}x |"
        )
    lines.append("")
    section = "\n".join(lines)
    print(section)
    write_section(args.out, "FAISS retrieval", section)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
