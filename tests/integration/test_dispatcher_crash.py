"""A dispatcher killed by SIGKILL loses nothing: pending outbox rows are delivered later."""

from __future__ import annotations

import signal
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import WORKER_TOKEN, start_dispatcher, wait_until
from tests.helpers import Attempt, create_tasks
from trace_platform.config import Settings


async def test_outbox_rows_committed_before_a_crash_are_delivered_after_restart(
    settings: Settings, state_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    first = await start_dispatcher(settings, tmp_path)
    try:
        # Freeze the dispatcher so its drainer cannot run, then commit outbox rows.
        first.signal(signal.SIGSTOP)
        ids = await create_tasks(settings.state_database_url or "", 25)
        pending = await state_conn.fetchval(
            "SELECT count(*) FROM state.outbox WHERE status = 'pending'"
        )
        assert pending == 25
        first.signal(signal.SIGKILL)
        assert first.popen is not None and first.popen.wait(10) == -signal.SIGKILL
    finally:
        first.kill()
    assert (
        await state_conn.fetchval(
            "SELECT count(*) FROM state.queue_messages WHERE queue_name = 'task_wakeup'"
        )
        == 0
    )

    second = await start_dispatcher(settings, tmp_path)
    try:

        async def delivered() -> bool:
            n = await state_conn.fetchval(
                "SELECT count(DISTINCT payload->>'task_id') FROM state.queue_messages"
                " WHERE queue_name = 'task_wakeup' AND (payload->>'task_id')::uuid = ANY($1)",
                ids,
            )
            pending = await state_conn.fetchval(
                "SELECT count(*) FROM state.outbox WHERE status = 'pending'"
            )
            return n == len(ids) and pending == 0

        await wait_until(delivered, what="wake-ups delivered and the outbox drained")
    finally:
        second.stop()


async def test_graceful_shutdown_on_sigterm_and_logs_hold_no_secrets(
    settings: Settings, tmp_path: Path
) -> None:
    proc = await start_dispatcher(settings, tmp_path)
    (tid,) = await create_tasks(settings.state_database_url or "", 1)
    async with httpx.AsyncClient(base_url=proc.url or "", timeout=10) as http:
        a = await Attempt.claim(http, tid)
        assert (await a.call("heartbeat", token="x.y.z")).status_code == 401
        assert (await a.complete()).status_code == 200
    assert proc.stop() == 0
    log = proc.log_text()
    assert "dispatcher.stopping" in log and "task.claimed" in log
    for secret in (a.token, WORKER_TOKEN, settings.task_keys and "secret"):
        assert secret and secret not in log
    for line in log.splitlines():
        if line.startswith("{"):
            import json

            event = json.loads(line)
            assert {"ts", "level", "event"} <= event.keys()


@pytest.mark.parametrize("missing", ["state_database_url"])
def test_half_configured_databases_are_refused(settings: Settings, missing: str) -> None:
    import subprocess
    import sys

    from tests.conftest import proc_env

    env = proc_env(settings)
    env.pop("TRACE_" + missing.upper())
    r = subprocess.run(
        [sys.executable, "-m", "trace_platform", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "TRACE_STATE_DATABASE_URL" in r.stderr
