"""`trace alert ...` and `trace delivery ...`: alerts, their events and deliveries (SPEC §12)."""

from __future__ import annotations

import uuid

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
from trace_platform.ops import alerts as ops
from trace_platform.sdk import Client


@click.group()
def alert() -> None:
    """Alerts over synced chain data: definitions, events and webhook deliveries."""


@alert.command("list")
@org_option
@json_option
@click.pass_context
@handle_errors
def alert_list(ctx: click.Context, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Every alert of the org: source dataset, severity, start block, enabled."""
    rows = run_ops(
        ctx,
        lambda env: ops.list_alerts(env, org_of(org_id)),
        remote=lambda api: from_json(list[ops.AlertSummary], api.alerts()),
    )
    emit(rows, as_json, render.alerts)


@alert.command("events")
@click.argument("name")
@org_option
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
@click.pass_context
@handle_errors
def alert_events(
    ctx: click.Context, name: str, org_id: uuid.UUID | None, limit: int, as_json: bool
) -> None:
    """The events of alert NAME, oldest block first."""
    rows = run_ops(
        ctx,
        lambda env: ops.alert_events(env, org_of(org_id), name, limit),
        remote=lambda api: from_json(list[ops.AlertEvent], api.alert_events(name, limit)),
    )
    if rows or as_json:
        emit(rows, as_json, render.alert_events)
    click.echo(f"({render.plural(len(rows), 'event')})", err=True)


@alert.command("show")
@click.argument("name")
@org_option
@json_option
@click.pass_context
@handle_errors
def alert_show(ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Alert NAME: its rule and channels, evaluations, events and deliveries by status."""
    info = run_ops(
        ctx,
        lambda env: ops.show_alert(env, org_of(org_id), name),
        remote=lambda api: from_json(ops.AlertDetail, api.alert(name)),
    )
    emit(info, as_json, render.alert_detail)


@alert.command("deliveries")
@click.argument("name")
@org_option
@click.option("--status", type=click.Choice(ops.DELIVERY_STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_context
@handle_errors
def alert_deliveries(
    ctx: click.Context,
    name: str,
    org_id: uuid.UUID | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Webhook deliveries of alert NAME, newest first, with every attempt."""
    rows = run_ops(
        ctx,
        lambda env: ops.alert_deliveries(env, org_of(org_id), name, status, limit),
        remote=lambda api: from_json(list[ops.Delivery], api.alert_deliveries(name, status, limit)),
    )
    if rows or as_json:
        emit(rows, as_json, render.deliveries)
    click.echo(f"({render.plural(len(rows), 'delivery', 'deliveries')})", err=True)


@click.group()
def delivery() -> None:
    """Webhook deliveries: retry a failed one."""


@delivery.command("retry")
@click.argument("delivery_id", type=click.UUID)
@org_option
@click.option(
    "--attempts",
    type=click.IntRange(1, 100),
    default=None,
    help="Attempt budget of the retry [default TRACE_DELIVERY_MAX_ATTEMPTS].",
)
@json_option
@click.pass_context
@handle_errors
def delivery_retry(
    ctx: click.Context,
    delivery_id: uuid.UUID,
    org_id: uuid.UUID | None,
    attempts: int | None,
    as_json: bool,
) -> None:
    """Deliver DELIVERY_ID again now (a failed one; a delivered one is left alone)."""

    def remote(api: Client) -> ops.DeliveryRetried:
        if attempts is not None:
            raise ValidationError("--attempts works on a local installation only")
        retried: ops.DeliveryRetried = from_json(
            ops.DeliveryRetried, api.retry_delivery(delivery_id)
        )
        return retried

    row = run_ops(
        ctx,
        lambda env: ops.retry_delivery(env, org_of(org_id), delivery_id, attempts),
        remote=remote,
    )
    emit(
        row,
        as_json,
        lambda r: (
            f"delivery {r.delivery_id}: pending again (attempts {r.attempts} of {r.max_attempts})"
        ),
    )
