"""`trace apply` and `trace chain ...`: specs and chain sync jobs (SPEC §11)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from trace_platform.cli import render
from trace_platform.cli.common import (
    emit,
    handle_errors,
    json_option,
    org_of,
    org_option,
    run_ops,
)
from trace_platform.domain.errors import ValidationError
from trace_platform.ops import chains as ops
from trace_platform.ops.specs import apply_specs
from trace_platform.specs import inline_abi_files


def _applied(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        verb = "unchanged" if not r["changed"] else ("created" if r.get("created") else "updated")
        lines.append(f"{r['kind']} {r['name']}: {verb}")
    return "\n".join(lines)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@org_option
@json_option
@click.pass_context
@handle_errors
def apply(ctx: click.Context, file: Path, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Apply a spec file (`kind: chain_sync`, `alert` or `dag`; several documents allowed,
    `-` reads stdin). Every document is validated before anything is applied; re-applying
    changes nothing."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {file}: {type(exc).__name__}") from None
    text = inline_abi_files(text, Path.cwd() if str(file) == "-" else file.parent)
    results = run_ops(
        ctx, lambda env: apply_specs(env, org_of(org_id), text), remote=lambda api: api.apply(text)
    )
    emit(results, as_json, _applied)


@click.group()
def chain() -> None:
    """Chain sync jobs: status, pause, resume, retry."""


@chain.command("status")
@click.argument("name", required=False)
@org_option
@json_option
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.pass_context
@handle_errors
def chain_status(
    ctx: click.Context, name: str | None, org_id: uuid.UUID | None, as_json: bool, watch: bool
) -> None:
    """Per stream: cursor, committed tip, head, lag in blocks and seconds, ranges in
    flight/committed/failed, blocks/s and the last error."""
    while True:
        jobs = run_ops(
            ctx,
            lambda env: ops.chain_status(env, org_of(org_id), name),
            remote=lambda api: [api.chain(name)] if name else api.chains(),
        )
        if watch and not as_json:
            click.clear()
        emit(jobs, as_json, render.chain_status)
        if not watch:
            return
        time.sleep(1.0)


def _set_paused(ctx: click.Context, name: str, org_id: uuid.UUID | None, paused: bool) -> None:
    run_ops(ctx, lambda env: ops.set_paused(env, org_of(org_id), name, paused))
    click.echo(f"{name}: {'paused' if paused else 'resumed'}")


@chain.command("pause")
@click.argument("name")
@org_option
@click.pass_context
@handle_errors
def chain_pause(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Stop scheduling new ranges of NAME (ranges in flight finish)."""
    _set_paused(ctx, name, org_id, True)


@chain.command("resume")
@click.argument("name")
@org_option
@click.pass_context
@handle_errors
def chain_resume(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Schedule ranges of NAME again."""
    _set_paused(ctx, name, org_id, False)


@chain.command("retry")
@click.argument("name")
@click.option("--stream", "stream", required=True, help="The stream to restart.")
@click.option("--from", "from_block", type=int, default=None, help="First block to re-schedule.")
@org_option
@click.pass_context
@handle_errors
def chain_retry(
    ctx: click.Context, name: str, stream: str, from_block: int | None, org_id: uuid.UUID | None
) -> None:
    """Re-schedule the failed ranges of a stopped stream (from --from on) and restart it."""
    r = run_ops(ctx, lambda env: ops.retry_stream(env, org_of(org_id), name, stream, from_block))
    click.echo(f"{name}.{stream}: restarted from block {r.cursor} ({r.replaced} failed range(s))")
