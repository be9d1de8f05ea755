"""Retrieval service load bench (bounded, loopback): the real app (``llmfeat.retrieval.serve.create_app`` served the way
``llmfeat serve`` serves it) on a copy of a finished data directory, with one extra route, a constant response
of the same shape (``/bench/constant``: the ceiling of the web stack itself, no retrieval work).

In one run, interleaved in rounds so that every endpoint sees the same machine:
  - sequential (1 client) and concurrent (``--clients``, default 8) keep-alive HTTP clients;
  - endpoints: constant, user -> items (``/users/{id}/recommendations?k=10``), item -> items
    (``/items/{id}/similar?k=10``), random known ids; two more constants for the user route: its parameters
    validated the same way, and a fixed real user answer (``/bench/constant/user-response``: with its
    "because you liked" lists, ~3x the bytes of the item-shaped constant);
  - per endpoint: requests/s, p50 / p99 latency, failed requests (anything but HTTP 200, or an error);
  - then a hot-reload phase: the concurrent user -> items load while the published index version is flipped
    between two versions ``--reloads`` times (POST /reload after each flip); every request must succeed.

Throughput ratio = endpoint req/s / constant req/s, same clients, same run, pooled over the rounds and per
round (with the median over rounds: a load burst on a shared machine during one endpoint's slot moves the
pooled ratio, the median of the per-round ratios less so). Clients are threads of this process and share the
machine's cores with the server: the ratio, not the absolute rate, is the claim.

    .venv/bin/python bench/serve_bench.py --data-dir var/data --out var/bench/serve.json
    .venv/bin/python bench/serve_bench.py --data-dir var/data --profile var/bench/serve-profile.txt  # pyinstrument
"""

# No `from __future__ import annotations`: FastAPI reads the bench routes' annotations at definition time.
import argparse
import datetime as dt
import http.client
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

from benchmarks_md import cpu_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- server side -----------------------------------------------------------------------------------------


def serve(data_dir: Path, port: int, sets: list[str], profile: Path | None, src: Path | None) -> None:
    """Run the service (plus the constant route) in this process until terminated."""
    if src is not None:  # another checkout's code (e.g. the code before a change), same bench
        sys.path.insert(0, str(src))
    from llmfeat.core.config import load_config
    from llmfeat.retrieval import serve as served
    from llmfeat.retrieval.serve import Recommendations, RetrieverHolder, create_app

    def run_server(app, host, port, cfg):
        if hasattr(served, "run_server"):
            return served.run_server(app, host, port, cfg)
        import uvicorn

        return uvicorn.run(app, host=host, port=port, log_level="info")  # as `llmfeat serve` did

    cfg = load_config(None, [f"paths.data_dir={data_dir}", *sets])
    holder = RetrieverHolder.from_config(cfg)
    extra = (
        {"response_cache_mb": cfg.serve.response_cache_mb} if hasattr(cfg.serve, "response_cache_mb") else {}
    )
    # reloads are driven by the bench; the rest as `llmfeat serve` configures it
    app = create_app(holder, k_max=cfg.serve.k_max, reload_interval_s=0, **extra)
    r = holder.get()
    item = str(r._item_ids[0])
    constant = r.similar_items(item, 10)
    body = Recommendations(kind="item", id=item, k=10, index_version=constant.index_version, model_id=r.model_id,
                           method=constant.method,
                           results=[{"item_id": i, "score": s, "title": t}
                                    for i, s, t in zip(constant.ids, constant.scores, constant.titles, strict=True)])  # fmt: skip
    payload = body.model_dump(mode="json")
    # The constant routes answer the way the retrieval routes of the served code do: a pre-built JSON body
    # through serve.json_response where it exists (the routes return their JSON as is), else a model that
    # FastAPI validates and serialises (the code before that change, via --src).
    encode = getattr(served, "json_response", None)

    def constant_body():
        return encode(payload) if encode is not None else Recommendations.model_validate(payload)

    @app.get("/bench/constant", response_model=Recommendations)
    async def constant_response():
        """The same response shape as the retrieval routes, built once: the web stack alone."""
        return constant_body()

    from typing import Annotated

    from fastapi import Path as PathParam
    from fastapi import Query

    user_id_t = Annotated[str, PathParam(min_length=1, max_length=200, pattern=served.ID_PATTERN)]
    k_t = Annotated[int, Query(ge=1, le=cfg.serve.k_max)]
    categories_t = Annotated[list[served.Category] | None, Query(alias="category", max_length=50)]

    @app.get("/bench/constant/users/{user_id}/recommendations", response_model=Recommendations)
    async def constant_user_route(
        user_id: user_id_t, k: k_t = 10, categories: categories_t = None, exclude_seen: bool = True
    ):
        """The user route's parameters, validated the same way, and the constant response: what the web stack
        costs that route, without the retrieval work."""
        return constant_body()

    # A real user answer (10 results with their "because you liked" items: ~3x the bytes of the item-shaped
    # constant), answered as a constant: the web stack's ceiling for a response of the user route's size.
    user = next(u for u in sorted(r._seen) if r._liked.get(u) is not None)
    answer = served._response("user", user, 10, r, r.for_user(user, 10))
    user_payload = json.loads(answer.body) if hasattr(answer, "body") else answer.model_dump(mode="json")

    @app.get("/bench/constant/user-response", response_model=Recommendations)
    async def constant_user_response():
        """A fixed user answer (because lists included), built once."""
        return encode(user_payload) if encode is not None else Recommendations.model_validate(user_payload)

    @app.get("/bench/ids")
    async def ids() -> dict:
        users = getattr(r.users, "ids", None) or sorted(r._seen)
        return {"items": [str(i) for i in r._item_ids], "users": [str(u) for u in users]}

    if profile is None:
        run_server(app, "127.0.0.1", port, cfg)
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    import signal

    def stop(*_):
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    profiler.start()
    run_server(app, "127.0.0.1", port, cfg)


