"""Bandit benchmark: ``POST /rank`` latency (1 user + 100 candidates) beside the ranker's Feast lookup, and
the dense-vector choice (full 384-d VW namespaces vs a PCA projection), all measured in one run.

1. In process, interleaved: the ranker lookup alone (``OnlineFeatures.ranker_features``, 1 user + 100 items:
   the baseline) and the bandit's whole decision (``BanditService.rank``: the same Feast reads, feature rows,
   VW predict over 100 actions, sampling, the fsynced event-log write, explanations).
2. Over HTTP on loopback, against ``llmfeat serve`` in its own process: ``/rank`` with 100 given item ids,
   sequentially and from 8 concurrent clients (p50 / p99 per request, throughput).
3. VW predict time for 100 actions at each projection, and the validation-window reward of epsilon-greedy VW
   at each projection in the simulator (warm-up then validation sessions): what ``bandit.proj_dim`` rests on.

On a copy of the data directory (a policy and an event log are written there):

    .venv/bin/python bench/bandit_bench.py --data-dir var/data --as-of 1998-04-23 --out var/bench/bandit.json \
        --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks_md import cpu_model, write_section  # noqa: E402

from llmfeat.core.config import load_config  # noqa: E402


def pct(xs) -> dict:
    a = np.asarray(xs) * 1000
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "n": len(a),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "data")
    ap.add_argument("--as-of", default="1998-04-23")
    ap.add_argument("--n", type=int, default=500, help="requests per measurement")
    ap.add_argument("--proj", type=int, nargs="*", default=[16, 32, 64, 0])
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "bandit.json")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="bandit-bench-"))
    data = tmp / "data"
    shutil.copytree(
        args.data_dir, data, symlinks=True, ignore=shutil.ignore_patterns("bandit", "runs", ".llmfeat.lock")
    )
    import httpx

    from llmfeat.bandit.features import FeatureSpace, action_rows, shared_row
    from llmfeat.bandit.policy import VWPolicy, policy_root, publish_policy
    from llmfeat.bandit.service import BanditService, RankRequest
    from llmfeat.bandit.simulate import build_sessions, load_world, run_policy, world_a_text
    from llmfeat.retrieval.index import index_root, load_version
    from llmfeat.retrieval.retriever import Retriever

    cfg = load_config(None, [f"paths.data_dir={data}"])
    b = cfg.bandit
    day = dt.date.fromisoformat(args.as_of)
    out: dict = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": f"{cpu_model()}, {os.cpu_count()} cores",
                 "vw_args": b.vw_args}  # fmt: skip

    # 3. the projection choice (first: it also trains the policy the latency runs use).
    world = load_world(cfg, day)
    kw = dict(neighbours=b.sim_neighbours, per_session=b.sim_decisions_per_session, seed=b.seed)
    proj_rows = []
    policy_32 = None
    for proj in args.proj:
        space = FeatureSpace.fit(world.vectors, proj)
        warm = build_sessions(
            world,
            space,
            np.datetime64("1900-01-01", "us"),
            world.t1,
            first=False,
            max_sessions=b.sim_warmup_sessions,
            **kw,
        )
        val = build_sessions(world, space, world.t1, world.t2, first=False, max_sessions=None, **kw)
        texts = world_a_text(world, space)
        pol = VWPolicy(space, f"--epsilon {b.epsilon}", b.vw_args, seed=b.seed)
        rng = np.random.default_rng(b.seed)
        tw = run_policy(pol, warm, texts, rng)
        tv = run_policy(pol, val, texts, rng)
        # predict time for 100 actions
        rows = action_rows(
            space, world.vectors[:100], np.zeros(100), np.zeros(100), world.vectors[0], world.vectors[1]
        )
        shared = shared_row(
            space, world.vectors[0], world.vectors[1], 5, dt.datetime(1998, 4, 1, tzinfo=dt.UTC)
        )
        times = []
        for _ in range(30 if proj == 0 else 200):
            t0 = time.perf_counter()
            pol.pmf(shared, rows)
            times.append(time.perf_counter() - t0)
        proj_rows.append({"proj": space.proj, "validation_reward": float(sum(tv.rewards)), "validation_decisions": len(tv.rewards),
                          "ms_per_decision_learning": 1000 * (tw.seconds + tv.seconds) / (len(tw.rewards) + len(tv.rewards)),
                          "predict_100": pct(times)})  # fmt: skip
        print(
            f"proj {space.proj}: validation reward {sum(tv.rewards):.0f}/{len(tv.rewards)}, predict(100) p50 {pct(times)['p50']:.2f} ms",
            flush=True,
        )
        if space.proj == b.proj_dim:
            policy_32 = pol
    out["projection"] = proj_rows
    if policy_32 is None:
        space = FeatureSpace.fit(world.vectors, b.proj_dim)
        policy_32 = VWPolicy(space, f"--epsilon {b.epsilon}", b.vw_args, seed=b.seed)
    publish_policy(policy_root(data), policy_32, {"bench": True})

    # 1. in process, interleaved.
    service = BanditService.from_config(cfg)
    retriever = Retriever.load(cfg)
    items = list(load_version(index_root(data, "default")).ids.column("item_id").to_pylist())
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(np.arange(1, 944), 50)]
    lookup, rank = [], []
    for i in range(args.n + 20):
        user, cands = users[i % len(users)], [items[j] for j in rng.choice(len(items), 100, replace=False)]
        t0 = time.perf_counter()
        service.features.ranker_features(user, cands)
        t1 = time.perf_counter()
        service.rank(retriever, RankRequest(user_id=user, item_ids=cands))
        t2 = time.perf_counter()
        if i >= 20:
            lookup.append(t1 - t0)
            rank.append(t2 - t1)
    out["in_process"] = {"ranker_lookup": pct(lookup), "bandit_rank": pct(rank)}
    print(
        f"in process: lookup p50 {pct(lookup)['p50']:.2f} ms, rank p50 {pct(rank)['p50']:.2f} ms", flush=True
    )

    # 2. HTTP against `llmfeat serve` in its own process.
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "llmfeat.cli", "serve", "--data-dir", str(data), "--port", str(port),
                             "-s", "serve.reload_interval_s=0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/bandit/policy", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("llmfeat serve did not come up")
            time.sleep(0.3)

        def bodies(n: int, seed: int):
            r = np.random.default_rng(seed)
            return [
                {
                    "user_id": users[k % len(users)],
                    "item_ids": [items[j] for j in r.choice(len(items), 100, replace=False)],
                }
                for k in range(n)
            ]

        def run(client: httpx.Client, reqs, lat: list) -> None:
            for body in reqs:
                t0 = time.perf_counter()
                resp = client.post("/rank", json=body)
                lat.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    raise RuntimeError(resp.text)

        with httpx.Client(base_url=url, timeout=30) as c:
            run(c, bodies(20, 1), [])
            seq: list = []
            t0 = time.perf_counter()
            run(c, bodies(args.n, 2), seq)
            seq_wall = time.perf_counter() - t0
            k_seq: list = []
            for k in range(args.n // 2):
                t1 = time.perf_counter()
                assert c.post("/rank", json={"user_id": users[k % len(users)], "k": 10}).status_code == 200
                k_seq.append(time.perf_counter() - t1)
        conc: list = []
        per = args.n // 8
        clients = [httpx.Client(base_url=url, timeout=30) for _ in range(8)]
        threads = [
            threading.Thread(target=run, args=(clients[k], bodies(per, 10 + k), conc)) for k in range(8)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conc_wall = time.perf_counter() - t0
        for c in clients:
            c.close()
        out["http"] = {"sequential_item_ids": pct(seq) | {"rps": args.n / seq_wall},
                       "sequential_k10_from_faiss": pct(k_seq),
                       "concurrent8_item_ids": pct(conc) | {"rps": len(conc) / conc_wall}}  # fmt: skip
        print(json.dumps(out["http"], indent=1), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    out["seconds"] = round(time.time() - started, 1)
    out["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    if args.write:
        write_section(args.write, "Bandits: /rank latency and the vector projection", render(out, args))


def render(out: dict, args) -> str:
    ip, h = out["in_process"], out["http"]
    base = ip["ranker_lookup"]
    f = lambda d: f"{d['p50']:.2f} | {d['p99']:.2f}"  # noqa: E731
    lines = [
        "## Bandits: /rank latency and the vector projection\n\n",
        f"Run {out['started']} ({out['seconds']:.0f} s) from the repository root, on a copy of the demo data dir after `make run`:\n\n",
        "```\n.venv/bin/python bench/bandit_bench.py --data-dir var/data --as-of 1998-04-23 --out var/bench/bandit.json --write BENCHMARKS.md\n```\n\n",
        f"Machine: {out['machine']}; SQLite online store, event log on local disk (WAL, synchronous=FULL: one fsync per "
        f"decision); load average at the end {', '.join(f'{x:.1f}' for x in out['load_average'])} (a shared machine: "
        "ratios within the run are the comparable numbers).\n\n",
        "### One decision, 1 user + 100 candidates\n\n| what | p50 ms | p99 ms | p50 / ranker lookup |\n|---|---:|---:|---:|\n",
        f"| baseline: the ranker's Feast lookup alone (`OnlineFeatures.ranker_features`, in process) | {f(base)} | 1.00x |\n",
        f"| `BanditService.rank` in process (the same Feast reads, feature rows, VW predict over 100 actions, event-log write, explanations) | {f(ip['bandit_rank'])} | {ip['bandit_rank']['p50'] / base['p50']:.2f}x |\n",
        f"| `POST /rank` over HTTP, 100 given item ids, sequential ({h['sequential_item_ids']['rps']:.0f} req/s) | {f(h['sequential_item_ids'])} | {h['sequential_item_ids']['p50'] / base['p50']:.2f}x |\n",
        f"| `POST /rank` over HTTP, 100 given item ids, 8 concurrent clients ({h['concurrent8_item_ids']['rps']:.0f} req/s in all) | {f(h['concurrent8_item_ids'])} | {h['concurrent8_item_ids']['p50'] / base['p50']:.2f}x |\n",
        f"| `POST /rank` over HTTP, `k=10` (100 candidates retrieved from FAISS first), sequential | {f(h['sequential_k10_from_faiss'])} | {h['sequential_k10_from_faiss']['p50'] / base['p50']:.2f}x |\n",
        "\n### Dense vectors: full namespaces vs a PCA projection\n\n"
        f"Epsilon-greedy VW (`--epsilon 0.1 {out.get('vw_args', '')}`) through the simulator's warm-up and validation sessions "
        "(reward on validation; hyperparameters are chosen there, the test window is not read), and the time of one "
        "predict over 100 actions:\n\n| vector dims | validation reward | decisions | ms / decision (learning) | predict(100) p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|---:|\n",
    ]
    for r in out["projection"]:
        lines.append(f"| {r['proj']} | {r['validation_reward']:.0f} | {r['validation_decisions']} | {r['ms_per_decision_learning']:.1f} | "
                     f"{r['predict_100']['p50']:.2f} | {r['predict_100']['p99']:.2f} |\n")  # fmt: skip
    return "".join(lines)


if __name__ == "__main__":
    main()
