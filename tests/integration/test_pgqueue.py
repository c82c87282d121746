"""pgqueue against a real PostgreSQL: visibility, ack, fencing, concurrency, DLQ."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import Dbs, wait_until
from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.db.pool import create_pool


@pytest.fixture(scope="module")
async def pool(dbs: Dbs) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(dbs.state, max_size=8)
    yield p
    await p.close()


@pytest.fixture
async def queue(pool: asyncpg.Pool, dbs: Dbs) -> AsyncIterator[PgQueue]:
    q = PgQueue(pool, listen_dsn=dbs.state)
    yield q
    await q.close()


def qname() -> str:
    return "q_" + uuid.uuid4().hex[:8]


async def test_publish_then_receive_returns_the_message(queue: PgQueue) -> None:
    name = qname()
    assert await queue.publish(name, [{"n": 1}]) == 1
    got = await queue.receive(name, 10, 30)
    assert [m.payload for m in got] == [{"n": 1}] and got[0].deliveries == 1


async def test_received_message_is_invisible_until_visibility_expires(queue: PgQueue) -> None:
    name = qname()
    await queue.publish(name, [{"n": 1}])
    first = await queue.receive(name, 10, 0.3)
    assert len(first) == 1
    assert await queue.receive(name, 10, 0.3) == []
    again = await wait_until(lambda: queue.receive(name, 10, 30), 5, what="redelivery")
    assert again[0].message_id == first[0].message_id and again[0].deliveries == 2


async def test_after_ack_a_message_never_reappears(queue: PgQueue, pool: asyncpg.Pool) -> None:
    name = qname()
    await queue.publish(name, [{"n": 1}])
    (m,) = await queue.receive(name, 1, 0.1)
    assert await queue.ack(name, [m]) == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM state.queue_messages WHERE queue_name=$1", name)
        == 0
    )
    assert await queue.receive(name, 10, 0.1) == []


async def test_stale_receipt_cannot_ack_or_extend_a_redelivery(queue: PgQueue) -> None:
    name = qname()
    await queue.publish(name, [{"n": 1}])
    (old,) = await queue.receive(name, 1, 0.1)
    new = (await wait_until(lambda: queue.receive(name, 1, 30), 5))[0]
    assert await queue.ack(name, [old]) == 0
    assert await queue.extend_visibility(name, [old], 60) == 0
    assert await queue.ack(name, [new]) == 1


async def test_extend_visibility_keeps_a_message_hidden(queue: PgQueue, pool: asyncpg.Pool) -> None:
    name = qname()
    await queue.publish(name, [{"n": 1}])
    (m,) = await queue.receive(name, 1, 0.2)
    assert await queue.extend_visibility(name, [m], 60) == 1
    hidden = await pool.fetchval(
        "SELECT invisible_until > now() + interval '50 seconds' FROM state.queue_messages"
        " WHERE message_id = $1",
        m.message_id,
    )
    assert hidden is True
    assert await queue.receive(name, 1, 1) == []


async def test_delayed_message_is_not_visible_before_its_time(queue: PgQueue) -> None:
    name = qname()
    await queue.publish(name, [{"n": 1}], delay_seconds=0.3)
    assert await queue.receive(name, 1, 10) == []
    got = await wait_until(lambda: queue.receive(name, 1, 10), 5)
    assert got[0].payload == {"n": 1}


async def test_duplicate_message_ids_are_dropped(queue: PgQueue) -> None:
    name = qname()
    mid = uuid.uuid4()
    assert await queue.publish(name, [{"n": 1}], message_ids=[mid]) == 1
    assert await queue.publish(name, [{"n": 1}], message_ids=[mid]) == 0
    assert len(await queue.receive(name, 10, 10)) == 1


async def test_four_concurrent_consumers_never_share_a_visible_message(
    queue: PgQueue, pool: asyncpg.Pool
) -> None:
    name = qname()
    total = 400
    await queue.publish(name, [{"i": i} for i in range(total)])
    seen: list[int] = []

    async def consumer() -> None:
        while True:
            batch = await queue.receive(name, 7, 60)
            if not batch:
                return
            seen.extend(m.payload["i"] for m in batch)
            await queue.ack(name, batch)

    await asyncio.gather(*(consumer() for _ in range(4)))
    assert sorted(seen) == list(range(total))  # every message once, none twice


async def test_dead_letter_moves_error_and_original_atomically(
    queue: PgQueue, pool: asyncpg.Pool
) -> None:
    name, dlq = qname(), qname()
    await queue.publish(name, [{"batch": "x"}])
    (m,) = await queue.receive(name, 1, 10)
    assert await queue.dead_letter(name, m, dlq, "bad line 3") is True
    assert await queue.receive(name, 1, 10) == []
    (dead,) = await queue.receive(dlq, 1, 10)
    assert dead.payload["original"] == {"batch": "x"}
    assert dead.payload["error"] == "bad line 3" and dead.payload["source_queue"] == name
    # a second move of the same delivery does nothing
    assert await queue.dead_letter(name, m, dlq, "again") is False
    assert len(await queue.redrive(dlq, [dead.message_id], name)) == 1
    (back,) = await queue.receive(name, 1, 10)
    assert back.payload == {"batch": "x"}


async def test_wait_for_messages_wakes_on_publish(queue: PgQueue) -> None:
    name = qname()
    await queue.wait_for_messages(name, 0.01)  # starts the listener
    waiter = asyncio.create_task(queue.wait_for_messages(name, 30))
    await asyncio.sleep(0)  # let the waiter park
    await queue.publish(name, [{"n": 1}])
    await asyncio.wait_for(waiter, 10)  # returns long before its 30 s timeout


async def test_stats_report_depth_and_visible(queue: PgQueue) -> None:
    name = qname()
    await queue.publish(name, [{"n": 1}, {"n": 2}])
    await queue.receive(name, 1, 60)
    stats = {s.queue_name: s for s in await queue.stats()}
    assert stats[name].depth == 2 and stats[name].visible == 1


async def test_backend_failures_surface_as_queue_unavailable(dbs: Dbs, pool: asyncpg.Pool) -> None:
    """asyncpg's own errors (pool closed, server gone, connection lost) never leave the port."""
    from trace_platform.ports import QueueUnavailable

    gone = await create_pool(dbs.state, max_size=1)
    broken = PgQueue(gone)
    await gone.close()
    name = qname()
    for call in (
        broken.publish(name, [{"a": 1}]),
        broken.receive(name, 1, 5.0),
        broken.stats(),
    ):
        with pytest.raises(QueueUnavailable, match=r"pgqueue \w+ failed: InterfaceError"):
            await call
    # A server that terminates the session mid-call (what a restart does) is the same error.
    # The call is held mid-flight on a table lock, so the termination lands inside it.
    live = await create_pool(dbs.state, max_size=1)
    try:
        q = PgQueue(live)
        async with pool.acquire() as locker, locker.transaction():
            await locker.execute("LOCK TABLE state.queue_messages IN ACCESS EXCLUSIVE MODE")
            call = asyncio.ensure_future(q.publish(name, [{"a": 2}]))

            async def waiting() -> int | None:
                pid: int | None = await pool.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND pid <> pg_backend_pid() LIMIT 1"
                )
                return pid

            pid = await wait_until(waiting, 10, 0.02, "the publish waiting on the lock")
            await pool.execute("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(QueueUnavailable):
                await call
        assert await q.receive(name, 1, 5.0) == []  # the pool reconnects: the queue works again
    finally:
        await live.close()
