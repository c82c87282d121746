"""The DAG scheduler (a dispatcher loop, SPEC §19): each tick, per active per-range job, in
one transaction holding the job's row lock —

1. a registered dataset the job reads whole has a new version: the job recomputes from its
   start (the cascade carries it to its readers);
2. a range whose task failed for good stops the job with the range and reason visible (it
   never silently holds a slot);
3. the job's inputs' committed prefixes (`contiguous_tip` of each range input from the
   cursor) give how far it may go; `next_ranges` cuts that into ranges holding at most
   `backfill_rows` input rows (default 1,000,000) and `backfill_blocks` blocks (following
   the partitions of inputs whose rows carry no block number),
   at most `max_concurrency` in flight; each becomes a task with a deterministic id (job,
   generation, epoch, range) and its wake-up, and the cursor moves past it.

Its tick runs in the one derived-output scheduler (`dag/scheduler.py`), next to the
decoded tables', woken early when a range commits anywhere (a chain range, a job's range).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from trace_platform.dag.cascade import invalidate_job
from trace_platform.dag.generations import cut_over_ready
from trace_platform.dag.snapshots import plan_snapshot_job
from trace_platform.dag.spec import backfill_limits, dag_range_task_id
from trace_platform.db.sql import q
from trace_platform.domain.dag import Partition, contiguous_tip, next_ranges
from trace_platform.domain.derived import settle_open_ranges
from trace_platform.logs import get_logger

log = get_logger(__name__)
PARTITIONS_PER_TICK = 20_000  # of one input, from the cursor on


def range_payload(job: Any, reads: list[Any], start: int, end: int) -> dict[str, Any]:
    """A range task: the job's SQL over its inputs, each range input granted for [start,
    end) only, each whole input at the snapshot pinned at claim."""
    definition = job["definition"]
    inputs: list[dict[str, Any]] = []
    for item in job["inputs"]:
        if item["kind"] == "chain":
            inputs.append({"chain": item["name"], "range": [start, end]})
        else:
            # A job's output within the range; a registered dataset whole, at its snapshot.
            # A job's output by its dataset's id (fixed at apply: the generation it reads).
            read: dict[str, Any] = {"dataset": item.get("dataset_uuid") or item["dataset"]}
            if item["kind"] == "job":
                read["range"] = [start, end]
            if item.get("where"):
                read["where"] = item["where"]  # a typed predicate on the grant, not SQL
            inputs.append(read)
    if "udf" in definition:
        return udf_payload(job, inputs, [start, end])
    return {
        "operator": "dag_sql",
        "dag": {**_job_range(job, start, end), "sql": definition["run_sql"]},
        "inputs": inputs,
    }


def _job_range(job: Any, start: int | None, end: int | None) -> dict[str, Any]:
    """What a task of a job's range says of it (`dag`: where and what the commit hook
    commits); [start, end) is None for a whole-snapshot run."""
    return {
        "dag": job["dag_name"],
        "job": job["name"],
        "job_uuid": str(job["job_uuid"]),
        "dataset_uuid": str(job["dataset_uuid"]),
        "generation": job["generation"],
        "epoch": job["epoch"],
        "start": start,
        "end": end,
        "unique_key": job["definition"].get("unique_key"),
    }


def udf_payload(job: Any, inputs: list[dict[str, Any]], window: list[int] | None) -> dict[str, Any]:
    """A UDF job's task (SPEC §19): the dispatcher invokes the job's bundle in the runner
    with the event `{range, inputs, config}`; the runner checks the rows it returns against
    the job's schema and writes the partition (`dag` says where and what; the commit hook
    keys on it). `window` is [start, end), or None for a whole-snapshot run."""
    definition = job["definition"]
    start, end = window if window is not None else (None, None)
    # `relation`: the name `context.query` reads the input by in this task — a job input by
    # its dataset's id (the generation this task reads, as a SQL job's SQL names it), a
    # registered dataset by its name; `dataset`: the input's public name.
    event_inputs = [
        {
            "kind": item["kind"],
            "name": item["name"],
            **(
                {
                    "dataset": item["dataset"],
                    "relation": item.get("dataset_uuid") or item["dataset"],
                }
                if item["kind"] != "chain"
                else {}
            ),
            **({"where": item["where"]} if item.get("where") else {}),
        }
        for item in job["inputs"]
    ]
    return {
        "runtime": "lambda",
        "udf": {"bundle_id": definition["bundle"]["bundle_id"]},
        "work_payload": {
            "range": window,
            "inputs": event_inputs,
            "config": definition["udf"].get("config") or {},
        },
        # the schema: [[column, type], ...] in declared order
        "dag": {**_job_range(job, start, end), "schema": definition["columns"]},
        "inputs": inputs,
    }


class DagPlanner:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def tick(self) -> int:
        """Plan every active job (per-range, then whole-snapshot); returns tasks created."""
        created = 0
        async with self.pool.acquire() as conn:
            jobs = [r["job_uuid"] for r in await conn.fetch(q("dags", "plannable_jobs"))]
            for job_uuid in jobs:
                async with conn.transaction():
                    created += await self.plan_job(conn, job_uuid)
            # Whole-snapshot jobs (`window: all`): a run per change or cron slot.
            for row in await conn.fetch(q("dag_snapshots", "snapshot_jobs")):
                async with conn.transaction():
                    created += await plan_snapshot_job(conn, row["job_uuid"])
            if created:
                await conn.execute(q("outbox", "notify_outbox"))
        await cut_over_ready(self.pool)  # a building generation that covers cuts over
        return created

    async def plan_job(self, conn: Any, job_uuid: uuid.UUID) -> int:
        job = await conn.fetchrow(q("dags", "lock_job"), job_uuid)
        if job is None or job["status"] != "active":
            return 0
        reads = list(await conn.fetch(q("dags", "reads_of_job"), job_uuid))
        for read in reads:
            if read["bounded"]:
                continue
            latest = await conn.fetchval(q("dags", "latest_version"), read["dataset_uuid"])
            if latest != read["version"]:
                await invalidate_job(conn, job_uuid, job["from_block"])
                await conn.execute(
                    q("dags", "set_read_version"), job_uuid, read["dataset_uuid"], latest
                )
                log.info("dag.input_version_changed", job_uuid=str(job_uuid))
                return 0
        in_flight, failed = settle_open_ranges(await conn.fetch(q("dags", "open_ranges"), job_uuid))
        if failed is not None:
            await conn.execute(q("dags", "fail_range"), failed.task_id, failed.reason)
            await conn.execute(q("dags", "stop_job"), job_uuid, failed.error)
            log.error("dag.job_stopped", job_uuid=str(job_uuid), range_start=failed.start)
            return 0
        room = job["max_concurrency"] - in_flight
        if room <= 0:
            return 0
        cursor = job["cursor"]
        tips: list[int] = []
        boundaries: list[list[int]] = []
        sizes: list[list[Partition]] = []
        for read in reads:
            if not read["bounded"]:
                continue
            parts = [
                Partition(p["range_start"], p["range_end"], p["row_count"])
                for p in await conn.fetch(
                    q("dags", "partitions_from"), read["dataset_uuid"], cursor, PARTITIONS_PER_TICK
                )
            ]
            tips.append(contiguous_tip(parts, cursor))
            sizes.append(parts)
            if await conn.fetchval(q("dags", "job_of_dataset"), read["dataset_uuid"]):
                boundaries.append([p.end for p in parts])
        if not tips:
            return 0
        span, max_rows = backfill_limits(job["definition"])
        ranges = next_ranges(
            cursor, min(tips), span, room, boundaries, sizes, max_rows, job["max_concurrency"]
        )
        if not ranges:
            return 0
        generation, epoch = job["generation"], job["epoch"]
        ids = [dag_range_task_id(job_uuid, generation, epoch, s, e) for s, e in ranges]
        await conn.execute(
            q("dags", "insert_ranges"),
            job_uuid,
            generation,
            epoch,
            ids,
            [s for s, _ in ranges],
            [e for _, e in ranges],
        )
        payloads = [range_payload(job, reads, s, e) for s, e in ranges]
        await conn.execute(
            q("chain", "insert_range_tasks"), ids, payloads, job["org_id"], job["max_attempts"]
        )
        await conn.execute(q("dags", "advance_cursor"), job_uuid, ranges[-1][1])
        await conn.execute(q("dags", "set_job_error"), job_uuid, None)
        return len(ranges)
