"""pgqueue: the Lite Queue port on `state.queue_messages` with FOR UPDATE SKIP LOCKED.

Consumers are woken by LISTEN/NOTIFY (`trace_queue`, payload = queue name) and fall back
to polling, so a lost notification costs latency, never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import asyncpg

from trace_platform.db.pool import DB_ERRORS
from trace_platform.db.sql import q
from trace_platform.ports import QueueStats, QueueUnavailable, ReceivedMessage, message_ids_for

CHANNEL = "trace_queue"
P = ParamSpec("P")
R = TypeVar("R")


def backend_errors_as_unavailable(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """The port's error contract: asyncpg's own errors leave as QueueUnavailable."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except QueueUnavailable:
            raise
        except DB_ERRORS as exc:
            raise QueueUnavailable(f"pgqueue {fn.__name__} failed: {type(exc).__name__}") from None

    return call


class PgQueue:
    def __init__(self, pool: asyncpg.Pool, listen_dsn: str | None = None) -> None:
        self._pool = pool
        self._listen_dsn = listen_dsn
        self._listener: asyncpg.Connection | None = None
        self._events: dict[str, asyncio.Event] = {}
        self._listen_lock = asyncio.Lock()

    @backend_errors_as_unavailable
    async def publish(
        self,
        queue_name: str,
        payloads: Sequence[dict[str, Any]],
        message_ids: Sequence[uuid.UUID] | None = None,
        delay_seconds: float = 0.0,
    ) -> int:
        if not payloads:
            return 0
        ids = message_ids_for(payloads, message_ids)
        row = await self._pool.fetchrow(
            q("queue", "publish"), queue_name, ids, list(payloads), float(delay_seconds)
        )
        return int(row["n"]) if row else 0

    @backend_errors_as_unavailable
    async def receive(
        self, queue_name: str, max_messages: int, visibility_seconds: float
    ) -> list[ReceivedMessage]:
        rows = await self._pool.fetch(
            q("queue", "receive"), queue_name, max_messages, float(visibility_seconds)
        )
        return [
            ReceivedMessage(r["message_id"], r["payload"], r["deliveries"], r["created_at"])
            for r in rows
        ]

    @staticmethod
    def _receipts(messages: Sequence[ReceivedMessage]) -> tuple[list[uuid.UUID], list[int]]:
        return [m.message_id for m in messages], [m.deliveries for m in messages]

    @backend_errors_as_unavailable
    async def ack(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> int:
        if not messages:
            return 0
        ids, deliveries = self._receipts(messages)
        rows = await self._pool.fetch(q("queue", "ack"), queue_name, ids, deliveries)
        return len(rows)

    @backend_errors_as_unavailable
    async def extend_visibility(
        self, queue_name: str, messages: Sequence[ReceivedMessage], visibility_seconds: float
    ) -> int:
        if not messages:
            return 0
        ids, deliveries = self._receipts(messages)
        rows = await self._pool.fetch(
            q("queue", "extend_visibility"), queue_name, ids, deliveries, float(visibility_seconds)
        )
        return len(rows)

    @backend_errors_as_unavailable
    async def dead_letter(
        self, queue_name: str, message: ReceivedMessage, dlq_name: str, error: str
    ) -> bool:
        row = await self._pool.fetchrow(
            q("queue", "dead_letter"),
            queue_name,
            message.message_id,
            message.deliveries,
            dlq_name,
            error[:2000],
        )
        return row is not None

    @backend_errors_as_unavailable
    async def list_messages(
        self, queue_name: str, limit: int = 100, org_id: uuid.UUID | None = None
    ) -> list[dict[str, Any]]:
        """Messages of a queue, oldest first (`org_id`: only that org's dead letters)."""
        org = str(org_id) if org_id is not None else None
        rows = await self._pool.fetch(q("queue", "list_messages"), queue_name, limit, org)
        return [dict(r) for r in rows]

    @backend_errors_as_unavailable
    async def redrive(
        self,
        dlq_name: str,
        message_ids: Sequence[uuid.UUID] | None,
        default_queue: str,
        org_id: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """Move dead letters (all, these, and only `org_id`'s when given) back to their
        queue; returns the new message ids."""
        ids = list(message_ids) if message_ids is not None else None
        org = str(org_id) if org_id is not None else None
        rows = await self._pool.fetch(q("queue", "redrive"), dlq_name, ids, default_queue, org)
        return [r["message_id"] for r in rows]

    @backend_errors_as_unavailable
    async def purge(
        self, queue_name: str, message_ids: Sequence[uuid.UUID], org_id: uuid.UUID | None = None
    ) -> int:
        """Delete these messages for good (`org_id`: only if they are that org's)."""
        org = str(org_id) if org_id is not None else None
        rows = await self._pool.fetch(q("queue", "purge"), queue_name, list(message_ids), org)
        return len(rows)

    @backend_errors_as_unavailable
    async def stats(self) -> list[QueueStats]:
        rows = await self._pool.fetch(q("queue", "stats"))
        return [
            QueueStats(r["queue_name"], r["depth"], r["visible"], r["oldest_age_seconds"])
            for r in rows
        ]

    async def wait_for_messages(self, queue_name: str, timeout: float) -> None:
        event = self._events.setdefault(queue_name, asyncio.Event())
        await self._ensure_listener()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        if self._listen_dsn is None:
            return
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            try:
                conn = await asyncpg.connect(self._listen_dsn, timeout=10)
                await conn.add_listener(CHANNEL, self._on_notify)
            except (OSError, asyncpg.PostgresError):
                return  # polling still works; try again on the next wait
            self._listener = conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        event = self._events.get(str(payload))
        if event is not None:
            event.set()

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._listener.close()
            self._listener = None
