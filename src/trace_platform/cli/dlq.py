"""`trace dlq ...`: the sink's dead-lettered batches (the calls behind /v1/dlq)."""

from __future__ import annotations

import uuid
from typing import Any

import click

from trace_platform.cli import render
from trace_platform.cli.common import (
    emit,
    from_json,
    handle_errors,
    json_option,
    org_of,
    org_option,
    run_ops,
)
from trace_platform.domain.errors import ValidationError
from trace_platform.ops import dlq as ops


@click.group()
def dlq() -> None:
    """Inspect, re-drive and purge dead-lettered buffer batches."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@org_option
@json_option
@click.pass_context
@handle_errors
def dlq_list(ctx: click.Context, limit: int, org_id: uuid.UUID | None, as_json: bool) -> None:
    """List the org's DLQ messages with their error and producing task."""
    items = run_ops(
        ctx,
        lambda env: ops.list_dlq(env, org_of(org_id), limit),
        remote=lambda api: from_json(list[ops.DlqMessage], api.dlq(limit)),
    )
    emit(items, as_json, render.dlq_messages)


def _moved(reply: dict[str, Any]) -> ops.Moved:
    ids = [uuid.UUID(i) for i in reply["message_ids"]]
    return ops.Moved(int(reply["redriven"]), ids)


@dlq.command("redrive")
@click.argument("message_ids", nargs=-1, type=click.UUID)
@click.option("--all", "all_", is_flag=True, help="Re-drive every DLQ message of the org.")
@org_option
@click.pass_context
@handle_errors
def dlq_redrive(
    ctx: click.Context, message_ids: tuple[uuid.UUID, ...], all_: bool, org_id: uuid.UUID | None
) -> None:
    """Move DLQ messages back to buffer_queue (after fixing their batch)."""
    if bool(message_ids) == all_:
        raise ValidationError("give message ids or --all (not both)")
    ids = None if all_ else list(message_ids)
    moved = run_ops(
        ctx,
        lambda env: ops.redrive_dlq(env, org_of(org_id), ids),
        remote=lambda api: _moved(api.redrive(None if ids is None else [str(i) for i in ids])),
    )
    click.echo(f"re-drove {moved.count} message(s)")


@dlq.command("purge")
@click.argument("message_ids", nargs=-1, required=True, type=click.UUID)
@org_option
@click.pass_context
@handle_errors
def dlq_purge(
    ctx: click.Context, message_ids: tuple[uuid.UUID, ...], org_id: uuid.UUID | None
) -> None:
    """Delete DLQ messages for good."""
    n = run_ops(ctx, lambda env: ops.purge_dlq(env, org_of(org_id), list(message_ids)))
    click.echo(f"purged {n} message(s)")
