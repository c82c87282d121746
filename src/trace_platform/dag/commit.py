"""A job range's commit (SPEC §19): the output partition becomes part of the job's dataset
only on the fenced successful completion of its task, inside that completion's transaction,
with its lineage — the live input partitions it was computed from.

The range must still be scheduled (a replacement of its inputs ends it: the commit is
refused for good, no retry), the reported file must lie inside the attempt's own prefix, and
no live partition of the output may overlap it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from trace_platform.chain.commit import (
    CommitRejected,
    RangeReplaced,
    checked_file,
    committed_event_id,
)
from trace_platform.dag.run import PAYLOAD_KEY, output_prefix
from trace_platform.db.sql import q
from trace_platform.logs import get_logger

log = get_logger(__name__)
MAX_FILES = 16


def checked_files(outputs: Any, prefix: str, start: int, end: int) -> tuple[list[Any], int, int]:
    """The reported files (each inside the attempt's prefix), their rows and bytes."""
    report = outputs.get(PAYLOAD_KEY) if isinstance(outputs, dict) else None
    if not isinstance(report, dict) or report.get("start") != start or report.get("end") != end:
        raise CommitRejected("the completion reports no job range, or another range")
    files = report.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_FILES:
        raise CommitRejected("the completion's file list is malformed")
    rows = size = 0
    clean = []
    for f in files:
        checked = checked_file(f, prefix)
        rows, size = rows + checked["rows"], size + checked["size"]
        clean.append(checked)
    return clean, rows, size


async def commit_job_range(
    conn: Any, store_root: str, task_id: uuid.UUID, attempt: int, outputs: Any
) -> dict[str, Any]:
    """Commit one range of a job (the caller holds the task's row lock inside the
    completion's transaction); raises CommitRejected."""
    rng = await conn.fetchrow(q("dags", "range_for_task"), task_id)
    if rng is None or rng["status"] != "scheduled":
        raise RangeReplaced("the range of this task is no longer scheduled (its inputs changed)")
    start, end, ds = rng["range_start"], rng["range_end"], rng["dataset_uuid"]
    prefix = output_prefix(store_root, str(ds), task_id, attempt)
    files, rows, size = checked_files(outputs, prefix, start, end)
    # The output's row lock first: commits of one dataset run one at a time from here.
    seq = await conn.fetchval(q("chain", "bump_commit_seq"), ds)
    whole = rng["window_kind"] == "all"
    if whole:
        # A whole-snapshot run replaces the output's previous version in this commit;
        # readers pinned to an earlier commit keep reading that one.
        await conn.execute(q("dag_snapshots", "remove_live_partitions"), ds, seq)
    elif await conn.fetch(q("dags", "overlapping"), ds, start, end):
        raise CommitRejected("range overlaps a committed partition of the job")
    partition_id = uuid.uuid4()
    await conn.execute(
        q("chain", "insert_partition"),
        partition_id,
        ds,
        start,
        end,
        files,
        rows,
        size,
        None,
        None,
        seq,
        task_id,
        False,
    )
    lineage: list[tuple[Any, Any, int, int]] = []
    for read in await conn.fetch(q("dags", "reads_of_job"), rng["job_uuid"]):
        if not read["bounded"] or whole:  # a whole run read every partition: none listed
            continue
        for p in await conn.fetch(q("dags", "overlapping"), read["dataset_uuid"], start, end):
            lineage.append(
                (read["dataset_uuid"], p["partition_id"], p["range_start"], p["range_end"])
            )
    if lineage:
        columns = list(zip(*lineage, strict=True))
        await conn.execute(q("dags", "insert_lineage"), partition_id, *map(list, columns))
    await conn.execute(q("dags", "mark_committed"), task_id, partition_id)
    event = {
        "dataset_uuid": str(ds),
        "job_uuid": str(rng["job_uuid"]),
        "start": start,
        "end": end,
        "commit_seq": seq,
        "partition_id": str(partition_id),
    }
    await conn.execute(
        q("chain", "insert_committed_event"), committed_event_id(ds, start, end, seq), event
    )
    log.info(
        "dag.range_committed",
        task_id=str(task_id),
        attempt=attempt,
        dataset_uuid=str(ds),
        range_start=start,
        range_end=end,
        commit_seq=seq,
        rows=rows,
    )
    return event


class JobRangeCommitHook:
    """The dispatcher's success hook of DAG range tasks: commit the range in the
    completion's transaction, then wake the scheduler (a slot is free, readers may go)."""

    payload_key = PAYLOAD_KEY

    def __init__(self, store_root: str, on_commit: Callable[[], None] = lambda: None) -> None:
        self.store_root = store_root
        self.on_commit = on_commit

    async def on_success(
        self, conn: Any, task_id: uuid.UUID, attempt: int, outputs: dict[str, Any] | None
    ) -> None:
        try:
            await commit_job_range(conn, self.store_root, task_id, attempt, outputs)
        except CommitRejected as exc:
            log.warning(
                "dag.commit_rejected", task_id=str(task_id), attempt=attempt, reason=str(exc)
            )
            raise

    def committed(self) -> None:
        self.on_commit()
