"""Worker process: wires the queue, object store and dispatcher client, then runs the loop."""

from __future__ import annotations

import asyncio
import contextlib

from trace_platform.adapters.local_keys import load_worker_tokens
from trace_platform.adapters.queues import queue_from_settings
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.aio import sleep_or_stop, stop_on_signals

# The operators of the capability packages register themselves at import.
from trace_platform.alerts import evaluate as _alert_eval
from trace_platform.chain import decode as _chain_decode  # noqa: F401  (registers chain_decode)
from trace_platform.chain import ingest as _cryo_ingest
from trace_platform.chain.pool import pools_in_process
from trace_platform.client import TaskClient
from trace_platform.config import Settings
from trace_platform.dag import run as _dag_sql  # noqa: F401  (registers dag_sql)
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import STARTUP_DB_WAIT, create_pool
from trace_platform.domain.errors import TraceError
from trace_platform.logs import get_logger
from trace_platform.worker import operators as _builtin  # noqa: F401
from trace_platform.worker.service import Worker

log = get_logger(__name__)
ENDPOINT_REPORT_SECONDS = 2.0


async def serve_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    urls = await resolve_databases(settings)
    async with contextlib.AsyncExitStack() as closing:  # closed in reverse, whatever happens
        pool = await create_pool(
            urls.state, max_size=min(settings.db_pool_size, 4), wait_seconds=STARTUP_DB_WAIT
        )
        closing.push_async_callback(pool.close)
        queue = queue_from_settings(settings, pool, urls.state)
        closing.push_async_callback(queue.close)
        client = TaskClient(
            settings.resolved_dispatcher_url,
            load_worker_tokens(settings).current,
            max_connections=max(4, settings.worker_concurrency * 2),
        )
        closing.push_async_callback(client.close)
        closing.push_async_callback(_alert_eval.close_rule_batchers)
        worker = Worker(settings, queue, object_store_from_settings(settings), client)
        reporter = asyncio.create_task(report_endpoints(client, worker.worker_id, stop))
        # The extractor's libraries load now, off the loop, not in the first range's time.
        warming = asyncio.create_task(asyncio.to_thread(_cryo_ingest.warm))
        warming.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await worker.run(stop)
        finally:
            reporter.cancel()


async def report_endpoints(client: TaskClient, process: str, stop: asyncio.Event) -> None:
    """Every 2 s, this worker's view of its RPC pools' endpoints goes to the dispatcher
    (labels and figures only), which status reads."""
    while not stop.is_set():
        await sleep_or_stop(stop, ENDPOINT_REPORT_SECONDS)
        rows = [
            {"pool": p.name, "endpoint": v["endpoint"], "view": v}
            for p in pools_in_process()
            for v in p.views()
        ]
        if rows:
            try:
                await client.report_endpoints(process, rows)
            except TraceError as exc:  # status is a little stale meanwhile; nothing is lost
                log.warning("worker.endpoint_report_failed", error=type(exc).__name__)


def run_worker(settings: Settings) -> None:
    import uvloop

    uvloop.run(serve_worker(settings))
