"""The simulator's report section (Markdown) and its curves (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"random": "random", "popularity": "popularity", "greedy_ctr": "greedy CTR", "linucb": "LinUCB (numpy)",
          "epsilon_greedy": "epsilon-greedy (VW)", "vw": "VW policy"}  # fmt: skip


def plot_curves(out: Path, curves: dict[str, list[dict[str, np.ndarray]]]) -> list[str]:
    """Cumulative reward, cumulative regret and cumulative cold-start reward over the test decisions: the mean
    over seeds, the band min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, runs in curves.items():
        if not runs:
            continue
        series = {
            "reward": np.stack([np.cumsum(r["rewards"]) for r in runs]),
            "regret": np.stack([np.cumsum(r["oracle"] - r["rewards"]) for r in runs]),
            "cold": np.stack([np.cumsum(r["rewards"] * r["cold"]) for r in runs]),
        }
        for ax, key in zip(axes, ("reward", "regret", "cold"), strict=True):
            s = series[key]
            x = np.arange(1, s.shape[1] + 1)
            ax.plot(x, s.mean(axis=0), label=LABELS.get(name, name))
            ax.fill_between(x, s.min(axis=0), s.max(axis=0), alpha=0.15)
    n = len(next(iter(curves.values())))
    for ax, title, ylabel in zip(axes, ("Cumulative reward", "Cumulative regret", "Cold-start items: cumulative reward"),
                                 ("reward", "regret", "reward"), strict=True):  # fmt: skip
        ax.set(title=title, xlabel="test-window decision", ylabel=ylabel)
    fig.suptitle(f"Simulator, test window: mean of {n} seeds, band = min..max", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    name = "bandit_curves.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


def _ci(d: dict) -> str:
    return f"{d['value']:.4f} [{d['lo']:.4f}, {d['hi']:.4f}]"


def section(summary: dict, images: list[str]) -> str:
    s = summary
    seeds = len(s["per_seed"])
    lines = [
        "\n## Contextual bandits: simulator (supervised-to-bandit, MovieLens)\n\n",
        f"Validation window from {s['windows']['t1']}, test window from {s['windows']['t2']}; "
        f"{s['sessions']['validation']} validation / {s['sessions']['test']} test sessions (user-days with a click"
        f"{', capped' if s.get('capped') else ''}), {s['decisions']['test']} test decisions, {seeds} seeds. "
        f"Features: vectors projected to {s['features']['proj_dim']} dims (space {s['features']['space_id']}), "
        f"VW `{s['features']['vw_args']}`. The protocol and its bias: `llmfeat.bandit.simulate`. "
        "A reward is 1 when the user rated the chosen item as a click that day; unrated arms count as 0.\n\n",
    ]
    if s["selection"]:
        lines.append("Exploration chosen by off-policy evaluation (SNIPS, 95% bootstrap interval) of epsilon-greedy "
                     "logs of the validation window:\n\n| exploration | SNIPS | IPS |\n|---|---|---|\n")  # fmt: skip
        for r in s["selection"]:
            lines.append(f"| `{r['exploration']}` | {_ci(r['snips'])} | {_ci(r['ips'])} |\n")
        lines.append(f"\nChosen: `{s['exploration']}`.\n\n")
    lines.append(
        "Test window, total reward (cold-start items: no interaction before the window) per seed:\n\n"
    )
    names = s["policies"]
    lines.append("| policy | " + " | ".join(f"seed {r['seed']}" for r in s["per_seed"]) +
                 " | mean reward | mean cold-start reward | cold items chosen | ms / decision |\n")  # fmt: skip
    lines.append("|---|" + "---:|" * (seeds + 4) + "\n")
    for n in names:
        rows = [r[n] for r in s["per_seed"]]
        lines.append(f"| {LABELS.get(n, n)} | " + " | ".join(f"{x['reward']:.0f}" for x in rows)
                     + f" | {np.mean([x['reward'] for x in rows]):.1f} | {np.mean([x['cold_reward'] for x in rows]):.1f}"
                     f" | {np.mean([x['cold_chosen'] for x in rows]):.1f} | {np.mean([x['ms_per_decision'] for x in rows]):.2f} |\n")  # fmt: skip
    lines.append("\nPaired differences (mean over seeds; 95% intervals: Student-t over seeds, which vary only the "
                 "policies' randomness, and a paired bootstrap over test sessions, the data's variability; a small "
                 "cold-start slice is noisy):\n\n| comparison | metric | mean difference | over seeds | over sessions | "
                 "per seed |\n|---|---|---:|---|---|---|\n")  # fmt: skip
    for c in s["comparisons"]:
        sb = c.get("session_bootstrap")
        boot = f"[{sb['lo']:.1f}, {sb['hi']:.1f}]" if sb else "-"
        lines.append(f"| {LABELS[c['a']]} - {LABELS[c['b']]} | {c['metric']} | {c['value']:.1f} | "
                     f"[{c['lo']:.1f}, {c['hi']:.1f}] | {boot} | {', '.join(f'{d:.0f}' for d in c['diffs'])} |\n")  # fmt: skip
    lines.append("\nOff-policy check: the VW policy frozen at the start of the test window, evaluated from the "
                 "epsilon-greedy test logs, against its exact value on the same contexts (sum over arms of "
                 "probability x reward) and its own on-policy run:\n\n| seed | true value | on-policy run | IPS | "
                 "SNIPS | DR | truth inside (IPS/SNIPS/DR) |\n|---|---:|---:|---|---|---|---|\n")  # fmt: skip
    for r in s["ope"]:
        inside = "/".join("yes" if r[k]["covers_truth"] else "no" for k in ("ips", "snips", "dr"))
        lines.append(f"| {r['seed']} | {r['true_value']:.4f} | {r['on_policy_mean']:.4f} ± {1.96 * r['on_policy_se']:.4f} | "
                     f"{_ci(r['ips'])} | {_ci(r['snips'])} | {_ci(r['dr'])} | {inside} |\n")  # fmt: skip
    for img in images:
        lines.append(f"\n![{img}]({img})\n")
    return "".join(lines)
