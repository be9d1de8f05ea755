"""How the in-process encoder's batching and bf16 mode were chosen (the defaults in ``EncoderSpec``).

On one synthetic sample (the length mix of bench/encode.py), in one process: real tokens/s for each token
budget (padded tokens per forward pass) x precision, bf16 both as bf16 weights (what llmfeat does) and as
fp32 weights under CPU autocast (the textbook bf16), and the minimum cosine against fp32. Writes the
"Encoder batching and bf16 mode" section of BENCHMARKS.md.

    .venv/bin/python bench/encode_batching.py --texts 1500 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks_md import cpu_model, write_section  # noqa: E402
from encode import synthetic_corpus  # noqa: E402

from llmfeat.embedding.encoder import EncoderSpec, TextEncoder, cpu_has_native_bf16, default_model_dir  # noqa: E402

BUDGETS = (1024, 2048, 4096, 8192, 16384)
MODES = ("fp32", "bf16 weights", "bf16 autocast")


def run(texts: list[str], mode: str, budget: int, threads: int) -> tuple[float, np.ndarray, int]:
    import torch

    precision = "fp32" if mode == "fp32" else "bf16"
    enc = TextEncoder(EncoderSpec(str(default_model_dir()), precision=precision, threads=threads,
                                  token_budget=budget, max_batch_rows=512))  # fmt: skip
    autocast = contextlib.nullcontext()
    if mode == "bf16 autocast":  # the same encoder with fp32 weights, bf16 matmuls by autocast
        enc.model = enc.model.float()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    with autocast:
        enc.encode(texts[:16])
        start = time.perf_counter()
        out = enc.encode(texts)
        seconds = time.perf_counter() - start
    return seconds, out.vectors, int(out.n_tokens.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    texts = synthetic_corpus(args.texts, seed=0, titles=["a b c"])
    started = dt.datetime.now(dt.UTC)
    # Modes interleaved within each budget and the whole grid run `--rounds` times, best rate kept: this VM's
    # speed drifts by 10-20% over minutes, which would otherwise favour whichever cell ran in a fast spell.
    best: dict[tuple[str, int], float] = {}
    cosine: dict[str, float] = {}
    ref = None
    for _ in range(args.rounds):
        for budget in BUDGETS:
            for mode in MODES:
                seconds, vecs, tokens = run(texts, mode, budget, threads)
                ref = vecs if ref is None else ref
                best[mode, budget] = max(best.get((mode, budget), 0.0), tokens / seconds)
                cosine[mode] = min(cosine.get(mode, 1.0), float(np.min(np.sum(vecs * ref, axis=1))))
                print(mode, budget, round(tokens / seconds), flush=True)
    rows = [(mode, budget, best[mode, budget], cosine[mode]) for mode in MODES for budget in BUDGETS]
    best_fp32 = max(r[2] for r in rows if r[0] == "fp32")
    lines = ["## Encoder batching and bf16 mode", "",
             f"Run {started:%Y-%m-%d %H:%M} UTC, quiet machine: `{os.path.relpath(sys.executable, REPO)} bench/encode_batching.py --texts {args.texts} --rounds {args.rounds}`", "",
             f"Machine: {cpu_model()}, {threads} cores, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}. "
             f"{args.texts:,} synthetic texts (bench/encode.py's length mix), batches sorted by length, at most 512 rows.", "",
             "| mode | token budget | real tokens/s (best of rounds) | x best fp32 | min cosine vs fp32 (any budget) |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for mode, budget, rate, cosine in rows:
        lines.append(f"| {mode} | {budget:,} | {rate:,.0f} | {rate / best_fp32:.2f} | {cosine:.5f} |")
    lines += ["", "What the defaults rest on: 4,096 padded tokens per forward pass (128 rows at most) is at or near the best for both precisions, and 1.2-1.3x faster than 16,384, which the in-process encoder used before. The two bf16 modes are within this VM's noise of each other (an earlier, unrepeated sweep suggested 1.4x for bf16 weights; interleaved and repeated, it is not there); llmfeat keeps bf16 weights because they halve the model's memory and need no autocast context.", "", ""]  # fmt: skip
    section = "\n".join(lines)
    print(section)
    write_section(args.benchmarks_md, "Encoder batching and bf16 mode", section)


if __name__ == "__main__":
    main()
