"""Encoder benchmark: the textbook recipe vs sentence-transformers vs llmfeat's encoder vs the Spark job.

In one process, on the same texts:
  (a) textbook: pad every text to 128 tokens, unsorted, fp32, fixed batches of 32 (the seed article's recipe)
  (b) sentence-transformers ``encode()`` (it sorts by length too), fp32
  (c) llmfeat ``TextEncoder`` in-process: fp32, and bf16 (autocast on CPU)
  (d) the Spark embedding job end to end on ``local[*]`` (ingest -> embed, items only), fp32
Reports texts/s, real (non-pad) tokens/s, ratios to (a) and (c fp32), and the minimum cosine of each path
against an fp32 reference (llmfeat fp32 with the full token limit).

Then the incremental case: the Spark job again after changing 1% of the item texts: how many texts it encodes
and how long its encode phase takes relative to the full run's.

    .venv/bin/python bench/encode.py --synthetic 100000 --sample 4000 --out var/bench/encode.json

Texts: MovieLens-100k item texts (title, genres) and a synthetic corpus with a log-normal length mix clipped
to 10..300 tokens, built from MovieLens titles and an English word list (deterministic for a seed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks_md import cpu_model  # noqa: E402

from llmfeat.encoder import EncoderSpec, TextEncoder, default_model_dir  # noqa: E402

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more out up into do any "
    "your what some can only other new time could them two may then first also after over did many before "
    "film story life love family war city world night man woman home town friends school music death game "
    "journey secret return summer winter dark light king queen war peace river mountain road house heart"
).split()


def synthetic_corpus(n: int, seed: int, titles: list[str]) -> list[str]:
    """Texts of ~10..300 tokens (log-normal, median ~60 words), mixing titles and common words."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=4.0, sigma=0.75, size=n), 8, 240).astype(int)
    vocab = WORDS + [w for t in titles for w in t.split()]
    vocab = np.array(vocab)
    out = []
    for length in lengths:
        words = rng.choice(vocab, size=length)
        out.append(" ".join(words) + ".")
    return out


def textbook(texts: list[str], model_dir: str, threads: int) -> tuple[np.ndarray, int, float]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    out, real = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            enc = tok(
                texts[i : i + 32], padding="max_length", truncation=True, max_length=128, return_tensors="pt"
            )
            real += int(enc["attention_mask"].sum())
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1)
            out.append(torch.nn.functional.normalize(v, dim=1).numpy())
    return np.concatenate(out), real, time.perf_counter() - start


def sentence_transformers(texts: list[str], model_dir: str, threads: int) -> tuple[np.ndarray, float]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    start = time.perf_counter()
    vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    return vecs, time.perf_counter() - start


def ours(texts: list[str], model_dir: str, precision: str, threads: int) -> tuple[np.ndarray, int, float]:
    enc = TextEncoder(EncoderSpec(model_dir, precision=precision, threads=threads))
    enc.encode(texts[:16])  # warm-up, as every in-process path above gets by its first batch
    start = time.perf_counter()
    out = enc.encode(texts)
    return out.vectors, int(out.n_tokens.sum()), time.perf_counter() - start


def spark_job(texts: list[str], work: Path, master: str, changed_fraction: float) -> dict:
    """Items = texts through `llmfeat ingest` + `llmfeat embed` in a fresh process; then change a fraction of
    the texts and run again. Returns timings, counts and the vectors of the first run (item order)."""
    data = work / "src"
    data.mkdir(parents=True, exist_ok=True)
    ids = [f"i{i:07d}" for i in range(len(texts))]
    pd.DataFrame({"sku": ids, "name": texts, "modified": "2024-01-01T00:00:00Z"}).to_csv(
        data / "items.csv", index=False
    )
    pd.DataFrame({"uid": ["u0"], "signup": ["2024-01-01T00:00:00Z"]}).to_csv(data / "users.csv", index=False)
    pd.DataFrame({"uid": ["u0"], "sku": [ids[0]], "ts": ["2024-01-01T12:00:00Z"], "clicked": [1]}).to_csv(
        data / "events.csv", index=False
    )
    (data / "mapping.yaml").write_text(
        "items: {path: items.csv, id: sku, columns: {title: name}, updated_at: modified}\n"
        "users: {path: users.csv, id: uid, columns: {}, updated_at: signup}\n"
        "interactions: {path: events.csv, user_id: uid, item_id: sku, timestamp: ts, label: clicked}\n"
    )
    exe = str(Path(sys.executable).parent / "llmfeat")
    common = ["--data-dir", str(work / "data"), "--set", f"spark.master={master}", "--set", "embed.item_template={title}",
              "--set", "embed.precision=fp32", "--set", "ingest.max_text_chars=100000"]  # fmt: skip

    def run(day: str) -> dict:
        subprocess.run([exe, "ingest", "--source", "mapped", "--path", str(data / "mapping.yaml"), "--as-of", day, *common],
                       check=True, capture_output=True)  # fmt: skip
        start = time.perf_counter()
        subprocess.run([exe, "embed", "--as-of", day, *common], check=True, capture_output=True)
        wall = time.perf_counter() - start
        manifests = sorted((work / "data" / "embeddings" / "default" / "manifests").glob(f"{day}*.json"))
        m = json.loads(manifests[-1].read_text())
        return {
            "wall_s": wall,
            "encode_s": m["seconds"]["encode item texts"],
            "counts": m["counts"]["items"],
            "runtime": m["runtime"],
        }

    first = run("2024-01-02")
    table = (
        pd.read_parquet(work / "data" / "embeddings" / "default" / "item_text").set_index("item_id").loc[ids]
    )
    vectors = np.stack(table["embedding"].to_numpy())
    rng = np.random.default_rng(1)
    changed = rng.choice(len(texts), size=max(1, int(len(texts) * changed_fraction)), replace=False)
    frame = pd.read_csv(data / "items.csv")
    frame.loc[changed, "name"] = frame.loc[changed, "name"] + " (revised edition)"
    frame.loc[changed, "modified"] = "2024-01-02T06:00:00Z"
    frame.to_csv(data / "items.csv", index=False)
    second = run("2024-01-03")
    return {"first": first, "second": second, "changed": len(changed), "vectors": vectors}


