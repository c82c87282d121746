"""Query service process: `POST /v1/task/query` (and its batch form) plus health and metrics."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any, Literal, TypeVar

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from trace_platform import __version__
from trace_platform.adapters.local_keys import VerifiedTokens, load_key_ring, load_worker_tokens
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import STARTUP_DB_WAIT, create_pool
from trace_platform.domain.capability import CapabilityClaims
from trace_platform.domain.errors import (
    AuthError,
    ForbiddenError,
    TraceError,
)
from trace_platform.domain.query_formats import MEDIA_TYPES, TRUNCATED_HEADER
from trace_platform.http import (
    CAPABILITY_HEADER,
    WORKER_HEADER,
    MetricsMiddleware,
    install_error_handlers,
    install_health,
    parse_body,
    pool_ready,
    request_body_schema,
    serve,
)
from trace_platform.http_stream import bytes_answer, unless_gone
from trace_platform.logs import get_logger
from trace_platform.query.binding import QueryCaller
from trace_platform.query.engine import EXPORT_FORMATS
from trace_platform.query.executor import QueryResult, executor_limits
from trace_platform.query.relations import describe
from trace_platform.query.runs import QueryRuns
from trace_platform.query.service import BatchItem, QueryService
from trace_platform.sandbox import detect_isolation

log = get_logger(__name__)
Body = TypeVar("Body", bound=BaseModel)


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(max_length=64)
    attempt: int = Field(ge=1)
    dataset_id: str | None = Field(default=None, max_length=64)
    sql: str = Field(max_length=20_000)
    limit: int | None = None
    # json: {columns, rows, truncated}; arrow, csv, parquet: a body of bytes, streamed
    # when large (`http_stream`: X-Trace-Truncated true|false, or unknown on a stream)
    format: Literal["json", "arrow", "csv", "parquet"] = "json"


MAX_BATCH = 256
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def answer(result: QueryResult, fmt: str) -> Response:
    """A query's answer in its format; a body of an export format says in a header whether
    rows were left out (a JSON body says it in its `truncated`)."""
    if fmt in EXPORT_FORMATS:
        return Response(
            result.body,
            media_type=MEDIA_TYPES[fmt],
            headers={TRUNCATED_HEADER: "true" if result.truncated else "false"},
        )
    return Response(result.body, media_type="application/json")


class BatchQuery(QueryRequest):
    capability: str = Field(min_length=1, max_length=16_384)  # this task's token


class QueryBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[BatchQuery] = Field(min_length=1, max_length=MAX_BATCH)


class UserQueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org_id: uuid.UUID
    user_id: uuid.UUID
    dataset: str | None = Field(default=None, min_length=1, max_length=128)
    job: str | None = Field(default=None, min_length=1, max_length=63)
    sql: str = Field(min_length=1, max_length=20_000)
    limit: int | None = Field(default=None, ge=1)  # JSON: at most 10,000 (clamped)
    timeout_seconds: float | None = Field(default=None, gt=0, le=600)
    format: Literal["json", "arrow", "csv", "parquet"] = "json"
    # A saved query's values for its `$1`..`$n`, checked against their types by the user API
    # (`domain.saved_query`); bound as prepared-statement parameters, never into the SQL.
    params: list[str] = Field(default_factory=list, max_length=32)


class QueryRunRequest(BaseModel):
    """A user's query run (`POST /v1/query-runs`): as a user query, plus its key."""

    model_config = ConfigDict(extra="forbid")
    org_id: uuid.UUID
    user_id: uuid.UUID | None = None
    dataset: str | None = Field(default=None, min_length=1, max_length=128)
    job: str | None = Field(default=None, min_length=1, max_length=63)
    sql: str = Field(min_length=1, max_length=20_000)
    limit: int | None = Field(default=None, ge=1)
    format: Literal["json", "arrow", "csv", "parquet"] = "json"
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
    # A saved query's run: its name and its bound values for `$1`..`$n` (checked by the user
    # API, `domain.saved_query`); the run records the name and the values' sha256 only.
    saved_query: str | None = Field(default=None, min_length=1, max_length=128)
    params: list[str] | None = Field(default=None, max_length=32)


class RelationsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org_id: uuid.UUID
    user_id: uuid.UUID | None = None
    job: str | None = Field(default=None, min_length=1, max_length=63)


