"""DAG operations for people (CLI, `/v1/dags`): apply a `kind: dag` spec, list, status,
pause, resume, delete. Each state change is one transaction; no SQL lives in callers.

Apply checks the whole file before anything changes: every input exists in the org, and each
job's SQL passes the gate reading only its inputs' relations (a name two inputs share is
refused, naming both) and binds against their columns (`ops.dag_columns`). The SQL that
runs is the user's with each relation written by its full name (`qualify_relations`), so it
reads the same relations whatever its task is granted.
A job whose definition changed — or whose upstream did — is a new generation, built beside
the current one from committed data (`dag/generations.py`); readers keep the current one
until every changed job of the DAG cuts over in one transaction. `rollback_dag` returns to
the previous generation, `purge_dag` deletes a kept one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from trace_platform.dag import generations
from trace_platform.dag.generations import JobWrite, apply_generation, coverage
from trace_platform.dag.spec import (
    ChainInput,
    DagSpec,
    DatasetInput,
    JobInput,
    JobSpec,
    dag_id_for,
)
from trace_platform.datasets import dataset_uuid_for
from trace_platform.db.sql import q
from trace_platform.domain.capability import parse_where
from trace_platform.domain.catalog import bare_alias, relation_aliases
from trace_platform.domain.dag import definition_hash, qualify_relations
from trace_platform.domain.dag_schedule import next_slot
from trace_platform.domain.errors import ConflictError, NotFoundError, ValidationError
from trace_platform.domain.sql_gate import SqlRejected, check_sql, shown
from trace_platform.ops.chains import spec_digest
from trace_platform.ops.dag_columns import JobColumns, check_columns
from trace_platform.ops.env import OpsEnv

KIND = "dag"


@dataclass
class JobPlan:
    """One job as apply will write it."""

    name: str
    definition: dict[str, Any]
    inputs: list[dict[str, Any]]
    reads: dict[uuid.UUID, tuple[bool, str | None]]  # dataset → (bounded, whole version)
    from_block: int
    generation: str = ""
    upstream: list[str] = field(default_factory=list)
    columns: JobColumns | None = None  # what apply's column check binds (`ops.dag_columns`)


def _add(catalog: dict[str, set[str]], aliases: dict[str, str]) -> None:
    for alias, full in aliases.items():
        catalog.setdefault(alias, set()).add(full)


async def plan_job(
    conn: Any, org_id: uuid.UUID, spec: DagSpec, name: str, job: JobSpec, done: dict[str, JobPlan]
) -> JobPlan:
    """Resolve a job's inputs and gate its SQL against them; ValidationError with the path."""
    where = f"jobs.{name}"
    catalog: dict[str, set[str]] = {}
    uuids: dict[str, uuid.UUID] = {}
    inputs: list[dict[str, Any]] = []
    reads: dict[uuid.UUID, tuple[bool, str | None]] = {}
    starts: list[int] = []
    wheres: list[tuple[int, str, uuid.UUID | None, list[str]]] = []
    for i, item in enumerate(job.inputs):
        at = f"{where}.inputs.{i}"
        if item.where is not None:
            if isinstance(item, ChainInput):
                raise ValidationError(
                    f"{at}.where: a chain input holds many relations; filter one in the SQL,"
                    " or read a job's output with {job: NAME, where: ...}"
                )
            try:
                parse_where(item.where)  # as the grant will hold it
            except ValueError as exc:
                raise ValidationError(f"{at}.where: {exc}") from None
        if isinstance(item, ChainInput):
            chain = await conn.fetchrow(q("chain", "job_by_name"), org_id, item.chain)
            rels = await conn.fetch(q("dags", "chain_relations"), org_id, item.chain)
            if chain is None or not rels:
                raise ValidationError(f"{at}.chain: no chain job {item.chain!r} in this org")
            names = {r["name"]: r["dataset_uuid"] for r in rels}
            uuids.update(names)
            _add(catalog, relation_aliases(names, item.chain))
            starts.append(int(chain["mode"].get("from_block", 0)))
            inputs.append({"kind": "chain", "name": item.chain})
        elif isinstance(item, JobInput):
            up = done[item.job]
            if job.window == "range" and spec.jobs[item.job].window == "all":
                raise ValidationError(
                    f"{at}.job: {item.job!r} is a whole-snapshot job (window: all); only a"
                    " whole-snapshot job reads it"
                )
            full = spec.output_name(item.job)
            ds = dataset_uuid_for(org_id, full)
            uuids[full] = ds
            _add(catalog, {item.job: full, full.lower(): full, bare_alias(full): full})
            starts.append(up.from_block)
            inputs.append({"kind": "job", "name": item.job, "dataset": full, "where": item.where})
            if item.where is not None:
                wheres.append((i, full, None, list(item.where)))
        else:
            assert isinstance(item, DatasetInput)
            row = await conn.fetchrow(q("dags", "dataset_of_org"), org_id, item.dataset)
            if row is None:
                raise ValidationError(f"{at}.dataset: no dataset {item.dataset!r} in this org")
            if row["kind"] != "versions":
                raise ValidationError(
                    f"{at}.dataset: {item.dataset!r} is synced from a chain or derived by a"
                    " job; read it with {chain: JOB} or {job: NAME}"
                )
            version = await conn.fetchval(q("dags", "latest_version"), row["dataset_uuid"])
            uuids[row["name"]] = row["dataset_uuid"]
            reads[row["dataset_uuid"]] = (False, version)
            if item.where is not None:
                wheres.append((i, row["name"], row["dataset_uuid"], list(item.where)))
            _add(catalog, {row["name"].lower(): row["name"], bare_alias(row["name"]): row["name"]})
            inputs.append(
                {
                    "kind": "dataset",
                    "name": row["name"],
                    "dataset": row["name"],
                    "where": item.where,
                }
            )
    if not starts and job.window == "all":
        starts.append(0)  # registered datasets only: read whole, refreshed on change
    if not starts:
        raise ValidationError(
            f"{where}.inputs: a per-range job needs a chain or job input (its ranges follow it)"
        )
    if job.udf is not None:
        plan = await _plan_udf(conn, org_id, name, job, inputs, reads, uuids, min(starts), done)
        plan.columns = JobColumns(None, {}, job.schema_, wheres)
        return plan
    assert job.sql is not None
    try:
        gated = check_sql(job.sql, None)
    except SqlRejected as exc:
        raise ValidationError(f"{where}.sql: {exc.reason}") from None
    resolved: dict[str, str] = {}
    for read in gated.relations:
        targets = catalog.get(read, set())
        if len(targets) > 1:
            held = " and ".join(repr(t) for t in sorted(targets))
            raise ValidationError(
                f"{where}.sql: relation {shown(read)!r} is ambiguous: {held} both answer to it;"
                " write the full name"
            )
        if not targets:
            raise ValidationError(
                f"{where}.sql: relation {shown(read)!r} is not among the job's inputs"
            )
        resolved[read] = next(iter(targets))
    for full in resolved.values():
        ds = uuids[full]
        if ds not in reads:
            reads[ds] = (True, None)
    if job.window == "range" and not any(bounded for bounded, _ in reads.values()):
        raise ValidationError(
            f"{where}.sql: a per-range job must read a relation of a chain or job input"
        )
    definition = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    definition["run_sql"] = qualify_relations(gated.sql, resolved, gated.ctes)
    plan = JobPlan(name, definition, inputs, reads, min(starts), upstream=job.job_inputs())
    plan.generation = definition_hash(
        {k: v for k, v in definition.items() if k not in ("max_concurrency", "max_attempts")},
        {up: done[up].generation for up in plan.upstream},
    )
    plan.columns = JobColumns(
        definition["run_sql"],
        {full: uuids[full] for full in resolved.values()},
        None,
        wheres,
        job.unique_key or (),
    )
    return plan


