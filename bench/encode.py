"""Encoder benchmark: the textbook recipe vs sentence-transformers vs llmfeat's encoder vs the Spark job.

In one process, on the same texts:
  (a) textbook: pad every text to 128 tokens, unsorted, fp32, fixed batches of 32 (the seed article's recipe)
  (b) sentence-transformers ``encode()`` (it sorts by length too), fp32
  (c) llmfeat ``TextEncoder`` in-process: fp32, and bf16 (bf16 weights)
  (d) the Spark embedding job end to end on ``local[*]`` (ingest -> embed, items only), at ``--precision``
      (auto: what a nightly run would use), compared with (c) at the same precision
Reports texts/s, real (non-pad) tokens/s, ratios to (a) and (c fp32), and the minimum cosine of each path
against an fp32 reference (llmfeat fp32 with the full token limit).

Then the incremental case: the Spark job again after changing 1% of the item texts: how many texts it encodes
and how long its encode phase takes relative to the full run's.

    .venv/bin/python bench/encode.py --synthetic 100000 --textbook-limit 20000 --out var/bench/encode.json

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

from benchmarks_md import cpu_model, write_section  # noqa: E402

from llmfeat.embedding.encoder import EncoderSpec, TextEncoder, default_model_dir  # noqa: E402

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


def ours(
    texts: list[str], model_dir: str, precision: str, threads: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Vectors, real tokens per text, seconds."""
    enc = TextEncoder(EncoderSpec(model_dir, precision=precision, threads=threads))
    enc.encode(texts[:16])  # warm-up, as every in-process path above gets by its first batch
    start = time.perf_counter()
    out = enc.encode(texts)
    return out.vectors, out.n_tokens, time.perf_counter() - start


