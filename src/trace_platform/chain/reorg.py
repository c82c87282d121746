"""Reorg repair (SPEC §11): when the node's canonical chain no longer matches committed
ranges, every stream of the job drops the ranges ending after the fork block (their
partitions leave the dataset at a new snapshot, their in-flight tasks are canceled) and
rewinds its cursor under a new generation, so the planner re-syncs them as new partitions.
One transaction; a `chain.reorg` event records depth and blocks."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from trace_platform.chain.spec import aligned_start
from trace_platform.db.sql import q
from trace_platform.logs import get_logger
from trace_platform.metrics import CHAIN_RANGES, CHAIN_REORGS, TASK_TRANSITIONS

log = get_logger(__name__)

# Called in the replacing transaction with (conn, dataset_uuid, first block lost) whenever a
# stream loses committed ranges; chain sync announces, it never imports who listens.
ReplacementListener = Callable[[Any, uuid.UUID, int], Awaitable[int]]
_LISTENERS: list[ReplacementListener] = []


def on_replaced(listener: ReplacementListener) -> None:
    """Register what must follow a replaced range (once per listener)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


REPLACED = "canceled: its range was replaced (chain reorganisation or re-decode)"


async def replace_from(conn: Any, stream: Any, from_block: int, fork_block: int) -> int:
    """Drop one stream's ranges ending after `fork_block` (partitions leave at a new
    snapshot, in-flight tasks are canceled) and rewind it under a new generation; the
    caller holds the stream's row lock. Returns the ranges replaced."""
    name, job_id = stream["stream"], stream["job_id"]
    # The in-flight ranges' tasks end through the kernel's cancel, before their ranges are
    # touched: a completion locks its task, then its range, and so does this (the other way
    # round the two could deadlock). A wake-up still queued is refused at claim; a running
    # attempt's heartbeat and report are refused, and its worker stops it.
    in_flight = await conn.fetch(q("chain", "scheduled_range_tasks_from"), job_id, name, fork_block)
    if in_flight:
        canceled = await conn.fetch(
            q("tasks", "cancel_tasks"), [r["task_id"] for r in in_flight], REPLACED
        )
        TASK_TRANSITIONS.labels("canceled").inc(len(canceled))
        for task in canceled:
            log.info("task.canceled", task_id=str(task["task_id"]), attempt=task["attempt"])
    rows = await conn.fetch(q("chain", "replace_ranges_from"), job_id, name, fork_block)
    seq = await conn.fetchval(q("chain", "bump_commit_seq"), stream["dataset_uuid"])
    await conn.execute(
        q("chain", "remove_partitions_from"), stream["dataset_uuid"], fork_block, seq
    )
    # From the first replaced range (a backfill range may start chunks before the fork).
    start = min(
        [aligned_start(from_block, stream["chunk_size"], fork_block)]
        + [int(r["range_start"]) for r in rows]
    )
    await conn.execute(q("chain", "rewind_stream"), job_id, name, start)
    for listener in _LISTENERS:  # what derives from this dataset follows, in this transaction
        await listener(conn, stream["dataset_uuid"], start)
    return len(rows)


async def repair_reorg(
    pool: asyncpg.Pool, job_id: uuid.UUID, fork_block: int, detail: dict[str, Any]
) -> dict[str, int]:
    """Replace every range of the job that ends after `fork_block`; returns replaced
    ranges per stream."""
    replaced: dict[str, int] = {}
    async with pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(q("chain", "lock_job"), job_id)
        if job is None:
            return replaced
        from_block = int(job["mode"].get("from_block", 0))
        for stream in await conn.fetch(q("chain", "lock_streams_of_job"), job_id):
            replaced[stream["stream"]] = await replace_from(conn, stream, from_block, fork_block)
        detail = {**detail, "replaced_ranges": replaced}
        await conn.execute(q("chain", "insert_event"), job_id, "chain.reorg", detail)
        await conn.execute(q("chain", "record_reorg"), job_id, detail)
    CHAIN_REORGS.inc()
    CHAIN_RANGES.labels("replaced").inc(sum(replaced.values()))
    log.warning(
        "chain.reorg",
        job_id=str(job_id),
        fork_block=fork_block,
        depth=detail.get("depth"),
        replaced=sum(replaced.values()),
    )
    return replaced
