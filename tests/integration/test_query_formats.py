"""`POST /v1/query` answered as JSON, an Arrow IPC stream, CSV or Parquet (SPEC §21 item 1),
`trace dataset query --format` and the SDK's result (`to_arrow`, `to_pandas`, `to_polars`),
against a real `trace api`, a real query service and a real Postgres: the same values in
every format (an integer wider than 64 bits exact, a timestamp with zone, a list, a struct),
the same gate, refusals and audit row whatever the format."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import Proc, free_port, proc_env, start_query_service, wait_http_ready
from tests.helpers import echoed_sql, env_of, run_trace
from tests.integration.test_query import ATTACKS
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

FORMATS = ["json", "arrow", "csv", "parquet"]
WIDE = 10**24  # n * WIDE: a HUGEINT beyond 64 bits for n > 0
SQL = f"SELECT n, n::HUGEINT * {WIDE} AS wide, ts, tags, s FROM dataset ORDER BY n"
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def f_settings(settings: Settings) -> Settings:
    port = free_port()
    return settings.replace(
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
        api_port=free_port(),
        api_rate_per_second=1000.0,
        api_rate_burst=1000,
    )


@pytest.fixture(scope="module")
async def pool(f_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(f_settings.state_database_url or "", max_size=4)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def api(f_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    logs = tmp_path_factory.mktemp("fmtlogs")
    query = await start_query_service(f_settings, logs)
    proc = Proc(["api"], proc_env(f_settings), logs / "api.log").start()
    url = f"http://127.0.0.1:{f_settings.api_port}"
    await wait_http_ready(url, proc)
    yield url
    proc.stop()
    query.stop()


@pytest.fixture(scope="module")
async def key(pool: asyncpg.Pool, api: str) -> str:
    return (await create_user(env_of(pool), LITE_ORG_ID, "fmt-reader", "reader")).api_key


@pytest.fixture(scope="module")
async def dataset(f_settings: Settings, pool: asyncpg.Pool, tmp_path_factory: Any) -> str:
    path = tmp_path_factory.mktemp("fmt") / "t.parquet"
    table = pa.table(
        {
            "n": pa.array(range(5), pa.int64()),
            "label": [f'row "{i}", ok' for i in range(5)],
            "ts": pa.array([T0.replace(minute=i) for i in range(5)], pa.timestamp("us", "UTC")),
            "tags": pa.array([list(range(i)) for i in range(5)], pa.list_(pa.int64())),
            "s": [{"n": i, "label": f'row "{i}", ok'} for i in range(5)],
        }
    )
    pq.write_table(table, path)
    await register_dataset(
        pool, object_store_from_settings(f_settings), "typed", [path], LITE_ORG_ID
    )
    return "typed"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def normal(row: dict[str, Any]) -> tuple[Any, ...]:
    """One row as comparable values: integers as int (a wide one may come as text or a
    Decimal), the timestamp as an aware datetime, the list and the struct as values (CSV
    holds them as JSON text)."""

    def value(v: Any) -> Any:
        if hasattr(v, "tolist"):  # pandas holds a list as a numpy array
            return v.tolist()
        return orjson.loads(v) if isinstance(v, str) else v

    ts = row["ts"]
    ts = ts if isinstance(ts, datetime) else datetime.fromisoformat(ts)
    assert ts.tzinfo is not None  # the zone survives
    return (int(row["n"]), int(row["wide"]), ts, value(row["tags"]), value(row["s"]))


def rows_of(fmt: str, body: bytes) -> list[tuple[Any, ...]]:
    if fmt == "json":
        doc = orjson.loads(body)
        names = [c["name"] for c in doc["columns"]]
        return [normal(dict(zip(names, r, strict=True))) for r in doc["rows"]]
    if fmt == "csv":
        return [normal(r) for r in csv.DictReader(io.StringIO(body.decode()))]
    if fmt == "arrow":
        table = pa.ipc.open_stream(body).read_all()
    else:
        table = pq.read_table(pa.BufferReader(body))
    assert table.schema.field("wide").type == pa.decimal256(39, 0)  # exact, not a float
    assert table.schema.field("ts").type.tz is not None
    return [normal(r) for r in table.to_pylist()]


async def audit_rows(settings: Settings) -> int:
    data = await asyncpg.connect(settings.data_database_url)
    try:
        return int(await data.fetchval("SELECT count(*) FROM data.query_audit"))
    finally:
        await data.close()


async def test_the_same_query_gives_the_same_values_in_every_format_and_is_audited_once(
    api: str, key: str, dataset: str, f_settings: Settings
) -> None:
    answers = {}
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        for fmt in FORMATS:
            before = await audit_rows(f_settings)
            r = await http.post(
                "/v1/query",
                json={"dataset": dataset, "sql": SQL, "format": fmt},
                headers=bearer(key),
            )
            assert r.status_code == 200, r.text
            media = {"json": "application/json", "arrow": "application/vnd.apache.arrow.stream"}
            media |= {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
            assert r.headers["content-type"].startswith(media[fmt])
            if fmt != "json":
                assert r.headers["x-trace-truncated"] == "false"
            answers[fmt] = rows_of(fmt, r.content)
            assert await audit_rows(f_settings) == before + 1  # one audit row, any format
    expected = [
        (i, i * WIDE, T0.replace(minute=i), list(range(i)), {"n": i, "label": f'row "{i}", ok'})
        for i in range(5)
    ]
    for fmt in FORMATS:
        assert answers[fmt] == expected, fmt


async def test_accept_chooses_the_format_the_field_wins_and_unknown_ones_are_refused(
    api: str, key: str, dataset: str
) -> None:
    body = {"dataset": dataset, "sql": SQL}
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        r = await http.post(
            "/v1/query", json=body, headers=bearer(key) | {"Accept": "text/csv;q=0.9, */*"}
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        r = await http.post(
            "/v1/query",
            json=body | {"format": "parquet"},
            headers=bearer(key) | {"Accept": "application/vnd.apache.arrow.stream"},
        )
        assert r.status_code == 200 and r.content[:4] == b"PAR1"
        r = await http.post("/v1/query", json=body, headers=bearer(key) | {"Accept": "*/*"})
        assert r.status_code == 200 and r.json()["rows"]
        r = await http.post("/v1/query", json=body | {"format": "xml"}, headers=bearer(key))
        assert r.status_code == 400 and "format must be one of" in r.json()["detail"]
        r = await http.post(
            "/v1/query", json=body, headers=bearer(key) | {"Accept": "application/xml"}
        )
        assert (r.status_code, r.json()["error"]) == (406, "not_acceptable")
        assert "\n" not in r.json()["detail"]
        # a JSON answer keeps its 10,000 rows; an export may ask for more, and says when cut
        r = await http.post("/v1/query", json=body | {"limit": 10_001}, headers=bearer(key))
        assert r.status_code == 400
        r = await http.post(
            "/v1/query", json=body | {"limit": 2, "format": "arrow"}, headers=bearer(key)
        )
        assert r.headers["x-trace-truncated"] == "true"
        assert pa.ipc.open_stream(r.content).read_all().num_rows == 2


@pytest.mark.parametrize("fmt", FORMATS[1:])
async def test_every_refused_query_is_refused_the_same_way_in_every_format(
    api: str, key: str, dataset: str, fmt: str, f_settings: Settings
) -> None:
    refused = [
        *ATTACKS[:12],
        "SELECT * FROM dataset WHERE block IN (SELECT 1 FROM read_csv('/etc/passwd'))",
        "SELECT no_such_column_xyz FROM dataset",  # the engine's error, the SQL elided
        "SELECT * FROM not_a_relation_of_this_org",
    ]
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        before = await audit_rows(f_settings)
        for sql in refused:
            body = {"dataset": dataset, "sql": sql}
            as_json = await http.post("/v1/query", json=body, headers=bearer(key))
            other = await http.post("/v1/query", json=body | {"format": fmt}, headers=bearer(key))
            assert as_json.status_code in (400, 403, 404), (sql, as_json.text)
            assert (other.status_code, other.json()) == (as_json.status_code, as_json.json()), sql
            if "no_such_column_xyz" in sql:  # the engine's message, with the SQL elided
                assert not echoed_sql(sql, other.text, ("no_such_column_xyz", "dataset"))
        assert await audit_rows(f_settings) == before  # nothing refused was run


def test_the_sdk_result_converts_to_arrow_pandas_and_polars_with_the_json_values(
    api: str, key: str, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trace_platform.sdk import Client

    with Client(api, key) as trace:
        as_json = trace.query(SQL, dataset=dataset)
        assert as_json["rows"] == as_json.rows and as_json["truncated"] is False  # as before
        names = [c["name"] for c in as_json.columns]
        expected = [normal(dict(zip(names, r, strict=True))) for r in as_json.rows]
        exact = trace.query(SQL, dataset=dataset, format="arrow")
        assert [normal(r) for r in exact.to_arrow().to_pylist()] == expected
        assert [normal(dict(zip(names, r, strict=True))) for r in exact.rows] == expected
        frame = exact.to_pandas()
        assert [normal(r) for r in frame.to_dict("records")] == expected
        assert frame["wide"].tolist() == [Decimal(i * WIDE) for i in range(5)]
        polars = exact.to_polars()
        assert [normal(r) for r in polars.to_dicts()] == expected
        # a JSON answer converts too (its values, types inferred)
        assert as_json.to_arrow().column("n").to_pylist() == list(range(5))
        raw, truncated = trace.query_bytes(SQL, "csv", dataset=dataset)
        assert rows_of("csv", raw) == expected and truncated is False
        monkeypatch.setitem(sys.modules, "pandas", None)
        with pytest.raises(ImportError, match=r"trace-platform\[pandas\]"):
            exact.to_pandas()


def test_the_cli_writes_each_format_and_refuses_a_binary_one_to_a_terminal(
    f_settings: Settings, api: str, dataset: str, tmp_path: Any
) -> None:
    for fmt in FORMATS[1:]:
        out = tmp_path / f"answer.{fmt}"
        done = run_trace(
            f_settings, "dataset", "query", dataset, SQL, "--format", fmt, "--output", str(out)
        )
        assert done.returncode == 0, done.stderr
        assert rows_of(fmt, out.read_bytes())[4][1] == 4 * WIDE
    piped = run_trace(f_settings, "dataset", "query", dataset, SQL, "--format", "csv")
    assert piped.returncode == 0 and rows_of("csv", piped.stdout.encode())[1][1] == WIDE
    bad = run_trace(
        f_settings,
        "dataset",
        "query",
        dataset,
        "SELECT getenv('HOME')",
        "--format",
        "parquet",
        "-o",
        str(tmp_path / "x"),
    )
    assert bad.returncode != 0 and "getenv" not in bad.stderr
