"""The ``llmfeat`` command line. Each command parses options, builds the config and calls one stage."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmfeat.config import Config, ConfigError, load_config
from llmfeat.sources.raw import InputError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Text -> language-model features for recommenders."
)
console = Console(soft_wrap=True)


class Exit:
    """Process exit codes, so a scheduler can tell the cases apart."""

    OK = 0
    FAILURE = 1
    CONFIG_ERROR = 2
    INPUT_ERROR = 3
    """An input file is unusable (missing column, wrong format): nothing was written."""
    QUARANTINED = 4
    """The run completed, but some input rows were quarantined."""
    LOCKED = 5
    """Another run holds the data directory."""
    NOT_FOUND = 6
    """An id or category asked for is not in the index (or has no vector)."""


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
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc


def _date(value: str | None) -> dt.date:
    if value is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        console.print(f"[red]configuration error:[/red] --as-of {value!r} is not a date like 2024-01-31")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc


@app.command("fetch-demo")
def fetch_demo(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Download and verify MovieLens-100k (from the recbole wheel on the package registry)."""
    from llmfeat.demo_data import ensure_movielens_100k

    cfg = _config(config, set_)
    path = ensure_movielens_100k(cfg.paths.cache_dir)
    console.print(f"MovieLens-100k: {path}")


@app.command()
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
    from llmfeat.ingest import run_ingest

    extra = ([f"ingest.source={source}"] if source else []) + ([f"ingest.source_path={path}"] if path else [])
    cfg = _config(config, set_, data_dir, extra)
    try:
        result = run_ingest(cfg, _date(as_of))
    except InputError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    print_counts(f"ingest {result.source} -> snapshot {result.snapshot_date}", result.counts)
    for key, value in result.notes.items():
        console.print(f"  {key}: {value}")
    for name, out in result.outputs.items():
        console.print(f"  {name:<13} {out}")
    if result.quarantined:
        console.print(
            f"[yellow]{result.quarantined} row(s) quarantined[/yellow]: see {result.outputs['quarantine']}"
        )
        raise typer.Exit(Exit.QUARANTINED)


def print_counts(title: str, counts: dict[str, dict[str, int]]) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("table", "read", "kept", "quarantined", "reasons"):
        table.add_column(col, justify="left" if col in ("table", "reasons") else "right")
    for name, c in counts.items():
        reasons = ", ".join(f"{k}={v}" for k, v in c.items() if k not in ("read", "kept", "quarantined"))
        table.add_row(name, str(c["read"]), str(c["kept"]), str(c["quarantined"]), reasons or "-")
    console.print(table)


@app.command()
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
    from llmfeat.embed import ModelMismatchError, run_embed
    from llmfeat.spark import build_spark

    extra = []
    if model:
        extra.append(f"embed.model_dir={model}")
        if not any(s.strip().startswith("embed.embedding_set=") for s in set_ or []):
            # A model gets its own set, named after its directory, unless one is given (or it is the default).
            from llmfeat.embed import set_for_model

            extra.append(f"embed.embedding_set={set_for_model(model)}")
    cfg = _config(config, set_, data_dir, extra)
    day = _date(as_of)
    spark = build_spark(cfg.spark)
    try:
        manifest = run_embed(spark, cfg, day, snapshot_from=_date(from_) if from_ else None, every_days=every,
                             log=lambda m: console.print(f"[dim]{m}[/dim]"))  # fmt: skip
    except ModelMismatchError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except FileNotFoundError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
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


@app.command()
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
    from llmfeat.spark import build_spark
    from llmfeat.stats import run_stats

    cfg = _config(config, set_, data_dir)
    spark = build_spark(cfg.spark)
    try:
        manifest = run_stats(spark, cfg, _date(as_of), snapshot_from=_date(from_) if from_ else None, every_days=every,
                             log=lambda m: console.print(f"[dim]{m}[/dim]"))  # fmt: skip
    except FileNotFoundError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    finally:
        spark.stop()
    console.print(f"stats {manifest['as_of']}: rows written {manifest['counts']['written']}")
    console.print(f"  seconds: {manifest['seconds']}")
    for name, out in manifest["outputs"].items():
        console.print(f"  {name:<13} {out}")


