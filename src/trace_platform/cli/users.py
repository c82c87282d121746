"""`trace user ...`: users of the /v1 API and the console, with API keys (SPEC §13)."""

from __future__ import annotations

import uuid
from typing import Any

import click
import orjson

from trace_platform.cli.chains import ORG_OPTION, _org
from trace_platform.cli.common import handle_errors, run_async, settings_from


@click.group()
def user() -> None:
    """Users of the API and the console: create (prints the key once), list, revoke."""


@user.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["reader", "writer", "admin"]),
    required=True,
    help="What it may do.",
)
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def user_create(
    ctx: click.Context, name: str, role: str, org_id: uuid.UUID | None, as_json: bool
) -> None:
    """Create user NAME and print its API key: shown this once, stored only as a hash.
    reader: status, tasks, datasets, query, alerts; writer: + apply specs, upload bundles,
    create tasks; admin: + users, cancel, DLQ redrive."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.users import create_user

    async def go() -> tuple[dict[str, Any], str]:
        async with state_pool(settings) as pool:
            return await create_user(pool, _org(org_id), name, role)

    row, key = run_async(go())
    if as_json:
        click.echo(orjson.dumps(row | {"api_key": key}, default=str).decode())
        return
    click.echo(f"user {row['name']} ({row['role']}) created; its API key (shown once):")
    click.echo(key)
    click.echo(
        f"use it as `Authorization: Bearer <key>` on /v1/*, or log in to the console at"
        f" http://127.0.0.1:{settings.api_port}/ui",
        err=True,
    )


@user.command("list")
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def user_list(ctx: click.Context, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Users of the org (key prefixes only)."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.users import list_users

    async def go() -> list[dict[str, Any]]:
        async with state_pool(settings) as pool:
            return await list_users(pool, _org(org_id))

    rows = run_async(go())
    if as_json:
        click.echo(orjson.dumps(rows, default=str).decode())
        return
    if not rows:
        click.echo("no users (create one with `trace user create NAME --role admin`)")
    for r in rows:
        state = f"revoked {r['revoked_at']:%F %T}" if r["revoked_at"] else "active"
        click.echo(f"{r['name']:<24} {r['role']:<7} {r['key_prefix']}…  {state}")


@user.command("revoke")
@click.argument("name")
@ORG_OPTION
@click.pass_context
@handle_errors
def user_revoke(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Revoke NAME's key: every request with it (and its console sessions) is refused at once."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.users import revoke_user

    async def go() -> dict[str, Any]:
        async with state_pool(settings) as pool:
            return await revoke_user(pool, _org(org_id), name)

    row = run_async(go())
    click.echo(f"user {row['name']}: revoked")
