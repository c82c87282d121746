"""Ports: one typing.Protocol per replaceable part. Lite and AWS adapters implement them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from trace_platform.domain.bundle import InvocationPayload
from trace_platform.domain.capability import CapabilityClaims

# Queue names: one definition for every process and the CLI. Workers' wake-ups, the
# dispatcher's UDF invocations, the sink's queue and its dead-letter queue.
TASK_WAKEUP = "task_wakeup"
UDF_QUEUE = "udf_invoke"
BUFFER_QUEUE = "buffer_queue"
BUFFER_DLQ = "buffer_queue_dlq"
# The credentials' headers (HTTP is case-insensitive): a task attempt's token, a platform process.
CAPABILITY_HEADER = "x-trace-task-capability"
WORKER_HEADER = "x-trace-worker-token"
# The one org of a Lite installation (and the default of CLI verbs that take --org-id).
LITE_ORG_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")

# An outbox route delivers rows of one topic: (outbox ids, payloads) -> None, raising on
# failure. The dispatcher's drainer calls them; capability packages add their own topics.
OutboxRoute = Callable[[list[uuid.UUID], list[dict[str, Any]]], Awaitable[None]]


class CompletionRejected(Exception):
    """A success hook refuses a completion's outputs: the attempt becomes a retryable failure
    with this reason (a fatal one when `final`: no attempt could be accepted any more), and
    nothing the hook wrote stays (it ran in a savepoint)."""

    final = False


class SuccessHook(Protocol):
    """Work a capability package adds to a fenced successful completion, inside its
    transaction, for the tasks it owns (chain sync commits a range this way). Registered
    with the dispatcher's TaskService at wiring; the kernel names no capability."""

    payload_key: str  # the top-level payload key that marks the tasks this hook owns

    async def on_success(
        self, conn: Any, task_id: uuid.UUID, attempt: int, outputs: dict[str, Any] | None
    ) -> None:
        """Runs in a savepoint of the completion; raises CompletionRejected."""
        ...

    def committed(self) -> None:
        """Called after the completion's transaction committed (e.g. wake a planner)."""
        ...


@dataclass(frozen=True)
class ReceivedMessage:
    """One delivery of a message. `deliveries` fences ack/extend like a receipt handle (pgqueue);
    `receipt` is the backend's own handle where it has one (SQS)."""

    message_id: uuid.UUID
    payload: dict[str, Any]
    deliveries: int
    created_at: datetime | None = None
    receipt: str | None = None


@dataclass(frozen=True)
class QueueStats:
    queue_name: str
    depth: int
    visible: int
    oldest_age_seconds: float


def message_ids_for(
    payloads: Sequence[dict[str, Any]], message_ids: Sequence[uuid.UUID] | None
) -> list[uuid.UUID]:
    """The ids a publish uses: the given ones (one per payload) or fresh ones."""
    ids = list(message_ids) if message_ids is not None else [uuid.uuid4() for _ in payloads]
    if len(ids) != len(payloads):
        raise ValueError("message_ids and payloads differ in length")
    return ids


class QueueUnavailable(OSError):
    """The queue backend could not be reached or failed the call (connection lost, server
    shutting down, timeout, throttled). The only error a Queue method raises for backend
    trouble: callers retry later and never need to know the adapter's own exceptions."""


class Queue(Protocol):
    """At-least-once, unordered message queue (pgqueue in Lite, SQS on AWS). Every method
    raises QueueUnavailable (and nothing else) when the backend fails."""

    async def publish(
        self,
        queue_name: str,
        payloads: Sequence[dict[str, Any]],
        message_ids: Sequence[uuid.UUID] | None = None,
        delay_seconds: float = 0.0,
    ) -> int:
        """Publish messages; with message_ids, a re-published id is dropped where supported.
        Raises QueueUnavailable."""
        ...

    async def receive(
        self, queue_name: str, max_messages: int, visibility_seconds: float
    ) -> list[ReceivedMessage]:
        """Receive up to max visible messages; each stays invisible for visibility_seconds.
        Raises QueueUnavailable."""
        ...

    async def ack(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> int:
        """Delete these deliveries; returns how many were still current. Raises QueueUnavailable."""
        ...

    async def extend_visibility(
        self, queue_name: str, messages: Sequence[ReceivedMessage], visibility_seconds: float
    ) -> int:
        """Keep these deliveries invisible for visibility_seconds more from now.
        Raises QueueUnavailable."""
        ...

    async def dead_letter(
        self, queue_name: str, message: ReceivedMessage, dlq_name: str, error: str
    ) -> bool:
        """Move one delivery to the DLQ with its error and the original message.
        Raises QueueUnavailable."""
        ...

    async def wait_for_messages(self, queue_name: str, timeout: float) -> None:
        """Return when a message may have arrived on queue_name, or after timeout."""
        ...

    async def stats(self) -> list[QueueStats]:
        """Depth, visible count and oldest age per queue. Raises QueueUnavailable."""
        ...

    async def close(self) -> None:
        """Release connections (listeners, clients)."""
        ...


class TokenSigner(Protocol):
    """Mints and verifies capability tokens (local key ring in Lite, KMS on AWS)."""

    @property
    def issuer(self) -> str:
        """The `iss` every token of this ring carries and every verification requires."""
        ...

    def sign(self, claims: CapabilityClaims) -> str:
        """Sign claims with the current key."""
        ...

    async def sign_async(self, claims: CapabilityClaims) -> str:
        """`sign` without blocking the event loop when the key is remote (KMS)."""
        ...

    def verify(self, token: str) -> CapabilityClaims:
        """Verify signature, kid, alg, iss, aud, exp and claim types; raise AuthError otherwise."""
        ...

    def jwks(self) -> dict[str, Any]:
        """Public keys of the ring as a JWKS document."""
        ...


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int


class ObjectStore(Protocol):
    """Blob storage addressed by canonical URIs (`file://` or `s3://`)."""

    @property
    def root(self) -> str:
        """Canonical root URI, ending without a slash."""
        ...

    def uri_for(self, key: str) -> str:
        """Canonical URI of a key below the root."""
        ...

    async def put_stream(self, uri: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        """Write an object from chunks without holding it whole in memory."""
        ...

    async def put_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        """Write a small object."""
        ...

    def open_stream(self, uri: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Read an object as chunks."""
        ...

    async def get_bytes(self, uri: str) -> bytes:
        """Read a small object whole."""
        ...

    async def exists(self, uri: str) -> bool:
        """Whether the object exists."""
        ...

    async def delete(self, uri: str) -> None:
        """Delete an object; deleting a missing object is not an error."""
        ...

    def presign(self, uri: str, method: str, expires_seconds: int) -> str:
        """A short-lived URL allowing exactly `method` (GET or PUT) on exactly this object."""
        ...


class RuntimeInvoker(Protocol):
    """Runs one UDF invocation (a local sandboxed runner in Lite, Lambda on AWS).

    `invoke` returns when the runner is done; the runner reports the outcome itself through
    the task-scoped endpoints, and a runner that dies is recovered by the lease reaper."""

    async def invoke(self, payload: InvocationPayload) -> None:
        """Run the invocation to its end (or until the invoker gives up on it)."""
        ...

    async def start(self) -> None:
        """Prepare (e.g. start a runner fork server)."""
        ...

    async def close(self) -> None:
        """Release what start() took."""
        ...
