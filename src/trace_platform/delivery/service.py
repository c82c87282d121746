"""`trace deliver`: lease due delivery rows, POST each signed webhook, record the outcome.

No database connection is held during an HTTP call: a claim is one statement that moves the
rows' `next_attempt_at` past a lease, the requests run, and their results are written back in
batches. A process that dies mid-request leaves its rows to be claimed again when the lease
ends (at-least-once; the receiver deduplicates on `webhook-id` / `Idempotency-Key`).

Outcomes (SPEC §12): 2xx delivered; 408, 429, 5xx, timeouts and connection errors retried
with exponential backoff and jitter (`Retry-After` honoured on 429/503) until the attempt
limit, then failed; 410 and every other 4xx failed at once; 3xx failed (redirects are never
followed); a URL the SSRF guard refuses is failed without a connection being attempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import asyncpg
import orjson

from trace_platform import __version__
from trace_platform.aio import sleep_or_stop, watch
from trace_platform.config import Settings
from trace_platform.db.pool import DB_ERRORS, Listener
from trace_platform.db.sql import q
from trace_platform.delivery.guard import GuardedResolver, UrlRefused, check_url
from trace_platform.delivery.signing import SecretError, secrets_from_env, signature_header
from trace_platform.logs import get_logger
from trace_platform.metrics import DELIVERIES, DELIVERY_SECONDS

log = get_logger(__name__)

MAX_RESPONSE_BYTES = 64 << 10  # read at most this much of a receiver's answer
CLAIM_BATCH = 200
LEASE_MARGIN_SECONDS = 5.0
BACKOFF_FACTOR = 2.4
MAX_RETRY_SECONDS = 16 * 3600.0
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
CHANNEL_CACHE_SECONDS = 5.0
FLUSH_SECONDS = 0.02
DELIVERY_CHANNEL = "trace_delivery"  # the sink notifies it when it inserts deliveries
IDLE_WAIT_SECONDS = 5.0  # listening, nothing due: look again after this all the same


@dataclass(frozen=True)
class Result:
    delivery_id: uuid.UUID
    attempt: int
    outcome: str  # delivered | retry | failed
    status_code: int | None
    error: str | None
    retry_in: float
    started_at: datetime
    duration_ms: int


def backoff_seconds(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempt + 1`: base x 2.4^(attempt-1), capped, with ±20% jitter.
    With the default base (8 s), 12 attempts span about a day."""
    delay = min(MAX_RETRY_SECONDS, base * BACKOFF_FACTOR ** max(0, attempt - 1))
    return delay * (rng or random).uniform(0.8, 1.2)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header (delta-seconds or an HTTP date) in seconds, bounded."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (now if now is not None else time.time())
    return max(0.0, min(seconds, MAX_RETRY_AFTER_SECONDS))


def classify(status: int) -> str:
    """delivered | retry | failed for an HTTP status."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "failed"


def event_body(row: Any, alert_name: str, severity: str) -> bytes:
    """The webhook body: Standard Webhooks' {type, timestamp, data}; the same on every retry."""
    payload = row["payload"]
    if isinstance(payload, str):
        payload = orjson.loads(payload)
    return orjson.dumps(
        {
            "type": "alert.fired",
            "timestamp": row["event_time"].isoformat(),
            "data": {
                "alert": alert_name,
                "alert_id": str(row["alert_definition_id"]),
                "severity": severity,
                "dedupe_key": row["dedupe_key"],
                "chain_id": row["chain_id"],
                "block_number": row["block_number"],
                "block_hash": row["block_hash"],
                "tx_hash": row["tx_hash"],
                "event_time": row["event_time"].isoformat(),
                "row": payload.get("row", payload) if isinstance(payload, dict) else payload,
            },
        }
    )


def slack_body(row: Any, alert_name: str, severity: str) -> bytes:
    """A readable Slack incoming-webhook message."""
    where = f"block {row['block_number']}" if row["block_number"] is not None else "an event"
    tx = f", tx `{row['tx_hash']}`" if row["tx_hash"] else ""
    payload = row["payload"]
    if isinstance(payload, str):
        payload = orjson.loads(payload)
    data = payload.get("row", {}) if isinstance(payload, dict) else {}
    fields = ", ".join(f"{k}={v}" for k, v in list(data.items())[:6])
    return orjson.dumps(
        {"text": f"*[{severity}] {alert_name}* at {where}{tx}" + (f"\n{fields}" if fields else "")}
    )


class ChannelCache:
    """Alert channels by alert id, read from the state DB (never the secrets: those are in
    the environment), cached for a few seconds so a re-apply takes effect quickly."""

    def __init__(self, state_pool: asyncpg.Pool) -> None:
        self.pool = state_pool
        self.entries: dict[uuid.UUID, tuple[float, Any]] = {}

    async def get(self, alert_id: uuid.UUID) -> Any:
        hit = self.entries.get(alert_id)
        if hit is not None and time.monotonic() - hit[0] < CHANNEL_CACHE_SECONDS:
            return hit[1]
        row = await self.pool.fetchrow(q("alerts", "alert_channels"), alert_id)
        self.entries[alert_id] = (time.monotonic(), row)
        return row


