"""`/v1` routes for the work itself: status, tasks, datasets, queries, bundles. Each is a
thin caller of one `ops` function with the caller's org; no SQL or rule lives here."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from trace_platform.api.auth import Admin, Reader, Writer
from trace_platform.api.models import BundleUpload, QueryBody, TaskCreate
from trace_platform.domain.errors import ValidationError
from trace_platform.domain.lifecycle import TaskStatus
from trace_platform.domain.query_formats import TRUNCATED_HEADER, choose_format
from trace_platform.http import json_response
from trace_platform.http_stream import bytes_answer, unless_gone
from trace_platform.ops import bundles as bundle_ops
from trace_platform.ops import datasets as dataset_ops
from trace_platform.ops import tasks as task_ops

router = APIRouter()


@router.get("/v1/me", tags=["users"], summary="Who this key is")
async def me(c: Reader) -> Response:
    u = c.user
    return json_response({"user_id": u.user_id, "name": u.name, "role": u.role, "org_id": u.org_id})


@router.get("/v1/status", tags=["tasks"], summary="Tasks per status of your org")
async def status(c: Reader) -> Response:
    return json_response({"tasks": await task_ops.task_counts(c.env, c.org)})


@router.get("/v1/tasks", tags=["tasks"], summary="Tasks, newest first (keyset pagination)")
async def tasks(
    c: Reader,
    status: Annotated[TaskStatus | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=task_ops.MAX_PAGE)] = 50,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Response:
    wanted = status.value if status is not None else None
    page = await task_ops.list_tasks(c.env, c.org, wanted, cursor, limit, since, until)
    return json_response(page)


@router.get("/v1/tasks/{task_id}", tags=["tasks"], summary="One task with its events")
async def task(c: Reader, task_id: uuid.UUID) -> Response:
    return json_response(await task_ops.show_task(c.env, c.org, task_id))


@router.post("/v1/tasks", tags=["tasks"], summary="Create tasks (writer)", status_code=201)
async def create_task(c: Writer, body: TaskCreate) -> Response:
    ids = await task_ops.create_tasks(c.env, c.org, body.payload, body.count, body.max_attempts)
    return json_response({"task_ids": ids}, 201)


@router.post("/v1/tasks/{task_id}/cancel", tags=["tasks"], summary="Cancel a task (admin)")
async def cancel_task(c: Admin, task_id: uuid.UUID) -> Response:
    return json_response(await task_ops.cancel_task(c.env, c.org, task_id))


@router.get("/v1/datasets", tags=["datasets"], summary="Datasets of your org")
async def datasets(c: Reader) -> Response:
    return json_response({"datasets": await dataset_ops.list_datasets(c.env, c.org)})


@router.get("/v1/datasets/{name}", tags=["datasets"], summary="A dataset: ranges or versions")
async def dataset(c: Reader, name: str) -> Response:
    return json_response(await dataset_ops.show_dataset(c.env, c.org, name))


@router.post("/v1/query", tags=["datasets"], summary="Sandboxed SQL over your org's relations")
async def query(c: Reader, body: QueryBody, request: Request) -> Response:
    """JSON `{columns, rows, truncated}` (default), or an Arrow IPC stream, CSV or Parquet
    body, chosen by `format` or else by `Accept`: whole with X-Trace-Truncated, or streamed
    when large (cut past TRACE_QUERY_MAX_EXPORT_ROWS: `http_stream`)."""
    fmt = choose_format(body.format, request.headers.get("accept"))

    async def answer() -> Response:
        if fmt == "json":
            rows = await dataset_ops.query_as_user(
                c.env, c.org, c.user.user_id, body.dataset, body.sql, body.limit, body.job
            )
            return json_response(rows)
        # Streamed from the query service as it comes, never held whole (`http_stream`).
        reply = await dataset_ops.stream_as_user(
            c.env, c.org, c.user.user_id, body.dataset, body.sql, body.limit, fmt, body.job
        )
        truncated = reply.headers.get(TRUNCATED_HEADER.lower()) == "true"
        return await bytes_answer(reply, fmt, lambda: truncated, reply.close)

    # A caller that goes away before the answer starts stops the query (`http_stream`).
    return await unless_gone(request, answer())


@router.get("/v1/relations", tags=["datasets"], summary="What your queries may read, by name")
async def relations(c: Reader, job: str | None = None) -> Response:
    found = await dataset_ops.relations_as_user(c.env, c.org, c.user.user_id, job)
    return json_response({"relations": found})


@router.get("/v1/bundles", tags=["bundles"], summary="Registered UDF bundles")
async def bundles(c: Reader) -> Response:
    return json_response({"bundles": await bundle_ops.list_bundles(c.env, c.org, 500)})


@router.post(
    "/v1/bundles", tags=["bundles"], summary="Upload a bundle zip (writer)", status_code=201
)
async def upload(c: Writer, body: BundleUpload) -> Response:
    try:
        data = base64.b64decode(body.zip_base64, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("zip_base64 is not base64") from None
    reg = await bundle_ops.upload_bundle(c.env, c.org, data, body.language, body.entrypoint)
    return json_response({"bundle_id": reg.bundle_id, "sha256": reg.sha256}, 201)
