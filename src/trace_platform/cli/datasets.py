"""`trace dataset ...`: register, list, show and query datasets (the calls behind
/v1/datasets and /v1/query)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click
import orjson

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
from trace_platform.cli.export_output import (
    ExportOutput,
    format_option,
    output_option,
    truncated_note,
)
from trace_platform.domain.errors import ValidationError
from trace_platform.ops import datasets as ops
from trace_platform.ops import query_runs as run_ops_mod
from trace_platform.ops.chains import check_block_range
from trace_platform.ops.env import OpsEnv
from trace_platform.sdk import Client, QueryRunFailed


@click.group()
def dataset() -> None:
    """Register, list, show and query datasets (Parquet; chain datasets by their ranges)."""


@dataset.command("register")
@click.argument("name")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@org_option
@click.pass_context
@handle_errors
def dataset_register(
    ctx: click.Context, name: str, paths: tuple[Path, ...], org_id: uuid.UUID | None
) -> None:
    """Upload Parquet files as a new version of NAME; prints `uuid version`."""
    reg = run_ops(ctx, lambda env: ops.register_files(env, org_of(org_id), name, list(paths)))
    note = "" if reg.created else "  (same content: existing version)"
    click.echo(f"{reg.dataset_uuid} {reg.dataset_version}{note}")


@dataset.command("list")
@org_option
@json_option
@click.pass_context
@handle_errors
def dataset_list(ctx: click.Context, org_id: uuid.UUID | None, as_json: bool) -> None:
    """The org's datasets with their current version (a chain dataset: its snapshot)."""
    items = run_ops(
        ctx,
        lambda env: ops.list_datasets(env, org_of(org_id)),
        remote=lambda api: from_json(list[ops.DatasetSummary], api.datasets()),
    )
    emit(items, as_json, render.datasets)


