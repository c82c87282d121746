"""DAG generations (SPEC §19, invariant 21): a changed job is built beside the current one and
the DAG cuts over in one transaction.

Each (job, definition hash) is one `dag_jobs` row with its own output dataset, so the one
scheduler (`dag/planner.py`), the range commit and the cascade serve every generation
alike. A row's `role` says what readers see: `current` (its dataset is `{dag}.{job}` in
the catalog), `building` (hidden, planned) or `retired` (hidden, not planned, kept for a
rollback). A job's SQL reads its DAG inputs by their datasets' ids, fixed at apply, so a
building job reads the building generation of a changed upstream and the current one of an
unchanged upstream — committed data only, no RPC.

A DAG generation is the set of rows it reads as (`dag_generations.jobs`). The cut-over, a
rollback alike, switches the catalog names of every job whose row differs, the alert
rules on them and the generations' states in one transaction whose statements do not grow
with partitions: a reader resolving the DAG's relations sees either every old row or every
new one (`org_relations` is one statement).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from trace_platform.chain.commit import dataset_prefix
from trace_platform.dag.cascade import invalidate_job
from trace_platform.dag.spec import DagSpec, job_uuid_for
from trace_platform.datasets import dataset_uuid_for
from trace_platform.db.sql import q
from trace_platform.domain.dag import covers, hidden_name, needs_build, qualify_relations
from trace_platform.logs import get_logger

log = get_logger(__name__)
SWITCHED_TOPIC = "dag.generation_switched"


def generation_job_uuid(dag_id: uuid.UUID, name: str, generation: str) -> uuid.UUID:
    return uuid.uuid5(dag_id, f"{name}@{generation}")


def members_of(value: Any) -> dict[str, str]:
    """A generation's `jobs` (jsonb: job name → job_uuid)."""
    if isinstance(value, str):
        value = orjson.loads(value)
    return {str(k): str(v) for k, v in (value or {}).items()}


@dataclass
class JobWrite:
    """What apply writes for one job (from `ops.dags.JobPlan`)."""

    name: str
    generation: str
    definition: dict[str, Any]
    inputs: list[dict[str, Any]]
    reads: dict[uuid.UUID, tuple[bool, str | None]]
    from_block: int
    upstream: list[str]
    window: str
    max_concurrency: int
    max_attempts: int


def bind_upstream(
    org_id: uuid.UUID, spec: DagSpec, job: JobWrite, dataset_of: dict[str, uuid.UUID]
) -> None:
    """Point a job's DAG inputs at the datasets of the upstream rows it reads (its reads,
    its inputs, its SQL's relations), in place. A plan names an upstream by the dataset id
    of its first generation; the rows chosen for this generation may have others."""
    names: dict[str, str] = {}
    for up in job.upstream:
        full = spec.output_name(up)
        default, actual = dataset_uuid_for(org_id, full), dataset_of[up]
        if default in job.reads and default != actual:
            job.reads[actual] = job.reads.pop(default)
        names[full.lower()] = str(actual)
    for item in job.inputs:
        if item.get("kind") == "job":
            item["dataset_uuid"] = str(dataset_of[item["name"]])
    sql = job.definition.get("run_sql")
    if isinstance(sql, str) and names:
        job.definition["run_sql"] = qualify_relations(sql, names)


async def _write_reads(conn: Any, job_uuid: uuid.UUID, job: JobWrite) -> None:
    await conn.execute(q("dags", "clear_reads"), job_uuid)
    await conn.execute(
        q("dags", "set_reads"),
        job_uuid,
        list(job.reads),
        [b for b, _ in job.reads.values()],
        [v for _, v in job.reads.values()],
    )


async def _new_row(
    conn: Any,
    org_id: uuid.UUID,
    dag_id: uuid.UUID,
    spec: DagSpec,
    job: JobWrite,
    position: int,
    role: str,
    store_root: str,
    taken: set[uuid.UUID],
) -> tuple[uuid.UUID, uuid.UUID]:
    """A job row and its output dataset: a job's first row keeps the ids part 1 gave it
    (its dataset `{dag}.{job}`); a later generation's are its own, hidden until current."""
    full = spec.output_name(job.name)
    first = job_uuid_for(dag_id, job.name)
    if role == "current" and first not in taken:
        job_uuid, name = first, full
        ds = dataset_uuid_for(org_id, full)
    else:
        job_uuid = generation_job_uuid(dag_id, job.name, job.generation)
        name = full if role == "current" else hidden_name(spec.name, job.name, job.generation)
        ds = dataset_uuid_for(org_id, hidden_name(spec.name, job.name, job.generation))
    await conn.execute(
        q("chain", "upsert_partitioned_dataset"), ds, org_id, name, dataset_prefix(store_root, ds)
    )
    if await conn.fetchval(q("chain", "dataset_kind"), ds) != "partitions":
        from trace_platform.domain.errors import ConflictError

        raise ConflictError(f"jobs.{job.name}: dataset {full!r} exists and is not derived")
    await conn.execute(
        q("dags", "insert_generation_job"),
        job_uuid,
        dag_id,
        org_id,
        job.name,
        ds,
        job.window,
        job.generation,
        job.definition,
        job.inputs,
        position,
        job.from_block,
        job.max_concurrency,
        job.max_attempts,
        role,
    )
    return job_uuid, ds


