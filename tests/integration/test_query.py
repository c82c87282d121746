"""Query service over real HTTP, a real Postgres and real DuckDB executors (SPEC §9, §10.7)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    Dbs,
    Proc,
    free_port,
    start_dispatcher,
    start_proc,
    start_query_service,
    wait_until,
)
from tests.helpers import Attempt, create_tasks, echoed_sql
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ports import LITE_ORG_ID

N = 1000


def fixture_table() -> pa.Table:
    return pa.table(
        {
            "block": list(range(N)),
            "addr": [f"0x{i % 7:040x}" for i in range(N)],
            "value": [(i * 37) % 1000 for i in range(N)],
        }
    )


@pytest.fixture(scope="module")
def q_settings(settings: Settings) -> Settings:
    port = free_port()
    return settings.replace(query_port=port, query_url=f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
async def services(
    q_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "dispatcher": await start_dispatcher(q_settings, logs),
        "query": await start_query_service(q_settings, logs),
        "sink": start_proc(q_settings, logs, "sink"),
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="module")
async def datasets(
    q_settings: Settings, dbs: Dbs, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("parquet")
    t = fixture_table()
    pq.write_table(t.slice(0, 600), tmp / "part-0.parquet")
    pq.write_table(t.slice(600), tmp / "part-1.parquet")
    pq.write_table(pa.table({"secret": ["do not read"]}), tmp / "other.parquet")
    pool = await create_pool(dbs.state, max_size=2)
    store = object_store_from_settings(q_settings)
    chain = await register_dataset(
        pool, store, "chain", [tmp / "part-0.parquet", tmp / "part-1.parquet"], LITE_ORG_ID
    )
    again = await register_dataset(
        pool, store, "chain", [tmp / "part-1.parquet", tmp / "part-0.parquet"], LITE_ORG_ID
    )
    other = await register_dataset(pool, store, "other", [tmp / "other.parquet"], LITE_ORG_ID)
    await pool.close()
    assert again.dataset_version == chain.dataset_version and not again.created
    return {
        "chain": str(chain.dataset_uuid),
        "other": str(other.dataset_uuid),
        "version": chain.dataset_version,
    }


@pytest.fixture(scope="module")
async def attempt(
    q_settings: Settings, services: dict[str, Proc], datasets: dict[str, Any]
) -> AsyncIterator[Attempt]:
    (tid,) = await create_tasks(
        q_settings.state_database_url or "",
        1,
        payload={"operator": "manual", "inputs": [{"dataset": "chain"}]},
        wake=False,
    )
    async with httpx.AsyncClient(base_url=services["dispatcher"].url or "", timeout=10) as http:
        yield await Attempt.claim(http, tid)


async def query(
    q_settings: Settings,
    a: Attempt,
    sql: str,
    dataset: str | None = None,
    token: str | None = "",
    **extra: Any,
) -> httpx.Response:
    body = {"task_id": a.task_id, "attempt": a.attempt, "dataset_id": dataset, "sql": sql, **extra}
    headers = {} if token is None else {"X-Trace-Task-Capability": token or a.token}
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.post(f"{q_settings.query_url}/v1/task/query", json=body, headers=headers)


def test_token_grants_the_pinned_version(attempt: Attempt, datasets: dict[str, Any]) -> None:
    import jwt

    claims = jwt.decode(attempt.token, options={"verify_signature": False})
    (grant,) = claims["datasets"]
    assert (
        grant["dataset_uuid"] == datasets["chain"]
        and grant["dataset_version"] == datasets["version"]
    )
    assert claims["s3"]["read_prefixes"] == ["file://" + grant["storage_ref"]["prefix"]]


async def test_unknown_input_dataset_fails_the_task_at_claim(
    q_settings: Settings, services: dict[str, Proc], state_conn: asyncpg.Connection
) -> None:
    (tid,) = await create_tasks(
        q_settings.state_database_url or "",
        1,
        payload={"operator": "manual", "inputs": [{"dataset": "nope"}]},
        wake=False,
    )
    async with httpx.AsyncClient(base_url=services["dispatcher"].url or "", timeout=10) as http:
        from tests.helpers import claim

        r = await claim(http, tid)
    assert r.status_code == 409 and r.json()["reason"] == "failed"
    row = await state_conn.fetchrow(
        "SELECT status, last_error FROM state.tasks WHERE task_id=$1", tid
    )
    assert row["status"] == "failed" and "unknown dataset" in row["last_error"]


async def test_auth_rules(
    q_settings: Settings, attempt: Attempt, datasets: dict[str, Any], state_conn: asyncpg.Connection
) -> None:
    sql = "SELECT count(*) FROM dataset"
    assert (await query(q_settings, attempt, sql, datasets["chain"], token=None)).status_code == 401
    assert (
        await query(q_settings, attempt, sql, datasets["chain"], token="x.y.z")
    ).status_code == 401
    mismatch = await query(q_settings, attempt, sql, datasets["chain"], attempt=attempt.attempt + 1)
    assert mismatch.status_code == 403
    assert (await query(q_settings, attempt, sql, datasets["other"])).status_code == 403
    assert (await query(q_settings, attempt, sql, str(uuid.uuid4()))).status_code == 403


async def test_manifest_entry_outside_the_granted_prefix_is_403(
    q_settings: Settings, attempt: Attempt, datasets: dict[str, Any], state_conn: asyncpg.Connection
) -> None:
    row = await state_conn.fetchrow(
        "SELECT manifest FROM state.dataset_versions WHERE dataset_uuid=$1",
        uuid.UUID(datasets["chain"]),
    )
    manifest = row["manifest"]
    other_uri = await state_conn.fetchval(
        "SELECT manifest->'files'->0->>'uri' FROM state.dataset_versions WHERE dataset_uuid=$1",
        uuid.UUID(datasets["other"]),
    )
    tampered = {
        "files": [*manifest["files"], {"name": "x", "uri": other_uri, "size": 1, "sha256": "0"}]
    }
    await state_conn.execute(
        "UPDATE state.dataset_versions SET manifest=$2 WHERE dataset_uuid=$1",
        uuid.UUID(datasets["chain"]),
        tampered,
    )
    try:
        r = await query(q_settings, attempt, "SELECT * FROM dataset", datasets["chain"])
        assert r.status_code == 403 and "outside" in r.json()["detail"]
    finally:
        await state_conn.execute(
            "UPDATE state.dataset_versions SET manifest=$2 WHERE dataset_uuid=$1",
            uuid.UUID(datasets["chain"]),
            manifest,
        )


ATTACKS = [
    "SELECT * FROM read_parquet('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('http://127.0.0.1:1/x.csv')",
    "SELECT * FROM read_json('s3://bucket/x.json')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM parquet_scan('https://example.com/x.parquet')",
    "SELECT * FROM 'file.csv'",
    'SELECT * FROM "/etc/passwd"',
    "ATTACH '/tmp/x.db' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "COPY (SELECT * FROM dataset) TO '/tmp/out.csv'",
    "EXPORT DATABASE '/tmp/export'",
    "PRAGMA database_list",
    "SET enable_external_access = true",
    "RESET memory_limit",
    "SELECT getenv('HOME')",
    "SELECT current_setting('memory_limit')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM query('SELECT 42')",
    "SELECT * FROM query_table('dataset')",
    "SELECT 1 FROM dataset; SELECT 2",
    "SELECT 1; DROP TABLE dataset",
    "CREATE TABLE t AS SELECT * FROM dataset",
    "INSERT INTO dataset VALUES (1)",
    "DELETE FROM dataset",
    "SELECT * FROM dataset /* */ ; COPY dataset TO '/tmp/x'",
    "SELECT * FROM dataset -- ; ATTACH 'x'\n; ATTACH 'y'",
    "SeLeCt * FrOm ReAd_PaRqUeT('/etc/passwd')",
    "SELECT * FROM main.dataset",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM dataset WHERE block IN (SELECT 1 FROM read_csv('/etc/passwd'))",
    "WITH x AS (SELECT * FROM read_parquet('/etc/x')) SELECT * FROM x",
    "\uff33\uff25\uff2c\uff25\uff23\uff34 * FROM dataset",  # fullwidth lookalikes
    "SELECT * FROM dataset\u200b",
    "SELECT * INTO copy FROM dataset",
]


@pytest.mark.parametrize("sql", ATTACKS)
async def test_gate_rejects_before_execution_and_writes_no_audit(
    q_settings: Settings,
    attempt: Attempt,
    datasets: dict[str, Any],
    data_conn: asyncpg.Connection,
    sql: str,
) -> None:
    before = await data_conn.fetchval("SELECT count(*) FROM data.query_audit")
    r = await query(q_settings, attempt, sql, datasets["chain"])
    assert r.status_code == 400, (sql, r.text)
    body = r.json()
    assert body["error"] == "sql_rejected" and body["reason"].startswith("sql_")
    assert sql not in r.text
    assert await data_conn.fetchval("SELECT count(*) FROM data.query_audit") == before


async def test_allowed_queries_return_correct_results(
    q_settings: Settings, attempt: Attempt, datasets: dict[str, Any], data_conn: asyncpg.Connection
) -> None:
    t = fixture_table().to_pylist()
    ds = datasets["chain"]
    r = await query(
        q_settings, attempt, "SELECT block, value FROM dataset WHERE value > 990 ORDER BY block", ds
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[x["block"], x["value"]] for x in t if x["value"] > 990]
    assert [c["name"] for c in r.json()["columns"]] == ["block", "value"]
    agg = await query(
        q_settings,
        attempt,
        "SELECT addr, count(*) AS n, sum(value) AS s FROM dataset GROUP BY addr ORDER BY addr",
        ds,
    )
    expect: dict[str, list[int]] = {}
    for x in t:
        e = expect.setdefault(x["addr"], [0, 0])
        e[0] += 1
        e[1] += x["value"]
    assert agg.json()["rows"] == [[k, v[0], v[1]] for k, v in sorted(expect.items())]
    cte = await query(
        q_settings,
        attempt,
        """
        WITH big AS (SELECT block, value FROM dataset WHERE value >= 500),
             small AS (SELECT block, value FROM dataset WHERE value < 500)
        SELECT count(*) FROM big JOIN small ON big.block + 1 = small.block""",
        ds,
    )
    by_block = {x["block"]: x["value"] for x in t}
    assert cte.json()["rows"] == [
        [sum(1 for b, v in by_block.items() if v >= 500 and by_block.get(b + 1, 1000) < 500)]
    ]
    win = await query(
        q_settings,
        attempt,
        """
        SELECT block, row_number() OVER (PARTITION BY addr ORDER BY block) AS rn,
               lag(value) OVER (ORDER BY block) AS prev
        FROM dataset ORDER BY block LIMIT 3""",
        ds,
    )
    assert win.json()["rows"] == [[0, 1, None], [1, 1, 0], [2, 1, 37]]


ENGINE_ERRORS = [
    # (SQL, a literal of it that DuckDB's own message quotes)
    ("SELECT * FROM dataset WHERE block = 'xyzzy-k9q-secret'", "k9q-secret"),
    ("SELECT CAST('hunter2-k9q' AS INTEGER) AS n FROM dataset", "hunter2-k9q"),
    ("SELECT 987654321987654321987::INTEGER AS n FROM dataset", "987654321987654321987"),
    ("SELECT CAST('x'' leakyword ''' AS INTEGER) AS n FROM dataset", "leakyword"),
]


async def test_an_engine_error_names_the_column_and_never_echoes_the_sql(
    q_settings: Settings, attempt: Attempt, datasets: dict[str, Any]
) -> None:
    """A bad column answers DuckDB's own words: the column, its candidates, where it stands
    in the SQL; no line of the query, no literal of it, no value of the data."""
    sql = "SELECT addr,\n       blck\nFROM dataset WHERE addr = 'k9q-literal-secret'"
    r = await query(q_settings, attempt, sql, datasets["chain"])
    assert r.status_code == 400, r.text
    body = r.json()
    assert (body["error"], body["reason"]) == ("invalid_request", "query_error")
    assert 'column "blck" not found' in body["detail"]
    assert 'Candidate bindings: "block"' in body["detail"]
    assert body["detail"].endswith("(line 2, column 8)")
    assert "LINE" not in r.text and "k9q" not in r.text
    assert echoed_sql(sql, r.text, ("blck", "block", "addr")) == []
    for bad, literal in ENGINE_ERRORS:
        r = await query(q_settings, attempt, bad, datasets["chain"])
        assert r.status_code == 400 and r.json()["reason"] == "query_error", (bad, r.text)
        assert literal not in r.text and "LINE" not in r.text, r.text
        assert r.json()["detail"].startswith("Conversion Error"), r.text
        assert echoed_sql(bad, r.text, ("block",)) == [], r.text
    # A value of the data is not shown either; the column it came from is.
    sql = "SELECT CAST(addr AS DATE) FROM dataset"
    r = await query(q_settings, attempt, sql, datasets["chain"])
    assert "0x0000" not in r.text and "column addr" in r.json()["detail"], r.text


async def test_a_short_name_two_granted_chain_jobs_hold_is_refused_naming_both(
    q_settings: Settings, attempt: Attempt, services: dict[str, Proc]
) -> None:
    """A task granted the same decoded table of two chain jobs: the short name is nobody's,
    and the refusal says which jobs hold it and what to write instead."""
    from tests.conftest import TEST_KEYS
    from trace_platform.adapters.local_keys import LocalKeyRing
    from trace_platform.domain.capability import DatasetGrant, StorageRef, build_claims

    ring = LocalKeyRing.from_document({"issuer": "trace-test", "current": TEST_KEYS["current"]})
    ref = StorageRef(scheme="file", prefix="/nonexistent/", glob="*.parquet")
    grants = [
        DatasetGrant(
            dataset_uuid=str(uuid.uuid4()),
            dataset_version="snap-1",
            storage_ref=ref,
            name=f"{job}.erc20_transfers",
        )
        for job in ("beta", "alpha")
    ]
    token = ring.sign(
        build_claims(
            issuer="trace-test",
            task_id=uuid.UUID(attempt.task_id),
            attempt=attempt.attempt,
            org_id=LITE_ORG_ID,
            ttl_seconds=60,
            store_root=q_settings.resolved_object_store_url,
            datasets=grants,
        )
    )
    sql = "SELECT t.block_number FROM erc20_transfers t WHERE t.value_f64 > 12345.5"
    r = await query(q_settings, attempt, sql, token=token)
    assert r.status_code == 400, r.text
    assert r.json()["reason"] == "sql_relation_not_allowed"
    assert r.json()["detail"] == (
        "relation 'erc20_transfers' is ambiguous: held by chain jobs 'alpha' and 'beta';"
        ' write "alpha.erc20_transfers" (or name a default job)'
    )
    assert echoed_sql(sql, r.text, ("alpha.erc20_transfers",)) == []


async def test_limit_is_clamped_and_truncation_reported(
    q_settings: Settings, attempt: Attempt, datasets: dict[str, Any]
) -> None:
    ds = datasets["chain"]
    r = await query(q_settings, attempt, "SELECT block FROM dataset ORDER BY block", ds, limit=10)
    assert len(r.json()["rows"]) == 10 and r.json()["truncated"] is True
    r = await query(q_settings, attempt, "SELECT block FROM dataset", ds, limit=0)
    assert len(r.json()["rows"]) == 1
    r = await query(q_settings, attempt, "SELECT block FROM dataset", ds, limit=10**9)
    assert len(r.json()["rows"]) == N and r.json()["truncated"] is False
    r = await query(q_settings, attempt, "SELECT block FROM dataset", ds)
    assert len(r.json()["rows"]) == N  # default 1000 covers the fixture exactly


async def test_each_successful_query_is_audited_without_sql(
    q_settings: Settings, attempt: Attempt, datasets: dict[str, Any], data_conn: asyncpg.Connection
) -> None:
    before = await data_conn.fetchval("SELECT count(*) FROM data.query_audit")
    r = await query(
        q_settings, attempt, "SELECT block FROM dataset WHERE value = 37", datasets["chain"]
    )
    assert r.status_code == 200
    row = await data_conn.fetchrow("SELECT * FROM data.query_audit ORDER BY id DESC LIMIT 1")
    assert await data_conn.fetchval("SELECT count(*) FROM data.query_audit") == before + 1
    assert str(row["task_id"]) == attempt.task_id and row["org_id"] == LITE_ORG_ID
    assert str(row["dataset_id"]) == datasets["chain"]
    assert row["result_row_count"] == len(r.json()["rows"])
    assert sorted(row["columns_accessed"]) == ["block", "value"]
    assert "SELECT" not in json.dumps(dict(row), default=str)


async def test_metrics_count_outcomes_and_executors_are_reused(
    q_settings: Settings, attempt: Attempt, datasets: dict[str, Any]
) -> None:
    async def samples() -> dict[str, float]:
        async with httpx.AsyncClient(timeout=10) as c:
            text = (await c.get(f"{q_settings.query_url}/metrics")).text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    warm = await query(q_settings, attempt, "SELECT 1 FROM dataset LIMIT 1", datasets["chain"])
    assert warm.status_code == 200
    before = await samples()
    for _ in range(3):
        ok = await query(q_settings, attempt, "SELECT count(*) FROM dataset", datasets["chain"])
        assert ok.status_code == 200
    denied = await query(q_settings, attempt, "SELECT * FROM glob('/*')", datasets["chain"])
    assert denied.status_code == 400
    after = await samples()

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew('trace_queries_total{outcome="allowed"}') == 3
    assert grew("trace_query_seconds_count") == 3
    reason = denied.json()["reason"]
    assert grew(f'trace_queries_total{{outcome="{reason}"}}') == 1
    # The executor bound to this dataset version answered all three: none was started.
    assert grew('trace_query_executor_starts_total{result="ok",route="reader"}') == 0
    assert 1 <= after["trace_query_executors"] <= q_settings.query_executors


async def test_udf_reads_its_granted_dataset_through_context_query(
    q_settings: Settings,
    services: dict[str, Proc],
    datasets: dict[str, Any],
    dbs: Dbs,
    data_conn: asyncpg.Connection,
    state_conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    import textwrap

    from trace_platform.bundles import build_bundle, deterministic_zip, register_bundle

    tag = "q-" + uuid.uuid4().hex[:6]
    rule = "9a1f2b3c-4d5e-4f60-8a7b-1c2d3e4f5a6b"
    py = textwrap.dedent(f"""
        def handler(event, context):
            res = context.query(event["dataset"], "SELECT count(*), sum(value) FROM dataset WHERE value > 500")
            try:
                context.query(event["other"], "SELECT * FROM dataset")
                denied = "no"
            except context.QueryError as exc:
                denied = str(exc)[:3]
            return [{{"alert_definition_id": "{rule}", "dedupe_key": "{tag}:py",
                      "event_time": "2024-01-01T00:00:00Z",
                      "payload": {{"n": res["rows"][0][0], "s": res["rows"][0][1], "denied": denied}}}}]
        """).encode()
    src = tmp_path / "ts"
    src.mkdir()
    (src / "index.ts").write_text(
        textwrap.dedent(f"""
        export async function handler(event: any, context: any) {{
          const res = await context.query(event.dataset, "SELECT count(*), sum(value) FROM dataset WHERE value > 500");
          let denied = "no";
          try {{ await context.query(event.other, "SELECT * FROM dataset"); }}
          catch (e: any) {{ denied = String(e.message).slice(0, 3); }}
          return [{{ alert_definition_id: "{rule}", dedupe_key: "{tag}:ts",
                     event_time: "2024-01-01T00:00:00Z",
                     payload: {{ n: res.rows[0][0], s: res.rows[0][1], denied }} }}];
        }}""")
    )
    pool = await create_pool(dbs.state, max_size=2)
    store = object_store_from_settings(q_settings)
    b_py = await register_bundle(
        pool,
        store,
        deterministic_zip([("handler.py", py)]),
        "python",
        "handler.handler",
        LITE_ORG_ID,
    )
    b_ts = await register_bundle(
        pool,
        store,
        build_bundle(src, "node", "index.handler"),
        "node",
        "index.handler",
        LITE_ORG_ID,
    )
    await pool.close()
    work = {"dataset": datasets["chain"], "other": datasets["other"]}
    ids = []
    for b in (b_py, b_ts):
        payload = {
            "runtime": "lambda",
            "udf": {"bundle_id": str(b.bundle_id)},
            "inputs": [{"dataset": "chain"}],
            "work_payload": work,
        }
        (tid,) = await create_tasks(q_settings.state_database_url or "", 1, payload=payload)
        ids.append(tid)

    async def both_rows() -> list[asyncpg.Record] | None:
        rows = await data_conn.fetch(
            "SELECT dedupe_key, payload FROM data.alert_events WHERE dedupe_key LIKE $1 ORDER BY dedupe_key",
            tag + ":%",
        )
        return list(rows) if len(rows) == 2 else None

    rows = await wait_until(both_rows, timeout=60, what="udf query results")
    t = fixture_table().to_pylist()
    big = [x["value"] for x in t if x["value"] > 500]
    expected = {"n": len(big), "s": sum(big), "denied": "403"}
    assert [r["payload"] for r in rows] == [expected, expected]
    audit = await data_conn.fetch(
        "SELECT task_id, dataset_id FROM data.query_audit WHERE task_id = ANY($1)", ids
    )
    # Each handler's allowed query is audited; the denied ones (the `other` dataset) leave no
    # row. (An attempt retried under load queries again: at most one row per attempt.)
    assert {r["task_id"] for r in audit} == set(ids)
    assert {str(r["dataset_id"]) for r in audit} == {datasets["chain"]}
    attempts = await state_conn.fetchval(
        "SELECT sum(attempt) FROM state.tasks WHERE task_id = ANY($1)", ids
    )
    assert len(audit) <= attempts


async def test_a_batch_answers_each_query_as_if_it_came_alone(
    q_settings: Settings,
    services: dict[str, Proc],
    attempt: Attempt,
    datasets: dict[str, Any],
    data_conn: asyncpg.Connection,
) -> None:
    """`/v1/task/query-batch`: each query carries its own token and is checked, run and
    audited on its own; a bad one fails alone, in its place, and the SQL never shows."""
    (tid,) = await create_tasks(
        q_settings.state_database_url or "",
        1,
        payload={"operator": "manual", "inputs": [{"dataset": "chain"}]},
        wake=False,
    )
    async with httpx.AsyncClient(base_url=services["dispatcher"].url or "", timeout=10) as http:
        other = await Attempt.claim(http, tid)
    ds = datasets["chain"]
    t = fixture_table().to_pylist()

    def item(a: Attempt, sql: str, **extra: Any) -> dict[str, Any]:
        body = {"capability": a.token, "task_id": a.task_id, "attempt": a.attempt}
        return body | {"dataset_id": ds, "sql": sql} | extra

    rejected = "SELECT * FROM read_csv('/etc/passwd')"
    queries = [
        item(attempt, "SELECT block FROM dataset WHERE value > 995 ORDER BY block"),
        item(other, "SELECT count(*) AS n FROM dataset"),
        item(attempt, "SELECT 1", task_id=other.task_id),  # A's token for B's task
        item(attempt, "SELECT 1", capability="x.y.z"),
        item(other, rejected),
        item(other, "SELECT 1 FROM dataset", dataset_id=datasets["other"]),
        item(attempt, "SELECT block FROM dataset ORDER BY block", limit=3),
    ]
    before = await data_conn.fetchval("SELECT count(*) FROM data.query_audit")
    async with httpx.AsyncClient(timeout=30) as c:
        url = f"{q_settings.query_url}/v1/task/query-batch"
        r = await c.post(url, json={"queries": queries})
        empty = await c.post(url, json={"queries": []})
        too_many = await c.post(url, json={"queries": [queries[0]] * 257})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 200, 403, 401, 400, 403, 200]
    assert results[0]["result"]["rows"] == [[x["block"]] for x in t if x["value"] > 995]
    assert results[1]["result"]["rows"] == [[N]]
    assert results[4]["error"] == "sql_rejected" and rejected not in r.text
    assert results[6]["result"]["rows"] == [[0], [1], [2]] and results[6]["result"]["truncated"]
    assert attempt.token not in r.text and other.token not in r.text
    rows = await data_conn.fetch(
        "SELECT task_id, dataset_id, result_row_count, columns_accessed FROM data.query_audit"
        " ORDER BY id DESC LIMIT 3"
    )
    assert await data_conn.fetchval("SELECT count(*) FROM data.query_audit") == before + 3
    assert sorted((str(x["task_id"]), x["result_row_count"]) for x in rows) == sorted(
        [
            (attempt.task_id, len(results[0]["result"]["rows"])),
            (other.task_id, 1),
            (attempt.task_id, 3),
        ]
    )
    assert all(str(x["dataset_id"]) == ds for x in rows)
    assert empty.status_code == 400 and too_many.status_code == 400
