"""`trace up`: the whole Lite stack on one machine as supervised child processes.

Starts (or reuses) the embedded PostgreSQL, migrates, then runs dispatcher, worker(s) and sink
as children with one combined, prefixed log. A child that crashes is restarted with backoff;
SIGINT/SIGTERM stops everything cleanly.

Before anything starts, a stack refuses what would only fail later, in a loop of restarts: a
second stack in the same TRACE_HOME (an exclusive lock on `HOME/stack.lock`, which the kernel
drops when its holder dies, so a killed stack's file blocks nothing) and a port one of its
children would listen on that is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from trace_platform.adapters.local_keys import load_key_ring, load_worker_tokens
from trace_platform.aio import signal_child
from trace_platform.config import RPC_POOL_ENV, SETTINGS, Settings
from trace_platform.db.embedded import DatabaseUrls, resolve_databases
from trace_platform.db.migrate import migrate_databases
from trace_platform.domain.errors import ConfigError, ConflictError, UnavailableError
from trace_platform.logs import get_logger

log = get_logger(__name__)

RESTART_MAX_DELAY = 30.0
STABLE_AFTER = 30.0
LOCK_FILE = "stack.lock"
# The ports the stack's children listen on (all on TRACE_HOST): the setting and who listens.
LISTENERS = (
    ("port", "the dispatcher"),
    ("query_port", "the query service"),
    ("api_port", "the user API and console"),
)


class StackLock:
    """One stack per TRACE_HOME: an exclusive `flock` on HOME/stack.lock, held while the stack
    runs, the holder's pid written inside for the refusal to name."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """ConflictError naming the running stack when another process holds the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConflictError(
                f"a Trace stack is already running in TRACE_HOME={self.path.parent}"
                f" (pid {holder}): use it, stop it first, or start this one with another"
                " TRACE_HOME"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = None


def check_ports(settings: Settings) -> None:
    """ConfigError naming the port and its setting when a child of the stack could not listen
    there: the port is taken (or two settings name the same one)."""
    chosen: dict[int, str] = {}
    for name, who in LISTENERS:
        setting = next(s for s in SETTINGS if s.name == name)
        port = int(getattr(settings, name))
        where = f"{setting.env} / {setting.flag}"
        if port in chosen:
            raise ConfigError(
                f"port {port} is chosen twice ({chosen[port]} and {where}): give {who}"
                " a port of its own"
            )
        chosen[port] = where
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                settings.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, proto) as probe:
                # as the servers bind: a port left in TIME_WAIT is free, a listener is not
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            why = (
                "is already in use"
                if exc.errno == errno.EADDRINUSE
                else f"cannot be listened on ({exc.strerror or type(exc).__name__})"
            )
            raise ConfigError(
                f"port {port} on {settings.host} {why}: `trace up` runs {who} there"
                f" ({where}); stop what holds it or choose another port"
            ) from None


@dataclass
class Child:
    name: str
    args: list[str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


async def prepare(settings: Settings) -> DatabaseUrls:
    """Databases up and migrated; Lite secrets created once, before children race for them."""
    urls = await resolve_databases(settings, create=True)
    if not urls.embedded:  # the embedded ones are migrated as they are resolved
        await migrate_databases(urls.state, urls.data)
    load_key_ring(settings)
    load_worker_tokens(settings)
    return urls


class Stack:
    def __init__(
        self,
        settings: Settings,
        workers: int = 1,
        out: IO[str] | None = None,
        extra: list[Child] | None = None,
    ) -> None:
        self.settings = settings
        self.out = out or sys.stdout
        self.children = [Child("dispatcher", ["dispatcher"])]
        self.children += [Child(f"worker-{i + 1}", ["worker"]) for i in range(workers)]
        self.children += [Child("sink", ["sink"]), Child("query", ["query-service"])]
        self.children += [Child("deliver", ["deliver"]), Child("api", ["api"])]
        self.children += extra or []
        self._stopping = False
        # held while a child is being started: stop() takes it, so no child starts after it
        self._spawning = asyncio.Lock()
        self._supervisors: list[asyncio.Task[None]] = []
        self.env: dict[str, str] = {}
        self.lock = StackLock(settings.home.resolve())

    async def start(self) -> None:
        """Refuse a second stack in this home or a taken port (before anything starts), then
        databases, then the children."""
        self.lock.acquire()
        try:
            check_ports(self.settings)
            await self._start()
        except BaseException:
            self.lock.release()
            raise

    async def _start(self) -> None:
        urls = await prepare(self.settings)
        child_settings = self.settings.replace(
            state_database_url=urls.state,
            data_database_url=urls.data,
            home=self.settings.home.resolve(),
            # UDF runners reach the query service of this stack
            query_url=self.settings.resolved_query_url,
        )
        # Settings reach the children as this stack resolved them (RPC pools included, each
        # as its one TRACE_RPC_POOL_<NAME>_URLS); other TRACE_ variables (webhook secrets
        # named by alert specs) pass through unchanged.
        known = {setting.env for setting in SETTINGS}
        self.env = {
            k: v for k, v in os.environ.items() if k not in known and not RPC_POOL_ENV.match(k)
        }
        self.env.update(child_settings.child_env())
        for child in self.children:
            await self._spawn(child)
            self._supervisors.append(asyncio.create_task(self._supervise(child)))

    async def _spawn(self, child: Child) -> None:
        async with self._spawning:
            if self._stopping:
                return
            child.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "trace_platform",
                *child.args,
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
            )
        child.started_at = time.monotonic()
        assert child.proc.stdout is not None
        child.pumps = [asyncio.create_task(self._pump(child.name, child.proc.stdout))]

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.out.write(f"{name:<11}| {line.decode(errors='replace')}")
            self.out.flush()

    async def _supervise(self, child: Child) -> None:
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            for pump in child.pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            if self._stopping:
                return
            ran = time.monotonic() - child.started_at
            if ran > STABLE_AFTER:
                child.restarts = 0
            delay = min(RESTART_MAX_DELAY, 0.5 * 2**child.restarts)
            child.restarts += 1
            log.warning("stack.child_exited", child=child.name, code=code, restart_in=delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn(child)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        url = self.settings.resolved_dispatcher_url + "/readyz"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise UnavailableError(
            f"the dispatcher did not become ready within {timeout:.0f} s; its log says why"
        )

    async def stop(self, grace: float = 15.0) -> None:
        self._stopping = True
        async with self._spawning:  # a restart under way finishes; none starts after it
            pass
        # Producers first, dispatcher last, so in-flight reports still land.
        for group in (
            [c for c in self.children if c.name != "dispatcher"],
            [c for c in self.children if c.name == "dispatcher"],
        ):
            for child in group:
                if child.proc is not None:
                    signal_child(child.proc, signal.SIGTERM)
            for child in group:
                if child.proc is None:
                    continue
                try:
                    await asyncio.wait_for(child.proc.wait(), grace)
                except TimeoutError:
                    signal_child(child.proc, signal.SIGKILL)
                    await child.proc.wait()
        for sup in self._supervisors:
            sup.cancel()
        for sup in self._supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                await sup
        self.lock.release()


async def run_stack(
    settings: Settings, workers: int, on_ready: Callable[[], None] | None = None
) -> None:
    stack = Stack(settings, workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stack.start()
    try:
        await stack.wait_ready()
        if on_ready:
            on_ready()
        await stop.wait()
    finally:
        await stack.stop()
