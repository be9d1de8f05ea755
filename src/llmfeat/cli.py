"""The ``llmfeat`` command line. Each command parses options, builds the config and calls one stage."""

from __future__ import annotations

import datetime as dt
import functools
import json
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmfeat.core.config import Config, load_config
from llmfeat.core.errors import ConfigError, ExitCode, InputError, describe

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Text -> language-model features for recommenders."
)
console = Console(soft_wrap=True)

Exit = ExitCode
"""Process exit codes (``llmfeat.core.errors.ExitCode``), so a scheduler can tell the cases apart."""


def command(name: str | None = None, *, group: typer.Typer | None = None, **kwargs):
    """``app.command`` (or ``group.command``) with llmfeat's one error mapping: an ``LlmfeatError`` prints its
    kind and message and exits with its code; anything else prints the traceback (dim) and exits 1 naming
    the command."""

    def register(fn):
        @functools.wraps(fn)
        def guarded(*args, **kw):
            try:
                return fn(*args, **kw)
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - the one place exceptions become exit codes
                code, message = describe(exc, name or fn.__name__.replace("_", "-"))
                if code == Exit.FAILURE:
                    console.print(traceback.format_exc(), markup=False, style="dim")
                kind, _, rest = message.partition(": ")
                # escaped: a message quotes input (file names, column headers), and a "[/...]" in it is not markup
                console.print(f"[red]{escape(kind)}:[/red] {escape(rest)}", highlight=False)
                for hint in getattr(exc, "hints", ()):
                    console.print(f"  {escape(str(hint))}", highlight=False)
                raise typer.Exit(int(code)) from exc

        return (group or app).command(name, **kwargs)(guarded)

    return register


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Shorthand for --set paths.data_dir=...")]


def _config(
    config: Path | None, sets: list[str] | None, data_dir: Path | None = None, extra: list[str] = ()
) -> Config:
    overrides = list(sets or []) + list(extra)
    if data_dir is not None:
        overrides.append(f"paths.data_dir={data_dir}")
    return load_config(config, overrides)


def _date(value: str | None) -> dt.date:
    if value is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--as-of {value!r} is not a date like 2024-01-31") from None


