"""Property-based API fuzzing (schemathesis) against a real dispatcher and query service: no
5xx, every response matches its documented schema. Requests carry a worker token and the
capability token of a really claimed task, so `/v1/task/*` bodies get past 401."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import WORKER_TOKEN, Proc, free_port, start_query_service
from tests.helpers import create_tasks
from trace_platform.config import Settings

CHECKS = [not_a_server_error, response_schema_conformance]
CALLS: list[str] = []
FUZZ = hsettings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def f_settings(settings: Settings) -> Settings:
    port = free_port()
    return settings.replace(query_port=port, query_url=f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
async def query_proc(
    f_settings: Settings, dispatcher: Proc, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    proc = await start_query_service(f_settings, tmp_path_factory.mktemp("fuzzlogs"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def capability(f_settings: Settings, dispatcher: Proc) -> str:
    (tid,) = await create_tasks(f_settings.state_database_url or "", 1, wake=False)
    async with httpx.AsyncClient(base_url=dispatcher.url or "", timeout=10) as http:
        r = await http.post(
            "/internal/task-claim",
            json={"task_id": str(tid)},
            headers={"X-Trace-Worker-Token": WORKER_TOKEN},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["capability_token"])


def _headers(token: str) -> dict[str, str]:
    return {"X-Trace-Worker-Token": WORKER_TOKEN, "X-Trace-Task-Capability": token}


def fuzz(base_url: str, token: str) -> list[str]:
    """Run every operation of the service's OpenAPI document; returns the operations run."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @FUZZ
        def run(case: Any) -> None:
            case.call_and_validate(headers=_headers(token), checks=CHECKS)
            CALLS.append(case.method)

        run()
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


async def test_dispatcher_api_never_fails_with_5xx(dispatcher: Proc, capability: str) -> None:
    ran = await asyncio.to_thread(fuzz, dispatcher.url or "", capability)
    assert {
        "POST /internal/task-claim",
        "POST /v1/task/complete",
        "POST /v1/task/heartbeat",
    } <= set(ran)


async def test_query_api_never_fails_with_5xx(query_proc: Proc, capability: str) -> None:
    ran = await asyncio.to_thread(fuzz, query_proc.url or "", capability)
    assert "POST /v1/task/query" in ran
    assert len(CALLS) > 100  # the fuzzer really sent requests
