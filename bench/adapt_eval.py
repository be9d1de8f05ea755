"""The collaborative adapter against the retrieval baselines on MovieLens-100k: `llmfeat evaluate`'s report,
written as the "## Collaborative adapter (rolling origins)" section of BENCHMARKS.md.

    PYTHONPATH=src python bench/adapt_eval.py --data-dir var/data --out BENCHMARKS.md
    PYTHONPATH=src python bench/adapt_eval.py --report var/reports/evaluate-<time>.json --out BENCHMARKS.md

The first form runs the evaluation (the same function as `llmfeat evaluate`, a few minutes: run it under the
heavy-job lock on a shared machine); the second renders a report an earlier `llmfeat evaluate` wrote.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from benchmarks_md import cpu_model, write_section

TITLE = "Collaborative adapter (rolling origins)"


def _row(report: dict, method: str, slice_name: str, metric: str) -> dict | None:
    return next((r for r in report["table"] if r["method"] == method and r["slice"] == slice_name
                 and r["metric"] == metric), None)  # fmt: skip


def _diff(report: dict, a: str, b: str, slice_name: str, metric: str) -> dict | None:
    return next((d for d in report["differences"] if d["a"] == a and d["b"] == b and d["slice"] == slice_name
                 and d["metric"] == metric), None)  # fmt: skip


def verdicts(report: dict) -> list[str]:
    """The issue's bars, checked on the numbers (no hand-written claims)."""
    out = []
    k = report["protocol"]["select_k"]
    metric = f"recall@{k}"
    for head in ("adapted_fresh", "adapted_hybrid", "adapted"):
        d = _diff(report, head, "recent_popularity", "all", metric)
        if d:
            ok = d["lo"] > 0
            out.append(f"- `{head}` vs recent popularity, pooled {metric}: {d['diff']:+.4f} "
                       f"[{d['lo']:+.4f}, {d['hi']:+.4f}] -> {'above, interval excludes 0' if ok else 'NOT shown above'}.")  # fmt: skip
        for base in ("ease", "ease+recent_pop"):
            d = _diff(report, head, base, "all", metric)
            if d:
                verdict = "wins" if d["lo"] > 0 else "loses" if d["hi"] < 0 else "no significant difference"
                out.append(f"- `{head}` vs `{base}`, pooled {metric}: {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
                           f" -> {verdict}.")  # fmt: skip
        for sl in ("warm_user", "new_user"):
            for base in ("ease", "ease+recent_pop", "recent_popularity"):
                d = _diff(report, head, base, sl, metric)
                if d and d["hi"] < 0:
                    out.append(
                        f"- {base} still wins on {sl}: `{head}` {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]."
                    )
    cold = {m: _row(report, m, "cold_item", metric) for m in ("adapted", "adapted_hybrid", "adapted_fresh", "lm_text",
                                                               "lm_history", "textgcn", "popularity",
                                                               "recent_popularity")}  # fmt: skip
    pc = report["pooled_counts"]
    frozen = max((cold[m]["value"] for m in ("lm_text", "lm_history") if cold[m]), default=0.0)
    pops = max((cold[m]["value"] for m in ("popularity", "recent_popularity") if cold[m]), default=0.0)
    for head in ("adapted", "adapted_hybrid", "adapted_fresh"):
        if not (cold[head] and cold[head]["users"]):
            continue
        a = cold[head]["value"]
        out.append(f"- Cold items ({pc['cold_item_clicks']} held-out clicks, {pc['cold_item_users']} users; the issue asks "
                   f">= 1,000, these are all there are): `{head}` {metric} {a:.4f} [{cold[head]['lo']:.4f}, "
                   f"{cold[head]['hi']:.4f}], best frozen LM {frozen:.4f} "
                   f"({'%.1fx' % (a / frozen) if frozen > 0 else 'n/a'}; bar 2x: {'met' if frozen > 0 and a >= 2 * frozen else 'NOT met'}), "
                   f"best popularity baseline {pops:.4f} ({'above' if a > pops else 'NOT above'}).")  # fmt: skip
    # The item cold-start protocol: the same cold clicks, only the items without a click ranked.
    names = ("adapted", "adapted_hybrid", "lm_text", "lm_history", "textgcn", "recent_popularity", "random")
    start = {m: _row(report, m, "cold_start", metric) for m in names}
    shown = ", ".join(f"`{m}` {start[m]['value']:.4f}" for m in names if start[m] and start[m]["users"])
    if shown:
        out.append(f"- Item cold-start protocol (the same {pc['cold_item_clicks']} cold clicks, only the items without a "
                   f"click ranked), {metric}: {shown}.")  # fmt: skip
        for head in ("adapted", "adapted_hybrid"):
            d = _diff(report, head, "random", "cold_start", metric)
            if d:
                verdict = (
                    "above random"
                    if d["lo"] > 0
                    else "below random"
                    if d["hi"] < 0
                    else "not distinguishable from random"
                )
                out.append(f"  `{head}` - random: {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] -> {verdict}.")  # fmt: skip
    return out


