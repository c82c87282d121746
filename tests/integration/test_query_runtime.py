"""The DuckDB layer on its own: statements fed *past* the gate must still fail closed, and a
property test throws compositions of dangerous fragments at gate + runtime together."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_query import ATTACKS
from trace_platform.domain.sql_gate import SqlRejected, check_sql
from trace_platform.query.executor import ExecutorLimits, QueryFailed, execute

LIMITS = ExecutorLimits(timeout_seconds=5)
# Read-only introspection of the in-memory engine itself: DuckDB evaluates these (the gate
# rejects them), and they can only show the engine's own settings and the granted relation.
HARMLESS_AT_RUNTIME = {
    "SELECT current_setting('memory_limit')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",  # no secret exists and none can be persisted
    "SELECT * FROM query('SELECT 42')",
    "SELECT * FROM query_table('dataset')",
    "SELECT * FROM main.dataset",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM dataset\u200b",
}


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("canary")
    (root / "secret.csv").write_text("token\nCANARY-SECRET\n")
    pq.write_table(pa.table({"token": ["CANARY-SECRET"]}), root / "secret.parquet")
    data = root / "data.parquet"
    pq.write_table(pa.table({"x": list(range(10)), "y": [str(i) for i in range(10)]}), data)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    hits: list[int] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            hits.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield {"root": root, "data": str(data), "port": listener.getsockname()[1], "hits": hits}
    listener.close()


@pytest.fixture
def files(canary: dict[str, object]) -> Iterator[list[str]]:
    before = sorted(p.name for p in Path(str(canary["root"])).iterdir())
    yield [str(canary["data"])]
    assert sorted(p.name for p in Path(str(canary["root"])).iterdir()) == before, "a file appeared"


@pytest.mark.parametrize("sql", [a for a in ATTACKS if a not in HARMLESS_AT_RUNTIME])
def test_runtime_fails_closed_when_the_gate_is_bypassed(files: list[str], sql: str) -> None:
    with pytest.raises(QueryFailed):
        execute(files, sql, 10, LIMITS)


@pytest.mark.parametrize("sql", sorted(HARMLESS_AT_RUNTIME))
def test_runtime_introspection_reveals_nothing_outside(
    files: list[str], sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trace_platform.query import executor

    monkeypatch.chdir("/")  # as executor processes run: chdir before the database opens
    monkeypatch.setattr(executor, "_DATABASES", {})
    result = execute(files, sql, 1000, LIMITS)
    text = repr(result)
    assert "CANARY" not in text and "/etc" not in text and "/work" not in text
    assert "/root" not in text  # no home, secret or temp directory of the platform either


def test_no_secret_exists_in_the_engine(files: list[str]) -> None:
    assert execute(files, "SELECT * FROM duckdb_secrets()", 10, LIMITS)["rows"] == []


def test_runtime_blocks_file_and_url_reads_even_inside_query(
    files: list[str], canary: dict[str, object]
) -> None:
    root, port = canary["root"], canary["port"]
    for inner in (
        f"SELECT * FROM read_csv(''{root}/secret.csv'')",
        f"SELECT * FROM read_parquet(''{root}/secret.parquet'')",
        f"SELECT * FROM read_csv(''http://127.0.0.1:{port}/x.csv'')",
    ):
        with pytest.raises(QueryFailed):
            execute(files, f"SELECT * FROM query('{inner}')", 10, LIMITS)
    assert canary["hits"] == []


def test_runtime_interrupts_a_runaway_query(files: list[str]) -> None:
    slow = ExecutorLimits(timeout_seconds=0.5)
    sql = (
        "SELECT count(*) FROM dataset a, dataset b, dataset c, dataset d, dataset e, dataset f,"
        " dataset g, dataset h, dataset i, dataset j WHERE a.x + b.x + c.x >= 0"
    )
    with pytest.raises(QueryFailed) as err:
        execute(files, sql, 10, slow)
    assert err.value.code == "query_timeout"


FRAGMENTS = [
    "SELECT",
    "*",
    "x",
    "count(*)",
    "FROM",
    "dataset",
    "WHERE",
    "x > 1",
    ";",
    ",",
    "(",
    ")",
    "read_csv('{root}/secret.csv')",
    "read_parquet('{root}/secret.parquet')",
    "'{root}/secret.csv'",
    "read_text('{root}/secret.csv')",
    "glob('{root}/*')",
    "'http://127.0.0.1:{port}/x'",
    "read_json('http://127.0.0.1:{port}/x')",
    "COPY",
    "TO '{root}/out.csv'",
    "ATTACH '{root}/db.duckdb'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA",
    "SET",
    "enable_external_access=true",
    "UNION ALL",
    "WITH t AS",
    "AS t",
    "/*",
    "*/",
    "--\n",
    '"dataset"',
    "query(",
    "query_table(",
    "getenv('HOME')",
    "EXPORT DATABASE '{root}/e'",
    "LIMIT 1",
    "JOIN",
    "ON true",
    "CREATE TABLE z AS",
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12))
def test_random_dangerous_compositions_never_reach_files_or_network(
    canary: dict[str, object], parts: list[str]
) -> None:
    sql = " ".join(parts).format(root=canary["root"], port=canary["port"])
    before = sorted(p.name for p in Path(str(canary["root"])).iterdir())
    try:
        gated = check_sql(sql)
    except SqlRejected:
        gated = None
    for candidate in ([gated.sql] if gated else []) + [sql]:  # gate + runtime, and runtime alone
        try:
            result = execute([str(canary["data"])], candidate, 50, LIMITS)
        except QueryFailed:
            continue
        assert "CANARY" not in repr(result)
    assert sorted(p.name for p in Path(str(canary["root"])).iterdir()) == before
    assert canary["hits"] == []
