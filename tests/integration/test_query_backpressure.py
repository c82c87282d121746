"""A saturated query service answers 429 with Retry-After instead of queueing without bound,
and a runaway query is interrupted at its time limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import (
    Proc,
    free_port,
    start_dispatcher,
    start_query_service,
    wait_until,
)
from tests.helpers import create_tasks
from tests.integration.test_query import Attempt, datasets, query  # noqa: F401 - shared fixtures
from trace_platform.config import Settings

RUNAWAY = (
    "SELECT count(*) FROM dataset a, dataset b, dataset c, dataset d"
    " WHERE a.value + b.value + c.value + d.value >= 0"
)


@pytest.fixture(scope="module")
def q_settings(settings: Settings) -> Settings:
    port = free_port()
    return settings.replace(
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
        query_executors=1,
        query_timeout_seconds=2.0,
    )


@pytest.fixture(scope="module")
async def services(
    q_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "dispatcher": await start_dispatcher(q_settings, logs),
        "query": await start_query_service(q_settings, logs),
    }
    yield procs
    for p in procs.values():
        p.stop()


async def test_saturated_service_answers_429_and_runaway_query_times_out(
    q_settings: Settings,
    services: dict[str, Proc],
    datasets: dict[str, Any],  # noqa: F811
) -> None:
    (tid,) = await create_tasks(
        q_settings.state_database_url or "",
        1,
        payload={"operator": "manual", "inputs": [{"dataset": "chain"}]},
        wake=False,
    )
    async with httpx.AsyncClient(base_url=services["dispatcher"].url or "", timeout=10) as http:
        a = await Attempt.claim(http, tid)
    slow = asyncio.create_task(query(q_settings, a, RUNAWAY, datasets["chain"]))

    async def executor_taken() -> bool:  # the runaway query holds the only executor
        async with httpx.AsyncClient(timeout=5) as c:
            text = (await c.get(f"{q_settings.query_url}/metrics")).text
        return "trace_query_executors 1.0" in text.splitlines()

    await wait_until(executor_taken, timeout=20, what="the runaway query to take the executor")
    busy = None
    for _ in range(200):
        await asyncio.sleep(0.01)
        r = await query(q_settings, a, "SELECT count(*) FROM dataset", datasets["chain"])
        if r.status_code == 429:
            busy = r
            break
    assert busy is not None, "the only executor was busy, yet no 429"
    assert busy.headers["Retry-After"] == "1" and busy.json()["error"] == "overloaded"
    done = await slow
    assert done.status_code == 400 and done.json()["reason"] == "query_timeout"
    ok = await query(q_settings, a, "SELECT count(*) FROM dataset", datasets["chain"])
    assert ok.status_code == 200  # the executor recovered
