"""Every `/internal/*` route of the dispatcher and of the query service wants the worker
token (SPEC §4): without it, with a wrong one or an empty one it answers 401 `unauthorized`
and changes nothing (every table of both databases and the object store read the same);
the same request with the token is served. The routes are read from each service's
OpenAPI document, so a new internal route without a row here fails the test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import WORKER_TOKEN, Proc, free_port, start_dispatcher, start_query_service
from tests.helpers import Attempt, create_tasks, everything
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ports import LITE_ORG_ID

WRONG = [{}, {"X-Trace-Worker-Token": "wrong-" + WORKER_TOKEN}, {"X-Trace-Worker-Token": ""}]


@pytest.fixture(scope="module")
def i_settings(settings: Settings) -> Settings:
    """Leases far longer than the module: no reaper writes while a refusal is checked."""
    port = free_port()
    return settings.replace(
        query_port=port, query_url=f"http://127.0.0.1:{port}", lease_seconds=600.0
    )


@pytest.fixture(scope="module")
async def services(
    i_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("internallogs")
    dispatcher = await start_dispatcher(i_settings, logs)
    query: Proc = await start_query_service(i_settings, logs)
    yield {"dispatcher": dispatcher.url or "", "query": query.url or ""}
    query.stop()
    dispatcher.stop()


@dataclass
class Targets:
    """What the routes act on: queued tasks (one per route that would change one), a task
    claimed with the right token, the org's dataset."""

    queued: dict[str, str]
    running: Attempt


@pytest.fixture(scope="module")
async def targets(
    i_settings: Settings, services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Targets]:
    dsn = i_settings.state_database_url or ""
    pool = await create_pool(dsn, max_size=1)
    path = tmp_path_factory.mktemp("internalds") / "numbers.parquet"
    pq.write_table(pa.table({"n": list(range(10))}), path)
    await register_dataset(
        pool, object_store_from_settings(i_settings), "numbers", [path], LITE_ORG_ID
    )
    await pool.close()
    ids = await create_tasks(dsn, 5, wake=False)  # no wake-up: nothing else claims them
    queued = dict(zip(("claim", "batch", "fetch", "cancel"), map(str, ids), strict=False))
    async with httpx.AsyncClient(base_url=services["dispatcher"], timeout=10) as http:
        yield Targets(queued, await Attempt.claim(http, ids[4]))


def _none(_t: Targets) -> Any:
    return None


@dataclass(frozen=True)
class Route:
    """An internal route and a request it would serve (its body and query string, made
    for the targets), so that a refusal is the token's doing alone."""

    service: str
    method: str
    path: str
    body: Callable[[Targets], Any] = _none
    query: Callable[[Targets], str] = lambda _t: ""


def endpoint_report(_t: Targets) -> dict[str, Any]:
    counts = ("concurrency", "requests", "throttled", "errors", "ranges", "blocks")
    view = {"endpoint": "a", "role": "any", "weight": 1, "state": "healthy"}
    view |= dict.fromkeys(counts, 0)
    return {"process": "internal", "endpoints": [{"pool": "main", "endpoint": "a", "view": view}]}


def complete_batch(t: Targets) -> dict[str, Any]:
    item = {**t.running.fence(), "outcome": "success", "capability_token": t.running.token}
    return {"items": [item]}


def user_query(_t: Targets) -> dict[str, Any]:
    user = str(uuid.uuid4())
    return {"org_id": str(LITE_ORG_ID), "user_id": user, "sql": "SELECT count(*) FROM numbers"}


D, Q = "dispatcher", "query"
ROUTES = [
    Route(D, "POST", "/internal/task-claim", lambda t: {"task_id": t.queued["claim"]}),
    Route(D, "POST", "/internal/task-claim-batch", lambda t: {"task_ids": [t.queued["batch"]]}),
    Route(D, "GET", "/internal/task-fetch", query=lambda t: f"?task_id={t.queued['fetch']}"),
    Route(D, "POST", "/internal/task-complete-batch", complete_batch),
    Route(D, "POST", "/internal/task-cancel", lambda t: {"task_id": t.queued["cancel"]}),
    Route(D, "POST", "/internal/rpc-endpoints", endpoint_report),
    Route(D, "GET", "/internal/jwks/task"),
    Route(Q, "POST", "/internal/user-query", user_query),
    Route(Q, "POST", "/internal/relations", lambda t: {"org_id": str(LITE_ORG_ID)}),
    Route(Q, "POST", "/internal/query-runs", lambda t: {**user_query(t), "format": "csv"}),
]


async def send(
    base: str, route: Route, targets: Targets, headers: dict[str, str]
) -> httpx.Response:
    url = route.path + route.query(targets)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        return await http.request(route.method, url, json=route.body(targets), headers=headers)


async def test_the_table_covers_every_internal_route(services: dict[str, str]) -> None:
    for service, base in services.items():
        doc = httpx.get(f"{base}/openapi.json").json()
        internal = {
            (method.upper(), path)
            for path, item in doc["paths"].items()
            if path.startswith("/internal/")
            for method in item
        }
        rows = {(r.method, r.path) for r in ROUTES if r.service == service}
        assert internal == rows, (service, internal ^ rows)


async def test_every_internal_route_refuses_a_missing_or_wrong_worker_token(
    i_settings: Settings, services: dict[str, str], targets: Targets
) -> None:
    for route in ROUTES:
        for headers in WRONG:
            before = await everything(i_settings)
            r = await send(services[route.service], route, targets, headers)
            after = await everything(i_settings)
            assert r.status_code == 401, (route.path, headers, r.text)
            assert r.json() == {
                "error": "unauthorized",
                "detail": "missing or invalid worker token",
            }
            assert WORKER_TOKEN not in r.text
            changed = sorted(
                k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            )
            assert changed == [], (route.path, headers, changed)


async def test_the_same_requests_with_the_worker_token_are_served(
    services: dict[str, str], targets: Targets
) -> None:
    for route in ROUTES:
        headers = {"X-Trace-Worker-Token": WORKER_TOKEN}
        r = await send(services[route.service], route, targets, headers)
        assert r.status_code == 200, (route.path, r.text)