async def apply_generation(
    conn: Any,
    org_id: uuid.UUID,
    dag_id: uuid.UUID,
    spec: DagSpec,
    jobs: dict[str, JobWrite],
    body: dict[str, Any],
    digest: str,
    store_root: str,
) -> tuple[list[str], int | None, dict[str, uuid.UUID]]:
    """Write an applied spec's jobs (the caller's transaction, after `upsert_dag`): returns
    the jobs whose definition changed (or are new), the generation now building (None when
    the spec applied in place: a first apply, new independent jobs, limits) and each job's
    row in the applied generation."""
    dag = await conn.fetchrow(q("dags", "lock_dag"), dag_id)
    rows = list(await conn.fetch(q("dags", "all_job_rows_of_dag"), dag_id))
    gens = {g["generation"]: g for g in await conn.fetch(q("dags", "lock_dag_generations"), dag_id)}
    by_key = {(r["name"], r["generation"]): r for r in rows}
    current = {r["name"]: r for r in rows if r["role"] == "current"}
    live = {n: r for n, r in current.items() if r["status"] != "removed"}
    order = spec.order()
    changed_defs = [n for n in order if n in live and live[n]["generation"] != jobs[n].generation]
    new = [n for n in order if n not in live]
    build = needs_build(
        changed_defs, {n: jobs[n].upstream for n in order}, has_current=bool(gens) and bool(live)
    )
    taken = {r["job_uuid"] for r in rows}
    members: dict[str, str] = {}
    dataset_of: dict[str, uuid.UUID] = {}
    for position, name in enumerate(order):
        job = jobs[name]
        bind_upstream(org_id, spec, job, dataset_of)
        limits = (position, job.max_concurrency, job.max_attempts)
        old = current.get(name)
        kept = by_key.get((name, job.generation))
        if name not in build and old is not None and old["generation"] == job.generation:
            # Unchanged (or a removed job applied again as it was): the current row.
            if old["status"] == "removed":
                await invalidate_job(conn, old["job_uuid"], old["from_block"])
            await conn.execute(
                q("dags", "upsert_job"),
                old["job_uuid"],
                dag_id,
                org_id,
                name,
                old["dataset_uuid"],
                job.window,
                job.generation,
                job.definition,
                job.inputs,
                position,
                job.from_block,
                job.max_concurrency,
                job.max_attempts,
            )
            job_uuid, ds = old["job_uuid"], old["dataset_uuid"]
        elif kept is not None and kept["role"] != "current":
            # A kept row of this very definition (rolled back from, or an abandoned build).
            role = "building" if name in build else "current"
            if role == "current" and old is not None:
                await _retire_removed(conn, spec, old)
            await conn.execute(q("dags", "reuse_generation_job"), kept["job_uuid"], role, *limits)
            if role == "current":
                await conn.execute(
                    q("dags", "rename_datasets"),
                    [kept["dataset_uuid"]],
                    [spec.output_name(name)],
                )
            job_uuid, ds = kept["job_uuid"], kept["dataset_uuid"]
        else:
            role = "building" if name in build else "current"
            if role == "current" and old is not None:
                await _retire_removed(conn, spec, old)
            job_uuid, ds = await _new_row(
                conn, org_id, dag_id, spec, job, position, role, store_root, taken
            )
            taken.add(job_uuid)
        await _write_reads(conn, job_uuid, job)
        members[name] = str(job_uuid)
        dataset_of[name] = ds
    previous = dag["building_generation"]
    if previous is not None:
        await _abandon(conn, dag_id, previous, gens, set(members.values()))
    if build:
        generation = max(gens, default=0) + 1
        await conn.execute(
            q("dags", "insert_generation"), dag_id, generation, "building", body, digest, members
        )
        await conn.execute(q("dags", "set_dag_generations"), dag_id, dag["generation"], generation)
        log.info("dag.generation_building", dag_id=str(dag_id), generation=generation)
        rows_of = {n: uuid.UUID(u) for n, u in members.items()}
        return (
            [*[n for n in order if n in build], *[n for n in new if n not in build]],
            generation,
            rows_of,
        )
    generation = dag["generation"] if gens else 1
    await conn.execute(
        q("dags", "insert_generation"), dag_id, generation, "current", body, digest, members
    )
    await conn.execute(q("dags", "set_dag_generations"), dag_id, generation, None)
    return [*changed_defs, *new], None, {n: uuid.UUID(u) for n, u in members.items()}


