"""Chain operations for people (CLI today, `/v1/*` next): apply a chain_sync spec, status,
pause, resume, retry. Each state change is one transaction; no SQL lives in callers."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from trace_platform.chain.commit import dataset_prefix
from trace_platform.chain.planner import eligible_end
from trace_platform.chain.pool import endpoint_status
from trace_platform.chain.reorg import replace_from
from trace_platform.chain.spec import (
    DECODE,
    ChainSyncSpec,
    aligned_start,
    decoded_streams,
    job_id_for,
    logs_stream,
)
from trace_platform.dag import cascade as _cascade  # noqa: F401  (follows replaced ranges)
from trace_platform.datasets import dataset_uuid_for
from trace_platform.db.sql import q
from trace_platform.domain.errors import ConflictError, NotFoundError, ValidationError
from trace_platform.ops.env import OpsEnv

RATE_WINDOW_SECONDS = 30.0


def spec_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def apply_chain_sync(env: OpsEnv, spec: ChainSyncSpec, org_id: uuid.UUID) -> dict[str, Any]:
    """Create or update the job, its streams and their datasets. Re-applying the same spec
    changes nothing; a changed spec changes only what is not yet scheduled (cursors stay)."""
    body = spec.model_dump(mode="json")
    digest = spec_digest(body)
    job_id = job_id_for(org_id, spec.name)
    store_root = env.settings.resolved_object_store_url
    async with env.state.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(q("chain", "get_spec"), org_id, spec.kind, spec.name)
        result = {"kind": spec.kind, "name": spec.name, "job_id": str(job_id)}
        if current is not None and current["sha256"] == digest:
            return {**result, "changed": False}
        job = await conn.fetchrow(q("chain", "lock_job"), job_id)
        if job is not None and job["chain_id"] != spec.chain_id:
            raise ConflictError(
                f"chain_id: job {spec.name!r} syncs chain {job['chain_id']}; a job cannot"
                " change chains (apply it under a new name)"
            )
        await conn.execute(q("chain", "upsert_spec"), org_id, spec.kind, spec.name, body, digest)
        await conn.execute(
            q("chain", "upsert_job"),
            job_id,
            org_id,
            spec.name,
            spec.chain_id,
            spec.rpc_pool,
            body["mode"],
            body["compaction"],
        )
        for stream, s in spec.streams.items():
            ds = await _chain_dataset(conn, spec, org_id, stream, store_root, "streams." + stream)
            await conn.execute(
                q("chain", "upsert_stream"),
                job_id,
                stream,
                ds,
                s.cryo_dataset,
                s.chunk_size,
                s.max_inflight,
                spec.mode.from_block,
                None,
                s.backfill_blocks,
            )
        decoded = await apply_decoded_streams(conn, spec, org_id, job_id, store_root)
        for row in await conn.fetch(q("chain", "streams_of_job"), job_id):
            wanted = row["stream"] in spec.streams or row["stream"] in decoded
            if not wanted and row["status"] == "active":
                await conn.execute(
                    q("chain", "stop_stream"), job_id, row["stream"], "removed from the spec"
                )
        await conn.execute(q("outbox", "notify_outbox"))
    return {**result, "changed": True, "created": current is None}


async def _chain_dataset(
    conn: Any, spec: ChainSyncSpec, org_id: uuid.UUID, stream: str, store_root: str, where: str
) -> uuid.UUID:
    """The partitioned dataset `job.stream` (created if new); ConflictError when that name
    holds a registered (versions) dataset."""
    name = spec.dataset_name(stream)
    ds = dataset_uuid_for(org_id, name)
    await conn.execute(
        q("chain", "upsert_partitioned_dataset"), ds, org_id, name, dataset_prefix(store_root, ds)
    )
    if await conn.fetchval(q("chain", "dataset_kind"), ds) != "partitions":
        raise ConflictError(f"{where}: dataset {name!r} exists and is not a chain dataset")
    return ds


async def apply_decoded_streams(
    conn: Any, spec: ChainSyncSpec, org_id: uuid.UUID, job_id: uuid.UUID, store_root: str
) -> dict[str, dict[str, Any]]:
    """One stream and dataset per decoded table. A table whose decode config changed (its
    event, addresses or factory) is re-decoded from the start: its partitions leave at a new
    snapshot and its ranges are decoded again from the stored logs (no RPC)."""
    decoded = decoded_streams(spec)
    if not decoded:
        return decoded
    source = spec.streams[logs_stream(spec) or ""]
    existing = {r["stream"]: r for r in await conn.fetch(q("chain", "lock_streams_of_job"), job_id)}
    for table, config in decoded.items():
        ds = await _chain_dataset(conn, spec, org_id, table, store_root, "contracts")
        old = existing.get(table)
        if old is not None and old["decode"] is not None and old["decode"] != config:
            await replace_from(conn, old, spec.mode.from_block, spec.mode.from_block - 1)
        await conn.execute(
            q("chain", "upsert_stream"),
            job_id,
            table,
            ds,
            DECODE,
            source.chunk_size,
            source.max_inflight,
            spec.mode.from_block,
            config,
            None,
        )
    return decoded


async def _job(conn: Any, org_id: uuid.UUID, name: str) -> asyncpg.Record:
    job = await conn.fetchrow(q("chain", "job_by_name"), org_id, name)
    if job is None:
        raise NotFoundError(f"no chain job named {name!r}")
    assert isinstance(job, asyncpg.Record)
    return job


@dataclass(frozen=True)
class Paused:
    name: str
    paused: bool


@dataclass(frozen=True)
class Restarted:
    name: str
    stream: str
    cursor: int
    replaced: int


async def set_paused(env: OpsEnv, org_id: uuid.UUID, name: str, paused: bool) -> Paused:
    async with env.state.acquire() as conn:
        job = await _job(conn, org_id, name)
        await conn.execute(q("chain", "set_paused"), job["job_id"], paused)
    return Paused(name, paused)


async def retry_stream(
    env: OpsEnv, org_id: uuid.UUID, name: str, stream: str, from_block: int | None
) -> Restarted:
    """Re-schedule a stopped stream's failed ranges (from `from_block` on, default all)."""
    if from_block is not None and from_block < 0:
        raise ValidationError("--from must be >= 0")
    async with env.state.acquire() as conn, conn.transaction():
        job = await _job(conn, org_id, name)
        streams = {
            r["stream"]: r for r in await conn.fetch(q("chain", "streams_of_job"), job["job_id"])
        }
        if stream not in streams:
            raise NotFoundError(f"job {name!r} has no stream {stream!r}")
        s = streams[stream]
        base = int(job["mode"].get("from_block", 0))
        start = base if from_block is None else max(base, from_block)
        aligned = aligned_start(base, s["chunk_size"], start)
        row = await conn.fetchrow(
            q("chain", "retry_stream"), job["job_id"], stream, aligned, s["cursor"]
        )
    assert row is not None
    return Restarted(name, stream, int(row["cursor"]), int(row["replaced"]))


