"""`trace user ...`: users of the /v1 API and the console, with API keys (SPEC §13)."""

from __future__ import annotations

import uuid

import click

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
    settings_from,
)
from trace_platform.ops import users as ops


@click.group()
def user() -> None:
    """Users of the API and the console: create (prints the key once), list, revoke."""


@user.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ops.ROLES), required=True, help="What it may do.")
@org_option
@json_option
@click.pass_context
@handle_errors
def user_create(
    ctx: click.Context, name: str, role: str, org_id: uuid.UUID | None, as_json: bool
) -> None:
    """Create user NAME and print its API key: shown this once, stored only as a hash.
    reader: status, tasks, datasets, query, alerts; writer: + apply specs, upload bundles,
    create tasks; admin: + users, cancel, DLQ redrive."""
    new = run_ops(
        ctx,
        lambda env: ops.create_user(env, org_of(org_id), name, role),
        remote=lambda api: from_json(ops.NewUser, api.create_user(name, role)),
    )
    if as_json:
        click.echo(dumps(new))
        return
    click.echo(f"user {new.name} ({new.role}) created; its API key (shown once):")
    click.echo(new.api_key)
    settings = settings_from(ctx)
    api = (settings.api_url or f"http://127.0.0.1:{settings.api_port}").rstrip("/")
    click.echo(
        f"use it as `Authorization: Bearer <key>` on /v1/*, or log in to the console at {api}/ui",
        err=True,
    )


@user.command("list")
@org_option
@json_option
@click.pass_context
@handle_errors
def user_list(ctx: click.Context, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Users of the org (key prefixes only)."""
    items = run_ops(
        ctx,
        lambda env: ops.list_users(env, org_of(org_id)),
        remote=lambda api: from_json(list[ops.UserRow], api.users()),
    )
    emit(items, as_json, render.users)


@user.command("revoke")
@click.argument("name")
@org_option
@json_option
@click.pass_context
@handle_errors
def user_revoke(ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Revoke NAME's key: every request with it (and its console sessions) is refused at once."""
    row = run_ops(
        ctx,
        lambda env: ops.revoke_user(env, org_of(org_id), name),
        remote=lambda api: from_json(ops.Revoked, api.revoke_user(name)),
    )
    emit(row, as_json, lambda r: f"user {r.name}: revoked")
