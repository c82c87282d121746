"""Delivery process: data DB for deliveries and events, state DB for alert channels."""

from __future__ import annotations

import asyncio

from trace_platform.aio import stop_on_signals
from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import STARTUP_DB_WAIT, create_pool
from trace_platform.delivery.service import Deliverer


async def serve_deliver(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    urls = await resolve_databases(settings)
    state_pool = await create_pool(urls.state, max_size=2, wait_seconds=STARTUP_DB_WAIT)
    data_pool = await create_pool(urls.data, max_size=3, wait_seconds=STARTUP_DB_WAIT)
    try:
        await Deliverer(data_pool, state_pool, settings, listen_dsn=urls.data).run(stop)
    finally:
        await data_pool.close()
        await state_pool.close()


def run_deliver(settings: Settings) -> None:
    import uvloop

    uvloop.run(serve_deliver(settings))