async def _retire_removed(conn: Any, spec: DagSpec, old: Any) -> None:
    """A removed job's row leaves the catalog name to the job applied again under it."""
    await conn.execute(q("dags", "set_job_roles"), [old["job_uuid"]], "retired")
    await conn.execute(
        q("dags", "rename_datasets"),
        [old["dataset_uuid"]],
        [hidden_name(spec.name, old["name"], old["generation"])],
    )


async def _abandon(
    conn: Any, dag_id: uuid.UUID, generation: int, gens: dict[int, Any], keep: set[str]
) -> None:
    """A build superseded by a newer apply (or a rollback): its rows not reused are retired
    (their tasks finish into their hidden datasets; nothing plans them)."""
    row = gens.get(generation)
    if row is None:
        return
    drop = [uuid.UUID(u) for u in members_of(row["jobs"]).values() if u not in keep]
    rows = await conn.fetch(q("dags", "job_rows"), drop)
    building = [r["job_uuid"] for r in rows if r["role"] == "building"]
    if building:
        await conn.execute(q("dags", "set_job_roles"), building, "retired")
    await conn.execute(q("dags", "set_generation_state"), dag_id, generation, "abandoned")
    log.info("dag.generation_abandoned", dag_id=str(dag_id), generation=generation)


@dataclass(frozen=True)
class Coverage:
    """One job of a building generation: how far it has committed and what it must reach."""

    job: str
    committed_to: int
    target: int
    status: str = "active"  # stopped: its ranges failed for good; it never cuts over
    last_error: str | None = None

    @property
    def ready(self) -> bool:
        return covers(self.committed_to, self.target)


async def coverage(conn: Any, dag_id: uuid.UUID) -> tuple[int | None, list[Coverage], bool]:
    """The building generation of a DAG (None: none), per job whose row differs from the
    current generation's its committed prefix and target, and whether every such row is
    active (a stopped one never cuts over: its error is in the status)."""
    dag = await conn.fetchrow(q("dags", "dag_by_id"), dag_id)
    if dag is None or dag["building_generation"] is None:
        return None, [], False
    gens = {g["generation"]: g for g in await conn.fetch(q("dags", "dag_generations"), dag_id)}
    building = members_of(gens[dag["building_generation"]]["jobs"])
    cur_gen = gens.get(dag["generation"])
    current = members_of(cur_gen["jobs"]) if cur_gen is not None else {}
    swap = {n: (current.get(n), b) for n, b in building.items() if current.get(n) != b}
    ids = [uuid.UUID(u) for pair in swap.values() for u in pair if u is not None]
    rows = {str(r["job_uuid"]): r for r in await conn.fetch(q("dags", "job_rows"), ids)}
    reads: dict[str, list[uuid.UUID]] = {}
    for r in await conn.fetch(q("dags", "bounded_reads_of_dag"), dag_id):
        reads.setdefault(str(r["job_uuid"]), []).append(r["dataset_uuid"])
    pairs: list[tuple[uuid.UUID, int]] = []
    for old, new in swap.values():
        b = rows[new]
        pairs.append((b["dataset_uuid"], b["from_block"]))
        if old is not None and rows[old]["status"] != "removed":
            pairs.append((rows[old]["dataset_uuid"], rows[old]["from_block"]))
        else:
            pairs += [(ds, b["from_block"]) for ds in reads.get(new, [])]
    tips = {
        (r["dataset_uuid"], r["from_block"]): int(r["tip"])
        for r in await conn.fetch(
            q("dags", "input_tips"), [p[0] for p in pairs], [p[1] for p in pairs]
        )
    }
    out: list[Coverage] = []
    active = True
    for name, (old, new) in sorted(swap.items()):
        b = rows[new]
        active = active and b["status"] == "active"
        done = tips[(b["dataset_uuid"], b["from_block"])]
        if old is not None and rows[old]["status"] != "removed":
            target = tips[(rows[old]["dataset_uuid"], rows[old]["from_block"])]
        else:
            ups = [tips[(ds, b["from_block"])] for ds in reads.get(new, [])]
            target = min(ups) if ups else done
        out.append(Coverage(name, done, target, b["status"], b["last_error"]))
    return dag["building_generation"], out, active


