"""Worker loop: receive wake-ups (batched), claim, run the operator under a heartbeat, write the
JSONL batch into the attempt's prefix, buffer-publish, complete, ack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from trace_platform.aio import first_of, sleep_or_stop, watch
from trace_platform.client import Lease, ServiceUnavailable, TaskClient
from trace_platform.config import Settings
from trace_platform.domain.capability import batch_prefix
from trace_platform.domain.errors import (
    AuthError,
    ConflictError,
    LoopDied,
    StaleFenceError,
    TraceError,
    ValidationError,
)
from trace_platform.domain.lifecycle import Outcome, TaskAttemptError
from trace_platform.logs import get_logger
from trace_platform.metrics import IN_FLIGHT, WORKER_TASKS
from trace_platform.operators import (
    OPERATORS,
    OUTPUT_OPERATORS,
    FatalTaskError,
    OperatorContext,
)
from trace_platform.ports import (
    TASK_WAKEUP,
    ObjectStore,
    Queue,
    QueueUnavailable,
    ReceivedMessage,
)

log = get_logger(__name__)

LINES_PER_CHUNK = 2000
ACK_RETRY_SECONDS = 0.2
COMPLETION_RETRY_SECONDS = 0.2
RECEIVE_BATCH = 64  # wake-ups one receive takes (claimed in one call; ranges extracted together)


class AckBatcher:
    """Acks go out in batches: one statement for many finished wake-ups."""

    def __init__(self, queue: Queue, queue_name: str, max_batch: int = 256) -> None:
        self.queue = queue
        self.queue_name = queue_name
        self.max_batch = max_batch
        self._pending: list[ReceivedMessage] = []
        self._wake = asyncio.Event()

    def add(self, message: ReceivedMessage) -> None:
        self._pending.append(message)
        self._wake.set()

    async def flush(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            await self.queue.ack(self.queue_name, batch)
            self._pending = self._pending[len(batch) :]  # dropped only once acked

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await first_of(stop, self._wake.wait())
            self._wake.clear()
            try:
                await self.flush()
            except QueueUnavailable as exc:  # the acks stay pending: try again shortly
                log.error("worker.ack_failed", error=type(exc).__name__, detail=str(exc))
                await sleep_or_stop(stop, ACK_RETRY_SECONDS)
                self._wake.set()
        try:
            await self.flush()
        except QueueUnavailable as exc:  # stopping: the wake-ups are simply redelivered
            log.warning("worker.final_ack_failed", pending=len(self._pending), error=str(exc))


class CompletionBatcher:
    """Completions go out together: while one batch is in flight the next one gathers, so a
    busy worker sends one request for many tasks and an idle one adds no delay."""

    def __init__(
        self, client: TaskClient, max_batch: int = 128, retry_horizon: float = 20.0
    ) -> None:
        self.client = client
        self.max_batch = max_batch
        # A completion is idempotent: while the dispatcher is unavailable (its database
        # restarting, say) it is sent again, for up to `retry_horizon` seconds — well inside
        # the lease, so an outage does not turn finished work into lease timeouts.
        self.retry_horizon = retry_horizon
        self._pending: list[
            tuple[Lease, dict[str, Any], asyncio.Future[dict[str, Any]], float]
        ] = []
        self._wake = asyncio.Event()

    async def complete(self, lease: Lease, report: dict[str, Any]) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((lease, report, fut, time.monotonic()))
        self._wake.set()
        result = await fut
        code, body = int(result.get("code", 500)), result.get("body") or {}
        if code == 200:
            return dict(body)
        if code == 409:
            raise ConflictError(str(body.get("detail", "conflict")))
        raise TraceError(f"complete answered {code}: {body.get('error')}")

    async def run(self, stop: asyncio.Event) -> None:
        backoff = COMPLETION_RETRY_SECONDS
        while not (stop.is_set() and not self._pending):
            if not self._pending:
                await first_of(stop, self._wake.wait())
                self._wake.clear()
                continue
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                results = await self.client.complete_many([(le, rep) for le, rep, _, _ in batch])
            except ServiceUnavailable as exc:
                now = time.monotonic()
                again = [item for item in batch if now - item[3] < self.retry_horizon]
                for _, _, fut, queued in batch:
                    if now - queued >= self.retry_horizon and not fut.done():
                        fut.set_exception(exc)
                self._pending = again + self._pending
                if again:
                    await sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 2.0)
                continue
            except TraceError as exc:
                for _, _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            backoff = COMPLETION_RETRY_SECONDS
            for (_, _, fut, _), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        store: ObjectStore,
        client: TaskClient,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.client = client
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.concurrency = settings.worker_concurrency
        self.acks = AckBatcher(queue, TASK_WAKEUP)
        self.completions = CompletionBatcher(client, retry_horizon=settings.lease_seconds * 0.6)
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, grace_seconds: float = 10.0) -> None:
        """Poll until `stop`; then take no new work, give in-flight tasks `grace_seconds`,
        and abandon the rest (their leases expire into retries)."""
        slots = asyncio.Semaphore(self.concurrency)
        ack_stop = asyncio.Event()
        died: list[str] = []

        def loop_died(name: str, exc: BaseException) -> None:
            log.error("worker.loop_died", loop=name, error=type(exc).__name__, detail=str(exc))
            died.append(name)
            stop.set()

        ack_task = watch(asyncio.create_task(self.acks.run(ack_stop)), "acks", loop_died)
        completion_task = watch(
            asyncio.create_task(self.completions.run(ack_stop)), "completions", loop_died
        )
        log.info("worker.started", worker_id=self.worker_id, concurrency=self.concurrency)
        visibility = self.settings.visibility_seconds
        while not stop.is_set():
            await first_of(stop, slots.acquire())
            if stop.is_set():
                break
            free = 1
            while free < min(RECEIVE_BATCH, self.concurrency) and not slots.locked():
                await slots.acquire()
                free += 1
            try:
                messages = await self.queue.receive(TASK_WAKEUP, free, visibility)
            except QueueUnavailable as exc:
                messages = []
                log.error("worker.receive_failed", error=type(exc).__name__, detail=str(exc))
                await sleep_or_stop(stop, 0.5)
            for _ in range(free - len(messages)):
                slots.release()
            if not messages:
                await first_of(stop, self.queue.wait_for_messages(TASK_WAKEUP, 1.0))
                continue
            task = asyncio.create_task(self._dispatch(messages, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._running:
            log.info("worker.draining", in_flight=len(self._running))
            _done, pending = await asyncio.wait(self._running, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
                log.warning("worker.abandoned", tasks=len(pending))
        ack_stop.set()
        await asyncio.wait({completion_task, ack_task})
        if died:
            raise LoopDied(f"worker loop {died[0]!r} died; the worker stops so it is restarted")
        log.info("worker.stopped")

    async def _dispatch(self, messages: list[ReceivedMessage], slots: asyncio.Semaphore) -> None:
        """Claim a batch of wake-ups in one call; run each claimed attempt in its own task.
        Each message holds one slot until its attempt (or its refusal) is done."""
        by_task: dict[uuid.UUID, list[ReceivedMessage]] = {}
        for message in messages:
            try:
                task_id = uuid.UUID(str(message.payload.get("task_id")))
            except ValueError:
                log.warning("worker.bad_wakeup", message_id=str(message.message_id))
                self._finish(message, slots)
                continue
            by_task.setdefault(task_id, []).append(message)
        if not by_task:
            return
        try:
            leases, refused = await self.client.claim_many(list(by_task), self.worker_id)
        except (AuthError, ServiceUnavailable, ValidationError) as exc:
            log.error("worker.claim_failed", tasks=len(by_task), error=exc.code)
            # Try again soon rather than after a whole visibility timeout.
            with contextlib.suppress(QueueUnavailable):
                await self.queue.extend_visibility(TASK_WAKEUP, messages, 1.0)
            for _ in messages:
                slots.release()
            return
        for task_id, reason in refused.items():
            # Duplicate or stale wake-up: nothing to run, and nothing to wait for.
            log.debug("worker.not_claimed", task_id=str(task_id), reason=reason)
            for message in by_task.pop(task_id, []):
                self._finish(message, slots)
        for lease in leases:
            group = by_task.pop(lease.task_id, [])
            task = asyncio.create_task(self._attempt(lease, group, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        for leftover in by_task.values():  # not in the answer at all: let it be redelivered
            for _ in leftover:
                slots.release()

    def _finish(self, message: ReceivedMessage, slots: asyncio.Semaphore) -> None:
        self.acks.add(message)
        slots.release()

    async def _attempt(
        self, lease: Lease, messages: list[ReceivedMessage], slots: asyncio.Semaphore
    ) -> None:
        IN_FLIGHT.inc()
        run = asyncio.create_task(self._run_attempt(lease))
        keepalive = asyncio.create_task(self._keep_alive(lease, messages, run))
        try:
            await run
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # the worker is stopping
                log.warning(
                    "worker.attempt_abandoned", task_id=str(lease.task_id), attempt=lease.attempt
                )
                for _ in messages:
                    slots.release()
                raise
            # Otherwise its keep-alive stopped it: the task was canceled under the attempt.
        finally:
            IN_FLIGHT.dec()
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        for message in messages:
            self._finish(message, slots)

    async def _keep_alive(
        self, lease: Lease, messages: list[ReceivedMessage], run: asyncio.Task[None]
    ) -> None:
        """Heartbeat the lease and keep the wake-up invisible while the operator runs; stop
        the attempt (`run`) when its task accepts no report any more (canceled: a chain
        reorg replaced its range, an operator canceled it), so its work ends there."""
        interval = max(0.2, self.settings.lease_seconds / 3)
        visibility = self.settings.visibility_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.client.heartbeat(lease)
            except ConflictError as exc:
                ids = {"task_id": str(lease.task_id), "attempt": lease.attempt}
                if exc.code == StaleFenceError.code:
                    # Reaped or superseded: a late report of this attempt may still land.
                    log.warning("worker.lease_lost", **ids)
                    return
                log.warning("worker.attempt_stopped", reason=exc.detail, **ids)
                WORKER_TASKS.labels("stopped").inc()
                run.cancel()
                return
            except TraceError as exc:
                log.warning("worker.heartbeat_failed", task_id=str(lease.task_id), error=exc.code)
            with contextlib.suppress(QueueUnavailable):
                await self.queue.extend_visibility(TASK_WAKEUP, messages, visibility)

    async def _run_attempt(self, lease: Lease) -> None:
        ids = {"task_id": str(lease.task_id), "attempt": lease.attempt}
        payload = lease.work_payload
        name = payload.get("operator")
        ctx = OperatorContext(
            lease.task_id,
            lease.attempt,
            payload,
            log,
            lease.capability_token,
            self.store,
            self.settings,
        )
        try:
            if not isinstance(name, str):
                raise FatalTaskError("payload names no operator")
            if name in OUTPUT_OPERATORS:
                outputs = await OUTPUT_OPERATORS[name](ctx)
            elif name in OPERATORS:
                outputs = await self._write_and_publish(lease, OPERATORS[name](ctx))
            else:
                raise FatalTaskError(f"unknown operator {name!r}")
        except TaskAttemptError as exc:
            await self._report(lease, exc.outcome, str(exc)[:2000])
            return
        except ConflictError as exc:
            # Fenced out (stale attempt, canceled): this attempt must change nothing more.
            log.warning("worker.attempt_fenced", reason=exc.detail, **ids)
            WORKER_TASKS.labels("fenced").inc()
            return
        except Exception as exc:  # an operator failure is a retryable outcome, not a crash
            await self._report(
                lease, Outcome.RETRYABLE_ERROR, f"{type(exc).__name__}: {exc}"[:2000]
            )
            return
        await self._report(lease, Outcome.SUCCESS, None, outputs)

    async def _report(
        self,
        lease: Lease,
        outcome: Outcome,
        error: str | None,
        outputs: dict[str, Any] | None = None,
    ) -> None:
        report: dict[str, Any] = {"outcome": outcome.value}
        if error is not None:
            report["error_message"] = error
        if outputs is not None:
            report["outputs"] = outputs
        try:
            await self.completions.complete(lease, report)
        except ConflictError as exc:
            log.warning(
                "worker.complete_rejected",
                task_id=str(lease.task_id),
                attempt=lease.attempt,
                reason=exc.detail,
            )
            WORKER_TASKS.labels("fenced").inc()
            return
        except TraceError as exc:
            # The report did not land; the lease will expire and the reaper retries the task.
            log.error(
                "worker.complete_failed",
                task_id=str(lease.task_id),
                attempt=lease.attempt,
                error=exc.code,
            )
            WORKER_TASKS.labels("report_failed").inc()
            return
        WORKER_TASKS.labels(outcome).inc()

    async def _publish(self, lease: Lease, uri: str, count: int) -> None:
        """buffer-publish is idempotent per (task, attempt, batch): while the dispatcher is
        unavailable it is sent again, within the same horizon as completions."""
        started, delay = time.monotonic(), COMPLETION_RETRY_SECONDS
        while True:
            try:
                await self.client.buffer_publish(lease, uri, count)
                return
            except ServiceUnavailable:
                if time.monotonic() - started + delay > self.completions.retry_horizon:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _write_and_publish(
        self, lease: Lease, rows: AsyncIterator[dict[str, Any]]
    ) -> dict[str, Any]:
        first = await anext(rows, None)
        if first is None:
            return {"records": 0}
        uri = batch_prefix(self.store.root, lease.task_id, lease.attempt) + "batch-0000.jsonl"
        count = 0

        async def encode() -> AsyncIterator[bytes]:
            nonlocal count
            lines = [orjson.dumps(first)]
            count = 1
            async for row in rows:
                lines.append(orjson.dumps(row))
                count += 1
                if len(lines) >= LINES_PER_CHUNK:
                    yield b"\n".join(lines) + b"\n"
                    lines = []
            if lines:
                yield b"\n".join(lines) + b"\n"

        info = await self.store.put_stream(uri, encode())
        await self._publish(lease, uri, count)
        return {"records": count, "batch_uri": uri, "bytes": info.size}
