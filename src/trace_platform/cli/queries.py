"""`trace query ...`: saved queries (SPEC §21) — save, list, show, run, delete. The SQL of a
saved query holds typed parameters, `{{ name: TYPE }}` (`{{ name: TYPE = default }}`),
whose values `trace query run NAME --param name=value` binds as values, never as SQL."""

from __future__ import annotations

import uuid
from pathlib import Path

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
from trace_platform.ops import saved_queries as ops
from trace_platform.ops.datasets import ExportAnswer, QueryAnswer, stream_here
from trace_platform.ops.env import Caller, OpsEnv


@click.group()
def query() -> None:
    """Saved queries: named SQL with typed parameters — save, list, show, run, delete."""


def _summary(rows: list[ops.SavedQuerySummary]) -> str:
    if not rows:
        return 'no saved queries (trace query save NAME "SQL")'
    lines = []
    for r in rows:
        params = ", ".join(
            f"{p.name} {p.type}" + (f" = {p.default}" if p.default is not None else "")
            for p in r.parameters
        )
        job = f"  job {r.job}" if r.job else ""
        lines.append(f"{r.name}  ({params or 'no parameters'}){job}  {r.description}".rstrip())
    return "\n".join(lines)


def _detail(q: ops.SavedQuery) -> str:
    return f"{_summary([from_json(ops.SavedQuerySummary, _as_dict(q))])}\n\n{q.sql}"


def _as_dict(q: ops.SavedQuery) -> dict[str, object]:
    import dataclasses

    return {
        **dataclasses.asdict(q),
        "parameters": [dataclasses.asdict(p) for p in q.parameters],
    }


@query.command("save")
@click.argument("name")
@click.argument("sql", required=False)
@click.option(
    "--file",
    "-f",
    "sql_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the SQL from FILE.",
)
@click.option("--description", "-d", default="", help="What the query answers.")
@click.option("--job", default=None, help="The chain job whose relations answer to short names.")
@click.option("--replace", is_flag=True, help="Replace the saved query NAME if it exists.")
@org_option
@json_option
@click.pass_context
@handle_errors
def query_save(
    ctx: click.Context,
    name: str,
    sql: str | None,
    sql_file: Path | None,
    description: str,
    job: str | None,
    replace: bool,
    org_id: uuid.UUID | None,
    as_json: bool,
) -> None:
    """Save SQL (an argument or --file) as NAME for the org.

    \b
    Parameters are placeholders in the SQL, typed where first used:
      SELECT * FROM blocks WHERE block_number >= {{ start_block: BIGINT }}
        AND block_number < {{ start_block }} + {{ span: BIGINT = 100 }}
    Types: INTEGER, BIGINT, UBIGINT, HUGEINT, UHUGEINT, DOUBLE, VARCHAR, BOOLEAN, DATE,
    TIMESTAMP, TIMESTAMPTZ. A value is bound as a value, never spliced into the SQL."""
    if (sql is None) == (sql_file is None):
        raise ValidationError("give the SQL as one argument or --file FILE, not both")
    text = sql if sql is not None else sql_file.read_text() if sql_file is not None else ""
    org = org_of(org_id)
    if replace:
        saved = run_ops(
            ctx,
            lambda env: ops.update_query(env, Caller(org), name, text, description, job),
            remote=lambda api: from_json(
                ops.SavedQuery, api.update_query(name, text, description, job)
            ),
        )
    else:
        saved = run_ops(
            ctx,
            lambda env: ops.save_query(env, Caller(org), name, text, description, job),
            remote=lambda api: from_json(
                ops.SavedQuery, api.save_query(name, text, description, job)
            ),
        )
    emit(saved, as_json, lambda q: f"saved {q.name}\n{_detail(q)}")


@query.command("list")
@org_option
@json_option
@click.pass_context
@handle_errors
def query_list(ctx: click.Context, org_id: uuid.UUID | None, as_json: bool) -> None:
    """The org's saved queries with their parameters (no SQL: `trace query show NAME`)."""
    rows = run_ops(
        ctx,
        lambda env: ops.list_queries(env, org_of(org_id)),
        remote=lambda api: from_json(list[ops.SavedQuerySummary], api.saved_queries()),
    )
    emit(rows, as_json, _summary)


@query.command("show")
@click.argument("name")
@org_option
@json_option
@click.pass_context
@handle_errors
def query_show(ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool) -> None:
    """A saved query with its SQL."""
    saved = run_ops(
        ctx,
        lambda env: ops.show_query(env, org_of(org_id), name),
        remote=lambda api: from_json(ops.SavedQuery, api.saved_query(name)),
    )
    emit(saved, as_json, _detail)