class StaleCoverage(Exception):
    """A building row lost committed ranges between the check and the cut-over."""


async def switch(
    conn: Any, dag_id: uuid.UUID, target: int, kind: str, since: Any = None
) -> dict[str, Any]:
    """Make generation `target` current (the caller's transaction): every job whose row
    differs swaps catalog names with it, alert rules follow, states move. A fixed number of
    statements whatever the partitions. `since` (when a cut-over's coverage was checked):
    refuse with StaleCoverage if a new row lost a partition after it."""
    dag = await conn.fetchrow(q("dags", "lock_dag"), dag_id)
    gens = {g["generation"]: g for g in await conn.fetch(q("dags", "lock_dag_generations"), dag_id)}
    to = members_of(gens[target]["jobs"])
    cur_gen = gens.get(dag["generation"])
    every = {
        str(r["job_uuid"]): r for r in await conn.fetch(q("dags", "all_job_rows_of_dag"), dag_id)
    }
    shown = {r["name"]: r for r in every.values() if r["role"] == "current"}
    olds = [r for n, r in shown.items() if to.get(n) != str(r["job_uuid"])]
    news = [every[u] for n, u in to.items() if n not in shown or str(shown[n]["job_uuid"]) != u]
    old_ids = [r["job_uuid"] for r in olds]
    new_ids = [r["job_uuid"] for r in news]
    rows = {r["job_uuid"]: r for r in olds + news}
    if since is not None and new_ids:
        lost = await conn.fetchval(
            q("dags", "removed_since"), [rows[u]["dataset_uuid"] for u in new_ids], since
        )
        if lost:
            raise StaleCoverage("a building job lost committed ranges")
    await conn.execute(q("dags", "set_job_roles"), old_ids, "retired")
    await conn.execute(q("dags", "set_job_roles"), new_ids, "current")
    await conn.execute(
        q("dags", "rename_datasets"),
        [rows[u]["dataset_uuid"] for u in old_ids],
        [hidden_name(dag["name"], rows[u]["name"], rows[u]["generation"]) for u in old_ids],
    )
    await conn.execute(
        q("dags", "rename_datasets"),
        [rows[u]["dataset_uuid"] for u in new_ids],
        [f"{dag['name']}.{rows[u]['name']}" for u in new_ids],
    )
    by_name_old = {rows[u]["name"]: rows[u]["dataset_uuid"] for u in old_ids}
    pairs = [
        (by_name_old[rows[u]["name"]], rows[u]["dataset_uuid"])
        for u in new_ids
        if rows[u]["name"] in by_name_old
    ]
    moved = await conn.fetch(
        q("dags", "repoint_alerts"), [p[0] for p in pairs], [p[1] for p in pairs]
    )
    if moved:
        datasets = sorted({str(r["dataset_uuid"]) for r in moved})
        await conn.execute(
            q("dags", "insert_switched_event"),
            uuid.uuid4(),
            {"dag_id": str(dag_id), "generation": target, "datasets": datasets},
        )
    if cur_gen is not None and dag["generation"] != target:
        await conn.execute(q("dags", "set_generation_state"), dag_id, dag["generation"], "retired")
    building = dag["building_generation"]
    if building is not None and building != target:
        await _abandon(conn, dag_id, building, gens, set(to.values()))
    await conn.execute(q("dags", "set_generation_state"), dag_id, target, "current")
    await conn.execute(q("dags", "set_dag_generations"), dag_id, target, None)
    spec = gens[target]
    await conn.execute(
        q("dags", "set_spec_body"), dag["org_id"], "dag", dag["name"], spec["spec"], spec["sha256"]
    )
    log.info(
        "dag.generation_switched",
        dag_id=str(dag_id),
        kind=kind,
        from_generation=dag["generation"],
        to_generation=target,
        jobs=len(new_ids),
        alerts=len(moved),
    )
    return {"from": dag["generation"], "to": target, "jobs": len(new_ids), "alerts": len(moved)}


