"""The one CLI: a sub-command per process and per admin verb.

Global settings come first: `trace --lease-seconds 5 dispatcher`. Each has a TRACE_* env var.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from trace_platform.cli.common import handle_errors, run_async, settings_from
from trace_platform.config import SETTINGS, Settings
from trace_platform.domain.errors import ValidationError


def _settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting as a global flag. They work before any sub-command but stay out of the
    first screen: `trace config` lists them with their sources and effective values."""
    for s in reversed(SETTINGS):
        kind: Any = click.Path(path_type=Path) if s.kind is Path else s.kind
        fn = click.option(
            s.flag, s.name, type=kind, default=None, hidden=True, help=f"{s.help} [env {s.env}]"
        )(fn)
    return fn


COMMAND_GROUPS = (
    (
        "Run the stack",
        (
            "up",
            "demo",
            "dispatcher",
            "worker",
            "sink",
            "deliver",
            "query-service",
            "api",
            "migrate",
            "db",
        ),
    ),
    (
        "Operate",
        (
            "status",
            "apply",
            "chain",
            "alert",
            "delivery",
            "user",
            "task",
            "dataset",
            "dlq",
            "config",
        ),
    ),
    ("Build", ("bundle", "tools")),
)


class TraceGroup(click.Group):
    """Commands first, in groups; settings are documented once, by `trace config`."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed: set[str] = set()
        for title, names in COMMAND_GROUPS:
            rows = []
            for name in names:
                cmd = self.get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=80)))
                    listed.add(name)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [
            (n, c.get_short_help_str(limit=80))
            for n in self.list_commands(ctx)
            if n not in listed and (c := self.get_command(ctx, n)) is not None and not c.hidden
        ]
        if rest:
            with formatter.section("Other"):
                formatter.write_dl(rest)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text(
            "Settings: every TRACE_* environment variable also has a global flag that goes"
            " before the command (trace --lease-seconds 5 worker). `trace config` lists them"
            " all with their source and effective value. `trace COMMAND --help` for a command."
        )


def _setup_logs(settings: Settings, process: str) -> None:
    from trace_platform import logs

    logs.configure(process, settings.log_level)


@click.group(
    cls=TraceGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@_settings_options
@click.version_option(package_name="trace-platform")
@click.pass_context
def cli(ctx: click.Context, /, **overrides: Any) -> None:
    """Trace: sync chains into Parquet datasets, run reliable ETL tasks and sandboxed UDFs
    and SQL over them.

    Quick start: `trace demo` (a local stack, a sample workload and a synced devnet chain),
    then `trace up` to keep the stack running and `trace status` to look at it.
    """
    ctx.obj = overrides


# -- database -----------------------------------------------------------------------------


@cli.command()
@click.pass_context
@handle_errors
def migrate(ctx: click.Context) -> None:
    """Apply pending migrations to the state and data databases (idempotent)."""
    settings = settings_from(ctx)
    _setup_logs(settings, "migrate")
    from trace_platform.db.embedded import resolve_databases
    from trace_platform.db.migrate import migrate_databases

    async def go() -> None:
        urls = await resolve_databases(settings, create=True)
        applied = await migrate_databases(urls.state, urls.data)
        for component, done in applied.items():
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in done) or "up to date"
            click.echo(f"{component}: {names}")

    run_async(go())


@cli.group()
def db() -> None:
    """Embedded PostgreSQL (Lite) management."""


@db.command("start")
@click.pass_context
@handle_errors
def db_start(ctx: click.Context) -> None:
    """Start (creating it on first use) the embedded PostgreSQL under TRACE_HOME, migrated."""
    settings = settings_from(ctx)
    from trace_platform.db.embedded import resolve_databases

    urls = run_async(resolve_databases(settings, create=True))
    click.echo(f"embedded postgres ready under {settings.home.resolve() / 'postgres'}")
    if urls.embedded:
        click.echo(f"state: {urls.state}")


@db.command("stop")
@click.pass_context
@handle_errors
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded PostgreSQL under TRACE_HOME."""
    settings = settings_from(ctx)
    from trace_platform.db.embedded import stop_embedded

    stop_embedded(settings.home.resolve() / "postgres")
    click.echo("embedded postgres stopped")


# -- processes ---------------------------------------------------------------------------


