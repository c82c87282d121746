"""HTTP client of the dispatcher for trusted workers (aiohttp, keep-alive, bounded pool).

Every /v1/task/* call is idempotent by contract, so transport failures and 5xx answers are
retried with backoff; 4xx answers are final and surface as TraceError subclasses.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from trace_platform.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    NotClaimedError,
    NotFoundError,
    TraceError,
    ValidationError,
)

_BY_STATUS: dict[int, type[TraceError]] = {
    400: ValidationError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
}


class DispatcherUnavailable(TraceError):
    status = 503
    code = "dispatcher_unavailable"


@dataclass
class Lease:
    """A claimed attempt as the worker holds it."""

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


class DispatcherClient:
    def __init__(
        self, base_url: str, worker_token: str, max_connections: int = 32, retries: int = 5
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._worker_token = worker_token
        self._retries = retries
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=30, connect=5),
            json_serialize=lambda v: orjson.dumps(v).decode(),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _post(
        self, path: str, body: dict[str, Any], headers: dict[str, str], retry: bool = True
    ) -> dict[str, Any]:
        delay = 0.05
        attempts = self._retries if retry else 1
        for i in range(attempts):
            try:
                async with self._session.post(
                    self.base_url + path,
                    data=orjson.dumps(body),
                    headers={**headers, "Content-Type": "application/json"},
                ) as resp:
                    raw = await resp.read()
                    if resp.status < 500:
                        data: dict[str, Any] = orjson.loads(raw) if raw else {}
                        if resp.status == 200:
                            return data
                        if resp.status == 409 and data.get("error") == "not_claimed":
                            raise NotClaimedError(str(data.get("reason", "unknown")))
                        cls = _BY_STATUS.get(resp.status, TraceError)
                        raise cls(str(data.get("detail", f"HTTP {resp.status}")))
            except (aiohttp.ClientConnectionError, TimeoutError):
                pass
            if i + 1 < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise DispatcherUnavailable(f"dispatcher did not answer {path}")

    async def claim_many(
        self, task_ids: list[uuid.UUID], worker_id: str
    ) -> tuple[list[Lease], dict[uuid.UUID, str]]:
        """Claim a batch of woken tasks in one round trip: (leases, {task_id: refusal}).

        Claims are not idempotent (a lost answer leaves leases with nobody): no retry; the
        wake-ups stay unacked and the reaper frees the leases."""
        data = await self._post(
            "/internal/task-claim-batch",
            {"task_ids": [str(t) for t in task_ids], "worker_id": worker_id},
            {"X-Trace-Worker-Token": self._worker_token},
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
        data = await self._post(
            "/internal/task-complete-batch", body, {"X-Trace-Worker-Token": self._worker_token}
        )
        results: list[dict[str, Any]] = data["results"]
        return results

    async def task_call(self, lease: Lease, path: str, **body: Any) -> dict[str, Any]:
        data = await self._post(
            f"/v1/task/{path}",
            {**lease.fence(), **body},
            {"X-Trace-Task-Capability": lease.capability_token},
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


def _lease(data: dict[str, Any]) -> Lease:
    return Lease(
        task_id=uuid.UUID(data["task_id"]),
        attempt=data["attempt"],
        lease_token=data["lease_token"],
        lease_expires_at=data["lease_expires_at"],
        capability_token=data["capability_token"],
        work_payload=data["work_payload"],
    )