@app.command()
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
    from llmfeat.publish import run_publish
    from llmfeat.spark import build_spark

    cfg = _config(config, set_, data_dir)
    spark = build_spark(cfg.spark)
    try:
        result = run_publish(cfg, _date(as_of), full=full, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    finally:
        spark.stop()
    console.print(f"published {len(result['feature_views'])} feature views to the {result['online_store']} online store "
                  f"until {result['materialized_until']} ({result['seconds']})")  # fmt: skip
    console.print(f"  feature_store.yaml: {result['feature_store_yaml']}")


@app.command()
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
        typer.Option("--inject-fault", hidden=True, help="Tests only: POINT[:kill|enospc] (llmfeat.faults)."),
    ] = None,
) -> None:
    """The whole pipeline for one date: idempotent, resumable, one run per data directory at a time."""
    from llmfeat.embed import ModelMismatchError
    from llmfeat.faults import Faults
    from llmfeat.nightly import LockedError, run_dir, run_nightly

    cfg = _config(config, set_, data_dir)
    day = _date(as_of)
    try:
        faults = Faults(inject_fault or ())
    except ValueError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    status = console.status("starting")
    current = {"stage": None}

    def on_stage(stage: str, state: str) -> None:
        if state == "running":
            current["stage"] = stage
            status.update(f"[bold]{stage}[/bold] ...")
        else:
            console.print(f"  {stage:<8} {state}")

    def failed(exc: BaseException, what: str) -> typer.Exit:
        import traceback

        stage = current["stage"] or "startup"
        console.print(traceback.format_exc(), markup=False, style="dim")
        console.print(f"[red]failure:[/red] stage {stage} failed: {what}: {exc}")
        console.print(f"  nothing of stage {stage} was published; fix the cause and run the same command "
                      f"again: it resumes at {stage} (markers in {run_dir(cfg, day)})")  # fmt: skip
        return typer.Exit(Exit.FAILURE)

    try:
        with status:
            summary = run_nightly(cfg, day, force=tuple(force or ()), until=until,
                                  log=lambda m: console.print(f"[dim]{m}[/dim]"), on_stage=on_stage,
                                  faults=faults)  # fmt: skip
    except LockedError as exc:
        console.print(f"[red]locked:[/red] {exc}")
        raise typer.Exit(Exit.LOCKED) from exc
    except (InputError, FileNotFoundError) as exc:  # before ValueError: an InputError is one
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    except (ConfigError, ModelMismatchError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except OSError as exc:  # a full disk, a lost mount, an unreachable service
        raise failed(exc, "write or connection failed") from exc
    except Exception as exc:  # noqa: BLE001 - the scheduler gets a one-line reason and the FAILURE code
        raise failed(exc, type(exc).__name__) from exc
    print_nightly_summary(summary, run_dir(cfg, day))
    if summary.quarantined:
        raise typer.Exit(Exit.QUARANTINED)


def _stage_line(stage: str, s: dict) -> str:
    if stage == "ingest":
        c = s.get("counts", {})
        return (
            ", ".join(f"{k} {v['kept']}" for k, v in c.items()) + f"; quarantined {s.get('quarantined', 0)}"
        )
    if stage == "embed":
        c = s.get("counts", {})
        parts = [f"{k}: encoded {v.get('encoded', 0)}, reused {v.get('reused', 0)}, written {v.get('written', 0)}"
                 for k, v in c.items() if "encoded" in v]  # fmt: skip
        return f"model {s.get('model_id')}; " + "; ".join(parts)
    if stage == "stats":
        return "rows written " + ", ".join(
            f"{k} {v}" for k, v in s.get("counts", {}).get("written", {}).items()
        )
    if stage == "publish":
        return f"{len(s.get('feature_views', []))} views -> {s.get('online_store')} until {s.get('materialized_until')}"
    if stage == "index":
        return f"version {s.get('version')}: {s.get('count')} items, {s.get('index', {}).get('factory')}"
    if stage == "train":
        if s.get("trained") is False:
            return f"not trained: {s.get('reason')}"
        heads = [
            f"{r['model']} {r['slice']} AUC {r['auc']:.3f}"
            for r in s.get("headline", [])
            if r["model"] in ("deep_lm", "deep_ids_stats")
        ]
        return "; ".join(heads) + f"; report {s.get('report')}"
    if stage == "adapt":
        return (f"set {s.get('embedding_set')}: {s.get('model_id')}; validation recall@20 {s.get('val_recall@20')}; "
                f"index {s.get('index_version')}")  # fmt: skip
    return json.dumps(s)[:100]


def print_nightly_summary(summary, markers) -> None:
    if summary.nothing_to_do:
        console.print(f"nightly {summary.as_of}: already finished; nothing to do (markers in {markers}).")
    table = Table(title=f"nightly {summary.as_of}  ({summary.seconds:.1f} s)", title_justify="left")
    for col in ("stage", "status", "seconds", "result"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for r in summary.results:
        seconds = f"{r.seconds:.1f}" if r.status == "done" else "-"
        table.add_row(r.stage, r.status, seconds, _stage_line(r.stage, r.summary) if r.summary else "-")
    console.print(table)
    console.print(f"  data directory: {summary.data_dir}")
    console.print(f"  run markers and summary: {markers}")


@app.command("index")
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
    from llmfeat.index import run_index
    from llmfeat.vectors import VectorTableError

    cfg = _config(config, set_, data_dir, [f"index.factory={factory}"] if factory else [])
    try:
        m = run_index(
            cfg, _date(as_of) if as_of else None, log=lambda msg: console.print(f"[dim]{msg}[/dim]")
        )
    except (FileNotFoundError, VectorTableError) as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    except ValueError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    table = Table(title=f"index {m['version']} (published)", title_justify="left", show_header=False)
    params = ", ".join(f"{k}={v}" for k, v in m["params"].items()) or "-"
    rows = [
        ("type", f"{m['index']['factory']} ({'exact' if m['index']['exact'] else 'approximate'})"),
        ("items", f"{m['count']} x {m['dim']}  model {m['model_id']}  as of {m['as_of']}"),
        ("params", params),
        (
            "recall@10",
            ", ".join(
                f"{name} {v} ({m['tuning']['queries'][name]} queries)"
                for name, v in m["tuning"]["recall"].items()
            )
            + " vs exact search",
        ),
        (
            "training",
            f"{m['training']['sample_size']} vectors, seed {m['training']['seed']}"
            if m["training"]["sample_size"]
            else "none (nothing to train)",
        ),
        (
            "seconds",
            f"{m['seconds']['total']}  ({', '.join(f'{k} {v}' for k, v in m['seconds'].items() if k != 'total')})",
        ),
        ("size", f"{sum(f['bytes'] for f in m['files'].values()) / 2**20:.1f} MiB"),
        ("path", m["path"]),
        ("pruned", ", ".join(m["pruned"]) or "-"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


@app.command()
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
    hybrid: Annotated[
        bool,
        typer.Option(
            "--hybrid",
            help="--user on an adapted set: cosine + the adapter's weight x log recent popularity.",
        ),
    ] = False,
) -> None:
    """Nearest neighbours from the published index: items for --user, or items similar to --item."""
    from llmfeat.index import CorruptIndexError, IndexModelMismatchError
    from llmfeat.retrieval import NotFoundError, Retriever

    cfg = _config(config, set_, data_dir, [f"serve.user_vectors={user_vectors}"] if user_vectors else [])
    if (user is None) == (item is None):
        console.print("[red]configuration error:[/red] give exactly one of --user and --item")
        raise typer.Exit(Exit.CONFIG_ERROR)
    if not 1 <= k <= cfg.serve.k_max:
        console.print(f"[red]configuration error:[/red] -k must be within 1..{cfg.serve.k_max} (serve.k_max)")
        raise typer.Exit(Exit.CONFIG_ERROR)
    try:
        r = Retriever.load(cfg, version=version)
        if hybrid:
            from llmfeat.retrieval import load_hybrid

            r = load_hybrid(cfg, r)
        if user is not None:
            res = r.for_user(user, k, category, exclude_seen=not include_seen, hybrid=hybrid)
        else:
            res = r.similar_items(item, k, category)
    except NotFoundError as exc:
        console.print(f"[red]not found:[/red] {exc}")
        raise typer.Exit(Exit.NOT_FOUND) from exc
    except (IndexModelMismatchError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except FileNotFoundError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    except CorruptIndexError as exc:
        console.print(f"[red]failure:[/red] {exc}")
        raise typer.Exit(Exit.FAILURE) from exc
    what = f"user {user}" if user is not None else f"items similar to {item}"
    table = Table(title=f"{what}  (index {res.index_version}, {res.method})", title_justify="left")
    for col, justify in (("#", "right"), ("item_id", "left"), ("score", "right"), ("title", "left")):
        table.add_column(col, justify=justify)
    for rank, (iid, score, title) in enumerate(zip(res.ids, res.scores, res.titles, strict=True), 1):
        table.add_row(str(rank), iid, f"{score:.4f}", title or "")
    console.print(table)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host, loopback).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Serve retrieval over HTTP (FastAPI); picks up newly published index versions without a restart."""
    import uvicorn

    from llmfeat.index import CorruptIndexError, IndexModelMismatchError
    from llmfeat.serve import RetrieverHolder, create_app

    extra = ([f"serve.host={host}"] if host else []) + ([f"serve.port={port}"] if port is not None else [])
    cfg = _config(config, set_, data_dir, extra)
    try:
        holder = RetrieverHolder.from_config(cfg)
    except (IndexModelMismatchError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except FileNotFoundError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    except CorruptIndexError as exc:
        console.print(f"[red]failure:[/red] {exc}")
        raise typer.Exit(Exit.FAILURE) from exc
    r = holder.get()
    console.print(
        f"serving index {r.version} ({r.count} items, {r.device}) on http://{cfg.serve.host}:{cfg.serve.port}"
    )
    app_ = create_app(holder, k_max=cfg.serve.k_max, reload_interval_s=cfg.serve.reload_interval_s)
    uvicorn.run(app_, host=cfg.serve.host, port=cfg.serve.port, log_level="info")


@app.command()
def train(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Snapshot date of the labelled interactions.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train and compare the CTR models on point-in-time Feast features; write the report."""
    from llmfeat.spark import build_spark
    from llmfeat.train import run_train

    cfg = _config(config, set_, data_dir)
    spark = build_spark(cfg.spark)
    try:
        with console.status("training ..."):
            summary = run_train(cfg, _date(as_of), log=lambda m: console.print(f"[dim]{m}[/dim]"))
    except ValueError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
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
    console.print(f"  report: {summary['report']}")
    console.print(f"  models: {Path(next(iter(summary['models'].values()), '.')).parent}")


@app.command()
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
    from llmfeat.evaluate import markdown, run_evaluate

    cfg = _config(config, set_, data_dir)
    try:
        report = run_evaluate(
            cfg, _date(as_of) if as_of else None, log=lambda m: console.print(f"[dim]{m}[/dim]")
        )
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except FileNotFoundError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    console.print(markdown(report))
    console.print(f"  report: {report['path']} ({report['seconds']} s)")


@app.command()
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
    from llmfeat.adapt import AdaptedSetMismatchError, run_adapt_stage

    cfg = _config(config, set_, data_dir)
    spark = None
    try:
        if publish:
            from llmfeat.spark import build_spark

            spark = build_spark(cfg.spark)
        summary = run_adapt_stage(
            cfg, _date(as_of), publish=publish, log=lambda m: console.print(f"[dim]{m}[/dim]")
        )
    except (ConfigError, AdaptedSetMismatchError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except FileNotFoundError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    finally:
        if spark is not None:
            spark.stop()
    console.print(f"adapted set {summary['embedding_set']}: {summary['model_id']}")
    console.print(
        f"  {summary['counts']}; validation recall@20 {summary.get('val_recall@20')}; hybrid {summary['hybrid']}"
    )
    console.print(f"  index {summary.get('index_version')}; seconds {summary['seconds']}")


@app.command()
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
    from llmfeat.finetune import run_finetune

    extra = [f"finetune.method={method}"] if method else []
    extra += [f"finetune.max_steps={max_steps}"] if max_steps is not None else []
    extra += [f"finetune.output_dir={output}"] if output else []
    cfg = _config(config, set_, data_dir, extra)
    try:
        card = run_finetune(cfg, _date(as_of), log=lambda m: console.print(f"[dim]{m}[/dim]"))
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except FileNotFoundError as exc:
        console.print(f"[red]input error:[/red] {exc}")
        raise typer.Exit(Exit.INPUT_ERROR) from exc
    console.print(
        f"fine-tuned {card['base_model_id']} ({card['method']}, {card['steps']} steps, best {card['best_step']}): "
        f"validation loss {card['val_loss_before']:.4f} -> {card['val_loss_after']:.4f}"
    )
    console.print(f"  model {card['model_id']}: {card['model_dir']}")
    console.print(
        f"  next: llmfeat embed --model {card['model_dir']}  (embedding set {Path(card['model_dir']).name})"
    )


@app.command()
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
    from llmfeat.retrieval import NotFoundError
    from llmfeat.score import Scorer, ScoringModelError

    cfg = _config(config, set_, data_dir)
    try:
        ranked = Scorer(cfg, model).recommend(user, k=k, candidates=candidates, categories=category)
    except ScoringModelError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(Exit.CONFIG_ERROR) from exc
    except NotFoundError as exc:
        console.print(f"[red]not found:[/red] {exc}")
        raise typer.Exit(Exit.NOT_FOUND) from exc
    table = Table(
        title=f"top {k} for user {user} ({model}, from {candidates} candidates)", title_justify="left"
    )
    for col in ranked.columns:
        table.add_column(col, justify="right" if col in ("rank", "ctr", "retrieval_score") else "left")
    for row in ranked.itertuples(index=False):
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command("show-config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective configuration (defaults + file + overrides)."""
    console.print_json(json.dumps(_config(config, set_).to_dict()))


if __name__ == "__main__":
    app()