async def _plan_udf(
    conn: Any,
    org_id: uuid.UUID,
    name: str,
    job: JobSpec,
    inputs: list[dict[str, Any]],
    reads: dict[uuid.UUID, tuple[bool, str | None]],
    uuids: dict[str, uuid.UUID],
    from_block: int,
    done: dict[str, JobPlan],
) -> JobPlan:
    """A UDF job: its bundle must be one of the org's (its sha256 joins the definition, so
    a new bundle is a new generation); it reads every relation of its inputs."""
    assert job.udf is not None
    try:
        bundle_id = uuid.UUID(job.udf.bundle_id)
    except ValueError:
        bundle_id = None
    bundle = (
        None if bundle_id is None else await conn.fetchrow(q("bundles", "get_bundle"), bundle_id)
    )
    if bundle is None or bundle["org_id"] != org_id:
        raise ValidationError(
            f"jobs.{name}.udf.bundle_id: no bundle {shown(job.udf.bundle_id)!r} in this org"
            " (upload one with `trace bundle upload`)"
        )
    for ds in uuids.values():
        reads.setdefault(ds, (True, None))
    definition = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    # The columns in their declared order (a jsonb object keeps no order): the partition's.
    definition["columns"] = [[c, t] for c, t in (job.schema_ or {}).items()]
    definition["bundle"] = {
        "bundle_id": str(bundle_id),
        "sha256": bundle["sha256"],
        "language": bundle["language"],
        "entrypoint": bundle["entrypoint"],
    }
    plan = JobPlan(name, definition, inputs, reads, from_block, upstream=job.job_inputs())
    plan.generation = definition_hash(
        {k: v for k, v in definition.items() if k not in ("max_concurrency", "max_attempts")},
        {up: done[up].generation for up in plan.upstream},
    )
    return plan


