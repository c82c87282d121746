"""The processes and the stack: `trace up|demo|dispatcher|worker|sink|deliver|api|
query-service`, and the database: `trace migrate`, `trace db start|stop`."""

from __future__ import annotations

import sys

import click

from trace_platform.cli.common import handle_errors, run_async, settings_from, trace_command
from trace_platform.config import Settings


def _setup_logs(settings: Settings, process: str) -> None:
    from trace_platform import logs

    logs.configure(process, settings.log_level)


@click.command()
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


@click.group()
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


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="[env TRACE_API_PORT]")
@click.pass_context
@handle_errors
def api(ctx: click.Context, port: int | None) -> None:
    """Run the user API (/v1/*, API keys and roles) and the web console (/ui)."""
    settings = settings_from(ctx, api_port=port)
    _setup_logs(settings, "api")
    from trace_platform.api.app import run_api

    run_api(settings)


@click.command()
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
        trace = trace_command()
        click.echo(
            f"\ntrace is up — TRACE_HOME={settings.home.resolve()}\n"
            f"  dispatcher  {base}   (API docs {base}/docs, metrics {base}/metrics)\n"
            f"  console     http://127.0.0.1:{settings.api_port}/ui   (user API"
            f" http://127.0.0.1:{settings.api_port}/v1, docs /docs; log in with a key from"
            f" `{trace} user create NAME --role admin`)\n"
            f"  objects     {settings.resolved_object_store_url}\n"
            f"  try: {trace} task create --payload"
            ' \'{"operator": "emit_alerts", "count": 5}\''
            f"  then: {trace} status\n",
            err=True,
        )

    run_async(run_stack(settings, workers, ready))


@click.command()
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
    click.echo(format_summary(summary, trace_command()))
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


@click.command("query-service")
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
