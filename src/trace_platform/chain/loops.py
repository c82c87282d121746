"""Chain sync's dispatcher loops (planner, head observer, compaction) and outbox routes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from trace_platform.aio import LoopRunner
from trace_platform.alerts.schedule import schedule_evaluations
from trace_platform.chain.compaction import Compactor
from trace_platform.chain.planner import ChainPlanner, HeadObserver
from trace_platform.config import Settings
from trace_platform.ports import ObjectStore, OutboxRoute

NEVER_BUSY = 1 << 30
COMPACTION_INTERVAL = 5.0


def start_chain_loops(
    runner: LoopRunner,
    settings: Settings,
    pool: asyncpg.Pool,
    store: ObjectStore,
    plan_now: asyncio.Event,
) -> HeadObserver:
    """Start the planner (woken early by `plan_now`: a head moved, a range committed), the
    head observer and the compactor; returns the observer, whose RPC sessions the caller
    closes."""
    planner = ChainPlanner(pool, settings)
    observer = HeadObserver(pool, settings, on_new_head=plan_now.set)
    # Retired files outlive every token that could still name their snapshot.
    gc_after = 2 * max(settings.token_ttl_seconds, settings.lease_seconds * 2)
    compactor = Compactor(pool, store, gc_after)
    runner.start("chain_planner", planner.tick, settings.chain_interval, NEVER_BUSY, plan_now)
    runner.start("chain_head", observer.tick, min(0.1, settings.chain_interval), NEVER_BUSY)
    runner.start("chain_compaction", compactor.tick, COMPACTION_INTERVAL, NEVER_BUSY)
    return observer


def chain_routes(pool: asyncpg.Pool) -> dict[str, OutboxRoute]:
    """`dataset.range_committed` schedules the evaluations of the dataset's alerts for that
    range (deterministic task ids: a re-delivered event schedules nothing twice)."""

    async def committed(_ids: list[uuid.UUID], payloads: list[dict[str, Any]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for p in payloads:
                await schedule_evaluations(
                    conn,
                    uuid.UUID(p["dataset_uuid"]),
                    [(p["partition_id"], int(p["start"]), int(p["end"]))],
                )

    return {"dataset.range_committed": committed}