async def cut_over_ready(pool: Any) -> int:
    """Cut every DAG whose building generation covers its current one over (the planner's
    tick). Returns the DAGs cut over."""
    done = 0
    async with pool.acquire() as conn:
        for row in await conn.fetch(q("dags", "building_dags")):
            dag_id = row["dag_id"]
            checked = await conn.fetchval(q("dags", "db_now"))
            generation, jobs, active = await coverage(conn, dag_id)
            if generation is None or not active or not all(j.ready for j in jobs):
                continue
            try:
                async with conn.transaction():
                    started = time.perf_counter()
                    await switch(conn, dag_id, generation, "cut_over", since=checked)
                    await conn.execute(q("outbox", "notify_outbox"))
            except StaleCoverage:
                continue
            log.info(
                "dag.cut_over",
                dag_id=str(dag_id),
                generation=generation,
                seconds=round(time.perf_counter() - started, 4),
            )
            done += 1
    return done


async def rollback(conn: Any, dag_id: uuid.UUID) -> dict[str, Any]:
    """Make the newest retired generation before the current one current again (the
    caller's transaction): its rows and partitions were kept, so nothing is recomputed and
    no task is created; a generation being built is abandoned. ConflictError when there is
    none to return to."""
    from trace_platform.domain.dag import rollback_target
    from trace_platform.domain.errors import ConflictError

    dag = await conn.fetchrow(q("dags", "lock_dag"), dag_id)
    gens = await conn.fetch(q("dags", "lock_dag_generations"), dag_id)
    target = rollback_target({g["generation"]: g["state"] for g in gens}, dag["generation"])
    if target is None:
        raise ConflictError(
            f"DAG {dag['name']!r} has no earlier generation to roll back to (generation"
            f" {dag['generation']} is its first kept one)"
        )
    return await switch(conn, dag_id, target, "rollback")


async def purge(conn: Any, dag_id: uuid.UUID, generation: int) -> tuple[dict[str, Any], list[str]]:
    """Delete a generation that is neither current nor building (the caller's
    transaction): the rows only it holds, their partitions' rows, lineage and output
    datasets. Returns the result and the files to delete once committed. NotFoundError for
    an unknown generation, ConflictError for the current, the building or a purged one."""
    from trace_platform.domain.dag import purgeable_rows
    from trace_platform.domain.errors import ConflictError, NotFoundError

    dag = await conn.fetchrow(q("dags", "lock_dag"), dag_id)
    gens = {g["generation"]: g for g in await conn.fetch(q("dags", "lock_dag_generations"), dag_id)}
    if generation not in gens:
        raise NotFoundError(f"DAG {dag['name']!r} has no generation {generation}")
    state = gens[generation]["state"]
    if generation == dag["generation"] or state == "current":
        raise ConflictError(
            f"generation {generation} of DAG {dag['name']!r} is current; roll back or apply"
            " another first"
        )
    if state == "building":
        raise ConflictError(
            f"generation {generation} of DAG {dag['name']!r} is being built; roll back or"
            " apply another first"
        )
    if state == "purged":
        raise ConflictError(f"generation {generation} is already purged")
    result: dict[str, Any] = {"name": dag["name"], "generation": generation, "jobs": 0}
    members = {g: members_of(r["jobs"]) for g, r in gens.items()}
    ids = purgeable_rows(members, {g: r["state"] for g, r in gens.items()}, generation)
    rows = [
        r
        for r in await conn.fetch(q("dags", "lock_job_rows"), [uuid.UUID(u) for u in ids])
        if r["role"] == "retired"
    ]
    job_ids = [r["job_uuid"] for r in rows]
    datasets = [r["dataset_uuid"] for r in rows]
    for r in rows:
        open_ = await conn.fetch(q("dags", "replace_open_ranges"), r["job_uuid"])
        if open_:
            await conn.execute(
                q("tasks", "cancel_tasks"),
                [o["task_id"] for o in open_],
                "its generation was purged",
            )
    parts = await conn.fetch(q("dags", "partitions_of_datasets"), datasets)
    files = [str(f["uri"]) for p in parts for f in (p["files"] or []) if isinstance(f, dict)]
    await conn.execute(q("dags", "purge_lineage"), [p["partition_id"] for p in parts])
    await conn.execute(q("dags", "purge_partitions"), datasets)
    await conn.execute(q("dags", "purge_jobs"), job_ids)
    await conn.execute(q("dags", "purge_datasets"), datasets)
    await conn.execute(q("dags", "set_generation_state"), dag_id, generation, "purged")
    log.info(
        "dag.generation_purged",
        dag_id=str(dag_id),
        generation=generation,
        jobs=len(job_ids),
        partitions=len(parts),
    )
    return {**result, "jobs": len(job_ids), "partitions": len(parts)}, files
