"""Small asyncio helpers shared by the long-running processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from trace_platform.logs import get_logger
from trace_platform.metrics import LOOP_ITERATIONS

log = get_logger(__name__)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, returning early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def first_of(stop: asyncio.Event, other: Coroutine[Any, Any, Any]) -> None:
    """Await `other` unless `stop` is set first (then `other` is cancelled)."""
    waiter = asyncio.ensure_future(stop.wait())
    fut = asyncio.ensure_future(other)
    _done, pending = await asyncio.wait({waiter, fut}, return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()


def watch(
    task: asyncio.Task[Any], name: str, on_death: Callable[[str, BaseException], None]
) -> asyncio.Task[Any]:
    """Give a background task an owner that notices its death: `on_death(name, exc)` runs
    when it ends with an exception (a cancel is a normal end)."""

    def done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            exc = t.exception()
            assert exc is not None
            on_death(name, exc)

    task.add_done_callback(done)
    return task


def signal_child(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Send `sig` to a child started with asyncio unless it is known to have exited.

    Not through `Process.send_signal`/`kill`: subprocess polls (waitpid) before it signals,
    so a child that has just exited can be reaped there before asyncio's child watcher gets
    to it; the watcher then logs `Unknown child process pid …, will report returncode 255` and
    reports 255 instead of the real exit code. Only the watcher reaps our children, so until
    it has, the pid is still this child's (a zombie at worst)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT set `stop` so the process drains and exits cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


class LoopRunner:
    """Runs named steps forever: again at once while a step is busy, else after its interval."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def start(
        self,
        name: str,
        step: Callable[[], Awaitable[int]],
        interval: float,
        busy_at: int,
        poke: asyncio.Event | None = None,
    ) -> None:
        self._tasks.append(asyncio.create_task(self._run(name, step, interval, busy_at, poke)))

    async def _run(
        self,
        name: str,
        step: Callable[[], Awaitable[int]],
        interval: float,
        busy_at: int,
        poke: asyncio.Event | None,
    ) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if poke is not None:
                    poke.clear()
                handled = await step()
                failures = 0
                LOOP_ITERATIONS.labels(name).inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a loop survives DB restarts and transient faults
                failures += 1
                handled = 0
                log.error(
                    "loop.step_failed", loop=name, error=type(exc).__name__, detail=str(exc)[:300]
                )
            if handled >= busy_at:
                continue
            wait = interval * min(2**failures, 30) if failures else interval
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stopping.wait())]
            if poke is not None and not failures:
                waiters.append(asyncio.ensure_future(poke.wait()))
            _done, pending = await asyncio.wait(
                waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in pending:
                fut.cancel()

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
