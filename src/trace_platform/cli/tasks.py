"""`trace task ...`: create, list, show and cancel tasks (the calls behind /v1/tasks)."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import click
import orjson

from trace_platform.cli import render
from trace_platform.cli.common import (
    dumps,
    emit,
    from_json,
    handle_errors,
    json_option,
    org_of,
    org_option,
    run_ops,
)
from trace_platform.domain.errors import ValidationError
from trace_platform.ops import tasks as ops


@click.group()
def task() -> None:
    """Create, list, inspect and cancel tasks."""


def parse_json_object(text: str, what: str) -> dict[str, Any]:
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
@org_option
@click.pass_context
@handle_errors
def task_create(
    ctx: click.Context, payload: str, max_attempts: int | None, count: int, org_id: uuid.UUID | None
) -> None:
    """Create tasks (rows + outbox wake-ups in one transaction); prints one task_id per line."""
    body = parse_json_object(payload, "--payload")
    ids = run_ops(
        ctx,
        lambda env: ops.create_tasks(env, org_of(org_id), body, count, max_attempts),
        remote=lambda api: [uuid.UUID(i) for i in api.create_tasks(body, count, max_attempts)],
    )
    sys.stdout.write("".join(f"{i}\n" for i in ids))


@task.command("list")
@click.option("--status", type=click.Choice(ops.TASK_STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, ops.MAX_PAGE), default=50, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
@org_option
@json_option
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
    page = run_ops(
        ctx,
        lambda env: ops.list_tasks(env, org_of(org_id), status, cursor, limit),
        remote=lambda api: from_json(ops.TaskPage, api.tasks(status, limit, cursor)),
    )
    emit(page, as_json, render.task_page)


@task.command("show")
@click.argument("task_id", type=click.UUID)
@org_option
@click.pass_context
@handle_errors
def task_show(ctx: click.Context, task_id: uuid.UUID, org_id: uuid.UUID | None) -> None:
    """Print one task as JSON (with its events)."""
    view = run_ops(
        ctx,
        lambda env: ops.show_task(env, org_of(org_id), task_id),
        remote=lambda api: from_json(ops.TaskDetail, api.task(task_id)),
    )
    click.echo(orjson.dumps(view, default=str, option=orjson.OPT_INDENT_2).decode())


@task.command("cancel")
@click.argument("task_id", type=click.UUID)
@org_option
@json_option
@click.pass_context
@handle_errors
def task_cancel(
    ctx: click.Context, task_id: uuid.UUID, org_id: uuid.UUID | None, as_json: bool
) -> None:
    """Cancel a queued, running or failed task; later calls for it get 409."""
    done = run_ops(
        ctx,
        lambda env: ops.cancel_task(env, org_of(org_id), task_id),
        remote=lambda api: from_json(ops.Canceled, api.cancel_task(task_id)),
    )
    if as_json:
        click.echo(dumps(done))
        return
    click.echo(f"canceled {done.task_id} (attempt {done.attempt})")