def render(report: dict, command: str, machine: str) -> str:
    from llmfeat.retrieval.evaluate import markdown

    d = report["data"]
    origins = report["origins"]
    adapted = [o["chosen"].get("adapted", {}) for o in origins]
    hybrid = [o["chosen"].get("adapted_hybrid", {}) for o in origins]
    fresh = [o["chosen"].get("adapted_fresh", {}) for o in origins]
    train_s = [a.get("train_seconds") for a in adapted if a]
    cpu_s = [a.get("train_cpu_seconds") for a in adapted if a and a.get("train_cpu_seconds") is not None]
    lines = [
        f"## {TITLE}",
        "",
        f"Command: `{command}` (snapshot {d['snapshot']}, set `{d.get('embedding_set')}`, frozen model "
        f"`{d.get('model_id')}`). Machine: {machine}. Whole run {report['seconds']} s.",
        "",
        "Protocol (docs/adapt.md): 4 rolling origins over the last 40% of the interactions, each with a validation "
        "window of the same size just before its test window; every hyperparameter (recent-popularity window or "
        "half-life, ItemKNN neighbours, EASE lambda, blend weights, adapter temperature and epoch, hybrid weight, "
        "new-item prior multiplier) "
        "chosen on validation recall@20, except the fresh slots (count and release window): the best validation "
        "recall@20 on the cold items within `adapt.fresh_tolerance` of the best overall validation recall@20; "
        "the test window read once; items seen before the cut excluded; paired "
        "bootstrap over users within origins (1,000 draws). Slice `cold_start`: the `cold_item` clicks in the item "
        "cold-start protocol (only the items without a click before the cut are ranked; reported, never selected on).",
        "",
    ]
    if train_s:
        lines += [
            f"Adapter training per origin (selection fit, every temperature tried, early stopping): "
            f"{', '.join(f'{s} s' for s in train_s)}; chosen temperature / epoch per origin: "
            f"{', '.join(str(a.get('temperature')) + ' / ' + str(a.get('epochs')) for a in adapted)}; hybrid weight: "
            f"{', '.join(str(h.get('weight')) for h in hybrid)}; new-item prior multiplier: "
            f"{', '.join(str(h.get('new_item_prior', 0.0)) for h in hybrid)}"
            + (
                f"; fresh slots (release window, days): "
                f"{', '.join(str(f.get('slots')) + (' (' + str(f.get('release_days')) + ')' if f.get('slots') else '') for f in fresh)}"
                if any(fresh)
                else ""
            )
            + (
                f"; CPU seconds of the training (all threads): {', '.join(f'{c} s' for c in cpu_s)}"
                if cpu_s
                else ""
            )
            + ".",
            "",
        ]
    lines += [
        markdown(report, diff_metrics=(f"recall@{report['protocol']['select_k']}",)),
        "",
        "**Against the issue's bars** (computed from the numbers above):",
        "",
    ]
    lines += verdicts(report)
    lines += ["", "Reading and caveats (design defaults compared on two test windows of a development copy before an "
              "earlier run): docs/adapt.md, \"Results\"."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument(
        "--report", type=Path, help="Render this `llmfeat evaluate` JSON report instead of running."
    )
    ap.add_argument("--command", help="The command line to record (default: this one).")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--out", type=Path, help="BENCHMARKS.md to write the section into.")
    ap.add_argument("--load-note", default="shared with other sessions' jobs",
                    help="What the machine was doing during the run (e.g. its load average).")  # fmt: skip
    args = ap.parse_args()
    if args.report:
        report = json.loads(args.report.read_text())
    else:
        from llmfeat.core.config import load_config
        from llmfeat.retrieval.evaluate import public, run_evaluate

        cfg = load_config(None, [f"paths.data_dir={args.data_dir}", *args.sets])
        report = public(run_evaluate(cfg, None))
    machine = f"{cpu_model()}, {platform.python_version()}, {args.load_note}"
    section = render(report, args.command or "python " + " ".join(sys.argv), machine)
    print(section)
    if args.out:
        write_section(args.out, TITLE, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
