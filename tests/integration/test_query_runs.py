"""Query runs (SPEC §21, invariants 23-24) against a real `trace api`, a real query service
and a real Postgres: a run's result, downloaded through its short-lived URL, equals the
`POST /v1/query` answer in every format; a run is canceled on request (its executor killed),
invisible to another org, idempotent on its key; its URL refuses tampering and expiry and its
result is collected; it survives the API restarting and fails with a reason when its query
service is killed; `query_runs` rows and the logs never hold its SQL; the gate refuses
through a run what it refuses through `/v1/query`."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import asyncpg
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    Proc,
    free_port,
    proc_env,
    start_query_service,
    wait_http_ready,
    wait_until,
)
from tests.helpers import env_of, run_trace
from tests.integration.test_query import ATTACKS, ENGINE_ERRORS
from tests.integration.test_query_formats import FORMATS, SQL, T0, rows_of
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID
from trace_platform.sdk import QueryResult

OTHER_ORG = uuid.UUID("00000000-0000-4000-8000-0000000000b2")
FINAL = ("succeeded", "failed", "canceled")
# ten rows joined with themselves ten times: 10^10 rows, minutes of work for one executor
SLOW_SQL = "SELECT sum(" + " + ".join(f"t{i}.n * {i + 1}" for i in range(10)) + ") AS s FROM "
SLOW_SQL += ", ".join(f"ten t{i}" for i in range(10))
# the same over 10^8 rows: a second or so
MEDIUM_SQL = "SELECT sum(" + " + ".join(f"t{i}.n" for i in range(8)) + ") AS s FROM "
MEDIUM_SQL += ", ".join(f"ten t{i}" for i in range(8))
MARKER = "quagga-marker-7731"  # a piece of SQL no row or log line may hold


@pytest.fixture(scope="module")
def r_settings(settings: Settings) -> Settings:
    port = free_port()
    return settings.replace(
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
        api_port=free_port(),
        api_rate_per_second=1000.0,
        api_rate_burst=1000,
        query_run_timeout=120.0,  # a broken cancel would burn at most this long
    )


@pytest.fixture(scope="module")
async def pool(r_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(r_settings.state_database_url or "", max_size=4)
    yield p
    await p.close()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runlogs")


class Stack:
    """The API and the query service of the test, each restartable."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        self.api: Proc | None = None
        self.query: Proc | None = None
        self.url = f"http://127.0.0.1:{settings.api_port}"

    async def start_api(self) -> None:
        self.api = Proc(["api"], proc_env(self.settings), self.logs / "api.log").start()
        await wait_http_ready(self.url, self.api)

    async def start_query(self, **changes: Any) -> None:
        self.query = await start_query_service(self.settings.replace(**changes), self.logs)

    def stop(self) -> None:
        for proc in (self.api, self.query):
            if proc is not None:
                proc.stop()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))


@pytest.fixture(scope="module")
async def stack(r_settings: Settings, logs: Path) -> AsyncIterator[Stack]:
    s = Stack(r_settings, logs)
    await s.start_query()
    await s.start_api()
    yield s
    s.stop()


@pytest.fixture(scope="module")
async def keys(pool: asyncpg.Pool, stack: Stack) -> dict[str, str]:
    env = env_of(pool)
    return {
        "reader": (await create_user(env, LITE_ORG_ID, "runs-reader", "reader")).api_key,
        "other": (await create_user(env, OTHER_ORG, "runs-other", "admin")).api_key,
    }


