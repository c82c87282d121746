"""Test fixtures: one real PostgreSQL per session, fresh databases per test module, real
processes on loopback. Set TRACE_TEST_ADMIN_DATABASE_URL to use an external server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from trace_platform.config import Settings
from trace_platform.db.migrate import migrate
from trace_platform.db.pool import connect

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Await a condition (sync or async predicate) instead of sleeping for a guessed time."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(interval)


def _socket_url(socket_dir: str, database: str) -> str:
    from urllib.parse import quote

    return f"postgresql://postgres@/{database}?host={quote(socket_dir)}"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TRACE_TEST_ADMIN_DATABASE_URL")
    if external:
        yield external
        return
    from trace_platform.db.embedded import start_embedded, stop_embedded

    pgdata = tmp_path_factory.mktemp("pg") / "data"
    socket_dir = start_embedded(pgdata)
    yield _socket_url(str(socket_dir), "postgres")
    stop_embedded(pgdata)


def _replace_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@dataclass
class Dbs:
    state: str
    data: str
    admin: str


@pytest.fixture(scope="module")
async def dbs(pg_admin_url: str) -> AsyncIterator[Dbs]:
    suffix = secrets.token_hex(4)
    names = {"state": f"t_{suffix}_state", "data": f"t_{suffix}_data"}
    admin = await asyncpg.connect(pg_admin_url)
    try:
        for name in names.values():
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    urls = {k: _replace_db(pg_admin_url, v) for k, v in names.items()}
    for component, url in urls.items():
        conn = await connect(url)
        try:
            await migrate(conn, component)
        finally:
            await conn.close()
    yield Dbs(urls["state"], urls["data"], pg_admin_url)
    admin = await asyncpg.connect(pg_admin_url)
    try:
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def state_conn(dbs: Dbs) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dbs.state)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def data_conn(dbs: Dbs) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dbs.data)
    yield conn
    await conn.close()


TEST_KEYS = {
    "issuer": "trace-test",
    "current": {"kid": "k-current", "alg": "HS256", "secret": "c" * 16 + secrets.token_hex(16)},
    "next": {"kid": "k-next", "alg": "HS256", "secret": "n" * 16 + secrets.token_hex(16)},
}
WORKER_TOKEN = "worker-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def trace_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def settings(dbs: Dbs, trace_home: Path) -> Settings:
    """Short timings so that leases expire and retries start within a test."""
    return Settings.load(
        {
            "home": trace_home,
            "state_database_url": dbs.state,
            "data_database_url": dbs.data,
            "task_keys": json.dumps(TEST_KEYS),
            "worker_token": WORKER_TOKEN,
            "issuer": "trace-test",
            "lease_seconds": 2.0,
            "retry_base_seconds": 0.1,
            "retry_max_seconds": 0.5,
            "outbox_interval": 0.05,
            "retry_interval": 0.05,
            "reaper_interval": 0.1,
            "visibility_seconds": 5.0,
            "sink_max_deliveries": 3,
            "sink_retry_base_seconds": 0.05,
            "port": free_port(),
            "query_port": free_port(),
            "api_port": free_port(),  # a `trace up` here must not need 8090
            "log_level": "info",
        },
        env={},
    )


@dataclass
class Proc:
    """A real child process of the CLI, with its log captured to a file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "trace_platform", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        return self

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def stop(self) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def proc_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    env.update(settings.child_env())
    env.update(extra)
    return env


async def wait_http_ready(url: str, proc: Proc, timeout: float = 30.0) -> None:
    async with httpx.AsyncClient(timeout=2) as client:

        async def ready() -> bool:
            assert proc.popen is not None
            if proc.popen.poll() is not None:
                raise AssertionError(f"process exited early:\n{proc.log_text()[-3000:]}")
            try:
                r = await client.get(url + "/readyz")
            except httpx.TransportError:
                return False
            return r.status_code == 200

        await wait_until(ready, timeout, 0.05, "readyz")


def start_proc(settings: Settings, tmp: Path, *args: str) -> Proc:
    """Start `trace <args>` as a real child process with these settings."""
    name = "-".join(args[:1]) + "-" + uuid.uuid4().hex[:6]
    return Proc(list(args), proc_env(settings), tmp / f"{name}.log").start()


async def start_dispatcher(settings: Settings, tmp: Path, port: int | None = None) -> Proc:
    port = port or settings.port
    proc = Proc(
        ["dispatcher", "--port", str(port)],
        proc_env(settings),
        tmp / f"dispatcher-{port}-{uuid.uuid4().hex[:6]}.log",
    ).start()
    proc.url = f"http://127.0.0.1:{port}"
    await wait_http_ready(proc.url, proc)
    return proc


async def start_query_service(settings: Settings, tmp: Path) -> Proc:
    """`trace query-service` on settings.query_port, returned once /readyz answers."""
    proc = start_proc(settings, tmp, "query-service")
    proc.url = f"http://127.0.0.1:{settings.query_port}"
    await wait_http_ready(proc.url, proc)
    return proc


def api_settings(settings: Settings, **changes: Any) -> Settings:
    """`settings` for a module's own API and query service, each on a free port, with the
    API's rate limit out of the way (it has its own test) unless `changes` set it."""
    port = free_port()
    defaults: dict[str, Any] = {
        "query_port": port,
        "query_url": f"http://127.0.0.1:{port}",
        "api_port": free_port(),
        "api_rate_per_second": 1000.0,
        "api_rate_burst": 1000,
    }
    return settings.replace(**(defaults | changes))


@dataclass(frozen=True)
class ApiStack:
    url: str  # the API's
    query: Proc  # the query service (its executors are processes of their own)
    api: Proc


@contextlib.asynccontextmanager
async def api_stack(settings: Settings, logs: Path) -> AsyncIterator[ApiStack]:
    """`trace api` and the query service only (`api_settings`), logging to `logs`, ready
    when entered and stopped (the API first) when left."""
    query = await start_query_service(settings, logs)
    api = Proc(["api"], proc_env(settings), logs / "api.log").start()
    url = f"http://127.0.0.1:{settings.api_port}"
    try:
        await wait_http_ready(url, api)
        yield ApiStack(url, query, api)
    finally:
        api.stop()
        query.stop()


@pytest.fixture(scope="module")
async def dispatcher(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Proc]:
    proc = await start_dispatcher(settings, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def http(dispatcher: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dispatcher.url or "", timeout=10) as client:
        yield client
