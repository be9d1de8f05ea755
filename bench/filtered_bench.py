"""Filtered retrieval benchmark: recall@10 and q/s of the selectivity planner (``Retriever.search`` with a
filter) at selectivities 0.1%, 1%, 5%, 10%, 30% and 100%, for clustered and random filters, side by side with
exact search within the same filter, measured in the same run. Writes the "Filtered retrieval" section of
BENCHMARKS.md.

    nice -n 10 python bench/filtered_bench.py [--n 1000000] [--queries 300] [--exact-queries 40]

Catalogue and queries: the calibrated Gaussian-mixture catalogue of ``bench/faiss_bench.py`` (1,000
components); queries are fresh draws from the mixture (test seed 11 unless --test-seed; the validation sweep of
``index.filter_coverage`` uses seed 2). The index is built by ``llmfeat.retrieval.index.build_index`` with the default
``index`` config (what ``llmfeat index`` publishes: IVF4096,PQ192x4fs,RFlat at 1M).

Filters: *clustered* = every item of a random set of mixture components, given as categories (each item's
label is its component set), so the filter clusters in embedding space as real categories do: most queries
come from a component outside it, and its nearest members lie far from the query's own inverted lists.
*Random* = a uniform random set of items, given as an allow-list of item ids (an in-stock list), resolved
once with ``Retriever.make_filter`` and reused, as a service would. 100% = no filter.

Exact baseline: the same ``Retriever`` with ``exact_filter_max`` above the catalogue size, so every query is
scored exactly over the allowed items (FAISS ``knn_inner_product`` with the filter's selector over the vectors
in place, or a gather + product for small filters): the planner's own exact path. Both run one query per call
on 1 OpenMP thread (``index.search_threads``, what the service uses). Ground truth: exact top-10 within the
filter by batched matrix products.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from benchmarks_md import write_section
from faiss_bench import DIM, K, Mixture, machine

from llmfeat.core.config import IndexConfig
from llmfeat.retrieval.filters import ItemFilter
from llmfeat.retrieval.index import BuiltIndex, LoadedIndex, build_index, choose_factory, set_search_params
from llmfeat.retrieval.retriever import Retriever

SELECTIVITIES = (0.001, 0.01, 0.05, 0.1, 0.3, 1.0)
TARGET_RECALL, TARGET_SPEEDUP, SPEEDUP_ABOVE = 0.95, 10.0, 20_000


def truth_within(xb: np.ndarray, xq: np.ndarray, rows: np.ndarray | None, k: int = K) -> np.ndarray:
    """(len(xq), k) exact top-k row ids within ``rows`` (None: all), by batched products in chunks."""
    best_s = np.full((len(xq), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(xq), k), -1, dtype=np.int64)
    ids = np.arange(len(xb)) if rows is None else rows
    for start in range(0, len(ids), 200_000):
        chunk = ids[start : start + 200_000]
        s = xq @ xb[chunk].T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, chunk[top]], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def make_retrievers(
    built, xb: np.ndarray, labels: list[list[str]], cfg: IndexConfig
) -> tuple[Retriever, Retriever]:
    n = len(xb)
    offsets = np.zeros(n + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(x) for x in labels])
    flat = [label for row in labels for label in row]
    ids = pa.table({"faiss_id": np.arange(n), "item_id": [f"s{i}" for i in range(n)],
                    "title": pa.nulls(n, pa.string()),
                    "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.string()))})  # fmt: skip
    manifest = {"model_id": "synthetic", "count": n, "as_of": "2000-01-01", "dim": xb.shape[1],
                "index": {"factory": built.factory, "exact": False}, "params": built.params}  # fmt: skip
    loaded = LoadedIndex("bench", Path("."), manifest, built.index, ids, xb)
    common = dict(search_threads=cfg.search_threads, filter_widen=cfg.filter_widen, gpu="never")
    planner = Retriever(loaded, exact_filter_max=cfg.exact_filter_max, filter_coverage=cfg.filter_coverage,
                        filter_rescore=cfg.filter_rescore, filter_scan=cfg.filter_scan,
                        filter_scan_cap=cfg.filter_scan_cap, **common)  # fmt: skip
    exact = Retriever(loaded, exact_filter_max=n + 1, **common)
    return planner, exact


def run_queries(
    r: Retriever, xq: np.ndarray, flt, rounds: int = 2
) -> tuple[list[np.ndarray], float, Counter]:
    """One call per query; (result rows per query, q/s of the faster of ``rounds`` passes, plans used).
    Best of rounds: the machine is shared, and one pass can lose a time slice to another job."""
    for q in xq[:5]:
        r.search(q, K, item_filter=flt)
    rates = []
    for _ in range(rounds):
        out, plans = [], Counter()
        start = time.perf_counter()
        for q in xq:
            res = r.search(q, K, item_filter=flt)
            out.append(np.array([int(i[1:]) for i in res.ids], dtype=np.int64))
            plans[res.plan if res.method == "index" or res.plan == "exact" else f"{res.plan}->exact"] += 1
        rates.append(len(xq) / (time.perf_counter() - start))
    return out, max(rates), plans


def recall(found: list[np.ndarray], truth: np.ndarray) -> np.ndarray:
    return np.array(
        [len(set(f.tolist()) & set(t[t >= 0].tolist())) / K for f, t in zip(found, truth, strict=True)]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="Synthetic catalogue size")
    ap.add_argument("--queries", type=int, default=300, help="Test queries per filter (recall, planner q/s)")
    ap.add_argument("--exact-queries", type=int, default=40, help="Of those, timed through the exact path")
    ap.add_argument("--val-queries", type=int, default=100, help="Validation queries for the coverage sweep")
    ap.add_argument(
        "--grid",
        nargs="*",
        default=[f"{c}:{s}:{r}" for c in (0.5, 1) for s in (0.25, 0.5) for r in (2, 4)],
        help="Validation sweep: filter_coverage:filter_scan:filter_rescore settings",
    )
    ap.add_argument("--test-seed", type=int, default=11, help="Seed of the test queries")
    ap.add_argument("--nlist", type=int, default=None, help="index.nlist (default: the automatic choice)")
    ap.add_argument("--exact-filter-max", type=int, default=None, help="index.exact_filter_max (smoke runs)")
    ap.add_argument(
        "--index-cache", type=Path, default=None, help="Keep the built index here and reuse it on a rerun"
    )
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = ap.parse_args()
    command = "nice -n 10 python " + " ".join(shlex.quote(a) for a in sys.argv)
    started, loads = time.perf_counter(), [os.getloadavg()[0]]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    cfg = IndexConfig(nlist=args.nlist)
    if args.exact_filter_max is not None:
        cfg.exact_filter_max = args.exact_filter_max
    mix = Mixture()
    log(f"generate {args.n:,} x {DIM}")
    xb, comps = mix.sample_with_components(args.n, seed=1)
    xq, xv = mix.sample(args.queries, seed=args.test_seed), mix.sample(args.val_queries, seed=2)
    tune_users = mix.sample(cfg.tune_queries, seed=3)
    factory = choose_factory(args.n, DIM, cfg)
    cache = args.index_cache
    if cache is not None and cache.is_file() and cache.with_suffix(".json").is_file():
        log(f"read {factory} from {cache} (built by an earlier run of this command)")
        meta = json.loads(cache.with_suffix(".json").read_text())
        index = faiss.read_index(str(cache))
        set_search_params(index, meta["params"])
        built = BuiltIndex(index, meta["factory"], meta["params"], {}, {}, {})
        build_s, cached = meta["build_s"], True
    else:
        log(f"build {factory}")
        t0 = time.perf_counter()
        built = build_index(xb, factory, cfg, tune_users)
        build_s, cached = time.perf_counter() - t0, False
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            faiss.write_index(built.index, str(cache))
            meta = {"factory": factory, "params": built.params, "build_s": build_s, "n": args.n}
            cache.with_suffix(".json").write_text(json.dumps(meta))
    log(f"built in {build_s:.0f} s: {built.params}")

    # Filters: clustered = categories over mixture components; random = allow-lists of item ids.
    rng = np.random.default_rng(19)
    n_comp = int(comps.max()) + 1
    labels: list[list[str]] = [[] for _ in range(args.n)]
    clustered: dict[float, np.ndarray] = {}
    for s in SELECTIVITIES[:-1]:
        chosen = rng.permutation(n_comp)[: max(1, round(s * n_comp))]
        rows = np.flatnonzero(np.isin(comps, chosen))
        clustered[s] = rows
        for r in rows:
            labels[r].append(f"clustered-{s:g}")
    random_rows = {
        s: np.sort(rng.choice(args.n, round(s * args.n), replace=False)) for s in SELECTIVITIES[:-1]
    }
    planner, exact = make_retrievers(built, xb, labels, cfg)
    del labels
    filters = []  # (selectivity, kind, rows, planner filter, exact filter, seconds to resolve)
    for s in SELECTIVITIES:
        if s == 1.0:  # no filter; the exact baseline scores every item
            filters.append((s, "none (100%)", None, None, ItemFilter(args.n, np.arange(args.n)), 0.0))
            continue
        for kind in ("clustered", "random"):
            t0 = time.perf_counter()
            if kind == "clustered":
                fp, fe = planner.make_filter([f"clustered-{s:g}"]), exact.make_filter([f"clustered-{s:g}"])
                rows = clustered[s]
            else:
                allow = [f"s{i}" for i in random_rows[s]]
                fp = planner.make_filter(allow=allow)
                rows = random_rows[s]
                fe = exact.make_filter(allow=allow)
            filters.append((s, kind, rows, fp, fe, (time.perf_counter() - t0) / 2))

    log(f"validation sweep over {len(args.grid)} settings, {args.val_queries} queries")
    swept = [(s, kind, rows, fp, fe) for s, kind, rows, fp, fe, _ in filters
             if fp is not None and fp.remaining > cfg.exact_filter_max]  # fmt: skip
    val_truth = {id(fp): truth_within(xb, xv, rows) for _, _, rows, fp, _ in swept}
    n_exact = max(5, args.val_queries // 5)
    val_exact = {id(fp): run_queries(exact, xv[:n_exact], fe, rounds=1)[1] for _, _, _, fp, fe in swept}
    defaults = (cfg.filter_coverage, cfg.filter_scan, cfg.filter_rescore)
    sweep = []
    for setting in args.grid:
        cov, scan, resc = (float(v) for v in setting.split(":"))
        planner.filter_coverage, planner.filter_scan, planner.filter_rescore = cov, scan, resc
        worst, speedups = 1.0, []
        for _, _, _, fp, _ in swept:
            found, qps, _ = run_queries(planner, xv, fp, rounds=1)
            worst = min(worst, float(recall(found, val_truth[id(fp)]).mean()))
            speedups.append(qps / val_exact[id(fp)])
        sweep.append(((cov, scan, resc), worst, min(speedups)))
        log(
            f"coverage {cov:g}, scan {scan:g}, rescore {resc:g}: worst recall {worst:.4f}, min speed-up {min(speedups):.1f}x"
        )
    # The setting for the test rows, chosen on validation only: among those whose worst recall clears the
    # target by 0.01, the one with the largest smallest speed-up over exact search (else the best recall).
    passing = [x for x in sweep if x[1] >= TARGET_RECALL + 0.01]
    chosen = max(passing, key=lambda x: x[2])[0] if passing else max(sweep, key=lambda x: x[1])[0]
    planner.filter_coverage, planner.filter_scan, planner.filter_rescore = chosen
    log(f"setting for the test rows: {chosen} (config defaults {defaults})")
    loads.append(os.getloadavg()[0])

    rows_out = []
    for s, kind, rows, fp, fe, resolve_s in filters:
        truth = truth_within(xb, xq, rows)
        found, qps, plans = run_queries(planner, xq, fp)
        rec = recall(found, truth)
        efound, eqps, _ = run_queries(exact, xq[: args.exact_queries], fe)
        erec = recall(efound, truth[: args.exact_queries]).mean()
        items = args.n if rows is None else len(rows)
        rows_out.append((s, kind, items, rec.mean(), rec.min(), qps, eqps, erec, plans, resolve_s))
        log(
            f"{s:g} {kind}: {items:,} items, recall {rec.mean():.4f}, {qps:,.0f} q/s vs exact {eqps:,.0f} q/s ({dict(plans)})"
        )
    loads.append(os.getloadavg()[0])
    total = time.perf_counter() - started

    ok_recall = all(r[3] >= TARGET_RECALL for r in rows_out)
    ok_speed = all(r[5] / r[6] >= TARGET_SPEEDUP for r in rows_out if r[2] > SPEEDUP_ABOVE)
    worst = min(rows_out, key=lambda r: r[3])
    slowest = min((r for r in rows_out if r[2] > SPEEDUP_ABOVE), key=lambda r: r[5] / r[6])
    lines = [
        "## Filtered retrieval",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({total / 60:.1f} min) from the repository root:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {machine()}; shared with other sessions' jobs (1-min load average "
        f"{' / '.join(f'{x:.1f}' for x in loads)} at start / after the sweep / at the end), so q/s are noisy; "
        "both columns of a row were measured minutes apart at most, and their ratio is what the target is about.",
        "",
        f"Catalogue: {args.n:,} x {DIM} synthetic (the mixture of `bench/faiss_bench.py`); index "
        f"`{factory}` built by `llmfeat.retrieval.index.build_index` (default config) in {build_s:.0f} s"
        + (" (by an earlier run of this command, read back from --index-cache)" if cached else "")
        + ": "
        + ", ".join(f"{k}={v}" for k, v in built.params.items())
        + f". Planner settings: index.exact_filter_max={cfg.exact_filter_max:,}, filter_coverage / filter_scan / "
        f"filter_rescore = {' / '.join(f'{v:g}' for v in chosen)} (picked by the validation sweep below; the "
        f"config defaults are set to the pick), filter_scan_cap={cfg.filter_scan_cap:g}. {args.queries} test queries per filter (fresh mixture draws, "
        f"seed {args.test_seed}); the exact baseline is timed on the first {args.exact_queries} of them (exact search at 1M is "
        "~0.1 s a query). q/s: the faster of 2 passes over the queries. One query per call, 1 OpenMP thread, through `Retriever.search` with a filter resolved "
        "once (`Retriever.make_filter`). recall@10 is against exact top-10 within the same filter.",
        "",
        f"**Target**: recall@10 >= {TARGET_RECALL} at every selectivity, and q/s >= {TARGET_SPEEDUP:g}x exact search "
        f"within the filter wherever it holds > {SPEEDUP_ABOVE:,} items. **Measured: lowest mean recall@10 "
        f"{worst[3]:.4f} ({worst[0]:.1%} {worst[1]}); smallest speed-up above {SPEEDUP_ABOVE:,} items "
        f"{slowest[5] / slowest[6]:.1f}x ({slowest[0]:.1%} {slowest[1]}). Recall target "
        f"{'met' if ok_recall else 'NOT met'}; speed target {'met' if ok_speed else 'NOT met'}.**",
        "",
        "| selectivity | filter | items | recall@10 (planner) | worst query | planner q/s | exact q/s | × exact | plan used | filter resolved in |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s, kind, items, rec, worst_q, qps, eqps, _erec, plans, resolve_s in rows_out:
        used = ", ".join(f"{p} {c / sum(plans.values()):.0%}" for p, c in plans.most_common())
        lines.append(
            f"| {s:.1%} | {kind} | {items:,} | {rec:.4f} | {worst_q:.1f} | {qps:,.0f} | {eqps:,.1f} | "
            f"{qps / eqps:,.1f} | {used} | {resolve_s * 1000:,.0f} ms |"
        )
    lines += [
        "",
        "Exact recall of the baseline itself: "
        + ", ".join(f"{r[0]:.1%} {r[1]} {r[7]:.3f}" for r in rows_out)
        + " (1.000 expected; a lower value would mean ties or a bug). Filter resolved in = building the filter "
        "once from category names or an allow-list of item ids (string ids -> rows), not part of the per-query "
        "time. Small slices are noisy: with 300 queries a mean recall has a standard error of about 0.005.",
        "",
        f"Validation sweep ({args.val_queries} other queries, seed 2, on every filter above exact_filter_max, i.e. "
        f"the index-filtered path; exact q/s on {n_exact} of them). The test rows above use, among the settings "
        f"whose lowest recall is >= {TARGET_RECALL + 0.01:.2f}, the one with the largest smallest speed-up: "
        "chosen on validation queries only.",
        "",
        "| filter_coverage | filter_scan | filter_rescore | lowest mean recall@10 over the filters | smallest × exact |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {c:g} | {sc:g} | {r:g} | {w:.4f} | {q:,.1f} |" for (c, sc, r), w, q in sweep],
        "",
    ]
    section = "\n".join(lines)
    print(section)
    write_section(args.out, "Filtered retrieval", section)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
