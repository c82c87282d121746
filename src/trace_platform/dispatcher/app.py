"""Dispatcher process: wires pools, adapters, service, loops and the HTTP app; runs uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI

from trace_platform import __version__
from trace_platform.adapters.local_invoker import LocalRuntimeInvoker
from trace_platform.adapters.local_keys import VerifiedTokens, load_key_ring, load_worker_tokens
from trace_platform.adapters.queues import queue_from_settings
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.aio import LoopRunner, watch
from trace_platform.alerts.headers import AlertBlockHeaders
from trace_platform.chain.commit import RangeCommitHook
from trace_platform.chain.loops import start_chain_loops
from trace_platform.config import Settings
from trace_platform.dag.commit import JobRangeCommitHook
from trace_platform.dag.dependents import dependents_routes
from trace_platform.dag.scheduler import start_derived_loops
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import STARTUP_DB_WAIT, create_pool
from trace_platform.dispatcher.api import build_router
from trace_platform.dispatcher.loops import (
    LeaseReaper,
    OutboxDrainer,
    RetryScheduler,
    default_routes,
    start_kernel_loops,
)
from trace_platform.dispatcher.service import TaskService
from trace_platform.dispatcher.udf import UdfDispatcher
from trace_platform.domain.errors import ConfigError, LoopDied
from trace_platform.http import (
    MetricsMiddleware,
    install_error_handlers,
    install_health,
    pool_ready,
    serve,
)
from trace_platform.logs import get_logger
from trace_platform.ports import RuntimeInvoker, SuccessHook

log = get_logger(__name__)
MINTED_TOKENS = 16384  # tokens remembered (~2 KB each): the attempts of a busy minute


def invoker_from_settings(settings: Settings) -> RuntimeInvoker:
    """The local sandboxed runner (Lite), or the platform-managed runner Lambda function."""
    if settings.runtime_invoker == "lambda":
        from trace_platform.adapters.lambda_invoker import LambdaRuntimeInvoker

        try:
            return LambdaRuntimeInvoker(settings.lambda_function, settings.runner_timeout_seconds)
        except ImportError:  # boto3 is part of the [aws] extra
            raise ConfigError(
                "TRACE_RUNTIME_INVOKER=lambda needs the [aws] extra (boto3)"
            ) from None
    return LocalRuntimeInvoker(settings)


def create_app(settings: Settings) -> FastAPI:
    """The dispatcher ASGI app. Resources are created in the lifespan, not at import."""
    # Tokens this dispatcher minted come back with every heartbeat and completion: it knows
    # them without a second signature check.
    signer = VerifiedTokens(load_key_ring(settings), size=MINTED_TOKENS)
    worker_tokens = load_worker_tokens(settings)
    store = object_store_from_settings(settings)
    state: dict[str, Any] = {}

    def loop_died(name: str, exc: BaseException) -> None:
        # /readyz turns red and the process stops, so `trace up` restarts it.
        log.error("dispatcher.loop_died", loop=name, error=type(exc).__name__, detail=str(exc))
        state["died"] = name
        os.kill(os.getpid(), signal.SIGTERM)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        urls = await resolve_databases(settings)
        pool = await create_pool(
            urls.state, max_size=settings.db_pool_size, wait_seconds=STARTUP_DB_WAIT
        )
        poke = asyncio.Event()
        queue = queue_from_settings(settings, pool, urls.state)
        plan_now = asyncio.Event()  # a committed range frees an extraction slot: plan at once
        # ... and may let a derived output go on (a decoded table, a DAG job): the one
        # derived-output scheduler is woken by every range commit (the hooks and the
        # `dataset.range_committed` route) and by a DAG applied or resumed.
        derive_now = asyncio.Event()

        def committed() -> None:
            plan_now.set()
            derive_now.set()

        root = settings.resolved_object_store_url
        hooks: list[SuccessHook] = [
            RangeCommitHook(root, on_commit=committed),
            JobRangeCommitHook(root, on_commit=derive_now.set),
        ]
        service = TaskService(pool, signer, settings, outbox_poke=poke, hooks=hooks)
        state.update(
            pool=pool, service=service, queue=queue, headers=AlertBlockHeaders(pool, settings)
        )
        runner = LoopRunner()
        drainer = OutboxDrainer(pool, default_routes(queue, dependents_routes(pool, derive_now)))
        start_kernel_loops(
            runner, settings, drainer, RetryScheduler(pool), LeaseReaper(pool, settings), poke
        )
        observer = start_chain_loops(runner, settings, pool, store, plan_now)
        start_derived_loops(runner, pool, settings, derive_now)
        listener = await _listen_outbox(urls.state, poke, derive_now)
        udf_stop = asyncio.Event()
        invoker = invoker_from_settings(settings)
        await invoker.start()
        udf = UdfDispatcher(service, queue, store, invoker, settings.runner_concurrency)
        udf_task = watch(asyncio.create_task(udf.run(udf_stop)), "udf_dispatcher", loop_died)
        log.info(
            "dispatcher.started",
            host=settings.host,
            port=settings.port,
            kids=signer.kids,
            embedded_db=urls.embedded,
        )
        try:
            yield
        finally:
            log.info("dispatcher.stopping")
            udf_stop.set()
            await asyncio.wait({udf_task}, timeout=5)
            await invoker.close()
            await runner.stop()
            await observer.close()
            if listener is not None:
                await listener.close()
            await queue.close()
            await pool.close()

    app = FastAPI(
        title="Trace dispatcher",
        version=__version__,
        description="Task lifecycle, leases, capability tokens and the outbox (SPEC §3-§6).",
        lifespan=lifespan,
    )
    app.state.trace = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware)

    def service() -> TaskService:
        # The router exists before the lifespan creates the pool; resolve per call.
        svc: TaskService = state["service"]
        return svc

    async def block_headers(task_id: uuid.UUID, numbers: list[int]) -> dict[str, Any]:
        source: AlertBlockHeaders = state["headers"]
        return await source(task_id, numbers)

    app.include_router(build_router(service, signer, worker_tokens, store, block_headers))

    async def ready() -> bool:
        return not state.get("died") and await pool_ready(state.get("pool"))

    install_health(app, ready)
    return app


async def _listen_outbox(
    dsn: str, poke: asyncio.Event, plan_dags: asyncio.Event
) -> asyncpg.Connection | None:
    """Wake the drainer when another process (e.g. `trace task create`) writes outbox rows,
    and the derived-output scheduler when a DAG is applied or resumed
    (`dags.notify_planner`)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        await conn.add_listener("trace_outbox", lambda *_: poke.set())
        await conn.add_listener("trace_dag_planner", lambda *_: plan_dags.set())
    except (OSError, asyncpg.PostgresError):
        log.warning("dispatcher.listen_failed")
        return None
    return conn


def run_dispatcher(settings: Settings) -> None:
    app = create_app(settings)
    serve(app, settings.host, settings.port)
    died = app.state.trace.get("died")
    if died:
        raise LoopDied(f"dispatcher loop {died!r} died; the dispatcher stopped")
