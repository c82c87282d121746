"""What the CLI's verb modules share: settings from flags, the ops environment of one
command, the common options (`--org-id`, `--json`), JSON output and error handling."""

from __future__ import annotations

import asyncio
import functools
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import click
import orjson

from trace_platform.config import Settings
from trace_platform.domain.errors import TraceError
from trace_platform.ops.env import OpsEnv, open_env
from trace_platform.ports import LITE_ORG_ID

T = TypeVar("T")

org_option = click.option(
    "--org-id",
    "org_id",
    type=click.UUID,
    default=None,
    help="The org to act in (default: the Lite org).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (the document the /v1 API returns)."
)


def org_of(org_id: uuid.UUID | None) -> uuid.UUID:
    return org_id or LITE_ORG_ID


def settings_from(ctx: click.Context, **local: Any) -> Settings:
    overrides = dict(ctx.find_root().obj or {})
    overrides.update({k: v for k, v in local.items() if v is not None})
    return Settings.load(overrides)


def run_async(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def run_ops(ctx: click.Context, op: Callable[[OpsEnv], Awaitable[T]]) -> T:
    """Run one operation with this command's environment (opened, then closed). A verb
    reports through its output and exit code: only errors are logged (stderr, JSON)."""
    from trace_platform import logs

    settings = settings_from(ctx)
    logs.configure("cli", "error")

    async def go() -> T:
        async with open_env(settings) as env:
            return await op(env)

    return run_async(go())


def dumps(value: Any) -> str:
    """JSON of an operation's result, exactly as the /v1 API encodes it."""
    return orjson.dumps(value, default=str).decode()


def emit(value: T, as_json: bool, render: Callable[[T], str]) -> None:
    click.echo(dumps(value) if as_json else render(value))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TraceError as exc:
            click.echo(f"error: {exc.detail}", err=True)
            sys.exit(1 if exc.status in (404, 409) else 2)
        except asyncpg.UndefinedTableError:
            click.echo("error: the database has no Trace schema; run `trace migrate`", err=True)
            sys.exit(2)
        except (OSError, asyncpg.PostgresError) as exc:
            click.echo(f"error: database unreachable or failing ({type(exc).__name__})", err=True)
            sys.exit(2)

    return wrapper
