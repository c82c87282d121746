"""The user API (`/v1/*`, SPEC §13) and the console (`/ui`), served by `trace api`.

Every route authenticates a user (`Authorization: Bearer <API key>`, or the console's session
cookie plus its CSRF token on state changes), checks the role, applies the key's rate limit
and calls the operations layer (`trace_platform.ops`) with the user's org — the same
functions the CLI calls; no SQL lives here.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import aiohttp
import asyncpg
import orjson
from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from trace_platform import __version__
from trace_platform.adapters.local_keys import load_key_ring, load_worker_tokens
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import STARTUP_DB_WAIT, create_pool
from trace_platform.dispatcher.service import TaskService
from trace_platform.domain.errors import (
    AuthError,
    ForbiddenError,
    OverloadedError,
    TraceError,
    UnavailableError,
    ValidationError,
)
from trace_platform.http import (
    WORKER_HEADER,
    MetricsMiddleware,
    install_error_handlers,
    install_health,
    json_response,
)
from trace_platform.logs import get_logger
from trace_platform.ops import alerts as alert_ops
from trace_platform.ops import chains as chain_ops
from trace_platform.ops import specs as spec_ops
from trace_platform.ops import tasks as task_ops
from trace_platform.ops import users as user_ops
from trace_platform.ops.users import User

log = get_logger(__name__)

MAX_SPEC_BYTES = 1 << 20


class RateLimiter:
    """A token bucket per API key (per user): `rate` requests/s, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def take(self, key: uuid.UUID) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self.buckets[key] = (tokens - 1, now)
        return 0.0


class RateLimited(OverloadedError):
    code = "rate_limited"


async def authenticate(request: Request) -> User:
    """The user of a request: a Bearer API key, else the console's session cookie."""
    state: dict[str, Any] = request.app.state.trace
    header = request.headers.get("authorization", "")
    user: User | None = None
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise AuthError("Authorization must be 'Bearer <API key>'")
        key = key.strip()
        oidc = state.get("oidc")
        if oidc is not None and not key.startswith(user_ops.KEY_PREFIX):
            user = oidc.verify(key)
        else:
            user = await user_ops.authenticate(state["pool"], key)
    else:
        from trace_platform.api.console import session_user

        user = await session_user(request, state["pool"], state["secret"])
    if user is None:
        raise AuthError("missing, unknown or revoked API key")
    wait = state["limiter"].take(user.user_id)
    if wait:
        rate = state["settings"].api_rate_per_second
        raise RateLimited(f"rate limit of {rate:g} requests/s exceeded", retry_after=round(wait, 3))
    return user


def role(needed: str) -> Callable[[Request], Awaitable[Ctx]]:
    async def dep(request: Request) -> Ctx:
        state: dict[str, Any] = request.app.state.trace
        user = await authenticate(request)
        if not user.can(needed):
            raise ForbiddenError(f"this needs the {needed} role (you are {user.role})")
        if request.method not in ("GET", "HEAD") and not request.headers.get("authorization"):
            from trace_platform.api.console import check_csrf

            await check_csrf(request, state["secret"])
        return Ctx(user, state["pool"], state["data"], state["tasks"], state["settings"])

    return dep


@dataclass
class Ctx:
    """What a route gets: the user, the pools, the services."""

    user: User
    state: asyncpg.Pool
    data: asyncpg.Pool
    tasks: TaskService
    settings: Settings


Reader = Annotated["Ctx", Depends(role("reader"))]
Writer = Annotated["Ctx", Depends(role("writer"))]
Admin = Annotated["Ctx", Depends(role("admin"))]


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: dict[str, Any]
    count: int = Field(default=1, ge=1, le=1000)
    max_attempts: int | None = Field(default=None, ge=1, le=100)


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(min_length=1, max_length=128)
    sql: str = Field(min_length=1, max_length=20_000)
    limit: int = Field(default=1000, ge=1, le=10_000)


class RedriveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    role: Literal["reader", "writer", "admin"]


class BundleUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Literal["python", "node"]
    entrypoint: str = Field(min_length=3, max_length=200)
    zip_base64: str = Field(min_length=4, max_length=70_000_000)


def create_app(settings: Settings) -> FastAPI:
    state: dict[str, Any] = {}
    worker_tokens = load_worker_tokens(settings)
    signer = load_key_ring(settings)
    limiter = RateLimiter(settings.api_rate_per_second, settings.api_rate_burst)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        urls = await resolve_databases(settings)
        pool = await create_pool(
            urls.state, max_size=settings.db_pool_size, wait_seconds=STARTUP_DB_WAIT
        )
        data = await create_pool(urls.data, max_size=4, wait_seconds=STARTUP_DB_WAIT)
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.api_query_timeout_seconds + 30)
        )
        state.update(
            pool=pool,
            data=data,
            http=http,
            tasks=TaskService(pool, signer, settings),
            store=object_store_from_settings(settings),
        )
        log.info("api.started", host=settings.host, port=settings.api_port)
        try:
            yield
        finally:
            await http.close()
            await data.close()
            await pool.close()

    app = FastAPI(
        title="Trace user API",
        version=__version__,
        description=(
            "The API for people (SPEC §13): `Authorization: Bearer <API key>` from"
            " `trace user create`. 401 without a valid key, 403 when the role does not allow"
            " the call, 429 with Retry-After past the key's rate limit."
        ),
        lifespan=lifespan,
    )
    app.state.trace = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware)

    state.update(settings=settings, limiter=limiter, secret=worker_tokens.current)
    if settings.oidc_issuer:
        from trace_platform.api.oidc import OidcVerifier

        state["oidc"] = OidcVerifier(settings)

    @app.get("/v1/me", tags=["users"], summary="Who this key is")
    async def me(c: Reader) -> Response:
        u = c.user
        return json_response(
            {"user_id": u.user_id, "name": u.name, "role": u.role, "org_id": u.org_id}
        )

    # -- tasks ---------------------------------------------------------------------------

    @app.get("/v1/status", tags=["tasks"], summary="Tasks per status of your org")
    async def status(c: Reader) -> Response:
        return json_response({"tasks": await task_ops.task_counts(c.state, c.user.org_id)})

    @app.get("/v1/tasks", tags=["tasks"], summary="Tasks, newest first (keyset pagination)")
    async def tasks(
        c: Reader,
        status: Annotated[
            Literal["queued", "running", "completed", "failed", "canceled"] | None, Query()
        ] = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Response:
        page = await task_ops.list_tasks(
            c.state, c.user.org_id, status, cursor, limit, since, until
        )
        return json_response(page)

    @app.get("/v1/tasks/{task_id}", tags=["tasks"], summary="One task with its events")
    async def task(c: Reader, task_id: uuid.UUID) -> Response:
        return json_response(await task_ops.show_task(c.state, c.user.org_id, task_id))

    @app.post("/v1/tasks", tags=["tasks"], summary="Create tasks (writer)", status_code=201)
    async def create_task(c: Writer, body: TaskCreate) -> Response:
        ids = await c.tasks.create_tasks(
            [body.payload] * body.count, c.user.org_id, body.max_attempts
        )
        return json_response({"task_ids": ids}, 201)

    @app.post("/v1/tasks/{task_id}/cancel", tags=["tasks"], summary="Cancel a task (admin)")
    async def cancel_task(c: Admin, task_id: uuid.UUID) -> Response:
        await task_ops.show_task(c.state, c.user.org_id, task_id)  # 404 unless it is yours
        return json_response(await c.tasks.cancel(task_id))

    # -- datasets and queries --------------------------------------------------------------

    @app.get("/v1/datasets", tags=["datasets"], summary="Datasets of your org")
    async def datasets(c: Reader) -> Response:
        return json_response({"datasets": await task_ops.list_org_datasets(c.state, c.user.org_id)})

    @app.get("/v1/datasets/{name}", tags=["datasets"], summary="A dataset: ranges or versions")
    async def dataset(c: Reader, name: str) -> Response:
        return json_response(await task_ops.show_dataset(c.state, c.user.org_id, name))

    @app.post("/v1/query", tags=["datasets"], summary="Sandboxed SQL over one of your datasets")
    async def query(c: Reader, body: QueryBody) -> Response:
        url = settings.resolved_query_url
        req = {
            "org_id": str(c.user.org_id),
            "user_id": str(c.user.user_id),
            "dataset": body.dataset,
            "sql": body.sql,
            "limit": body.limit,
            "timeout_seconds": settings.api_query_timeout_seconds,
        }
        try:
            async with state["http"].post(
                f"{url}/internal/user-query",
                data=orjson.dumps(req),
                headers={WORKER_HEADER: worker_tokens.current, "Content-Type": "application/json"},
            ) as resp:
                raw = await resp.read()
                code = resp.status
        except (aiohttp.ClientError, TimeoutError):
            raise UnavailableError("the query service is not answering") from None
        headers = {"Retry-After": "1"} if code == 429 else None
        return Response(raw, status_code=code, media_type="application/json", headers=headers)

    # -- specs and chains ------------------------------------------------------------------

    @app.post(
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
        results = await spec_ops.apply_specs(
            c.state,
            text,
            c.user.org_id,
            settings.resolved_object_store_url,
            settings.delivery_allow_private,
        )
        return json_response({"results": results})

    @app.get("/v1/specs", tags=["specs"], summary="Applied specs")
    async def specs(c: Reader) -> Response:
        return json_response({"specs": await spec_ops.list_specs(c.state, c.user.org_id)})

    @app.get("/v1/specs/{kind}/{name}", tags=["specs"], summary="One applied spec")
    async def spec(c: Reader, kind: Literal["chain_sync", "alert"], name: str) -> Response:
        return json_response(await spec_ops.show_spec(c.state, c.user.org_id, kind, name))

    @app.delete(
        "/v1/specs/{kind}/{name}",
        tags=["specs"],
        summary="Delete a spec (writer): an alert stops; a chain sync is paused, data kept",
    )
    async def delete_spec(c: Writer, kind: Literal["chain_sync", "alert"], name: str) -> Response:
        return json_response(await spec_ops.delete_spec(c.state, c.user.org_id, kind, name))

    @app.get("/v1/chains", tags=["chains"], summary="Chain sync jobs with per-stream progress")
    async def chains(c: Reader) -> Response:
        return json_response({"chains": await chain_ops.chain_status(c.state, c.user.org_id, None)})

    @app.get("/v1/chains/{name}", tags=["chains"], summary="One chain sync job")
    async def chain(c: Reader, name: str) -> Response:
        (job,) = await chain_ops.chain_status(c.state, c.user.org_id, name)
        return json_response(job)

    @app.post("/v1/chains/{name}/{action}", tags=["chains"], summary="Pause or resume (writer)")
    async def chain_action(c: Writer, name: str, action: Literal["pause", "resume"]) -> Response:
        return json_response(
            await chain_ops.set_paused(c.state, c.user.org_id, name, action == "pause")
        )

    # -- bundles ----------------------------------------------------------------------------

    @app.get("/v1/bundles", tags=["bundles"], summary="Registered UDF bundles")
    async def bundles(c: Reader) -> Response:
        return json_response({"bundles": await task_ops.list_org_bundles(c.state, c.user.org_id)})

    @app.post(
        "/v1/bundles", tags=["bundles"], summary="Upload a bundle zip (writer)", status_code=201
    )
    async def upload(c: Writer, body: BundleUpload) -> Response:
        import base64
        import binascii

        from trace_platform.bundles import register_bundle

        try:
            data = base64.b64decode(body.zip_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("zip_base64 is not base64") from None
        reg = await register_bundle(
            c.state, state["store"], data, body.language, body.entrypoint, c.user.org_id
        )
        return json_response({"bundle_id": reg.bundle_id, "sha256": reg.sha256}, 201)

    # -- alerts and deliveries -------------------------------------------------------------

    @app.get("/v1/alerts", tags=["alerts"], summary="Alerts of your org")
    async def alerts(c: Reader) -> Response:
        return json_response({"alerts": await alert_ops.list_alerts(c.state, c.user.org_id)})

    @app.get("/v1/alerts/{name}", tags=["alerts"], summary="An alert with its counts")
    async def alert(c: Reader, name: str) -> Response:
        return json_response(await alert_ops.show_alert(c.state, c.data, c.user.org_id, name))

    @app.get("/v1/alerts/{name}/events", tags=["alerts"], summary="Events of an alert")
    async def alert_events(
        c: Reader, name: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Response:
        return json_response(
            {"events": await alert_ops.alert_events(c.state, c.data, c.user.org_id, name, limit)}
        )

    @app.get("/v1/alerts/{name}/deliveries", tags=["alerts"], summary="Deliveries with attempts")
    async def alert_deliveries(
        c: Reader,
        name: str,
        status: Literal["pending", "delivered", "failed"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Response:
        rows = await alert_ops.alert_deliveries(c.state, c.data, c.user.org_id, name, status, limit)
        return json_response({"deliveries": rows})

    @app.post(
        "/v1/deliveries/{delivery_id}/retry",
        tags=["alerts"],
        summary="Retry a failed delivery (writer)",
    )
    async def retry_delivery(c: Writer, delivery_id: uuid.UUID) -> Response:
        row = await alert_ops.retry_delivery(
            c.data, c.user.org_id, delivery_id, settings.delivery_max_attempts
        )
        return json_response(row)

    # -- DLQ and users (admin) -----------------------------------------------------------------

    @app.get("/v1/dlq", tags=["dlq"], summary="Dead-lettered batches of your org")
    async def dlq(c: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
        return json_response({"messages": await task_ops.list_dlq(c.state, c.user.org_id, limit)})

    @app.post("/v1/dlq/redrive", tags=["dlq"], summary="Redrive DLQ messages to the sink (admin)")
    async def redrive(c: Admin, body: RedriveBody) -> Response:
        moved = await task_ops.redrive_dlq(c.state, c.user.org_id, body.message_ids)
        return json_response({"redriven": len(moved), "message_ids": moved})

    @app.get("/v1/users", tags=["users"], summary="Users of your org (admin)")
    async def users(c: Admin) -> Response:
        return json_response({"users": await user_ops.list_users(c.state, c.user.org_id)})

    @app.post(
        "/v1/users",
        tags=["users"],
        summary="Create a user; the key is shown once (admin)",
        status_code=201,
    )
    async def create_user(c: Admin, body: UserCreate) -> Response:
        row, key = await user_ops.create_user(c.state, c.user.org_id, body.name, body.role)
        return json_response(row | {"api_key": key}, 201)

    @app.post("/v1/users/{name}/revoke", tags=["users"], summary="Revoke a user's key (admin)")
    async def revoke_user(c: Admin, name: str) -> Response:
        return json_response(await user_ops.revoke_user(c.state, c.user.org_id, name))

    @app.exception_handler(RateLimited)
    async def rate_limited(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TraceError)
        wait = float(exc.extra.get("retry_after", 1))
        return json_response(
            exc.body(), 429, headers={"Retry-After": str(max(1, round(wait + 0.5)))}
        )

    from trace_platform.api.console import install_console

    install_console(app, state, worker_tokens.current, authenticate)

    async def ready() -> bool:
        pool = state.get("pool")
        return pool is not None and await pool.fetchval("SELECT 1") == 1

    install_health(app, ready)
    return app


def run_api(settings: Settings) -> None:
    from trace_platform.http import serve

    serve(create_app(settings), settings.host, settings.api_port)
