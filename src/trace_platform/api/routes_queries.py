"""`/v1/saved-queries` (SPEC §21): named SQL with typed parameters, per org. Readers list,
show and run them; writers save, update and delete them. Each route is a thin caller of one
`ops.saved_queries` function; running one answers as `POST /v1/query` does."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from trace_platform.api.auth import Ctx, Reader, Writer
from trace_platform.api.models import (
    SavedQueryCreate,
    SavedQueryRun,
    SavedQueryRunStart,
    SavedQueryUpdate,
)
from trace_platform.domain.query_formats import TRUNCATED_HEADER, choose_format
from trace_platform.http import json_response
from trace_platform.http_stream import bytes_answer, unless_gone
from trace_platform.ops import datasets as dataset_ops
from trace_platform.ops import saved_queries as saved_ops
from trace_platform.ops.env import Caller

router = APIRouter()


def _caller(c: Ctx) -> Caller:
    return Caller(c.org, c.user.user_id)


@router.get("/v1/saved-queries", tags=["saved queries"], summary="Saved queries of your org")
async def saved_queries(c: Reader) -> Response:
    return json_response({"saved_queries": await saved_ops.list_queries(c.env, c.org)})


@router.post(
    "/v1/saved-queries",
    tags=["saved queries"],
    summary="Save a query (writer): SQL with typed {{ name: TYPE }} parameters",
    status_code=201,
)
async def save_query(c: Writer, body: SavedQueryCreate) -> Response:
    saved = await saved_ops.save_query(
        c.env, _caller(c), body.name, body.sql, body.description, body.job
    )
    return json_response(saved, 201)


@router.get(
    "/v1/saved-queries/{name}", tags=["saved queries"], summary="A saved query with its SQL"
)
async def saved_query(c: Reader, name: str) -> Response:
    return json_response(await saved_ops.show_query(c.env, c.org, name))


@router.put(
    "/v1/saved-queries/{name}",
    tags=["saved queries"],
    summary="Replace a saved query's SQL, description and job (writer)",
)
async def update_query(c: Writer, name: str, body: SavedQueryUpdate) -> Response:
    saved = await saved_ops.update_query(
        c.env, _caller(c), name, body.sql, body.description, body.job
    )
    return json_response(saved)


@router.delete(
    "/v1/saved-queries/{name}", tags=["saved queries"], summary="Delete a saved query (writer)"
)
async def delete_query(c: Writer, name: str) -> Response:
    return json_response(await saved_ops.delete_query(c.env, c.org, name))


@router.post(
    "/v1/saved-queries/{name}/run",
    tags=["saved queries"],
    summary="Run a saved query with its parameters' values (answered as POST /v1/query)",
)
async def run_query(c: Reader, name: str, body: SavedQueryRun, request: Request) -> Response:
    """Values are checked against their declared types (400 naming the parameter) and bound
    as prepared-statement parameters: the statement is the same whatever they are."""
    fmt = choose_format(body.format, request.headers.get("accept"))

    async def answer() -> Response:
        if fmt == "json":
            rows = await saved_ops.run_query(c.env, _caller(c), name, body.params, fmt, body.limit)
            return json_response(rows)
        # An export streams from the query service as `POST /v1/query`'s does.
        bound = await saved_ops.bind_query(c.env, c.org, name, body.params)
        reply = await dataset_ops.stream_as_user(
            c.env, c.org, c.user.user_id, None, bound.sql, body.limit, fmt, bound.job, bound.params
        )
        truncated = reply.headers.get(TRUNCATED_HEADER.lower()) == "true"
        return await bytes_answer(reply, fmt, lambda: truncated, reply.close)

    return await unless_gone(request, answer())


@router.post(
    "/v1/saved-queries/{name}/runs",
    tags=["saved queries", "query runs"],
    summary="Start a query run of a saved query with its parameters' values",
    status_code=202,
)
async def start_run(c: Reader, name: str, body: SavedQueryRunStart) -> Response:
    """`202 {run_id, created}`, then as any query run (`GET /v1/query-runs/{id}`, `DELETE`).
    Values are checked and bound as `POST /v1/saved-queries/{name}/run` binds them; the run
    records the saved query's name and the sha256 of the values, never the values."""
    fmt = choose_format(body.format, None)
    run = await saved_ops.start_run(
        c.env, _caller(c), name, body.params, fmt, body.limit, body.idempotency_key
    )
    return json_response({"run_id": run.run_id, "created": run.created}, 202)