async def apply_dag(env: OpsEnv, spec: DagSpec, org_id: uuid.UUID) -> dict[str, Any]:
    """Create or update the DAG, its jobs and their output datasets. Re-applying the same
    spec changes nothing; a changed job (and every one downstream of it) is built as a new
    generation beside the current one, which readers keep until the cut-over; a job removed
    from the spec stops (its output stays readable until the next cut-over)."""
    body = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    digest = spec_digest(body)
    dag_id = dag_id_for(org_id, spec.name)
    store_root = env.settings.resolved_object_store_url
    result: dict[str, Any] = {"kind": KIND, "name": spec.name, "dag_id": str(dag_id)}
    async with env.state.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(q("chain", "get_spec"), org_id, KIND, spec.name)
        if current is not None and current["sha256"] == digest:
            return {**result, "changed": False}
        if await conn.fetchrow(q("chain", "job_by_name"), org_id, spec.name) is not None:
            raise ConflictError(
                f"name: a chain job is named {spec.name!r}; a DAG's relations would share its"
                " names (choose another name)"
            )
        plans: dict[str, JobPlan] = {}
        for name in spec.order():
            plans[name] = await plan_job(conn, org_id, spec, name, spec.jobs[name], plans)
        await check_columns(
            conn,
            env.settings,
            spec,
            {name: plan.columns for name, plan in plans.items() if plan.columns is not None},
        )
        await conn.execute(q("chain", "upsert_spec"), org_id, KIND, spec.name, body, digest)
        await conn.execute(q("dags", "upsert_dag"), dag_id, org_id, spec.name)
        writes = {
            name: JobWrite(
                name,
                plan.generation,
                plan.definition,
                plan.inputs,
                plan.reads,
                plan.from_block,
                plan.upstream,
                spec.jobs[name].window,
                spec.jobs[name].max_concurrency or spec.defaults.max_concurrency,
                spec.jobs[name].max_attempts or spec.defaults.max_attempts,
            )
            for name, plan in plans.items()
        }
        existing = {
            r["name"]: r
            for r in await conn.fetch(q("dags", "lock_jobs_of_dag"), dag_id)
            if r["role"] == "current"
        }
        changed, building, rows = await apply_generation(
            conn, org_id, dag_id, spec, writes, body, digest, store_root
        )
        for name in spec.order():
            job = spec.jobs[name]
            if job.window == "all":
                await conn.execute(
                    q("dag_snapshots", "upsert_snapshot_job"),
                    rows[name],
                    job.schedule,
                    job.refresh_interval(),
                    name in changed,
                )
        for name, old in existing.items():
            if name not in spec.jobs and old["status"] != "removed":
                await _stop_tasks(conn, old["job_uuid"])
                await conn.execute(q("dags", "remove_job"), old["job_uuid"])
        await conn.execute(q("outbox", "notify_outbox"))
        await conn.execute(q("dags", "notify_planner"))  # plan its jobs now (on commit)
    return {
        **result,
        "changed": True,
        "created": current is None,
        "jobs_changed": changed,
        "building_generation": building,
    }


