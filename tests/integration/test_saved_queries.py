"""Saved queries (SPEC §21 item 4, invariants 23-24) against a real `trace api`, a real query
service and a real Postgres: save, list, show, update and delete per org; runs bind typed
values as prepared-statement parameters through the same gate, sandbox and audit as `POST
/v1/query` — no value (quotes, `; DROP`, comments, `}}`) changes the statement, a value of
the wrong type is a 400 naming its parameter; the CLI (local and remote) and the SDK."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import api_settings, api_stack, wait_until
from tests.helpers import env_of, run_trace
from tests.integration.test_user_api import run_remote
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID
from trace_platform.sdk import ApiError, Client

ORG_B = uuid.UUID("0b0b0b0b-0000-4000-8000-0000000000cc")
SQL = (
    "SELECT n, label FROM numbers\n"
    "WHERE n >= {{ low: BIGINT }} AND n < {{ low }} + {{ span: INTEGER = 3 }}\n"
    "  AND label <> {{ skip: VARCHAR = '' }}\nORDER BY n"
)
HOSTILE = [
    "1; DROP TABLE numbers",
    "' OR '1'='1",
    "x'); SELECT * FROM read_parquet('/etc/passwd'); --",
    "}} OR 1=1 {{ low",
    "/* */ UNION ALL SELECT 1, 'a'",
    "row5' --",
]


@pytest.fixture(scope="module")
def s_settings(settings: Settings) -> Settings:
    return api_settings(settings)


@pytest.fixture(scope="module")
async def pool(s_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(s_settings.state_database_url or "", max_size=4)
    yield p
    await p.close()


LOGS: list[Path] = []


@pytest.fixture(scope="module")
async def api(s_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    logs = tmp_path_factory.mktemp("savedlogs")
    LOGS.append(logs)
    async with api_stack(s_settings, logs) as stack:
        yield stack.url


@pytest.fixture(scope="module")
async def keys(pool: asyncpg.Pool, api: str) -> dict[str, str]:
    out = {}
    for org, prefix in ((LITE_ORG_ID, ""), (ORG_B, "b-")):
        for role in ("reader", "writer"):
            made = await create_user(env_of(pool), org, f"saved-{prefix}{role}", role)
            out[prefix + role] = made.api_key
    return out


@pytest.fixture(scope="module")
async def numbers(s_settings: Settings, pool: asyncpg.Pool, tmp_path_factory: Any) -> str:
    path = tmp_path_factory.mktemp("saved") / "n.parquet"
    pq.write_table(pa.table({"n": list(range(20)), "label": [f"row{i}" for i in range(20)]}), path)
    await register_dataset(
        pool, object_store_from_settings(s_settings), "numbers", [path], LITE_ORG_ID
    )
    return "numbers"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def audit_hashes(settings: Settings, user: str) -> list[str]:
    """The SQL hashes of USER's audited queries, oldest first."""
    state = await asyncpg.connect(settings.state_database_url)
    data = await asyncpg.connect(settings.data_database_url)
    try:
        uid = await state.fetchval("SELECT user_id FROM state.users WHERE name = $1", user)
        rows = await data.fetch(
            "SELECT sql_sha256 FROM data.query_audit WHERE user_id = $1 ORDER BY id", uid
        )
    finally:
        await data.close()
        await state.close()
    return [r["sql_sha256"] for r in rows]