# --- client side -----------------------------------------------------------------------------------------


class Client(threading.Thread):
    def __init__(self, port: int, paths: list[str], deadline: float):
        super().__init__(daemon=True)
        self.port, self.paths, self.deadline = port, paths, deadline
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while time.perf_counter() < self.deadline:
            path = self.paths[n % len(self.paths)]
            n += 1
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    self.failures.append(f"{path}: HTTP {resp.status} {body[:200]!r}")
            except Exception as exc:  # a dropped connection is a failed request
                self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            self.latencies.append(time.perf_counter() - t0)
        conn.close()


def load(port: int, paths: list[str], clients: int, seconds: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    deadline = time.perf_counter() + seconds
    threads = [Client(port, list(rng.permutation(paths)), deadline) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = [x for t in threads for x in t.latencies]
    return {"requests": len(lat), "failed": sum(len(t.failures) for t in threads), "seconds": wall,
            "latencies": lat, "failures": [f for t in threads for f in t.failures][:5]}  # fmt: skip


def summarise(runs: list[dict]) -> dict:
    lat = np.array([x for r in runs for x in r["latencies"]]) * 1000
    n = sum(r["requests"] for r in runs)
    secs = sum(r["seconds"] for r in runs)
    return {"requests": n, "failed": sum(r["failed"] for r in runs), "req_per_s": round(n / secs, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if n else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if n else None,
            "failures": [f for r in runs for f in r["failures"]][:5]}  # fmt: skip


def get_json(port: int, path: str, method: str = "GET") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return out


def second_version(index_root: Path) -> tuple[str, str]:
    """A second published version (a copy of the current one under a new name), for reloads under load."""
    from llmfeat.retrieval.index import current_version, new_version

    cur = current_version(index_root)
    other = new_version(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    shutil.copytree(index_root / "versions" / cur, index_root / "versions" / other)
    return cur, other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "data",
                    help="A data dir after `make run`; index and feast are copied, the rest linked, nothing written.")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=4.0, help="per endpoint, per mode, per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--reloads", type=int, default=6)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for the server")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--profile", type=Path, help="run the server under pyinstrument and write its report here"
    )
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "serve.json")
    ap.add_argument(
        "--src", type=Path, help="serve the code of this src/ directory (default: this checkout's)"
    )
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.data_dir, args.port, args.sets, args.profile, args.src)
        return

    from llmfeat.core.config import load_config
    from llmfeat.retrieval.index import index_root, publish

    started = time.perf_counter()
    result: dict = {"command": " ".join(sys.argv), "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": f"{cpu_model()}, {os.cpu_count()} cores", "load_average_1min": [round(os.getloadavg()[0], 2)]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        for part in sorted(p.name for p in args.data_dir.iterdir()):
            src = args.data_dir.resolve() / part
            if part in ("index", "feast"):
                shutil.copytree(src, data / part, symlinks=True, ignore=shutil.ignore_patterns("staging"))
            else:
                src_link = data / part
                src_link.symlink_to(src)
        cfg = load_config(None, [f"paths.data_dir={data}", *args.sets])
        root = index_root(data, cfg.embed.embedding_set)
        v1, v2 = second_version(root)

        port = free_port()
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ]
        cmd += [a for s in args.sets for a in ("--set", s)]
        if args.src:
            cmd += ["--src", str(args.src.resolve())]
        if args.profile:
            cmd += ["--profile", str(args.profile.resolve())]
            args.profile.parent.mkdir(parents=True, exist_ok=True)
        server_log = Path(tmp) / "server.log"  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=server_log.open("w"))
        try:
            deadline = time.time() + 120
            while True:
                try:
                    status, _ = get_json(port, "/health")
                    if status == 200:
                        break
                except OSError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"server died: {server_log.read_text()[-3000:]}")
                if time.time() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            _, ids = get_json(port, "/bench/ids")
            rng = np.random.default_rng(args.seed)
            users = [str(u) for u in rng.choice(ids["users"], min(500, len(ids["users"])), replace=False)]
            items = [str(i) for i in rng.choice(ids["items"], min(500, len(ids["items"])), replace=False)]
            endpoints = {
                "constant": ["/bench/constant"],
                "constant_user_route": [
                    f"/bench/constant/users/{u}/recommendations?k={args.k}" for u in users
                ],
                "constant_user_response": ["/bench/constant/user-response"],
                "user_to_items": [f"/users/{u}/recommendations?k={args.k}" for u in users],
                "item_to_items": [f"/items/{i}/similar?k={args.k}" for i in items],
            }
            for paths in endpoints.values():  # warm-up: code paths, connections, page cache
                load(port, paths, 2, 1.0, args.seed)
            runs: dict[str, list[dict]] = {
                f"{m}/{e}": [] for m in ("sequential", "concurrent") for e in endpoints
            }
            for rnd in range(args.rounds):
                for mode, clients in (("sequential", 1), ("concurrent", args.clients)):
                    for name, paths in endpoints.items():
                        runs[f"{mode}/{name}"].append(
                            load(port, paths, clients, args.seconds, args.seed + rnd)
                        )
                result["load_average_1min"].append(round(os.getloadavg()[0], 2))
                print(f"round {rnd + 1}/{args.rounds} done", flush=True)
            summary = {key: summarise(v) for key, v in runs.items()}
            for mode in ("sequential", "concurrent"):
                base = summary[f"{mode}/constant"]["req_per_s"]
                for name in (
                    "constant_user_route",
                    "constant_user_response",
                    "user_to_items",
                    "item_to_items",
                ):
                    summary[f"{mode}/{name}"]["throughput_vs_constant"] = round(
                        summary[f"{mode}/{name}"]["req_per_s"] / base, 3
                    )
                    # per round (each endpoint against the constant of its own round, seconds apart): on a
                    # shared machine a load burst in one slot moves the pooled ratio; the median resists it
                    per_round = [
                        (e["requests"] / e["seconds"]) / (c["requests"] / c["seconds"])
                        for e, c in zip(runs[f"{mode}/{name}"], runs[f"{mode}/constant"], strict=True)
                    ]
                    row = summary[f"{mode}/{name}"]
                    row["vs_constant_per_round"] = [round(x, 3) for x in per_round]
                    row["vs_constant_median_round"] = round(float(np.median(per_round)), 3)
                same_route = summary[f"{mode}/constant_user_route"]["req_per_s"]
                summary[f"{mode}/user_to_items"]["throughput_vs_constant_user_route"] = round(
                    summary[f"{mode}/user_to_items"]["req_per_s"] / same_route, 3
                )
                same_size = summary[f"{mode}/constant_user_response"]["req_per_s"]
                summary[f"{mode}/user_to_items"]["throughput_vs_constant_user_response"] = round(
                    summary[f"{mode}/user_to_items"]["req_per_s"] / same_size, 3
                )
            result["src"] = str(args.src) if args.src else "this checkout"
            result["results"] = summary

            # hot reload under the concurrent user -> items load
            box: dict = {}
            loader = threading.Thread(target=lambda: box.update(
                r=load(port, endpoints["user_to_items"], args.clients, args.seconds * 2, args.seed)))  # fmt: skip
            loader.start()
            reloads, versions = [], [v2, v1]
            gap = args.seconds * 2 / (args.reloads + 1)
            for n in range(args.reloads):
                time.sleep(gap)
                publish(root, versions[n % 2])
                status, body = get_json(port, "/reload", "POST")
                reloads.append(
                    {"status": status, "reloaded": body.get("reloaded"), "to": body.get("index_version")}
                )
            loader.join()
            result["hot_reload_under_load"] = {**summarise([box["r"]]), "reloads": reloads,
                                               "all_reloaded": all(r["status"] == 200 and r["reloaded"] for r in reloads)}  # fmt: skip
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    result["load_average_1min"].append(round(os.getloadavg()[0], 2))
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