async def _stop_tasks(conn: Any, job_uuid: uuid.UUID) -> None:
    """Cancel a job's in-flight ranges; they are scheduled again (new tasks) if it resumes."""
    rows = await conn.fetch(q("dags", "replace_open_ranges"), job_uuid)
    if rows:
        await conn.execute(
            q("tasks", "cancel_tasks"), [r["task_id"] for r in rows], "its DAG was stopped"
        )
        await conn.execute(q("dags", "rewind_job"), job_uuid, min(r["range_start"] for r in rows))


@dataclass(frozen=True)
class DagSummary:
    """A DAG as `trace dag list` and `GET /v1/dags` show it. `state`: running; error (a job
    stopped on a range that failed for good: its status says which and why); paused; or
    deleted (its spec was deleted: nothing runs, its outputs stay readable, applying it
    again resumes it)."""

    name: str
    state: str
    jobs: int
    stopped_jobs: int
    committed: int
    in_flight: int
    failed: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DagInput:
    """One input of a job: `chain` (a chain job's relations), `job` (a job of the same
    DAG) or `dataset` (a registered dataset, read whole), with its `where` filter."""

    kind: str
    name: str
    where: dict[str, Any] | None = None


@dataclass(frozen=True)
class DagSnapshotStatus:
    """A whole-snapshot job's refresh (SPEC §19): its `schedule` (UTC cron; None: refreshed
    on upstream change, at most once per `min_interval_seconds`), its output's current
    `version` (the commit readers pin), its last committed run (when, for which slot), the
    last slot planned and the next, and the slots skipped after downtime (`missed_slots` in
    total, `last_missed` just before `last_slot`: only the latest missed slot runs)."""

    schedule: str | None
    min_interval_seconds: float
    version: int
    runs: int
    last_run_at: datetime | None
    last_run_slot: datetime | None
    last_slot: datetime | None
    next_slot: datetime | None
    missed_slots: int
    last_missed: int


@dataclass(frozen=True)
class DagUdf:
    """A UDF job's code: its bundle (id, sha256, language, entrypoint) and the schema its
    rows are checked against (column → DuckDB type, `NOT NULL` refusing NULL)."""

    bundle_id: str
    sha256: str
    language: str
    entrypoint: str
    schema: dict[str, str]
    unique_key: list[str] | None = None


def _udf_of(definition: Any) -> DagUdf | None:
    bundle = definition.get("bundle") if isinstance(definition, dict) else None
    if not isinstance(bundle, dict):
        return None
    return DagUdf(
        bundle["bundle_id"],
        bundle["sha256"],
        bundle["language"],
        bundle["entrypoint"],
        {c: t for c, t in definition.get("columns") or []},
        definition.get("unique_key"),
    )


