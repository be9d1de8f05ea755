"""The CTR report: one Markdown table of model x slice x metric per protocol, and PNG plots (ROC,
calibration, training curves) beside it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from llmfeat.ctr.metrics import calibration_curve, roc_curve

METRIC_COLUMNS = (
    "rows",
    "clicks",
    "auc",
    "gauc",
    "logloss",
    "base_logloss",
    "imp_auc",
    "mrr",
    "ndcg@5",
    "ndcg@10",
)
TINY_ROWS, TINY_CLASS = 200, 20
"""A slice with fewer rows, or fewer clicks or non-clicks, than these gets a warning: its AUC is noise."""
MODEL_ORDER = ("popularity", "lr_lm", "deep_ids_stats", "deep_tfidf", "deep_lm")


def model_colour(name: str) -> str:
    """One colour per model in every figure (matplotlib's cycle by a fixed model order, not plot order)."""
    index = MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER) + sum(map(ord, name)) % 5
    return f"C{index % 10}"


def is_tiny(row: dict) -> bool:
    rows = int(row.get("rows", 0))
    clicks = row.get("clicks")
    if clicks is None or (isinstance(clicks, float) and math.isnan(clicks)):
        return rows < TINY_ROWS
    return rows < TINY_ROWS or min(int(clicks), rows - int(clicks)) < TINY_CLASS


def tiny_slices_note(results: list[dict], protocol: str) -> str:
    """A warning naming every slice too small to read (with its counts), or nothing."""
    tiny = {}
    for r in results:
        if r["protocol"] == protocol and is_tiny(r):
            clicks = r.get("clicks")
            tiny[r["slice"]] = f"{r['slice']} ({r['rows']} rows" + (
                f", {clicks} clicks)" if clicks is not None else ")"
            )
    if not tiny:
        return ""
    return (
        f"\n**Small slices, read with care:** {', '.join(tiny.values())}. With fewer than {TINY_ROWS} rows or "
        f"{TINY_CLASS} clicks or non-clicks an AUC (even 1.0) or a logloss is noise; such rows are marked `*`.\n"
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def results_table(results: list[dict], protocol: str) -> str:
    frame = pd.DataFrame([r for r in results if r["protocol"] == protocol])
    if frame.empty:
        return "(no results)\n"
    cols = [c for c in METRIC_COLUMNS if c in frame.columns and frame[c].notna().any()]
    lines = ["| model | slice | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        mark = "*" if is_tiny(r.to_dict()) else ""
        lines.append(
            f"| {r['model']} | {r['slice']}{mark} | "
            + " | ".join(_fmt(r.get(c, float("nan"))) for c in cols)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _plots(out: Path, protocol: str, curves: dict, predictions: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    labels = predictions["_labels"]
    models = [m for m in predictions if m != "_labels"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for m in models:
        fpr, tpr = roc_curve(labels, predictions[m])
        ax1.plot(fpr, tpr, label=m, color=model_colour(m))
        pred, obs, _ = calibration_curve(labels, np.asarray(predictions[m], dtype=np.float64))
        ax2.plot(pred, obs, marker="o", label=m, color=model_colour(m))
    ax1.plot([0, 1], [0, 1], "k:", lw=1)
    ax1.set(title=f"ROC, test ({protocol})", xlabel="false positive rate", ylabel="true positive rate")
    ax2.plot([0, 1], [0, 1], "k:", lw=1)
    ax2.set(title=f"Calibration, test ({protocol})", xlabel="mean predicted", ylabel="observed click rate")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    name = f"roc_calibration_{protocol}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    files.append(name)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, hist in curves.items():
            ax.plot(
                [h["epoch"] for h in hist],
                [h["val_auc"] for h in hist],
                marker="o",
                label=m,
                color=model_colour(m),
            )
        ax.set(title=f"Validation AUC per epoch ({protocol})", xlabel="epoch", ylabel="AUC")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"training_curves_{protocol}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def write_report(out: Path, summary: dict, curves: dict, predictions: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# CTR report {summary['run_id']}\n",
        f"Snapshot {summary['as_of']}; {summary['rows']} labelled interactions with point-in-time features from Feast; "
        f"embedding set `{summary.get('embedding_set', 'default')}`, model `{summary['embedding_model_id']}` "
        f"({summary['embedding_dim']}-d).\n",
        "Slices: `cold_item` = items with no training interaction, `cold_user` = users with none, `light_user` = "
        "users with a few, `warm` = neither user nor item cold. `base_logloss` = always predicting the training "
        "click rate. GAUC = per-user AUC weighted by rows.\n",
    ]
    last = summary.get("last_full_evaluation")
    if summary.get("evaluation") == "refresh" and last:
        parts.append(
            f"\n**Refresh night** ({summary.get('evaluation_reason', '')}): the models were retrained on the "
            f"{next(iter(summary['protocols']))} protocol only, warm-started from the previous night's; the full "
            f"comparison (every protocol, the bandit simulator) is the report of run {last['run_id']} as of "
            f"{last['as_of']}: {last['report']}\n"
        )
    for protocol, info in summary["protocols"].items():
        bounds = ", ".join(f"{k} {v}" for k, v in info.items())
        parts.append(f"\n## Protocol: {protocol}\n\n{bounds}\n\n")
        parts.append(results_table(summary["results"], protocol))
        parts.append(tiny_slices_note(summary["results"], protocol))
        for name in _plots(out, protocol, curves.get(protocol, {}), predictions[protocol]):
            parts.append(f"\n![{name}]({name})\n")
    if summary.get("compared_sets"):
        parts.append(comparison_section(summary))
    path = out / "report.md"
    path.write_text("".join(parts))
    return path


def comparison_section(summary: dict, metrics: tuple[str, ...] = ("auc", "gauc", "logloss")) -> str:
    """This run side by side with the latest run of every other embedding set on the same snapshot (e.g.
    frozen vs fine-tuned encoder): same splits, same slices, one column per set and metric."""
    runs = [(summary.get("embedding_set", "default"), summary)] + [
        (s.get("embedding_set", "default"), s) for s in summary["compared_sets"]
    ]
    keyed = [{(r["protocol"], r["model"], r["slice"]): r for r in s["results"]} for _, s in runs]
    lines = [
        "\n## Embedding sets compared\n\n",
        "Latest run of each embedding set on the same snapshot and splits: "
        + "; ".join(f"`{name}` = `{s['embedding_model_id']}` (run {s['run_id']})" for name, s in runs)
        + ".\n\n",
        "| protocol | model | slice | rows | "
        + " | ".join(f"{m} {name}" for m in metrics for name, _ in runs)
        + " |\n",
        "|---|---|---|---:|" + "---:|" * (len(metrics) * len(runs)) + "\n",
    ]
    for key, r in keyed[0].items():
        if r["model"] == "popularity" or r["model"] == "deep_ids_stats" or r["model"] == "deep_tfidf":
            continue  # no language-model input: identical across sets
        cells = [_fmt(k.get(key, {}).get(m, float("nan"))) for m in metrics for k in keyed]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {r['rows']} | " + " | ".join(cells) + " |\n")
    return "".join(lines)
