"""FAISS on a GPU: what `Retriever` does with a GPU (the index moved with ``index_cpu_to_all_gpus``, or exact
search over the vectors on the GPU when the index type cannot move, as the default large-catalogue
fast-scan PQ cannot) against the CPU, on bench/faiss_bench.py's calibrated synthetic catalogue. Writes the
"FAISS on GPU" section of BENCHMARKS.md. Run by bench/gpu.sh:

    .venv/bin/python bench/faiss_gpu.py [--n 1000000] [--queries 10000]

Rows: exact search (IndexFlatIP) on the CPU, the baseline; exact search on the GPU; IVF-Flat moved to the
GPU (nlist = the index config's automatic choice, nprobe 32), each with recall@10 against CPU exact search and
batched / single-query q/s. ``--dry-run``: toy sizes on the CPU (the GPU rows then run on the CPU and say so);
not measurements.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from benchmarks_md import cpu_model, write_section  # noqa: E402
from faiss_bench import Mixture  # noqa: E402

from llmfeat.core.config import IndexConfig  # noqa: E402
from llmfeat.retrieval.index import choose_factory, recall_at  # noqa: E402

TITLE = "FAISS on GPU"
K = 10


def timed(index, xq: np.ndarray, single: int) -> tuple[np.ndarray, float, float]:
    index.search(xq[:16], K)  # warm-up
    t0 = time.perf_counter()
    _, ids = index.search(xq, K)
    batched = len(xq) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for q in xq[:single]:
        index.search(q[None, :], K)
    return ids, batched, single / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--single", type=int, default=1000)
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    started = time.perf_counter()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if args.dry_run:
        n, nq, single = 5000, 200, 50
    else:
        if gpus == 0:
            sys.exit("bench/faiss_gpu.py: faiss sees no GPU (install faiss-gpu-cu12; or use --dry-run)")
        n, nq, single = args.n, args.queries, args.single
    mix = Mixture()
    xb, xq = mix.sample(n, seed=1), mix.sample(nq, seed=2)
    d = xb.shape[1]
    to_gpu = (lambda ix: faiss.index_cpu_to_all_gpus(ix)) if gpus else (lambda ix: ix)
    where = f"GPU x{gpus}" if gpus else "CPU (dry run: no GPU)"
    rows = []
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    truth, b, s = timed(cpu, xq, max(1, single // 10))
    rows.append(("exact (IndexFlatIP), CPU", 1.0, b, s, 0.0))
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    gflat = to_gpu(flat)
    build = time.perf_counter() - t0
    ids, b, s = timed(gflat, xq, single)
    rows.append(
        (
            f"exact (IndexFlatIP), {where}: what Retriever uses for the default large index",
            recall_at(ids, truth),
            b,
            s,
            build,
        )
    )
    del gflat
    cfg = IndexConfig()
    nlist = int(choose_factory(max(n, cfg.exact_max_items + 1), d, cfg).split(",")[0].removeprefix("IVF"))
    nlist = min(nlist, n // 40)
    t0 = time.perf_counter()
    ivf = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    ivf.train(xb[rng.choice(n, min(n, 40 * nlist), replace=False)])
    ivf.add(xb)
    ivf.nprobe = 32  # copied to the GPU index
    givf = to_gpu(ivf)
    build = time.perf_counter() - t0
    ids, b, s = timed(givf, xq, single)
    rows.append((f"IVF{nlist},Flat nprobe 32, {where}", recall_at(ids, truth), b, s, build))
    seconds = time.perf_counter() - started
    cpu_qps = rows[0][2]
    lines = [f"## {TITLE}", ""]
    if args.dry_run:
        lines += ["**DRY RUN on the CPU (`bench/gpu.sh --dry-run`): toy sizes, no GPU; these numbers are not "
                  "measurements, only proof that the script runs end to end.**", ""]  # fmt: skip
    lines += [f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({seconds:.0f} s): `{os.path.relpath(sys.executable, REPO)} "
              f"{' '.join(sys.argv)}` (from `bench/gpu.sh`).", "",
              f"Machine: {where}; CPU {cpu_model()}, {len(os.sched_getaffinity(0))} cores; faiss {faiss.__version__}. "
              f"Catalogue: {n:,} x {d} synthetic vectors (bench/faiss_bench.py's calibrated mixture), {nq:,} fresh "
              f"queries batched, {single:,} one at a time (CPU exact: a tenth). recall@{K} against CPU exact search.", "",
              "| index | recall@10 | batched q/s | x CPU exact | single q/s | build / move s |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, rec, b, s, build in rows:
        lines.append(f"| {name} | {rec:.4f} | {b:,.0f} | {b / cpu_qps:.1f} | {s:,.0f} | {build:.1f} |")
    section = "\n".join(lines) + "\n\n"
    print(section)
    write_section(args.benchmarks_md, TITLE, section)


if __name__ == "__main__":
    main()
