"""The one client of `POST /v1/task/query`, for the trusted worker (SQL alert rules) and the
runner (`context.query` of UDF handlers): the capability token in its header, and a 429
(every executor busy) waited out in place — back-pressure, not the caller's failure."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import orjson

from trace_platform.ports import CAPABILITY_HEADER

BUSY_RETRIES = 6  # about 3 s of waiting in all, with jitter


async def task_query(
    session: aiohttp.ClientSession, base_url: str, token: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer). Transport errors (aiohttp.ClientError, TimeoutError) and a
    body that is not JSON are the caller's to handle."""
    delay = 0.05
    for attempt in range(BUSY_RETRIES + 1):
        async with session.post(
            f"{base_url.rstrip('/')}/v1/task/query",
            data=orjson.dumps(body),
            headers={CAPABILITY_HEADER: token, "Content-Type": "application/json"},
        ) as resp:
            data: dict[str, Any] = orjson.loads(await resp.read() or b"{}")
            status = resp.status
        if status != 429 or attempt == BUSY_RETRIES:
            return status, data
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")
