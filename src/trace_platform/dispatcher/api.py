"""Dispatcher HTTP layer: parse, authenticate, call the service, map errors. No SQL here."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from trace_platform.adapters.local_keys import WorkerTokens
from trace_platform.adapters.local_store import LocalObjectStore, ObjectUrlSigner
from trace_platform.dispatcher import models
from trace_platform.dispatcher.service import Claimed, CompletionReport, TaskService
from trace_platform.domain.capability import CapabilityClaims, is_within_prefixes
from trace_platform.domain.errors import (
    AuthError,
    ForbiddenError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from trace_platform.domain.lifecycle import Outcome
from trace_platform.http import (
    CAPABILITY_HEADER,
    WORKER_HEADER,
    json_response,
    parse_body,
    request_body_schema,
)
from trace_platform.logs import get_logger
from trace_platform.ports import ObjectStore, TokenSigner

log = get_logger(__name__)
F = TypeVar("F", bound=models.Fence)


UPLOAD_URL_TTL_SECONDS = 900
MAX_UPLOAD_BYTES = 1 << 30
# (task_id, block numbers) -> {number: [hash, timestamp] | None}; registered at wiring.
BlockHeaderSource = Callable[[uuid.UUID, list[int]], Awaitable[dict[str, Any]]]
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def build_router(
    service: Callable[[], TaskService],
    signer: TokenSigner,
    worker_tokens: WorkerTokens,
    store: ObjectStore,
    header_source: BlockHeaderSource | None = None,
) -> APIRouter:
    router = APIRouter()

    def require_worker(request: Request) -> None:
        if not worker_tokens.accepts(request.headers.get(WORKER_HEADER)):
            raise AuthError("missing or invalid worker token")

    async def task_call(
        request: Request,
        model: type[F],
        handler: Callable[[CapabilityClaims, F], Awaitable[Any]],
    ) -> Response:
        # Order matters: 401 (token) before 400 (body) before 403 (binding) before 409 (fence).
        token = request.headers.get(CAPABILITY_HEADER)
        if not token:
            raise AuthError("missing capability token")
        claims = signer.verify(token)
        body = await parse_body(request, model)
        if str(body.task_id) != claims.task_id or body.attempt != claims.attempt:
            log.warning("auth.token_body_mismatch", path=request.url.path)
            raise ForbiddenError("capability token does not grant this task attempt")
        return json_response(await handler(claims, body))

    # -- trusted worker endpoints -----------------------------------------------------------

    @router.post(
        "/internal/task-claim",
        tags=["internal"],
        response_model=models.ClaimResponse,
        openapi_extra=request_body_schema(models.ClaimRequest),
        summary="Claim a queued task: lease + capability token",
    )
    async def task_claim(request: Request) -> Response:
        require_worker(request)
        body = await parse_body(request, models.ClaimRequest)
        claimed = await service().claim(body.task_id, body.worker_id)
        return json_response(_claim_view(claimed))

    @router.post(
        "/internal/task-claim-batch",
        tags=["internal"],
        openapi_extra=request_body_schema(models.ClaimBatchRequest),
        summary="Claim up to 256 tasks in one call (workers batch their wake-ups)",
    )
    async def task_claim_batch(request: Request) -> Response:
        require_worker(request)
        body = await parse_body(request, models.ClaimBatchRequest)
        claimed, refused = await service().claim_many(body.task_ids, body.worker_id)
        return json_response(
            {
                "claimed": [_claim_view(c) for c in claimed],
                "not_claimed": [{"task_id": str(t), "reason": r} for t, r in refused],
            }
        )

    @router.get("/internal/task-fetch", tags=["internal"], summary="Task view")
    async def task_fetch(request: Request, task_id: str = "") -> Response:
        require_worker(request)
        try:
            parsed = uuid.UUID(task_id)
        except ValueError:
            raise ValidationError("task_id must be a UUID") from None
        view = await service().view(parsed)
        return json_response(_public_view(view))

    @router.post(
        "/internal/task-complete-batch",
        tags=["internal"],
        openapi_extra=request_body_schema(models.CompleteBatchRequest),
        summary="Trusted workers: many /v1/task/complete calls in one request",
        description="Each item carries its own capability token and fence; its result holds the "
        "`code` and `body` the single endpoint would answer (200/401/403/404/409). "
        "The worker token is required too.",
    )
    async def task_complete_batch(request: Request) -> Response:
        require_worker(request)
        body = await parse_body(request, models.CompleteBatchRequest)
        results: list[dict[str, Any] | None] = [None] * len(body.items)
        reports: list[tuple[int, CompletionReport]] = []
        for i, item in enumerate(body.items):
            try:
                claims = signer.verify(item.capability_token)
            except AuthError as exc:
                results[i] = {"code": 401, "body": exc.body()}
                continue
            if str(item.task_id) != claims.task_id or item.attempt != claims.attempt:
                forbidden = ForbiddenError("capability token does not grant this task attempt")
                results[i] = {"code": 403, "body": forbidden.body()}
                continue
            reports.append(
                (
                    i,
                    CompletionReport(
                        item.task_id,
                        item.attempt,
                        item.lease_token,
                        Outcome(item.outcome),
                        item.error_message,
                        item.events,
                        item.outputs,
                    ),
                )
            )
        answers = await service().complete_many([r for _, r in reports])
        for (i, _), (status, answer) in zip(reports, answers, strict=True):
            results[i] = {"code": status, "body": answer}
        return json_response({"results": results})

    @router.post(
        "/internal/task-cancel",
        tags=["internal"],
        openapi_extra=request_body_schema(models.CancelRequest),
        summary="Cancel a queued, running or failed task",
    )
    async def task_cancel(request: Request) -> Response:
        require_worker(request)
        body = await parse_body(request, models.CancelRequest)
        return json_response(await service().cancel(body.task_id))

    @router.post(
        "/internal/rpc-endpoints",
        tags=["internal"],
        openapi_extra=request_body_schema(models.EndpointReport),
        summary="A worker's view of its RPC pool endpoints (labels only), for status",
    )
    async def rpc_endpoints(request: Request) -> Response:
        require_worker(request)
        body = await parse_body(request, models.EndpointReport)
        await service().record_endpoints(body.process, [e.model_dump() for e in body.endpoints])
        return json_response({"recorded": len(body.endpoints)})

    @router.get(
        "/internal/jwks/task", tags=["internal"], summary="Public keys of the task key ring"
    )
    async def jwks(request: Request) -> Response:
        require_worker(request)  # as every /internal route (SPEC §4)
        return json_response(signer.jwks())

    # -- attempt-scoped endpoints (capability token) --------------------------------------

    @router.post(
        "/v1/task/heartbeat",
        tags=["task"],
        openapi_extra=request_body_schema(models.HeartbeatRequest),
        summary="Extend the lease of the current attempt",
    )
    async def heartbeat(request: Request) -> Response:
        async def run(claims: CapabilityClaims, body: models.HeartbeatRequest) -> dict[str, Any]:
            expires = await service().heartbeat(body.task_id, body.attempt, body.lease_token)
            out: dict[str, Any] = {"lease_expires_at": expires.isoformat()}
            # Long runs outlive a token: hand out a fresh one before the old one runs out.
            if claims.exp - _now() < service().settings.lease_seconds * 2:
                out["capability_token"] = await service().mint_token(
                    body.task_id,
                    body.attempt,
                    uuid.UUID(claims.org_id),
                    list(claims.datasets),
                    list(claims.s3.read_prefixes),
                )
            return out

        return await task_call(request, models.HeartbeatRequest, run)

    @router.post(
        "/v1/task/buffer-publish",
        tags=["task"],
        openapi_extra=request_body_schema(models.BufferPublishRequest),
        summary="Publish a batch pointer to the sink (idempotent per batch_uri)",
    )
    async def buffer_publish(request: Request) -> Response:
        async def run(claims: CapabilityClaims, body: models.BufferPublishRequest) -> Any:
            if not is_within_prefixes(body.batch_uri, claims.s3.write_prefixes):
                raise ForbiddenError("batch_uri is outside the token's write prefixes")
            return await service().buffer_publish(
                claims,
                body.lease_token,
                body.batch_uri,
                body.record_count,
                body.dataset_uuid,
                body.dataset_version,
            )

        return await task_call(request, models.BufferPublishRequest, run)

    @router.post(
        "/v1/task/events",
        tags=["task"],
        openapi_extra=request_body_schema(models.EventsRequest),
        summary="Record task events (idempotent)",
    )
    async def events(request: Request) -> Response:
        async def run(_claims: CapabilityClaims, body: models.EventsRequest) -> Any:
            n = await service().record_events(
                body.task_id, body.attempt, body.lease_token, body.events
            )
            return {"recorded": n}

        return await task_call(request, models.EventsRequest, run)

    @router.post(
        "/v1/task/complete",
        tags=["task"],
        openapi_extra=request_body_schema(models.CompleteRequest),
        summary="Report the outcome of the attempt (idempotent)",
    )
    async def complete(request: Request) -> Response:
        async def run(_claims: CapabilityClaims, body: models.CompleteRequest) -> Any:
            return await service().complete(
                body.task_id,
                body.attempt,
                body.lease_token,
                Outcome(body.outcome),
                body.error_message,
                body.events,
                body.outputs,
            )

        return await task_call(request, models.CompleteRequest, run)

    @router.post(
        "/v1/task/block-headers",
        tags=["task"],
        openapi_extra=request_body_schema(models.BlockHeadersRequest),
        summary="Hash and timestamp of blocks of an alert evaluation's range (UDF rules)",
    )
    async def block_headers(request: Request) -> Response:
        async def run(_claims: CapabilityClaims, body: models.BlockHeadersRequest) -> Any:
            await service().check_reporting(body.task_id, body.attempt, body.lease_token)
            if header_source is None:
                raise UnavailableError("this dispatcher serves no block headers")
            return {"headers": await header_source(body.task_id, body.numbers)}

        return await task_call(request, models.BlockHeadersRequest, run)

    @router.post(
        "/v1/task/upload-url",
        tags=["task"],
        openapi_extra=request_body_schema(models.UploadUrlRequest),
        summary="A short-lived PUT URL for one object in the attempt's write prefix",
    )
    async def upload_url(request: Request) -> Response:
        async def run(claims: CapabilityClaims, body: models.UploadUrlRequest) -> Any:
            if not _OBJECT_NAME.match(body.name) or ".." in body.name:
                raise ValidationError("name must be a plain file name ([A-Za-z0-9._-], no '/')")
            await service().check_reporting(body.task_id, body.attempt, body.lease_token)
            prefixes = claims.s3.write_prefixes
            if body.target == "output":
                if len(prefixes) < 2:
                    raise ForbiddenError("this attempt has no output prefix")
                prefixes = prefixes[1:2]
            uri = prefixes[0] + body.name
            if not is_within_prefixes(uri, prefixes):
                raise ForbiddenError("object is outside the token's write prefixes")
            url = store.presign(uri, "PUT", UPLOAD_URL_TTL_SECONDS)
            expires = datetime.now(UTC) + timedelta(seconds=UPLOAD_URL_TTL_SECONDS)
            return {
                "url": url,
                "method": "PUT",
                "batch_uri": uri,
                "expires_at": expires.isoformat(),
            }

        return await task_call(request, models.UploadUrlRequest, run)

    if isinstance(store, LocalObjectStore) and store.url_signer is not None:
        _add_local_object_routes(router, store, store.url_signer)
    return router


def _add_local_object_routes(
    router: APIRouter, store: LocalObjectStore, url_signer: ObjectUrlSigner
) -> None:
    """Serve the signed URLs of the local store: one method, one object, until expiry."""

    @router.put("/objects/{key:path}", tags=["objects"], summary="Upload via a signed URL")
    async def put_object(request: Request, key: str) -> Response:
        url_signer.check(
            "PUT", key, request.query_params.get("exp"), request.query_params.get("sig")
        )
        uri = store.uri_for(key)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_UPLOAD_BYTES):
            raise ValidationError("upload too large")

        async def body() -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > MAX_UPLOAD_BYTES:
                    raise ValidationError("upload too large")
                if chunk:
                    yield chunk

        info = await store.put_stream(uri, body())
        return json_response({"uri": info.uri, "size": info.size})

    @router.get("/objects/{key:path}", tags=["objects"], summary="Download via a signed URL")
    async def get_object(request: Request, key: str) -> Response:
        url_signer.check(
            "GET", key, request.query_params.get("exp"), request.query_params.get("sig")
        )
        uri = store.uri_for(key)
        if not await store.exists(uri):
            raise NotFoundError("object not found")
        return StreamingResponse(store.open_stream(uri), media_type="application/octet-stream")


def _claim_view(claimed: Claimed) -> dict[str, Any]:
    return {
        "task_id": str(claimed.task_id),
        "attempt": claimed.attempt,
        "lease_token": str(claimed.lease_token),
        "lease_expires_at": claimed.lease_expires_at.isoformat(),
        "capability_token": claimed.capability_token,
        "work_payload": claimed.payload,
    }


def _now() -> float:
    import time

    return time.time()


def _public_view(view: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in view.items() if k != "lease_token"}
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in out.items()}
