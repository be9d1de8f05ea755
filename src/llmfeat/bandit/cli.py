"""``llmfeat bandit simulate | train | ope``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

bandit_app = typer.Typer(
    no_args_is_help=True, help="Contextual bandits: simulator, policy training, off-policy evaluation."
)


def _common():
    from llmfeat import cli

    return cli


def _command(name: str):
    """A ``bandit`` sub-command with the CLI's one error mapping (``llmfeat.cli.command``)."""
    return _common().command(name, group=bandit_app)


@_command("simulate")
def simulate_cmd(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date of the data (YYYY-MM-DD).")
    ] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds (default: bandit.sim_seeds).")] = None,
    sessions: Annotated[
        int | None,
        typer.Option("--sessions", help="Sessions per window; 0: all (default: bandit.sim_max_sessions)."),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option("--warmup", help="Training-window warm-up sessions (bandit.sim_warmup_sessions)."),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Run the supervised-to-bandit simulator on the demo data; write the report section and curves."""
    cli = _common()
    from llmfeat.bandit.report import plot_curves, section
    from llmfeat.bandit.simulate import simulate

    cfg = cli._config(config, set_, data_dir)
    day = cli._date(as_of)
    cap = -1 if sessions is None else (None if sessions == 0 else sessions)
    res = simulate(
        cfg,
        day,
        log=lambda m: cli.console.print(f"[dim]{m}[/dim]"),
        max_sessions=cap,
        seeds=seeds,
        warmup=warmup,
    )
    from llmfeat.core import tables
    from llmfeat.core.config import reports_dir

    out = reports_dir(cfg) / "bandit" / f"simulate-{day.isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    tables.write_atomic(
        out / "bandit.md", "# Contextual bandits\n" + section(res.summary, plot_curves(out, res.curves))
    )
    tables.write_json(out / "bandit_summary.json", res.summary)
    t = Table(
        title=f"test window reward, mean over {len(res.summary['per_seed'])} seeds", title_justify="left"
    )
    for col in ("policy", "reward", "cold-start reward", "regret"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for n in res.summary["policies"]:
        rows = [r[n] for r in res.summary["per_seed"]]
        t.add_row(
            n, *(f"{sum(x[m] for x in rows) / len(rows):.1f}" for m in ("reward", "cold_reward", "regret"))
        )
    cli.console.print(t)
    for c in res.summary["comparisons"]:
        cli.console.print(
            f"  {c['a']} - {c['b']} ({c['metric']}): {c['value']:+.1f} [{c['lo']:+.1f}, {c['hi']:+.1f}]"
        )
    for r in res.summary["ope"]:
        cli.console.print(f"  OPE seed {r['seed']}: true {r['true_value']:.4f}; DR {r['dr']['value']:.4f} "
                          f"[{r['dr']['lo']:.4f}, {r['dr']['hi']:.4f}] covers: {r['dr']['covers_truth']}")  # fmt: skip
    cli.console.print(f"  report: {out / 'bandit.md'}")


@_command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Train a policy on the event log and publish it as a new version (the service hot-reloads it)."""
    cli = _common()

    cfg = cli._config(config, set_, data_dir)
    from llmfeat.bandit.nightly import train_policy

    out = train_policy(cfg, log=lambda m: cli.console.print(f"[dim]{m}[/dim]"))
    cli.console.print(
        f"policy {out['version']}: {out['logged_decisions']} logged decisions, {out['exploration']}"
    )


@_command("ope")
def ope_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Off-policy evaluation (IPS, SNIPS, DR) of random, popularity, greedy CTR and the VW policy from the log."""
    cli = _common()
    from llmfeat.bandit.evaluate import evaluate_event_log, write_ope_report

    cfg = cli._config(config, set_, data_dir)
    result = evaluate_event_log(cfg)
    t = Table(title=f"off-policy evaluation: {result['decisions']} decisions", title_justify="left")
    for col in ("policy", "IPS", "SNIPS", "DR"):
        t.add_column(col)
    for r in result["rows"]:
        t.add_row(
            r["policy"],
            *(f"{r[k]['value']:.4f} [{r[k]['lo']:.4f}, {r[k]['hi']:.4f}]" for k in ("ips", "snips", "dr")),
        )
    cli.console.print(t)
    cli.console.print(f"  report: {write_ope_report(cfg, result)}")
