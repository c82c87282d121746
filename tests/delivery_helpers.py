"""Helpers of the webhook delivery tests: a real HTTP receiver on loopback with a script of
answers, alert definitions in the state DB, and events inserted with the sink's statements."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from tests.conftest import wait_until
from trace_platform.alerts.spec import alert_id_for
from trace_platform.db.sql import q

Answer = int | str | tuple[int, dict[str, str]]  # a status, "slow", "hang", (status, headers)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each path from its script (the last answer repeats); records every request."""

    script: dict[str, list[Answer]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None
    hang: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.path, dict(request.headers), body, time.time()))
        answers = self.script.get(request.path, [200])
        n = sum(1 for s in self.seen if s.path == request.path)
        answer = answers[min(n, len(answers)) - 1]
        if answer == "slow":
            await asyncio.sleep(0.02)
            return web.Response(status=200)
        if answer == "hang":
            await self.hang.wait()
            return web.Response(status=200)
        if isinstance(answer, tuple):
            return web.Response(status=answer[0], headers=answer[1])
        assert isinstance(answer, int)
        return web.Response(status=answer, text="ok")

    def at(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def per_tx(self, path: str) -> dict[str, int]:
        """How many deliveries at `path` carried each transaction (the event's tx_hash)."""
        out: dict[str, int] = {}
        for seen in self.at(path):
            tx = orjson.loads(seen.body)["data"]["tx_hash"]
            out[tx] = out.get(tx, 0) + 1
        return out

    async def stop(self) -> None:
        self.hang.set()
        if self.runner is not None:
            await self.runner.cleanup()


async def define_alert(
    state: asyncpg.Pool,
    org_id: uuid.UUID,
    name: str,
    channels: list[dict[str, Any]],
    severity: str = "critical",
) -> uuid.UUID:
    """An alert definition as `trace apply` stores it (a dataset row for its source)."""
    dataset_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"{org_id}:{name}:ds")
    await state.execute(
        "INSERT INTO state.datasets (dataset_uuid, org_id, name) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING",
        dataset_uuid,
        org_id,
        f"ds-{name}",
    )
    alert_id = alert_id_for(org_id, name)
    spec = {
        "kind": "alert",
        "name": name,
        "source": {"dataset": f"ds-{name}"},
        "rule": {"sql": "SELECT 1 AS x FROM dataset"},
        "identity": ["x"],
        "severity": severity,
        "channels": channels,
    }
    await state.execute(
        q("alerts", "upsert_alert"), alert_id, org_id, name, dataset_uuid, spec, 0, True
    )
    return alert_id


async def insert_events(
    data: asyncpg.Pool,
    org_id: uuid.UUID,
    alert_id: uuid.UUID,
    keys: list[str],
    channels: list[int],
    max_attempts: int = 12,
) -> int:
    """Events (and their deliveries) through the sink's own statements; returns inserted."""
    records = [
        (
            key,
            alert_id,
            datetime.now(UTC),
            31337,
            100 + i,
            f"0xblock{i}",
            f"0xtx{i}",
            orjson.dumps({"row": {"value": i, "key": key}}).decode(),
            channels or None,
        )
        for i, key in enumerate(keys)
    ]
    from trace_platform.domain.batch import STAGING_COLUMNS

    async with data.acquire() as conn, conn.transaction():
        await conn.execute(q("sink", "create_staging"))
        await conn.copy_records_to_table("alert_staging", records=records, columns=STAGING_COLUMNS)
        inserted: int = await conn.fetchval(
            q("sink", "upsert_with_deliveries"), org_id, uuid.uuid4(), max_attempts
        )
    return inserted


async def deliveries(data: asyncpg.Pool, org_id: uuid.UUID, alert_id: uuid.UUID) -> list[Any]:
    return list(
        await data.fetch(q("delivery", "deliveries_of_alert"), org_id, alert_id, None, 10_000)
    )


async def wait_statuses(
    data: asyncpg.Pool,
    org_id: uuid.UUID,
    alert_id: uuid.UUID,
    done: Callable[[list[Any]], bool],
    timeout: float = 30.0,
) -> list[Any]:
    async def check() -> list[Any] | None:
        rows = await deliveries(data, org_id, alert_id)
        return rows if rows and done(rows) else None

    result: list[Any] = await wait_until(check, timeout, 0.05, "delivery statuses")
    return result


def all_settled(rows: list[Any]) -> bool:
    return all(r["status"] != "pending" for r in rows)
