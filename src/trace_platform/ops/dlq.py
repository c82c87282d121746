"""The sink's dead-letter queue for people: list, redrive, purge — org-scoped (a dead letter
keeps its original pointer, whose org the dispatcher set). The Postgres queue only: on SQS
the DLQ is the queue's own redrive target, managed with SQS's tools."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.domain.errors import ConfigError
from trace_platform.ops.env import OpsEnv
from trace_platform.ports import BUFFER_DLQ, BUFFER_QUEUE


@dataclass(frozen=True)
class DlqMessage:
    message_id: uuid.UUID
    error: str | None
    deliveries: int | None
    created_at: datetime
    task_id: str | None
    record_count: int | None
    batch_uri: str | None


@dataclass(frozen=True)
class Moved:
    count: int
    message_ids: list[uuid.UUID]


def _queue(env: OpsEnv) -> PgQueue:
    if env.settings.queue_backend != "postgres":
        raise ConfigError(
            "the DLQ verbs manage the Postgres queue; with TRACE_QUEUE_BACKEND=sqs inspect and"
            f" redrive the SQS queue {env.settings.sqs_queue_prefix}{BUFFER_DLQ}"
            " (StartMessageMoveTask)"
        )
    return PgQueue(env.state)


def _message(row: dict[str, Any]) -> DlqMessage:
    payload = row["payload"] or {}
    original = payload.get("original") or {}
    return DlqMessage(
        message_id=row["message_id"],
        error=payload.get("error"),
        deliveries=payload.get("deliveries", row["deliveries"]),
        created_at=row["created_at"],
        task_id=(original.get("producer") or {}).get("task_id"),
        record_count=original.get("record_count"),
        batch_uri=original.get("batch_uri"),
    )


async def list_dlq(env: OpsEnv, org_id: uuid.UUID, limit: int = 100) -> list[DlqMessage]:
    rows = await _queue(env).list_messages(BUFFER_DLQ, limit, org_id)
    return [_message(r) for r in rows]


async def redrive_dlq(env: OpsEnv, org_id: uuid.UUID, ids: list[uuid.UUID] | None) -> Moved:
    """Move this org's DLQ messages (all, or these) back to the sink's queue."""
    moved = await _queue(env).redrive(BUFFER_DLQ, ids, BUFFER_QUEUE, org_id)
    return Moved(len(moved), moved)


async def purge_dlq(env: OpsEnv, org_id: uuid.UUID, ids: list[uuid.UUID]) -> int:
    """Delete this org's DLQ messages for good."""
    return await _queue(env).purge(BUFFER_DLQ, ids, org_id)
