"""Frozen vs fine-tuned encoder on MovieLens-100k: the whole comparison, end to end.

1. ingest MovieLens-100k; embed (set ``default``, the frozen all-MiniLM-L6-v2), stats, publish;
2. ``llmfeat finetune`` (LoRA by default, bounded steps) on the temporal training split;
3. re-embed with the fine-tuned model into its own set, publish it as its own Feast project;
4. the CTR job (temporal protocol; popularity, lr_lm, deep_lm) on each set: same splits, same slices;
5. retrieval on the temporal test split: each user with test clicks queries with their vector as of T2
   (text, and pooled history), exact FAISS search, top 20 excluding items seen before T2; recall@20 and
   nDCG@20 over all held-out clicks and over held-out clicks on cold items (no interaction before T1).

Every step is skipped when its output exists, so a cut-off run resumes. Writes a Markdown table (``--table``)
and the "## Fine-tuning" section of BENCHMARKS.md (``--out``).

    PYTHONPATH=src python bench/finetune_eval.py --data-dir var/bench/finetune --steps 150
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from benchmarks_md import cpu_model, write_section  # noqa: E402

from llmfeat.core import tables  # noqa: E402
from llmfeat.core.config import Config, load_config  # noqa: E402

K = 20
SLICES = ("all", "cold_item", "cold_user", "warm")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def with_set(cfg: Config, model_dir: Path | None, name: str) -> Config:
    import copy

    out = copy.deepcopy(cfg)
    out.embed.model_dir = model_dir
    out.embed.embedding_set = name
    return out


def ensure_features(spark, cfg: Config, as_of: dt.date, *, stats: bool, publish: bool = True) -> dict:
    from llmfeat.embedding.embed import embedding_paths, run_embed
    from llmfeat.features.publish import feast_dir, run_publish
    from llmfeat.features.stats import run_stats

    quiet = lambda _m: None  # noqa: E731
    seconds = {}
    paths = embedding_paths(cfg.paths.data_dir, cfg.embed.embedding_set)
    embedded = paths.manifests.is_dir() and any(paths.manifests.glob("*.json"))
    if not embedded:
        t = time.perf_counter()
        m = run_embed(spark, cfg, as_of, log=quiet)
        seconds["embed"] = round(time.perf_counter() - t, 1)
        log(f"embed {cfg.embed.embedding_set}: {m['model_id']}, {seconds['embed']} s, counts {m['counts']}")
    if stats and not (Path(cfg.paths.data_dir) / "features" / "item_stats").is_dir():
        run_stats(spark, cfg, as_of, log=quiet)
    if publish and not (feast_dir(cfg) / "online.db").is_file():
        t = time.perf_counter()
        run_publish(cfg, as_of, log=quiet)
        seconds["publish"] = round(time.perf_counter() - t, 1)
        log(f"publish {cfg.embed.embedding_set}: {seconds['publish']} s")
    return seconds


def ensure_ctr(cfg: Config, as_of: dt.date) -> dict:
    from llmfeat.ctr.train import models_dir, run_dir_of, run_train

    pointer = models_dir(cfg) / "current.json"
    if pointer.is_file():
        summary = json.loads((run_dir_of(pointer) / "summary.json").read_text())
        if summary["as_of"] == as_of.isoformat():
            return summary
    t = time.perf_counter()
    summary = run_train(cfg, as_of, log=lambda m: None).to_dict()
    log(f"train {cfg.embed.embedding_set}: {round(time.perf_counter() - t, 1)} s, report {summary['report']}")
    return summary


def ranking_metrics(ranked: list[str], held_out: set[str], k: int = K) -> tuple[float, float]:
    """recall@k = hits / |held out|; nDCG@k with binary gains."""
    hits = [1.0 if i in held_out else 0.0 for i in ranked[:k]]
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(held_out))))
    return sum(hits) / len(held_out), dcg / idcg


def retrieval_eval(cfg: Config, as_of: dt.date) -> dict:
    """recall@K / nDCG@K on the temporal test split (the CTR job's T1 / T2), for text and history queries."""
    import pyarrow as pa

    from llmfeat.embedding.finetune import split_interactions
    from llmfeat.retrieval.index import LoadedIndex, build_index, choose_factory, read_catalogue
    from llmfeat.retrieval.retriever import ParquetUserVectors, Retriever

    data_dir, emb_set = cfg.paths.data_dir, cfg.embed.embedding_set
    inter = pd.read_parquet(tables.snapshot_dir(tables.canonical_dir(data_dir, "interactions"), as_of))
    inter["event_ts"] = pd.to_datetime(inter["event_ts"], utc=True)
    split = split_interactions(cfg, inter)
    t1, t2 = pd.Timestamp(split.boundaries["t1"]), pd.Timestamp(split.boundaries["t2"])
    before = inter[inter["event_ts"] < t2]
    test = split.test[split.test["label"] == 1]
    held = test.groupby("user_id")["item_id"].apply(set)
    cold_items = set(test["item_id"]) - set(split.train["item_id"])
    seen = before[["user_id", "item_id"]]

    cat = read_catalogue(data_dir, emb_set)
    built = build_index(
        cat.vectors, choose_factory(len(cat.item_ids), cat.vectors.shape[1], cfg.index), cfg.index
    )
    ids = pa.table({"faiss_id": np.arange(len(cat.item_ids)), "item_id": cat.item_ids.tolist(),
                    "title": cat.titles, "labels": pa.array(cat.labels, pa.list_(pa.string()))})  # fmt: skip
    manifest = {"model_id": cat.model_id, "count": len(cat.item_ids), "as_of": cat.as_of.isoformat(),
                "dim": int(cat.vectors.shape[1]), "index": {"factory": built.factory, "exact": True}}  # fmt: skip
    loaded = LoadedIndex("eval", Path("."), manifest, built.index, ids, cat.vectors)
    out = {"model_id": cat.model_id, "t1": str(t1), "t2": str(t2), "cold_items": len(cold_items)}
    for kind in ("text", "history"):
        users = ParquetUserVectors(data_dir, emb_set, kind, at=t2)
        r = Retriever(loaded, users, seen)
        found = [u for u in held.index if users.get([u])[1][0]]
        all_scores, cold_scores, cold_hits, cold_total = [], [], 0, 0
        for u in found:
            top = r.for_user(u, K).ids
            all_scores.append(ranking_metrics(top, held[u]))
            cold = held[u] & cold_items
            if cold:
                cold_scores.append(ranking_metrics(top, cold))
                cold_hits += len(set(top) & cold)
                cold_total += len(cold)
        a, c = np.array(all_scores), np.array(cold_scores) if cold_scores else np.zeros((1, 2))
        out[kind] = {
            "users": len(found), "heldout_clicks": int(sum(len(held[u]) for u in found)),
            "recall": float(a[:, 0].mean()), "ndcg": float(a[:, 1].mean()),
            "cold_users": len(cold_scores), "cold_clicks": cold_total,
            "cold_recall": float(c[:, 0].mean()), "cold_ndcg": float(c[:, 1].mean()),
        }  # fmt: skip
    # popularity (clicks before T2) on the text users, the usual yardstick
    popular = before[before["label"] == 1]["item_id"].value_counts().index.tolist()
    by_user = seen.groupby("user_id")["item_id"].apply(set).to_dict()
    users = [u for u in held.index if u in set(ParquetUserVectors(data_dir, emb_set, "text", at=t2).ids)]
    pop = np.array(
        [ranking_metrics([i for i in popular if i not in by_user.get(u, set())][:K], held[u]) for u in users]
    )
    out["popularity"] = {
        "users": len(users),
        "recall": float(pop[:, 0].mean()),
        "ndcg": float(pop[:, 1].mean()),
    }
    return out


def machine() -> str:
    model = cpu_model()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} vCPU, {gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def ctr_rows(frozen: dict, tuned: dict) -> list[str]:
    key = lambda r: (r["model"], r["slice"])  # noqa: E731
    f = {key(r): r for r in frozen["results"] if r["protocol"] == "temporal"}
    t = {key(r): r for r in tuned["results"] if r["protocol"] == "temporal"}
    lines = ["| model | slice | rows | AUC frozen | AUC fine-tuned | GAUC frozen | GAUC fine-tuned | logloss frozen | logloss fine-tuned |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    for model in ("popularity", "lr_lm", "deep_lm"):
        for sl in SLICES:
            a, b = f.get((model, sl)), t.get((model, sl))
            if a is None:
                continue
            b = b or {}
            lines.append(f"| {model} | {sl} | {a['rows']} | {fmt(a['auc'])} | {fmt(b.get('auc'))} | {fmt(a['gauc'])} | "
                         f"{fmt(b.get('gauc'))} | {fmt(a['logloss'])} | {fmt(b.get('logloss'))} |")  # fmt: skip
    return lines


def retrieval_rows(frozen: dict, tuned: dict) -> list[str]:
    lines = [f"| query vector | users | recall@{K} frozen | recall@{K} fine-tuned | nDCG@{K} frozen | nDCG@{K} fine-tuned | "
             f"cold-item recall@{K} frozen | cold-item recall@{K} fine-tuned |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for kind, label in (("text", "user text"), ("history", "pooled history")):
        a, b = frozen[kind], tuned[kind]
        lines.append(f"| {label} | {a['users']} | {a['recall']:.4f} | {b['recall']:.4f} | {a['ndcg']:.4f} | {b['ndcg']:.4f} | "
                     f"{a['cold_recall']:.4f} | {b['cold_recall']:.4f} |")  # fmt: skip
    p = frozen["popularity"]
    lines.append(
        f"| popularity (no vectors) | {p['users']} | {p['recall']:.4f} | = | {p['ndcg']:.4f} | = | - | - |"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("var/bench/finetune"))
    ap.add_argument(
        "--movielens", type=Path, default=None, help="MovieLens-100k dir (default: the demo download)"
    )
    ap.add_argument("--as-of", default="1998-04-23")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--method", default="lora")
    ap.add_argument("--set-name", default="finetuned", help="Fine-tuned model dir name = its embedding set")
    ap.add_argument("--set", action="append", default=[], help="Extra config override (section.key=value)")
    ap.add_argument("--frozen-only", action="store_true", help="Only the frozen set's features and CTR run")
    ap.add_argument("--skip-ctr", action="store_true", help="Retrieval only (no Feast publish, no CTR runs)")
    ap.add_argument("--table", type=Path, default=None, help="Write the Markdown tables here too")
    ap.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update (section 'Fine-tuning')")
    args = ap.parse_args()

    from llmfeat.core.spark import build_spark
    from llmfeat.data.demo_data import ensure_movielens_100k
    from llmfeat.data.ingest import run_ingest
    from llmfeat.embedding.finetune import output_dir, run_finetune

    started = time.perf_counter()
    as_of = dt.date.fromisoformat(args.as_of)
    ml = args.movielens or ensure_movielens_100k(Path("var/cache"))
    overrides = [f"paths.data_dir={args.data_dir}", f"paths.reports_dir={args.data_dir / 'reports'}",
                 f"ingest.source_path={ml}", "embed.backfill_every_days=7", "train.protocols=[temporal]",
                 "train.models=[popularity, lr_lm, deep_lm]", f"finetune.max_steps={args.steps}",
                 f"finetune.method={args.method}", f"finetune.name={args.set_name}", *args.set]  # fmt: skip
    cfg = load_config(None, overrides)
    if not tables.canonical_dir(args.data_dir, "interactions").is_dir():
        run_ingest(cfg, as_of)
    seconds: dict[str, dict] = {}
    if args.frozen_only:
        spark = build_spark(cfg.spark.__class__(master="local[2]", shuffle_partitions=4, driver_memory="6g"))
        try:
            ensure_features(spark, with_set(cfg, None, "default"), as_of, stats=True)
            ensure_ctr(with_set(cfg, None, "default"), as_of)
        finally:
            spark.stop()
        return
    model_dir = output_dir(cfg)
    if not (model_dir / "llmfeat_model.json").is_file():
        log(f"finetune {args.method}, {args.steps} steps ...")
        run_finetune(cfg, as_of, log=log)
    card = json.loads((model_dir / "llmfeat_model.json").read_text())
    frozen_cfg = with_set(cfg, None, "default")
    tuned_cfg = with_set(cfg, model_dir.resolve(), model_dir.name)
    spark = build_spark(cfg.spark.__class__(master="local[2]", shuffle_partitions=4, driver_memory="6g"))
    try:
        seconds["frozen"] = ensure_features(spark, frozen_cfg, as_of, stats=True, publish=not args.skip_ctr)
        seconds["fine-tuned"] = ensure_features(
            spark, tuned_cfg, as_of, stats=False, publish=not args.skip_ctr
        )
        # retrieval needs only the embedding tables: measured (and saved) before the longer CTR runs
        ret = {
            name: retrieval_eval(c, as_of) for name, c in (("frozen", frozen_cfg), ("fine-tuned", tuned_cfg))
        }
        (args.data_dir / "finetune_retrieval.json").write_text(json.dumps(ret, indent=2, default=str))
        log(f"retrieval: {json.dumps(ret, default=str)}")
        ctr = None
        if not args.skip_ctr:
            ctr = {"frozen": ensure_ctr(frozen_cfg, as_of), "fine-tuned": ensure_ctr(tuned_cfg, as_of)}
    finally:
        spark.stop()
    (args.data_dir / "finetune_eval.json").write_text(json.dumps({"card": card, "ctr": ctr, "retrieval": ret,
                                                                  "seconds": seconds}, indent=2, default=str))  # fmt: skip

    hist = ", ".join(f"{h['step']}: {h['val_loss']:.4f}" for h in card["history"])
    cmd = " ".join(["PYTHONPATH=src python bench/finetune_eval.py", *sys.argv[1:]])
    lines = [
        "## Fine-tuning",
        "",
        f"Command: `{cmd}` (MovieLens-100k, snapshot {args.as_of}). Machine: {machine()}; shared with other jobs "
        "while it ran, so wall times are pessimistic.",
        "",
        f"**Training** (`llmfeat finetune`, {card['method']}, in-batch softmax at temperature {card['temperature']}, "
        f"batch {card['batch_size']}, lr {card['lr']:g}, max {card['max_tokens']} tokens, seed {card['seed']}): "
        f"{card['data']['train_pairs']:,} positive (user text as of the click, item text) pairs before T1 = "
        f"{card['data']['t1']}, validation loss on {card['data']['validation_pairs']:,} pairs in [T1, T2 = "
        f"{card['data']['t2']}) (a fixed sample of {cfg.finetune.eval_pairs} of them). "
        f"{card['steps']} steps ({card['steps'] * card['batch_size']:,} pairs, "
        f"{card['steps'] * card['batch_size'] / max(card['data']['train_pairs'], 1):.2f} epochs), best step "
        f"{card['best_step']}, {card['seconds']['train']:.0f} s. Validation loss {card['val_loss_before']:.4f} -> "
        f"{card['val_loss_after']:.4f} (log {len(card['history'])}: {hist}; chance level ln(batch) = "
        f"{math.log(card['batch_size']):.4f}).",
        "",
        f"Models: frozen `{card['base_model_id']}` (set `default`) vs fine-tuned `{card['model_id']}` (set "
        f"`{model_dir.name}`, Feast project `llmfeat_{model_dir.name}`), both embedded with weekly user snapshots.",
        "",
        "### CTR models, temporal protocol, test split",
        "",
        *(ctr_rows(ctr["frozen"], ctr["fine-tuned"]) if ctr else ["(not run: --skip-ctr)"]),
        "",
        f"### Retrieval, temporal test split (users with clicks >= T2, query vector as of T2, exact top-{K}, items "
        "seen before T2 excluded)",
        "",
        *retrieval_rows(ret["frozen"], ret["fine-tuned"]),
        "",
        f"Cold items: {ret['frozen']['cold_items']} items clicked in the test split without a training interaction; "
        f"cold-item recall is over the held-out clicks on them ({ret['frozen']['text']['cold_clicks']} clicks, "
        f"{ret['frozen']['text']['cold_users']} users).",
        "",
        f"Total bench time {time.perf_counter() - started:.0f} s; stage seconds {json.dumps(seconds)}.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.table:
        args.table.write_text(section)
    if args.out:
        write_section(args.out, "Fine-tuning", section)


if __name__ == "__main__":
    main()