@dataclass(frozen=True)
class DagJobStatus:
    """One job of a DAG: its ranges (of its current generation) committed, in flight and
    failed, the rows its output holds, how far its output is committed without a gap
    (`committed_to`, an exclusive block) and how far its inputs are (`input_tip`: the least
    of its range inputs' committed prefixes), the lag between them, and its last error."""

    job: str
    relation: str
    window: str
    status: str
    generation: str
    inputs: list[DagInput]
    from_block: int
    committed: int
    in_flight: int
    failed: int
    rows: int
    committed_to: int
    input_tip: int | None
    lag_blocks: int | None
    last_error: str | None
    snapshot: DagSnapshotStatus | None = None
    udf: DagUdf | None = None  # a UDF job's bundle and declared schema; None: a SQL job


@dataclass(frozen=True)
class DagGenerationJob:
    """One job of a generation being built: its committed prefix and the block it must
    reach before the DAG cuts over (what the current generation covers)."""

    job: str
    committed_to: int
    target: int
    ready: bool
    status: str = "active"  # stopped: failed for good, the generation cannot cut over
    last_error: str | None = None


@dataclass(frozen=True)
class DagGeneration:
    """A generation of the DAG: `current` (what readers see), `building` (with its jobs'
    progress), `retired` (kept for a rollback until purged), `abandoned` (superseded while
    building) or `purged`."""

    generation: int
    state: str
    created_at: datetime
    current_at: datetime | None
    progress: float | None = None  # building: the least of its jobs' committed / target
    jobs: list[DagGenerationJob] = field(default_factory=list)


@dataclass(frozen=True)
class DagStatus:
    name: str
    state: str
    paused: bool
    jobs: list[DagJobStatus]
    generation: int = 1  # the current generation
    building_generation: int | None = None
    generations: list[DagGeneration] = field(default_factory=list)


@dataclass(frozen=True)
class DagSwitched:
    """A rollback: the generation readers saw and the one they see now."""

    name: str
    from_generation: int
    to_generation: int
    jobs: int


@dataclass(frozen=True)
class DagPurged:
    name: str
    generation: int
    jobs: int
    partitions: int
    files: int


@dataclass(frozen=True)
class DagPaused:
    name: str
    paused: bool


def _state(paused: bool, applied: bool, stopped_jobs: int) -> str:
    if not applied:
        return "deleted"
    return "paused" if paused else ("error" if stopped_jobs else "running")


async def _dag(env: OpsEnv, org_id: uuid.UUID, name: str) -> Any:
    row = await env.state.fetchrow(q("dags", "dag_by_name"), org_id, name)
    if row is None:
        raise NotFoundError(f"no DAG named {shown(name)!r}")
    return row


async def list_dags(env: OpsEnv, org_id: uuid.UUID) -> list[DagSummary]:
    """Every DAG of the org, by name, with its ranges by status."""
    return [
        DagSummary(
            name=r["name"],
            state=_state(r["paused"], r["applied"], r["stopped_jobs"]),
            jobs=int(r["jobs"]),
            stopped_jobs=int(r["stopped_jobs"]),
            committed=int(r["committed"]),
            in_flight=int(r["in_flight"]),
            failed=int(r["failed"]),
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )
        for r in await env.state.fetch(q("dags", "dag_summaries"), org_id)
    ]