def spark_job(texts: list[str], work: Path, master: str, changed_fraction: float, precision: str,
              extra_sets: list[str] = (), env: dict | None = None, rerun: bool = True) -> dict:  # fmt: skip
    """Items = texts through `llmfeat ingest` + `llmfeat embed` in a fresh process; then change a fraction of
    the texts and run again (unless not ``rerun``). Returns timings, counts and the vectors of the first run
    (item order). ``extra_sets``: more ``--set`` overrides (bench/encode_gpu.py: GPU resources)."""
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
              "--set", f"embed.precision={precision}", "--set", "ingest.max_text_chars=100000"]  # fmt: skip
    for item in extra_sets:
        common += ["--set", item]

    def run(day: str) -> dict:
        subprocess.run([exe, "ingest", "--source", "mapped", "--path", str(data / "mapping.yaml"), "--as-of", day, *common],
                       check=True, capture_output=True, env=env)  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(
            [exe, "embed", "--as-of", day, *common], capture_output=True, text=True, env=env
        )
        if proc.returncode:
            raise RuntimeError(
                f"llmfeat embed failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
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
    if not rerun:
        return {"first": first, "vectors": vectors}
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


def compare(
    label: str, texts: list[str], model_dir: str, threads: int, textbook_limit: int
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every in-process path on ``texts``; the textbook recipe (the slowest, and only a baseline) on the first
    ``textbook_limit``. Returns the rows and llmfeat's vectors by precision."""
    print(f"[{label}] {len(texts)} texts", flush=True)
    ref, lengths, ref_s = ours(texts, model_dir, "fp32", threads)
    ref_tokens = int(lengths.sum())
    rows = [row("(c) llmfeat fp32", len(texts), ref_tokens, ref_s, ref, ref)]
    print("   ", rows[-1], flush=True)
    bf16, _, secs = ours(texts, model_dir, "bf16", threads)
    rows.append(row("(c) llmfeat bf16", len(texts), ref_tokens, secs, bf16, ref))
    print("   ", rows[-1], flush=True)
    vecs, secs = sentence_transformers(texts, model_dir, threads)
    rows.append(row("(b) sentence-transformers fp32", len(texts), ref_tokens, secs, vecs, ref))
    print("   ", rows[-1], flush=True)
    sub = texts[:textbook_limit]
    vecs, _, secs = textbook(sub, model_dir, threads)
    suffix = f" (first {len(sub)})" if len(sub) < len(texts) else ""
    # Real tokens as llmfeat counts them: tokens/s stays comparable (the recipe itself truncates at 128).
    rows.append(row("(a) textbook pad-128 fp32" + suffix, len(sub), int(lengths[: len(sub)].sum()), secs,
                    vecs, ref[: len(sub)]))  # fmt: skip
    print("   ", rows[-1], flush=True)
    for r in rows:
        r["set"] = label
    return rows, {"fp32": ref, "bf16": bf16}


def render(results: dict) -> str:
    """The "Encoder and the Spark embedding job" section of BENCHMARKS.md from a results JSON."""
    m, full, inc = results["machine"], results["full_corpus"], results["incremental"]
    lines = ["## Encoder and the Spark embedding job", "",
             f"Run {results['date']} from the repository root, quiet machine:", "", "```", results["command"], "```", "",
             f"Machine: {m['cpu']}, {m['cores']} cores (native bf16: {m.get('native_bf16', 'unknown')}), "
             f"Python {m['python']}, torch {m.get('torch', '?')}; model all-MiniLM-L6-v2. Reference: llmfeat fp32 with "
             "the model's full 256-token limit. bf16 = bf16 weights, fp32 pooling.", "",
             "| texts | path | texts | real tokens | s | texts/s | real tokens/s | x textbook | x sentence-transformers | x llmfeat fp32 | min cosine vs fp32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    by_set: dict[str, list[dict]] = {}
    for r in results["paths"]:
        by_set.setdefault(r["set"], []).append(r)
    checks = {}
    for label, rows in by_set.items():
        rate = {r["path"].split(" (first")[0]: r["tokens_per_s"] for r in rows}
        base_a, base_b = rate["(a) textbook pad-128 fp32"], rate["(b) sentence-transformers fp32"]
        base_c = rate["(c) llmfeat fp32"]
        for r in sorted(rows, key=lambda r: r["path"]):
            t = r["tokens_per_s"]
            lines.append(f"| {label} | {r['path']} | {r['texts']:,} | {r['real_tokens']:,} | {r['seconds']:.1f} | "
                         f"{r['texts_per_s']:,.1f} | {t:,.0f} | {t / base_a:.2f} | {t / base_b:.2f} | {t / base_c:.2f} | "
                         f"{r['min_cosine_vs_fp32']:.4f} |")  # fmt: skip
        bf16 = next(r for r in rows if r["path"] == "(c) llmfeat bf16")
        checks[label] = (rate["(c) llmfeat bf16"] / base_b, bf16["min_cosine_vs_fp32"])
    synthetic = next(k for k in by_set if k.startswith("synthetic"))
    ratio, cosine = checks[synthetic]
    ok = lambda good: "met" if good else "MISSED"  # noqa: E731
    lines += [
        "",
        "Tokens/s ratios use real (non-pad) tokens; the textbook recipe runs on the first "
        f"{next(r['texts'] for r in by_set[synthetic] if r['path'].startswith('(a)')):,} synthetic texts only "
        "(it is the slowest path and only a baseline) and truncates at 128 tokens, hence its low cosine on long texts.",
        "",
        f"**(d) the Spark job end to end** (`llmfeat ingest` + `llmfeat embed`, {', '.join(full['spark_runtime'])}, local[*]) "
        f"on all {full['texts']:,} synthetic texts ({full['real_tokens']:,} real tokens): encode phase "
        f"{full['spark_encode_phase_s']:.0f} s = {full['spark_texts_per_s']:.1f} texts/s, wall {full['spark_wall_s']:.0f} s "
        f"(JVM start, ingest read and writes included); the same texts in-process at the same precision "
        f"({full['precision']}): {full['in_process_s']:.0f} s = {full['in_process_texts_per_s']:.1f} texts/s. "
        f"**Spark / in-process = {full['spark_vs_in_process']:.2f}** (target >= 0.8); min cosine Spark vs in-process "
        f"{full['spark_min_cosine_vs_in_process']:.6f}, vs fp32 {full['spark_min_cosine_vs_fp32']:.6f}.",
        "",
        f"**Incremental**: after changing {inc['changed_texts']:,} of the {full['texts']:,} item texts, the re-run "
        f"encoded **{inc['encoded_on_rerun']:,}** and wrote {inc['written_on_rerun']:,}; its encode phase took "
        f"{inc['encode_phase_rerun_s']:.1f} s vs {inc['encode_phase_full_s']:.0f} s for the full run = "
        f"**{100 * inc['encode_phase_ratio']:.1f}%** (target <= 15%).",
        "",
        "**Against the issue's targets:**",
        f"- (d) Spark job >= 0.8x the in-process encoder at the same precision: **{full['spark_vs_in_process']:.2f}x, "
        f"{ok(full['spark_vs_in_process'] >= 0.8)}**.",
        f"- (c, bf16) >= 2.5x (b) with min cosine >= 0.999, on the {synthetic} corpus: **{ratio:.2f}x at min cosine "
        f"{cosine:.5f}, {ok(ratio >= 2.5 and cosine >= 0.999)}** (MovieLens titles: "
        f"{checks['movielens-items'][0]:.2f}x at {checks['movielens-items'][1]:.5f}).",
        f"- A re-run after changing 1% of item texts encodes exactly that 1% "
        f"({inc['encoded_on_rerun']:,} of {full['texts']:,}: {ok(inc['encoded_on_rerun'] == inc['changed_texts'])}) "
        f"and its encode phase takes <= 15% of the full run's ({100 * inc['encode_phase_ratio']:.1f}%: "
        f"{ok(inc['encode_phase_ratio'] <= 0.15)}).",
        "",
        "Other machines: on an AVX2-only AMD EPYC (no AVX-512 BF16 / AMX; bf16 emulated) an earlier run of this "
        "bench (20k texts, bf16 as fp32 weights under autocast) measured bf16 at 1.39x sentence-transformers, so "
        "`embed.precision=auto` keeps fp32 on such CPUs. A GPU run is recorded here when a GPU machine is lent.",
    ]
    return "\n".join(lines) + "\n\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--synthetic", type=int, default=100_000, help="synthetic corpus size (every path but (a))"
    )
    ap.add_argument("--textbook-limit", type=int, default=20_000,
                    help="texts of each set for (a), the textbook recipe (slowest; a baseline only)")  # fmt: skip
    ap.add_argument("--precision", default="auto", help="the Spark job's precision (d): auto, fp32 or bf16")
    ap.add_argument("--spark-master", default="local[*]")
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--movielens", type=Path, default=REPO / "var" / "cache" / "ml-100k")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "encode.json")
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md", help="section written here")
    ap.add_argument(
        "--render", type=Path, help="only rewrite the BENCHMARKS.md section from this results JSON"
    )
    args = ap.parse_args()
    if args.render:
        write_section(
            args.benchmarks_md,
            "Encoder and the Spark embedding job",
            render(json.loads(args.render.read_text())),
        )
        return
    threads = len(os.sched_getaffinity(0))
    model_dir = str(default_model_dir())

    from llmfeat.data.demo_data import ensure_movielens_100k

    ml = ensure_movielens_100k(args.movielens.parent)
    items = pd.read_csv(ml / "ml-100k.item", sep="\t")
    ml_texts = [f"{t} ({y}). {g.replace(' ', ', ')}" for t, y, g in
                zip(items["movie_title:token_seq"], items["release_year:token"], items["class:token_seq"].fillna(""), strict=True)]  # fmt: skip
    corpus = synthetic_corpus(args.synthetic, seed=0, titles=list(items["movie_title:token_seq"].astype(str)))

    import torch

    from llmfeat.embedding.encoder import cpu_has_native_bf16

    machine = {"cpu": cpu_model(), "cores": threads, "python": platform.python_version(), "torch": torch.__version__,
               "native_bf16": "yes (AVX-512 BF16 / AMX)" if cpu_has_native_bf16() else "no"}  # fmt: skip
    results = {"machine": machine,
               "command": " ".join([os.path.relpath(sys.executable, REPO), *sys.argv]), "date": dt.date.today().isoformat(), "paths": []}  # fmt: skip
    rows, _ = compare("movielens-items", ml_texts, model_dir, threads, args.textbook_limit)
    results["paths"] += rows
    rows, in_process = compare(f"synthetic-{len(corpus)}", corpus, model_dir, threads, args.textbook_limit)
    results["paths"] += rows

    print(f"[spark] {len(corpus)} synthetic texts through ingest + embed on {args.spark_master}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="llmfeat-bench-"))
    try:
        spark = spark_job(corpus, work, args.spark_master, args.changed, args.precision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    precision = spark["first"]["runtime"][0].split("/")[-1]  # e.g. "cpu/bf16"
    same = next(r for r in rows if r["path"] == f"(c) llmfeat {precision}")
    spark_rate = len(corpus) / spark["first"]["encode_s"]
    results["full_corpus"] = {
        "texts": len(corpus), "real_tokens": same["real_tokens"], "precision": precision,
        "in_process_s": same["seconds"], "in_process_texts_per_s": same["texts_per_s"],
        "spark_encode_phase_s": spark["first"]["encode_s"], "spark_texts_per_s": round(spark_rate, 1),
        "spark_wall_s": round(spark["first"]["wall_s"], 1), "spark_vs_in_process": round(spark_rate / same["texts_per_s"], 3),
        "spark_min_cosine_vs_in_process": float(np.min(np.sum(spark["vectors"] * in_process[precision], axis=1))),
        "spark_min_cosine_vs_fp32": float(np.min(np.sum(spark["vectors"] * in_process["fp32"], axis=1))),
        "spark_runtime": spark["first"]["runtime"],
    }  # fmt: skip
    results["incremental"] = {
        "changed_texts": spark["changed"], "encoded_on_rerun": spark["second"]["counts"]["encoded"],
        "written_on_rerun": spark["second"]["counts"]["written"], "encode_phase_full_s": spark["first"]["encode_s"],
        "encode_phase_rerun_s": spark["second"]["encode_s"],
        "encode_phase_ratio": round(spark["second"]["encode_s"] / spark["first"]["encode_s"], 4),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("full_corpus", "incremental")}, indent=2))
    write_section(args.benchmarks_md, "Encoder and the Spark embedding job", render(results))


if __name__ == "__main__":
    main()