@dataset.command("show")
@click.argument("name")
@org_option
@json_option
@click.pass_context
@handle_errors
def dataset_show(ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Dataset NAME: its committed ranges (chain datasets) or versions."""
    detail = run_ops(
        ctx,
        lambda env: ops.show_dataset(env, org_of(org_id), name),
        remote=lambda api: from_json(ops.DatasetDetail, api.dataset(name)),
    )
    emit(detail, as_json, render.dataset_detail)


@dataset.command("relations")
@click.option("--job", default=None, help="The chain job whose relations answer to short names.")
@org_option
@json_option
@click.pass_context
@handle_errors
def dataset_relations(
    ctx: click.Context, job: str | None, org_id: uuid.UUID | None, as_json: bool
) -> None:
    """Every relation your queries may read: its names in SQL and its columns."""
    found = run_ops(ctx, lambda env: ops.relations_here(env, org_of(org_id), job))
    emit(found, as_json, render.relations)


def _remote_query(
    api: Client,
    name: str | None,
    sql: str,
    limit: int | None,
    job: str | None,
    bounds: tuple[int, int] | None,
) -> ops.QueryAnswer:
    if bounds is not None:
        raise ValidationError("--range works on a local installation only; filter in SQL")
    answer: ops.QueryAnswer = from_json(
        ops.QueryAnswer, api.query(sql, dataset=name, limit=limit, job=job)
    )
    return answer


def _remote_export(
    api: Client,
    name: str | None,
    sql: str,
    limit: int | None,
    job: str | None,
    bounds: tuple[int, int] | None,
    out: ExportOutput,
    fmt: str,
) -> bool:
    if bounds is not None:
        raise ValidationError("--range works on a local installation only; filter in SQL")
    return api.query_into(sql, fmt, out.write, dataset=name, limit=limit, job=job)


async def _stream_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    fmt: str,
    bounds: tuple[int, int] | None,
    job: str | None,
    out: ExportOutput,
) -> bool:
    written = await ops.stream_here(env, org_id, name, sql, limit, fmt, out.write, bounds, job)
    return written.truncated


def _progress(status: str) -> None:
    click.echo(f"query run: {status}", err=True)


async def _run_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    fmt: str,
    job: str | None,
) -> ops.ExportAnswer:
    body, truncated = await run_ops_mod.run_here(
        env, org_id, sql, fmt, name, job, limit, on_status=_progress
    )
    return ops.ExportAnswer(fmt, body, truncated)


def _remote_run(
    api: Client, name: str | None, sql: str, limit: int | None, job: str | None, fmt: str
) -> ops.ExportAnswer:
    seen: list[str] = []

    def progress(run: dict[str, Any]) -> None:
        if not seen or seen[-1] != run["status"]:
            seen.append(str(run["status"]))
            _progress(seen[-1])

    try:
        body, truncated = api.query_run_bytes(sql, fmt, name, job, limit, on_progress=progress)
    except QueryRunFailed as exc:
        raise ValidationError(exc.detail, reason=exc.code) from None
    return ops.ExportAnswer(fmt, body, truncated)


@dataset.command("query")
@click.argument("args", nargs=-1, required=True, metavar="[NAME] SQL")
@click.option(
    "--limit",
    type=int,
    default=None,
    help="Rows to return (JSON 1..10000, default 1000; other formats up to the export cap).",
)
@click.option("--job", default=None, help="The chain job whose relations answer to short names.")
@org_option
@json_option
@click.option(
    "--range", "block_range", default=None, help="Chain relations: only blocks START:END."
)
@format_option
@output_option
@click.option(
    "--async",
    "in_background",
    is_flag=True,
    default=False,
    help="Run it as a query run in the query service (its own time limit, the result kept in"
    " the object store) and wait for it; progress on stderr.",
)
@click.pass_context
@handle_errors
def dataset_query(
    ctx: click.Context,
    args: tuple[str, ...],
    limit: int | None,
    job: str | None,
    org_id: uuid.UUID | None,
    as_json: bool,
    block_range: str | None,
    fmt: str,
    output: Path | None,
    in_background: bool,
) -> None:
    """Run SQL over your relations through the query service's binding, gate, sandboxed
    executor and audit: try a UDF's or an alert's query before shipping it.

    \b
    Relations (see `trace dataset relations`): every dataset by its name, quoted when it
    has dots or dashes ("local-anvil.blocks"), or by its bare alias (local_anvil_blocks);
    a chain job's streams and decoded tables by their short names (blocks, pair_Swap) when
    the org has one chain job or --job names it. With NAME, that dataset is also `dataset`
    (a chain dataset: every committed range)."""
    if len(args) > 2:
        raise ValidationError("give [NAME] SQL: quote the SQL as one argument")
    name, sql = (args[0], args[1]) if len(args) == 2 else (None, args[0])
    bounds = check_block_range(block_range) if block_range is not None else None
    if fmt == "json" and output is not None:
        raise ValidationError("--output is for --format arrow, csv or parquet")
    # a binary format bound for a terminal is refused before anything runs
    target = ExportOutput(fmt, output) if fmt != "json" else None
    export: ops.ExportAnswer | None = None
    try:
        if in_background:
            if bounds is not None:
                raise ValidationError("--range does not go with --async; filter in SQL")
            export = run_ops(
                ctx,
                lambda env: _run_here(env, org_of(org_id), name, sql, limit, fmt, job),
                remote=lambda api: _remote_run(api, name, sql, limit, job, fmt),
            )
            if fmt == "json":
                result = ops.QueryAnswer(**orjson.loads(export.body))
                export = None
        elif target is not None:  # streamed to its output as it comes, never held whole
            with target as out:
                truncated = run_ops(
                    ctx,
                    lambda env: _stream_here(
                        env, org_of(org_id), name, sql, limit, fmt, bounds, job, out
                    ),
                    remote=lambda api: _remote_export(api, name, sql, limit, job, bounds, out, fmt),
                )
            truncated_note(truncated)
            return
        else:
            result = run_ops(
                ctx,
                lambda env: ops.query_here(env, org_of(org_id), name, sql, limit, bounds, job),
                remote=lambda api: _remote_query(api, name, sql, limit, job, bounds),
            )
    except ValidationError as exc:  # name the gate's or the engine's reason code
        why = "SQL rejected" if exc.code == "sql_rejected" else "query failed"
        reason = exc.extra.get("reason", exc.code)
        raise ValidationError(f"{why} ({reason}): {exc.detail}") from None
    if export is not None and target is not None:
        with target as out:
            out.write(export.body)
        truncated_note(export.truncated)
        return
    emit(result, as_json, render.query_table)
    if not as_json:
        click.echo(render.query_footer(result), err=True)
