"""Sink.ingest against a real data DB and the local store: streaming, whole-batch reject,
idempotency across chunk boundaries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.conftest import Dbs
from trace_platform.adapters.local_store import LocalObjectStore
from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.domain.batch import BatchRejected, BufferPointer
from trace_platform.sink.service import COPY_CHUNK, Sink


@pytest.fixture(scope="module")
async def sink(
    dbs: Dbs, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sink]:
    data = await create_pool(dbs.data, max_size=2)
    state = await create_pool(dbs.state, max_size=1)
    store = LocalObjectStore(tmp_path_factory.mktemp("objects"))
    yield Sink(PgQueue(state), store, data, settings)
    await data.close()
    await state.close()


def write(sink: Sink, lines: list[bytes], attempt: int = 1) -> BufferPointer:
    task = uuid.uuid4()
    uri = f"{sink.store.root}/buffers/{task}/{attempt}/batch-0000.jsonl"
    path = Path(uri[len("file://") :])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return BufferPointer.model_validate(
        {
            "kind": "buffer_batch",
            "org_id": str(uuid.uuid4()),
            "batch_uri": uri,
            "content_type": "application/jsonl",
            "record_count": len(lines),
            "producer": {"task_id": str(task), "attempt": attempt},
        }
    )


def rows(tag: str, n: int) -> list[bytes]:
    definition = str(uuid.uuid4())
    return [
        orjson.dumps(
            {
                "alert_definition_id": definition,
                "dedupe_key": f"{tag}:{i}",
                "event_time": "2024-01-01T00:00:00Z",
                "block_number": i,
            }
        )
        for i in range(n)
    ]


async def count(conn: asyncpg.Connection, tag: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1", f"{tag}:%"
        )
    )


async def test_large_batch_streams_in_chunks_and_is_idempotent(
    sink: Sink, data_conn: asyncpg.Connection
) -> None:
    n = COPY_CHUNK * 2 + 123
    pointer = write(sink, rows("big", n))
    first = await sink.ingest(pointer)
    assert (first.rows, first.inserted) == (n, n)
    again = await sink.ingest(pointer)
    assert (again.rows, again.inserted, again.duplicates) == (n, 0, n)
    assert await count(data_conn, "big") == n


async def test_a_bad_last_line_after_several_chunks_writes_nothing(
    sink: Sink, data_conn: asyncpg.Connection
) -> None:
    lines = [*rows("late", COPY_CHUNK * 2 + 5), b'{"dedupe_key": 1}']
    with pytest.raises(BatchRejected) as err:
        await sink.ingest(write(sink, lines))
    assert err.value.reason.startswith(f"line {len(lines)}:")
    assert await count(data_conn, "late") == 0


async def test_pointer_outside_the_producer_prefix_is_rejected_before_reading(
    sink: Sink, data_conn: asyncpg.Connection
) -> None:
    pointer = write(sink, rows("prefix", 3))
    other = pointer.model_copy(
        update={"producer": pointer.producer.model_copy(update={"attempt": 2})}
    )
    with pytest.raises(BatchRejected, match="outside"):
        await sink.ingest(other)
    assert await count(data_conn, "prefix") == 0


async def test_missing_object_is_a_rejection(sink: Sink) -> None:
    pointer = write(sink, rows("gone", 1))
    Path(pointer.batch_uri[len("file://") :]).unlink()
    with pytest.raises(BatchRejected, match="unreadable"):
        await sink.ingest(pointer)