@query.command("delete")
@click.argument("name")
@org_option
@json_option
@click.pass_context
@handle_errors
def query_delete(ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Delete a saved query (its SQL is forgotten)."""
    gone = run_ops(
        ctx,
        lambda env: ops.delete_query(env, org_of(org_id), name),
        remote=lambda api: from_json(ops.Deleted, api.delete_query(name)),
    )
    emit(gone, as_json, lambda d: f"deleted {d.name}")


def _params(given: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValidationError("--param takes NAME=VALUE")
        if name.strip() in values:
            raise ValidationError(f"--param {name.strip()!r} is given twice")
        values[name.strip()] = value
    return values


@query.command("run")
@click.argument("name")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A parameter's value (repeat for each); checked against its declared type.",
)
@click.option("--limit", type=int, default=None, help="Rows to return (as `dataset query`).")
@format_option
@output_option
@click.option(
    "--async",
    "in_background",
    is_flag=True,
    default=False,
    help="Run it as a query run in the query service (its own time limit, the result kept in"
    " the object store, listed by `GET /v1/query-runs?saved_query=NAME`) and wait for it;"
    " progress on stderr.",
)
@org_option
@json_option
@click.pass_context
@handle_errors
def query_run(
    ctx: click.Context,
    name: str,
    params: tuple[str, ...],
    limit: int | None,
    fmt: str,
    output: Path | None,
    org_id: uuid.UUID | None,
    as_json: bool,
    in_background: bool,
) -> None:
    """Run the saved query NAME with its parameters' values, through the same gate,
    sandbox and audit as `trace dataset query`."""
    values = _params(params)
    if fmt == "json" and output is not None:
        raise ValidationError("--output is for --format arrow, csv or parquet")
    org = org_of(org_id)
    # a binary format bound for a terminal is refused before anything runs
    target = ExportOutput(fmt, output) if fmt != "json" else None
    if in_background:
        _run_in_background(ctx, org, name, values, fmt, limit, target, as_json)
        return
    if target is not None:  # streamed to its output as it comes, never held whole
        with target as out:
            truncated = run_ops(
                ctx,
                lambda env: _stream_here(env, org, name, values, fmt, limit, out),
                remote=lambda api: api.run_query_into(name, fmt, out.write, values, limit),
            )
        truncated_note(truncated)
        return

    def remote(api: object) -> QueryAnswer:
        from trace_platform.sdk import Client

        assert isinstance(api, Client)
        answer: QueryAnswer = from_json(QueryAnswer, api.run_query(name, values, limit))
        return answer

    result = run_ops(
        ctx,
        lambda env: ops.run_query(env, Caller(org), name, values, fmt, limit),
        remote=remote,
    )
    assert isinstance(result, QueryAnswer)
    emit(result, as_json, render.query_table)
    if not as_json:
        click.echo(render.query_footer(result), err=True)


async def _stream_here(
    env: OpsEnv,
    org: uuid.UUID,
    name: str,
    values: dict[str, str],
    fmt: str,
    limit: int | None,
    out: ExportOutput,
) -> bool:
    """The saved query bound as `ops.run_query` binds it, its answer streamed to `out`."""
    bound = await ops.bind_query(env, org, name, values)
    written = await stream_here(
        env, org, None, bound.sql, limit, fmt, out.write, None, bound.job, bound.params
    )
    return written.truncated


def _run_in_background(
    ctx: click.Context,
    org: uuid.UUID,
    name: str,
    values: dict[str, str],
    fmt: str,
    limit: int | None,
    target: ExportOutput | None,
    as_json: bool,
) -> None:
    """`trace query run NAME --async`: a query run of the saved query (locally through this
    installation's query service, remotely through `POST /v1/saved-queries/NAME/runs`)."""
    from trace_platform.cli.datasets import _progress

    def remote(api: object) -> ExportAnswer:
        from trace_platform.sdk import Client, QueryRunFailed

        assert isinstance(api, Client)
        seen: list[str] = []

        def progress(run: dict[str, object]) -> None:
            if not seen or seen[-1] != run["status"]:
                seen.append(str(run["status"]))
                _progress(seen[-1])

        try:
            body, truncated = api.saved_query_run_bytes(name, fmt, values, limit, progress)
        except QueryRunFailed as exc:
            raise ValidationError(exc.detail, reason=exc.code) from None
        return ExportAnswer(fmt, body, truncated)

    async def here(env: OpsEnv) -> ExportAnswer:
        body, truncated = await ops.run_here(env, org, name, values, fmt, limit, _progress)
        return ExportAnswer(fmt, body, truncated)

    export = run_ops(ctx, here, remote=remote)
    if target is not None:
        with target as out:
            out.write(export.body)
        truncated_note(export.truncated)
        return
    result = QueryAnswer(**orjson.loads(export.body))
    emit(result, as_json, render.query_table)
    if not as_json:
        click.echo(render.query_footer(result), err=True)
