"""Signalling a child started with asyncio never reaps it behind asyncio's back (the race that
printed `Unknown child process pid …, will report returncode 255` in the middle of
`make demo`, and reported 255 for a child that exited 0)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from trace_platform.aio import signal_child


async def test_signalling_a_child_as_it_exits_keeps_its_exit_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    codes = []
    for _ in range(30):
        proc = await asyncio.create_subprocess_exec("true")
        # Signal it over and over while it exits, without yielding to the loop: the moment
        # between its exit and asyncio's reaping is hit on most runs.
        until = time.monotonic() + 0.02
        while time.monotonic() < until:
            signal_child(proc, 0)
        codes.append(await proc.wait())
    assert codes == [0] * 30
    assert not [r for r in caplog.records if "Unknown child process" in r.getMessage()]
