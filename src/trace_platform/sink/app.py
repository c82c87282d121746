"""Sink process: state DB for the queue, data DB for rows, object store for batches."""

from __future__ import annotations

import asyncio
import contextlib

from trace_platform.adapters.queues import queue_from_settings
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.aio import stop_on_signals
from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import STARTUP_DB_WAIT, create_pool
from trace_platform.sink.service import Sink


async def serve_sink(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    urls = await resolve_databases(settings)
    async with contextlib.AsyncExitStack() as closing:  # closed in reverse, whatever happens
        state_pool = await create_pool(urls.state, max_size=3, wait_seconds=STARTUP_DB_WAIT)
        closing.push_async_callback(state_pool.close)
        data_pool = await create_pool(
            urls.data, max_size=settings.sink_concurrency + 1, wait_seconds=STARTUP_DB_WAIT
        )
        closing.push_async_callback(data_pool.close)
        queue = queue_from_settings(settings, state_pool, urls.state)
        closing.push_async_callback(queue.close)
        store = object_store_from_settings(settings)
        await Sink(queue, store, data_pool, settings, settings.sink_concurrency).run(stop)


def run_sink(settings: Settings) -> None:
    import uvloop

    uvloop.run(serve_sink(settings))
