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
    """Alerts over synced chain data: list them and their events."""


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
    from trace_platform.db.embedded import resolve_databases
    from trace_platform.db.pool import create_pool
    from trace_platform.ops.alerts import alert_events as collect

    async def go() -> list[dict[str, Any]]:
        urls = await resolve_databases(settings)
        state = await create_pool(urls.state, max_size=1)
        data = await create_pool(urls.data, max_size=1)
        try:
            return await collect(state, data, _org(org_id), name, limit)
        finally:
            await state.close()
            await data.close()

    rows = run_async(go())
    if as_json:
        click.echo(orjson.dumps(rows, default=str).decode())
        return
    for r in rows:
        click.echo(f"block {r['block_number']:<8} {r['tx_hash']}  {r['event_time']:%F %T}")
    click.echo(f"({len(rows)} event{'s' if len(rows) != 1 else ''})", err=True)