async def chain_status(
    env: OpsEnv, org_id: uuid.UUID, name: str | None = None
) -> list[dict[str, Any]]:
    """Per job: head, its age and error, reorgs, its pool's endpoints (state, rate, requests,
    429s, errors, latency p50, head; by label); per stream: cursor, committed tip, lag in
    blocks and seconds, ranges in flight/committed/failed, blocks/s, last error, and of a
    decoded table the logs its ABI could not decode."""
    out = []
    async with env.state.acquire() as conn:
        jobs = (
            [await _job(conn, org_id, name)]
            if name
            else [j for j in await conn.fetch(q("chain", "jobs")) if j["org_id"] == org_id]
        )
        now = time.time()
        endpoints = await endpoint_status(conn, sorted({j["rpc_pool"] for j in jobs}))
        for job in jobs:
            status = await _job_status(conn, job, now)
            status["endpoints"] = endpoints.get(job["rpc_pool"], [])
            out.append(status)
    return out


async def _job_status(conn: Any, job: asyncpg.Record, now: float) -> dict[str, Any]:
    mode = job["mode"]
    head = job["head_number"]
    counts: dict[str, dict[str, Any]] = {}
    for r in await conn.fetch(q("chain", "range_counts"), job["job_id"]):
        counts.setdefault(r["stream"], {})[r["status"]] = r["n"]
    base = int(mode.get("from_block", 0))
    target = eligible_end(mode, head)
    undecodable = {
        r["stream"]: int(r["n"])
        for r in await conn.fetch(q("chain", "undecodable_logs"), job["job_id"])
    }
    streams = []
    for s in await conn.fetch(q("chain", "streams_of_job"), job["job_id"]):
        tip = await conn.fetchval(q("chain", "contiguous_tip"), job["job_id"], s["stream"], base)
        rate = await conn.fetchval(
            q("chain", "recent_commit_rate"), job["job_id"], s["stream"], RATE_WINDOW_SECONDS
        )
        tip_time = await conn.fetchval(
            q("chain", "tip_block_time"), job["job_id"], s["stream"], tip
        )
        c = counts.get(s["stream"], {})
        goal = (
            int(mode["to_block"])
            if mode["kind"] == "fixed_target"
            else (head + 1 if head is not None else None)
        )
        lag_blocks = max(0, goal - tip) if goal is not None else None
        error = s["last_error"]
        if error is None:
            retrying = await conn.fetch(q("chain", "open_ranges"), job["job_id"], s["stream"])
            failing = [r for r in retrying if r["task_status"] == "failed" and r["last_error"]]
            if failing:
                r = failing[0]
                error = f"retrying [{r['range_start']}, {r['range_end']}): {r['last_error'][:300]}"
        streams.append(
            {
                "stream": s["stream"],
                "dataset": f"{job['name']}.{s['stream']}",
                "cryo_dataset": s["cryo_dataset"],
                # A decoded table: its contract and event (signature), from the raw logs.
                "decoded": (
                    {
                        "contract": s["decode"]["contract"],
                        "event": s["decode"]["event"]["name"],
                        "signature": s["decode"]["signature"],
                    }
                    if s["decode"] is not None
                    else None
                ),
                # Of a decoded table: logs of its event its ABI could not decode (a wrong
                # ABI shows here instead of as an empty table); None for a raw stream.
                "undecodable_logs": (
                    undecodable.get(s["stream"], 0) if s["decode"] is not None else None
                ),
                "status": s["status"],
                "cursor": s["cursor"],
                "tip": tip,
                "target": target if mode["kind"] == "fixed_target" else None,
                "lag_blocks": lag_blocks,
                "lag_seconds": (
                    round(max(0.0, now - tip_time.timestamp()), 1)
                    if tip_time is not None and lag_blocks
                    else (0.0 if lag_blocks == 0 else None)
                ),
                "in_flight": c.get("scheduled", 0),
                "committed": c.get("committed", 0),
                "failed": c.get("failed", 0),
                "replaced": c.get("replaced", 0),
                "blocks_per_second": round(float(rate) / RATE_WINDOW_SECONDS, 1),
                "complete": mode["kind"] == "fixed_target" and tip >= int(mode["to_block"]),
                "last_error": error,
            }
        )
    head_age = (
        round(now - job["head_changed_at"].timestamp(), 1) if job["head_changed_at"] else None
    )
    return {
        "name": job["name"],
        "chain_id": job["chain_id"],
        "rpc_pool": job["rpc_pool"],
        "mode": mode["kind"],
        "state": job_state(job["paused"], job["head_error"], streams),
        "from_block": base,
        "paused": job["paused"],
        "head": head,
        "head_age_seconds": head_age,
        "error": job["head_error"],
        "reorgs": job["reorgs"],
        "last_reorg": job["last_reorg"],
        "streams": streams,
    }


def job_state(paused: bool, error: str | None, streams: list[dict[str, Any]]) -> str:
    """One word for a job, as every face shows it: `paused`, `error` (its head observer
    reports one, e.g. `rpc_pool_missing`), `complete` (a fixed target reached by every
    active stream) or `syncing`. A stream's own status and error stay on the stream."""
    if paused:
        return "paused"
    if error:
        return "error"
    active = [s for s in streams if s["status"] == "active"]
    if active and all(s["complete"] for s in active):
        return "complete"
    return "syncing"


def check_block_range(text: str) -> tuple[int, int]:
    """`START:END` (end-exclusive) → (start, end)."""
    lo, sep, hi = text.partition(":")
    try:
        start, end = int(lo), int(hi)
    except ValueError:
        raise ValidationError("range must be START:END (end-exclusive block numbers)") from None
    if not sep or start < 0 or end <= start:
        raise ValidationError("range must be START:END with 0 <= START < END")
    return start, end
