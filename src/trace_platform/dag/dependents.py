"""What follows a committed range (SPEC §12, §19): the one place that hears
`dataset.range_committed` and schedules what derives from the new partition — the alert
evaluations of the dataset's alerts (deterministic task ids: a re-delivered event schedules
nothing twice) and, by waking the DAG scheduler, the ranges of jobs that read it. Chain sync
and DAG commits announce; neither imports who listens."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from trace_platform.alerts.schedule import schedule_evaluations
from trace_platform.ports import OutboxRoute


def dependents_routes(pool: asyncpg.Pool, wake: asyncio.Event) -> dict[str, OutboxRoute]:
    async def committed(_ids: list[uuid.UUID], payloads: list[dict[str, Any]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for p in payloads:
                await schedule_evaluations(
                    conn,
                    uuid.UUID(p["dataset_uuid"]),
                    [(p["partition_id"], int(p["start"]), int(p["end"]))],
                )
        wake.set()

    return {"dataset.range_committed": committed}
