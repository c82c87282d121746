"""Background loops of the dispatcher: outbox drainer, retry scheduler, lease reaper.

Each step is safe to run in several dispatchers at once (SKIP LOCKED or CAS), and each
resumes after a crash from what the database still says.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import asyncpg

from trace_platform.aio import LoopRunner
from trace_platform.config import Settings
from trace_platform.db.sql import q
from trace_platform.domain.lifecycle import reaped_retry_delay
from trace_platform.logs import get_logger
from trace_platform.metrics import (
    OUTBOX_FAILURES,
    OUTBOX_PUBLISHED,
    TASK_TRANSITIONS,
)
from trace_platform.ports import BUFFER_QUEUE, TASK_WAKEUP, UDF_QUEUE, OutboxRoute, Queue

log = get_logger(__name__)

OUTBOX_BATCH = 500
OUTBOX_MAX_ATTEMPTS = 20
SENT_RETENTION_SECONDS = 3600.0


def queue_route(queue: Queue, queue_name: str) -> OutboxRoute:
    async def deliver(ids: list[uuid.UUID], payloads: list[dict[str, Any]]) -> None:
        # The outbox id is the message id: a row re-delivered after a crash is dropped by pgqueue.
        await queue.publish(queue_name, payloads, message_ids=ids)

    return deliver


class OutboxDrainer:
    def __init__(self, pool: asyncpg.Pool, routes: Mapping[str, OutboxRoute]) -> None:
        self.pool = pool
        self.routes = dict(routes)

    async def drain_once(self, limit: int = OUTBOX_BATCH) -> int:
        """Deliver up to `limit` pending rows; returns how many rows were handled."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("outbox", "claim_pending"), limit)
            if not rows:
                return 0
            by_topic: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for row in rows:
                by_topic[row["topic"]].append(row)
            sent: list[uuid.UUID] = []
            for topic, items in by_topic.items():
                ids = [r["outbox_id"] for r in items]
                route = self.routes.get(topic)
                if route is None:
                    await conn.execute(
                        q("outbox", "mark_failed"), ids, f"no route for topic {topic}", 1
                    )
                    log.error("outbox.unroutable", topic=topic, count=len(ids))
                    continue
                try:
                    await route(ids, [r["payload"] for r in items])
                except Exception as exc:  # any delivery failure is retried with backoff
                    OUTBOX_FAILURES.inc(len(ids))
                    await conn.execute(
                        q("outbox", "mark_failed"), ids, type(exc).__name__, OUTBOX_MAX_ATTEMPTS
                    )
                    log.warning(
                        "outbox.delivery_failed",
                        topic=topic,
                        count=len(ids),
                        error=type(exc).__name__,
                    )
                    continue
                sent.extend(ids)
                OUTBOX_PUBLISHED.labels(topic).inc(len(ids))
            if sent:
                await conn.execute(q("outbox", "mark_sent"), sent)
        return len(rows)

    async def purge_sent(self, older_than_seconds: float = SENT_RETENTION_SECONDS) -> int:
        result = await self.pool.execute(q("outbox", "purge_sent"), older_than_seconds, 5000)
        return int(result.split()[-1])


class RetryScheduler:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def run_once(self, limit: int = 500) -> int:
        """Start the retries that are due: failed → queued, attempt + 1, fresh wake-up."""
        due = await self.pool.fetch(q("tasks", "due_retries"), limit)
        if not due:
            return 0
        rows = await self.pool.fetch(
            q("tasks", "start_retries"),
            [r["task_id"] for r in due],
            [r["attempt"] for r in due],
            [r["lease_token"] for r in due],
        )
        for r in rows:
            log.info("task.retry_started", task_id=str(r["task_id"]))
        TASK_TRANSITIONS.labels("retry_started").inc(len(rows))
        return len(rows)


class LeaseReaper:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def run_once(self, limit: int = 500) -> int:
        """Expired running attempts become retryable timeouts (or terminal on the last attempt)."""
        expired = await self.pool.fetch(q("tasks", "expired_leases"), limit)
        if not expired:
            return 0
        delays = [
            reaped_retry_delay(
                r["attempt"],
                r["max_attempts"],
                self.settings.retry_base_seconds,
                self.settings.retry_max_seconds,
            )
            for r in expired
        ]
        rows = await self.pool.fetch(
            q("tasks", "reap_leases"),
            [r["task_id"] for r in expired],
            [r["attempt"] for r in expired],
            [r["lease_token"] for r in expired],
            delays,
        )
        for r in rows:
            log.info(
                "task.lease_expired",
                task_id=str(r["task_id"]),
                attempt=r["attempt"],
                retry=r["next_retry_at"] is not None,
            )
        TASK_TRANSITIONS.labels("lease_expired").inc(len(rows))
        return len(rows)


def start_kernel_loops(
    runner: LoopRunner,
    settings: Settings,
    drainer: OutboxDrainer,
    retries: RetryScheduler,
    reaper: LeaseReaper,
    outbox_poke: asyncio.Event,
) -> None:
    runner.start("outbox", drainer.drain_once, settings.outbox_interval, OUTBOX_BATCH, outbox_poke)
    runner.start("retry", retries.run_once, settings.retry_interval, 500)
    runner.start("reaper", reaper.run_once, settings.reaper_interval, 500)
    runner.start("outbox_purge", drainer.purge_sent, 60.0, 5000)


def default_routes(
    queue: Queue, extra: Mapping[str, OutboxRoute] | None = None
) -> dict[str, OutboxRoute]:
    routes: dict[str, OutboxRoute] = {
        "enqueue_task": queue_route(queue, TASK_WAKEUP),
        "buffer_batch": queue_route(queue, BUFFER_QUEUE),
        "invoke_udf": queue_route(queue, UDF_QUEUE),
    }
    routes.update(extra or {})
    return routes
