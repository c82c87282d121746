"""Sink: poll `buffer_queue`, stream the batch, validate every row, COPY into a staging table,
`INSERT ... ON CONFLICT DO NOTHING` in one transaction, then ack. Poison goes to the DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import ValidationError as PydanticValidationError

from trace_platform.aio import first_of, sleep_or_stop
from trace_platform.config import Settings
from trace_platform.db.pool import DB_ERRORS
from trace_platform.db.sql import q
from trace_platform.domain.batch import (
    STAGING_COLUMNS,
    BatchRejected,
    BufferPointer,
    StagingRecord,
    parse_row,
    producer_prefix,
)
from trace_platform.domain.capability import is_within_prefixes
from trace_platform.domain.errors import ForbiddenError, NotFoundError, ValidationError
from trace_platform.logs import get_logger
from trace_platform.metrics import SINK_BATCHES, SINK_ROWS
from trace_platform.ports import (
    BUFFER_DLQ,
    BUFFER_QUEUE,
    ObjectStore,
    Queue,
    QueueUnavailable,
    ReceivedMessage,
)

log = get_logger(__name__)

COPY_CHUNK = 20000  # rows per COPY + upsert round; bounds memory


@dataclass(frozen=True)
class IngestResult:
    rows: int
    inserted: int

    @property
    def duplicates(self) -> int:
        return self.rows - self.inserted


async def upsert_staged(
    conn: Any,
    org_id: uuid.UUID,
    producer: uuid.UUID,
    with_channels: bool,
    max_attempts: int,
) -> int:
    """Insert the staged events (their delivery rows too, when they name channels); returns
    the events that were new."""
    if with_channels:
        n: int = await conn.fetchval(
            q("sink", "upsert_with_deliveries"), org_id, producer, max_attempts
        )
        return n
    status = await conn.execute(q("sink", "upsert_from_staging"), org_id, producer)
    return int(status.split()[-1])


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Split a byte stream into lines without holding the object whole."""
    rest = b""
    async for chunk in chunks:
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line
    if rest.strip():
        yield rest


