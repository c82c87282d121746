"""`POST /v1/query` answered as JSON, an Arrow IPC stream, CSV or Parquet (SPEC §21 item 1),
`trace dataset query --format` and the SDK's result (`to_arrow`, `to_pandas`, `to_polars`),
against a real `trace api`, a real query service and a real Postgres: the same values in
every format (an integer wider than 64 bits and a decimal exact, a timestamp with zone, a
list, a struct), the same gate, refusals and audit row whatever the format; a large answer
streams through both processes with bounded memory (their RSS sampled from /proc), and one
cut at TRACE_QUERY_MAX_EXPORT_ROWS cannot be read as complete."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import ApiStack, api_settings, api_stack, wait_until
from tests.helpers import echoed_sql, env_of, run_trace
from tests.integration.test_query import ATTACKS
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID
from trace_platform.query.engine import STREAM_CHUNK_BYTES

FORMATS = ["json", "arrow", "csv", "parquet"]
WIDE = 10**24  # n * WIDE: a HUGEINT beyond 64 bits for n > 0
SQL = (
    f"SELECT n, n::HUGEINT * {WIDE} AS wide, ts, tags, s, (n * 1.25)::DECIMAL(38, 4) AS dec "
    "FROM dataset ORDER BY n"
)
BIG_ROWS = 2_000_000
CAP = 3_000_000  # this module's TRACE_QUERY_MAX_EXPORT_ROWS
MB = 1024 * 1024
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def f_settings(settings: Settings) -> Settings:
    return api_settings(settings, query_max_export_rows=CAP)


@pytest.fixture(scope="module")
async def pool(f_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(f_settings.state_database_url or "", max_size=4)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def stack(
    f_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ApiStack]:
    async with api_stack(f_settings, tmp_path_factory.mktemp("fmtlogs")) as s:
        yield s


@pytest.fixture(scope="module")
def api(stack: ApiStack) -> str:
    return stack.url


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
    dec = Decimal(str(row["dec"]))  # JSON and CSV: its exact text; Arrow, Parquet: a Decimal
    return (int(row["n"]), int(row["wide"]), ts, value(row["tags"]), value(row["s"]), dec)


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
    # Exact, not a float: 39 digits in Arrow; DECIMAL(38, 0) in Parquet, which DuckDB reads
    # back exactly (it takes a 39-digit decimal for a DOUBLE)
    wide = pa.decimal256(39, 0) if fmt == "arrow" else pa.decimal128(38, 0)
    assert table.schema.field("wide").type == wide
    assert table.schema.field("ts").type.tz is not None
    assert table.schema.field("dec").type == pa.decimal128(38, 4)
    return [normal(r) for r in table.to_pylist()]


async def audit_rows(settings: Settings) -> int:
    data = await asyncpg.connect(settings.data_database_url)
    try:
        return int(await data.fetchval("SELECT count(*) FROM data.query_audit"))
    finally:
        await data.close()


async def test_the_same_query_gives_the_same_values_in_every_format_and_is_audited_once(
    api: str, key: str, dataset: str, f_settings: Settings, tmp_path: Path
) -> None:
    answers = {}
    parquet_body = b""
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
            if fmt == "parquet":
                parquet_body = r.content
            assert await audit_rows(f_settings) == before + 1  # one audit row, any format
    expected = [
        (
            i,
            i * WIDE,
            T0.replace(minute=i),
            list(range(i)),
            {"n": i, "label": f'row "{i}", ok'},
            Decimal(i) * Decimal("1.25"),
        )
        for i in range(5)
    ]
    for fmt in FORMATS:
        assert answers[fmt] == expected, fmt
    # DuckDB reads the Parquet answer back exactly (a DAG's partitions are such files): a
    # 39-digit decimal would come back as a DOUBLE.
    path = tmp_path / "answer.parquet"
    path.write_bytes(parquet_body)
    back = duckdb.sql(f"SELECT n, wide, typeof(wide) FROM '{path}' ORDER BY n").fetchall()
    assert [(n, int(w)) for n, w, _ in back] == [(i, i * WIDE) for i in range(5)]
    assert {t for *_, t in back} == {"DECIMAL(38,0)"}


async def test_accept_weighs_the_formats_the_field_wins_and_unacceptable_ones_are_refused(
    api: str, key: str, dataset: str
) -> None:
    body = {"dataset": dataset, "sql": SQL}
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        # RFC 9110 weights: the highest q wins; a wildcard weighs what nothing names
        for accept, media in [
            ("application/json;q=0.5, text/csv;q=0.9, */*;q=0.1", "text/csv"),
            ("text/csv;q=0.9, */*", "application/json"),
            ("application/json;q=0, application/*", "application/vnd.apache.arrow.stream"),
        ]:
            r = await http.post("/v1/query", json=body, headers=bearer(key) | {"Accept": accept})
            assert r.status_code == 200 and r.headers["content-type"].startswith(media), accept
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
        for accept in ("application/xml", "*/*;q=0", "application/json;q=0, text/html"):
            r = await http.post("/v1/query", json=body, headers=bearer(key) | {"Accept": accept})
            assert (r.status_code, r.json()["error"]) == (406, "not_acceptable"), accept
            assert "\n" not in r.json()["detail"] and "text/csv" in r.json()["detail"]
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


def test_the_cli_writes_each_format_here_and_through_the_api_and_leaves_no_refused_file(
    f_settings: Settings, api: str, key: str, dataset: str, tmp_path: Any
) -> None:
    remote = f_settings.replace(api_url=api, api_key=key)
    for where, label in ((f_settings, "here"), (remote, "api")):
        for fmt in FORMATS[1:]:
            out = tmp_path / f"{label}.{fmt}"
            done = run_trace(
                where, "dataset", "query", dataset, SQL, "--format", fmt, "--output", str(out)
            )
            assert done.returncode == 0, done.stderr
            assert rows_of(fmt, out.read_bytes())[4][1] == 4 * WIDE
        piped = run_trace(where, "dataset", "query", dataset, SQL, "--format", "csv")
        assert piped.returncode == 0 and rows_of("csv", piped.stdout.encode())[1][1] == WIDE
        bad = run_trace(
            where,
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
        assert not list(tmp_path.glob("x*"))  # refused: no file, nor a part of one


@pytest.fixture(scope="module")
async def big(f_settings: Settings, pool: asyncpg.Pool, tmp_path_factory: Any) -> str:
    """BIG_ROWS rows: a number and a label of 16 characters."""
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    n = pa.array(range(BIG_ROWS), pa.int64())
    label = pc.utf8_lpad(pc.cast(n, pa.string()), 16, "0")
    pq.write_table(pa.table({"n": n, "label": label}), path)
    await register_dataset(pool, object_store_from_settings(f_settings), "big", [path], LITE_ORG_ID)
    return "big"


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since its reset) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


async def fetch_to(
    http: httpx.AsyncClient, body: dict[str, Any], key: str, out: Path
) -> httpx.Response:
    """POST /v1/query, its body written to `out` as it arrives (never held here)."""
    async with http.stream("POST", "/v1/query", json=body, headers=bearer(key)) as r:
        with out.open("wb") as f:
            async for chunk in r.aiter_raw():
                f.write(chunk)
    return r


async def test_a_large_answer_streams_through_the_api_and_the_query_service_in_bounded_memory(
    stack: ApiStack, key: str, big: str, tmp_path: Path, f_settings: Settings
) -> None:
    pids = {"api": stack.api.popen.pid, "query": stack.query.popen.pid}  # type: ignore[union-attr]
    sql = f"SELECT n, n::HUGEINT * {WIDE} AS wide, label FROM big"
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as http:
        # warm: both processes have served a streamed answer once (code loaded, pools open)
        r = await fetch_to(
            http, {"sql": sql, "format": "arrow", "limit": 200_000}, key, tmp_path / "w"
        )
        assert r.status_code == 200 and r.headers["x-trace-truncated"] == "unknown"
        idle = {name: memory_kb(pid)["VmRSS"] for name, pid in pids.items()}
        for pid in pids.values():
            reset_peak(pid)
        sampled = dict(idle)
        streaming = True

        async def sample() -> None:
            while streaming:
                for name, pid in pids.items():
                    sampled[name] = max(sampled[name], memory_kb(pid)["VmRSS"])
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        before = await audit_rows(f_settings)
        out = tmp_path / "answer.arrow"
        try:
            r = await fetch_to(http, {"sql": sql, "format": "arrow"}, key, out)
        finally:
            streaming = False
            await sampler
    peak = {name: memory_kb(pid)["VmHWM"] for name, pid in pids.items()}
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/vnd.apache.arrow.stream")
    assert "content-length" not in r.headers and r.headers["x-trace-truncated"] == "unknown"
    size = out.stat().st_size
    table = pa.ipc.open_stream(pa.memory_map(str(out))).read_all()
    assert table.num_rows == BIG_ROWS and size > 100 * MB  # far above one 63 MiB frame
    assert table.schema.field("wide").type == pa.decimal256(39, 0)
    for i in (0, 1, BIG_ROWS // 2, BIG_ROWS - 1):
        row = table.slice(i, 1).to_pylist()[0]
        assert (int(row["wide"]), row["label"]) == (row["n"] * WIDE, f"{row['n']:016d}")
    assert sorted(table.column("n").to_pylist()[:: BIG_ROWS // 8]) == list(
        range(0, BIG_ROWS, BIG_ROWS // 8)
    )
    assert await audit_rows(f_settings) == before + 1
    for name in pids:
        grew_mb = (max(peak[name], sampled[name]) - idle[name]) / 1024
        print(
            f"{name}: idle {idle[name] / 1024:.0f} MB, peak +{grew_mb:.0f} MB ({size / MB:.0f} MB)"
        )
        assert grew_mb < 200, (name, idle[name], peak[name], sampled[name])


def test_the_cli_streams_a_local_export_to_its_output_with_limit_and_cap_as_before(
    f_settings: Settings, big: str, tmp_path: Path
) -> None:
    """`trace dataset query --format` at the installation writes the executor's chunks as
    they come (it made one body of at most 63 MiB): the whole answer, many chunks long,
    parses with every row; --limit and TRACE_QUERY_MAX_EXPORT_ROWS cut it as before, into a
    whole file that says so on stderr."""
    rows = 400_000  # about 10 MB of Arrow: dozens of the executor's 256 KiB chunks
    out = tmp_path / "part.arrow"
    sql = f"SELECT n, n::HUGEINT * {WIDE} AS wide, label FROM dataset WHERE n < {rows}"
    done = run_trace(f_settings, "dataset", "query", big, sql, "--format", "arrow", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "truncated" not in done.stderr and not list(tmp_path.glob("*.part"))
    assert out.stat().st_size > 30 * STREAM_CHUNK_BYTES
    table = pa.ipc.open_stream(pa.memory_map(str(out))).read_all()
    assert table.num_rows == rows and table.schema.field("wide").type == pa.decimal256(39, 0)
    assert pc.count_distinct(table.column("n")).as_py() == rows
    assert pc.sum(table.column("n")).as_py() == rows * (rows - 1) // 2
    last = table.slice(rows - 1, 1).to_pylist()[0]
    assert int(last["wide"]) == last["n"] * WIDE and last["label"] == f"{last['n']:016d}"
    # --limit: that many rows, whole, and the note that rows were left out (to stdout too)
    piped = run_trace(
        f_settings, "dataset", "query", big, "SELECT n FROM dataset", "--format", "csv",
        "--limit", "150000",
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.count("\n") == 150_001 and "truncated" in piped.stderr
    # TRACE_QUERY_MAX_EXPORT_ROWS: whole up to there, and says so; exit 0 as before
    capped = f_settings.replace(query_max_export_rows=120_000)
    out = tmp_path / "capped.parquet"
    done = run_trace(
        capped, "dataset", "query", big, "SELECT n FROM dataset", "--format", "parquet",
        "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0 and "truncated" in done.stderr, done.stderr
    assert pq.ParquetFile(out).metadata.num_rows == 120_000


async def test_an_answer_cut_at_the_row_cap_is_never_taken_for_complete(
    api: str, key: str, big: str, tmp_path: Path, f_settings: Settings
) -> None:
    # CAP + 1,000,000 rows asked with no limit: the body ends without its terminating chunk
    sql = "SELECT a.n, b.k FROM big a, (SELECT 1 AS k UNION ALL SELECT 2) b"
    async with httpx.AsyncClient(base_url=api, timeout=120) as http:
        before = await audit_rows(f_settings)
        for fmt in ("csv", "arrow"):
            with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|without sending"):
                await fetch_to(http, {"sql": sql, "format": fmt}, key, tmp_path / "cut")
            data = (tmp_path / "cut").read_bytes()
            if fmt == "csv":
                assert 1_000_000 < data.count(b"\n") <= CAP  # rows arrived, then the cut
        assert await audit_rows(f_settings) == before + 2  # each ran, and is audited
        from trace_platform.sdk import AnswerIncomplete, Client

        with Client(api, key) as trace, pytest.raises(AnswerIncomplete, match="cut"):
            await asyncio.to_thread(trace.query_bytes, sql, "arrow")
        # the same query with a limit of the caller's own is a complete answer of that many:
        # streamed (CSV, ~20 MB), or whole when that small (Parquet, compressed), which
        # then says rows were left out
        r = await fetch_to(
            http, {"sql": sql, "format": "csv", "limit": 2_500_000}, key, tmp_path / "c"
        )
        assert r.status_code == 200 and r.headers["x-trace-truncated"] == "unknown"
        assert (tmp_path / "c").read_bytes().count(b"\n") == 2_500_001  # and its header row
        r = await fetch_to(
            http, {"sql": sql, "format": "parquet", "limit": 2_500_000}, key, tmp_path / "p"
        )
        assert r.status_code == 200 and r.headers["x-trace-truncated"] == "true"
        assert pq.ParquetFile(tmp_path / "p").metadata.num_rows == 2_500_000
        # a small answer past the cap is sent whole and says it was cut
        small = "SELECT a.n FROM big a, big b LIMIT 10"
        r = await http.post(
            "/v1/query", json={"sql": small, "format": "csv", "limit": 5}, headers=bearer(key)
        )
        assert r.headers["x-trace-truncated"] == "true" and r.text.count("\n") == 6


async def test_a_stream_its_client_abandons_frees_its_executor_and_is_audited(
    api: str, key: str, big: str, f_settings: Settings
) -> None:
    sql = f"SELECT n, n::HUGEINT * {WIDE} AS wide, label FROM big"
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        before = await audit_rows(f_settings)
        for _ in range(f_settings.query_executors + 2):  # more than the pool holds
            async with http.stream(
                "POST", "/v1/query", json={"sql": sql, "format": "csv"}, headers=bearer(key)
            ) as r:
                assert r.status_code == 200 and r.headers["x-trace-truncated"] == "unknown"
                got = 0
                async for chunk in r.aiter_raw():
                    got += len(chunk)
                    if got > 8 * MB:
                        break  # hang up part-way
        # each was run and is audited, its executor killed: the pool serves the next query
        r = await http.post(
            "/v1/query", json={"sql": "SELECT count(*) AS c FROM big"}, headers=bearer(key)
        )
        assert r.status_code == 200 and r.json()["rows"] == [[BIG_ROWS]]

        async def audited() -> bool:
            return await audit_rows(f_settings) == before + f_settings.query_executors + 3

        await wait_until(audited, 10, 0.05, "audit rows of the abandoned streams")