@pytest.fixture(scope="module")
async def datasets(r_settings: Settings, pool: asyncpg.Pool, tmp_path_factory: Any) -> None:
    root = tmp_path_factory.mktemp("runds")
    typed = pa.table(
        {
            "n": pa.array(range(5), pa.int64()),
            "label": [f'row "{i}", ok' for i in range(5)],
            "ts": pa.array([T0.replace(minute=i) for i in range(5)], pa.timestamp("us", "UTC")),
            "tags": pa.array([list(range(i)) for i in range(5)], pa.list_(pa.int64())),
            "s": [{"n": i, "label": f'row "{i}", ok'} for i in range(5)],
        }
    )
    pq.write_table(typed, root / "typed.parquet")
    pq.write_table(pa.table({"n": pa.array(range(10), pa.int64())}), root / "ten.parquet")
    store = object_store_from_settings(r_settings)
    await register_dataset(pool, store, "typed", [root / "typed.parquet"], LITE_ORG_ID)
    await register_dataset(pool, store, "ten", [root / "ten.parquet"], LITE_ORG_ID)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(http: httpx.AsyncClient, key: str, **body: Any) -> str:
    r = await http.post("/v1/query-runs", json=body, headers=bearer(key))
    assert r.status_code == 202, r.text
    return str(r.json()["run_id"])


