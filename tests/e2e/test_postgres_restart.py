"""The database goes away under a working stack (`trace up` on its embedded Postgres): two fast
restarts, then five seconds down. Every task completes, the rows are exact, nothing reaches
the DLQ, nothing is marked failed because the database was away, and /readyz says so while
it is gone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port, wait_until
from trace_platform.adapters.local_keys import load_key_ring
from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases, restart_embedded, stop_embedded
from trace_platform.db.pool import create_pool
from trace_platform.dispatcher.service import TaskService
from trace_platform.ports import LITE_ORG_ID

TASKS, ROWS = 600, 5
OUTAGE_SECONDS = 5.0


async def test_the_stack_rides_out_database_restarts_and_an_outage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    env.update(TRACE_HOME=str(home), TRACE_PORT=str(port), TRACE_QUERY_PORT=str(free_port()))
    # A buffer batch whose insert a restart cut short is redelivered when its visibility ends
    # (the sink leaves it to the queue): 5 s, not the default 30 s the test would wait out.
    env["TRACE_VISIBILITY_SECONDS"] = "5"
    settings = Settings.load({"home": home, "port": port}, env={})
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "trace_platform", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    pgdata = home / "postgres"
    ready_url = f"http://127.0.0.1:{port}/readyz"
    try:
        await wait_until(
            lambda: "trace is up" in (tmp_path / "up.log").read_text(), 90, 0.2, "stack up"
        )
        urls = await resolve_databases(settings)

        async def counts() -> tuple[int, int, int, int]:
            state = await create_pool(urls.state, max_size=1)
            data = await create_pool(urls.data, max_size=1)
            try:
                done = await state.fetchval(
                    "SELECT count(*) FROM state.tasks WHERE status = 'completed'"
                )
                failed = await state.fetchval(
                    "SELECT count(*) FROM state.tasks WHERE status IN ('failed', 'canceled')"
                )
                dlq = await state.fetchval(
                    "SELECT count(*) FROM state.queue_messages WHERE queue_name LIKE '%dlq'"
                )
                rows = await data.fetchval("SELECT count(*) FROM data.alert_events")
                # A task retried (lease timed out) was marked failed on the way: none may be.
                failed += await state.fetchval("SELECT count(*) FROM state.tasks WHERE attempt > 1")
                return int(done), int(failed), int(dlq), int(rows)
            finally:
                await state.close()
                await data.close()

        async def submit(batch: str) -> None:
            pool = await create_pool(urls.state, max_size=1)
            try:
                service = TaskService(pool, load_key_ring(settings), settings)
                payloads = [
                    {
                        "operator": "emit_alerts",
                        "count": ROWS,
                        "seed": f"{batch}-{i}",
                        "sleep_seconds": 0.05,
                    }
                    for i in range(TASKS // 3)
                ]
                await service.create_tasks(payloads, LITE_ORG_ID)
            finally:
                await pool.close()

        async def ready() -> int:
            async with httpx.AsyncClient(timeout=3) as http:
                try:
                    return (await http.get(ready_url)).status_code
                except httpx.TransportError:
                    return 0

        # Two fast restarts while tasks flow.
        for i in range(2):
            before = (await counts())[0]
            await submit(f"r{i}")
            await wait_until(  # restart while the batch is being worked through
                lambda b=before: _done_at_least(counts, b + 20), 60, 0.05, "work under way"
            )
            restart_embedded(pgdata)
        # Five seconds down, with work queued before: many ticks of every loop fail meanwhile,
        # and completions are re-sent (within 0.6 of the lease) until the dispatcher answers.
        await submit("outage")
        stop_embedded(pgdata)
        down_since = time.monotonic()
        seen_unready = False
        while time.monotonic() - down_since < OUTAGE_SECONDS:
            seen_unready |= await ready() == 503
            await asyncio.sleep(0.5)  # the outage lasts five seconds; we watch it meanwhile
        restart_embedded(pgdata)  # starts it again with the options it ran with
        assert seen_unready, "/readyz kept saying ready while the database was down"

        async def all_done() -> bool:
            try:
                done, _failed, _dlq, _rows = await counts()
            except OSError:
                return False
            return done == TASKS // 3 * 3

        await wait_until(all_done, 240, 0.5, "every task completed")
        done, failed, dlq, _rows = await counts()
        assert (done, failed, dlq) == (TASKS // 3 * 3, 0, 0)
        await wait_until(
            lambda: _rows_are(counts, TASKS // 3 * 3 * ROWS), 60, 0.5, "every row inserted"
        )
        assert await ready() == 200  # the stack keeps serving
        assert up.poll() is None
    finally:
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        stop_embedded(pgdata)


async def _done_at_least(counts: object, n: int) -> bool:
    done, _failed, _dlq, _rows = await counts()  # type: ignore[operator]
    return bool(done >= n)


async def _rows_are(counts: object, expected: int) -> bool:
    _done, _failed, _dlq, rows = await counts()  # type: ignore[operator]
    return bool(rows == expected)