async def test_save_list_show_update_and_delete_per_org(
    api: str, keys: dict[str, str], numbers: str, pool: asyncpg.Pool
) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        w, r, b = bearer(keys["writer"]), bearer(keys["reader"]), bearer(keys["b-writer"])
        made = await http.post(
            "/v1/saved-queries",
            json={"name": "window", "sql": SQL, "description": "rows from low"},
            headers=w,
        )
        assert made.status_code == 201, made.text
        assert made.json()["parameters"] == [
            {"name": "low", "type": "BIGINT", "default": None},
            {"name": "span", "type": "INTEGER", "default": "3"},
            {"name": "skip", "type": "VARCHAR", "default": ""},
        ]
        again = await http.post("/v1/saved-queries", json={"name": "window", "sql": SQL}, headers=w)
        assert again.status_code == 409
        listed = (await http.get("/v1/saved-queries", headers=r)).json()["saved_queries"]
        assert [q["name"] for q in listed] == ["window"] and "sql" not in listed[0]
        shown = (await http.get("/v1/saved-queries/window", headers=r)).json()
        assert shown["sql"] == SQL and shown["description"] == "rows from low"
        # another org sees none of it, and may use the same name for its own
        assert (await http.get("/v1/saved-queries", headers=b)).json()["saved_queries"] == []
        assert (await http.get("/v1/saved-queries/window", headers=b)).status_code == 404
        ran = await http.post(
            "/v1/saved-queries/window/run", json={"params": {"low": 1}}, headers=b
        )
        assert ran.status_code == 404
        assert (await http.delete("/v1/saved-queries/window", headers=b)).status_code == 404
        theirs = await http.post(
            "/v1/saved-queries", json={"name": "window", "sql": "SELECT 1 AS one"}, headers=b
        )
        assert theirs.status_code == 201
        assert (await http.get("/v1/saved-queries/window", headers=r)).json()["sql"] == SQL
        # update, then delete
        put = await http.put(
            "/v1/saved-queries/window", json={"sql": "SELECT count(*) AS c FROM numbers"}, headers=w
        )
        assert put.status_code == 200 and put.json()["parameters"] == []
        missing = await http.put("/v1/saved-queries/nope", json={"sql": "SELECT 1"}, headers=w)
        assert missing.status_code == 404
        assert (await http.delete("/v1/saved-queries/window", headers=w)).status_code == 200
        assert (await http.get("/v1/saved-queries/window", headers=r)).status_code == 404
        assert (await http.get("/v1/saved-queries/window", headers=b)).status_code == 200


