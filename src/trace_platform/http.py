"""Shared HTTP plumbing: JSON responses, the error mapping, metrics middleware, body parsing."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trace_platform.db.faults import DbFault, condition, database_fault
from trace_platform.domain.errors import TraceError, ValidationError
from trace_platform.logs import get_logger
from trace_platform.metrics import HTTP_LATENCY, HTTP_REQUESTS
from trace_platform.ports import CAPABILITY_HEADER, WORKER_HEADER

__all__ = ["CAPABILITY_HEADER", "WORKER_HEADER"]  # re-exported for the routes

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 1 << 20


# Every JSON document (answers and errors alike: a 404 under /ui too) is data, never a page:
# it may run nothing, be framed by nothing, and is not sniffed into HTML.
DOCUMENT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, default=str),
        status_code=status,
        media_type="application/json",
        headers={**DOCUMENT_HEADERS, **headers} if headers else DOCUMENT_HEADERS,
    )


def error_response(status: int, code: str, detail: str, **extra: Any) -> Response:
    return json_response({"error": code, "detail": detail, **extra}, status)


def error_of(exc: TraceError) -> Response:
    """The response of an error: its status and body; a 429 says when to come back
    (`Retry-After`, whole seconds, from the error's `retry_after` or 1)."""
    headers = None
    if exc.status == 429:
        wait = float(exc.extra.get("retry_after", 1))
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
    return json_response(exc.body(), exc.status, headers)


def _one_line_reason(exc: PydanticValidationError) -> str:
    """First error as `field: message`, without echoing the input value."""
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


async def parse_body(request: Request, model: type[M]) -> M:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ValidationError("request body too large")
    if not body:
        raise ValidationError("request body must be a JSON object")
    try:
        return model.model_validate_json(body)
    except PydanticValidationError as exc:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            raise ValidationError("request body is not valid JSON") from None
        raise ValidationError(_one_line_reason(exc)) from None


def database_error(exc: Exception, fault: DbFault) -> Response:
    """The answer to a database error, by what it says (`db.faults`): only a database that
    is away (or too contended to serve now) answers 503; a statement refused because of what
    the request held answers 400 (409 when it conflicts with stored data), naming the
    condition and never a value; anything else is a fault of ours (500)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if fault == "internal":
        log.error("http.unhandled_error", error=type(exc).__name__, sqlstate=sqlstate)
        return error_response(500, "internal", "internal error")
    log.warning("http.database_error", fault=fault, error=type(exc).__name__, sqlstate=sqlstate)
    if fault == "unavailable":
        return error_response(503, "database_unavailable", "the database is unavailable")
    if fault == "busy":
        detail = f"the database refused the call under contention ({condition(exc)}); retry"
        return json_response(
            {"error": "database_busy", "detail": detail}, 503, {"Retry-After": "1"}
        )
    if fault == "conflict":
        return error_response(
            409, "conflict", f"the request conflicts with stored data ({condition(exc)})"
        )
    return error_response(
        400, "invalid_request", f"the database refused the request ({condition(exc)})"
    )


def install_error_handlers(app: FastAPI) -> None:
    async def trace_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TraceError)
        return error_of(exc)

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    async def unexpected(_request: Request, exc: Exception) -> Response:
        fault = database_fault(exc)
        if fault is not None:
            return database_error(exc, fault)
        log.error("http.unhandled_error", error=type(exc).__name__)
        return error_response(500, "internal", "internal error")

    app.add_exception_handler(TraceError, trace_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class MetricsMiddleware:
    """Counts requests and latency per route template (pure ASGI, cheap)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            HTTP_REQUESTS.labels(path, str(status)).inc()
            HTTP_LATENCY.labels(path).observe(time.perf_counter() - start)


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema with every local `#/$defs/...` reference inlined: the schema
    is embedded in the OpenAPI document, where `$defs` of a model would not resolve."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = defs[ref.removeprefix("#/$defs/")]
                return resolve({**target, **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for endpoints that parse their body themselves (auth comes first)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_refs(model.model_json_schema())}},
        }
    }


def serve(app: Any, host: str, port: int) -> None:
    """Run an ASGI app with uvicorn (uvloop + httptools); SIGTERM/SIGINT shut down gracefully
    and the process then exits 0."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True  # not re-raised after shutdown: a clean stop exits 0

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        backlog=2048,
        # Loopback services: no proxy in front whose headers would be trusted.
        proxy_headers=False,
    )
    server = GracefulServer(config)
    server.run()
    if not server.started:
        raise SystemExit(3)


async def pool_ready(pool: asyncpg.Pool | None) -> bool:
    """Readiness of a process whose dependency is its database pool: a `SELECT 1` within
    2 s (the process may still be starting: no pool yet)."""
    from trace_platform.db.pool import ping

    return pool is not None and await ping(pool)


def install_health(app: FastAPI, ready: Callable[[], Awaitable[bool]]) -> None:
    from trace_platform.metrics import render

    @app.get("/healthz", tags=["ops"], summary="Process is up")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", tags=["ops"], summary="Dependencies reachable")
    async def readyz() -> Response:
        if await ready():
            return json_response({"status": "ready"})
        return json_response({"error": "not_ready", "detail": "database unreachable"}, 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(render(), media_type="text/plain; version=0.0.4")
