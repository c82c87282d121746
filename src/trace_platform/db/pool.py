"""asyncpg pools with JSON codecs; one bounded pool per database per process."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


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


async def create_pool(
    dsn: str, max_size: int = 8, min_size: int = 1, session: dict[str, str] | None = None
) -> asyncpg.Pool:
    """A bounded pool; statements are prepared and cached per connection by asyncpg.
    `session`: extra server settings for every connection of this pool."""
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