async def dag_status(env: OpsEnv, org_id: uuid.UUID, name: str) -> DagStatus:
    """Per job: its inputs, generation, ranges committed / in flight / failed, rows, how far
    it has committed and its lag behind its inputs in blocks, and its last error. A fixed
    number of statements whatever the DAG's size (each job's error aside)."""
    dag = await _dag(env, org_id, name)
    async with env.state.acquire() as conn:
        applied = await conn.fetchrow(q("chain", "show_spec"), org_id, KIND, name) is not None
        jobs = [
            j
            for j in await conn.fetch(q("dags", "jobs_of_dag"), dag["dag_id"])
            if j["status"] != "removed"
        ]
        counts = {
            r["job_uuid"]: r
            for r in await conn.fetch(q("dags", "dag_ranges_by_status"), dag["dag_id"])
        }
        reads: dict[uuid.UUID, list[uuid.UUID]] = {}
        for r in await conn.fetch(q("dags", "bounded_reads_of_dag"), dag["dag_id"]):
            reads.setdefault(r["job_uuid"], []).append(r["dataset_uuid"])
        # Each (dataset, from block) pair once: a job's output is its reader's input.
        pairs = {(j["dataset_uuid"], j["from_block"]) for j in jobs} | {
            (ds, j["from_block"]) for j in jobs for ds in reads.get(j["job_uuid"], [])
        }
        tips = {
            (r["dataset_uuid"], r["from_block"]): int(r["tip"])
            for r in await conn.fetch(
                q("dags", "input_tips"), [p[0] for p in pairs], [p[1] for p in pairs]
            )
        }
        snapshots = {
            r["job_uuid"]: _snapshot_status(r)
            for r in await conn.fetch(q("dag_snapshots", "snapshot_status_of_dag"), dag["dag_id"])
        }
        live = {
            r["dataset_uuid"]: int(r["rows"])
            for r in await conn.fetch(q("dags", "live_rows"), [j["dataset_uuid"] for j in jobs])
        }
        out = []
        for job in jobs:
            c = counts.get(job["job_uuid"])
            committed, in_flight, failed = (
                (int(c["committed"]), int(c["in_flight"]), int(c["failed"])) if c else (0, 0, 0)
            )
            start = job["from_block"]
            done = tips[(job["dataset_uuid"], start)]
            ups = [tips[(ds, start)] for ds in reads.get(job["job_uuid"], [])]
            input_tip = min(ups) if ups else None
            error = job["last_error"]
            if error is None and failed:
                error = await conn.fetchval(q("dags", "last_range_error"), job["job_uuid"])
            if error is None and in_flight:
                error = await conn.fetchval(q("dags", "open_range_error"), job["job_uuid"])
            out.append(
                DagJobStatus(
                    job=job["name"],
                    relation=f"{name}.{job['name']}",
                    window=job["window_kind"],
                    status=job["status"],
                    generation=job["generation"],
                    inputs=[DagInput(i["kind"], i["name"], i.get("where")) for i in job["inputs"]],
                    from_block=start,
                    committed=committed,
                    in_flight=in_flight,
                    failed=failed,
                    rows=live.get(job["dataset_uuid"], 0),
                    committed_to=done,
                    input_tip=input_tip,
                    lag_blocks=max(0, input_tip - done) if input_tip is not None else None,
                    last_error=error,
                    snapshot=snapshots.get(job["job_uuid"])
                    if job["window_kind"] == "all"
                    else None,
                    udf=_udf_of(job["definition"]),
                )
            )
        generations = await _generations(conn, dag)
    stopped = sum(1 for j in out if j.status == "stopped")
    return DagStatus(
        name,
        _state(dag["paused"], applied, stopped),
        dag["paused"],
        out,
        generation=dag["generation"],
        building_generation=dag["building_generation"],
        generations=generations,
    )


async def _generations(conn: Any, dag: Any) -> list[DagGeneration]:
    """The DAG's generations, the building one with its jobs' progress."""
    building, jobs, _active = await coverage(conn, dag["dag_id"])
    out = []
    for g in await conn.fetch(q("dags", "dag_generations"), dag["dag_id"]):
        mine = jobs if g["generation"] == building else []
        progress = None
        if g["generation"] == building:
            spans = [
                1.0 if j.ready else max(0.0, j.committed_to / j.target if j.target else 1.0)
                for j in mine
            ]
            progress = round(min(spans), 4) if spans else 1.0
        out.append(
            DagGeneration(
                g["generation"],
                g["state"],
                g["created_at"],
                g["current_at"],
                progress,
                [
                    DagGenerationJob(
                        j.job, j.committed_to, j.target, j.ready, j.status, j.last_error
                    )
                    for j in mine
                ],
            )
        )
    return out