def row(name: str, n: int, tokens: int, seconds: float, vecs: np.ndarray, ref: np.ndarray) -> dict:
    return {
        "path": name, "texts": n, "real_tokens": tokens, "seconds": round(seconds, 2),
        "texts_per_s": round(n / seconds, 1), "tokens_per_s": round(tokens / seconds, 0),
        "min_cosine_vs_fp32": float(np.min(np.sum(vecs * ref, axis=1))),
    }  # fmt: skip


def compare(label: str, texts: list[str], model_dir: str, threads: int, bf16_limit: int) -> list[dict]:
    print(f"[{label}] {len(texts)} texts", flush=True)
    ref, ref_tokens, ref_s = ours(texts, model_dir, "fp32", threads)
    rows = [row("(c) llmfeat fp32", len(texts), ref_tokens, ref_s, ref, ref)]
    vecs, _, secs = textbook(texts, model_dir, threads)
    rows.append(row("(a) textbook pad-128 fp32", len(texts), ref_tokens, secs, vecs, ref))
    vecs, secs = sentence_transformers(texts, model_dir, threads)
    rows.append(row("(b) sentence-transformers fp32", len(texts), ref_tokens, secs, vecs, ref))
    sub = texts[:bf16_limit]
    vecs, toks, secs = ours(sub, model_dir, "bf16", threads)
    rows.append(
        row(
            "(c) llmfeat bf16" + (f" (first {len(sub)})" if len(sub) < len(texts) else ""),
            len(sub),
            toks,
            secs,
            vecs,
            ref[: len(sub)],
        )
    )
    for r in rows:
        r["set"] = label
        print("   ", r, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--synthetic", type=int, default=100_000, help="synthetic corpus size (Spark job runs on all of it)"
    )
    ap.add_argument(
        "--sample", type=int, default=4000, help="synthetic texts compared across all in-process paths"
    )
    ap.add_argument(
        "--bf16-limit", type=int, default=1000, help="cap for the bf16 path (slow without native bf16)"
    )
    ap.add_argument("--spark-master", default="local[*]")
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--movielens", type=Path, default=REPO / "var" / "cache" / "ml-100k")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "encode.json")
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    model_dir = str(default_model_dir())

    from llmfeat.demo_data import ensure_movielens_100k

    ml = ensure_movielens_100k(args.movielens.parent)
    items = pd.read_csv(ml / "ml-100k.item", sep="\t")
    ml_texts = [f"{t} ({y}). {g.replace(' ', ', ')}" for t, y, g in
                zip(items["movie_title:token_seq"], items["release_year:token"], items["class:token_seq"].fillna(""), strict=True)]  # fmt: skip
    corpus = synthetic_corpus(args.synthetic, seed=0, titles=list(items["movie_title:token_seq"].astype(str)))

    results = {"machine": {"cpu": cpu_model(), "cores": threads, "python": platform.python_version()},
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": dt.date.today().isoformat(), "paths": []}  # fmt: skip
    results["paths"] += compare("movielens-items", ml_texts, model_dir, threads, args.bf16_limit)
    results["paths"] += compare(
        f"synthetic-sample-{args.sample}", corpus[: args.sample], model_dir, threads, args.bf16_limit
    )

    print(f"[spark] {len(corpus)} synthetic texts through ingest + embed on {args.spark_master}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="llmfeat-bench-"))
    try:
        spark = spark_job(corpus, work, args.spark_master, args.changed)
    finally:
        pass
    full_ref, full_tokens, full_s = ours(corpus, model_dir, "fp32", threads)
    spark_rate = len(corpus) / spark["first"]["encode_s"]
    results["full_corpus"] = {
        "texts": len(corpus), "real_tokens": full_tokens,
        "in_process_fp32_s": round(full_s, 1), "in_process_texts_per_s": round(len(corpus) / full_s, 1),
        "spark_encode_phase_s": spark["first"]["encode_s"], "spark_texts_per_s": round(spark_rate, 1),
        "spark_wall_s": round(spark["first"]["wall_s"], 1), "spark_vs_in_process": round(spark_rate / (len(corpus) / full_s), 3),
        "spark_min_cosine_vs_in_process": float(np.min(np.sum(spark["vectors"] * full_ref, axis=1))),
        "spark_runtime": spark["first"]["runtime"],
    }  # fmt: skip
    results["incremental"] = {
        "changed_texts": spark["changed"], "encoded_on_rerun": spark["second"]["counts"]["encoded"],
        "written_on_rerun": spark["second"]["counts"]["written"], "encode_phase_full_s": spark["first"]["encode_s"],
        "encode_phase_rerun_s": spark["second"]["encode_s"],
        "encode_phase_ratio": round(spark["second"]["encode_s"] / spark["first"]["encode_s"], 4),
    }  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("full_corpus", "incremental")}, indent=2))


if __name__ == "__main__":
    main()
