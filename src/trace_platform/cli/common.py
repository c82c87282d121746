"""What the CLI's verb modules share: settings from flags, the ops environment of one
command, the common options (`--org-id`, `--json`), JSON output and error handling."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import shutil
import sys
import types
import typing
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import click
import orjson

from trace_platform.config import Settings
from trace_platform.domain.errors import ConfigError, TraceError
from trace_platform.ops.env import OpsEnv, open_env
from trace_platform.ports import LITE_ORG_ID

if TYPE_CHECKING:  # (the SDK and its HTTP client load only for a remote verb)
    from trace_platform.sdk import Client

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


def trace_command() -> str:
    """How this user runs the CLI, for the commands a message suggests: `trace` when that is
    what PATH finds, else this installation's script as a path that works from here
    (`.venv/bin/trace` in a checkout whose venv is not activated). From `sys.argv[0]`, or
    beside the interpreter under `python -m trace_platform`."""
    invoked = Path(sys.argv[0])
    script = invoked if invoked.name == "trace" else Path(sys.executable).parent / "trace"
    if not script.is_file():
        return "trace"
    found = shutil.which("trace")
    if found is not None and Path(found).resolve() == script.resolve():
        return "trace"
    relative = os.path.relpath(script.absolute())
    return (
        relative if not relative.startswith("..") and os.sep in relative else str(script.absolute())
    )


def settings_from(ctx: click.Context, **local: Any) -> Settings:
    overrides = dict(ctx.find_root().obj or {})
    overrides.update({k: v for k, v in local.items() if v is not None})
    return Settings.load(overrides)


def run_async(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def from_json(cls: Any, value: Any) -> Any:
    """A result dataclass (or list, optional, UUID, datetime) from its /v1 JSON, so that a
    remote verb renders what the local one does."""
    if value is None:
        return None
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(cls) if a is not type(None)]
        return from_json(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(cls) or (Any,)
        return [from_json(item, v) for v in value]
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        hints = typing.get_type_hints(cls)
        return cls(
            **{
                f.name: from_json(hints[f.name], value.get(f.name))
                for f in dataclasses.fields(cls)
                if f.name in value or f.default is dataclasses.MISSING
            }
        )
    if cls is uuid.UUID:
        return uuid.UUID(str(value))
    if cls is datetime:
        return datetime.fromisoformat(str(value))
    return value


def remote_client(ctx: click.Context) -> Client | None:
    """The user API client when TRACE_API_URL (--api-url) is set: verbs then call that
    deployment's /v1 with TRACE_API_KEY instead of a local home."""
    settings = settings_from(ctx)
    if not settings.api_url:
        return None
    if not settings.api_key:
        raise ConfigError("TRACE_API_URL is set but TRACE_API_KEY (--api-key) is not")
    try:
        from trace_platform.sdk import Client

        return Client(settings.api_url, settings.api_key, timeout=settings.api_timeout_seconds)
    except ValueError as exc:
        raise ConfigError(f"TRACE_API_URL: {exc}") from None


def run_ops(
    ctx: click.Context,
    op: Callable[[OpsEnv], Awaitable[T]],
    remote: Callable[[Client], T] | None = None,
) -> T:
    """Run one operation with this command's environment (opened, then closed), or, with
    TRACE_API_URL set, its `remote` call of the user API. A verb reports through its output
    and exit code: only errors are logged (stderr, JSON)."""
    from trace_platform import logs

    client = remote_client(ctx)
    if client is not None:
        if remote is None:
            raise ConfigError(
                f"`trace {ctx.command_path.partition(' ')[2]}` works on a local installation"
                " only; unset TRACE_API_URL"
            )
        with client:
            return remote(client)
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
