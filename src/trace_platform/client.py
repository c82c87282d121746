"""The one task-side HTTP client: the trusted worker, the SQL alert evaluator and the
untrusted runner all talk to the dispatcher and the query service through it.

- `/v1/task/*` calls carry the attempt's fence in the body and its capability token in the
  header; a fresh token handed out by the dispatcher replaces the held one.
- Every `/v1/task/*` call and completion is idempotent by contract, so transport failures
  and 5xx answers are retried with backoff; 4xx answers are final and raise the
  `TraceError` subclass of their status (409 `not_claimed` as `NotClaimedError`).
- A query answered 429 (every executor busy) is waited out in place for a few seconds:
  back-pressure, not the caller's failure.

It imports nothing but the wire names and the error hierarchy, so the runner may use it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from trace_platform.domain.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    NotClaimedError,
    NotFoundError,
    OverloadedError,
    TraceError,
    ValidationError,
)
from trace_platform.domain.query_formats import AnswerCut
from trace_platform.ports import CAPABILITY_HEADER, WORKER_HEADER

_BY_STATUS: dict[int, type[TraceError]] = {
    400: ValidationError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    429: OverloadedError,
}
BUSY_RETRIES = 6  # about 3 s of waiting in all, with jitter


class ServiceUnavailable(TraceError):
    """No answer (or only 5xx answers) from the dispatcher or query service after the
    retries."""

    status = 503
    code = "service_unavailable"


def answer_error(status: int, data: dict[str, Any]) -> TraceError:
    """The error of a non-200 answer, keeping the service's own code and detail."""
    if status == 409 and data.get("error") == "not_claimed":
        return NotClaimedError(str(data.get("reason", "unknown")))
    if status >= 500:
        exc: TraceError = ServiceUnavailable(str(data.get("detail", f"HTTP {status}")))
    else:
        cls = _BY_STATUS.get(status, TraceError)
        exc = cls(str(data.get("detail", f"HTTP {status}")))
    exc.status = status
    if isinstance(data.get("error"), str):
        exc.code = data["error"]
    if isinstance(data.get("reason"), str):  # e.g. the SQL gate's refusal code
        exc.extra["reason"] = data["reason"][:80]
    return exc


@dataclass
class Lease:
    """A claimed attempt as its holder (worker or runner) keeps it."""

    task_id: uuid.UUID
    attempt: int
    lease_token: str
    lease_expires_at: str
    capability_token: str
    work_payload: dict[str, Any]

    def fence(self) -> dict[str, Any]:
        return {
            "task_id": str(self.task_id),
            "attempt": self.attempt,
            "lease_token": self.lease_token,
        }


def new_session(total_seconds: float = 30.0, max_connections: int = 32) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=total_seconds, connect=5),
    )


