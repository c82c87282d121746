"""An in-memory Queue for unit tests of the queue's users (batchers, loops, the sink): the
same contract as pgqueue and SQS — receipts fence acks, visibility hides deliveries — and
faults can be injected per method (`fail(method, times)`) to prove callers survive a
backend that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trace_platform.ports import QueueStats, QueueUnavailable, ReceivedMessage, message_ids_for


@dataclass
class _Stored:
    message_id: uuid.UUID
    payload: dict[str, Any]
    available_at: float
    deliveries: int = 0


class InMemoryQueue:
    def __init__(self) -> None:
        self._queues: dict[str, dict[uuid.UUID, _Stored]] = {}
        self._faults: dict[str, int] = {}
        self._wake = asyncio.Event()
        self.calls: dict[str, int] = {}

    def fail(self, method: str, times: int = 1) -> None:
        """The next `times` calls of `method` raise QueueUnavailable."""
        self._faults[method] = self._faults.get(method, 0) + times

    def _enter(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self._faults.get(method, 0) > 0:
            self._faults[method] -= 1
            raise QueueUnavailable(f"injected {method} failure")

    def _queue(self, name: str) -> dict[uuid.UUID, _Stored]:
        return self._queues.setdefault(name, {})

    async def publish(
        self,
        queue_name: str,
        payloads: Sequence[dict[str, Any]],
        message_ids: Sequence[uuid.UUID] | None = None,
        delay_seconds: float = 0.0,
    ) -> int:
        self._enter("publish")
        q, added = self._queue(queue_name), 0
        for mid, payload in zip(message_ids_for(payloads, message_ids), payloads, strict=True):
            if mid not in q:
                q[mid] = _Stored(mid, dict(payload), time.monotonic() + delay_seconds)
                added += 1
        self._wake.set()
        return added

    async def receive(
        self, queue_name: str, max_messages: int, visibility_seconds: float
    ) -> list[ReceivedMessage]:
        self._enter("receive")
        now, out = time.monotonic(), list[ReceivedMessage]()
        for m in self._queue(queue_name).values():
            if len(out) >= max_messages:
                break
            if m.available_at <= now:
                m.deliveries += 1
                m.available_at = now + visibility_seconds
                out.append(ReceivedMessage(m.message_id, m.payload, m.deliveries))
        return out

    def _current(self, queue_name: str, message: ReceivedMessage) -> _Stored | None:
        m = self._queue(queue_name).get(message.message_id)
        return m if m is not None and m.deliveries == message.deliveries else None

    async def ack(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> int:
        self._enter("ack")
        acked = 0
        for message in messages:
            if self._current(queue_name, message) is not None:
                del self._queue(queue_name)[message.message_id]
                acked += 1
        return acked

    async def extend_visibility(
        self, queue_name: str, messages: Sequence[ReceivedMessage], visibility_seconds: float
    ) -> int:
        self._enter("extend_visibility")
        extended = 0
        for message in messages:
            m = self._current(queue_name, message)
            if m is not None:
                m.available_at = time.monotonic() + visibility_seconds
                extended += 1
        return extended

    async def dead_letter(
        self, queue_name: str, message: ReceivedMessage, dlq_name: str, error: str
    ) -> bool:
        self._enter("dead_letter")
        m = self._current(queue_name, message)
        if m is None:
            return False
        del self._queue(queue_name)[message.message_id]
        dead = {"original": m.payload, "error": error, "source_queue": queue_name}
        self._queue(dlq_name)[m.message_id] = _Stored(m.message_id, dead, time.monotonic())
        return True

    async def wait_for_messages(self, queue_name: str, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def stats(self) -> list[QueueStats]:
        self._enter("stats")
        now = time.monotonic()
        return [
            QueueStats(name, len(q), sum(1 for m in q.values() if m.available_at <= now), 0.0)
            for name, q in sorted(self._queues.items())
        ]

    def depth(self, queue_name: str) -> int:
        return len(self._queue(queue_name))

    async def close(self) -> None:
        return None
