"""`/v1/query-runs` (SPEC §21): a user's query executed in the background by the query
service, its status, its result's short-lived URL, the user's recent runs, cancel; and the
route a Lite result URL points at (signed, so it carries no bearer key). Each is a thin
caller of `ops.query_runs` with the caller's org."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from trace_platform.api.auth import Reader, api_state
from trace_platform.domain.query_formats import choose_format
from trace_platform.domain.query_runs import RESULT_ROUTE
from trace_platform.http import json_response
from trace_platform.ops import query_runs as run_ops

router = APIRouter()


class QueryRunBody(BaseModel):
    """`format`: json (default), arrow, csv or parquet; `limit` as `POST /v1/query`;
    `idempotency_key`: the same key and SQL give back the same run (other SQL: 409)."""

    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, max_length=20_000)
    format: str | None = Field(default=None, max_length=16)
    dataset: str | None = Field(default=None, min_length=1, max_length=128)
    job: str | None = Field(default=None, min_length=1, max_length=63)
    limit: int | None = Field(default=None, ge=1)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)


def _base_url(request: Request) -> str:
    return str(request.base_url)


@router.post(
    "/v1/query-runs",
    tags=["query runs"],
    summary="Run SQL in the background; its result goes to the object store",
    status_code=202,
)
async def submit(c: Reader, body: QueryRunBody) -> Response:
    """`202 {run_id, created}`: the query service runs it (same gate, sandbox and audit as
    `POST /v1/query`, its own time limit TRACE_QUERY_RUN_TIMEOUT). SQL the gate refuses is
    a 400 and makes no run."""
    fmt = choose_format(body.format, None)
    run = await run_ops.submit_run(
        c.env,
        c.org,
        c.user.user_id,
        body.sql,
        fmt,
        body.dataset,
        body.job,
        body.limit,
        body.idempotency_key,
    )
    return json_response({"run_id": run.run_id, "created": run.created}, 202)


@router.get("/v1/query-runs", tags=["query runs"], summary="Your recent query runs (no SQL)")
async def runs(
    c: Reader,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=run_ops.MAX_PAGE)] = 50,
    saved_query: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> Response:
    """`saved_query`: only the runs of that saved query (`POST /v1/saved-queries/{name}/runs`)."""
    return json_response(
        await run_ops.list_runs(c.env, c.org, c.user.user_id, cursor, limit, saved_query)
    )


@router.get(
    "/v1/query-runs/{run_id}",
    tags=["query runs"],
    summary="A query run's status; when it succeeded, a short-lived URL to its result",
)
async def run(c: Reader, run_id: uuid.UUID, request: Request) -> Response:
    return json_response(await run_ops.show_run(c.env, c.org, run_id, _base_url(request)))


@router.delete(
    "/v1/query-runs/{run_id}", tags=["query runs"], summary="Cancel a queued or running query run"
)
async def cancel(c: Reader, run_id: uuid.UUID, request: Request) -> Response:
    return json_response(await run_ops.cancel_run(c.env, c.org, run_id, _base_url(request)))


@router.get(
    RESULT_ROUTE + "/{run_id}",
    tags=["query runs"],
    summary="A query run's result through its signed URL (Lite; no bearer key)",
)
async def result(run_id: uuid.UUID, request: Request) -> Response:
    """403 for an unsigned, expired or tampered URL; 404 once the result is gone."""
    p = request.query_params
    body = await run_ops.open_result(
        api_state(request).env, run_id, p.get("org"), p.get("exp"), p.get("sig")
    )
    return StreamingResponse(
        body.chunks,
        media_type=body.media_type,
        headers={"Content-Disposition": f'attachment; filename="{body.filename}"'},
    )
