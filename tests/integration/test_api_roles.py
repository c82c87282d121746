"""Who may call which `/v1` route (SPEC §13, invariant 14), against a real `trace api`, a real
query service and a real Postgres.

The role table below has one row per operation of the user API: the test reads the
operations from the running API's OpenAPI document and fails when one has no row (or a row
names an operation that is gone). Each row is called with a reader's, a writer's and an
admin's key, on a target made for that call: an allowed call answers the route's real
success status and a write changes something (a read nothing); a refused one answers 403
naming the role it needs and changes nothing — every table of both databases and the
object store read the same before and after."""

from __future__ import annotations

import base64
import io
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import api_settings, api_stack, wait_until
from tests.delivery_helpers import define_alert
from tests.helpers import env_of, everything
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

ROLES = ("reader", "writer", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
CHAIN_SPEC = (
    "kind: chain_sync\nname: {name}\nchain_id: 1\nrpc_pool: nowhere\n"
    "mode: {{kind: fixed_target, to_block: 100}}\n"
    "streams:\n  blocks: {{cryo_dataset: blocks, chunk_size: 10}}\n"
)
DAG_SPEC = (
    "kind: dag\nname: {name}\njobs:\n"
    "  heights: {{inputs: [{{chain: {chain}}}], sql: SELECT block_number FROM blocks}}\n"
)


@pytest.fixture(scope="module")
def r_settings(settings: Settings) -> Settings:
    return api_settings(settings)


@pytest.fixture(scope="module")
async def pool(r_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(r_settings.state_database_url or "", max_size=2)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def api(r_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """`trace api` and the query service only: no loop of another process writes to the
    databases while a refused call is checked for changing nothing."""
    logs = tmp_path_factory.mktemp("rolelogs")
    async with api_stack(r_settings, logs) as stack:
        yield stack.url


@dataclass
class Scene:
    """What the role table's targets are made with: a setup key, the databases, the store."""

    http: httpx.AsyncClient
    pool: asyncpg.Pool
    data: asyncpg.Connection
    settings: Settings
    setup_key: str
    made: dict[str, int] = field(default_factory=dict)

    def fresh(self, what: str) -> str:
        self.made[what] = self.made.get(what, 0) + 1
        return f"{what}-{self.made[what]}"

    async def setup(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await self.http.request(method, path, headers=bearer(self.setup_key), **kw)
        assert r.status_code in (200, 201), (path, r.text)
        return r

    async def task(self) -> str:
        r = await self.setup("POST", "/v1/tasks", json={"payload": {"operator": "noop"}})
        return str(r.json()["task_ids"][0])

    async def spec(self) -> str:
        name = self.fresh("role-chain")
        await self.setup("POST", "/v1/specs", content=CHAIN_SPEC.format(name=name))
        return name

    async def dag(self) -> str:
        """A DAG over a fresh chain job (applied only: nothing runs it here)."""
        chain, name = await self.spec(), self.fresh("role-dag")
        await self.setup("POST", "/v1/specs", content=DAG_SPEC.format(name=name, chain=chain))
        return name

    async def user(self) -> str:
        name = self.fresh("role-user")
        await self.setup("POST", "/v1/users", json={"name": name, "role": "reader"})
        return name

    async def failed_delivery(self) -> str:
        """A failed webhook delivery of the table's alert (as the delivery process leaves
        one after its last attempt)."""
        alert_id = await define_alert(self.pool, LITE_ORG_ID, "role-alert", [])
        key, delivery = self.fresh("role-event"), uuid.uuid4()
        await self.data.execute(
            "INSERT INTO data.alert_events (dedupe_key, org_id, alert_definition_id,"
            " event_time, block_number) VALUES ($1, $2, $3, now(), 7)",
            key,
            LITE_ORG_ID,
            alert_id,
        )
        await self.data.execute(
            "INSERT INTO data.alert_deliveries (delivery_id, org_id, dedupe_key,"
            " alert_definition_id, channel, status, attempts, max_attempts)"
            " VALUES ($1, $2, $3, $4, 0, 'failed', 12, 12)",
            delivery,
            LITE_ORG_ID,
            key,
            alert_id,
        )
        return str(delivery)

    async def dead_letter(self) -> str:
        """A dead-lettered batch of the org, as the sink leaves one."""
        message = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO state.queue_messages (message_id, queue_name, payload)"
            " VALUES ($1, 'buffer_queue_dlq', $2)",
            message,
            {
                "error": "bad line 1",
                "deliveries": 3,
                "original": {
                    "org_id": str(LITE_ORG_ID),
                    "record_count": 1,
                    "batch_uri": "file:///nowhere/b.jsonl",
                    "producer": {"task_id": str(uuid.uuid4()), "attempt": 1},
                },
            },
        )
        return str(message)

    async def saved(self) -> str:
        """A saved query of the org, with a typed parameter."""
        name = self.fresh("role-saved")
        await self.setup("POST", "/v1/saved-queries", json={"name": name, "sql": SAVED_SQL})
        return name

    def bundle(self) -> dict[str, str]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            tag = self.fresh("bundle")
            zf.writestr("handler.py", f"# {tag}\ndef main(event, context):\n    return []\n")
        return {
            "language": "python",
            "entrypoint": "handler.main",
            "zip_base64": base64.b64encode(buf.getvalue()).decode(),
        }


Request = tuple[str, Any]  # (path, JSON body | YAML text | None)


@dataclass(frozen=True)
class Row:
    method: str
    route: str  # as the OpenAPI document names it
    role: str  # the least role that may call it
    status: int  # its success status
    target: Callable[[Scene], Awaitable[Request]]
    # awaited after the call, before the after-digest: work the call started in the
    # background (a query run) is done, and nothing writes behind the next row's back
    settle: Callable[[Scene, httpx.Response], Awaitable[None]] | None = None


async def plain(path: str, body: Any = None) -> Request:
    return path, body


def at(path: str, body: Any = None) -> Callable[[Scene], Awaitable[Request]]:
    return lambda _s: plain(path, body)


async def _task(s: Scene, suffix: str = "") -> Request:
    return f"/v1/tasks/{await s.task()}{suffix}", None


async def _spec(s: Scene) -> Request:
    return f"/v1/specs/chain_sync/{await s.spec()}", None


async def _chain(s: Scene, suffix: str = "") -> Request:
    return f"/v1/chains/{await s.spec()}{suffix}", None


async def _dag(s: Scene, suffix: str = "") -> Request:
    return f"/v1/dags/{await s.dag()}{suffix}", None


async def _dag_kept(s: Scene, suffix: str) -> Request:
    """A fresh DAG with a second, kept generation holding the same rows: a rollback makes
    generation 1 current again, a purge of generation 2 deletes no row of generation 1."""
    name = await s.dag()
    dag_id = await s.pool.fetchval("SELECT dag_id FROM state.dags WHERE name = $1", name)
    await s.pool.execute(
        "INSERT INTO state.dag_generations (dag_id, generation, state, spec, sha256, jobs)"
        " SELECT dag_id, 2, 'retired', spec, sha256, jobs FROM state.dag_generations"
        " WHERE dag_id = $1 AND generation = 1",
        dag_id,
    )
    if suffix == "/rollback":
        await s.pool.execute(
            "UPDATE state.dag_generations SET state = CASE generation WHEN 1 THEN 'retired'"
            " ELSE 'current' END WHERE dag_id = $1",
            dag_id,
        )
        await s.pool.execute("UPDATE state.dags SET generation = 2 WHERE dag_id = $1", dag_id)
    return f"/v1/dags/{name}{suffix}", None


async def _alert(s: Scene, suffix: str = "") -> Request:
    await define_alert(s.pool, LITE_ORG_ID, "role-alert", [])
    return f"/v1/alerts/role-alert{suffix}", None


async def _apply(s: Scene) -> Request:
    return "/v1/specs", CHAIN_SPEC.format(name=s.fresh("role-applied"))


async def _bundle(s: Scene) -> Request:
    return "/v1/bundles", s.bundle()


async def _retry(s: Scene) -> Request:
    return f"/v1/deliveries/{await s.failed_delivery()}/retry", None


async def _redrive(s: Scene) -> Request:
    return "/v1/dlq/redrive", {"message_ids": [await s.dead_letter()]}


async def _new_user(s: Scene) -> Request:
    return "/v1/users", {"name": s.fresh("role-new"), "role": "reader"}


async def _revoke(s: Scene) -> Request:
    return f"/v1/users/{await s.user()}/revoke", None


async def _saved(s: Scene, suffix: str = "", body: Any = None) -> Request:
    return f"/v1/saved-queries/{await s.saved()}{suffix}", body


async def _new_saved(s: Scene) -> Request:
    return "/v1/saved-queries", {"name": s.fresh("role-new-saved"), "sql": SAVED_SQL}


async def _run_ended(s: Scene, run_id: str) -> None:
    async def ended() -> bool:
        r = await s.http.get(f"/v1/query-runs/{run_id}", headers=bearer(s.setup_key))
        return bool(r.json()["status"] in ("succeeded", "failed", "canceled"))

    await wait_until(ended, timeout=60, interval=0.05, what="the query run to end")


async def _settle_run(s: Scene, r: httpx.Response) -> None:
    if r.status_code == 202:
        await _run_ended(s, r.json()["run_id"])


async def _query_run(s: Scene, sql: str, ended: bool) -> Request:
    """A query run of the org (ended, or still going when `sql` is slow)."""
    body = {"dataset": "numbers", "sql": sql}
    r = await s.http.post("/v1/query-runs", json=body, headers=bearer(s.setup_key))
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    if ended:
        await _run_ended(s, run_id)
    return f"/v1/query-runs/{run_id}", None


# ten rows joined with themselves ten times: a run that is still going when it is canceled
SLOW_RUN = "SELECT sum(" + " + ".join(f"t{i}.n" for i in range(10)) + ") AS s FROM "
SLOW_RUN += ", ".join(f"numbers t{i}" for i in range(10))
QUERY = {"dataset": "numbers", "sql": "SELECT count(*) FROM dataset"}
SAVED_SQL = "SELECT count(*) FROM numbers WHERE n >= {{ low: BIGINT = 3 }}"
TABLE = [
    Row("GET", "/v1/me", "reader", 200, at("/v1/me")),
    Row("GET", "/v1/status", "reader", 200, at("/v1/status")),
    Row("GET", "/v1/tasks", "reader", 200, at("/v1/tasks")),
    Row("POST", "/v1/tasks", "writer", 201, at("/v1/tasks", {"payload": {"operator": "noop"}})),
    Row("GET", "/v1/tasks/{task_id}", "reader", 200, _task),
    Row("POST", "/v1/tasks/{task_id}/cancel", "admin", 200, lambda s: _task(s, "/cancel")),
    Row("GET", "/v1/datasets", "reader", 200, at("/v1/datasets")),
    Row("GET", "/v1/datasets/{name}", "reader", 200, at("/v1/datasets/numbers")),
    Row("POST", "/v1/query", "reader", 200, at("/v1/query", QUERY)),
    Row("GET", "/v1/relations", "reader", 200, at("/v1/relations")),
    Row("POST", "/v1/query-runs", "reader", 202, at("/v1/query-runs", QUERY), _settle_run),
    Row("GET", "/v1/query-runs", "reader", 200, at("/v1/query-runs")),
    Row(
        "GET", "/v1/query-runs/{run_id}", "reader", 200, lambda s: _query_run(s, QUERY["sql"], True)
    ),
    Row(
        "DELETE", "/v1/query-runs/{run_id}", "reader", 200, lambda s: _query_run(s, SLOW_RUN, False)
    ),
    Row("GET", "/v1/saved-queries", "reader", 200, at("/v1/saved-queries")),
    Row("POST", "/v1/saved-queries", "writer", 201, _new_saved),
    Row("GET", "/v1/saved-queries/{name}", "reader", 200, _saved),
    Row(
        "PUT",
        "/v1/saved-queries/{name}",
        "writer",
        200,
        lambda s: _saved(s, "", {"sql": "SELECT n FROM numbers", "description": "all"}),
    ),
    Row("DELETE", "/v1/saved-queries/{name}", "writer", 200, _saved),
    Row(
        "POST",
        "/v1/saved-queries/{name}/run",
        "reader",
        200,
        lambda s: _saved(s, "/run", {"params": {"low": "5"}}),
    ),
    Row(
        "POST",
        "/v1/saved-queries/{name}/runs",
        "reader",
        202,
        lambda s: _saved(s, "/runs", {"params": {"low": "5"}, "format": "csv"}),
        _settle_run,
    ),
    Row("GET", "/v1/bundles", "reader", 200, at("/v1/bundles")),
    Row("POST", "/v1/bundles", "writer", 201, _bundle),
    Row("GET", "/v1/specs", "reader", 200, at("/v1/specs")),
    Row("POST", "/v1/specs", "writer", 200, _apply),
    Row("GET", "/v1/specs/{kind}/{name}", "reader", 200, _spec),
    Row("DELETE", "/v1/specs/{kind}/{name}", "writer", 200, _spec),
    Row("GET", "/v1/chains", "reader", 200, at("/v1/chains")),
    Row("GET", "/v1/chains/{name}", "reader", 200, _chain),
    Row("POST", "/v1/chains/{name}/{action}", "writer", 200, lambda s: _chain(s, "/pause")),
    Row("GET", "/v1/dags", "reader", 200, at("/v1/dags")),
    Row("GET", "/v1/dags/{name}", "reader", 200, _dag),
    Row("POST", "/v1/dags/{name}/{action}", "writer", 200, lambda s: _dag(s, "/pause")),
    Row("DELETE", "/v1/dags/{name}", "writer", 200, _dag),
    Row("POST", "/v1/dags/{name}/rollback", "writer", 200, lambda s: _dag_kept(s, "/rollback")),
    Row(
        "DELETE",
        "/v1/dags/{name}/generations/{generation}",
        "writer",
        200,
        lambda s: _dag_kept(s, "/generations/2"),
    ),
    Row("GET", "/v1/alerts", "reader", 200, at("/v1/alerts")),
    Row("GET", "/v1/alerts/{name}", "reader", 200, _alert),
    Row("GET", "/v1/alerts/{name}/events", "reader", 200, lambda s: _alert(s, "/events")),
    Row("GET", "/v1/alerts/{name}/deliveries", "reader", 200, lambda s: _alert(s, "/deliveries")),
    Row("POST", "/v1/deliveries/{delivery_id}/retry", "writer", 200, _retry),
    Row("GET", "/v1/dlq", "reader", 200, at("/v1/dlq")),
    Row("POST", "/v1/dlq/redrive", "admin", 200, _redrive),
    Row("GET", "/v1/users", "admin", 200, at("/v1/users")),
    Row("POST", "/v1/users", "admin", 201, _new_user),
    Row("POST", "/v1/users/{name}/revoke", "admin", 200, _revoke),
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
async def scene(
    api: str, r_settings: Settings, pool: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Scene, dict[str, str]]]:
    path = tmp_path_factory.mktemp("roleds") / "numbers.parquet"
    pq.write_table(pa.table({"n": list(range(10))}), path)
    await register_dataset(
        pool, object_store_from_settings(r_settings), "numbers", [path], LITE_ORG_ID
    )
    keys = {}
    for role in (*ROLES, "setup"):
        made = await create_user(
            env_of(pool), LITE_ORG_ID, f"table-{role}", "admin" if role == "setup" else role
        )
        keys[role] = made.api_key
    data = await asyncpg.connect(r_settings.data_database_url)
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        yield Scene(http, pool, data, r_settings, keys["setup"]), keys
    await data.close()


async def test_the_role_table_covers_every_v1_operation(api: str) -> None:
    doc = httpx.get(f"{api}/openapi.json").json()
    operations = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        if path.startswith("/v1/")
        for method in item
    }
    rows = [(row.method, row.route) for row in TABLE]
    assert len(rows) == len(set(rows)), "a row appears twice"
    assert operations - set(rows) == set(), "operations of the API without a row in TABLE"
    assert set(rows) - operations == set(), "rows of TABLE the API no longer has"


@pytest.mark.parametrize("row", TABLE, ids=lambda r: f"{r.method} {r.route}")
async def test_each_role_can_do_exactly_what_its_row_allows(
    scene: tuple[Scene, dict[str, str]], row: Row
) -> None:
    s, keys = scene
    for role in ROLES:
        path, body = await row.target(s)
        send: dict[str, Any] = {"content": body} if isinstance(body, str) else {"json": body}
        before = await everything(s.settings)
        r = await s.http.request(row.method, path, headers=bearer(keys[role]), **send)
        if row.settle is not None:
            await row.settle(s, r)
        after = await everything(s.settings)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if RANK[role] >= RANK[row.role]:
            assert r.status_code == row.status, (role, path, r.text)
            # a read changes nothing; a write (and a query: its audit row) changes something
            assert bool(changed) == (row.method != "GET"), (role, path, changed)
            continue
        assert r.status_code == 403, (role, path, r.text)
        assert r.json() == {
            "error": "forbidden",
            "detail": f"this needs the {row.role} role (you are {role})",
        }
        assert changed == [], (role, path, changed)