async def rollback_dag(env: OpsEnv, org_id: uuid.UUID, name: str) -> DagSwitched:
    """Readers see the previous generation again, in one transaction: its rows and
    partitions were kept, so nothing is recomputed (no task is created). A generation being
    built is abandoned. 409 when there is no earlier kept generation."""
    dag = await _dag(env, org_id, name)
    async with env.state.acquire() as conn, conn.transaction():
        done = await generations.rollback(conn, dag["dag_id"])
        await conn.execute(q("outbox", "notify_outbox"))
    return DagSwitched(name, done["from"], done["to"], done["jobs"])


async def purge_dag(env: OpsEnv, org_id: uuid.UUID, name: str, generation: int) -> DagPurged:
    """Delete a kept generation (not the current or the building one): the rows only it
    holds, their partitions and lineage, their output datasets, then their files."""
    dag = await _dag(env, org_id, name)
    async with env.state.acquire() as conn, conn.transaction():
        done, files = await generations.purge(conn, dag["dag_id"], generation)
    for uri in files:
        await env.store.delete(uri)
    return DagPurged(name, generation, done["jobs"], done["partitions"], len(files))


def _snapshot_status(row: Any) -> DagSnapshotStatus:
    schedule = row["schedule"]
    return DagSnapshotStatus(
        schedule=schedule,
        min_interval_seconds=float(row["min_interval_seconds"]),
        version=int(row["version"]),
        runs=int(row["runs"]),
        last_run_at=row["last_run_at"],
        last_run_slot=row["last_run_slot"],
        last_slot=row["last_slot"] if schedule else None,
        next_slot=next_slot(schedule, datetime.now(UTC)) if schedule else None,
        missed_slots=int(row["missed_slots"]),
        last_missed=int(row["last_missed"]),
    )


async def all_dag_status(env: OpsEnv, org_id: uuid.UUID) -> list[DagStatus]:
    """The status of every DAG of the org (the console's DAG page)."""
    return [await dag_status(env, org_id, d.name) for d in await list_dags(env, org_id)]


async def set_dag_paused(env: OpsEnv, org_id: uuid.UUID, name: str, paused: bool) -> DagPaused:
    """A paused DAG schedules no new range (ranges in flight finish); resuming schedules
    again from where each job was. A deleted DAG resumes by being applied again."""
    dag = await _dag(env, org_id, name)
    if not paused and await env.state.fetchrow(q("chain", "show_spec"), org_id, KIND, name) is None:
        raise ConflictError(f"DAG {name!r} was deleted: apply its spec again to resume it")
    async with env.state.acquire() as conn, conn.transaction():
        await conn.execute(q("dags", "set_dag_paused"), dag["dag_id"], paused)
        if not paused:
            await conn.execute(q("dags", "notify_planner"))  # schedule again now
    return DagPaused(name, paused)


async def delete_dag(env: OpsEnv, org_id: uuid.UUID, name: str) -> dict[str, Any]:
    """The DAG stops: its in-flight tasks are canceled and its spec forgotten. Its output
    datasets stay, readable and queryable; applying it again resumes where it was."""
    dag = await _dag(env, org_id, name)
    async with env.state.acquire() as conn, conn.transaction():
        await conn.execute(q("dags", "set_dag_paused"), dag["dag_id"], True)
        for job in await conn.fetch(q("dags", "lock_jobs_of_dag"), dag["dag_id"]):
            await _stop_tasks(conn, job["job_uuid"])
        await conn.execute(q("chain", "delete_spec"), org_id, KIND, name)
    return {"kind": KIND, "name": name, "deleted": True, "paused": True}