async def run_of(http: httpx.AsyncClient, key: str, run_id: str) -> dict[str, Any]:
    r = await http.get(f"/v1/query-runs/{run_id}", headers=bearer(key))
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def wait_status(
    http: httpx.AsyncClient, key: str, run_id: str, wanted: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        doc = await run_of(http, key, run_id)
        return doc if doc["status"] in wanted else None

    found: dict[str, Any] = await wait_until(
        reached, timeout=timeout, interval=0.1, what=f"run {wanted}"
    )
    return found


def executor_pids(root_pid: int) -> set[int]:
    """The query service's descendants running the DuckDB engine."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"engine.py" in cmd:
                found.add(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


async def busy_executors(root_pid: int) -> set[int]:
    """The executors of the query service using CPU (a query in flight) over a short look."""
    pids = executor_pids(root_pid)
    before = {p: cpu_ticks(p) for p in pids}
    await asyncio.sleep(0.3)  # a measuring window, not a wait for an event
    return {p for p in pids if cpu_ticks(p) > before[p]}


async def test_a_runs_result_through_its_url_equals_the_query_answer_in_every_format(
    stack: Stack, keys: dict[str, str], datasets: None, pool: asyncpg.Pool
) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        for fmt in FORMATS:
            direct = await http.post(
                "/v1/query",
                json={"dataset": "typed", "sql": SQL, "format": fmt},
                headers=bearer(keys["reader"]),
            )
            assert direct.status_code == 200, direct.text
            run_id = await submit(http, keys["reader"], dataset="typed", sql=SQL, format=fmt)
            done = await wait_status(http, keys["reader"], run_id, FINAL)
            assert done["status"] == "succeeded", done
            assert done["rows"] == 5 and done["format"] == fmt and done["truncated"] is False
            assert done["url"] and "sql" not in done
            got = await http.get(done["url"])  # no key: the signed URL is the credential
            assert got.status_code == 200, got.text
            assert rows_of(fmt, got.content) == rows_of(fmt, direct.content), fmt
            assert len(got.content) == done["bytes"]
            row = await pool.fetchrow(
                "SELECT org_id, output_uri FROM state.query_runs WHERE run_id = $1",
                uuid.UUID(run_id),
            )
            assert row["org_id"] == LITE_ORG_ID
            assert f"/results/{LITE_ORG_ID}/{run_id}/" in row["output_uri"]
        listed = await http.get("/v1/query-runs", headers=bearer(keys["reader"]))
        assert listed.status_code == 200
        runs = listed.json()["runs"]
        cut = await submit(http, keys["reader"], dataset="typed", sql=SQL, format="csv", limit=2)
        short = await wait_status(http, keys["reader"], cut, FINAL)
        assert (short["rows"], short["truncated"]) == (2, True)
        assert len(rows_of("csv", (await http.get(short["url"])).content)) == 2
        assert [r["format"] for r in runs[:4]] == FORMATS[::-1]  # newest first
        assert all(r["status"] == "succeeded" and r["rows"] == 5 for r in runs[:4])
        assert not any("sql" in r for r in runs)


def memory(pid: int) -> dict[str, int]:
    """A process's resident set now (VmRSS) and at its peak so far (VmHWM), in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


async def test_a_large_result_streams_to_the_store_in_bounded_memory(
    stack: Stack, keys: dict[str, str], datasets: None
) -> None:
    """2,000,000 rows as a 112 MB Arrow stream: the query service's peak resident set (its
    high-water mark, not a sample) stays within 48 MiB of its size before the run (it held
    the whole answer before streaming); the API never touches the result."""
    assert stack.query is not None and stack.query.popen is not None and stack.api is not None
    cols = ", ".join(f"t{i}.n AS c{i}" for i in range(6))
    sql = f"SELECT {cols}, t0.n * 1000000 + t1.n AS g FROM "
    sql += ", ".join(f"ten t{i}" for i in range(7)) + " WHERE t6.n < 2"
    query_pid, api_pid = stack.query.popen.pid, stack.api.popen.pid
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        warm = await submit(http, keys["reader"], sql="SELECT n FROM ten", format="arrow")
        await wait_status(http, keys["reader"], warm, FINAL)
        before, api_before = memory(query_pid), memory(api_pid)
        run_id = await submit(http, keys["reader"], sql=sql, format="arrow")
        done = await wait_status(http, keys["reader"], run_id, FINAL)
    assert done["status"] == "succeeded" and done["rows"] == 2_000_000, done
    assert done["bytes"] > 100 * 2**20 and done["truncated"] is False
    grown = memory(query_pid)["VmHWM"] - before["VmRSS"]
    print(  # the README's figure: pytest -s -k bounded_memory
        f"\n2M-row Arrow run: {done['bytes'] / 2**20:.0f} MiB in {done['duration_ms']} ms;"
        f" query service peak RSS {grown / 2**20:+.1f} MiB over {before['VmRSS'] / 2**20:.0f} MiB"
    )
    assert grown < 48 * 2**20, f"query service peak grew {grown / 2**20:.1f} MiB"
    assert memory(api_pid)["VmHWM"] - api_before["VmRSS"] < 8 * 2**20  # it never held it


async def test_the_same_idempotency_key_gives_the_same_run_and_other_sql_a_409(
    stack: Stack, keys: dict[str, str], datasets: None
) -> None:
    key = f"k-{uuid.uuid4()}"
    body = {"dataset": "typed", "sql": SQL, "format": "csv", "idempotency_key": key}
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        first = await http.post("/v1/query-runs", json=body, headers=bearer(keys["reader"]))
        again = await http.post("/v1/query-runs", json=body, headers=bearer(keys["reader"]))
        assert first.status_code == again.status_code == 202
        assert first.json()["created"] is True and again.json()["created"] is False
        assert again.json()["run_id"] == first.json()["run_id"]
        other = await http.post(
            "/v1/query-runs",
            json=body | {"sql": SQL + " LIMIT 2"},
            headers=bearer(keys["reader"]),
        )
        assert (other.status_code, other.json()["error"]) == (409, "idempotency_conflict")
        await wait_status(http, keys["reader"], first.json()["run_id"], FINAL)


async def test_a_running_run_is_canceled_and_its_executor_killed(
    stack: Stack, keys: dict[str, str], datasets: None, pool: asyncpg.Pool
) -> None:
    assert stack.query is not None and stack.query.popen is not None
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        run_id = await submit(http, keys["reader"], sql=SLOW_SQL, format="arrow")
        await wait_status(http, keys["reader"], run_id, ("running",))
        busy = await wait_until(
            lambda: busy_executors(stack.query.popen.pid),  # type: ignore[union-attr]
            what="the run's executor at work",
        )
        r = await http.delete(f"/v1/query-runs/{run_id}", headers=bearer(keys["reader"]))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "canceled" and r.json()["url"] is None
        # the query is interrupted: its executor process goes away
        await wait_until(lambda: not any(alive(p) for p in busy), timeout=15, what="kill")
        again = await http.delete(f"/v1/query-runs/{run_id}", headers=bearer(keys["reader"]))
        assert (again.status_code, again.json()["error"]) == (409, "run_finished")
        done = await run_of(http, keys["reader"], run_id)
        assert done["status"] == "canceled" and done["error_code"] == "canceled"
        # and nothing lands later: no result object, no audit of a query that never ended
        row = await pool.fetchrow(
            "SELECT status, output_uri FROM state.query_runs WHERE run_id = $1", uuid.UUID(run_id)
        )
        assert (row["status"], row["output_uri"]) == ("canceled", None)


async def test_runs_past_the_run_slots_wait_queued_and_leave_an_executor_to_queries(
    stack: Stack, keys: dict[str, str], datasets: None, pool: asyncpg.Pool
) -> None:
    """Two executors: one run at a time (the other executor stays for interactive queries);
    the next runs are queued, and a queued run cancels without ever starting."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        slow = await submit(http, keys["reader"], sql=SLOW_SQL, format="csv")
        await wait_status(http, keys["reader"], slow, ("running",))
        waiting = await submit(http, keys["reader"], dataset="typed", sql=SQL, format="json")
        dropped = await submit(http, keys["reader"], dataset="typed", sql=SQL, format="csv")
        assert (await run_of(http, keys["reader"], waiting))["status"] == "queued"
        r = await http.delete(f"/v1/query-runs/{dropped}", headers=bearer(keys["reader"]))
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        direct = await http.post(
            "/v1/query", json={"dataset": "typed", "sql": SQL}, headers=bearer(keys["reader"])
        )
        assert direct.status_code == 200, direct.text  # while the slow run holds its executor
        assert (await run_of(http, keys["reader"], waiting))["status"] == "queued"
        r = await http.delete(f"/v1/query-runs/{slow}", headers=bearer(keys["reader"]))
        assert r.status_code == 200
        done = await wait_status(http, keys["reader"], waiting, FINAL)
        assert done["status"] == "succeeded" and done["rows"] == 5
        never = await pool.fetchrow(
            "SELECT status, started_at FROM state.query_runs WHERE run_id = $1",
            uuid.UUID(dropped),
        )
        assert (never["status"], never["started_at"]) == ("canceled", None)


async def test_another_orgs_run_and_its_url_are_out_of_reach(
    stack: Stack, keys: dict[str, str], datasets: None
) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        run_id = await submit(http, keys["reader"], dataset="typed", sql=SQL, format="parquet")
        done = await wait_status(http, keys["reader"], run_id, FINAL)
        other = bearer(keys["other"])
        for method in ("GET", "DELETE"):
            r = await http.request(method, f"/v1/query-runs/{run_id}", headers=other)
            assert (r.status_code, r.json()["error"]) == (404, "not_found"), method
        listed = (await http.get("/v1/query-runs", headers=other)).json()["runs"]
        assert run_id not in {r["run_id"] for r in listed}
        # its own run's signature does not open this one (nor another org's name on it)
        mine = await submit(http, keys["other"], sql="SELECT 1 AS one", format="csv")
        own = await wait_status(http, keys["other"], mine, FINAL)
        assert own["status"] == "succeeded", own
        parts = urlsplit(own["url"])
        forged = f"{stack.url}/query-results/{run_id}?{parts.query}"
        assert (await http.get(forged)).status_code == 403
        q = parse_qs(urlsplit(done["url"]).query)
        moved = {"org": str(OTHER_ORG), "exp": q["exp"][0], "sig": q["sig"][0]}
        assert (
            await http.get(f"{urlsplit(done['url']).path}?{urlencode(moved)}")
        ).status_code == 403


async def test_a_tampered_url_is_refused(
    stack: Stack, keys: dict[str, str], datasets: None
) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        run_id = await submit(http, keys["reader"], dataset="typed", sql=SQL, format="json")
        done = await wait_status(http, keys["reader"], run_id, FINAL)
        url = urlsplit(done["url"])
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert (await http.get(done["url"])).status_code == 200
        flipped = q["sig"][:-1] + ("A" if q["sig"][-1] != "A" else "B")
        for changed in (
            q | {"sig": flipped},
            q | {"exp": str(int(q["exp"]) + 3600)},
            {"org": q["org"], "exp": q["exp"]},
            {},
        ):
            r = await http.get(f"{url.path}?{urlencode(changed)}")
            assert (r.status_code, r.json()["error"]) == (403, "forbidden"), changed
            assert "\n" not in r.json()["detail"]
        other_run = f"/query-results/{uuid.uuid4()}?{url.query}"
        assert (await http.get(other_run)).status_code == 403


async def test_an_expired_result_is_refused_and_collected(
    stack: Stack, keys: dict[str, str], datasets: None, pool: asyncpg.Pool
) -> None:
    """A query service keeping results 4 seconds: the URL stops working and the object is
    deleted by the collector."""
    assert stack.query is not None
    stack.query.stop()
    await stack.start_query(query_result_ttl=4.0)
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            run_id = await submit(http, keys["reader"], dataset="typed", sql=SQL, format="csv")
            done = await wait_status(http, keys["reader"], run_id, FINAL)
            assert done["status"] == "succeeded", done
            uri = await pool.fetchval(
                "SELECT output_uri FROM state.query_runs WHERE run_id = $1", uuid.UUID(run_id)
            )
            path = Path(uri.removeprefix("file://"))
            assert path.is_file()
            assert (await http.get(done["url"])).status_code == 200

            async def refused() -> bool:
                return (await http.get(done["url"])).status_code in (403, 404)

            await wait_until(refused, timeout=15, interval=0.2, what="the URL to expire")
            await wait_until(lambda: not path.exists(), timeout=30, interval=0.2, what="collect")
            later = await run_of(http, keys["reader"], run_id)
            assert later["expired"] is True and later["url"] is None
            assert later["status"] == "succeeded"  # what happened stays true
            collected = await pool.fetchval(
                "SELECT collected_at FROM state.query_runs WHERE run_id = $1", uuid.UUID(run_id)
            )
            assert collected is not None
    finally:
        stack.query.stop()
        await stack.start_query()


async def test_a_run_survives_the_api_restarting_mid_run(
    stack: Stack, keys: dict[str, str], datasets: None
) -> None:
    assert stack.api is not None
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        run_id = await submit(http, keys["reader"], sql=MEDIUM_SQL, format="json")
        first = await run_of(http, keys["reader"], run_id)
    stack.api.kill()  # mid-run: the API holds no state of it
    assert first["status"] in ("queued", "running")
    await stack.start_api()
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        done = await wait_status(http, keys["reader"], run_id, FINAL, timeout=120)
        assert done["status"] == "succeeded", done
        body = (await http.get(done["url"])).json()
        assert body["rows"] == [[sum(range(10)) * 8 * 10**7]]


async def test_a_run_whose_query_service_is_killed_fails_with_a_reason(
    stack: Stack, keys: dict[str, str], datasets: None
) -> None:
    assert stack.query is not None and stack.query.popen is not None
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        run_id = await submit(http, keys["reader"], sql=SLOW_SQL, format="csv")
        await wait_status(http, keys["reader"], run_id, ("running",))
        busy = await wait_until(
            lambda: executor_pids(stack.query.popen.pid),  # type: ignore[union-attr]
            what="the run's executor",
        )
        stack.query.kill()  # SIGKILL: no chance to record anything
        for pid in busy:  # (bwrap's --die-with-parent ends them; be sure on any host)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert (await run_of(http, keys["reader"], run_id))["status"] == "running"
        await stack.start_query()
        done = await wait_status(http, keys["reader"], run_id, FINAL, timeout=60)
        assert done["status"] == "failed" and done["error_code"] == "query_service_lost"
        assert done["error_detail"] and done["url"] is None


async def test_a_stopped_query_service_fails_its_runs_at_once(
    stack: Stack, keys: dict[str, str], datasets: None
) -> None:
    assert stack.query is not None
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        run_id = await submit(http, keys["reader"], sql=SLOW_SQL, format="csv")
        await wait_status(http, keys["reader"], run_id, ("running",))
        stack.query.stop()  # SIGTERM
        done = await run_of(http, keys["reader"], run_id)
        assert (done["status"], done["error_code"]) == ("failed", "query_service_stopped")
        await stack.start_query()


async def test_the_gate_refuses_through_a_run_what_it_refuses_through_query(
    stack: Stack, keys: dict[str, str], datasets: None, r_settings: Settings
) -> None:
    refused = [
        *ATTACKS,
        "SELECT no_such_column_xyz FROM dataset",
        "SELECT * FROM not_a_relation_of_this_org",
        *(sql for sql, _ in ENGINE_ERRORS),
    ]
    data = await asyncpg.connect(r_settings.data_database_url)
    try:
        before = await data.fetchval("SELECT count(*) FROM data.query_audit")
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            for sql in refused:
                body = {"dataset": "typed", "sql": sql}
                direct = await http.post("/v1/query", json=body, headers=bearer(keys["reader"]))
                assert direct.status_code in (400, 403, 404), (sql, direct.text)
                r = await http.post(
                    "/v1/query-runs", json=body | {"format": "csv"}, headers=bearer(keys["reader"])
                )
                if r.status_code != 202:  # refused before any run: as /v1/query refused it
                    assert (r.status_code, r.json()) == (direct.status_code, direct.json()), sql
                    continue
                done = await wait_status(http, keys["reader"], r.json()["run_id"], FINAL)
                expected = direct.json().get("reason") or direct.json()["error"]
                assert (done["status"], done["error_code"]) == ("failed", expected), sql
                assert done["error_detail"] == direct.json()["detail"], sql
        assert await data.fetchval("SELECT count(*) FROM data.query_audit") == before
    finally:
        await data.close()


async def test_query_runs_rows_and_logs_never_hold_the_sql(
    stack: Stack, keys: dict[str, str], datasets: None, pool: asyncpg.Pool
) -> None:
    sqls = [
        f"SELECT n, '{MARKER}' AS tag FROM dataset",  # succeeds
        f"SELECT CAST('{MARKER}' AS INTEGER) AS n FROM dataset",  # fails in the engine
        f"SELECT * FROM read_csv('/{MARKER}')",  # refused by the gate
    ]
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        for sql in sqls:
            r = await http.post(
                "/v1/query-runs",
                json={"dataset": "typed", "sql": sql, "format": "json"},
                headers=bearer(keys["reader"]),
            )
            assert MARKER not in r.text
            if r.status_code == 202:
                done = await wait_status(http, keys["reader"], r.json()["run_id"], FINAL)
                assert MARKER not in str(done)
        listed = await http.get("/v1/query-runs", headers=bearer(keys["reader"]))
        assert MARKER not in listed.text
    rows = await pool.fetch("SELECT r::text AS t FROM state.query_runs r")
    assert rows and not any(MARKER in r["t"] for r in rows)
    assert "query_run.succeeded" in stack.log_text()
    assert MARKER not in stack.log_text()


async def test_a_bad_run_request_is_refused_and_leaves_no_run(
    stack: Stack, keys: dict[str, str], datasets: None, pool: asyncpg.Pool
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM state.query_runs")
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        for body, status in (
            ({"sql": "SELECT 1", "format": "xml"}, 400),
            ({"sql": "SELECT 1", "limit": 10_001}, 400),  # JSON holds 10,000 rows at most
            ({"sql": "SELECT 1", "what": 1}, 400),
            ({"sql": "SELECT * FROM dataset", "dataset": "no-such-dataset"}, 404),
            ({"sql": "SELECT * FROM not_a_relation_of_this_org"}, 400),  # as /v1/query
            ({"sql": "SELECT 1", "idempotency_key": ""}, 400),
        ):
            r = await http.post("/v1/query-runs", json=body, headers=bearer(keys["reader"]))
            assert r.status_code == status, (body, r.text)
            assert "\n" not in r.json()["detail"]
        assert (
            await http.get(f"/v1/query-runs/{uuid.uuid4()}", headers=bearer(keys["reader"]))
        ).status_code == 404
        assert (
            await http.get("/v1/query-runs/not-a-uuid", headers=bearer(keys["reader"]))
        ).status_code in (400, 422)
        assert (await http.post("/v1/query-runs", json={"sql": "SELECT 1"})).status_code == 401
    assert await pool.fetchval("SELECT count(*) FROM state.query_runs") == before


def test_the_sdk_waits_for_a_run_and_returns_its_result_in_each_format(
    stack: Stack, keys: dict[str, str], datasets: None, tmp_path: Path
) -> None:
    from trace_platform.sdk import Client, QueryRunFailed

    seen: list[str] = []
    with Client(stack.url, keys["reader"]) as trace:
        exact = trace.query_run(
            SQL, format="arrow", dataset="typed", on_progress=lambda r: seen.append(r["status"])
        )
        assert isinstance(exact, QueryResult)
        direct = trace.query(SQL, dataset="typed", format="arrow")
        assert exact.to_arrow().equals(direct.to_arrow())  # the exact types and values
        assert seen[-1] == "succeeded" and set(seen) <= {"queued", "running", "succeeded"}
        as_json = trace.query_run(SQL, format="json", dataset="typed")
        assert isinstance(as_json, QueryResult)
        assert as_json.rows == trace.query(SQL, dataset="typed").rows
        raw = trace.query_run(SQL, format="csv", dataset="typed")
        assert isinstance(raw, bytes)
        assert raw == trace.query_bytes(SQL, "csv", dataset="typed")[0]
        out = tmp_path / "answer.parquet"
        written = trace.query_run(SQL, format="parquet", dataset="typed", output=out)
        assert written == out
        assert rows_of("parquet", out.read_bytes()) == rows_of("arrow", direct_arrow(trace))
        with pytest.raises(QueryRunFailed) as failed:
            trace.query_run("SELECT no_such_column_xyz FROM dataset", dataset="typed")
        assert failed.value.run["status"] == "failed" and failed.value.code == "query_error"
        assert "no_such_column_xyz" in failed.value.detail  # the engine names the column
        recent = trace.query_runs(limit=2)
        assert recent[0]["status"] == "failed" and recent[1]["format"] == "parquet"


def direct_arrow(trace: Any) -> bytes:
    body, _ = trace.query_bytes(SQL, "arrow", dataset="typed")
    assert isinstance(body, bytes)
    return body


def test_the_cli_runs_a_query_in_the_background_here_and_through_the_api(
    stack: Stack, keys: dict[str, str], datasets: None, r_settings: Settings, tmp_path: Path
) -> None:
    remote = r_settings.replace(api_url=stack.url, api_key=keys["reader"])
    for where in (r_settings, remote):
        out = tmp_path / f"{where.api_url is None}.csv"
        done = run_trace(
            where, "dataset", "query", "typed", SQL, "--async", "--format", "csv", "-o", str(out)
        )
        assert done.returncode == 0, done.stderr
        assert "query run: succeeded" in done.stderr
        assert rows_of("csv", out.read_bytes())[4][0] == 4
        table = run_trace(where, "dataset", "query", "typed", SQL, "--async", "--json")
        assert table.returncode == 0, table.stderr
        assert len(orjson.loads(table.stdout)["rows"]) == 5
        bad = run_trace(
            where, "dataset", "query", "typed", "SELECT zzz_col FROM dataset", "--async"
        )
        assert bad.returncode != 0 and "query failed (query_error)" in bad.stderr


def test_the_notebook_example_runs_a_query_and_writes_its_parquet(
    stack: Stack, keys: dict[str, str], datasets: None, tmp_path: Path
) -> None:
    import subprocess
    import sys

    import trace_platform

    script = Path(trace_platform.__file__).parent / "examples" / "notebook" / "query_run.py"
    env = {**os.environ, "TRACE_API_URL": stack.url, "TRACE_API_KEY": keys["reader"]}
    done = subprocess.run(
        [sys.executable, str(script), "SELECT n, label FROM typed ORDER BY n"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "5 rows" in done.stderr and "succeeded" in done.stderr
    assert pq.read_table(tmp_path / "result.parquet").column("n").to_pylist() == list(range(5))
