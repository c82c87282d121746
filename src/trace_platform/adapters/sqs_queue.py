"""SQS: the AWS Queue port (extra `[aws]`; `TRACE_QUEUE_BACKEND=sqs`).

Logical queue names map to SQS queues `{prefix}{name}` (created on first use unless
`create=False`, for accounts where infrastructure code owns the queues). Endpoint, region and
credentials come from boto3's usual chain (`AWS_ENDPOINT_URL_SQS` for an SQS-compatible
server). Semantics against the port:

- `receive` long-polls (up to `wait_seconds`), so `wait_for_messages` only paces retries
  after a failed receive; deliveries are SQS's `ApproximateReceiveCount`.
- `ack`/`extend_visibility` use the delivery's receipt handle. SQS may accept a stale handle
  where pgqueue refuses it: the kernel does not rely on the queue for fencing (attempts and
  leases in the state database do that), only for wake-ups.
- `message_ids` travel as a message attribute; standard queues do not drop re-published ids
  (consumers are idempotent, as at-least-once delivery requires anyway).
- `delay_seconds` is at most 900 (SQS's limit); `dead_letter` sends the original body with
  the error to the DLQ queue, then deletes the delivery.

Failures surface as `QueueUnavailable` (an OSError), as the loops expect of any queue.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from trace_platform.ports import QueueStats, QueueUnavailable, ReceivedMessage, message_ids_for

MAX_DELAY_SECONDS = 900
_BATCH = 10
_ID_NAMESPACE = uuid.UUID("0b6b8f52-3c1e-4f49-8f0e-6f2a4c7d9e10")


class SqsQueue:
    def __init__(
        self,
        prefix: str = "trace-",
        client: Any = None,
        create: bool = True,
        wait_seconds: int = 1,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("sqs")
        self._sqs = client
        self._prefix = prefix
        self._create = create
        self._wait = max(0, min(20, int(wait_seconds)))
        self._urls: dict[str, str] = {}
        self._failed: set[str] = set()

    async def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        fn: Callable[..., dict[str, Any]] = getattr(self._sqs, op)
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise QueueUnavailable(f"SQS {op} failed: {code}") from None
        except BotoCoreError as exc:
            raise QueueUnavailable(f"SQS {op} failed: {type(exc).__name__}") from None

    async def _url(self, name: str) -> str:
        url = self._urls.get(name)
        if url is not None:
            return url
        full = self._prefix + name
        try:
            url = str((await self._call("get_queue_url", QueueName=full))["QueueUrl"])
        except QueueUnavailable:
            if not self._create:
                raise
            url = str((await self._call("create_queue", QueueName=full))["QueueUrl"])
        self._urls[name] = url
        return url

    async def publish(
        self,
        queue_name: str,
        payloads: Sequence[dict[str, Any]],
        message_ids: Sequence[uuid.UUID] | None = None,
        delay_seconds: float = 0.0,
    ) -> int:
        if not payloads:
            return 0
        ids = message_ids_for(payloads, message_ids)
        if not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise ValueError(f"SQS delays are 0 to {MAX_DELAY_SECONDS} seconds")
        url = await self._url(queue_name)
        delay = math.ceil(delay_seconds)
        sent = 0
        for start in range(0, len(payloads), _BATCH):
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": orjson.dumps(payload).decode(),
                    "DelaySeconds": delay,
                    "MessageAttributes": {
                        "message_id": {"DataType": "String", "StringValue": str(ids[start + i])}
                    },
                }
                for i, payload in enumerate(payloads[start : start + _BATCH])
            ]
            reply = await self._call("send_message_batch", QueueUrl=url, Entries=entries)
            if reply.get("Failed"):
                # The caller (outbox drainer) retries the whole set: duplicates, never losses.
                raise QueueUnavailable(f"SQS refused {len(reply['Failed'])} message(s)")
            sent += len(reply.get("Successful", []))
        return sent

    async def receive(
        self, queue_name: str, max_messages: int, visibility_seconds: float
    ) -> list[ReceivedMessage]:
        try:
            url = await self._url(queue_name)
            out: list[ReceivedMessage] = []
            wait = self._wait
            while len(out) < max_messages:
                reply = await self._call(
                    "receive_message",
                    QueueUrl=url,
                    MaxNumberOfMessages=min(_BATCH, max_messages - len(out)),
                    VisibilityTimeout=math.ceil(visibility_seconds),
                    WaitTimeSeconds=wait,
                    MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                    MessageAttributeNames=["message_id"],
                )
                batch = reply.get("Messages", [])
                out.extend(self._message(m) for m in batch)
                if len(batch) < _BATCH:
                    break
                wait = 0  # more may be waiting: take them without another long poll
        except QueueUnavailable:
            self._failed.add(queue_name)
            raise
        self._failed.discard(queue_name)
        return out

    @staticmethod
    def _message(m: dict[str, Any]) -> ReceivedMessage:
        attrs = m.get("Attributes", {})
        given = m.get("MessageAttributes", {}).get("message_id", {}).get("StringValue")
        try:
            message_id = uuid.UUID(given) if given else uuid.uuid5(_ID_NAMESPACE, m["MessageId"])
        except ValueError:
            message_id = uuid.uuid5(_ID_NAMESPACE, m["MessageId"])
        sent_ms = attrs.get("SentTimestamp")
        created = datetime.fromtimestamp(int(sent_ms) / 1000, UTC) if sent_ms else None
        payload = orjson.loads(m["Body"])
        return ReceivedMessage(
            message_id,
            payload if isinstance(payload, dict) else {"body": payload},
            int(attrs.get("ApproximateReceiveCount", 1)),
            created,
            receipt=m["ReceiptHandle"],
        )

    async def _batched(self, op: str, queue_name: str, entries: list[dict[str, Any]]) -> int:
        url = await self._url(queue_name)
        done = 0
        for start in range(0, len(entries), _BATCH):
            chunk = [{"Id": str(i), **e} for i, e in enumerate(entries[start : start + _BATCH])]
            reply = await self._call(op, QueueUrl=url, Entries=chunk)
            done += len(reply.get("Successful", []))
        return done

    async def ack(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> int:
        entries = [{"ReceiptHandle": m.receipt} for m in messages if m.receipt]
        return await self._batched("delete_message_batch", queue_name, entries) if entries else 0

    async def extend_visibility(
        self, queue_name: str, messages: Sequence[ReceivedMessage], visibility_seconds: float
    ) -> int:
        seconds = math.ceil(visibility_seconds)
        entries = [
            {"ReceiptHandle": m.receipt, "VisibilityTimeout": seconds}
            for m in messages
            if m.receipt
        ]
        if not entries:
            return 0
        return await self._batched("change_message_visibility_batch", queue_name, entries)

    async def dead_letter(
        self, queue_name: str, message: ReceivedMessage, dlq_name: str, error: str
    ) -> bool:
        dlq = await self._url(dlq_name)
        await self._call(
            "send_message",
            QueueUrl=dlq,
            MessageBody=orjson.dumps(message.payload).decode(),
            MessageAttributes={
                "message_id": {"DataType": "String", "StringValue": str(message.message_id)},
                "error": {"DataType": "String", "StringValue": error[:2000] or "-"},
                "source_queue": {"DataType": "String", "StringValue": queue_name},
                "deliveries": {"DataType": "Number", "StringValue": str(message.deliveries)},
            },
        )
        return await self.ack(queue_name, [message]) == 1

    async def wait_for_messages(self, queue_name: str, timeout: float) -> None:
        """`receive` already long-polled; after a failed receive, pace the retry."""
        if queue_name in self._failed:
            await asyncio.sleep(timeout)

    async def stats(self) -> list[QueueStats]:
        reply = await self._call("list_queues", QueueNamePrefix=self._prefix)
        out: list[QueueStats] = []
        for url in sorted(reply.get("QueueUrls", [])):
            attrs = (
                await self._call(
                    "get_queue_attributes",
                    QueueUrl=url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed",
                    ],
                )
            ).get("Attributes", {})
            visible = int(attrs.get("ApproximateNumberOfMessages", 0))
            hidden = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
            delayed = int(attrs.get("ApproximateNumberOfMessagesDelayed", 0))
            name = url.rsplit("/", 1)[-1][len(self._prefix) :]
            # SQS reports the oldest message's age only through CloudWatch.
            out.append(QueueStats(name, visible + hidden + delayed, visible, 0.0))
        return out

    async def close(self) -> None:
        return None
