"""Saved queries (SPEC §21): named, org-scoped SQL with typed parameters — the only place
Trace stores SQL text. Saving checks the SQL's placeholders (`domain.saved_query`) and the
gate on its runnable form, so a saved query that cannot run is refused when it is saved.
Running one binds the caller's values as prepared-statement parameters and goes through the
same binding, gate, sandbox and audit as any other query of the org (`ops.datasets`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trace_platform.db.sql import q
from trace_platform.domain.catalog import is_ambiguous, person_aliases, unresolved_reason
from trace_platform.domain.errors import ConflictError, NotFoundError, ValidationError
from trace_platform.domain.saved_query import (
    Parameter,
    Template,
    bind_values,
    check_query_name,
    parse_template,
)
from trace_platform.domain.sql_gate import GatedQuery, SqlRejected, check_sql, shown
from trace_platform.ops import datasets as dataset_ops
from trace_platform.ops import query_runs as run_ops
from trace_platform.ops.env import Caller, OpsEnv, from_row

MAX_SQL = 20_000
MAX_DESCRIPTION = 2_000


@dataclass(frozen=True)
class SavedQueryParameter:
    name: str
    type: str
    default: str | None = None


@dataclass(frozen=True)
class SavedQuerySummary:
    query_id: uuid.UUID
    name: str
    description: str
    job: str | None
    parameters: list[SavedQueryParameter]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class SavedQuery:
    query_id: uuid.UUID
    name: str
    sql: str
    description: str
    job: str | None
    parameters: list[SavedQueryParameter]
    created_by: uuid.UUID | None
    updated_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class SavedQueryRejected(ValidationError):
    """A saved query's SQL the gate refuses (400, the gate's reason code)."""

    code = "sql_rejected"


def checked(sql: str, description: str, job: str | None) -> tuple[Template, GatedQuery]:
    """The saved query's runnable form, or a 400: placeholders well formed and typed, and the
    runnable SQL passing the gate (which relations it may read is checked when it runs, for
    whoever runs it)."""
    if not sql.strip() or len(sql) > MAX_SQL:
        raise ValidationError(f"sql must be 1-{MAX_SQL} characters")
    if len(description) > MAX_DESCRIPTION:
        raise ValidationError(f"description is longer than {MAX_DESCRIPTION} characters")
    if job is not None and not 1 <= len(job) <= 63:
        raise ValidationError("job must be 1-63 characters")
    template = parse_template(sql)
    try:
        gated = check_sql(template.sql, None, len(template.parameters))
    except SqlRejected as exc:
        raise SavedQueryRejected(exc.reason, reason=exc.code) from None
    return template, gated


async def _refuse_ambiguous(
    env: OpsEnv, org_id: uuid.UUID, gated: GatedQuery, job: str | None
) -> None:
    """A name several of the org's relations answer to (a bare `blocks` with two chain jobs
    and no `job`) is refused now, with the reason `/v1/query` gives: the saved query could
    never run as written. A name no relation answers to yet is kept (it may be synced later)."""
    rows = await env.state.fetch(q("datasets", "org_relations"), org_id)
    aliases, kinds = person_aliases(rows, job)
    for name in gated.relations:
        if name not in aliases and is_ambiguous(name, kinds):
            raise SavedQueryRejected(
                unresolved_reason(name, kinds, shown(name)), reason="sql_relation_not_allowed"
            )


def _parameters(template: Template) -> list[dict[str, Any]]:
    return [{"name": p.name, "type": p.type, "default": p.default} for p in template.parameters]


def _of_row(cls: type[Any], row: Any) -> Any:
    params = [SavedQueryParameter(**p) for p in row["parameters"]]
    return from_row(cls, row, parameters=params)


async def save_query(
    env: OpsEnv, caller: Caller, name: str, sql: str, description: str = "", job: str | None = None
) -> SavedQuery:
    """A new saved query; 409 when the org has one of that name (update it instead)."""
    template, gated = checked(sql, description, job)
    await _refuse_ambiguous(env, caller.org_id, gated, job)
    row = await env.state.fetchrow(
        q("saved_queries", "insert_saved_query"),
        uuid.uuid4(),
        caller.org_id,
        check_query_name(name),
        sql,
        description,
        job,
        _parameters(template),
        caller.user_id,
    )
    if row is None:
        raise ConflictError(f"a saved query named {name!r} exists in this org")
    saved: SavedQuery = _of_row(SavedQuery, row)
    return saved


async def update_query(
    env: OpsEnv, caller: Caller, name: str, sql: str, description: str = "", job: str | None = None
) -> SavedQuery:
    """Replace a saved query's SQL, description and job; 404 when there is none."""
    template, gated = checked(sql, description, job)
    await _refuse_ambiguous(env, caller.org_id, gated, job)
    row = await env.state.fetchrow(
        q("saved_queries", "update_saved_query"),
        caller.org_id,
        name,
        sql,
        description,
        job,
        _parameters(template),
        caller.user_id,
    )
    if row is None:
        raise NotFoundError(f"no saved query named {name!r}")
    saved: SavedQuery = _of_row(SavedQuery, row)
    return saved


