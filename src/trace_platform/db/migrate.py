"""Numbered, idempotent SQL migrations for the `state` and `data` databases."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from trace_platform.domain.errors import ConfigError
from trace_platform.logs import get_logger

log = get_logger(__name__)

COMPONENTS = ("state", "data")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x7452_4143  # advisory lock: one migrator at a time per database

_LEDGER = """
CREATE TABLE IF NOT EXISTS public.trace_schema_migrations (
    component  text NOT NULL,
    version    int NOT NULL,
    name       text NOT NULL,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(component: str) -> list[Migration]:
    folder = resources.files("trace_platform.db").joinpath("migrations", component)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(component, int(match.group(1)), match.group(2), entry.read_text())
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ConfigError(f"{component} migrations are not numbered 1..N: {versions}")
    return found


async def migrate(conn: asyncpg.Connection, component: str) -> list[Migration]:
    """Apply the pending migrations of one component; returns what was applied."""
    applied_now: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_LEDGER)
        rows = await conn.fetch(
            "SELECT version, sha256 FROM public.trace_schema_migrations WHERE component = $1",
            component,
        )
        done = {r["version"]: r["sha256"] for r in rows}
        for m in load_migrations(component):
            if m.version in done:
                if done[m.version] != m.sha256:
                    raise ConfigError(
                        f"{component} migration {m.version:04d}_{m.name} was changed after"
                        " it was applied (add a new migration instead)"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO public.trace_schema_migrations (component, version, name, sha256)"
                    " VALUES ($1, $2, $3, $4)",
                    component,
                    m.version,
                    m.name,
                    m.sha256,
                )
            log.info("db.migration.applied", component=component, version=m.version, name=m.name)
            applied_now.append(m)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def migrate_databases(state_url: str, data_url: str) -> dict[str, list[Migration]]:
    """Apply pending migrations to both databases; returns what was applied per component."""
    from trace_platform.db.pool import connect

    applied: dict[str, list[Migration]] = {}
    for component, url in (("state", state_url), ("data", data_url)):
        conn = await connect(url)
        try:
            applied[component] = await migrate(conn, component)
        finally:
            await conn.close()
    return applied
