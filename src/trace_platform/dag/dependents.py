"""What follows a committed range (SPEC §12, §19): the one place that hears
`dataset.range_committed` and schedules what derives from the new partition — the alert
evaluations of the dataset's alerts (deterministic task ids: a re-delivered event schedules
nothing twice) and, by waking the derived-output scheduler (`dag.scheduler`), the ranges of
the decoded tables and DAG jobs that read it. Chain sync and DAG commits announce; neither
imports who listens."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from trace_platform.alerts.schedule import schedule_evaluations
from trace_platform.dag.generations import SWITCHED_TOPIC
from trace_platform.db.sql import q
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

    async def switched(_ids: list[uuid.UUID], payloads: list[dict[str, Any]]) -> None:
        # A DAG generation became current: the alert rules that moved to its outputs
        # evaluate its partitions, block headers read from the stored chain (no RPC);
        # events equal to ones already delivered are deduplicated by their keys.
        async with pool.acquire() as conn, conn.transaction():
            for p in payloads:
                for ds_text in p.get("datasets", []):
                    ds = uuid.UUID(ds_text)
                    chain = await conn.fetchval(q("dags", "chain_of_dataset"), ds)
                    for alert in await conn.fetch(q("alerts", "alerts_of_dataset"), ds):
                        parts = await conn.fetch(
                            q("alerts", "partitions_after"), ds, alert["start_block"]
                        )
                        await schedule_evaluations(
                            conn,
                            ds,
                            [(r["partition_id"], r["range_start"], r["range_end"]) for r in parts],
                            [alert],
                            headers_from=f"{chain}.blocks" if chain else None,
                        )

    return {"dataset.range_committed": committed, SWITCHED_TOPIC: switched}
