"""Whole-snapshot jobs (`window: all`, SPEC §19; invariant 22), planned by the DAG scheduler's
tick (`dag/planner.py`) in one transaction per job holding the job's row lock:

- one run in flight at a time; a run whose task ended for good records its error on the job
  (the job keeps its schedule: the next slot or change runs again);
- with a `schedule`: one run at once when its generation and epoch have none (applied, a new
  generation, an output removed by a reorg repair), then the latest cron slot since the last
  one planned (`due_slot`); slots passed while no dispatcher was up are skipped and counted
  (`missed_slots`);
- without: a run when the inputs' versions moved since the last run was planned, at most
  once per `min_interval_seconds` (`refresh_due`).

A run's task id is derived from (job, generation, slot) — or (job, generation, epoch, run
number) off schedule, (job, generation, epoch) for a scheduled job's run before its slots — so
two dispatchers planning the same slot schedule one task, and a dispatcher killed after
planning leaves a task its successor does not duplicate. The task reads every input whole at
the snapshot pinned when it is claimed; its commit (`dag/commit.py`) replaces the output's
previous version in one commit, so a reader pinned to the previous version keeps reading it
until the files are collected (after the longest token lifetime, as every retired partition).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from trace_platform.db.sql import q
from trace_platform.domain.dag_schedule import due_slot, refresh_due
from trace_platform.logs import get_logger

log = get_logger(__name__)
_RUN_NS = uuid.UUID("9b7d2c41-6e0a-4f3b-8d59-1c2e7a4f0b86")


def snapshot_task_id(job_uuid: uuid.UUID, generation: str, run: str) -> uuid.UUID:
    """Deterministic per (job, generation, run): `run` is the slot (ISO, UTC),
    `e<epoch>-r<n>` for a run on upstream change or `e<epoch>-now` for a scheduled job's run
    before its slots."""
    return uuid.uuid5(_RUN_NS, f"{job_uuid}:{generation}:{run}")


def whole_payload(range_task: dict[str, Any], slot: datetime | None) -> dict[str, Any]:
    """A range task's payload made whole: every input read at its pinned snapshot (no block
    range), marked as a whole-snapshot run."""
    inputs = [{k: v for k, v in i.items() if k != "range"} for i in range_task["inputs"]]
    spec = {**range_task["dag"], "window": "all"}
    if slot is not None:
        spec["slot"] = slot.isoformat()
    whole = {**range_task, "dag": spec, "inputs": inputs}
    if isinstance(range_task.get("work_payload"), dict):  # a UDF's event: no range
        whole["work_payload"] = {**range_task["work_payload"], "range": None}
    return whole


def _terminal(row: Any) -> bool:
    return bool(
        row["task_status"] == "canceled"
        or (row["task_status"] == "failed" and row["next_retry_at"] is None)
    )


async def plan_snapshot_job(conn: Any, job_uuid: uuid.UUID, now: datetime | None = None) -> int:
    """Plan at most one run of a whole-snapshot job; returns tasks created (0 or 1)."""
    from trace_platform.dag.planner import range_payload

    now = now or datetime.now(UTC)
    job = await conn.fetchrow(q("dags", "lock_job"), job_uuid)
    if job is None or job["status"] != "active" or job["window_kind"] != "all":
        return 0
    if job["role"] not in ("current", "building"):  # a retired generation is not computed
        return 0
    state = await conn.fetchrow(q("dag_snapshots", "lock_snapshot_job"), job_uuid)
    if state is None:
        return 0
    for r in await conn.fetch(q("dags", "open_ranges"), job_uuid):
        if not _terminal(r):
            return 0  # one run in flight at a time
        reason = (r["last_error"] or r["task_status"])[:500]
        await conn.execute(q("dags", "fail_range"), r["task_id"], reason)
        await conn.execute(q("dags", "set_job_error"), job_uuid, f"run failed: {reason}"[:500])
        log.error("dag.snapshot_run_failed", job_uuid=str(job_uuid), task_id=str(r["task_id"]))
    marks = {
        r["dataset"]: r["version"]
        for r in await conn.fetch(q("dag_snapshots", "input_marks"), job_uuid)
    }
    slot: datetime | None = None
    missed = 0
    reads = list(await conn.fetch(q("dags", "reads_of_job"), job_uuid))
    covered = await _covered(conn, reads, job["from_block"])
    if covered is None:
        return 0  # an input has committed nothing yet: nothing to compute over
    start, end = covered
    generation = job["generation"]
    if state["schedule"] and not await conn.fetchval(
        q("dag_snapshots", "has_run_of_epoch"), job_uuid, generation, job["epoch"]
    ):
        # No output of this generation and epoch yet — just applied, a new generation to
        # build, or its output removed by a reorg repair: run now, not at the next slot
        # (which could be a day away); the slots follow from there. A repair waits until
        # its inputs cover again what the removed run covered.
        before = await conn.fetchval(q("dag_snapshots", "covered_before"), job_uuid, generation)
        if before is not None and end < before:
            return 0
        run = f"e{job['epoch']}-now"
    elif state["schedule"]:
        decision = due_slot(state["schedule"], state["last_slot"] or now, now)
        if decision is None:
            return 0
        slot, missed = decision.slot, decision.missed
        run = slot.isoformat()
    else:
        changed = state["input_marks"] is None or marks != state["input_marks"]
        if not refresh_due(changed, state["planned_at"], state["min_interval_seconds"], now):
            return 0
        run = f"e{job['epoch']}-r{state['runs'] + 1}"
    task_id = snapshot_task_id(job_uuid, generation, run)
    payload = whole_payload(range_payload(job, reads, start, end), slot)
    await conn.execute(
        q("dag_snapshots", "insert_run"),
        task_id,
        job_uuid,
        generation,
        job["epoch"],
        start,
        end,
        slot,
    )
    await conn.execute(
        q("chain", "insert_range_tasks"),
        [task_id],
        [payload],
        job["org_id"],
        job["max_attempts"],
    )
    await conn.execute(q("dag_snapshots", "record_run"), job_uuid, slot, missed, now, marks)
    if missed:
        log.warning(
            "dag.slots_missed",
            job_uuid=str(job_uuid),
            missed=missed,
            slot=slot and slot.isoformat(),
        )
    log.info(
        "dag.snapshot_run_planned",
        job_uuid=str(job_uuid),
        task_id=str(task_id),
        slot=slot.isoformat() if slot else None,
    )
    return 1


async def _covered(conn: Any, reads: list[Any], from_block: int) -> tuple[int, int] | None:
    """The blocks a run's output stands for: from the job's first block to the least
    committed prefix of its chain and job inputs when planned (one block when it reads only
    registered datasets); None while one of those inputs has committed nothing from the
    job's first block (an upstream job not built yet: its dataset has no version to read).
    The run reads whatever is committed when its task is claimed."""
    tips = [
        int(await conn.fetchval(q("dags", "input_tip"), r["dataset_uuid"], from_block))
        for r in reads
        if r["bounded"]
    ]
    if tips and min(tips) <= from_block:
        return None
    return from_block, max(min(tips) if tips else 0, from_block + 1)