@command("fetch-demo")
def fetch_demo(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Download and verify MovieLens-100k (from the recbole wheel on the package registry)."""
    from llmfeat.data.demo_data import ensure_movielens_100k

    cfg = _config(config, set_)
    path = ensure_movielens_100k(cfg.paths.cache_dir)
    console.print(f"MovieLens-100k: {path}")


@command()
def ingest(
    source: Annotated[
        str | None, typer.Option(help="movielens | mind | mapped (default: ingest.source).")
    ] = None,
    path: Annotated[
        Path | None, typer.Option(help="Source directory, or the mapping YAML for 'mapped'.")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date (YYYY-MM-DD); default today (UTC).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Load a source, validate it, and write the canonical tables and the quarantine for one snapshot date."""
    from llmfeat.core import tables
    from llmfeat.data.ingest import run_ingest

    extra = ([f"ingest.source={source}"] if source else []) + ([f"ingest.source_path={path}"] if path else [])
    cfg = _config(config, set_, data_dir, extra)
    result = run_ingest(cfg, _date(as_of))
    print_counts(f"ingest {result.source} -> snapshot {result.snapshot_date}", result.counts)
    for key, value in result.notes.items():
        console.print(f"  {key}: {value}")
    for name, out in result.outputs.items():
        console.print(f"  {name:<13} {out}")
    if "interactions" in result.writes:
        console.print(f"  interactions: {tables.describe_append(result.writes['interactions'])}")
    if result.quarantined:
        console.print(
            f"[yellow]{result.quarantined} row(s) quarantined[/yellow]: see {result.outputs['quarantine']}"
        )
        raise typer.Exit(Exit.QUARANTINED)


def print_counts(title: str, counts: dict[str, dict[str, int]]) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("table", "read", "kept", "quarantined", "not yet visible", "reasons"):
        table.add_column(col, justify="left" if col in ("table", "reasons") else "right")
    for name, c in counts.items():
        plain = ("read", "kept", "quarantined", "not_yet_visible")
        reasons = ", ".join(f"{k}={v}" for k, v in c.items() if k not in plain)
        table.add_row(name, str(c["read"]), str(c["kept"]), str(c["quarantined"]), str(c.get("not_yet_visible", 0)),
                      reasons or "-")  # fmt: skip
    console.print(table)


@command()
def embed(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date of the canonical tables to embed.")
    ] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="First user snapshot date (backfill). Default: catch up.")
    ] = None,
    every: Annotated[int | None, typer.Option("--every", help="Days between user snapshots.")] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Local model directory (default: all-MiniLM-L6-v2). Its vectors go to the "
            "embedding set named after the directory unless --set embed.embedding_set=... says otherwise.",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Encode item texts and point-in-time user texts with Spark; only new or changed texts are encoded."""
    from llmfeat.core.spark import build_spark
    from llmfeat.embedding.embed import run_embed

    extra = []
    if model:
        extra.append(f"embed.model_dir={model}")
        if not any(s.strip().startswith("embed.embedding_set=") for s in set_ or []):
            # A model gets its own set, named after its directory, unless one is given (or it is the default).
            from llmfeat.embedding.embed import set_for_model

            extra.append(f"embed.embedding_set={set_for_model(model)}")
    cfg = _config(config, set_, data_dir, extra)
    day = _date(as_of)
    try:  # an empty catalogue is refused before Spark starts
        from llmfeat.embedding.embed import require_items

        require_items(cfg.paths.data_dir, day)
    except (InputError, FileNotFoundError) as exc:
        console.print(f"[red]input error:[/red] {escape(str(exc))}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    spark = build_spark(cfg.spark)
    try:
        manifest = run_embed(spark, cfg, day, snapshot_from=_date(from_) if from_ else None, every_days=every,
                             log=lambda m: console.print(f"[dim]{m}[/dim]"))  # fmt: skip
    finally:
        spark.stop()
    print_embed_summary(manifest)


def print_embed_summary(manifest: dict) -> None:
    table = Table(title=f"embed {manifest['as_of']}  model {manifest['model_id']}  {', '.join(manifest['runtime'])}",
                  title_justify="left")  # fmt: skip
    cols = ("read", "quarantined", "unchanged", "written", "encoded", "reused", "truncated")
    table.add_column("table")
    for col in cols:
        table.add_column(col, justify="right")
    for name, c in manifest["counts"].items():
        table.add_row(name, *[str(c.get(col, "-")) for col in cols])
    console.print(table)
    snaps = manifest["snapshots"]
    console.print(
        f"  user snapshots {snaps['from']} .. {snaps['to']} every {snaps['every_days']}d ({snaps['count']})"
    )
    console.print(f"  seconds: {manifest['seconds']}")
    for name, out in manifest["outputs"].items():
        console.print(f"  {name:<13} {out}")


@command()
def stats(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date of the canonical tables.")
    ] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="First snapshot date (backfill). Default: catch up.")
    ] = None,
    every: Annotated[int | None, typer.Option("--every", help="Days between snapshots.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Compute item/user behaviour stats over point-in-time windows (Spark)."""
    from llmfeat.core.spark import build_spark
    from llmfeat.features.stats import run_stats

    cfg = _config(config, set_, data_dir)
    spark = build_spark(cfg.spark)
    try:
        result = run_stats(spark, cfg, _date(as_of), snapshot_from=_date(from_) if from_ else None, every_days=every,
                             log=lambda m: console.print(f"[dim]{m}[/dim]"))  # fmt: skip
    finally:
        spark.stop()
    console.print(f"stats {result['as_of']}: {result.headline()}")
    console.print(f"  seconds: {result.seconds}")
    for name, out in result["outputs"].items():
        console.print(f"  {name:<13} {out}")


