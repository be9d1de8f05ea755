"""CTR with adapted vectors, on rolling origins: the deep CTR model on ids + stats, + frozen LM vectors, +
adapted vectors (+ cosine + log recent popularity), several seeds (src/llmfeat/ctr/evaluate.py, docs/adapt.md "CTR").
Writes the "## CTR with adapted vectors (rolling origins)" section of BENCHMARKS.md.

    PYTHONPATH=src python bench/ctr_adapted.py --data-dir var/data --seeds 7 8 9 \
        --out var/bench/ctr_adapted.json --md BENCHMARKS.md
    PYTHONPATH=src python bench/ctr_adapted.py --report var/bench/ctr_adapted.json --md BENCHMARKS.md

Each origin's test predictions are saved under --save-dir and not recomputed: two processes with
``--origins 0 2`` and ``--origins 1 3 --threads 1`` split the work, a third run without --origins combines.

The data directory needs the canonical interactions, the embedding set and the point-in-time training frame
that `llmfeat train` stores (`make run` makes all three); it is only read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks_md import cpu_model, write_section  # noqa: E402

TITLE = "CTR with adapted vectors (rolling origins)"


def verdict(report: dict) -> list[str]:
    """The issue's bar (>= +0.005 AUC overall, no loss on cold items), read off the numbers."""
    out = []
    for v in ("adapted", "adapted_dot", "frozen_lm"):
        d_all = next((d for d in report["differences"] if d["variant"] == v and d["slice"] == "all"), None)
        d_cold = next(
            (d for d in report["differences"] if d["variant"] == v and d["slice"] == "cold_item"), None
        )
        if d_all is None:
            continue
        met = d_all["diff"] >= 0.005
        lo = min(d_all["t_lo"], d_all["boot_lo"])
        sure = (
            "both intervals above +0.005" if lo >= 0.005 else
            f"intervals above 0, but their lower ends ({d_all['t_lo']:+.4f}, {d_all['boot_lo']:+.4f}) are below +0.005"
            if lo > 0 else "an interval includes 0"
        )  # fmt: skip
        cold = "n/a" if d_cold is None else (
            "no loss" if d_cold["diff"] >= 0 else "a significant LOSS" if d_cold["boot_hi"] < 0
            else "lower, but the interval includes 0")  # fmt: skip
        out.append(f"- `{v}` - `ids_stats`: {d_all['diff']:+.4f} AUC (t [{d_all['t_lo']:+.4f}, {d_all['t_hi']:+.4f}], "
                   f"bootstrap [{d_all['boot_lo']:+.4f}, {d_all['boot_hi']:+.4f}]): bar +0.005 on the mean "
                   f"{'met' if met else 'NOT met'} ({sure})"
                   + (f"; cold items {d_cold['diff']:+.4f} [{d_cold['boot_lo']:+.4f}, {d_cold['boot_hi']:+.4f}] "
                      f"({d_cold['origins_won']}/{d_cold.get('origins', '?')} origins up): {cold}." if d_cold else "."))  # fmt: skip
    return out


def render(report: dict) -> str:
    from llmfeat.ctr.evaluate import markdown

    p = report["protocol"]
    a = p["adapter"]
    lines = [
        f"## {TITLE}",
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']}. Whole run {report['seconds']}{' s' if isinstance(report['seconds'], int | float) else ''} "
        f"(finished {report['finished']}).",
        "",
        "Data: "
        + (
            ", ".join(
                f"{k} {report['data'][k]}"
                for k in ("snapshot", "interactions", "clicks", "users", "items", "embedding_set", "model_id")
            )
            if "data" in report
            else "-"
        )
        + ".",
        "",
        f'Protocol (docs/adapt.md, "CTR"): the {p["origins"]} rolling origins of `llmfeat evaluate` (span '
        f"{p['span']}); CTR training rows before t_val, validation rows (early stopping) in [t_val, t_test), test "
        f"rows in [t_test, t_end); seeds {p['seeds']}. Ids + stats and frozen LM features: the Feast point-in-time "
        f"frame `llmfeat train` stored. Adapted features: one adapter per origin (trained on clicks before t_val - "
        f"{p['validation_days']} days, early-stopped on the last {p['validation_days']} days before t_val; temperature "
        f"{a['temperature']}, at most {a['epochs']} epochs, patience {a['patience']}), re-propagated over the click "
        f"graph before each row's day. CTR model: {p['train']}.",
        "",
        markdown(report),
        "**Against the issue's bar** (computed from the numbers above):",
        "",
        *verdict(report),
        "",
        "What the adapted features are, what each origin's adapter saw, and the caveats (epoch cap, adapter weights "
        'trained on the CTR training rows\' clicks, a small cold slice): docs/adapt.md, "CTR".',
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO / "var" / "data")
    ap.add_argument("--report", type=Path, help="Render this JSON report instead of running.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--variants", nargs="+", default=None)
    ap.add_argument("--origins", type=int, nargs="+", default=None, help="Run only these origin indices.")
    ap.add_argument("--adapter-epochs", type=int, default=8, help="Cap on the adapter's epochs per origin.")
    ap.add_argument("--adapter-patience", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config overrides.")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "ctr_adapted.json")
    ap.add_argument(
        "--save-dir",
        type=Path,
        default=REPO / "var" / "bench" / "ctr_adapted",
        help="Per-origin predictions; origins saved there are not run again (split a run over "
        "processes with --origins, then run once without it to combine).",
    )
    ap.add_argument("--md", type=Path, help="BENCHMARKS.md to write the section into.")
    args = ap.parse_args()
    if args.report:
        report = json.loads(args.report.read_text())
    else:
        import torch

        from llmfeat.core.config import load_config
        from llmfeat.ctr import evaluate as C
        from llmfeat.ctr.models import TrainConfig
        from llmfeat.embedding.adapt import adapter_params
        from llmfeat.retrieval.evaluate import load_eval_data

        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        cfg = load_config(None, [f"paths.data_dir={args.data_dir}", *args.overrides])
        data = load_eval_data(cfg.paths.data_dir, cfg.embed.embedding_set)
        frame = C.load_training_frame(cfg.paths.data_dir, cfg.embed.embedding_set)
        print(f"ctr_adapted: {len(frame)} frame rows, {data.info['interactions']} interactions", flush=True)
        params = {**adapter_params(cfg.adapt), "temperature": args.temperature, "epochs": args.adapter_epochs,
                  "patience": args.adapter_patience, "threads": args.threads}  # fmt: skip
        t = cfg.train
        train_cfg = TrainConfig(t.epochs, t.batch_size, t.lr, t.weight_decay, t.patience, t.seed, t.device)
        report = C.run_ctr_eval(data, frame, origins=cfg.evaluate.origins, span=cfg.evaluate.span,
                                variants=args.variants or list(C.VARIANTS), seeds=args.seeds, adapter_params=params,
                                validation_days=cfg.adapt.validation_days, select_k=cfg.evaluate.select_k,
                                train_cfg=train_cfg, draws=args.draws, only_origins=args.origins,
                                save_dir=args.save_dir,
                                log=lambda m: print(m, flush=True))  # fmt: skip
        load = os.getloadavg()
        report["data"] = data.info
        report.update({
            "command": "python " + " ".join(sys.argv), "seconds": round(time.perf_counter() - started, 1),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores shared with other sessions' jobs (load average "
                       f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end)",
        })  # fmt: skip
        C.write_report(report, args.out)
    section = render(report)
    print(section)
    if args.md:
        write_section(args.md, TITLE, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