@cli.command()
@click.option("--host", default=None, help="Bind address [env TRACE_HOST].")
@click.option("--port", type=int, default=None, help="Port [env TRACE_PORT].")
@click.pass_context
@handle_errors
def dispatcher(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the dispatcher: HTTP API + outbox drainer + retry scheduler + lease reaper."""
    settings = settings_from(ctx, host=host, port=port)
    _setup_logs(settings, "dispatcher")
    from trace_platform.dispatcher.app import run_dispatcher

    run_dispatcher(settings)


@cli.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=None,
    help="Tasks run at once [env TRACE_WORKER_CONCURRENCY].",
)
@click.pass_context
@handle_errors
def worker(ctx: click.Context, concurrency: int | None) -> None:
    """Run a worker: poll task_wakeup, claim, run the operator, publish, complete."""
    settings = settings_from(ctx, worker_concurrency=concurrency)
    _setup_logs(settings, "worker")
    from trace_platform.worker.app import run_worker

    run_worker(settings)


@cli.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=None,
    help="Batches ingested at once [env TRACE_SINK_CONCURRENCY].",
)
@click.pass_context
@handle_errors
def sink(ctx: click.Context, concurrency: int | None) -> None:
    """Run the sink: validate buffer batches, upsert alert_events idempotently, DLQ poison."""
    settings = settings_from(ctx, sink_concurrency=concurrency)
    _setup_logs(settings, "sink")
    from trace_platform.sink.app import run_sink

    run_sink(settings)


@cli.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=None,
    help="Webhook requests at once [env TRACE_DELIVERY_CONCURRENCY].",
)
@click.option(
    "--allow-private/--no-allow-private",
    default=None,
    help="Lite only: allow http:// and private addresses [env TRACE_DELIVERY_ALLOW_PRIVATE].",
)
@click.pass_context
@handle_errors
def deliver(ctx: click.Context, concurrency: int | None, allow_private: bool | None) -> None:
    """Run the delivery process: signed webhooks for alert events, retried, SSRF-guarded."""
    settings = settings_from(
        ctx, delivery_concurrency=concurrency, delivery_allow_private=allow_private
    )
    _setup_logs(settings, "deliver")
    from trace_platform.delivery.app import run_deliver

    run_deliver(settings)


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="[env TRACE_API_PORT]")
@click.pass_context
@handle_errors
def api(ctx: click.Context, port: int | None) -> None:
    """Run the user API (/v1/*, API keys and roles) and the web console (/ui)."""
    settings = settings_from(ctx, api_port=port)
    _setup_logs(settings, "api")
    from trace_platform.api.app import run_api

    run_api(settings)


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes to run.",
)
@click.pass_context
@handle_errors
def up(ctx: click.Context, workers: int) -> None:
    """Run the whole Lite stack: embedded Postgres, dispatcher, worker(s), sink (Ctrl-C stops)."""
    settings = settings_from(ctx)
    _setup_logs(settings, "stack")
    from trace_platform.stack import run_stack

    def ready() -> None:
        base = settings.resolved_dispatcher_url
        click.echo(
            f"\ntrace is up — TRACE_HOME={settings.home.resolve()}\n"
            f"  dispatcher  {base}   (API docs {base}/docs, metrics {base}/metrics)\n"
            f"  console     http://127.0.0.1:{settings.api_port}/ui   (user API"
            f" http://127.0.0.1:{settings.api_port}/v1, docs /docs; log in with a key from"
            " `trace user create NAME --role admin`)\n"
            f"  objects     {settings.resolved_object_store_url}\n"
            '  try: trace task create --payload \'{"operator": "emit_alerts", "count": 5}\''
            "  then: trace status\n",
            err=True,
        )

    run_async(run_stack(settings, workers, ready))


@cli.command()
@click.option(
    "--tasks",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="emit_alerts tasks to submit.",
)
@click.option("--rows-per-task", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Give up waiting after this many seconds.",
)
@click.pass_context
@handle_errors
def demo(ctx: click.Context, tasks: int, rows_per_task: int, timeout: float) -> None:
    """Run a sample workload end to end (starting a local stack if none is running)."""
    settings = settings_from(ctx)
    _setup_logs(settings.replace(log_level="warning"), "demo")
    from trace_platform.demo import format_summary, run_demo

    summary = run_async(run_demo(settings, tasks, rows_per_task, timeout))
    click.echo(format_summary(summary))
    ok = (
        summary.completed == summary.tasks
        and summary.rows_inserted > 0
        # A part skipped for a missing tool says so (and how to get it); it is not a failure.
        and all(
            u.status == "skipped" or (u.status == "completed" and u.alerts == u.expected)
            for u in summary.udfs
        )
        and summary.chain.status in ("completed", "skipped")
    )
    sys.exit(0 if ok else 1)


# -- UDF bundles -------------------------------------------------------------------------


@cli.group()
def bundle() -> None:
    """Build, upload and list UDF bundles (Python or Node/TypeScript)."""


_LANG = click.Choice(["python", "node"])


@bundle.command("build")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--language", type=_LANG, required=True)
@click.option(
    "--entrypoint",
    default=None,
    help="module.function [python: handler.handler, node: index.handler].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Zip to write [default: SOURCE.zip].",
)
@click.pass_context
@handle_errors
def bundle_build(
    ctx: click.Context, source: Path, language: str, entrypoint: str | None, output: Path | None
) -> None:
    """Build a Lambda-style zip: TypeScript compiled with esbuild, dependencies vendored."""
    settings = settings_from(ctx)
    from trace_platform.bundles import build_bundle

    entry = entrypoint or ("handler.handler" if language == "python" else "index.handler")
    data = build_bundle(source, language, entry, settings.esbuild)
    out = output or source.with_suffix(".zip")
    out.write_bytes(data)
    import hashlib

    click.echo(f"{out}  {len(data)} bytes  sha256 {hashlib.sha256(data).hexdigest()}")


@bundle.command("upload")
@click.argument("zip_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--language", type=_LANG, required=True)
@click.option("--entrypoint", required=True, help="module.function, e.g. handler.handler")
@click.option("--org-id", type=click.UUID, default=None, help="Owning org (default: Lite org).")
@click.pass_context
@handle_errors
def bundle_upload(
    ctx: click.Context, zip_path: Path, language: str, entrypoint: str, org_id: uuid.UUID | None
) -> None:
    """Store a bundle (content-addressed, immutable) and print its bundle_id."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import upload_bundle

    reg = run_async(upload_bundle(settings, zip_path.read_bytes(), language, entrypoint, org_id))
    note = "" if reg.created else "  (already registered)"
    click.echo(f"{reg.bundle_id}{note}")
    click.echo(f"sha256 {reg.sha256}  {reg.size_bytes} bytes  {reg.storage_uri}", err=True)


@bundle.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.pass_context
@handle_errors
def bundle_list(ctx: click.Context, limit: int) -> None:
    """List registered bundles, newest first."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import list_bundles

    for b in run_async(list_bundles(settings, limit)):
        click.echo(
            f"{b['bundle_id']}  {b['language']:<6} {b['entrypoint']:<24} "
            f"{b['size_bytes']:>9} B  sha256 {b['sha256'][:16]}…  {b['created_at']:%F %T}"
        )


# -- dead-letter queue -----------------------------------------------------------------------


@cli.group()
def dlq() -> None:
    """Inspect, re-drive and purge dead-lettered buffer batches."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@handle_errors
def dlq_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List DLQ messages with their error and original pointer."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import list_dlq

    items = run_async(list_dlq(settings, limit))
    if as_json:
        for item in items:
            click.echo(orjson.dumps(item, default=str).decode())
        return
    if not items:
        click.echo("DLQ is empty")
    for item in items:
        original = item["payload"].get("original", {})
        click.echo(
            f"{item['message_id']}  deliveries={item['payload'].get('deliveries')}"
            f"  task={original.get('producer', {}).get('task_id')}"
            f"  error={item['payload'].get('error')}"
        )


@dlq.command("redrive")
@click.argument("message_ids", nargs=-1, type=click.UUID)
@click.option("--all", "all_", is_flag=True, help="Re-drive every DLQ message.")
@click.pass_context
@handle_errors
def dlq_redrive(ctx: click.Context, message_ids: tuple[uuid.UUID, ...], all_: bool) -> None:
    """Move DLQ messages back to buffer_queue (after fixing their batch)."""
    if bool(message_ids) == all_:
        raise ValidationError("give message ids or --all (not both)")
    settings = settings_from(ctx)
    from trace_platform.cli_support import redrive_dlq

    n = run_async(redrive_dlq(settings, None if all_ else list(message_ids)))
    click.echo(f"re-drove {n} message(s)")


@dlq.command("purge")
@click.argument("message_ids", nargs=-1, required=True, type=click.UUID)
@click.pass_context
@handle_errors
def dlq_purge(ctx: click.Context, message_ids: tuple[uuid.UUID, ...]) -> None:
    """Delete DLQ messages for good."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import purge_dlq

    n = run_async(purge_dlq(settings, list(message_ids)))
    click.echo(f"purged {n} message(s)")


@cli.command("query-service")
@click.option("--host", default=None, help="Bind address [env TRACE_HOST].")
@click.option("--port", type=int, default=None, help="Port [env TRACE_QUERY_PORT].")
@click.pass_context
@handle_errors
def query_service(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the query service: POST /v1/task/query (token- and SQL-gated DuckDB)."""
    settings = settings_from(ctx, host=host, query_port=port)
    _setup_logs(settings, "query")
    from trace_platform.query.app import run_query_service

    run_query_service(settings)


@cli.group()
def dataset() -> None:
    """Register and list datasets (Parquet, version-addressed)."""


@dataset.command("register")
@click.argument("name")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--org-id", type=click.UUID, default=None, help="Owning org (default: Lite org).")
@click.pass_context
@handle_errors
def dataset_register(
    ctx: click.Context, name: str, paths: tuple[Path, ...], org_id: uuid.UUID | None
) -> None:
    """Upload Parquet files as a new version of NAME; prints `uuid version`."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import register_dataset_files

    reg = run_async(register_dataset_files(settings, name, list(paths), org_id))
    note = "" if reg.created else "  (same content: existing version)"
    click.echo(f"{reg.dataset_uuid} {reg.dataset_version}{note}")


@dataset.command("list")
@click.pass_context
@handle_errors
def dataset_list(ctx: click.Context) -> None:
    """List datasets and their versions, newest first."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import list_dataset_versions

    for d in run_async(list_dataset_versions(settings)):
        click.echo(
            f"{d['name']:<24} {d['dataset_uuid']}  {d['dataset_version']}  "
            f"{d['files']} file(s)  {d['created_at']:%F %T}"
        )


@dataset.command("query")
@click.argument("name")
@click.argument("sql")
@click.option("--limit", type=int, default=None, help="Rows to return (1..10000, default 1000).")
@click.option("--org-id", type=click.UUID, default=None, help="Owning org (default: Lite org).")
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON.")
@click.option("--range", "block_range", default=None, help="Chain datasets: only blocks START:END.")
@click.pass_context
@handle_errors
def dataset_query(
    ctx: click.Context,
    name: str,
    sql: str,
    limit: int | None,
    org_id: uuid.UUID | None,
    as_json: bool,
    block_range: str | None,
) -> None:
    """Run SQL over the newest version of NAME (relation `dataset`; a chain dataset: every
    committed range) through the same gate and sandboxed executor as the query service: try
    a UDF's query before shipping it."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import query_dataset
    from trace_platform.ops.chains import check_block_range

    bounds = check_block_range(block_range) if block_range is not None else None
    result = run_async(query_dataset(settings, name, sql, limit, org_id, bounds))
    if as_json:
        click.echo(orjson.dumps(result).decode())
        return
    names = [c["name"] for c in result["columns"]]
    cells = [[_cell(v) for v in row] for row in result["rows"]]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    click.echo("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    more = " (truncated: raise --limit)" if result["truncated"] else ""
    click.echo(f"({len(cells)} row{'s' if len(cells) != 1 else ''}){more}", err=True)


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)


# -- tasks -------------------------------------------------------------------------------


@cli.group()
def task() -> None:
    """Create, list, inspect and cancel tasks."""


def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValidationError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object")
    return value


@task.command("create")
@click.option("--payload", required=True, help='Task payload JSON, e.g. \'{"operator": "noop"}\'.')
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    default=None,
    help="Attempts before the task fails for good [default TRACE_MAX_ATTEMPTS].",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    default=1,
    show_default=True,
    help="How many identical tasks to create.",
)
@click.option("--org-id", type=click.UUID, default=None, help="Owning org (default: the Lite org).")
@click.pass_context
@handle_errors
def task_create(
    ctx: click.Context, payload: str, max_attempts: int | None, count: int, org_id: uuid.UUID | None
) -> None:
    """Create tasks (rows + outbox wake-ups in one transaction); prints one task_id per line."""
    settings = settings_from(ctx)
    body = _parse_json_object(payload, "--payload")
    from trace_platform.cli_support import create_tasks

    ids = run_async(create_tasks(settings, body, count, max_attempts, org_id))
    out = sys.stdout
    out.write("".join(f"{i}\n" for i in ids))


@task.command("list")
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "completed", "failed", "canceled"]),
    default=None,
)
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
@click.option("--org-id", type=click.UUID, default=None, help="Owning org (default: the Lite org).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with next_cursor).")
@click.pass_context
@handle_errors
def task_list(
    ctx: click.Context,
    status: str | None,
    limit: int,
    cursor: str | None,
    org_id: uuid.UUID | None,
    as_json: bool,
) -> None:
    """Tasks, newest first, a page at a time (the same call as GET /v1/tasks)."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.tasks import list_tasks
    from trace_platform.ports import LITE_ORG_ID

    async def go() -> dict[str, Any]:
        async with state_pool(settings) as pool:
            return await list_tasks(pool, org_id or LITE_ORG_ID, status, cursor, limit)

    page = run_async(go())
    if as_json:
        click.echo(orjson.dumps(page, default=str).decode())
        return
    for t in page["tasks"]:
        error = f"  {t['last_error'][:80]}" if t["last_error"] else ""
        click.echo(
            f"{t['task_id']}  {t['status']:<9} {t['attempt']}/{t['max_attempts']}"
            f"  {t['created_at']:%F %T}  {t['operator'] or t['runtime'] or ''}{error}"
        )
    if page["next_cursor"]:
        click.echo(f"more: trace task list --cursor {page['next_cursor']}", err=True)


@task.command("show")
@click.argument("task_id", type=click.UUID)
@click.pass_context
@handle_errors
def task_show(ctx: click.Context, task_id: uuid.UUID) -> None:
    """Print one task as JSON."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import show_task

    view = run_async(show_task(settings, task_id))
    click.echo(orjson.dumps(view, default=str, option=orjson.OPT_INDENT_2).decode())


@task.command("cancel")
@click.argument("task_id", type=click.UUID)
@click.pass_context
@handle_errors
def task_cancel(ctx: click.Context, task_id: uuid.UUID) -> None:
    """Cancel a queued, running or failed task; later calls for it get 409."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import cancel_task

    result = run_async(cancel_task(settings, task_id))
    click.echo(f"canceled {result['task_id']} (attempt {result['attempt']})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Task counts per status, queue depths and ages, outbox backlog."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import collect_status, format_status

    report = run_async(collect_status(settings))
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_status(report))


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def config_command(ctx: click.Context, as_json: bool) -> None:
    """Every setting: env var, flag, source (default/env/flag) and effective value (secrets
    masked) — what a process started here would use."""
    import os

    settings = settings_from(ctx)
    flags = ctx.find_root().obj or {}
    rows = []
    for s in SETTINGS:
        value = getattr(settings, s.name)
        source = (
            "flag"
            if flags.get(s.name) is not None
            else ("env" if os.environ.get(s.env) not in (None, "") else "default")
        )
        shown = "—" if value is None else ("****" if s.secret else str(value))
        rows.append(
            {"env": s.env, "flag": s.flag, "source": source, "value": shown, "help": s.help}
        )
    for pool, _url in settings.rpc_pools:
        rows.append(
            {
                "env": Settings.rpc_pool_env(pool),
                "flag": "",
                "source": "env",
                "value": "**** (URLs carry API keys)",
                "help": f"JSON-RPC URL of pool {pool!r}",
            }
        )
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    width = max(len(r["env"]) for r in rows)
    for r in rows:
        click.echo(f"{r['env']:<{width}}  {r['source']:<7}  {r['value']:<28}  {r['help']}")


@cli.group()
def tools() -> None:
    """Node tools Trace runs: esbuild (TypeScript bundles) and anvil (the demo's devnet)."""


@tools.command("install")
@click.option(
    "--dir",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to install [default: ~/.local/share/trace/tools].",
)
@handle_errors
def tools_install(target: Path | None) -> None:
    """npm-install esbuild and anvil (needs Node.js 18+ with npm; a source checkout has them
    already after `make install`)."""
    from trace_platform.toolchain import TOOL_PACKAGES, install_tools

    click.echo("installing " + ", ".join(f"{k}@{v}" for k, v in TOOL_PACKAGES.items()) + " ...")
    where = install_tools(target)
    click.echo(f"installed under {where}")


@tools.command("status")
def tools_status() -> None:
    """Where each tool is found (or that it is missing)."""
    from trace_platform.toolchain import ANVIL, ESBUILD, find_tool

    for name, rel in (("esbuild", ESBUILD), ("anvil", ANVIL)):
        click.echo(f"{name:<8} {find_tool(rel) or 'missing: run `trace tools install`'}")


def _register_verb_groups() -> None:
    from trace_platform.cli import alerts, chains, users

    cli.add_command(chains.apply)
    cli.add_command(chains.chain)
    cli.add_command(alerts.alert)
    cli.add_command(alerts.delivery)
    cli.add_command(users.user)


_register_verb_groups()


def main() -> None:
    cli(prog_name="trace")


if __name__ == "__main__":
    main()
