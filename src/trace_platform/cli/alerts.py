"""`trace alert ...`: alert definitions and their events (SPEC §12)."""

from __future__ import annotations

import uuid
from typing import Any

import click
import orjson

from trace_platform.cli.chains import ORG_OPTION, _org
from trace_platform.cli.common import handle_errors, run_async, settings_from


@click.group()
def alert() -> None:
    """Alerts over synced chain data: definitions, events and webhook deliveries."""


@alert.command("list")
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def alert_list(ctx: click.Context, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Every alert of the org: source dataset, rule kind, start block, enabled."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.alerts import list_alerts

    async def go() -> list[dict[str, Any]]:
        async with state_pool(settings) as pool:
            return await list_alerts(pool, _org(org_id))

    rows = run_async(go())
    if as_json:
        click.echo(orjson.dumps(rows, default=str).decode())
        return
    if not rows:
        click.echo("no alerts (apply a kind: alert spec with `trace apply FILE`)")
    for r in rows:
        state = "enabled" if r["enabled"] else "disabled"
        click.echo(
            f"{r['name']:<24} {r['dataset']:<32} {r['spec']['severity']:<8} from block"
            f" {r['start_block']:<8} {state}"
        )


@alert.command("events")
@click.argument("name")
@ORG_OPTION
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def alert_events(
    ctx: click.Context, name: str, org_id: uuid.UUID | None, limit: int, as_json: bool
) -> None:
    """The events of alert NAME, oldest block first."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import both_pools
    from trace_platform.ops.alerts import alert_events as collect

    async def go() -> list[dict[str, Any]]:
        async with both_pools(settings) as (state, data):
            return await collect(state, data, _org(org_id), name, limit)

    rows = run_async(go())
    if as_json:
        click.echo(orjson.dumps(rows, default=str).decode())
        return
    for r in rows:
        click.echo(f"block {r['block_number']:<8} {r['tx_hash']}  {r['event_time']:%F %T}")
    click.echo(f"({len(rows)} event{'s' if len(rows) != 1 else ''})", err=True)


@alert.command("show")
@click.argument("name")
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def alert_show(ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Alert NAME: its rule and channels, evaluations, events and deliveries by status."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import both_pools
    from trace_platform.ops.alerts import show_alert

    async def go() -> dict[str, Any]:
        async with both_pools(settings) as (state, data):
            return await show_alert(state, data, _org(org_id), name)

    info = run_async(go())
    if as_json:
        click.echo(orjson.dumps(info, default=str).decode())
        return
    spec = info["spec"]
    rule = spec["rule"]
    click.echo(f"alert {info['name']} ({'enabled' if info['enabled'] else 'disabled'})")
    click.echo(f"  source     {spec['source']['dataset']} from block {info['start_block']}")
    if rule.get("sql"):
        click.echo(f"  rule       sql: {' '.join(rule['sql'].split())[:200]}")
    else:
        click.echo(f"  rule       udf: bundle {rule['udf']['bundle_id']}")
    click.echo(f"  identity   {', '.join(spec['identity'])}   severity {spec['severity']}")
    for i, ch in enumerate(spec.get("channels", [])):
        secret = f"  signed with ${ch['secret_env']}" if ch.get("secret_env") else ""
        click.echo(f"  channel {i}  {ch['type']} {ch['url']}{secret}")
    ev = ", ".join(f"{k} {v}" for k, v in sorted(info["evaluations"].items())) or "none"
    dv = ", ".join(f"{k} {v}" for k, v in sorted(info["deliveries"].items())) or "none"
    click.echo(f"  evaluations {ev}")
    click.echo(f"  events     {info['events']}")
    click.echo(f"  deliveries {dv}")


@alert.command("deliveries")
@click.argument("name")
@ORG_OPTION
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
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
    settings = settings_from(ctx)
    from trace_platform.cli_support import both_pools
    from trace_platform.ops.alerts import alert_deliveries as collect

    async def go() -> list[dict[str, Any]]:
        async with both_pools(settings) as (state, data):
            return await collect(state, data, _org(org_id), name, status, limit)

    rows = run_async(go())
    if as_json:
        click.echo(orjson.dumps(rows, default=str).decode())
        return
    for r in rows:
        code = r["last_status_code"] if r["last_status_code"] is not None else "-"
        click.echo(
            f"{r['delivery_id']}  ch{r['channel']} {r['status']:<9} attempts"
            f" {r['attempts']}/{r['max_attempts']}  last {code}  block {r['block_number']}"
            + (f"  {r['last_error']}" if r["last_error"] else "")
        )
        for a in r["attempt_log"]:
            click.echo(
                f"    #{a['attempt']} {a['started_at']:%F %T} {a['outcome']:<9}"
                f" {a['status_code'] if a['status_code'] is not None else '-'}"
                f" {a['duration_ms']} ms" + (f"  {a['error']}" if a["error"] else "")
            )
    click.echo(f"({len(rows)} deliver{'ies' if len(rows) != 1 else 'y'})", err=True)


@click.group()
def delivery() -> None:
    """Webhook deliveries: retry a failed one."""


@delivery.command("retry")
@click.argument("delivery_id", type=click.UUID)
@ORG_OPTION
@click.option(
    "--attempts",
    type=click.IntRange(1, 100),
    default=None,
    help="Attempt budget of the retry [default TRACE_DELIVERY_MAX_ATTEMPTS].",
)
@click.pass_context
@handle_errors
def delivery_retry(
    ctx: click.Context, delivery_id: uuid.UUID, org_id: uuid.UUID | None, attempts: int | None
) -> None:
    """Deliver DELIVERY_ID again now (a failed one; a delivered one is left alone)."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import both_pools
    from trace_platform.ops.alerts import retry_delivery

    async def go() -> dict[str, Any]:
        async with both_pools(settings) as (_state, data):
            return await retry_delivery(
                data, _org(org_id), delivery_id, attempts or settings.delivery_max_attempts
            )

    row = run_async(go())
    click.echo(
        f"delivery {row['delivery_id']}: pending again (attempts {row['attempts']}"
        f" of {row['max_attempts']})"
    )
