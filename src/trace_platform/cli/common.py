"""Helpers shared by the CLI's verb modules: settings from flags, async entry, errors."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import click

from trace_platform.config import Settings
from trace_platform.domain.errors import TraceError

T = TypeVar("T")


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
        except asyncpg.UndefinedTableError:
            click.echo("error: the database has no Trace schema; run `trace migrate`", err=True)
            sys.exit(2)
        except (OSError, asyncpg.PostgresError) as exc:
            click.echo(f"error: database unreachable or failing ({type(exc).__name__})", err=True)
            sys.exit(2)

    return wrapper
