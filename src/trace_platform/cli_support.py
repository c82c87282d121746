"""Admin verbs behind the CLI: short-lived pools, the same service code the dispatcher uses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from trace_platform.adapters.local_keys import load_key_ring
from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.bundles import RegisteredBundle, register_bundle
from trace_platform.bundles import list_bundles as list_registered
from trace_platform.config import Settings
from trace_platform.datasets import RegisteredDataset, list_datasets, register_dataset
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import create_pool
from trace_platform.db.sql import q
from trace_platform.dispatcher.service import TaskService
from trace_platform.domain.errors import ConfigError, NotFoundError, ValidationError
from trace_platform.ports import BUFFER_DLQ, BUFFER_QUEUE, LITE_ORG_ID, QueueStats

CREATE_CHUNK = 5000


@asynccontextmanager
async def state_pool(settings: Settings, size: int = 2) -> AsyncIterator[asyncpg.Pool]:
    urls = await resolve_databases(settings)
    pool = await create_pool(urls.state, max_size=size)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def both_pools(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """(state, data) pools of one CLI command."""
    urls = await resolve_databases(settings)
    state = await create_pool(urls.state, max_size=1)
    try:
        data = await create_pool(urls.data, max_size=1)
        try:
            yield state, data
        finally:
            await data.close()
    finally:
        await state.close()


@asynccontextmanager
async def task_service(settings: Settings) -> AsyncIterator[TaskService]:
    async with state_pool(settings) as pool:
        yield TaskService(pool, load_key_ring(settings), settings)


async def create_tasks(
    settings: Settings,
    payload: dict[str, Any],
    count: int,
    max_attempts: int | None,
    org_id: uuid.UUID | None,
) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    async with task_service(settings) as service:
        for start in range(0, count, CREATE_CHUNK):
            n = min(CREATE_CHUNK, count - start)
            ids += await service.create_tasks([payload] * n, org_id or LITE_ORG_ID, max_attempts)
    return ids


async def show_task(settings: Settings, task_id: uuid.UUID) -> dict[str, Any]:
    async with task_service(settings) as service:
        return await service.view(task_id)


async def cancel_task(settings: Settings, task_id: uuid.UUID) -> dict[str, Any]:
    async with task_service(settings) as service:
        return await service.cancel(task_id)


async def collect_status(settings: Settings) -> dict[str, Any]:
    async with state_pool(settings) as pool:
        tasks = {r["status"]: r["n"] for r in await pool.fetch(q("tasks", "status_counts"))}
        outbox = [dict(r) for r in await pool.fetch(q("outbox", "backlog"))]
        queues = [
            {
                "queue": s.queue_name,
                "depth": s.depth,
                "visible": s.visible,
                "oldest_age_seconds": round(s.oldest_age_seconds, 3),
            }
            for s in await _queue_stats(settings, pool)
        ]
    urls = await resolve_databases(settings)
    report: dict[str, Any] = {"tasks": tasks, "queues": queues, "outbox": outbox}
    if urls.embedded:
        async with _data_conn(urls.data) as conn:
            report["alert_events"] = await conn.fetchval("SELECT count(*) FROM data.alert_events")
    return report


@asynccontextmanager
async def _data_conn(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


def format_status(report: dict[str, Any]) -> str:
    lines = ["tasks:"]
    statuses = ("queued", "running", "completed", "failed", "canceled")
    for s in statuses:
        lines.append(f"  {s:<10} {report['tasks'].get(s, 0):>10}")
    lines.append("queues:")
    if not report["queues"]:
        lines.append("  (empty)")
    for qs in report["queues"]:
        lines.append(
            f"  {qs['queue']:<18} depth {qs['depth']:>8}  visible {qs['visible']:>8}"
            f"  oldest {qs['oldest_age_seconds']:>8.1f}s"
        )
    lines.append("outbox:")
    if not report["outbox"]:
        lines.append("  (empty)")
    for ob in report["outbox"]:
        lines.append(
            f"  {ob['status']:<10} {ob['n']:>10}  oldest {ob['oldest_age_seconds'] or 0:>8.1f}s"
        )
    if "alert_events" in report:
        lines.append(f"alert_events rows: {report['alert_events']}")
    return "\n".join(lines)


async def _queue_stats(settings: Settings, pool: asyncpg.Pool) -> list[QueueStats]:
    if settings.queue_backend == "sqs":
        from trace_platform.adapters.sqs_queue import SqsQueue

        return await SqsQueue(prefix=settings.sqs_queue_prefix, create=False).stats()
    return await PgQueue(pool).stats()


def _pgqueue_only(settings: Settings) -> None:
    if settings.queue_backend != "postgres":
        raise ConfigError(
            "trace dlq manages the Postgres queue; with TRACE_QUEUE_BACKEND=sqs inspect and "
            f"redrive the SQS queue {settings.sqs_queue_prefix}{BUFFER_DLQ} (StartMessageMoveTask)"
        )


async def list_dlq(settings: Settings, limit: int) -> list[dict[str, Any]]:
    _pgqueue_only(settings)
    async with state_pool(settings) as pool:
        return await PgQueue(pool).list_messages(BUFFER_DLQ, limit)


async def redrive_dlq(settings: Settings, ids: list[uuid.UUID] | None) -> int:
    _pgqueue_only(settings)
    async with state_pool(settings) as pool:
        return len(await PgQueue(pool).redrive(BUFFER_DLQ, ids, BUFFER_QUEUE))


async def purge_dlq(settings: Settings, ids: list[uuid.UUID]) -> int:
    _pgqueue_only(settings)
    async with state_pool(settings) as pool:
        return await PgQueue(pool).purge(BUFFER_DLQ, ids)


async def upload_bundle(
    settings: Settings, data: bytes, language: str, entrypoint: str, org_id: uuid.UUID | None
) -> RegisteredBundle:
    from trace_platform.adapters.stores import object_store_from_settings

    async with state_pool(settings) as pool:
        return await register_bundle(
            pool,
            object_store_from_settings(settings),
            data,
            language,
            entrypoint,
            org_id or LITE_ORG_ID,
        )


async def list_bundles(settings: Settings, limit: int) -> list[dict[str, Any]]:
    async with state_pool(settings) as pool:
        return await list_registered(pool, limit)


async def register_dataset_files(
    settings: Settings, name: str, paths: list[Path], org_id: uuid.UUID | None
) -> RegisteredDataset:
    from trace_platform.adapters.stores import object_store_from_settings

    async with state_pool(settings) as pool:
        return await register_dataset(
            pool, object_store_from_settings(settings), name, paths, org_id or LITE_ORG_ID
        )


async def list_dataset_versions(settings: Settings) -> list[dict[str, Any]]:
    async with state_pool(settings) as pool:
        return await list_datasets(pool)


async def query_dataset(
    settings: Settings,
    name: str,
    sql: str,
    limit: int | None,
    org_id: uuid.UUID | None,
    block_range: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Operator's read path: the newest version of NAME (a chain dataset: its current
    snapshot, or only `block_range`) through the same gate and sandboxed executor as
    `POST /v1/task/query` (no task, so no audit row)."""
    import orjson

    from trace_platform.datasets import resolve_inputs, snapshot_manifest, snapshot_prefix
    from trace_platform.domain.sql_gate import SqlRejected
    from trace_platform.query.app import s3_options
    from trace_platform.query.executor import ExecutorPool, QueryFailed, executor_limits
    from trace_platform.query.service import clamp_limit, gate, manifest_binding
    from trace_platform.sandbox import detect_isolation

    try:
        gated = gate(sql)
    except SqlRejected as exc:
        raise ValidationError(f"SQL rejected ({exc.code}): {exc.reason}") from None
    item: dict[str, Any] = {"dataset": name}
    if block_range is not None:
        item["range"] = list(block_range)
    async with state_pool(settings) as pool, pool.acquire() as conn:
        try:
            grants, _ = await resolve_inputs(conn, org_id or LITE_ORG_ID, {"inputs": [item]})
        except ValidationError as exc:
            if "unknown dataset" in exc.detail:
                raise NotFoundError(f"unknown dataset {name!r}") from None
            raise
        grant = grants[0]
        row: Any = await snapshot_manifest(conn, grant)
        if row is None:
            row = await conn.fetchrow(
                q("datasets", "get_version"), uuid.UUID(grant.dataset_uuid), grant.dataset_version
            )
    prefix = snapshot_prefix(grant)
    if row is not None and not row["manifest"].get("files"):
        raise ValidationError(f"dataset {name!r} has no committed data yet")
    binding = manifest_binding(
        f"{grant.dataset_uuid}@{grant.dataset_version}",
        prefix,
        row["manifest"] if row else None,
        [prefix],
        s3_options(settings),
        row.get("block_range") if row else None,
    )
    executors = ExecutorPool(1, executor_limits(settings), detect_isolation(), settings.query_uid)
    try:
        result = await executors.run(binding, gated.sql, clamp_limit(limit))
    except QueryFailed as exc:
        raise ValidationError(f"query failed ({exc.code}): {exc.reason}") from None
    finally:
        await executors.close()
    out: dict[str, Any] = orjson.loads(result.body)
    return out
