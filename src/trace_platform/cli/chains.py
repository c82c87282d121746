"""`trace apply` and `trace chain ...`: specs and chain sync jobs (SPEC §11)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import click
import orjson

from trace_platform.cli.common import handle_errors, run_async, settings_from
from trace_platform.domain.errors import ValidationError

ORG_OPTION = click.option(
    "--org-id", type=click.UUID, default=None, help="Owning org (default: the Lite org)."
)


def _org(org_id: uuid.UUID | None) -> uuid.UUID:
    from trace_platform.ports import LITE_ORG_ID

    return org_id or LITE_ORG_ID


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
@handle_errors
def apply(ctx: click.Context, file: Path, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Apply a spec file (`kind: chain_sync` or `kind: alert`; several documents allowed,
    `-` reads stdin). Every document is validated before anything is applied; re-applying
    changes nothing."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.specs import apply_specs

    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {file}: {type(exc).__name__}") from None

    async def go() -> list[dict[str, object]]:
        async with state_pool(settings) as pool:
            return await apply_specs(
                pool,
                text,
                _org(org_id),
                settings.resolved_object_store_url,
                settings.delivery_allow_private,
            )

    results = run_async(go())
    if as_json:
        click.echo(orjson.dumps(results).decode())
        return
    for r in results:
        verb = "unchanged" if not r["changed"] else ("created" if r.get("created") else "updated")
        click.echo(f"{r['kind']} {r['name']}: {verb}")


@click.group()
def chain() -> None:
    """Chain sync jobs: status, pause, resume, retry."""


@chain.command("status")
@click.argument("name", required=False)
@ORG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.pass_context
@handle_errors
def chain_status(
    ctx: click.Context, name: str | None, org_id: uuid.UUID | None, as_json: bool, watch: bool
) -> None:
    """Per stream: cursor, committed tip, head, lag in blocks and seconds, ranges in
    flight/committed/failed, blocks/s and the last error."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.chains import chain_status as collect
    from trace_platform.ops.chains import format_chain_status

    async def once() -> list[dict[str, object]]:
        async with state_pool(settings) as pool:
            return await collect(pool, _org(org_id), name)

    while True:
        jobs = run_async(once())
        if as_json:
            click.echo(orjson.dumps(jobs, default=str).decode())
        else:
            if watch:
                click.clear()
            click.echo(format_chain_status(jobs))
        if not watch:
            return
        time.sleep(1.0)


def _set_paused(ctx: click.Context, name: str, org_id: uuid.UUID | None, paused: bool) -> None:
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.chains import set_paused

    async def go() -> None:
        async with state_pool(settings) as pool:
            await set_paused(pool, _org(org_id), name, paused)

    run_async(go())
    click.echo(f"{name}: {'paused' if paused else 'resumed'}")


@chain.command("pause")
@click.argument("name")
@ORG_OPTION
@click.pass_context
@handle_errors
def chain_pause(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Stop scheduling new ranges of NAME (ranges in flight finish)."""
    _set_paused(ctx, name, org_id, True)


@chain.command("resume")
@click.argument("name")
@ORG_OPTION
@click.pass_context
@handle_errors
def chain_resume(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Schedule ranges of NAME again."""
    _set_paused(ctx, name, org_id, False)


@chain.command("retry")
@click.argument("name")
@click.option("--stream", "stream", required=True, help="The stream to restart.")
@click.option("--from", "from_block", type=int, default=None, help="First block to re-schedule.")
@ORG_OPTION
@click.pass_context
@handle_errors
def chain_retry(
    ctx: click.Context, name: str, stream: str, from_block: int | None, org_id: uuid.UUID | None
) -> None:
    """Re-schedule the failed ranges of a stopped stream (from --from on) and restart it."""
    settings = settings_from(ctx)
    from trace_platform.cli_support import state_pool
    from trace_platform.ops.chains import retry_stream

    if from_block is not None and from_block < 0:
        raise ValidationError("--from must be >= 0")

    async def go() -> dict[str, object]:
        async with state_pool(settings) as pool:
            return await retry_stream(pool, _org(org_id), name, stream, from_block)

    r = run_async(go())
    click.echo(
        f"{name}.{stream}: restarted from block {r['cursor']} ({r['replaced']} failed range(s))"
    )
