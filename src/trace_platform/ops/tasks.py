"""Tasks for people: create, list (keyset pages), show with events, cancel, counts. Every
function takes the caller's org and never shows or changes another org's rows."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from trace_platform.db.sql import q
from trace_platform.domain.errors import NotFoundError, ValidationError
from trace_platform.domain.lifecycle import TaskStatus
from trace_platform.ops.env import OpsEnv, from_row

TASK_STATUSES = tuple(s.value for s in TaskStatus)
MAX_PAGE = 200
CREATE_CHUNK = 5000


@dataclass(frozen=True)
class TaskSummary:
    task_id: uuid.UUID
    status: str
    attempt: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    last_error: str | None
    operator: str | None
    runtime: str | None


@dataclass(frozen=True)
class TaskPage:
    tasks: list[TaskSummary]
    next_cursor: str | None


@dataclass(frozen=True)
class TaskEvent:
    attempt: int
    event: Any
    created_at: datetime


@dataclass(frozen=True)
class TaskDetail:
    task_id: uuid.UUID
    org_id: uuid.UUID
    status: str
    attempt: int
    max_attempts: int
    lease_expires_at: datetime | None
    worker_id: str | None
    payload: Any
    next_retry_at: datetime | None
    last_outcome: str | None
    last_error: str | None
    outputs: Any
    created_at: datetime
    updated_at: datetime
    events: list[TaskEvent]


@dataclass(frozen=True)
class Canceled:
    task_id: uuid.UUID
    status: str
    attempt: int


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


async def create_tasks(
    env: OpsEnv,
    org_id: uuid.UUID,
    payload: dict[str, Any],
    count: int = 1,
    max_attempts: int | None = None,
) -> list[uuid.UUID]:
    """`count` tasks with this payload (rows + outbox wake-ups, one transaction per chunk)."""
    if not 1 <= count <= 1_000_000:
        raise ValidationError("count must be 1..1000000")
    ids: list[uuid.UUID] = []
    for start in range(0, count, CREATE_CHUNK):
        n = min(CREATE_CHUNK, count - start)
        ids += await env.tasks.create_tasks([payload] * n, org_id, max_attempts)
    return ids


async def list_tasks(
    env: OpsEnv,
    org_id: uuid.UUID,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TaskPage:
    """A page of tasks, newest first, and the cursor of the next page (None at the end).
    Keyset pagination: stable while tasks are created, and as fast at page 10,000 as at 1."""
    if status is not None and status not in TASK_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(TASK_STATUSES)}")
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be 1..{MAX_PAGE}")
    after = decode_cursor(cursor) if cursor else (None, None)
    rows = await env.state.fetch(
        q("console", "tasks_page"), org_id, status, after[0], after[1], limit + 1, since, until
    )
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["task_id"]) if more and rows else None
    return TaskPage([from_row(TaskSummary, r) for r in rows], nxt)


async def show_task(env: OpsEnv, org_id: uuid.UUID, task_id: uuid.UUID) -> TaskDetail:
    row = await env.state.fetchrow(q("console", "task_of_org"), task_id, org_id)
    if row is None:
        raise NotFoundError("unknown task")
    events = await env.state.fetch(q("console", "task_events"), task_id)
    return from_row(TaskDetail, row, events=[from_row(TaskEvent, e) for e in events])


async def cancel_task(env: OpsEnv, org_id: uuid.UUID, task_id: uuid.UUID) -> Canceled:
    """Cancel a queued, running or failed task of this org (404 for another org's)."""
    await show_task(env, org_id, task_id)
    done = await env.tasks.cancel(task_id)
    return Canceled(uuid.UUID(done["task_id"]), done["status"], done["attempt"])


async def task_counts(env: OpsEnv, org_id: uuid.UUID) -> dict[str, int]:
    rows = await env.state.fetch(q("console", "status_estimate"), org_id)
    return {r["status"]: int(r["n"]) for r in rows}
