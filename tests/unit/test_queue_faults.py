"""The Queue port's error contract (QueueUnavailable) and the loops that must outlive it,
driven through the in-memory Queue with injected faults; a loop that dies of anything else
stops its process instead of leaving it running without the loop."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from trace_platform.adapters.memory_queue import InMemoryQueue
from trace_platform.aio import watch
from trace_platform.config import Settings
from trace_platform.domain.errors import ConflictError, LoopDied, StaleFenceError
from trace_platform.ports import BUFFER_QUEUE, TASK_WAKEUP, QueueUnavailable
from trace_platform.worker.service import AckBatcher, Worker


async def received(queue: InMemoryQueue, n: int) -> list[Any]:
    await queue.publish(TASK_WAKEUP, [{"task_id": str(uuid.uuid4())} for _ in range(n)])
    return await queue.receive(TASK_WAKEUP, n, 30.0)


async def test_ack_batcher_keeps_acking_after_the_queue_fails() -> None:
    queue = InMemoryQueue()
    acks = AckBatcher(queue, TASK_WAKEUP)
    stop = asyncio.Event()
    runner = asyncio.create_task(acks.run(stop))
    queue.fail("ack", times=2)
    for m in await received(queue, 3):
        acks.add(m)
    await wait_until(lambda: queue.depth(TASK_WAKEUP) == 0, 5, what="all acked after retries")
    assert queue.calls["ack"] == 3  # two failures kept the acks pending, the third sent them
    stop.set()
    await asyncio.wait_for(runner, 5)


class FakeClient:
    def __init__(self, refusal: ConflictError | None = None) -> None:
        self.heartbeats = 0
        self.refusal = refusal

    async def heartbeat(self, _lease: Any) -> dict[str, Any]:
        self.heartbeats += 1
        if self.refusal is not None:
            raise self.refusal
        return {}


class FakeLease:
    task_id = uuid.uuid4()
    attempt = 1


async def test_a_failing_visibility_extension_does_not_end_the_keepalive(tmp_path: Path) -> None:
    queue = InMemoryQueue()
    settings = Settings.load({"home": tmp_path, "lease_seconds": 0.6}, env={})
    client = FakeClient()
    worker = Worker(settings, queue, store=None, client=client)  # type: ignore[arg-type]
    messages = await received(queue, 1)
    queue.fail("extend_visibility", times=3)
    attempt = asyncio.create_task(asyncio.Event().wait())
    keepalive = asyncio.create_task(worker._keep_alive(FakeLease(), messages, attempt))  # type: ignore[arg-type]
    await wait_until(lambda: client.heartbeats >= 5, 10, what="heartbeats go on")
    assert not keepalive.done() and not attempt.done()
    assert queue.calls["extend_visibility"] >= 4  # failed three times, then extended again
    keepalive.cancel()
    with pytest.raises(asyncio.CancelledError):
        await keepalive
    attempt.cancel()


@pytest.mark.parametrize(
    ("refusal", "stops"),
    [
        # 409 conflict: the task accepts no report any more (canceled, e.g. its range was
        # replaced by a reorg): the attempt's work can change nothing, so it stops.
        (ConflictError("task is canceled and accepts no further reports"), True),
        # 409 stale_fence: reaped or superseded; a late report of this attempt may still land.
        (StaleFenceError("task is failed; the lease cannot be extended"), False),
    ],
)
async def test_a_heartbeat_refused_because_the_task_was_canceled_stops_the_attempt(
    tmp_path: Path, refusal: ConflictError, stops: bool
) -> None:
    settings = Settings.load({"home": tmp_path, "lease_seconds": 0.6}, env={})
    queue = InMemoryQueue()
    client = FakeClient(refusal)
    worker = Worker(settings, queue, store=None, client=client)  # type: ignore[arg-type]
    attempt = asyncio.create_task(asyncio.Event().wait())
    keepalive = asyncio.create_task(
        worker._keep_alive(FakeLease(), await received(queue, 1), attempt)  # type: ignore[arg-type]
    )
    await asyncio.wait_for(keepalive, 5)  # the heartbeat stops at the first refusal
    assert client.heartbeats == 1
    assert bool(attempt.cancelling()) is stops
    attempt.cancel()


async def test_the_worker_stops_when_its_ack_loop_dies(tmp_path: Path) -> None:
    class BrokenAcks(InMemoryQueue):
        async def ack(self, queue_name: str, messages: Any) -> int:
            raise RuntimeError("a bug, not a queue outage")

    queue = BrokenAcks()
    settings = Settings.load({"home": tmp_path}, env={})
    worker = Worker(settings, queue, store=None, client=FakeClient())  # type: ignore[arg-type]
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop, grace_seconds=1))
    for m in await received(queue, 1):
        worker.acks.add(m)
    with pytest.raises(LoopDied, match="'acks' died"):
        await asyncio.wait_for(run, 10)


async def test_the_udf_dispatcher_outlives_failed_receives() -> None:
    from trace_platform.dispatcher.udf import UdfDispatcher
    from trace_platform.ports import UDF_QUEUE

    queue = InMemoryQueue()
    queue.fail("receive", times=3)
    udf = UdfDispatcher(None, queue, None, None, 1)  # type: ignore[arg-type]
    stop = asyncio.Event()
    run = asyncio.create_task(udf.run(stop))
    await wait_until(lambda: queue.calls.get("receive", 0) >= 5, 10, what="receives go on")
    assert not run.done()
    stop.set()
    await asyncio.wait_for(run, 5)
    assert queue.depth(UDF_QUEUE) == 0


class AwayDatabase:
    """A data pool whose database is away (restarting): every acquire fails as asyncpg's
    connect does, and is counted."""

    def __init__(self) -> None:
        self.acquires = 0

    def acquire(self) -> Any:
        self.acquires += 1
        raise ConnectionRefusedError("the database is restarting")


async def test_a_batch_that_meets_a_database_outage_returns_after_the_sinks_backoff(
    tmp_path: Path,
) -> None:
    """Not after the queue's whole visibility (30 s): a database restart delayed every
    batch caught in it by that much."""
    from trace_platform.adapters.stores import object_store_from_settings
    from trace_platform.sink.service import Sink

    settings = Settings.load({"home": tmp_path, "sink_retry_base_seconds": 0.2}, env={})
    assert settings.visibility_seconds >= 30
    store = object_store_from_settings(settings)
    task = uuid.uuid4()
    pointer = {
        "kind": "buffer_batch",
        "org_id": str(uuid.uuid4()),
        "batch_uri": f"{store.root}/buffers/{task}/1/batch-0000.jsonl",
        "content_type": "application/jsonl",
        "record_count": 1,
        "producer": {"task_id": str(task), "attempt": 1},
    }
    queue, database = InMemoryQueue(), AwayDatabase()
    await queue.publish(BUFFER_QUEUE, [pointer])
    sink = Sink(queue, store, database, settings, concurrency=1)  # type: ignore[arg-type]
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    try:
        await wait_until(lambda: database.acquires >= 3, 5, what="two redeliveries within 5 s")
        assert queue.calls["extend_visibility"] >= 2
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)


async def test_watch_reports_a_death_but_not_a_cancel() -> None:
    deaths: list[tuple[str, str]] = []

    async def boom() -> None:
        raise ValueError("x")

    async def forever() -> None:
        await asyncio.Event().wait()

    died = watch(asyncio.create_task(boom()), "boom", lambda n, e: deaths.append((n, repr(e))))
    quiet = watch(asyncio.create_task(forever()), "quiet", lambda n, e: deaths.append((n, "")))
    await asyncio.wait({died})
    quiet.cancel()
    await asyncio.wait({quiet})
    assert deaths == [("boom", "ValueError('x')")]


def test_queue_unavailable_is_the_ports_error() -> None:
    assert issubclass(QueueUnavailable, OSError)