def s3_options(settings: Settings) -> dict[str, str] | None:
    """S3 access for executors when the object store is S3: endpoint and the credentials of
    this (trusted) process, resolved by boto3's usual chain and handed over explicitly."""
    if not settings.resolved_object_store_url.startswith("s3://"):
        return None
    try:
        import boto3
    except ImportError:
        return None
    session = boto3.Session()
    creds = session.get_credentials()
    opts: dict[str, str] = {"region": session.region_name or "us-east-1"}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        opts.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            opts["session_token"] = frozen.token
    if settings.s3_endpoint_url:
        scheme, _, host = settings.s3_endpoint_url.partition("://")
        opts.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    return opts


def create_app(settings: Settings) -> FastAPI:
    # Same ring as the dispatcher; no call to it per request.
    signer = VerifiedTokens(load_key_ring(settings))
    worker_tokens = load_worker_tokens(settings)  # the user API's credential here
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        urls = await resolve_databases(settings)
        state_pool = await create_pool(urls.state, max_size=4, wait_seconds=STARTUP_DB_WAIT)
        # This pool only writes audit rows. They commit without waiting for the WAL flush
        # (synchronous_commit=off): a PostgreSQL crash can lose the newest few hundred
        # milliseconds of audit rows, never half of one, and a query no longer waits ~1 ms
        # for an fsync.
        data_pool = await create_pool(
            urls.data,
            max_size=4,
            session={"synchronous_commit": "off"},
            wait_seconds=STARTUP_DB_WAIT,
        )
        limits = executor_limits(settings)
        isolation = detect_isolation()
        log.info(
            "query.sandbox",
            route="reader" if isolation.bwrap else "arrow",
            **{k: v for k, v in isolation.features.items()},
        )
        if not isolation.bwrap:
            log.warning("query.sandbox_weak", detail="no bubblewrap: executors use the Arrow route")
        service = QueryService(
            state_pool,
            data_pool,
            settings.query_executors,
            limits,
            isolation,
            s3_options(settings),
            settings.query_uid,
            # The default object store is under home too: its files link into the slots.
            executor_slots=settings.home / "query-slots",
            max_export_rows=settings.query_max_export_rows,
        )
        runs = QueryRuns(
            state_pool,
            service,
            object_store_from_settings(settings),
            settings.query_run_timeout,
            settings.query_result_ttl,
            concurrency=settings.query_executors - 1,
        )
        runs.start()
        state.update(service=service, pool=state_pool, runs=runs)
        try:
            yield
        finally:
            await runs.close()
            await service.close()
            await state_pool.close()
            await data_pool.close()

    app = FastAPI(title="Trace query service", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware)

    def task_caller(claims: CapabilityClaims, body: QueryRequest) -> QueryCaller:
        """The caller of a verified token, if it grants the task attempt the body names."""
        if body.task_id != claims.task_id or body.attempt != claims.attempt:
            raise ForbiddenError("capability token does not grant this task attempt")
        return QueryCaller.of_task(claims)

    async def user_api_body(request: Request, model: type[Body]) -> Body:
        """The body of a request from the user API, once its worker token is checked."""
        if not worker_tokens.accepts(request.headers.get(WORKER_HEADER)):
            raise AuthError("missing or invalid worker token")
        return await parse_body(request, model)

    @app.post(
        "/v1/task/query",
        tags=["task"],
        openapi_extra=request_body_schema(QueryRequest),
        summary="Sandboxed SQL over the relations granted in the capability token",
    )
    async def query(request: Request) -> Response:
        token = request.headers.get(CAPABILITY_HEADER)
        if not token:
            raise AuthError("missing capability token")
        claims = signer.verify(token)  # a bad token is refused before the body is read
        body = await parse_body(request, QueryRequest)
        service: QueryService = state["service"]
        caller = task_caller(claims, body)
        if body.format in EXPORT_FORMATS:
            stream = await service.stream(
                caller, body.dataset_id, body.sql, body.limit, fmt=body.format
            )
            return await bytes_answer(stream, body.format, lambda: stream.truncated, stream.close)
        result = await service.query(caller, body.dataset_id, body.sql, body.limit, fmt=body.format)
        return answer(result, body.format)

    @app.post(
        "/v1/task/query-batch",
        tags=["task"],
        openapi_extra=request_body_schema(QueryBatchRequest),
        summary="Many tasks' queries in one call, each with its own token; answered one by one",
    )
    async def query_batch(request: Request) -> Response:
        """`{queries: [{capability, task_id, attempt, dataset_id, sql, limit?}]}` →
        `{results: [{status: 200, result: {columns, rows, truncated}} | {status, error,
        detail}]}` in the same order. Each query is checked exactly as `/v1/task/query`
        checks it (its token verified, its body matched to it), so a bad one fails alone."""
        body = await parse_body(request, QueryBatchRequest)
        service: QueryService = state["service"]
        answers: list[bytes | TraceError | None] = [None] * len(body.queries)
        items: list[BatchItem] = []
        at: list[int] = []
        for i, item in enumerate(body.queries):
            try:
                caller = task_caller(signer.verify(item.capability), item)
            except TraceError as exc:
                answers[i] = exc
                continue
            items.append(BatchItem(caller, item.dataset_id, item.sql, item.limit))
            at.append(i)
        for i, result in zip(at, await service.query_batch(items), strict=True):
            answers[i] = result.body if isinstance(result, QueryResult) else result
        parts = [
            b'{"status":200,"result":' + a + b"}"
            if isinstance(a, bytes)
            else orjson.dumps({"status": a.status, **a.body()})
            for a in answers
            if a is not None
        ]
        return Response(b'{"results":[' + b",".join(parts) + b"]}", media_type="application/json")

    @app.post(
        "/internal/user-query",
        tags=["internal"],
        openapi_extra=request_body_schema(UserQueryRequest),
        summary="A user's query (from the user API): the org's relations, same gate and sandbox",
    )
    async def user_query(request: Request) -> Response:
        body = await user_api_body(request, UserQueryRequest)

        async def run() -> Response:
            service: QueryService = state["service"]
            caller = await service.binder.user_caller(
                body.org_id, body.dataset, body.user_id, "api", job=body.job
            )
            if body.format in EXPORT_FORMATS:  # streamed, never held whole here
                stream = await service.stream(
                    caller,
                    None,
                    body.sql,
                    body.limit,
                    timeout=body.timeout_seconds,
                    fmt=body.format,
                    params=tuple(body.params),
                )
                return await bytes_answer(
                    stream, body.format, lambda: stream.truncated, stream.close
                )
            result = await service.query(
                caller,
                None,
                body.sql,
                body.limit,
                timeout=body.timeout_seconds,
                fmt=body.format,
                params=tuple(body.params),
            )
            return answer(result, body.format)

        # The user API closing its call (its caller went away) stops the query and kills
        # its executor (`http_stream.unless_gone`).
        return await unless_gone(request, run())

    @app.post(
        "/internal/query-runs",
        tags=["internal"],
        openapi_extra=request_body_schema(QueryRunRequest),
        summary="Start a user's query run (from the user API): executed here in the background",
    )
    async def query_run(request: Request) -> Response:
        body = await user_api_body(request, QueryRunRequest)
        service: QueryService = state["service"]
        runs: QueryRuns = state["runs"]
        caller = await service.binder.user_caller(
            body.org_id, body.dataset, body.user_id, "api", job=body.job
        )
        run_id, created = await runs.submit(
            caller,
            body.sql,
            body.limit,
            body.format,
            body.idempotency_key,
            None if body.params is None else tuple(body.params),
            body.saved_query,
        )
        return Response(
            orjson.dumps({"run_id": str(run_id), "created": created}),
            media_type="application/json",
        )

    @app.post(
        "/internal/relations",
        tags=["internal"],
        openapi_extra=request_body_schema(RelationsRequest),
        summary="The relations a user's query may read, with their names and columns",
    )
    async def relations(request: Request) -> Response:
        body = await user_api_body(request, RelationsRequest)
        service: QueryService = state["service"]
        caller = await service.binder.user_caller(
            body.org_id, None, body.user_id, "api", job=body.job
        )
        found = await describe(service.binder, caller)
        return Response(
            orjson.dumps({"relations": [asdict(r) for r in found]}), media_type="application/json"
        )

    install_health(app, lambda: pool_ready(state.get("pool")))
    return app


def run_query_service(settings: Settings) -> None:
    serve(create_app(settings), settings.host, settings.query_port)