class Sink:
    def __init__(
        self,
        queue: Queue,
        store: ObjectStore,
        data_pool: asyncpg.Pool,
        settings: Settings,
        concurrency: int = 2,
    ) -> None:
        self.queue = queue
        self.store = store
        self.pool = data_pool
        self.settings = settings
        self.concurrency = concurrency
        self.max_deliveries = settings.sink_max_deliveries

    async def ingest(self, pointer: BufferPointer) -> IngestResult:
        """Validate and insert one batch in one transaction; raise BatchRejected for poison."""
        allowed = producer_prefix(self.store.root, pointer.producer)
        if not is_within_prefixes(pointer.batch_uri, [allowed]):
            raise BatchRejected("batch_uri is outside the producer's attempt prefix")
        rows = inserted = 0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q("sink", "create_staging"))
            buffer: list[StagingRecord] = []
            upsert: asyncio.Task[int] | None = None

            async def flush() -> None:
                # COPY a chunk, then let the server upsert it while we parse the next one.
                nonlocal upsert, inserted
                if upsert is not None:
                    inserted += await upsert
                    await conn.execute(q("sink", "clear_staging"))
                await conn.copy_records_to_table(
                    "alert_staging", records=buffer, columns=STAGING_COLUMNS
                )
                with_channels = any(record[8] for record in buffer)
                buffer.clear()
                upsert = asyncio.ensure_future(
                    upsert_staged(
                        conn,
                        pointer.org_id,
                        pointer.producer.task_id,
                        with_channels,
                        self.settings.delivery_max_attempts,
                    )
                )

            try:
                async for line in iter_lines(self.store.open_stream(pointer.batch_uri)):
                    rows += 1
                    if not line.strip():
                        raise BatchRejected(f"line {rows}: empty line")
                    buffer.append(parse_row(line, rows))
                    if len(buffer) >= COPY_CHUNK:
                        await flush()
                if buffer:
                    await flush()
                if upsert is not None:
                    inserted += await upsert
                    upsert = None
            except (NotFoundError, ForbiddenError, ValidationError) as exc:
                raise BatchRejected(f"batch object unreadable: {exc.detail}") from None
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # The data itself is unstorable: poison, not an outage.
                raise BatchRejected(f"database rejected the batch ({type(exc).__name__})") from None
            finally:
                if upsert is not None:  # rejected mid-way: let the statement finish, then roll back
                    with contextlib.suppress(asyncpg.PostgresError):
                        await upsert
            if rows != pointer.record_count:
                raise BatchRejected(
                    f"batch has {rows} rows but the pointer declares {pointer.record_count}"
                )
        return IngestResult(rows, inserted)

    async def handle(self, message: ReceivedMessage) -> str:
        """Process one delivery; returns 'inserted', 'rejected', 'dead_lettered' or 'retry'."""
        try:
            pointer = BufferPointer.model_validate(message.payload)
        except PydanticValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            reason = f"malformed buffer pointer message: {where}: {first.get('msg')}"
            await self.queue.dead_letter(BUFFER_QUEUE, message, BUFFER_DLQ, reason)
            SINK_BATCHES.labels("dead_lettered").inc()
            log.warning(
                "sink.batch.dead_lettered",
                message_id=str(message.message_id),
                reason="malformed pointer",
            )
            return "dead_lettered"
        ids = {
            "message_id": str(message.message_id),
            "task_id": str(pointer.producer.task_id),
            "attempt": pointer.producer.attempt,
        }
        try:
            result = await self.ingest(pointer)
        except BatchRejected as rej:
            SINK_BATCHES.labels("rejected").inc()
            if message.deliveries >= self.max_deliveries:
                await self.queue.dead_letter(BUFFER_QUEUE, message, BUFFER_DLQ, rej.reason)
                SINK_BATCHES.labels("dead_lettered").inc()
                log.warning(
                    "sink.batch.dead_lettered",
                    reason=rej.reason,
                    deliveries=message.deliveries,
                    **ids,
                )
                return "dead_lettered"
            backoff = self.retry_in(message)
            await self.queue.extend_visibility(BUFFER_QUEUE, [message], backoff)
            log.warning(
                "sink.batch.rejected",
                reason=rej.reason,
                deliveries=message.deliveries,
                retry_in=round(backoff, 3),
                **ids,
            )
            return "rejected"
        await self.queue.ack(BUFFER_QUEUE, [message])
        SINK_BATCHES.labels("inserted").inc()
        SINK_ROWS.labels("inserted").inc(result.inserted)
        SINK_ROWS.labels("duplicate").inc(result.duplicates)
        log.info(
            "sink.batch.inserted",
            rows=result.rows,
            inserted=result.inserted,
            duplicates=result.duplicates,
            **ids,
        )
        return "inserted"

    def retry_in(self, message: ReceivedMessage) -> float:
        """Seconds until a batch that failed is delivered again: doubling from
        TRACE_SINK_RETRY_BASE_SECONDS per delivery, at most 30."""
        base = float(self.settings.sink_retry_base_seconds)
        return min(30.0, base * 2.0 ** (message.deliveries - 1))

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and process until `stop` is set; in-flight batches finish first."""
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task[None]] = set()
        visibility = self.settings.visibility_seconds

        async def one(message: ReceivedMessage) -> None:
            try:
                await self.handle(message)
            except DB_ERRORS as exc:
                # Infrastructure trouble is not the batch's fault: it is delivered again after
                # the sink's backoff, not the queue's whole visibility (30 s by default), when
                # the queue can be told (a queue on the same database may be away too: then
                # the visibility brings it back).
                retry_in: float | None = self.retry_in(message)
                try:
                    await self.queue.extend_visibility(BUFFER_QUEUE, [message], retry_in or 0)
                except (QueueUnavailable, *DB_ERRORS):
                    retry_in = None
                log.error(
                    "sink.batch.error",
                    message_id=str(message.message_id),
                    error=type(exc).__name__,
                    retry_in=retry_in,
                )
            finally:
                slots.release()

        log.info("sink.started", concurrency=self.concurrency)
        while not stop.is_set():
            await slots.acquire()
            try:
                messages = await self.queue.receive(BUFFER_QUEUE, 1, visibility)
            except DB_ERRORS as exc:
                slots.release()
                log.error("sink.receive_failed", error=type(exc).__name__)
                await sleep_or_stop(stop, 1.0)
                continue
            if not messages:
                slots.release()
                await first_of(stop, self.queue.wait_for_messages(BUFFER_QUEUE, 1.0))
                continue
            task = asyncio.create_task(one(messages[0]))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.wait(running, timeout=30)
        log.info("sink.stopped")
