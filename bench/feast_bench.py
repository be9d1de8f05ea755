"""Feast benchmark: materialisation rate, online lookup latency, historical retrieval time.

On a copy of an embedded data directory (default: the demo's ``var/data`` after ``make run``), in one run:
  1. materialisation rows/s per feature view into the SQLite online store and into Redis (a private
     redis-server on a free loopback port), 384-d vectors included;
  2. online lookup latency p50 / p99 for 1 user + 100 candidate items, the ranker's way
     (``OnlineFeatures.ranker_features``: item features from the in-process cache keyed by the publish version,
     preloaded with the catalogue as a ranker does at start; user features read per request; matrix
     assembled) and, as baselines in the same run, the same reads without the item cache (direct online-store
     reads per view), the same matrix through two ``get_online_features`` calls (the plain SDK path: its
     matrix is compared with the ranker's, value by value, on every draw), and the textbook way (one call with
     the user repeated on each of the 100 rows, unpacked stats, no assembly); every garbage collection during
     the timed draws is recorded (``gc_during_lookups``: count, total and longest pause per generation), to
     tell a collector pause from the machine's scheduling in the tail, by the path that was being timed; after
     load the bench calls ``gc.freeze()`` as a ranker process should (``--no-gc-freeze``: not);
  3. point-in-time historical retrieval of the whole MovieLens training set (Spark offline store).

    .venv/bin/python bench/feast_bench.py --data-dir var/data --as-of 1998-04-23 --out var/bench/feast.json
    # lookups only, on the data dir's published SQLite online store (no materialisation, no Redis, no Spark):
    .venv/bin/python bench/feast_bench.py --lookups-only --out var/bench/feast-lookups.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks_md import cpu_model  # noqa: E402

from llmfeat.core.config import load_config  # noqa: E402
from llmfeat.features.publish import EPOCH, load_definitions, open_store  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("redis-server did not start")


def source_rows(view) -> int:
    path = Path(view.batch_source.path)
    return pq.ParquetDataset(path).read(columns=[]).num_rows if path.exists() else 0


def materialize(cfg, as_of: dt.date) -> list[dict]:
    """Apply, then materialise each view on its own (timed), from the epoch to ``as_of``."""
    from feast import FeatureView

    store = open_store(cfg)
    objects = load_definitions(cfg)
    store.apply(objects)
    end = dt.datetime.combine(as_of, dt.time(0), tzinfo=dt.UTC)
    out = []
    for view in [o for o in objects if isinstance(o, FeatureView)]:
        rows = source_rows(view)
        t0 = time.perf_counter()
        store.materialize(start_date=EPOCH, end_date=end, feature_views=[view.name])
        seconds = time.perf_counter() - t0
        vector = any("embedding" in f.name for f in view.features)
        out.append({"view": view.name, "rows": rows, "seconds": round(seconds, 2),
                    "rows_per_s": round(rows / seconds, 1), "vectors": vector})  # fmt: skip
    return out


def percentiles(samples: list[float]) -> dict:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": len(samples)}  # fmt: skip


class gc_pauses:
    """Records every garbage collection from now on, by the path being timed when it ran (``path``, set by
    the caller; None between timed calls), until ``summary()``."""

    def __init__(self) -> None:
        import gc

        self.gc, self.events, self._t0, self.path = gc, [], 0.0, None
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.events.append((self.path, info["generation"], (time.perf_counter() - self._t0) * 1000))

    def summary(self) -> dict:
        self.gc.callbacks.remove(self._callback)
        out = {}
        for path in dict.fromkeys(e[0] for e in self.events):
            mine = [e for e in self.events if e[0] == path]
            out[str(path) if path else "between_calls"] = {
                f"gen{g}": {"collections": sum(1 for e in mine if e[1] == g),
                            "total_ms": round(sum(e[2] for e in mine if e[1] == g), 2),
                            "max_ms": round(max([e[2] for e in mine if e[1] == g] or [0.0]), 2)}
                for g in (0, 1, 2)
            }  # fmt: skip
        return out


def lookups(cfg, users: list[str], items: list[str], n: int, seed: int, freeze: bool = True) -> dict:
    """1 user + 100 items, ``n`` times after a warm-up, three ways interleaved (so all see the same machine):
    llmfeat's direct store reads; the same matrix from two ``get_online_features`` calls (the Feast API path);
    the textbook single call with the user repeated on every row."""
    from llmfeat.features.feature_vector import build_feature_matrix
    from llmfeat.features.online import OnlineFeatures

    store = open_store(cfg)
    online = OnlineFeatures(store, dim=384)
    online.item_cache.preload(items)  # what a ranker process does at start
    uncached = OnlineFeatures(store, dim=384, cache_items=False)
    user_refs = [f"{r.view.name}:{f}" for r in online.user_views for f in r.features]
    item_refs = [f"{r.view.name}:{f}" for r in online.item_views for f in r.features]
    textbook_refs = [
        f"{p.name}:{f.name}"
        for p in store.get_feature_service("ctr_training").feature_view_projections
        for f in p.features
    ]

    def via_get_online_features(u: str, cand: list[str], at: dt.datetime) -> np.ndarray:
        user = store.get_online_features(features=user_refs, entity_rows=[{"user_id": u}],
                                         full_feature_names=True).to_dict()  # fmt: skip
        columns = store.get_online_features(features=item_refs, entity_rows=[{"item_id": i} for i in cand],
                                            full_feature_names=True).to_dict()  # fmt: skip
        columns.update({k: v * len(cand) for k, v in user.items()})
        return build_feature_matrix(columns, at, 384, len(cand)).matrix

    def textbook(u: str, cand: list[str]) -> dict:
        return store.get_online_features(features=textbook_refs, entity_rows=[{"user_id": u, "item_id": i} for i in cand],
                                         full_feature_names=True).to_dict()  # fmt: skip

    rng = np.random.default_rng(seed)
    draws = [(users[rng.integers(len(users))], list(rng.choice(items, 100, replace=False))) for _ in range(n)]
    for u, cand in draws[:20]:  # warm-up: connections, registry cache, code paths
        now = dt.datetime.now(dt.UTC)
        online.ranker_features(u, cand, at=now), uncached.ranker_features(u, cand, at=now)
        via_get_online_features(u, cand, now), textbook(u, cand)
    if freeze:  # what a ranker process does once loaded: the collector no longer scans the libraries' objects
        gc.collect()
        gc.freeze()
    samples: dict[str, list[float]] = {"ranker": [], "ranker_uncached": [], "via_get_online_features": [],
                                       "textbook": []}  # fmt: skip
    max_diff = 0.0
    pauses = gc_pauses()  # is the tail the collector's? (every collection during the timed draws)
    for u, cand in draws:
        at = dt.datetime.now(dt.UTC)
        pauses.path = "ranker"
        t0 = time.perf_counter()
        got = online.ranker_features(u, cand, at=at)
        samples["ranker"].append(time.perf_counter() - t0)
        pauses.path = "ranker_uncached"
        t0 = time.perf_counter()
        uncached.ranker_features(u, cand, at=at)
        samples["ranker_uncached"].append(time.perf_counter() - t0)
        pauses.path = "via_get_online_features"
        t0 = time.perf_counter()
        ref = via_get_online_features(u, cand, at)
        samples["via_get_online_features"].append(time.perf_counter() - t0)
        pauses.path = "textbook"
        t0 = time.perf_counter()
        textbook(u, cand)
        samples["textbook"].append(time.perf_counter() - t0)
        pauses.path = None
        assert got.matrix.shape[0] == 100
        # the same matrix both ways, every value (same "now" for the recency features)
        max_diff = max(max_diff, float(np.abs(got.matrix - ref).max()))
        assert np.allclose(got.matrix, ref, atol=1e-6), max_diff
    out = {name: percentiles(v) for name, v in samples.items()}
    out["gc_during_lookups"] = pauses.summary()
    out["gc_frozen_after_load"] = freeze
    if freeze:
        gc.unfreeze()
    for name in ("ranker_uncached", "via_get_online_features", "textbook"):
        out[f"p99_speedup_vs_{name}"] = round(out[name]["p99_ms"] / out["ranker"]["p99_ms"], 2)
        out[f"p50_speedup_vs_{name}"] = round(out[name]["p50_ms"] / out["ranker"]["p50_ms"], 2)
    out["max_abs_diff_vs_get_online_features"] = max_diff
    out["items_cached"] = len(online.item_cache._state.values)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "data",
                    help="An embedded data dir (ingest, embed and stats done); it is copied, never written.")  # fmt: skip
    ap.add_argument("--as-of", default="1998-04-23")
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-historical", action="store_true")
    ap.add_argument("--lookups-only", action="store_true",
                    help="Only the lookup latencies, on a copy of the data dir's published SQLite online store.")  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "feast.json")
    ap.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false",
                    help="Leave the garbage collector as it is after load (default: gc.freeze(), as a ranker does).")  # fmt: skip
    args = ap.parse_args()
    as_of = dt.date.fromisoformat(args.as_of)
    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    result: dict = {"command": " ".join(sys.argv), "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": f"{cpu_model()}, {os.cpu_count()} cores"}  # fmt: skip

    if args.lookups_only:
        with tempfile.TemporaryDirectory(prefix="feast-bench-") as tmp:
            data = Path(tmp) / "data"
            for part in ("canonical", "feast"):
                if not (args.data_dir / part).is_dir():
                    raise SystemExit(
                        f"{args.data_dir} has no {part}/: run `make run` (or llmfeat nightly) first"
                    )
                shutil.copytree(args.data_dir / part, data / part, ignore=shutil.ignore_patterns("staging"))
            cfg = load_config(None, [f"paths.data_dir={data}", "feast.online_store=sqlite"])
            items, users = catalogue(data)
            result["lookup_sqlite"] = lookups(cfg, users, items, args.lookups, args.seed, args.gc_freeze)
        load.append(os.getloadavg()[0])
        finish(args, result, load, started)
        return

    with tempfile.TemporaryDirectory(prefix="feast-bench-") as tmp:
        work = Path(tmp)
        data = work / "data"
        for part in ("canonical", "embeddings", "features"):
            if not (args.data_dir / part).is_dir():
                raise SystemExit(f"{args.data_dir} has no {part}/: run `make run` (or llmfeat nightly) first")
            shutil.copytree(args.data_dir / part, data / part)
        redis, port = start_redis(work)
        try:
            profiles = {
                "sqlite": load_config(None, [f"paths.data_dir={data}", "feast.online_store=sqlite"]),
                "redis": load_config(
                    None,
                    [
                        f"paths.data_dir={work / 'data_redis'}",
                        "feast.online_store=redis",
                        f"feast.redis_connection=127.0.0.1:{port},db=0",
                    ],
                ),  # fmt: skip
            }
            # the Redis profile gets its own registry next to a link to the same tables
            (work / "data_redis").mkdir()
            for part in ("canonical", "embeddings", "features"):
                (work / "data_redis" / part).symlink_to(data / part)
            items, users = catalogue(data)
            for name, cfg in profiles.items():
                print(f"[{name}] materialising ...", flush=True)
                result[f"materialize_{name}"] = materialize(cfg, as_of)
                load.append(os.getloadavg()[0])
                print(f"[{name}] {args.lookups} lookups of 1 user + 100 items ...", flush=True)
                result[f"lookup_{name}"] = lookups(cfg, users, items, args.lookups, args.seed, args.gc_freeze)
                load.append(os.getloadavg()[0])
                print(json.dumps(result[f"lookup_{name}"]), flush=True)
        finally:
            redis.terminate()
            redis.wait(timeout=10)

        if not args.skip_historical:
            from llmfeat.core.spark import build_spark
            from llmfeat.ctr.train import training_rows
            from llmfeat.feast.offline import historical_features

            cfg = profiles["sqlite"]
            spark = build_spark(cfg.spark)
            try:
                rows = training_rows(cfg, as_of)
                print(f"historical retrieval of {len(rows)} rows ...", flush=True)
                t0 = time.perf_counter()
                frame = historical_features(open_store(cfg), rows)
                seconds = time.perf_counter() - t0
                result["historical"] = {"rows": len(frame), "columns": len(frame.columns),
                                        "seconds": round(seconds, 1), "rows_per_s": round(len(frame) / seconds, 1)}  # fmt: skip
            finally:
                spark.stop()
            load.append(os.getloadavg()[0])
    finish(args, result, load, started)


def catalogue(data: Path) -> tuple[list[str], list[str]]:
    items = [str(i) for i in pq.read_table(next((data / "canonical" / "items").glob("snapshot_date=*")))
             .column("item_id").to_pylist()]  # fmt: skip
    users = [str(u) for u in pq.read_table(next((data / "canonical" / "users").glob("snapshot_date=*")))
             .column("user_id").to_pylist()]  # fmt: skip
    return items, users


def finish(args, result: dict, load: list[float], started: float) -> None:
    result["load_average_1min"] = [round(x, 2) for x in load]
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
