"""Small helpers shared by tests: create tasks, claim, call attempt-scoped endpoints."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.conftest import WORKER_TOKEN
from trace_platform.db.pool import create_pool
from trace_platform.ports import LITE_ORG_ID


async def create_tasks(
    dsn: str,
    n: int = 1,
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
    org_id: uuid.UUID = LITE_ORG_ID,
    wake: bool = True,
) -> list[uuid.UUID]:
    """Create tasks the way `trace task create` does (rows + outbox in one transaction).
    With wake=False no wake-up is written, so no worker can race the test for the claim."""
    from trace_platform.db.sql import q

    pool = await create_pool(dsn, max_size=1)
    try:
        ids = [uuid.uuid4() for _ in range(n)]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                q("tasks", "insert_tasks"),
                ids,
                [payload or {"operator": "noop"}] * n,
                org_id,
                max_attempts,
            )
            if not wake:
                await conn.execute(
                    "DELETE FROM state.outbox WHERE outbox_id ="
                    " ANY(SELECT state.wakeup_outbox_id(t, 1) FROM unnest($1::uuid[]) t)",
                    ids,
                )
            await conn.execute(q("outbox", "notify_outbox"))
        return ids
    finally:
        await pool.close()


def worker_headers() -> dict[str, str]:
    return {"X-Trace-Worker-Token": WORKER_TOKEN}


async def claim(http: httpx.AsyncClient, task_id: uuid.UUID) -> httpx.Response:
    return await http.post(
        "/internal/task-claim",
        json={"task_id": str(task_id), "worker_id": "test"},
        headers=worker_headers(),
    )


class Attempt:
    """A claimed attempt: its fence and token, with one method per attempt-scoped call."""

    def __init__(self, http: httpx.AsyncClient, claim_body: dict[str, Any]) -> None:
        self.http = http
        self.body = claim_body
        self.task_id = claim_body["task_id"]
        self.attempt = claim_body["attempt"]
        self.lease_token = claim_body["lease_token"]
        self.token = claim_body["capability_token"]

    @classmethod
    async def claim(cls, http: httpx.AsyncClient, task_id: uuid.UUID) -> Attempt:
        r = await claim(http, task_id)
        assert r.status_code == 200, r.text
        return cls(http, r.json())

    def fence(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "attempt": self.attempt, "lease_token": self.lease_token}

    async def call(self, path: str, token: str | None = "", **body: Any) -> httpx.Response:
        headers = {}
        tok = self.token if token == "" else token
        if tok is not None:
            headers["X-Trace-Task-Capability"] = tok
        return await self.http.post(
            f"/v1/task/{path}", json={**self.fence(), **body}, headers=headers
        )

    async def heartbeat(self, **kw: Any) -> httpx.Response:
        return await self.call("heartbeat", **kw)

    async def complete(self, outcome: str = "success", **kw: Any) -> httpx.Response:
        return await self.call("complete", outcome=outcome, **kw)

    async def publish(
        self, name: str = "b0.jsonl", record_count: int = 1, **kw: Any
    ) -> httpx.Response:
        prefix = self.write_prefix()
        return await self.call(
            "buffer-publish", batch_uri=prefix + name, record_count=record_count, **kw
        )

    async def events(self, events: list[dict[str, Any]], **kw: Any) -> httpx.Response:
        return await self.call("events", events=events, **kw)

    def write_prefix(self) -> str:
        import jwt

        claims = jwt.decode(self.token, options={"verify_signature": False})
        return str(claims["s3"]["write_prefixes"][0])


async def task_row(conn: asyncpg.Connection, task_id: uuid.UUID | str) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT * FROM state.tasks WHERE task_id = $1", uuid.UUID(str(task_id))
    )
    assert row is not None
    return row


async def outbox_rows(conn: asyncpg.Connection, topic: str) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM state.outbox WHERE topic = $1", topic))


async def queue_messages(conn: asyncpg.Connection, queue: str) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM state.queue_messages WHERE queue_name = $1", queue))


def run_trace(settings: Any, *args: str, timeout: float = 60) -> Any:
    """`trace ARGS` as a user runs it (a subprocess with these settings in its environment)."""
    import subprocess
    import sys

    from tests.conftest import proc_env

    return subprocess.run(
        [sys.executable, "-m", "trace_platform", *args],
        env=proc_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def env_of(pool: asyncpg.Pool, data: asyncpg.Pool | None = None) -> Any:
    """An operations environment over test pools (state; data when the call needs it)."""
    from trace_platform.config import Settings
    from trace_platform.ops.env import OpsEnv

    return OpsEnv(Settings.load(env={}), pool, data or pool)


def echoed_sql(sql: str, text: str, named: tuple[str, ...] = (), width: int = 8) -> list[str]:
    """Every `width`-character piece of `sql` that `text` holds, except pieces of a name the
    answer legitimately shows (a column, a relation): an error must echo none of the SQL."""
    pieces = {sql[i : i + width] for i in range(len(sql) - width + 1)}
    return sorted(p for p in pieces if p in text and not any(p.lower() in n.lower() for n in named))


async def everything(settings: Any) -> dict[str, str]:
    """A digest of every table of both databases, and the object store's files."""
    out: dict[str, str] = {}
    for url in (settings.state_database_url, settings.data_database_url):
        conn = await asyncpg.connect(url)
        try:
            tables = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_schema IN ('state', 'data') AND table_type = 'BASE TABLE'"
            )
            digests = " UNION ALL ".join(
                f"SELECT '{t['table_schema']}.{t['table_name']}',"
                " md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), ''))"
                f' FROM "{t["table_schema"]}"."{t["table_name"]}" r'
                for t in tables
            )
            out.update({name: digest for name, digest in await conn.fetch(digests)})
        finally:
            await conn.close()
    root = Path(settings.resolved_object_store_url.removeprefix("file://"))
    for f in sorted(root.rglob("*")) if root.exists() else []:
        out[f"store:{f.relative_to(root)}"] = str(f.stat().st_size)
    return out