class ResultWriter:
    """Writes attempt results back in batches; keeps them across a database outage. Idle, it
    waits for a first result (no timer ticks); then gives others `FLUSH_SECONDS` to join.
    `on_retry` runs after a batch holding retries is written (they may come due soon)."""

    def __init__(self, pool: asyncpg.Pool, on_retry: Callable[[], None] = lambda: None) -> None:
        self.pool = pool
        self.pending: list[Result] = []
        self.wake = asyncio.Event()
        self.on_retry = on_retry

    def add(self, result: Result) -> None:
        self.pending.append(result)
        if len(self.pending) == 1 or len(self.pending) >= CLAIM_BATCH:
            self.wake.set()

    async def flush(self) -> bool:
        batch, self.pending = self.pending, []
        if not batch:
            return True
        try:
            await self.pool.execute(
                q("delivery", "record_results"),
                [r.delivery_id for r in batch],
                [r.attempt for r in batch],
                [r.outcome for r in batch],
                [r.status_code for r in batch],
                [r.error for r in batch],
                [r.retry_in for r in batch],
                [r.started_at for r in batch],
                [r.duration_ms for r in batch],
            )
        except DB_ERRORS as exc:
            log.error("deliver.record_failed", error=type(exc).__name__, results=len(batch))
            self.pending = batch + self.pending
            return False
        if any(r.outcome == "retry" for r in batch):
            self.on_retry()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(set_on(stop, self.wake))
        try:
            while not stop.is_set():
                await self.wake.wait()  # a first result, a full batch, or the stop
                self.wake.clear()
                if 0 < len(self.pending) < CLAIM_BATCH and not stop.is_set():
                    with contextlib.suppress(TimeoutError):  # the next results may join
                        await asyncio.wait_for(self.wake.wait(), FLUSH_SECONDS)
                    self.wake.clear()
                if not await self.flush():
                    await sleep_or_stop(stop, 0.5)
                    self.wake.set()  # try again
        finally:
            stopping.cancel()
        for _ in range(10):  # the last results, while the database lets us
            if await self.flush():
                return
            await asyncio.sleep(0.5)


async def set_on(event: asyncio.Event, wake: asyncio.Event) -> None:
    """Set `wake` once `event` is set (a wait on `wake` then also ends at a stop)."""
    await event.wait()
    wake.set()


