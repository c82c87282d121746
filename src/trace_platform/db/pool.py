"""asyncpg pools with JSON codecs; one bounded pool per database per process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import orjson

from trace_platform.logs import get_logger

log = get_logger(__name__)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog", format="text"
        )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool reset hook. Our code leaves no session state behind (no SET, no LISTEN on pooled
    connections, temp tables clear on commit), so the default `RESET ALL; UNLISTEN *; ...`
    round trip on every release is pure cost. asyncpg still rolls back an open transaction."""
    return None


STARTUP_DB_WAIT = 60.0  # processes wait this long for their database at start

# What a database that is away (restarting, down, overloaded) raises through asyncpg; the
# client-side state error is among them (a connection cut in the middle of a call).
DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


async def create_pool(
    dsn: str,
    max_size: int = 8,
    min_size: int = 1,
    session: dict[str, str] | None = None,
    wait_seconds: float = 0.0,
) -> asyncpg.Pool:
    """A bounded pool; statements are prepared and cached per connection by asyncpg.
    `session`: extra server settings for every connection of this pool. `wait_seconds`: a
    long-running process waits that long for a database that is not up yet (a restart)."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return await _create_pool(dsn, max_size, min_size, session)
        except DB_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("db.waiting", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _create_pool(
    dsn: str, max_size: int, min_size: int, session: dict[str, str] | None
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, max_size),
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        server_settings={"application_name": "trace", **(session or {})},
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=10)
    await _init_connection(conn)
    return conn


class Listener:
    """A connection of its own that LISTENs on one channel and sets `wake` on each
    notification. Best effort: when it cannot connect or its connection drops, `ensure`
    tries again on the next call and the caller's polling still finds the work."""

    def __init__(self, dsn: str, channel: str, wake: asyncio.Event) -> None:
        self.dsn = dsn
        self.channel = channel
        self.wake = wake
        self._conn: asyncpg.Connection | None = None
        self._next_try = 0.0

    async def ensure(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        if time.monotonic() < self._next_try:
            return
        try:
            conn = await asyncpg.connect(self.dsn, timeout=10)
            await conn.add_listener(self.channel, lambda *_: self.wake.set())
        except DB_ERRORS as exc:
            self._next_try = time.monotonic() + 5.0
            log.warning("db.listen_failed", channel=self.channel, error=type(exc).__name__)
            return
        self._conn = conn
        self.wake.set()  # what was notified while no one listened is looked for now

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*DB_ERRORS):
                await self._conn.close()
            self._conn = None


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> bool:
    """Whether the pool's database answers a trivial query within `timeout` seconds."""
    try:
        return bool(await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout) == 1)
    except (*DB_ERRORS, TimeoutError):
        return False