class BytesReply:
    """An answer of bytes being read (`TaskClient.open_bytes`): `headers` (names in lower
    case), its chunks by iterating it (at most CHUNK_BYTES each, as they arrive); a body that
    ends short (aborted by the service, its chunked encoding unfinished) raises AnswerCut,
    a lost connection ServiceUnavailable. `close()` releases the connection."""

    CHUNK_BYTES = 1024 * 1024

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    def __aiter__(self) -> BytesReply:
        return self

    async def __anext__(self) -> bytes:
        try:  # whole chunks (fewer, larger writes downstream), the last one short
            chunk = await self._resp.content.readexactly(self.CHUNK_BYTES)
        except asyncio.IncompleteReadError as short:
            chunk = short.partial
        except aiohttp.ClientPayloadError:
            raise AnswerCut("the service's answer ended before its end") from None
        except (aiohttp.ClientConnectionError, TimeoutError):
            raise ServiceUnavailable("the service's answer broke off") from None
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def close(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()  # read to its end: the connection serves again
        else:
            self._resp.close()


class TaskClient:
    """Calls of the dispatcher (`dispatcher_url`) and the query service (`query_url`).
    `worker_token` only for the trusted worker's batch claim and completion calls."""

    def __init__(
        self,
        dispatcher_url: str,
        worker_token: str | None = None,
        query_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 32,
        retries: int = 5,
    ) -> None:
        self.base_url = dispatcher_url.rstrip("/")
        self.query_url = query_url.rstrip("/") if query_url else None
        self._worker_token = worker_token
        self._retries = retries
        self._own_session = session is None
        self.session = session or new_session(max_connections=max_connections)

    async def close(self) -> None:
        if self._own_session:
            await self.session.close()

    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str], retry: bool = True
    ) -> dict[str, Any]:
        """One JSON call: the answer of a 200, else the error of the status (see module)."""
        delay = 0.05
        attempts = self._retries if retry else 1
        last: TraceError = ServiceUnavailable(f"no answer from {url.rsplit('/', 1)[-1]}")
        for i in range(attempts):
            try:
                async with self.session.post(
                    url,
                    data=orjson.dumps(body),
                    headers={**headers, "Content-Type": "application/json"},
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                data: dict[str, Any] = orjson.loads(raw) if raw else {}
                if status == 200:
                    return data
                last = answer_error(status, data)
                if status < 500:
                    raise last
            except (aiohttp.ClientConnectionError, TimeoutError):
                pass
            if i + 1 < attempts:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 2.0)
        raise last

    async def post_bytes(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        """One call answered with bytes (an Arrow, CSV or Parquet body): (body, the answer's
        headers); not retried; a non-200 raises the error of its status as `post` does."""
        try:
            async with self.session.post(
                url,
                data=orjson.dumps(body),
                headers={**headers, "Content-Type": "application/json"},
            ) as resp:
                raw = await resp.read()
                status = resp.status
                got = {k.lower(): v for k, v in resp.headers.items()}
        except aiohttp.ClientPayloadError:  # a streamed answer cut (`http_stream`)
            raise AnswerCut("the service's answer was cut before its end") from None
        except (aiohttp.ClientConnectionError, TimeoutError):
            raise ServiceUnavailable(f"no answer from {url.rsplit('/', 1)[-1]}") from None
        if status != 200:
            try:
                data = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                data = {}
            raise answer_error(status, data if isinstance(data, dict) else {})
        return raw, got

    async def open_bytes(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> BytesReply:
        """One call answered with bytes, read as they arrive (`BytesReply`, to be closed):
        not retried; a non-200 raises the error of its status as `post` does."""
        try:
            resp = await self.session.post(
                url,
                data=orjson.dumps(body),
                headers={**headers, "Content-Type": "application/json"},
            )
        except (aiohttp.ClientConnectionError, TimeoutError):
            raise ServiceUnavailable(f"no answer from {url.rsplit('/', 1)[-1]}") from None
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.release()
            try:
                data = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                data = {}
            raise answer_error(resp.status, data if isinstance(data, dict) else {})
        return BytesReply(resp)

    async def report_endpoints(self, process: str, rows: list[dict[str, Any]]) -> None:
        """This worker's view of its RPC pools' endpoints (labels, never URLs), for status."""
        await self.post(
            f"{self.base_url}/internal/rpc-endpoints",
            {"process": process, "endpoints": rows},
            self._worker_headers(),
            retry=False,
        )

    def _worker_headers(self) -> dict[str, str]:
        if self._worker_token is None:
            raise AuthError("this client holds no worker token")
        return {WORKER_HEADER: self._worker_token}

    async def claim_many(
        self, task_ids: list[uuid.UUID], worker_id: str
    ) -> tuple[list[Lease], dict[uuid.UUID, str]]:
        """Claim a batch of woken tasks in one round trip: (leases, {task_id: refusal}).

        Claims are not idempotent (a lost answer leaves leases with nobody): no retry; the
        wake-ups stay unacked and the reaper frees the leases."""
        data = await self.post(
            f"{self.base_url}/internal/task-claim-batch",
            {"task_ids": [str(t) for t in task_ids], "worker_id": worker_id},
            self._worker_headers(),
            retry=False,
        )
        leases = [_lease(c) for c in data["claimed"]]
        refused = {uuid.UUID(r["task_id"]): str(r["reason"]) for r in data["not_claimed"]}
        return leases, refused

    async def complete_many(
        self, items: list[tuple[Lease, dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Many completions in one request (each still fenced by its own token and lease).
        Returns one result per item: `{code, body}` as the single endpoint would answer."""
        body = {
            "items": [
                {**lease.fence(), **report, "capability_token": lease.capability_token}
                for lease, report in items
            ]
        }
        data = await self.post(
            f"{self.base_url}/internal/task-complete-batch", body, self._worker_headers()
        )
        results: list[dict[str, Any]] = data["results"]
        return results

    async def task_call(self, lease: Lease, path: str, **body: Any) -> dict[str, Any]:
        """`POST /v1/task/{path}` for this attempt (fence + capability token)."""
        data = await self.post(
            f"{self.base_url}/v1/task/{path}",
            {**lease.fence(), **body},
            {CAPABILITY_HEADER: lease.capability_token},
        )
        fresh = data.get("capability_token")
        if isinstance(fresh, str):
            lease.capability_token = fresh
        return data

    async def heartbeat(self, lease: Lease) -> dict[str, Any]:
        return await self.task_call(lease, "heartbeat")

    async def buffer_publish(self, lease: Lease, batch_uri: str, record_count: int) -> None:
        await self.task_call(
            lease, "buffer-publish", batch_uri=batch_uri, record_count=record_count
        )

    async def query(
        self, lease: Lease, dataset_id: Any, sql: Any, limit: Any = 1000
    ) -> dict[str, Any]:
        """`POST /v1/task/query` with the attempt's token: `{columns, rows, truncated}`.
        Raises the answer's error (a 429 only once the busy-wait is over); transport errors
        (aiohttp.ClientError, TimeoutError) are the caller's to handle."""
        body = {"dataset_id": dataset_id, "sql": sql, "limit": limit}
        raw, _truncated = await self._task_query(lease, body)
        data: dict[str, Any] = orjson.loads(raw)
        return data

    async def query_arrow(self, lease: Lease, sql: str) -> tuple[bytes, bool]:
        """`POST /v1/task/query` answered as an Arrow IPC stream: (the stream, truncated);
        raises as `query`."""
        return await self._task_query(lease, {"sql": sql, "format": "arrow"})

    async def query_parquet(self, lease: Lease, sql: str) -> tuple[bytes, bool]:
        """`POST /v1/task/query` answered as one Parquet file (zstd): (the file, truncated);
        raises as `query`."""
        return await self._task_query(lease, {"sql": sql, "format": "parquet"})

    async def _task_query(self, lease: Lease, fields: dict[str, Any]) -> tuple[bytes, bool]:
        if self.query_url is None:
            raise ServiceUnavailable("no query service is configured")
        body = {"task_id": str(lease.task_id), "attempt": lease.attempt, **fields}
        delay = 0.05
        for attempt in range(BUSY_RETRIES + 1):
            async with self.session.post(
                f"{self.query_url}/v1/task/query",
                data=orjson.dumps(body),
                headers={
                    CAPABILITY_HEADER: lease.capability_token,
                    "Content-Type": "application/json",
                },
            ) as resp:
                try:
                    raw = await resp.read()
                except aiohttp.ClientPayloadError:  # a streamed answer cut (`http_stream`)
                    raise AnswerCut("the query's answer was cut before its end") from None
                status = resp.status
                truncated = resp.headers.get("X-Trace-Truncated") == "true"
            if status == 200:
                return raw, truncated
            if status != 429 or attempt == BUSY_RETRIES:
                raise answer_error(status, orjson.loads(raw or b"{}"))
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def query_batch(
        self, queries: list[tuple[Lease, Any, Any, Any]]
    ) -> list[dict[str, Any] | TraceError]:
        """`POST /v1/task/query-batch`: (lease, dataset_id, sql, limit) each, answered in
        order with the result or the error that query alone would have raised. A whole-call
        failure raises (transport errors, as `query`, are the caller's to handle)."""
        if self.query_url is None:
            raise ServiceUnavailable("no query service is configured")
        body = {
            "queries": [
                {
                    "capability": lease.capability_token,
                    "task_id": str(lease.task_id),
                    "attempt": lease.attempt,
                    "dataset_id": dataset_id,
                    "sql": sql,
                    "limit": limit,
                }
                for lease, dataset_id, sql, limit in queries
            ]
        }
        async with self.session.post(
            f"{self.query_url}/v1/task/query-batch",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        ) as resp:
            data: dict[str, Any] = orjson.loads(await resp.read() or b"{}")
            status = resp.status
        if status != 200:
            raise answer_error(status, data)
        results = data.get("results")
        if not isinstance(results, list) or len(results) != len(queries):
            raise ServiceUnavailable("query service answered a batch it was not asked")
        return [
            r["result"] if r.get("status") == 200 else answer_error(int(r["status"]), r)
            for r in results
        ]


def _lease(data: dict[str, Any]) -> Lease:
    return Lease(
        task_id=uuid.UUID(data["task_id"]),
        attempt=data["attempt"],
        lease_token=data["lease_token"],
        lease_expires_at=data["lease_expires_at"],
        capability_token=data["capability_token"],
        work_payload=data["work_payload"],
    )
