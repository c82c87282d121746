"""What the installation is doing: tasks per status, queue depths and ages, outbox backlog
(`trace status`), and the queue depths the console samples."""

from __future__ import annotations

from dataclasses import dataclass

from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.db.sql import q
from trace_platform.ops.env import OpsEnv
from trace_platform.ports import QueueStats


@dataclass(frozen=True)
class QueueLine:
    queue: str
    depth: int
    visible: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class OutboxLine:
    status: str
    n: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class StatusReport:
    tasks: dict[str, int]
    queues: list[QueueLine]
    outbox: list[OutboxLine]
    alert_events: int | None = None  # an embedded installation counts its events too


async def _queue_stats(env: OpsEnv) -> list[QueueStats]:
    if env.settings.queue_backend == "sqs":
        from trace_platform.adapters.sqs_queue import SqsQueue

        return await SqsQueue(prefix=env.settings.sqs_queue_prefix, create=False).stats()
    return await PgQueue(env.state).stats()


async def installation_status(env: OpsEnv) -> StatusReport:
    tasks = {r["status"]: r["n"] for r in await env.state.fetch(q("tasks", "status_counts"))}
    outbox = [
        OutboxLine(r["status"], r["n"], r["oldest_age_seconds"])
        for r in await env.state.fetch(q("outbox", "backlog"))
    ]
    queues = [
        QueueLine(s.queue_name, s.depth, s.visible, round(s.oldest_age_seconds, 3))
        for s in await _queue_stats(env)
    ]
    events = None
    if env.embedded:
        events = int(await env.data.fetchval(q("alerts", "all_event_count")))
    return StatusReport(tasks, queues, outbox, events)


async def queue_depths(env: OpsEnv) -> dict[str, int]:
    rows = await env.state.fetch(q("console", "queue_depths"))
    return {r["queue_name"]: int(r["depth"]) for r in rows}