@command()
def publish(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Materialise up to this snapshot date (00:00 UTC).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Materialise everything again, not incrementally.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Apply the Feast repository and materialise the features into the online store."""
    from llmfeat.core.spark import build_spark
    from llmfeat.features.publish import run_publish

    cfg = _config(config, set_, data_dir)
    spark = build_spark(cfg.spark)
    try:
        result = run_publish(cfg, _date(as_of), full=full, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    finally:
        spark.stop()
    console.print(f"published {result.headline()} ({result.seconds})")
    console.print(f"  feature_store.yaml: {result['feature_store_yaml']}")


@command()
def nightly(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="The date to run for (YYYY-MM-DD); default today (UTC).")
    ] = None,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="Redo this stage and what depends on it (repeatable).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Stop after this stage (the next call resumes).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    inject_fault: Annotated[
        list[str] | None,
        typer.Option(
            "--inject-fault", hidden=True, help="Tests only: POINT[:kill|enospc] (llmfeat.core.faults)."
        ),
    ] = None,
) -> None:
    """The whole pipeline for one date: idempotent, resumable, one run per data directory at a time."""
    from llmfeat.core.faults import Faults
    from llmfeat.nightly import run_dir, run_nightly

    cfg = _config(config, set_, data_dir)
    day = _date(as_of)
    faults = Faults(inject_fault or ())
    status = console.status("starting")

    def on_stage(stage: str, state: str) -> None:
        if state == "running":
            status.update(f"[bold]{stage}[/bold] ...")
        else:
            console.print(f"  {stage:<8} {state}")

    with status:
        summary = run_nightly(cfg, day, force=tuple(force or ()), until=until,
                              log=lambda m: console.print(f"[dim]{m}[/dim]"), on_stage=on_stage,
                              faults=faults)  # fmt: skip
    print_nightly_summary(summary, run_dir(cfg, day))
    if summary.quarantined:
        raise typer.Exit(Exit.QUARANTINED)


def print_nightly_summary(summary, markers) -> None:
    if summary.nothing_to_do:
        console.print(f"nightly {summary.as_of}: already finished; nothing to do (markers in {markers}).")
    table = Table(title=f"nightly {summary.as_of}  ({summary.seconds:.1f} s)", title_justify="left")
    for col in ("stage", "status", "seconds", "result"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for r in summary.results:
        seconds = f"{r.seconds:.1f}" if r.status == "done" else "-"
        table.add_row(r.stage, r.status, seconds, r.summary.headline() if r.summary else "-")
    console.print(table)
    if summary.not_yet_visible:
        console.print(f"  not yet visible: {summary.not_yet_visible} row(s) stamped at or after {summary.as_of} "
                      "(left for later nights; not quarantined)")  # fmt: skip
    console.print(f"  data directory: {_absolute(summary.data_dir)}")
    console.print(f"  run markers and summary: {_absolute(markers)}")


def _absolute(path) -> str:
    """Paths in summaries absolute, so they can be opened from any directory (relative ones are relative to
    the working directory of this run, like the configured paths)."""
    return str(Path(path).resolve()) if path else "-"


@command("index")
def index_cmd(
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Index the item vectors known at this date (default: latest)."),
    ] = None,
    factory: Annotated[
        str | None, typer.Option("--factory", help="FAISS index_factory string (default: chosen by size).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Build a FAISS index of the current item vectors, publish it as a new version, prune old versions."""
    from llmfeat.retrieval.index import run_index

    cfg = _config(config, set_, data_dir, [f"index.factory={factory}"] if factory else [])
    r = run_index(cfg, _date(as_of) if as_of else None, log=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    table = Table(title=f"index {r.version} (published)", title_justify="left", show_header=False)
    recall = ", ".join(f"{name} {v} ({r.tuning_queries[name]} queries)" for name, v in r.recall.items())
    phases = ", ".join(f"{k} {v}" for k, v in r.seconds.items() if k != "total")
    rows = [
        ("type", f"{r.factory} ({'exact' if r.exact else 'approximate'})"),
        ("items", f"{r.count} x {r.dim}  model {r.model_id}  as of {r.as_of}"),
        ("params", ", ".join(f"{k}={v}" for k, v in r.params.items()) or "-"),
        ("recall@10", f"{recall} vs exact search"),
        (
            "training",
            f"{r.training_sample} vectors, seed {r.training_seed}"
            if r.training_sample
            else "none (nothing to train)",
        ),
        ("seconds", f"{r.seconds['total']}  ({phases})"),
        ("size", f"{r.size_bytes / 2**20:.1f} MiB"),
        ("path", r.path),
        ("pruned", ", ".join(r.pruned) or "-"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


def _id_list(ids: list[str] | None, path: Path | None, option: str) -> list[str] | None:
    """Ids given one by one and/or in a file (one per line, blank lines skipped); None when neither."""
    if ids is None and path is None:
        return None
    out = list(ids or [])
    if path is not None:
        try:
            out += [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{option} {path}: cannot read the id list ({exc})") from exc
    return out


@command()
def retrieve(
    user: Annotated[str | None, typer.Option("--user", help="Recommend items for this user id.")] = None,
    item: Annotated[str | None, typer.Option("--item", help="Items similar to this item id.")] = None,
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 20,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Only items in this category (repeatable).")
    ] = None,
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="Keep items the user already interacted with.")
    ] = False,
    user_vectors: Annotated[
        str | None, typer.Option("--user-vectors", help="text | history (default: serve.user_vectors).")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Index version (default: current).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Only this item id (repeatable; with --category: both)."),
    ] = None,
    deny: Annotated[list[str] | None, typer.Option("--deny", help="Never this item id (repeatable).")] = None,
    allow_file: Annotated[
        Path | None, typer.Option("--allow-file", help="Only the item ids in this file, one per line.")
    ] = None,
    deny_file: Annotated[
        Path | None, typer.Option("--deny-file", help="Never the item ids in this file, one per line.")
    ] = None,
    hybrid: Annotated[
        bool,
        typer.Option(
            "--hybrid",
            help="--user on an adapted set: cosine + the adapter's weight x log recent popularity.",
        ),
    ] = False,
) -> None:
    """Nearest neighbours from the published index: items for --user, or items similar to --item."""
    from llmfeat.retrieval.retriever import Retriever

    cfg = _config(config, set_, data_dir, [f"serve.user_vectors={user_vectors}"] if user_vectors else [])
    if (user is None) == (item is None):
        raise ConfigError("give exactly one of --user and --item")
    if not 1 <= k <= cfg.serve.k_max:
        raise ConfigError(f"-k must be within 1..{cfg.serve.k_max} (serve.k_max)")
    allow_ids = _id_list(allow, allow_file, "--allow-file")
    deny_ids = _id_list(deny, deny_file, "--deny-file")
    r = Retriever.load(cfg, version=version, need_users=user is not None)  # --item: no Feast import
    if hybrid:
        from llmfeat.retrieval.retriever import load_hybrid

        r = load_hybrid(cfg, r)
    if user is not None:
        res = r.for_user(user, k, category, exclude_seen=not include_seen, allow=allow_ids, deny=deny_ids,
                         hybrid=hybrid)  # fmt: skip
    else:
        res = r.similar_items(item, k, category, allow=allow_ids, deny=deny_ids)
    what = f"user {user}" if user is not None else f"items similar to {item}"
    if res.ignored_ids:
        console.print(
            f"[yellow]note:[/yellow] {res.ignored_ids} allow/deny ids are not in the index (ignored)"
        )
    if res.reason:
        console.print(f"{what}: no items: {res.reason}")
        return
    plan = f"{res.method}, plan {res.plan}, selectivity {res.selectivity:.2%}"
    table = Table(title=f"{what}  (index {res.index_version}, {plan})", title_justify="left")
    because = r.explain(user, res.ids, cfg.bandit.explain_n) if user is not None else [[] for _ in res.ids]
    cols = (("#", "right"), ("item_id", "left"), ("score", "right"), ("title", "left"))
    for col, justify in cols + ((("because you liked", "left"),) if user is not None else ()):
        table.add_column(col, justify=justify)
    for rank, (iid, score, title, why) in enumerate(
        zip(res.ids, res.scores, res.titles, because, strict=True), 1
    ):
        shared = res.same_title[rank - 1] if res.same_title else []
        hint = f"  [dim](same title as item {', '.join(shared)})[/dim]" if shared else ""
        table.add_row(
            str(rank),
            iid,
            f"{score:.4f}",
            (title or "") + hint,
            *([_because(why)] if user is not None else []),
        )
    console.print(table)


@command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host, loopback).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Serve retrieval over HTTP (FastAPI); picks up newly published index versions without a restart."""
    from llmfeat.retrieval.serve import RetrieverHolder, create_app, run_server

    extra = ([f"serve.host={host}"] if host else []) + ([f"serve.port={port}"] if port is not None else [])
    cfg = _config(config, set_, data_dir, extra)
    holder = RetrieverHolder.from_config(cfg)
    r = holder.get()
    console.print(
        f"serving index {r.version} ({r.count} items, {r.device}) on http://{cfg.serve.host}:{cfg.serve.port}"
    )
    bandit = _bandit_service(cfg)
    app_ = create_app(holder, k_max=cfg.serve.k_max, reload_interval_s=cfg.serve.reload_interval_s,
                      filter_ids_max=cfg.serve.filter_ids_max, response_cache_mb=cfg.serve.response_cache_mb,
                      bandit=bandit)  # fmt: skip
    _require_token(app_, cfg)
    _log_service_events()
    run_server(app_, cfg.serve.host, cfg.serve.port, cfg)


def _require_token(app_, cfg: Config) -> None:
    """serve.auth: every route but /health needs the bearer token, when one is configured."""
    from llmfeat.retrieval.serve_auth import protect, resolve_token

    token = resolve_token(cfg.serve.auth)
    protect(app_, token)
    if token is None and cfg.serve.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] serving on {cfg.serve.host} without serve.auth: anyone who "
                      "can reach the port can call every route, /reload included")  # fmt: skip
    else:
        console.print(f"  authentication: {'bearer token (serve.auth)' if token else 'off (loopback)'}")


def _log_service_events() -> None:
    """The service's own events (index reloaded, reload refused) on stderr beside uvicorn's lines."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("llmfeat")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _bandit_service(cfg: Config):
    """The /rank + /reward routes when a bandit policy is published (else the service runs without them)."""
    from llmfeat.bandit.policy import PolicyNotFoundError
    from llmfeat.bandit.service import BanditService

    if not cfg.bandit.enabled:
        return None
    try:
        service = BanditService.from_config(cfg)
    except PolicyNotFoundError as exc:
        console.print(f"[yellow]no /rank and /reward:[/yellow] {exc}")
        return None
    p = service.policies.get()
    console.print(f"bandit policy {p.version} ({p.policy.exploration}); event log {service.events.path}")
    return service


def _because(items) -> str:
    return "; ".join(f"{b.title or b.item_id} ({b.similarity:.2f})" for b in items)


@command()
def train(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date of the labelled interactions.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train and compare the CTR models on point-in-time Feast features; write the report."""
    from llmfeat.core.spark import build_spark
    from llmfeat.ctr.train import run_train

    cfg = _config(config, set_, data_dir)
    spark = build_spark(cfg.spark)
    try:
        with console.status("training ..."):
            summary = run_train(cfg, _date(as_of), log=lambda m: console.print(f"[dim]{m}[/dim]"))
    finally:
        spark.stop()
    table = Table(title=f"CTR models, test set ({summary['run_id']})", title_justify="left")
    for col in ("protocol", "model", "slice", "rows", "AUC", "logloss", "base logloss", "GAUC"):
        table.add_column(col, justify="left" if col in ("protocol", "model", "slice") else "right")
    for r in summary["results"]:
        if r["slice"] in ("all", "cold_item"):
            table.add_row(r["protocol"], r["model"], r["slice"], str(r["rows"]), f"{r['auc']:.4f}", f"{r['logloss']:.4f}",
                          f"{r['base_logloss']:.4f}", f"{r['gauc']:.4f}")  # fmt: skip
    console.print(table)
    console.print(f"  report: {_absolute(summary['report'])}")
    console.print(f"  models: {_absolute(Path(next(iter(summary['models'].values()), '.')).parent)}")


@command()
def evaluate(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Latest canonical snapshot to read (default: the newest).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Retrieval evaluation with rolling origins: baselines, frozen LM vectors and the collaborative adapter,
    hyperparameters chosen on validation, paired bootstrap intervals (docs/adapt.md)."""
    from llmfeat.retrieval.evaluate import markdown, run_evaluate

    cfg = _config(config, set_, data_dir)
    report = run_evaluate(
        cfg, _date(as_of) if as_of else None, log=lambda m: console.print(f"[dim]{m}[/dim]")
    )
    console.print(markdown(report))
    console.print(f"  report: {report['path']} ({report['seconds']} s)")


@command()
def adapt(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date: the graph holds clicks before it.")
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish/--no-publish", help="Also publish the set to Feast (needs Spark).")
    ] = True,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train the collaborative adapter over the frozen LM vectors and write the adapted embedding set
    (adapt.output_set), its Feast project and its FAISS index."""
    from llmfeat.embedding.adapt import run_adapt_stage

    cfg = _config(config, set_, data_dir)
    spark = None
    try:
        if publish:
            from llmfeat.core.spark import build_spark

            spark = build_spark(cfg.spark)
        result = run_adapt_stage(
            cfg, _date(as_of), publish=publish, log=lambda m: console.print(f"[dim]{m}[/dim]")
        )
    finally:
        if spark is not None:
            spark.stop()
    console.print(f"adapted set {result.embedding_set}: {result.model_id}")
    hybrid = {k: v for k, v in (result.hybrid or {}).items() if k != "text_popularity"}  # 384 coefficients
    console.print(f"  {result.counts}; validation recall@20 {result.validation_recall}; hybrid {hybrid}")
    console.print(f"  index {result.index_version}; seconds {result.seconds}")


@command()
def finetune(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date of the canonical tables to train on.")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="lora | full | top_layers (finetune.method).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Training steps (finetune.max_steps).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Model directory to write (finetune.output_dir).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Fine-tune the encoder on the click signal (two towers, in-batch softmax); save a merged model directory.

    Then: `llmfeat embed --model <dir>` re-embeds into a new embedding set, `publish` / `index` / `train` with
    --set embed.embedding_set=<set> build the new version beside the old one."""
    from llmfeat.embedding.finetune import run_finetune

    extra = [f"finetune.method={method}"] if method else []
    extra += [f"finetune.max_steps={max_steps}"] if max_steps is not None else []
    extra += [f"finetune.output_dir={output}"] if output else []
    cfg = _config(config, set_, data_dir, extra)
    card = run_finetune(cfg, _date(as_of), log=lambda m: console.print(f"[dim]{m}[/dim]"))
    console.print(
        f"fine-tuned {card['base_model_id']} ({card['method']}, {card['steps']} steps, best {card['best_step']}): "
        f"validation loss {card['val_loss_before']:.4f} -> {card['val_loss_after']:.4f}"
    )
    console.print(f"  model {card['model_id']}: {card['model_dir']}")
    console.print(
        f"  next: llmfeat embed --model {card['model_dir']}  (embedding set {Path(card['model_dir']).name})"
    )


@command()
def score(
    user: Annotated[str, typer.Option("--user", help="The user to rank items for.")],
    k: Annotated[int, typer.Option("-k", help="How many items to return.")] = 10,
    candidates: Annotated[int, typer.Option("--candidates", help="Candidates retrieved from FAISS.")] = 100,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Only items of this category.")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="Which trained model scores (deep_lm, lr_lm, deep_ids_stats).")
    ] = "deep_lm",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Recommend: retrieve candidates from FAISS, fetch online features from Feast, score with the CTR model."""
    from llmfeat.ctr.score import Scorer

    cfg = _config(config, set_, data_dir)
    ranked = Scorer(cfg, model).recommend(user, k=k, candidates=candidates, categories=category)
    table = Table(
        title=f"top {k} for user {user} ({model}, from {candidates} candidates)", title_justify="left"
    )
    for col in ranked.columns:
        table.add_column(col, justify="right" if col in ("rank", "ctr", "retrieval_score") else "left")
    for row in ranked.itertuples(index=False):
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else _because(v) if isinstance(v, list) else str(v)
                        for v in row])  # fmt: skip
    console.print(table)


@command("show-config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print the effective configuration (defaults + file + overrides), checked as every command checks it."""
    console.print_json(json.dumps(_config(config, set_, data_dir).to_dict()))


def _register_bandit() -> None:
    from llmfeat.bandit.cli import bandit_app

    app.add_typer(bandit_app, name="bandit")


_register_bandit()

if __name__ == "__main__":
    app()
