"""The reorg cascade (SPEC §19, invariant 20): when an input loses its committed ranges from
some block on (a reorg repair, an upstream recompute, a re-decode), every job that reads it
within its ranges drops the ranges that reached that block — their partitions leave readers'
snapshots, their in-flight tasks are canceled — and rewinds under a new epoch, and so on down
the graph, all in the caller's transaction. A reader sees a gap until the recompute commits,
never a row computed from a partition that is no longer current.

A merge-only compaction replaces partitions without changing what they hold: it never calls
this.
"""

from __future__ import annotations

import uuid
from typing import Any

from trace_platform.chain.reorg import on_replaced
from trace_platform.db.sql import q
from trace_platform.domain.dag import invalidated_from
from trace_platform.logs import get_logger

log = get_logger(__name__)
REPLACED = "replaced: an input of this range changed"


async def invalidate_readers(
    conn: Any, dataset_uuid: uuid.UUID, from_block: int, seen: set[uuid.UUID] | None = None
) -> int:
    """Every job reading `dataset_uuid` within its ranges, and their readers, recompute
    from `from_block` on. Returns the ranges replaced."""
    seen = set() if seen is None else seen
    replaced = 0
    for row in await conn.fetch(q("dags", "readers_of"), dataset_uuid):
        replaced += await invalidate_job(conn, row["job_uuid"], from_block, seen)
    return replaced


async def invalidate_job(
    conn: Any, job_uuid: uuid.UUID, from_block: int, seen: set[uuid.UUID] | None = None
) -> int:
    """One job recomputes every range that reaches `from_block` (and its readers follow).
    Lock order as a completion's: tasks, then ranges, then the output dataset."""
    seen = set() if seen is None else seen
    job = await conn.fetchrow(q("dags", "lock_job"), job_uuid)
    if job is None or job["status"] == "removed":
        return 0
    if job["window_kind"] == "all":
        # A whole-snapshot run read everything committed when it was claimed, whatever range
        # it is filed under: any lost input block invalidates its whole output.
        from_block = min(from_block, job["from_block"])
    reaching = await conn.fetch(q("dags", "ranges_reaching"), job_uuid, from_block)
    start = invalidated_from([(r["range_start"], r["range_end"]) for r in reaching], from_block)
    if start is None:
        if job["cursor"] > from_block:  # ranges failed past it: start over from there
            start = from_block
        else:
            return 0
    in_flight = [r["task_id"] for r in reaching if r["status"] == "scheduled"]
    if in_flight:
        await conn.execute(q("tasks", "cancel_tasks"), in_flight, REPLACED)
    rows = await conn.fetch(q("dags", "replace_ranges_from"), job_uuid, from_block)
    seq = await conn.fetchval(q("chain", "bump_commit_seq"), job["dataset_uuid"])
    await conn.execute(q("dags", "remove_partitions_from"), job["dataset_uuid"], from_block, seq)
    await conn.execute(q("dags", "rewind_job"), job_uuid, start)
    log.warning(
        "dag.ranges_replaced",
        job_uuid=str(job_uuid),
        from_block=from_block,
        rewound_to=start,
        replaced=len(rows),
    )
    replaced = len(rows)
    if job_uuid not in seen:
        seen.add(job_uuid)
        replaced += await invalidate_readers(conn, job["dataset_uuid"], start, seen)
    return replaced


# A replaced chain range (a reorg, a re-decode) carries down the graph.
on_replaced(invalidate_readers)
