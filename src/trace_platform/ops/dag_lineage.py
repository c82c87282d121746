"""A DAG job's partitions and their lineage (SPEC §19), as the console's job page shows
them: the live partitions of a job row (the current one, or the row a given generation
reads as), by range and keyset-paged, each with the input partitions it was computed from
(dataset, input job and its generation, the block range read). A fixed number of
statements per page whatever the job's size."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from trace_platform.db.sql import q
from trace_platform.domain.errors import NotFoundError, ValidationError
from trace_platform.domain.sql_gate import shown
from trace_platform.ops.env import OpsEnv

PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True)
class LineageInput:
    """One input partition a partition read: its dataset, the DAG job whose output it is
    (None: a chain's or a registered dataset), that job row's definition hash, the range."""

    dataset: str | None
    partition_id: uuid.UUID
    range_start: int
    range_end: int
    job: str | None = None
    dag: str | None = None
    generation: str | None = None


@dataclass(frozen=True)
class JobPartition:
    partition_id: uuid.UUID
    range_start: int
    range_end: int
    rows: int
    size_bytes: int
    committed_at: datetime
    generation: str | None  # the job row's definition hash its range was computed under
    task_id: uuid.UUID | None
    inputs: list[LineageInput] = field(default_factory=list)


@dataclass(frozen=True)
class JobPartitions:
    """A page of a job row's live partitions. `generations`: the DAG generations that read
    as this row (with their state); `next_after`: the cursor of the next page (None: last)."""

    dag: str
    job: str
    role: str
    status: str
    window: str
    definition: str
    dag_generation: int
    building_generation: int | None
    generations: list[tuple[int, str]]
    inputs: list[dict[str, str]]
    partitions: list[JobPartition]
    total: int
    rows: int
    after: int | None
    next_after: int | None


async def job_partitions(
    env: OpsEnv,
    org_id: uuid.UUID,
    dag: str,
    job: str,
    generation: int | None = None,
    after: int | None = None,
    limit: int = PAGE,
) -> JobPartitions:
    """Partitions of job `job` of DAG `dag` starting after range start `after`, `limit` at
    most (1..1000), with their lineage. 404 when the DAG, the job or that generation of it
    is not the org's; 400 on a bad limit."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit: between 1 and {MAX_PAGE}")
    if after is not None and not -(2**63) <= after < 2**63:
        raise ValidationError("after: a range start (a 64-bit integer)")
    # A generation is an int column: one past it names no generation (was: a DataError).
    found = generation is None or 1 <= generation < 2**31
    async with env.state.acquire() as conn:
        row = (
            await conn.fetchrow(q("console", "dag_job_row"), org_id, dag, job, generation)
            if found
            else None
        )
        if row is None:
            where = "" if generation is None else f" in generation {generation}"
            raise NotFoundError(f"no job {shown(job)!r} of DAG {shown(dag)!r}{where}")
        gens = await conn.fetch(
            q("console", "generations_of_job_row"), row["dag_id"], job, str(row["job_uuid"])
        )
        parts = await conn.fetch(
            q("console", "job_partitions_page"),
            row["dataset_uuid"],
            row["job_uuid"],
            after,
            limit + 1,
        )
        more = len(parts) > limit
        parts = parts[:limit]
        totals = await conn.fetchrow(q("dags", "live_rows"), [row["dataset_uuid"]])
        lineage: dict[uuid.UUID, list[LineageInput]] = {}
        for r in await conn.fetch(
            q("console", "lineage_of_partitions"), [p["partition_id"] for p in parts]
        ):
            lineage.setdefault(r["partition_id"], []).append(
                LineageInput(
                    r["dataset_name"],
                    r["input_partition_id"],
                    int(r["range_start"]),
                    int(r["range_end"]),
                    r["input_job"],
                    r["input_dag"],
                    r["input_generation"],
                )
            )
    return JobPartitions(
        dag=dag,
        job=job,
        role=row["role"],
        status=row["status"],
        window=row["window_kind"],
        definition=row["generation"],
        dag_generation=row["dag_generation"],
        building_generation=row["building_generation"],
        generations=[(int(g["generation"]), g["state"]) for g in gens],
        inputs=[{"kind": i["kind"], "name": i["name"]} for i in row["inputs"]],
        partitions=[
            JobPartition(
                p["partition_id"],
                int(p["range_start"]),
                int(p["range_end"]),
                int(p["row_count"]),
                int(p["size_bytes"]),
                p["committed_at"],
                p["generation"],
                p["task_id"],
                lineage.get(p["partition_id"], []),
            )
            for p in parts
        ],
        total=int(totals["partitions"]) if totals else 0,
        rows=int(totals["rows"]) if totals else 0,
        after=after,
        next_after=int(parts[-1]["range_start"]) if more and parts else None,
    )
