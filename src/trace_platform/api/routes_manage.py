"""`/v1` routes that manage the installation for an org: specs, chains, alerts and their
deliveries, the DLQ, users. Each is a thin caller of one `ops` function."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from trace_platform.api.auth import Admin, Reader, Writer
from trace_platform.api.models import MAX_SPEC_BYTES, RedriveBody, UserCreate
from trace_platform.domain.errors import ValidationError
from trace_platform.http import json_response
from trace_platform.ops import alerts as alert_ops
from trace_platform.ops import chains as chain_ops
from trace_platform.ops import dags as dag_ops
from trace_platform.ops import dlq as dlq_ops
from trace_platform.ops import specs as spec_ops
from trace_platform.ops import users as user_ops

router = APIRouter()
SpecKind = Literal["chain_sync", "alert", "dag"]


@router.post(
    "/v1/specs",
    tags=["specs"],
    summary="Apply a YAML spec file (writer); every document validated first",
    openapi_extra={
        "requestBody": {
            "content": {"application/yaml": {"schema": {"type": "string"}}},
            "required": True,
        }
    },
)
async def apply(c: Writer, request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_SPEC_BYTES:
        raise ValidationError("spec file larger than 1 MiB")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ValidationError("spec file is not UTF-8") from None
    return json_response({"results": await spec_ops.apply_specs(c.env, c.org, text)})


@router.get("/v1/specs", tags=["specs"], summary="Applied specs")
async def specs(c: Reader) -> Response:
    return json_response({"specs": await spec_ops.list_specs(c.env, c.org)})


@router.get("/v1/specs/{kind}/{name}", tags=["specs"], summary="One applied spec")
async def spec(c: Reader, kind: SpecKind, name: str) -> Response:
    return json_response(await spec_ops.show_spec(c.env, c.org, kind, name))


@router.delete(
    "/v1/specs/{kind}/{name}",
    tags=["specs"],
    summary="Delete a spec (writer): an alert stops; a chain sync is paused, data kept",
)
async def delete_spec(c: Writer, kind: SpecKind, name: str) -> Response:
    return json_response(await spec_ops.delete_spec(c.env, c.org, kind, name))


@router.get("/v1/chains", tags=["chains"], summary="Chain sync jobs with per-stream progress")
async def chains(c: Reader) -> Response:
    return json_response({"chains": await chain_ops.chain_status(c.env, c.org, None)})


@router.get("/v1/chains/{name}", tags=["chains"], summary="One chain sync job")
async def chain(c: Reader, name: str) -> Response:
    (job,) = await chain_ops.chain_status(c.env, c.org, name)
    return json_response(job)


@router.post("/v1/chains/{name}/{action}", tags=["chains"], summary="Pause or resume (writer)")
async def chain_action(c: Writer, name: str, action: Literal["pause", "resume"]) -> Response:
    return json_response(await chain_ops.set_paused(c.env, c.org, name, action == "pause"))


@router.get("/v1/dags", tags=["dags"], summary="DAGs of your org with their ranges by status")
async def dags(c: Reader) -> Response:
    return json_response({"dags": await dag_ops.list_dags(c.env, c.org)})


@router.get(
    "/v1/dags/{name}",
    tags=["dags"],
    summary="A DAG's status: per job, ranges committed / in flight / failed, rows, lag, error",
)
async def dag(c: Reader, name: str) -> Response:
    return json_response(await dag_ops.dag_status(c.env, c.org, name))


@router.post(
    "/v1/dags/{name}/rollback",
    tags=["dags"],
    summary="Readers see the DAG's previous generation again, no recomputation (writer)",
)
async def rollback_dag(c: Writer, name: str) -> Response:
    return json_response(await dag_ops.rollback_dag(c.env, c.org, name))


@router.delete(
    "/v1/dags/{name}/generations/{generation}",
    tags=["dags"],
    summary="Purge a kept generation of a DAG: its rows, partitions and files (writer)",
)
async def purge_dag(c: Writer, name: str, generation: Annotated[int, Path(ge=1)]) -> Response:
    return json_response(await dag_ops.purge_dag(c.env, c.org, name, generation))


@router.post("/v1/dags/{name}/{action}", tags=["dags"], summary="Pause or resume a DAG (writer)")
async def dag_action(c: Writer, name: str, action: Literal["pause", "resume"]) -> Response:
    return json_response(await dag_ops.set_dag_paused(c.env, c.org, name, action == "pause"))


@router.delete(
    "/v1/dags/{name}",
    tags=["dags"],
    summary="Delete a DAG (writer): it stops, its spec is forgotten, its datasets stay",
)
async def delete_dag(c: Writer, name: str) -> Response:
    return json_response(await dag_ops.delete_dag(c.env, c.org, name))


@router.get("/v1/alerts", tags=["alerts"], summary="Alerts of your org")
async def alerts(c: Reader) -> Response:
    return json_response({"alerts": await alert_ops.list_alerts(c.env, c.org)})


@router.get("/v1/alerts/{name}", tags=["alerts"], summary="An alert with its counts")
async def alert(c: Reader, name: str) -> Response:
    return json_response(await alert_ops.show_alert(c.env, c.org, name))


@router.get("/v1/alerts/{name}/events", tags=["alerts"], summary="Events of an alert")
async def alert_events(
    c: Reader, name: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Response:
    return json_response({"events": await alert_ops.alert_events(c.env, c.org, name, limit)})


@router.get("/v1/alerts/{name}/deliveries", tags=["alerts"], summary="Deliveries with attempts")
async def alert_deliveries(
    c: Reader,
    name: str,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Response:
    rows = await alert_ops.alert_deliveries(c.env, c.org, name, status, limit)
    return json_response({"deliveries": rows})


@router.post(
    "/v1/deliveries/{delivery_id}/retry",
    tags=["alerts"],
    summary="Retry a failed delivery (writer)",
)
async def retry_delivery(c: Writer, delivery_id: uuid.UUID) -> Response:
    return json_response(await alert_ops.retry_delivery(c.env, c.org, delivery_id))


@router.get("/v1/dlq", tags=["dlq"], summary="Dead-lettered batches of your org")
async def dlq(c: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    return json_response({"messages": await dlq_ops.list_dlq(c.env, c.org, limit)})


@router.post("/v1/dlq/redrive", tags=["dlq"], summary="Redrive DLQ messages to the sink (admin)")
async def redrive(c: Admin, body: RedriveBody) -> Response:
    moved = await dlq_ops.redrive_dlq(c.env, c.org, body.message_ids)
    return json_response({"redriven": moved.count, "message_ids": moved.message_ids})


@router.get("/v1/users", tags=["users"], summary="Users of your org (admin)")
async def users(c: Admin) -> Response:
    return json_response({"users": await user_ops.list_users(c.env, c.org)})


@router.post(
    "/v1/users",
    tags=["users"],
    summary="Create a user; the key is shown once (admin)",
    status_code=201,
)
async def create_user(c: Admin, body: UserCreate) -> Response:
    return json_response(await user_ops.create_user(c.env, c.org, body.name, body.role), 201)


@router.post("/v1/users/{name}/revoke", tags=["users"], summary="Revoke a user's key (admin)")
async def revoke_user(c: Admin, name: str) -> Response:
    return json_response(await user_ops.revoke_user(c.env, c.org, name))
