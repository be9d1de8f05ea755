"""The encoder on a GPU: texts/s and real tokens/s for fp32 and bf16 at token budgets 4k-64k, then the Spark
embedding job with GPU resources (a standalone master and worker on loopback whose worker offers the GPUs,
executors asking for one GPU each, one task per GPU). Writes the "Encoder on GPU" section of BENCHMARKS.md.
Run by bench/gpu.sh (which installs what it needs first):

    .venv/bin/python bench/encode_gpu.py [--texts 20000] [--spark-texts 20000]

``--dry-run``: the same steps on the CPU at toy sizes (the Spark job in local mode, no GPU resources), the
section marked as a dry run; what tests/test_gpu_script.py runs. Its numbers are not measurements.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks_md import cpu_model, write_section  # noqa: E402
from encode import spark_job, synthetic_corpus  # noqa: E402

from llmfeat.embedding.encoder import EncoderSpec, TextEncoder, default_model_dir  # noqa: E402

TITLE = "Encoder on GPU"
BUDGETS = (4096, 8192, 16384, 32768, 65536)


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none (CPU)"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def sweep(texts: list[str], device: str, precisions: list[str], budgets: list[int]) -> list[dict]:
    """One encoder per precision; each budget timed after a warm-up batch. Min cosine against fp32 at the
    smallest budget (the reference)."""
    rows, ref = [], None
    for precision in precisions:
        enc = TextEncoder(EncoderSpec(str(default_model_dir()), precision=precision, device=device,
                                      max_batch_rows=8192))  # fmt: skip
        for budget in budgets:
            enc.spec = enc.spec.__class__(**{**enc.spec.__dict__, "token_budget": budget})
            enc.encode(texts[:256])  # warm-up: CUDA kernels, allocator
            start = time.perf_counter()
            out = enc.encode(texts)  # returns numpy: every kernel has finished
            seconds = time.perf_counter() - start
            ref = out.vectors if ref is None else ref
            rows.append({
                "precision": precision, "token_budget": budget, "texts": len(texts), "seconds": round(seconds, 3),
                "real_tokens": int(out.n_tokens.sum()), "texts_per_s": len(texts) / seconds,
                "tokens_per_s": int(out.n_tokens.sum()) / seconds, "device": enc.device,
                "min_cosine_vs_fp32": float(np.min(np.sum(out.vectors * ref, axis=1))),
            })  # fmt: skip
            print(rows[-1], flush=True)
        del enc
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, procs: list[subprocess.Popen], timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a Spark daemon exited during start-up (see its log)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def gpu_cluster(work: Path, n_gpus: int, cores: int):
    """A standalone master and one worker offering ``n_gpus`` GPUs (found by bench/gpu_discovery.sh)."""
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(work / "logs"),
           "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src"),
           "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount={n_gpus} "
                                f"-Dspark.worker.resource.gpu.discoveryScript={REPO / 'bench' / 'gpu_discovery.sh'}"}  # fmt: skip
    port, ui = free_port(), free_port()
    cls = str(home / "bin" / "spark-class")
    logs = [(work / "master.log").open("w"), (work / "worker.log").open("w")]
    procs = [subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                               "--webui-port", str(ui)], env=env, stdout=logs[0], stderr=subprocess.STDOUT,
                              start_new_session=True)]  # fmt: skip
    wait_port(port, procs)
    procs.append(subprocess.Popen([cls, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                                   "--host", "127.0.0.1", "--cores", str(cores), "--memory", "32g",
                                   "--webui-port", str(free_port()), "--work-dir", str(work / "worker")],
                                  env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
    time.sleep(5)  # the worker registers within a few seconds; the app waits for it anyway
    return f"spark://127.0.0.1:{port}", env, procs


def stop(procs: list[subprocess.Popen]) -> None:
    import signal

    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def render(r: dict) -> str:
    dry = r["dry_run"]
    lines = [f"## {TITLE}", ""]
    if dry:
        lines += ["**DRY RUN on the CPU (`bench/gpu.sh --dry-run`): toy sizes, no GPU; these numbers are not "
                  "measurements, only proof that the script runs end to end.**", ""]  # fmt: skip
    lines += [f"Run {r['date']} ({r['seconds']:.0f} s for this part): `{r['command']}` (from `bench/gpu.sh`).", "",
              f"Machine: GPU {r['gpu']}; CPU {r['cpu']}, {r['cores']} cores; torch {r['torch']}. Model all-MiniLM-L6-v2; "
              f"{r['texts']:,} synthetic texts (bench/encode.py's length mix), batches sorted by length, token budget = "
              "padded tokens per forward pass (at most 8,192 rows).", "",
              "| precision | token budget | texts/s | real tokens/s | x fp32 at 4k | min cosine vs fp32 |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    base = next(x["tokens_per_s"] for x in r["sweep"] if x["precision"] == "fp32")
    for x in r["sweep"]:
        lines.append(f"| {x['precision']} | {x['token_budget']:,} | {x['texts_per_s']:,.0f} | {x['tokens_per_s']:,.0f} | "
                     f"{x['tokens_per_s'] / base:.2f} | {x['min_cosine_vs_fp32']:.5f} |")  # fmt: skip
    s = r.get("spark")
    if s:
        lines += ["", f"**The Spark job** (`llmfeat ingest` + `llmfeat embed`, {s['master_kind']}, runtime "
                  f"{', '.join(s['runtime'])}, token budget {s['token_budget']:,}) on {s['texts']:,} texts: encode phase "
                  f"{s['encode_s']:.1f} s = {s['texts_per_s']:,.0f} texts/s, wall {s['wall_s']:.0f} s (JVM and executor "
                  f"start included); in-process at the same settings {s['in_process_texts_per_s']:,.0f} texts/s: "
                  f"**Spark / in-process = {s['ratio']:.2f}**; min cosine Spark vs in-process {s['min_cosine']:.5f}."]  # fmt: skip
    else:
        lines += ["", f"The Spark job was not run: {r.get('spark_skipped', 'skipped')}."]
    return "\n".join(lines) + "\n\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, local-mode Spark")
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument("--spark-texts", type=int, default=20_000, help="0 skips the Spark job")
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "encode_gpu.json")
    args = ap.parse_args()
    import torch

    started = time.perf_counter()
    if args.dry_run:
        device, n, n_spark, budgets = "cpu", 64, min(args.spark_texts, 32), args.budgets[:2]
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/encode_gpu.py: no CUDA device (use --dry-run on a CPU machine)")
        device, n, n_spark, budgets = "cuda", args.texts, args.spark_texts, args.budgets
    texts = synthetic_corpus(n, seed=0, titles=["Toy Story", "GoldenEye", "Heat"])
    rows = sweep(texts, device, ["fp32", "bf16"], budgets)
    result = {"dry_run": args.dry_run, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join([os.path.relpath(sys.executable, REPO), *sys.argv]), "gpu": gpu_name(),
              "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
              "python": platform.python_version(), "texts": n, "sweep": rows}  # fmt: skip
    if n_spark and (shutil.which("java") or os.environ.get("JAVA_HOME")):
        best = max((x for x in rows if x["precision"] == "bf16"), key=lambda x: x["tokens_per_s"])
        corpus = texts[:n_spark] if n_spark <= len(texts) else synthetic_corpus(n_spark, 1, ["Toy Story"])
        sets = [
            f"embed.token_budget={best['token_budget']}",
            "embed.max_batch_rows=8192",
            "embed.udf_batch_rows=8192",
        ]
        procs: list[subprocess.Popen] = []
        work = Path(tempfile.mkdtemp(prefix="llmfeat-gpu-bench-"))
        try:
            if args.dry_run:
                master, env, kind = "local[1]", None, "local[1], no GPU resources (dry run)"
            else:
                n_gpus = torch.cuda.device_count()
                cores = len(os.sched_getaffinity(0))
                master, env, procs = gpu_cluster(work, n_gpus, cores)
                conf = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1",
                        "spark.executor.resource.gpu.discoveryScript": str(REPO / "bench" / "gpu_discovery.sh"),
                        "spark.executor.cores": str(max(1, cores // n_gpus)), "spark.executor.memory": "16g",
                        "spark.executorEnv.PYTHONPATH": str(REPO / "src")}  # fmt: skip
                sets += [f"spark.conf={json.dumps(conf)}", f"spark.task_cpus={max(1, cores // n_gpus)}"]
                kind = f"standalone master + worker, {n_gpus} GPU(s), one GPU per executor and per task"
            job = spark_job(corpus, work, master, 0.0, "bf16", extra_sets=sets, env=env, rerun=False)
        finally:
            stop(procs)
            shutil.rmtree(work, ignore_errors=True)
        enc = TextEncoder(EncoderSpec(str(default_model_dir()), precision="bf16", device=device,
                                      token_budget=best["token_budget"], max_batch_rows=8192))  # fmt: skip
        enc.encode(corpus[:256])
        t0 = time.perf_counter()
        ref = enc.encode(corpus).vectors
        in_process = len(corpus) / (time.perf_counter() - t0)
        rate = len(corpus) / job["first"]["encode_s"]
        result["spark"] = {"master_kind": kind, "runtime": job["first"]["runtime"], "texts": len(corpus),
                           "token_budget": best["token_budget"], "encode_s": job["first"]["encode_s"],
                           "wall_s": job["first"]["wall_s"], "texts_per_s": rate, "in_process_texts_per_s": in_process,
                           "ratio": rate / in_process,
                           "min_cosine": float(np.min(np.sum(job["vectors"] * ref, axis=1)))}  # fmt: skip
        if not args.dry_run and not any(r.startswith("cuda") for r in job["first"]["runtime"]):
            raise RuntimeError(f"the Spark job did not run on a GPU: runtime {job['first']['runtime']}")
    else:
        result["spark_skipped"] = "no Java (Spark needs Java 17+)" if n_spark else "--spark-texts 0"
    result["seconds"] = time.perf_counter() - started
    if not args.dry_run:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    section = render(result)
    print(section)
    write_section(args.benchmarks_md, TITLE, section)


if __name__ == "__main__":
    main()
