"""Query runs for people (SPEC §21): submit one to the query service, show it (with a
short-lived URL to its result when it succeeded), list a user's runs, cancel one, and serve
a Lite result through its signed URL. Every read is scoped to the caller's org (another
org's run is 404); nothing here sees or stores SQL text beyond handing it to the query
service."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from trace_platform.db.sql import q
from trace_platform.domain.errors import ConfigError, NotFoundError, ValidationError
from trace_platform.domain.query_formats import MEDIA_TYPES, check_limit
from trace_platform.domain.query_runs import (
    EXTENSIONS,
    LIVE,
    RESULT_ROUTE,
    RESULT_URL_SECONDS,
    SUCCEEDED,
    check_cancel,
    check_result_signature,
    derive_result_secret,
    result_signature,
)
from trace_platform.ops.env import OpsEnv, from_row
from trace_platform.ops.tasks import decode_cursor, encode_cursor
from trace_platform.ports import WORKER_HEADER

MAX_PAGE = 200


@dataclass(frozen=True)
class QueryRunSummary:
    """A run as a list shows it: status, size, time; never its SQL."""

    run_id: uuid.UUID
    status: str
    format: str
    rows: int | None
    bytes: int | None
    duration_ms: int | None
    error_code: str | None
    created_at: datetime
    finished_at: datetime | None
    saved_query: str | None = None  # the saved query it ran (None: plain SQL)


@dataclass(frozen=True)
class QueryRunPage:
    runs: list[QueryRunSummary]
    next_cursor: str | None


@dataclass(frozen=True)
class QueryRunDetail:
    """A run: its status and sizes, and when it succeeded and its result is kept, a
    short-lived `url` to the result (`url_expires_at`)."""

    run_id: uuid.UUID
    status: str
    format: str
    sql_sha256: str
    rows: int | None
    bytes: int | None
    truncated: bool | None
    duration_ms: int | None
    error_code: str | None
    error_detail: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    expired: bool = False
    url: str | None = None
    url_expires_at: datetime | None = None
    saved_query: str | None = None  # the saved query it ran, and its values' sha256
    params_sha256: str | None = None


@dataclass(frozen=True)
class SubmittedRun:
    run_id: uuid.UUID
    created: bool  # False: the idempotency key named this run already


@dataclass(frozen=True)
class ResultBody:
    """A Lite result as the signed URL serves it."""

    media_type: str
    filename: str
    chunks: AsyncIterator[bytes]


async def submit_run(
    env: OpsEnv,
    org_id: uuid.UUID,
    user_id: uuid.UUID | None,
    sql: str,
    fmt: str,
    dataset: str | None = None,
    job: str | None = None,
    limit: int | None = None,
    idempotency_key: str | None = None,
    params: tuple[str, ...] | None = None,
    saved_query: str | None = None,
) -> SubmittedRun:
    """Hand a run to the query service, which records it (queued) and executes it; SQL the
    gate refuses, an unknown dataset or job are refused here and leave no run. `limit`: as
    `POST /v1/query` (JSON 1..10,000, default 1,000; other formats up to the export cap).
    `params`, `saved_query`: a saved query's checked values and its name (its run records
    the name and the values' sha256, never the values)."""
    if env.query_client is None or env.worker_token is None:
        raise ConfigError("this process has no client of the query service")
    body: dict[str, object] = {
        "org_id": str(org_id),
        "user_id": None if user_id is None else str(user_id),
        "dataset": dataset,
        "job": job,
        "sql": sql,
        "limit": check_limit(fmt, limit),
        "format": fmt,
        "idempotency_key": idempotency_key,
    }
    if saved_query is not None:
        body["saved_query"] = saved_query
        body["params"] = list(params or ())
    answer = await env.query_client.post(
        f"{env.settings.resolved_query_url}/internal/query-runs",
        body,
        {WORKER_HEADER: env.worker_token},
        retry=False,
    )
    return SubmittedRun(uuid.UUID(answer["run_id"]), bool(answer["created"]))


async def show_run(
    env: OpsEnv, org_id: uuid.UUID, run_id: uuid.UUID, base_url: str
) -> QueryRunDetail:
    """A run of the org (404 for any other run). `base_url`: where the user API is reached,
    for a Lite result URL."""
    row = await env.state.fetchrow(q("query_runs", "run_of_org"), org_id, run_id)
    if row is None:
        raise NotFoundError("unknown query run")
    now = datetime.now(UTC)
    expired = row["collected_at"] is not None or row["expires_at"] <= now
    url = url_expires = None
    if row["status"] == SUCCEEDED and row["output_uri"] and not expired:
        seconds = max(1, min(RESULT_URL_SECONDS, int((row["expires_at"] - now).total_seconds())))
        url = result_url(env, org_id, run_id, row["output_uri"], base_url, seconds)
        url_expires = now + timedelta(seconds=seconds)
    return from_row(QueryRunDetail, row, expired=expired, url=url, url_expires_at=url_expires)


