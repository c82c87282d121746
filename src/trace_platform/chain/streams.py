"""A chain job's stream as a schedulable thing (SPEC §11, §15): lock it, settle it, give it
new ranges. Shared by the two planners of streams — the chain planner (extraction ranges,
`chain/planner.py`) and the derived-output scheduler (decoded tables, `dag/decoded.py`) — so
a stream stops, counts and logs the same way whoever plans it.

Each call runs in the caller's transaction, which holds the stream's row lock (SKIP LOCKED:
several dispatchers never plan one stream at once).
"""

from __future__ import annotations

import uuid
from typing import Any

from trace_platform.chain.pool import REFUSED, rpc_pool
from trace_platform.chain.spec import range_task_id
from trace_platform.config import Settings
from trace_platform.db.sql import q
from trace_platform.domain.derived import settle_open_ranges
from trace_platform.logs import get_logger
from trace_platform.metrics import CHAIN_RANGES

log = get_logger(__name__)
AUTO_INFLIGHT, MAX_AUTO_INFLIGHT = 16, 64


def default_inflight(settings: Settings, pool_name: str) -> int:
    """Ranges in flight per stream when its spec sets none: `AUTO_INFLIGHT` per endpoint
    of the pool that takes ranges and is not refused (the worker batches the ranges of a
    claim into few cryo calls, so more in flight is fewer, larger calls)."""
    pool = rpc_pool(settings, pool_name)
    usable = [h for h in pool.health if h.state != REFUSED] if pool else []
    ranges = [h for h in usable if h.endpoint.serves_ranges()] or usable
    return min(MAX_AUTO_INFLIGHT, AUTO_INFLIGHT * max(1, len(ranges)))


async def plannable_streams(conn: Any, decoded: bool) -> dict[uuid.UUID, list[str]]:
    """The active streams of unpaused jobs by job: the decoded tables' (`decoded`) or the
    extracted ones'."""
    by_job: dict[uuid.UUID, list[str]] = {}
    for s in await conn.fetch(q("chain", "plannable_streams"), decoded):
        by_job.setdefault(s["job_id"], []).append(s["stream"])
    return by_job


async def settle_stream(
    conn: Any, settings: Settings, job_id: uuid.UUID, stream: str
) -> tuple[Any, int, int] | None:
    """Lock the stream; stop it on a range that failed for good (the range and reason in
    its status, a `chain.stream_stopped` event); (row, free slots, slots) of an active
    stream, None otherwise."""
    row = await conn.fetchrow(q("chain", "lock_stream"), job_id, stream)
    if row is None or row["status"] != "active" or row["paused"]:
        return None
    limit = row["max_inflight"] or default_inflight(settings, row["rpc_pool"])
    inflight, failed = settle_open_ranges(
        await conn.fetch(q("chain", "open_ranges"), job_id, stream)
    )
    if failed is not None:
        await conn.execute(q("chain", "fail_range"), failed.task_id, failed.reason)
        await conn.execute(q("chain", "stop_stream"), job_id, stream, failed.error)
        await conn.execute(
            q("chain", "insert_event"),
            job_id,
            "chain.stream_stopped",
            {"stream": stream, "range": [failed.start, failed.end], "error": failed.reason},
        )
        CHAIN_RANGES.labels("failed").inc()
        log.error(
            "chain.stream_stopped",
            job_id=str(job_id),
            stream=stream,
            range_start=failed.start,
            range_end=failed.end,
        )
        return None
    return row, limit - inflight, limit


async def schedule_ranges(
    conn: Any,
    settings: Settings,
    row: Any,
    ranges: list[tuple[int, int]],
    payloads: list[dict[str, Any]],
) -> None:
    """Record the stream's new ranges and create their tasks (deterministic ids) with
    wake-ups; counted and logged as `chain.ranges_scheduled`."""
    job_id, stream, generation = row["job_id"], row["stream"], row["generation"]
    ids = [range_task_id(job_id, stream, s, e, generation) for s, e in ranges]
    await conn.execute(
        q("chain", "insert_ranges"),
        job_id,
        stream,
        generation,
        ids,
        [s for s, _ in ranges],
        [e for _, e in ranges],
    )
    await conn.execute(
        q("chain", "insert_range_tasks"), ids, payloads, row["org_id"], settings.chain_max_attempts
    )
    await conn.execute(q("outbox", "notify_outbox"))
    CHAIN_RANGES.labels("scheduled").inc(len(ranges))
    log.info(
        "chain.ranges_scheduled",
        job_id=str(job_id),
        stream=stream,
        count=len(ranges),
        first=ranges[0][0],
        last=ranges[-1][1],
    )


async def stop_stream(conn: Any, job_id: uuid.UUID, stream: str, reason: str) -> None:
    """Stop a stream that cannot go on, its reason in its status."""
    await conn.execute(q("chain", "stop_stream"), job_id, stream, reason[:500])
    log.error("chain.stream_stopped", job_id=str(job_id), stream=stream)
