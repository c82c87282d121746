"""Org-scoped task, dataset and DLQ operations for the user API, the console and the CLI:
every function takes the caller's org and never shows or changes another org's rows."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.db.sql import q
from trace_platform.domain.errors import NotFoundError, ValidationError
from trace_platform.ports import BUFFER_DLQ, BUFFER_QUEUE

TASK_STATUSES = ("queued", "running", "completed", "failed", "canceled")
MAX_PAGE = 200


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(task_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, tid = orjson.loads(raw)
        return datetime.fromisoformat(when), uuid.UUID(tid)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ValidationError("cursor is not one this API returned") from None


async def list_tasks(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """A page of tasks, newest first, and the cursor of the next page (None at the end).
    Keyset pagination: stable while tasks are created, and as fast at page 10,000 as at 1."""
    if status is not None and status not in TASK_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(TASK_STATUSES)}")
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be 1..{MAX_PAGE}")
    after = decode_cursor(cursor) if cursor else (None, None)
    rows = await pool.fetch(
        q("console", "tasks_page"), org_id, status, after[0], after[1], limit + 1, since, until
    )
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["task_id"]) if more and rows else None
    return {"tasks": [dict(r) for r in rows], "next_cursor": nxt}


async def show_task(pool: asyncpg.Pool, org_id: uuid.UUID, task_id: uuid.UUID) -> dict[str, Any]:
    row = await pool.fetchrow(q("console", "task_of_org"), task_id, org_id)
    if row is None:
        raise NotFoundError("unknown task")
    events = await pool.fetch(q("console", "task_events"), task_id)
    return dict(row) | {"events": [dict(e) for e in events]}


async def task_counts(pool: asyncpg.Pool, org_id: uuid.UUID) -> dict[str, int]:
    rows = await pool.fetch(q("console", "status_estimate"), org_id)
    return {r["status"]: int(r["n"]) for r in rows}


async def list_org_datasets(pool: asyncpg.Pool, org_id: uuid.UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(q("console", "datasets_of_org"), org_id)]


async def show_dataset(pool: asyncpg.Pool, org_id: uuid.UUID, name: str) -> dict[str, Any]:
    ds = await pool.fetchrow(q("console", "dataset_of_org"), org_id, name)
    if ds is None:
        raise NotFoundError(f"no dataset named {name!r}")
    out = dict(ds)
    if ds["kind"] == "partitions":
        parts = await pool.fetch(q("console", "dataset_partitions"), ds["dataset_uuid"], 1000)
        out["ranges"] = [dict(p) for p in parts]
        out["current_version"] = f"snap-{ds['commit_seq']}"
    else:
        versions = await pool.fetch(q("console", "dataset_versions"), ds["dataset_uuid"])
        out["versions"] = [dict(v) for v in versions]
        out["current_version"] = versions[0]["dataset_version"] if versions else None
    return out


async def list_dlq(pool: asyncpg.Pool, org_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]]:
    rows = await PgQueue(pool).list_messages(BUFFER_DLQ, limit, org_id)
    out = []
    for r in rows:
        payload = r["payload"] or {}
        original = payload.get("original") or {}
        out.append(
            {
                "message_id": r["message_id"],
                "error": payload.get("error"),
                "deliveries": r["deliveries"],
                "created_at": r["created_at"],
                "task_id": (original.get("producer") or {}).get("task_id"),
                "record_count": original.get("record_count"),
            }
        )
    return out


async def redrive_dlq(
    pool: asyncpg.Pool, org_id: uuid.UUID, ids: list[uuid.UUID] | None
) -> list[uuid.UUID]:
    """Move this org's DLQ messages (all, or these) back to the sink's queue."""
    return await PgQueue(pool).redrive(BUFFER_DLQ, ids, BUFFER_QUEUE, org_id)


async def list_org_bundles(pool: asyncpg.Pool, org_id: uuid.UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(q("console", "bundles_of_org"), org_id, 500)]


async def queue_depths(pool: asyncpg.Pool) -> dict[str, int]:
    return {
        r["queue_name"]: int(r["depth"]) for r in await pool.fetch(q("console", "queue_depths"))
    }
