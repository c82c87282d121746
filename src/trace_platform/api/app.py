"""The user API (`/v1/*`, SPEC §13) and the console (`/ui`), served by `trace api`: wiring only.

`auth` says who calls and what they may do; `routes_work` and `routes_manage` are the `/v1`
routes, `console` the pages. Every route calls the operations layer (`trace_platform.ops`)
with the caller's org — the same functions the CLI calls; no SQL lives here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from trace_platform import __version__
from trace_platform.adapters.local_keys import load_worker_tokens
from trace_platform.api import console, routes_manage, routes_queries, routes_runs, routes_work
from trace_platform.api.auth import ApiState, RateLimiter
from trace_platform.api.samples import Samples
from trace_platform.client import TaskClient, new_session
from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import STARTUP_DB_WAIT, create_pool
from trace_platform.http import (
    MetricsMiddleware,
    install_error_handlers,
    install_health,
    pool_ready,
)
from trace_platform.logs import get_logger
from trace_platform.ops.env import OpsEnv

log = get_logger(__name__)


def create_app(settings: Settings) -> FastAPI:
    worker_tokens = load_worker_tokens(settings)
    state = ApiState(
        settings=settings,
        secret=worker_tokens.current,
        limiter=RateLimiter(settings.api_rate_per_second, settings.api_rate_burst),
    )
    if settings.oidc_issuer:
        from trace_platform.api.oidc import OidcVerifier

        state.oidc = OidcVerifier(settings)
    samples = Samples()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        urls = await resolve_databases(settings)
        pool = await create_pool(
            urls.state, max_size=settings.db_pool_size, wait_seconds=STARTUP_DB_WAIT
        )
        data = await create_pool(urls.data, max_size=4, wait_seconds=STARTUP_DB_WAIT)
        session = new_session(settings.api_query_timeout_seconds + 30)
        query_client = TaskClient(settings.resolved_query_url, session=session)
        state.env_ = OpsEnv(
            settings,
            pool,
            data,
            urls.embedded,
            query_client=query_client,
            worker_token=worker_tokens.current,
        )
        log.info("api.started", host=settings.host, port=settings.api_port)
        try:
            yield
        finally:
            await samples.close()
            await session.close()
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
    app.state.api = state
    app.state.samples = samples
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware)
    app.include_router(routes_work.router)
    app.include_router(routes_manage.router)
    app.include_router(routes_runs.router)
    app.include_router(routes_queries.router)
    app.include_router(console.router)
    install_health(app, lambda: pool_ready(state.env_.state if state.env_ else None))
    return app


def run_api(settings: Settings) -> None:
    from trace_platform.http import serve

    serve(create_app(settings), settings.host, settings.api_port)