async def list_queries(env: OpsEnv, org_id: uuid.UUID) -> list[SavedQuerySummary]:
    rows = await env.state.fetch(q("saved_queries", "list_saved_queries"), org_id)
    return [_of_row(SavedQuerySummary, r) for r in rows]


async def show_query(env: OpsEnv, org_id: uuid.UUID, name: str) -> SavedQuery:
    row = await env.state.fetchrow(q("saved_queries", "saved_query_by_name"), org_id, name)
    if row is None:
        raise NotFoundError(f"no saved query named {name!r}")
    saved: SavedQuery = _of_row(SavedQuery, row)
    return saved


@dataclass(frozen=True)
class Deleted:
    query_id: uuid.UUID
    name: str


async def delete_query(env: OpsEnv, org_id: uuid.UUID, name: str) -> Deleted:
    row = await env.state.fetchrow(q("saved_queries", "delete_saved_query"), org_id, name)
    if row is None:
        raise NotFoundError(f"no saved query named {name!r}")
    return from_row(Deleted, row)


@dataclass(frozen=True)
class Bound:
    """A saved query ready to run: its runnable SQL, its values in `$k` order, its job."""

    sql: str
    params: tuple[str, ...]
    job: str | None
    parameters: tuple[Parameter, ...]


async def bind_query(env: OpsEnv, org_id: uuid.UUID, name: str, values: dict[str, Any]) -> Bound:
    """The saved query NAME with the caller's values checked against their types (400
    naming a parameter that is missing, unknown or of the wrong type): the SQL is the same
    text whatever the values, which go to the engine as prepared-statement parameters."""
    saved = await show_query(env, org_id, name)
    template = parse_template(saved.sql)
    return Bound(template.sql, tuple(bind_values(template, values)), saved.job, template.parameters)


async def run_query(
    env: OpsEnv,
    caller: Caller,
    name: str,
    values: dict[str, Any],
    fmt: str = "json",
    limit: int | None = None,
) -> dataset_ops.QueryAnswer | dataset_ops.ExportAnswer:
    """Run a saved query: a user's (`caller.user_id`) through the query service, as
    `POST /v1/query`; an operator's at this installation in this process, as `trace dataset
    query`. Same binding, gate, sandbox and audit either way."""
    bound = await bind_query(env, caller.org_id, name, values)
    org, user = caller.org_id, caller.user_id
    if user is not None:
        if fmt == "json":
            return await dataset_ops.query_as_user(
                env, org, user, None, bound.sql, limit, bound.job, bound.params
            )
        return await dataset_ops.export_as_user(
            env, org, user, None, bound.sql, limit, fmt, bound.job, bound.params
        )
    if fmt == "json":
        return await dataset_ops.query_here(
            env, org, None, bound.sql, limit, None, bound.job, bound.params
        )
    return await dataset_ops.export_here(
        env, org, None, bound.sql, limit, fmt, None, bound.job, bound.params
    )


async def start_run(
    env: OpsEnv,
    caller: Caller,
    name: str,
    values: dict[str, Any],
    fmt: str = "json",
    limit: int | None = None,
    idempotency_key: str | None = None,
) -> run_ops.SubmittedRun:
    """Start a query run of the saved query NAME: its values bound exactly as `run_query`
    binds them (400 `bad_parameter` naming the parameter), handed to the query service as
    prepared-statement parameters with the saved query's name. The run records the name and
    the sha256 of the values, never the values; an idempotency key compares the SQL's hash,
    the values' hash and the format (other values: 409)."""
    bound = await bind_query(env, caller.org_id, name, values)
    return await run_ops.submit_run(
        env,
        caller.org_id,
        caller.user_id,
        bound.sql,
        fmt,
        None,
        bound.job,
        limit,
        idempotency_key,
        bound.params,
        name,
    )


async def run_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    name: str,
    values: dict[str, Any],
    fmt: str = "json",
    limit: int | None = None,
    on_status: Callable[[str], None] | None = None,
) -> tuple[bytes, bool]:
    """An operator's query run of the saved query NAME at this installation (`trace query
    run NAME --async`): bound as `start_run` binds it, waited for, its result read from the
    object store. (body, truncated)."""
    bound = await bind_query(env, org_id, name, values)
    return await run_ops.run_here(
        env,
        org_id,
        bound.sql,
        fmt,
        None,
        bound.job,
        limit,
        on_status=on_status,
        params=bound.params,
        saved_query=name,
    )
