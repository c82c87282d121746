"""`trace status`, `trace config` and `trace tools ...`: the installation at a glance, its
settings, and the node tools it runs."""

from __future__ import annotations

import os
from pathlib import Path

import click
import orjson

from trace_platform.cli import render
from trace_platform.cli.common import emit, handle_errors, json_option, run_ops, settings_from
from trace_platform.config import SETTINGS, Settings
from trace_platform.ops.status import installation_status


@click.command()
@json_option
@click.pass_context
@handle_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Task counts per status, queue depths and ages, outbox backlog."""
    emit(run_ops(ctx, installation_status), as_json, render.status_report)


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def config_command(ctx: click.Context, as_json: bool) -> None:
    """Every setting: env var, flag, source (default/env/flag) and effective value (secrets
    masked) — what a process started here would use."""
    settings = settings_from(ctx)
    flags = ctx.find_root().obj or {}
    rows = []
    for s in SETTINGS:
        value = getattr(settings, s.name)
        source = (
            "flag"
            if flags.get(s.name) is not None
            else ("env" if os.environ.get(s.env) not in (None, "") else "default")
        )
        shown = "—" if value is None else ("****" if s.secret else str(value))
        rows.append(
            {
                "env": s.env,
                "flag": " / ".join(s.flags),
                "source": source,
                "value": shown,
                "help": s.help,
            }
        )
    for pool, _url in settings.rpc_pools:
        rows.append(
            {
                "env": Settings.rpc_pool_env(pool),
                "flag": "",
                "source": "env",
                "value": "**** (URLs carry API keys)",
                "help": f"JSON-RPC URL of pool {pool!r}",
            }
        )
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    width = max(len(r["env"]) for r in rows)
    for r in rows:
        click.echo(f"{r['env']:<{width}}  {r['source']:<7}  {r['value']:<28}  {r['help']}")


@click.group()
def tools() -> None:
    """Node tools Trace runs: esbuild (TypeScript bundles) and anvil (the demo's devnet)."""


@tools.command("install")
@click.option(
    "--dir",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to install [default: ~/.local/share/trace/tools].",
)
@handle_errors
def tools_install(target: Path | None) -> None:
    """npm-install esbuild and anvil (needs Node.js 18+ with npm; a source checkout has them
    already after `make install`)."""
    from trace_platform.toolchain import TOOL_PACKAGES, install_tools

    click.echo("installing " + ", ".join(f"{k}@{v}" for k, v in TOOL_PACKAGES.items()) + " ...")
    where = install_tools(target)
    click.echo(f"installed under {where}")


@tools.command("status")
def tools_status() -> None:
    """Where each tool is found (or that it is missing)."""
    from trace_platform.toolchain import ANVIL, ESBUILD, find_tool

    for name, rel in (("esbuild", ESBUILD), ("anvil", ANVIL)):
        click.echo(f"{name:<8} {find_tool(rel) or 'missing: run `trace tools install`'}")
