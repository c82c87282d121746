"""`alert_eval`: evaluate one alert's SQL rule over one committed range (SPEC §12).

The trusted worker holds the task's capability token, which grants that range of every
relation of the source's chain job (the source read as `dataset`); the rule runs through the
query service (gate, sandbox, audit). A joined relation that has not committed the range yet
makes the attempt retry. Each result
row becomes an `alert_events` row (`domain.alert_events`) whose dedupe key is derived from
the alert, the identity columns and the block's hash, read from the node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from trace_platform.chain.pool import PoolUnavailable, rpc_pool
from trace_platform.chain.rpc import RpcError
from trace_platform.client import Lease, ServiceUnavailable, TaskClient, new_session
from trace_platform.config import Settings
from trace_platform.domain.alert_events import MAX_ROWS, block_numbers, rows_to_events
from trace_platform.domain.catalog import RELATION_INCOMPLETE
from trace_platform.domain.errors import OverloadedError, TraceError
from trace_platform.domain.lifecycle import FatalTaskError, RetryableTaskError
from trace_platform.operators import OperatorContext, operator

_SLOTS: dict[int, asyncio.Semaphore] = {}


def query_slots(settings: Settings) -> asyncio.Semaphore:
    """Rule queries this worker has at the query service at once: two per executor. The
    others wait here, first come first served, inside their attempts — a burst of rules over
    one new range queues in order instead of coming back as 429s and retries, whose
    backoff scatters the ranges and makes the executors rebind for every query."""
    loop = id(asyncio.get_running_loop())
    slots = _SLOTS.get(loop)
    if slots is None:
        slots = _SLOTS[loop] = asyncio.Semaphore(max(2, settings.query_executors * 2))
    return slots


async def run_rule(settings: Settings, lease: Lease, dataset_uuid: str, sql: str) -> dict[str, Any]:
    async with query_slots(settings):
        return await _run_rule(settings, lease, dataset_uuid, sql)


async def _run_rule(
    settings: Settings, lease: Lease, dataset_uuid: str, sql: str
) -> dict[str, Any]:
    session = new_session(settings.query_timeout_seconds + 10)
    client = TaskClient(
        settings.resolved_dispatcher_url, query_url=settings.resolved_query_url, session=session
    )
    try:
        async with session:
            return await client.query(lease, dataset_uuid, sql, MAX_ROWS)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise RetryableTaskError(f"query service: {type(exc).__name__}") from None
    except (OverloadedError, ServiceUnavailable) as exc:
        raise RetryableTaskError(f"query service answered {exc.status}") from None
    except TraceError as exc:
        if exc.code != RELATION_INCOMPLETE:
            raise FatalTaskError(f"rule rejected ({exc.status}): {exc.detail}"[:500]) from None
        # A joined relation has not committed this range yet: the next attempt's token
        # pins a newer snapshot.
        raise RetryableTaskError(exc.detail[:500]) from None


async def evaluate(settings: Settings, lease: Lease) -> list[dict[str, Any]]:
    """The alert_events rows of one (alert, range) of a SQL rule."""
    a = lease.work_payload.get("alert")
    if not isinstance(a, dict):
        raise FatalTaskError("alert_eval: payload has no alert")
    result = await run_rule(settings, lease, a["dataset_uuid"], a["sql"])
    if result.get("truncated"):
        raise FatalTaskError(f"the rule returned more than {MAX_ROWS} rows for one range")
    names = [c["name"] for c in result["columns"]]
    missing = [c for c in a["identity"] if c not in names]
    if missing:
        raise FatalTaskError(f"the rule's result lacks identity column(s) {missing}")
    rows = [dict(zip(names, r, strict=True)) for r in result["rows"]]
    if not rows:
        return []
    numbers = block_numbers(rows)
    headers: dict[int, tuple[str, int] | None] = {}
    pool = rpc_pool(settings, a["rpc_pool"])
    if numbers and pool is not None:
        try:
            headers, _ = await pool.call(lambda rpc: rpc.block_headers(numbers), None)
        except (PoolUnavailable, RpcError) as exc:
            raise RetryableTaskError(f"rpc: {exc}") from None
    return rows_to_events(a, rows, headers)


@operator("alert_eval")
async def alert_eval(ctx: OperatorContext) -> AsyncIterator[dict[str, Any]]:
    """The worker's `alert_eval` (a SQL rule): its events go to the sink as one batch."""
    _store, settings = ctx.require()
    lease = Lease(ctx.task_id, ctx.attempt, "", "", ctx.capability_token, ctx.payload)
    for event in await evaluate(settings, lease):
        yield event
