"""`runtime: lambda` tasks: the dispatcher claims them itself and hands each attempt to the
RuntimeInvoker (SPEC §8). Wake-ups arrive on the `udf_invoke` queue through the outbox."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from trace_platform.aio import first_of, sleep_or_stop
from trace_platform.db.sql import q
from trace_platform.dispatcher.service import Claimed, TaskService
from trace_platform.domain.bundle import InvocationPayload
from trace_platform.domain.errors import NotClaimedError, NotFoundError, TraceError
from trace_platform.domain.lifecycle import Outcome
from trace_platform.logs import get_logger
from trace_platform.ports import (
    UDF_QUEUE,
    ObjectStore,
    Queue,
    QueueUnavailable,
    ReceivedMessage,
    RuntimeInvoker,
)

log = get_logger(__name__)

BUNDLE_URL_TTL_SECONDS = 300


class UdfDispatcher:
    def __init__(
        self,
        service: TaskService,
        queue: Queue,
        store: ObjectStore,
        invoker: RuntimeInvoker,
        concurrency: int,
    ) -> None:
        self.service = service
        self.queue = queue
        self.store = store
        self.invoker = invoker
        self.concurrency = concurrency
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while not stop.is_set():
            await first_of(stop, slots.acquire())
            if stop.is_set():
                break
            try:
                messages = await self.queue.receive(UDF_QUEUE, 1, 60.0)
            except QueueUnavailable as exc:
                log.error("udf.receive_failed", error=type(exc).__name__, detail=str(exc))
                slots.release()
                await sleep_or_stop(stop, 0.5)
                continue
            if not messages:
                slots.release()
                await first_of(stop, self.queue.wait_for_messages(UDF_QUEUE, 1.0))
                continue
            task = asyncio.create_task(self._handle(messages[0], slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        for task in list(self._running):
            task.cancel()  # runners are separate processes; their leases protect the tasks

    async def _handle(self, message: ReceivedMessage, slots: asyncio.Semaphore) -> None:
        try:
            await self._invoke(message)
        except TraceError as exc:
            log.error("udf.invoke_failed", error=exc.code, detail=exc.detail[:300])
        except QueueUnavailable as exc:  # the wake-up is redelivered after its visibility
            log.error("udf.queue_failed", error=type(exc).__name__, detail=str(exc))
        finally:
            slots.release()

    async def _invoke(self, message: ReceivedMessage) -> None:
        try:
            task_id = uuid.UUID(str(message.payload.get("task_id")))
        except ValueError:
            await self.queue.ack(UDF_QUEUE, [message])
            return
        try:
            claimed = await self.service.claim(task_id, "dispatcher-udf")
        except (NotClaimedError, NotFoundError):
            await self.queue.ack(UDF_QUEUE, [message])  # duplicate or stale wake-up
            return
        # The lease now guards the attempt: if we die, the reaper retries the task.
        await self.queue.ack(UDF_QUEUE, [message])
        payload = await self._invocation(claimed)
        if payload is None:
            return
        log.info(
            "udf.invoking", task_id=str(task_id), attempt=claimed.attempt, language=payload.language
        )
        await self.invoker.invoke(payload)

    async def _invocation(self, claimed: Claimed) -> InvocationPayload | None:
        udf: Any = claimed.payload.get("udf")
        bundle = None
        try:
            bundle_id = uuid.UUID(str(udf.get("bundle_id"))) if isinstance(udf, dict) else None
        except ValueError:
            bundle_id = None
        if bundle_id is not None:
            bundle = await self.service.pool.fetchrow(q("bundles", "get_bundle"), bundle_id)
        if bundle is None or bundle["org_id"] != claimed.org_id:
            await self.service.complete(
                claimed.task_id,
                claimed.attempt,
                claimed.lease_token,
                Outcome.FATAL_ERROR,
                "unknown udf bundle (payload needs udf.bundle_id of a bundle of this org)",
                None,
                None,
            )
            return None
        work = claimed.payload.get("work_payload", {})
        dag = claimed.payload.get("dag")
        return InvocationPayload(
            task_id=claimed.task_id,
            attempt=claimed.attempt,
            lease_token=claimed.lease_token,
            lease_expires_at=claimed.lease_expires_at.isoformat(),
            capability_token=claimed.capability_token,
            bundle_url=self.store.presign(bundle["storage_uri"], "GET", BUNDLE_URL_TTL_SECONDS),
            bundle_sha256=bundle["sha256"],
            language=bundle["language"],
            entrypoint=bundle["entrypoint"],
            work_payload=work if isinstance(work, dict) else {"value": work},
            dag=dag if isinstance(dag, dict) else None,
        )