def result_url(
    env: OpsEnv,
    org_id: uuid.UUID,
    run_id: uuid.UUID,
    output_uri: str,
    base_url: str,
    seconds: int,
) -> str:
    """A short-lived URL of a result: a pre-signed GET of the object on S3; in Lite, the
    user API's own route, signed over (org, run, expiry)."""
    if output_uri.startswith("s3://"):
        return env.store.presign(output_uri, "GET", seconds)
    expires = int(time.time()) + seconds
    sig = result_signature(_secret(env), org_id, run_id, expires)
    query = urlencode({"org": str(org_id), "exp": expires, "sig": sig})
    return f"{base_url.rstrip('/')}{RESULT_ROUTE}/{run_id}?{query}"


def _secret(env: OpsEnv) -> bytes:
    if env.worker_token is None:
        raise ConfigError("this process cannot sign result URLs")
    return derive_result_secret(env.worker_token)


async def list_runs(
    env: OpsEnv,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    cursor: str | None = None,
    limit: int = 50,
    saved_query: str | None = None,
) -> QueryRunPage:
    """A user's runs, newest first (status, rows, time; no SQL), and the next page's cursor;
    with `saved_query`, only the runs of that saved query."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be 1..{MAX_PAGE}")
    after = decode_cursor(cursor) if cursor else (None, None)
    rows = await env.state.fetch(
        q("query_runs", "runs_of_user"),
        org_id,
        user_id,
        after[0],
        after[1],
        limit + 1,
        saved_query,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["run_id"]) if more and rows else None
    return QueryRunPage([from_row(QueryRunSummary, r) for r in rows], nxt)


async def cancel_run(
    env: OpsEnv, org_id: uuid.UUID, run_id: uuid.UUID, base_url: str
) -> QueryRunDetail:
    """Cancel a queued or running run of the org: its row says canceled at once, and the
    query service holding it stops it (its executor killed) at its next beat. A finished
    run is a 409 naming its status."""
    done = await env.state.fetchval(q("query_runs", "cancel_run"), org_id, run_id)
    if done is None:
        current = await show_run(env, org_id, run_id, base_url)  # 404 when not the org's
        check_cancel(current.status)
    return await show_run(env, org_id, run_id, base_url)


async def open_result(
    env: OpsEnv,
    run_id: uuid.UUID,
    org: str | None,
    expires: str | None,
    sig: str | None,
) -> ResultBody:
    """A Lite result through its signed URL: 403 when the URL is unsigned, expired or
    tampered with; 404 when the run has no result any more (expired, collected)."""
    org_id = check_result_signature(_secret(env), run_id, org, expires, sig, time.time())
    row = await env.state.fetchrow(q("query_runs", "run_of_org"), org_id, run_id)
    now = datetime.now(UTC)
    if (
        row is None
        or row["status"] != SUCCEEDED
        or not row["output_uri"]
        or row["collected_at"] is not None
        or row["expires_at"] <= now
    ):
        raise NotFoundError("this query result is gone (expired or never made)")
    if not await env.store.exists(row["output_uri"]):
        raise NotFoundError("this query result is gone (expired or never made)")
    fmt = row["format"]
    return ResultBody(
        MEDIA_TYPES[fmt], f"{run_id}.{EXTENSIONS[fmt]}", env.store.open_stream(row["output_uri"])
    )


class RunEnded(ValidationError):
    """A run that ended without a result (failed or canceled): its error code and reason."""

    status = 409
    code = "query_run_failed"


async def run_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    sql: str,
    fmt: str,
    dataset: str | None = None,
    job: str | None = None,
    limit: int | None = None,
    on_status: Callable[[str], None] | None = None,
    poll_seconds: float = 0.2,
    params: tuple[str, ...] | None = None,
    saved_query: str | None = None,
) -> tuple[bytes, bool]:
    """An operator's query run at this installation (`trace dataset query --async`): handed
    to this installation's query service (which must be up: `trace up`), waited for, and
    its result read from the object store. (body, truncated); RunEnded when it failed."""
    from trace_platform.adapters.local_keys import load_worker_tokens
    from trace_platform.client import TaskClient

    client = TaskClient(env.settings.resolved_query_url)
    try:
        here = replace(
            env, query_client=client, worker_token=load_worker_tokens(env.settings).current
        )
        run = await submit_run(
            here, org_id, None, sql, fmt, dataset, job, limit, None, params, saved_query
        )
        seen = None
        while True:
            row = await env.state.fetchrow(q("query_runs", "run_of_org"), org_id, run.run_id)
            if row is None:
                raise NotFoundError("unknown query run")
            if on_status is not None and row["status"] != seen:
                on_status(row["status"])
            seen = row["status"]
            if seen not in LIVE:
                break
            await asyncio.sleep(poll_seconds)
    finally:
        await client.close()
    if seen != SUCCEEDED:
        raise RunEnded(
            str(row["error_detail"] or f"the run {seen}"), reason=row["error_code"] or seen
        )
    return await env.store.get_bytes(row["output_uri"]), bool(row["truncated"])