@pytest.mark.parametrize(
    ("sql", "status", "error", "says"),
    [
        ("SELECT * FROM read_parquet('/etc/passwd')", 400, "sql_rejected", "named relations"),
        ("SELECT 1; DROP TABLE numbers", 400, "sql_rejected", "one statement"),
        ("SELECT {{ a }}", 400, "bad_parameter", "'a' has no type"),
        ("SELECT {{ a: BIGINT = nope }}", 400, "bad_parameter", "'a' must be"),
        ("SELECT * FROM numbers WHERE n = $1", 400, "bad_parameter", "prepared-statement"),
        ("SELECT {{ a: BIGINT } AS broken", 400, "bad_parameter", "not closed"),
    ],
)
async def test_a_query_that_could_not_run_is_refused_when_saved_and_nothing_is_stored(
    api: str, keys: dict[str, str], pool: asyncpg.Pool, sql: str, status: int, error: str, says: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        r = await http.post(
            "/v1/saved-queries", json={"name": name, "sql": sql}, headers=bearer(keys["writer"])
        )
    assert r.status_code == status and r.json()["error"] == error, r.text
    assert says in r.json()["detail"]
    assert sql not in r.text
    assert (
        await pool.fetchval("SELECT count(*) FROM state.saved_queries WHERE name = $1", name) == 0
    )


ORG_D = uuid.UUID("0d0d0d0d-0000-4000-8000-0000000000dd")


async def test_a_name_two_chain_jobs_hold_is_refused_when_saved_as_query_refuses_it(
    api: str, pool: asyncpg.Pool
) -> None:
    """A bare `blocks` in an org with two chain jobs could never run: saving (or updating
    to) it is refused with the reason `/v1/query` gives, and nothing is stored; naming a
    default job, or the full name, is saved."""
    key = (await create_user(env_of(pool), ORG_D, "d-writer", "writer")).api_key
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        for job in ("chain-b", "chain-a"):
            spec = (
                f"kind: chain_sync\nname: {job}\nchain_id: 1\nrpc_pool: nowhere\n"
                "mode: {kind: fixed_target, to_block: 100}\nstreams:\n"
                "  blocks: {cryo_dataset: blocks, chunk_size: 10}\n"
            )
            applied = await http.post("/v1/specs", content=spec, headers=bearer(key))
            assert applied.status_code == 200, applied.text
        sql = "SELECT count(*) AS n FROM blocks WHERE number > 7"
        queried = await http.post("/v1/query", json={"sql": sql}, headers=bearer(key))
        assert queried.status_code == 400, queried.text
        reason = queried.json()["detail"]
        assert reason == (
            "relation 'blocks' is ambiguous: held by chain jobs 'chain-a' and 'chain-b';"
            ' write "chain-a.blocks" (or name a default job)'
        )
        saved = await http.post(
            "/v1/saved-queries", json={"name": "count", "sql": sql}, headers=bearer(key)
        )
        assert saved.status_code == 400, saved.text
        assert saved.json()["error"] == "sql_rejected" and saved.json()["detail"] == reason
        assert "number > 7" not in saved.text
        assert (
            await pool.fetchval("SELECT count(*) FROM state.saved_queries WHERE org_id = $1", ORG_D)
            == 0
        )
        # With a default job the short name is that job's; the full name is nobody else's.
        for body in (
            {"name": "count", "sql": sql, "job": "chain-a"},
            {"name": "full", "sql": 'SELECT count(*) AS n FROM "chain-b.blocks"'},
        ):
            made = await http.post("/v1/saved-queries", json=body, headers=bearer(key))
            assert made.status_code == 201, made.text
        put = await http.put("/v1/saved-queries/full", json={"sql": sql}, headers=bearer(key))
        assert put.status_code == 400 and put.json()["detail"] == reason
        shown = await http.get("/v1/saved-queries/full", headers=bearer(key))
        assert shown.json()["sql"] == 'SELECT count(*) AS n FROM "chain-b.blocks"'


async def test_values_are_bound_as_values_and_never_change_the_statement(
    api: str, keys: dict[str, str], numbers: str, s_settings: Settings
) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        w, r = bearer(keys["writer"]), bearer(keys["reader"])
        made = await http.post("/v1/saved-queries", json={"name": "win", "sql": SQL}, headers=w)
        assert made.status_code == 201, made.text

        async def run(params: dict[str, Any]) -> httpx.Response:
            return await http.post("/v1/saved-queries/win/run", json={"params": params}, headers=r)

        ok = await run({"low": "5"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["rows"] == [[5, "row5"], [6, "row6"], [7, "row7"]]
        assert (await run({"low": 5, "span": 1, "skip": "row5"})).json()["rows"] == []
        before = await audit_hashes(s_settings, "saved-reader")
        for value in HOSTILE:
            # as text, a hostile value matches no label and runs the same statement
            as_text = await run({"low": 0, "span": 20, "skip": value})
            assert as_text.status_code == 200, as_text.text
            assert len(as_text.json()["rows"]) == 20
            # as an integer it is no integer: 400 naming the parameter, never the value
            as_int = await run({"low": value})
            assert as_int.status_code == 400, as_int.text
            assert as_int.json()["error"] == "bad_parameter"
            assert "'low'" in as_int.json()["detail"] and value not in as_int.text
        after = await audit_hashes(s_settings, "saved-reader")
        ran = after[len(before) :]
        assert len(ran) == len(HOSTILE) and len(set(ran)) == 1  # one statement, whatever the values
        assert len(set(after)) == 1
        for params, says in (
            ({}, "'low' is missing"),
            ({"low": 1, "high": 2}, "unknown parameter 'high'"),
            ({"low": 1.5}, "'low' must be"),
            ({"low": True}, "'low' must be"),
            ({"low": 2**63}, "out of BIGINT's range"),
            ({"low": 1, "span": "3 OR 1=1"}, "'span' must be"),
        ):
            bad = await run(params)
            assert bad.status_code == 400 and says in bad.json()["detail"], (params, bad.text)
        not_scalar = await run({"low": [1, 2]})
        assert not_scalar.status_code == 400
        csv_body = await http.post(
            "/v1/saved-queries/win/run", json={"params": {"low": 18}, "format": "csv"}, headers=r
        )
        assert csv_body.status_code == 200 and csv_body.headers["content-type"].startswith(
            "text/csv"
        )
        assert list(csv.reader(io.StringIO(csv_body.text))) == [
            ["n", "label"],
            ["18", "row18"],
            ["19", "row19"],
        ]
    for log in LOGS[0].glob("*.log"):
        text = log.read_text()
        assert (
            "numbers\nWHERE" not in text and "DROP TABLE" not in text and "read_parquet" not in text
        )


async def test_a_saved_query_reads_only_what_its_runner_may(
    api: str, keys: dict[str, str], numbers: str
) -> None:
    """Invariant 23: the org B user's saved query over org A's dataset is refused when it
    runs, as the same SQL through `/v1/query` is."""
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        b = bearer(keys["b-writer"])
        made = await http.post(
            "/v1/saved-queries",
            json={"name": "peek", "sql": "SELECT * FROM numbers WHERE n = {{ n: BIGINT }}"},
            headers=b,
        )
        assert made.status_code == 201
        ran = await http.post("/v1/saved-queries/peek/run", json={"params": {"n": 1}}, headers=b)
        direct = await http.post(
            "/v1/query", json={"sql": "SELECT * FROM numbers WHERE n = 1"}, headers=b
        )
    assert ran.status_code == direct.status_code and ran.status_code in (400, 403, 404), ran.text
    assert ran.json()["error"] == direct.json()["error"]


async def test_the_cli_saves_lists_and_runs_locally_and_remotely(
    api: str, keys: dict[str, str], numbers: str, s_settings: Settings, tmp_path: Path
) -> None:
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("SELECT n FROM numbers WHERE n < {{ below: BIGINT = 2 }} ORDER BY n")
    saved = run_trace(s_settings, "query", "save", "cli-first", "--file", str(sql_file), "--json")
    assert saved.returncode == 0, saved.stderr
    assert orjson.loads(saved.stdout)["parameters"][0]["name"] == "below"
    listed = run_trace(s_settings, "query", "list")
    assert "cli-first  (below BIGINT = 2)" in listed.stdout
    ran = run_trace(s_settings, "query", "run", "cli-first", "--json")
    assert orjson.loads(ran.stdout)["rows"] == [[0], [1]]
    ran = run_trace(s_settings, "query", "run", "cli-first", "--param", "below=4", "--json")
    assert orjson.loads(ran.stdout)["rows"] == [[0], [1], [2], [3]]
    bad = run_trace(s_settings, "query", "run", "cli-first", "--param", "below=4; DROP")
    assert bad.returncode == 2 and "parameter 'below' must be" in bad.stderr
    out = tmp_path / "r.csv"
    exported = run_trace(
        s_settings, "query", "run", "cli-first", "-p", "below=3", "--format", "csv", "-o", str(out)
    )
    assert exported.returncode == 0, exported.stderr
    assert list(csv.reader(io.StringIO(out.read_text()))) == [["n"], ["0"], ["1"], ["2"]]
    # remote: the same verbs through the API
    home = tmp_path / "home"
    remote = run_remote(
        api,
        keys["writer"],
        "query",
        "save",
        "cli-remote",
        "SELECT {{ x: DOUBLE }} * 2 AS y",
        home=home,
    )
    assert remote.returncode == 0, remote.stderr
    shown = run_remote(
        api, keys["reader"], "query", "run", "cli-remote", "-p", "x=1.25", "--json", home=home
    )
    assert orjson.loads(shown.stdout)["rows"] == [[2.5]]
    local_list = run_trace(s_settings, "query", "list", "--json")
    remote_list = run_remote(api, keys["reader"], "query", "list", "--json", home=home)
    assert orjson.loads(local_list.stdout) == orjson.loads(remote_list.stdout)


def test_the_sdk_saves_and_runs_with_params(api: str, keys: dict[str, str], numbers: str) -> None:
    with Client(api, keys["writer"]) as client:
        client.save_query("sdk", "SELECT n, label FROM numbers WHERE n = {{ n: BIGINT }}")
        assert "sdk" in {q["name"] for q in client.saved_queries()}
        result = client.run_query("sdk", {"n": 4})
        assert result.rows == [[4, "row4"]]
        table = client.run_query("sdk", {"n": "4"}, format="arrow").to_arrow()
        assert table.to_pylist() == [{"n": 4, "label": "row4"}]
        with pytest.raises(ApiError) as caught:
            client.run_query("sdk", {"n": "four"})
        assert caught.value.status == 400 and "'n'" in str(caught.value)
        client.delete_query("sdk")
        assert "sdk" not in {q["name"] for q in client.saved_queries()}


async def _finished_run(http: httpx.AsyncClient, key: str, run_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await http.get(f"/v1/query-runs/{run_id}", headers=bearer(key))
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc if doc["status"] not in ("queued", "running") else None

    found: dict[str, Any] = await wait_until(done, timeout=60, interval=0.1, what="run ended")
    return found


async def test_a_saved_query_runs_as_a_query_run_with_its_values_bound(
    api: str, keys: dict[str, str], numbers: str, s_settings: Settings, pool: asyncpg.Pool
) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        w, r, other = bearer(keys["writer"]), bearer(keys["reader"]), bearer(keys["b-reader"])
        made = await http.post("/v1/saved-queries", json={"name": "runq", "sql": SQL}, headers=w)
        assert made.status_code == 201, made.text

        async def start(params: dict[str, Any], **extra: Any) -> httpx.Response:
            body = {"params": params, **extra}
            return await http.post("/v1/saved-queries/runq/runs", json=body, headers=r)

        async def result_of(run_id: str) -> dict[str, Any]:
            run = await _finished_run(http, keys["reader"], run_id)
            assert run["status"] == "succeeded", run
            assert run["saved_query"] == "runq"
            got = await http.get(run["url"])
            assert got.status_code == 200, got.text
            doc: dict[str, Any] = got.json()
            return doc

        # a run's answer is the synchronous run's answer
        sync = await http.post("/v1/saved-queries/runq/run", json={"params": {"low": 5}}, headers=r)
        assert sync.status_code == 200, sync.text
        first = await start({"low": 5}, format="json", idempotency_key="runq-1")
        assert first.status_code == 202, first.text
        run_id = first.json()["run_id"]
        assert first.json()["created"] is True
        assert (
            (await result_of(run_id))["rows"]
            == sync.json()["rows"]
            == [
                [5, "row5"],
                [6, "row6"],
                [7, "row7"],
            ]
        )
        # idempotency: the same key and values (the same once checked: "5" is 5) is the same
        # run; other values or another format is a 409
        for same in ({"low": 5}, {"low": "5", "span": 3}):
            again = await start(same, format="json", idempotency_key="runq-1")
            assert again.status_code == 202, again.text
            assert again.json() == {"run_id": run_id, "created": False}
        for params, fmt in (
            ({"low": 6}, "json"),
            ({"low": 5, "skip": "x"}, "json"),
            ({"low": 5}, "csv"),
        ):
            clash = await start(params, format=fmt, idempotency_key="runq-1")
            assert clash.status_code == 409, clash.text
            assert clash.json()["error"] == "idempotency_conflict"
        # hostile values: as text they match nothing and run the same statement; as an
        # integer they are a 400 naming the parameter, never the value, and make no run
        before = await pool.fetchval("SELECT count(*) FROM state.query_runs")
        for value in HOSTILE:
            bad = await start({"low": value})
            assert bad.status_code == 400, bad.text
            assert bad.json()["error"] == "bad_parameter"
            assert "'low'" in bad.json()["detail"] and value not in bad.text
        assert await pool.fetchval("SELECT count(*) FROM state.query_runs") == before
        hostile_runs = []
        for value in HOSTILE:
            ok = await start({"low": 0, "span": 20, "skip": value}, format="json")
            assert ok.status_code == 202, ok.text
            hostile_runs.append(ok.json()["run_id"])
        for rid in hostile_runs:
            assert len((await result_of(rid))["rows"]) == 20
        # the runs record the saved query and the values' hash, never the SQL or the values
        rows = await pool.fetch(
            "SELECT * FROM state.query_runs WHERE saved_query = 'runq' ORDER BY created_at"
        )
        assert len(rows) == 1 + len(HOSTILE)
        assert len({row["sql_sha256"] for row in rows}) == 1  # one statement, whatever the values
        hashes = [row["params_sha256"] for row in rows]
        assert all(h and len(h) == 64 for h in hashes) and len(set(hashes)) == len(rows)
        text = repr([dict(row) for row in rows])
        for secret in (*HOSTILE, "numbers", "row5", "CAST("):
            assert secret not in text
        # the user's runs of this saved query, by name; another org sees none of it
        listed = await http.get("/v1/query-runs", params={"saved_query": "runq"}, headers=r)
        assert listed.status_code == 200, listed.text
        assert {x["run_id"] for x in listed.json()["runs"]} == {str(x["run_id"]) for x in rows}
        assert all(x["saved_query"] == "runq" for x in listed.json()["runs"])
        none = await http.get("/v1/query-runs", params={"saved_query": "win"}, headers=r)
        assert all(x["saved_query"] == "win" for x in none.json()["runs"])
        assert (await http.get(f"/v1/query-runs/{run_id}", headers=other)).status_code == 404
        theirs = await http.post(
            "/v1/saved-queries/runq/runs", json={"params": {"low": 5}}, headers=other
        )
        assert theirs.status_code == 404, theirs.text
        other_list = await http.get("/v1/query-runs", params={"saved_query": "runq"}, headers=other)
        assert other_list.json()["runs"] == []
        # cancel through DELETE as any run
        slow = await start({"low": 0, "span": 20}, format="csv")
        assert slow.status_code == 202
        stop = await http.delete(f"/v1/query-runs/{slow.json()['run_id']}", headers=r)
        assert stop.status_code in (200, 409), stop.text  # 409: it had finished already
        ended = await _finished_run(http, keys["reader"], slow.json()["run_id"])
        assert ended["status"] in ("canceled", "succeeded")
    for log in LOGS[0].glob("*.log"):
        text = log.read_text()
        assert "DROP TABLE" not in text and "read_parquet" not in text and "row5'" not in text


def test_the_sdk_runs_a_saved_query_as_a_query_run(
    api: str, keys: dict[str, str], numbers: str
) -> None:
    with Client(api, keys["writer"]) as client:
        client.save_query("sdkrun", "SELECT n, label FROM numbers WHERE n >= {{ n: BIGINT }}")
        seen: list[str] = []
        result = client.saved_query_run(
            "sdkrun", {"n": 17}, on_progress=lambda run: seen.append(run["status"])
        )
        assert not isinstance(result, (bytes, Path))
        assert (
            result.to_arrow().to_pylist()
            == client.run_query("sdkrun", {"n": 17}, format="arrow").to_arrow().to_pylist()
        )
        assert seen[-1] == "succeeded"
        assert [r["saved_query"] for r in client.query_runs(saved_query="sdkrun")] == ["sdkrun"]
        with pytest.raises(ApiError) as caught:
            client.saved_query_run("sdkrun", {"n": "seventeen"})
        assert caught.value.status == 400 and "'n'" in str(caught.value)


async def test_the_cli_runs_a_saved_query_as_a_query_run_here_and_through_the_api(
    api: str,
    keys: dict[str, str],
    numbers: str,
    s_settings: Settings,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        made = await http.post(
            "/v1/saved-queries",
            json={"name": "cli-async", "sql": "SELECT n FROM numbers WHERE n > {{ n: BIGINT }}"},
            headers=bearer(keys["writer"]),
        )
        assert made.status_code == 201, made.text
    remote = s_settings.replace(api_url=api, api_key=keys["reader"])
    for where in (s_settings, remote):
        ran = run_trace(where, "query", "run", "cli-async", "--async", "--param", "n=16", "--json")
        assert ran.returncode == 0, ran.stderr
        assert "query run: succeeded" in ran.stderr
        assert orjson.loads(ran.stdout)["rows"] == [[17], [18], [19]]
        out = tmp_path / f"{where.api_url is None}.csv"
        exported = run_trace(
            where,
            "query",
            "run",
            "cli-async",
            "--async",
            "-p",
            "n=18",
            "--format",
            "csv",
            "-o",
            str(out),
        )
        assert exported.returncode == 0, exported.stderr
        assert list(csv.reader(io.StringIO(out.read_text()))) == [["n"], ["19"]]
        bad = run_trace(where, "query", "run", "cli-async", "--async", "-p", "n=1; DROP")
        assert bad.returncode == 2 and "parameter 'n' must be" in bad.stderr
    recorded = await pool.fetch(
        "SELECT user_id, params_sha256 FROM state.query_runs WHERE saved_query = 'cli-async'"
    )
    assert len(recorded) == 4  # two here (an operator: no user), two through the API
    assert sum(r["user_id"] is None for r in recorded) == 2
