"""Small asyncio helpers shared by the long-running processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any


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


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT set `stop` so the process drains and exits cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
