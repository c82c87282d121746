"""The one CLI: a sub-command per process and per admin verb.

Global settings come first: `trace --lease-seconds 5 dispatcher`. Each has a TRACE_* env var.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from trace_platform.config import SETTINGS, Settings
from trace_platform.errors import TraceError, ValidationError

T = TypeVar("T")


def _settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for s in reversed(SETTINGS):
        kind: Any = click.Path(path_type=Path) if s.kind is Path else s.kind
        fn = click.option(s.flag, s.name, type=kind, default=None, help=f"{s.help} [env {s.env}]")(
            fn
        )
    return fn


def settings_from(ctx: click.Context, **local: Any) -> Settings:
    overrides = dict(ctx.find_root().obj or {})
    overrides.update({k: v for k, v in local.items() if v is not None})
    return Settings.load(overrides)


def run_async(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TraceError as exc:
            click.echo(f"error: {exc.detail}", err=True)
            sys.exit(1 if exc.status in (404, 409) else 2)

    return wrapper


def _setup_logs(settings: Settings, process: str) -> None:
    from trace_platform import logs

    logs.configure(process, settings.log_level)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_settings_options
@click.version_option(package_name="trace-platform")
@click.pass_context
def cli(ctx: click.Context, /, **overrides: Any) -> None:
    """Trace: reliable ETL tasks, untrusted UDFs, a trusted sink and sandboxed SQL.

    Quick start: `trace demo` (runs a local stack and a sample workload), `trace status`.
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
    from trace_platform.db.migrate import migrate as apply
    from trace_platform.db.pool import connect

    async def go() -> None:
        urls = await resolve_databases(settings)
        for component, url in (("state", urls.state), ("data", urls.data)):
            conn = await connect(url)
            try:
                applied = await apply(conn, component)
            finally:
                await conn.close()
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "up to date"
            click.echo(f"{component}: {names}")

    run_async(go())


@cli.group()
def db() -> None:
    """Embedded PostgreSQL (Lite) management."""


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


# -- tasks -------------------------------------------------------------------------------


@cli.group()
def task() -> None:
    """Create, inspect and cancel tasks."""


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


def main() -> None:
    cli(prog_name="trace")


if __name__ == "__main__":
    main()