class Deliverer:
    def __init__(
        self,
        data_pool: asyncpg.Pool,
        state_pool: asyncpg.Pool,
        settings: Settings,
        environ: dict[str, str] | None = None,
        listen_dsn: str | None = None,
    ) -> None:
        """`listen_dsn`: the data database, where the sink notifies new deliveries (without
        it, new rows are found by polling every `delivery_interval`)."""
        self.pool = data_pool
        self.settings = settings
        self.channels = ChannelCache(state_pool)
        self.wake = asyncio.Event()
        self.results = ResultWriter(data_pool, on_retry=self.wake.set)
        self.environ = environ
        self.concurrency = settings.delivery_concurrency
        # A claimed row is due again after this: a request's time twice over, and a margin.
        self.lease = 2 * settings.delivery_timeout_seconds + LEASE_MARGIN_SECONDS
        self.allow_private = settings.delivery_allow_private
        self.listener = Listener(listen_dsn, DELIVERY_CHANNEL, self.wake) if listen_dsn else None

    def session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.allow_private),
            limit=self.concurrency,
            use_dns_cache=True,
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.settings.delivery_timeout_seconds,
            connect=min(5.0, self.settings.delivery_timeout_seconds),
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            headers={"User-Agent": f"trace-delivery/{__version__}"},
        )

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "deliver.started",
            concurrency=self.concurrency,
            guard="off (TRACE_DELIVERY_ALLOW_PRIVATE)" if self.allow_private else "on",
        )
        running: set[asyncio.Task[None]] = set()

        def writer_died(name: str, exc: BaseException) -> None:
            # Results would pile up unwritten: stop, so `trace up` restarts the process (the
            # leases of what was in flight expire and those deliveries are made again).
            log.error("deliver.loop_died", loop=name, error=type(exc).__name__)
            stop.set()

        writer = watch(asyncio.create_task(self.results.run(stop)), "results", writer_died)
        stopping = asyncio.create_task(set_on(stop, self.wake))
        async with self.session() as http:
            while not stop.is_set():
                free = self.concurrency - len(running)
                if free <= 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self.wake.clear()  # a notification from here on wakes the wait below
                try:
                    rows = await self.pool.fetch(
                        q("delivery", "claim_due"), min(free, CLAIM_BATCH), self.lease
                    )
                except DB_ERRORS as exc:
                    log.error("deliver.claim_failed", error=type(exc).__name__)
                    await sleep_or_stop(stop, 1.0)
                    continue
                for row in rows:
                    task = asyncio.create_task(self._one(http, row))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), await self._idle_wait())
            if running:
                await asyncio.wait(running, timeout=self.settings.delivery_timeout_seconds + 1)
        stopping.cancel()
        if self.listener is not None:
            await self.listener.close()
        with contextlib.suppress(Exception):  # a dead writer was logged when it died
            await writer
        log.info("deliver.stopped")

    async def _idle_wait(self) -> float:
        """How long to wait for work when none is due. Listening, until the next pending
        delivery comes due (a retry, an expiring lease; at most `IDLE_WAIT_SECONDS`): new
        and hand-retried ones arrive with a notification, and a written retry wakes the
        loop to look again. Not listening, `delivery_interval` (polling)."""
        interval = self.settings.delivery_interval
        if self.listener is None:
            return interval
        await self.listener.ensure()
        if not self.listener.listening:
            return interval
        try:
            due_in = await self.pool.fetchval(q("delivery", "next_due_in"))
        except DB_ERRORS:
            return interval
        if due_in is None:
            return IDLE_WAIT_SECONDS
        return max(0.005, min(float(due_in), IDLE_WAIT_SECONDS))

    async def _one(self, http: aiohttp.ClientSession, row: Any) -> None:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        try:
            outcome, code, error, retry_after = await self.attempt(http, row)
        except Exception as exc:  # a bug must not lose the delivery: retry it
            log.error("deliver.attempt_crashed", error=type(exc).__name__)
            outcome, code, error, retry_after = (
                "retry",
                None,
                f"internal: {type(exc).__name__}",
                None,
            )
        attempt = int(row["attempts"])
        if outcome == "retry" and attempt >= int(row["max_attempts"]):
            outcome, error = "failed", f"gave up after {attempt} attempts: {error}"
        retry_in = 0.0
        if outcome == "retry":
            retry_in = (
                retry_after
                if retry_after is not None
                else backoff_seconds(attempt, self.settings.delivery_retry_base_seconds)
            )
        elapsed = time.monotonic() - t0
        DELIVERIES.labels(outcome).inc()
        DELIVERY_SECONDS.observe(elapsed)
        self.results.add(
            Result(
                row["delivery_id"],
                attempt,
                outcome,
                code,
                error[:500] if error else None,
                retry_in,
                started,
                int(elapsed * 1000),
            )
        )
        log.info(
            "deliver.attempt",
            delivery_id=str(row["delivery_id"]),
            attempt=attempt,
            outcome=outcome,
            status_code=code,
            error=error[:200] if error else None,
            retry_in=round(retry_in, 3) if outcome == "retry" else None,
        )

    async def attempt(
        self, http: aiohttp.ClientSession, row: Any
    ) -> tuple[str, int | None, str | None, float | None]:
        """(outcome, status code, error, Retry-After seconds) of one request."""
        alert = await self.channels.get(row["alert_definition_id"])
        if alert is None or alert["org_id"] != row["org_id"]:
            return "failed", None, "the alert no longer exists", None
        spec = alert["spec"]
        channels = spec.get("channels", [])
        if row["channel"] >= len(channels):
            return "failed", None, f"the alert has no channel {row['channel']} any more", None
        channel = channels[row["channel"]]
        url = channel["url"]
        try:
            check_url(url, self.allow_private)
        except UrlRefused as exc:
            return "failed", None, f"refused by the SSRF guard: {exc}", None
        msg_id = str(row["delivery_id"])
        headers = {"Content-Type": "application/json", "Idempotency-Key": msg_id}
        if channel["type"] == "slack":
            body = slack_body(row, alert["name"], spec.get("severity", "warning"))
        else:
            body = event_body(row, alert["name"], spec.get("severity", "warning"))
            try:
                keys = secrets_from_env(channel["secret_env"], self.environ)
            except SecretError as exc:
                return "retry", None, str(exc), None
            ts = int(time.time())
            headers |= {
                "webhook-id": msg_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": signature_header(msg_id, ts, body, keys),
            }
        try:
            async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)  # bounded; the rest is dropped
                status = resp.status
                retry_after = (
                    retry_after_seconds(resp.headers.get("Retry-After"))
                    if status in (429, 503)
                    else None
                )
        except UrlRefused as exc:
            return "failed", None, f"refused by the SSRF guard: {exc}", None
        except TimeoutError:
            return "retry", None, "timed out", None
        except aiohttp.ClientError as exc:
            return "retry", None, f"connection failed ({type(exc).__name__})", None
        outcome = classify(status)
        if outcome == "delivered":
            return outcome, status, None, None
        if 300 <= status < 400:
            return "failed", status, f"HTTP {status}: redirects are not followed", None
        if status == 410:
            return "failed", status, "HTTP 410 Gone: the receiver asked to stop", None
        return outcome, status, f"HTTP {status}", retry_after
