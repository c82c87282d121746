"""The runtime layers on their own, statements fed *past* the gate:

- the DuckDB layer (the engine in this process, both routes) must fail closed or reveal
  nothing outside the granted data;
- the executor sandbox (a real executor process, DuckDB's own reader over the granted files)
  must hold even where DuckDB would allow something (`COPY`/`glob` inside the allowed
  directory), and even for a DuckDB with none of our settings (a probe in the same sandbox);
- a property test throws compositions of dangerous fragments at gate + engine together.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_query import ATTACKS
from trace_platform.adapters.local_store import LocalObjectStore
from trace_platform.domain.sql_gate import SqlRejected, check_sql
from trace_platform.query.engine import ROUTE_ARROW, ROUTE_READER, BoundRelation, Engine
from trace_platform.query.executor import (
    Binding,
    ExecutorLimits,
    ExecutorPool,
    ExecutorUnavailable,
    QueryFailed,
    QueryResult,
    Relation,
    launch_command,
    library_dir,
)
from trace_platform.sandbox import Isolation, detect_isolation


def one(key: str, files: tuple[str, ...]) -> Binding:
    """A binding of one relation read as `dataset`."""
    return Binding((Relation(("dataset",), key, files),))


LIMITS = ExecutorLimits(timeout_seconds=5)
# A query that runs until its time limit interrupts it, burning CPU all along.
BURN = (
    "SELECT count(*) FROM dataset a, dataset b, dataset c, dataset d, dataset e, dataset f,"
    " dataset g, dataset h, dataset i, dataset j WHERE a.x + b.x + c.x >= 0"
)
ROUTES = [ROUTE_READER, ROUTE_ARROW]
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
# What DuckDB's own reader would allow inside its allowed directory, aimed at the sandbox's
# view of it (/data) and at host paths next to the granted file.
INSIDE_THE_ALLOWED_DIRECTORY = [
    "COPY (SELECT 1) TO '/data/out.csv'",
    "COPY dataset TO '/data/part-000-00001.parquet'",
    "ATTACH '/data/new.duckdb' AS n",
    "EXPORT DATABASE '/data/export'",
    "SELECT * FROM read_csv('/data/stray-secret.csv')",
    "SELECT * FROM read_text('/data/../etc/hostname')",
    "SELECT * FROM read_text('/data/./../proc/self/environ')",
    "SELECT * FROM glob('/data/../*')",
    "SELECT * FROM read_csv('{version}/stray-secret.csv')",
    "SELECT * FROM read_parquet('{version}/data.parquet')",
]


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("canary")
    (root / "secret.csv").write_text("token\nCANARY-SECRET\n")
    pq.write_table(pa.table({"token": ["CANARY-SECRET"]}), root / "secret.parquet")
    table = pa.table({"x": list(range(10)), "y": [str(i) for i in range(10)]})
    granted = root / "granted"  # the DuckDB-layer tests' allowed directory: the data only
    granted.mkdir()
    pq.write_table(table, granted / "data.parquet")
    # A dataset version directory with a file that is *not* in the manifest next to the
    # granted one: the sandbox mounts the granted files one by one, so it never sees it.
    version = root / "version"
    version.mkdir()
    pq.write_table(table, version / "data.parquet")
    (version / "stray-secret.csv").write_text("token\nCANARY-STRAY\n")
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
    yield {
        "root": root,
        "data": str(granted / "data.parquet"),
        "version": version,
        "port": listener.getsockname()[1],
        "hits": hits,
    }
    listener.close()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def engines(canary: dict[str, Any]) -> Iterator[dict[str, Engine]]:
    # As in an executor process, whose working directory is "/": DuckDB lists its own
    # (in-memory) database's would-be paths, relative to it, among the allowed ones.
    cwd = os.getcwd()
    os.chdir("/")
    try:
        engines = {
            route: Engine(route, [BoundRelation(("dataset",), (canary["data"],))], LIMITS)
            for route in ROUTES
        }
    finally:
        os.chdir(cwd)
    yield engines


@pytest.fixture
def untouched(canary: dict[str, Any]) -> Iterator[None]:
    before = listing(canary["root"])
    yield
    assert listing(canary["root"]) == before, "a file appeared or vanished"
    assert canary["hits"] == [], "something reached the network"


def run(engine: Engine, sql: str, limit: int = 50) -> dict[str, Any]:
    body, _, _ = engine.query(sql, limit)
    result: dict[str, Any] = orjson.loads(body)
    return result


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("sql", [a for a in ATTACKS if a not in HARMLESS_AT_RUNTIME])
def test_engine_fails_closed_when_the_gate_is_bypassed(
    engines: dict[str, Engine], untouched: None, route: str, sql: str
) -> None:
    with pytest.raises(QueryFailed):
        run(engines[route], sql)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("sql", sorted(HARMLESS_AT_RUNTIME))
def test_engine_introspection_reveals_nothing_outside(
    engines: dict[str, Engine], untouched: None, route: str, sql: str
) -> None:
    text = repr(run(engines[route], sql, 1000)["rows"])
    assert "CANARY" not in text and "/etc" not in text and "/work" not in text
    assert "secret.csv" not in text and "stray" not in text


@pytest.mark.parametrize("route", ROUTES)
def test_engine_has_no_secret_and_answers_from_the_granted_file(
    engines: dict[str, Engine], route: str
) -> None:
    assert run(engines[route], "SELECT * FROM duckdb_secrets()")["rows"] == []
    result = run(engines[route], "SELECT count(*), sum(x) FROM dataset WHERE x > 4")
    assert result["rows"] == [[5, 35]]


@pytest.mark.parametrize("route", ROUTES)
def test_engine_blocks_file_and_url_reads_even_inside_query(
    engines: dict[str, Engine], canary: dict[str, Any], untouched: None, route: str
) -> None:
    root, port = canary["root"], canary["port"]
    for inner in (
        f"SELECT * FROM read_csv(''{root}/secret.csv'')",
        f"SELECT * FROM read_parquet(''{root}/secret.parquet'')",
        f"SELECT * FROM read_csv(''http://127.0.0.1:{port}/x.csv'')",
    ):
        with pytest.raises(QueryFailed):
            run(engines[route], f"SELECT * FROM query('{inner}')")


def test_engine_interrupts_a_runaway_query(canary: dict[str, Any]) -> None:
    engine = Engine(
        ROUTE_READER,
        [BoundRelation(("dataset",), (canary["data"],))],
        ExecutorLimits(timeout_seconds=0.5),
    )
    sql = (
        "SELECT count(*) FROM dataset a, dataset b, dataset c, dataset d, dataset e, dataset f,"
        " dataset g, dataset h, dataset i, dataset j WHERE a.x + b.x + c.x >= 0"
    )
    with pytest.raises(QueryFailed) as err:
        run(engine, sql)
    assert err.value.code == "query_timeout"
    assert run(engine, "SELECT count(*) FROM dataset")["rows"] == [[10]]  # still usable


def test_result_bytes_are_capped_and_marked_truncated(canary: dict[str, Any]) -> None:
    engine = Engine(ROUTE_READER, [BoundRelation(("dataset",), (canary["data"],))], LIMITS)
    body, rows, truncated = engine.query("SELECT repeat('x', 2000000) AS s FROM dataset", limit=10)
    assert truncated and rows == 5 and len(body) <= 10 * 1024 * 1024 + 200
    assert orjson.loads(body)["truncated"] is True


# --- the executor sandbox -----------------------------------------------------------------


@pytest.fixture(scope="module")
async def sandboxed(canary: dict[str, Any]) -> AsyncIterator[tuple[ExecutorPool, Binding]]:
    isolation = detect_isolation()
    assert isolation.strong, f"the executor sandbox needs bubblewrap here: {isolation.features}"
    pool = ExecutorPool(1, LIMITS, isolation)
    binding = one("canary@v1", (str(canary["version"] / "data.parquet"),))
    yield pool, binding
    await pool.close()


async def sandboxed_query(
    sandboxed: tuple[ExecutorPool, Binding], sql: str, limit: int = 50
) -> dict[str, Any]:
    pool, binding = sandboxed
    result = await pool.run(binding, sql, limit)
    out: dict[str, Any] = orjson.loads(result.body)
    return out


@pytest.mark.parametrize(
    "sql",
    [a for a in ATTACKS if a not in HARMLESS_AT_RUNTIME] + INSIDE_THE_ALLOWED_DIRECTORY,
)
async def test_sandboxed_executor_fails_closed_when_the_gate_is_bypassed(
    sandboxed: tuple[ExecutorPool, Binding],
    canary: dict[str, Any],
    untouched: None,
    sql: str,
) -> None:
    with pytest.raises(QueryFailed):
        await sandboxed_query(sandboxed, sql.format(version=canary["version"]))


async def test_sandboxed_executor_lists_and_reads_only_the_granted_files(
    sandboxed: tuple[ExecutorPool, Binding], untouched: None
) -> None:
    # glob and wildcard reads are allowed inside the allowed directory: there is nothing
    # else in it to find.
    listed = await sandboxed_query(sandboxed, "SELECT * FROM glob('/data/**')")
    assert listed["rows"] == [["/data/part-000-00000.parquet"]]
    wild = await sandboxed_query(sandboxed, "SELECT count(*) FROM read_parquet('/data/*')")
    assert wild["rows"] == [[10]]
    # A small relation is loaded into memory at bind (a table); nothing in the catalog names
    # a path of the host.
    views = await sandboxed_query(sandboxed, "SELECT sql FROM duckdb_views() WHERE NOT internal")
    tables = await sandboxed_query(sandboxed, "SELECT table_name, sql FROM duckdb_tables()")
    assert [r[0] for r in tables["rows"]] == ["dataset"]
    assert "canary" not in repr(views) + repr(tables)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


async def test_pool_recycles_idle_executors_and_replaces_dead_ones(
    canary: dict[str, Any],
) -> None:
    pool = ExecutorPool(1, LIMITS, detect_isolation())
    a = one("a@1", (str(canary["version"] / "data.parquet"),))
    b = one("b@1", (canary["data"],))
    try:
        first = await pool.run(a, "SELECT count(*) FROM dataset", 5)
        assert first.rows == 1 and pool.live == 1
        # The only executor is bound to `a`; `b` recycles it (least recently used, idle).
        other = await pool.run(b, "SELECT sum(x) FROM dataset", 5)
        assert orjson.loads(other.body)["rows"] == [[45]] and pool.live == 1
        (executor,) = pool.idle.values()
        assert executor.binding == b
        executor.proc.kill()  # dies while idle
        await executor.proc.wait()
        again = await pool.run(b, "SELECT max(x) FROM dataset", 5)
        assert orjson.loads(again.body)["rows"] == [[9]] and pool.live == 1
        # Killed and asked at once, before its exit is even noticed: one retry on a fresh
        # executor answers (queries only read, so that is safe).
        (executor,) = pool.idle.values()
        for pid in descendants(executor.proc.pid):  # the engine inside the sandbox dies
            os.kill(pid, signal.SIGKILL)
        last = await pool.run(b, "SELECT min(x) FROM dataset", 5)
        assert orjson.loads(last.body)["rows"] == [[0]] and pool.live == 1
        assert next(iter(pool.idle.values())) is not executor
    finally:
        await pool.close()


async def test_a_cancelled_query_never_hands_its_reply_to_the_next(
    canary: dict[str, Any],
) -> None:
    pool = ExecutorPool(1, ExecutorLimits(timeout_seconds=3), detect_isolation())
    binding = one("a@1", (canary["data"],))
    slow_sql = (
        "SELECT count(*) FROM dataset a, dataset b, dataset c, dataset d, dataset e, dataset f,"
        " dataset g, dataset h WHERE a.x + b.x >= 0"
    )
    try:
        await pool.run(binding, "SELECT 1", 1)  # started and bound
        slow = asyncio.create_task(pool.run(binding, slow_sql, 1))
        while pool.idle:  # until the slow query has taken the executor and been sent
            await asyncio.sleep(0.005)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        result = await pool.run(binding, "SELECT 'fresh' AS answer", 1)
        assert orjson.loads(result.body)["rows"] == [["fresh"]]
    finally:
        await pool.close()


async def test_without_bubblewrap_executors_take_the_arrow_route(
    canary: dict[str, Any], untouched: None
) -> None:
    weak = Isolation(bwrap=None, drop_uid=False, features={"filesystem_view": False})
    pool = ExecutorPool(1, LIMITS, weak)
    binding = one("a@1", (canary["data"],))
    try:
        result = await pool.run(binding, "SELECT sum(x) FROM dataset WHERE x < 5", 5)
        assert orjson.loads(result.body)["rows"] == [[10]]
        assert next(iter(pool.idle.values())).route == ROUTE_ARROW
        for sql in (
            f"SELECT * FROM read_parquet('{canary['data']}')",  # the granted file, by path
            f"SELECT * FROM read_csv('{canary['root']}/secret.csv')",
            "SELECT * FROM glob('/*')",
        ):
            with pytest.raises(QueryFailed):
                await pool.run(binding, sql, 5)
    finally:
        await pool.close()


async def test_an_executor_retires_long_before_its_cpu_limit(canary: dict[str, Any]) -> None:
    # RLIMIT_CPU counts a process's whole life: past half of it, the engine answers and exits,
    # and the pool starts a fresh executor for the next query.
    # One thread and a 1 s time limit: a burn costs at most ~1 s of CPU, so the engine crosses
    # half of its 4 s limit (and retires) at least a second before the kernel would kill it.
    limits = ExecutorLimits(threads=1, timeout_seconds=1.0, cpu_seconds=4)
    pool = ExecutorPool(1, limits, detect_isolation())
    binding = one("a@1", (canary["data"],))
    try:
        for _ in range(12):  # under load a burn may get less CPU than its wall time
            with pytest.raises(QueryFailed) as err:  # never a killed executor
                await pool.run(binding, BURN, 1)
            assert err.value.code == "query_timeout"
            if not pool.idle:
                break
        assert not pool.idle and pool.live == 0  # retired, not kept
        fresh = await pool.run(binding, "SELECT count(*) FROM dataset", 1)
        assert orjson.loads(fresh.body)["rows"] == [[10]]
    finally:
        await pool.close()


async def test_a_batch_is_answered_in_order_even_across_a_retiring_executor(
    canary: dict[str, Any],
) -> None:
    # One frame each way per batch; each query answered as if alone. Past half of its CPU
    # limit the engine answers and exits part-way: the rest of the batch runs, in order, on
    # a fresh executor, none lost and none run twice.
    from trace_platform.metrics import QUERY_EXECUTOR_STARTS

    limits = ExecutorLimits(threads=1, timeout_seconds=1.0, cpu_seconds=4)
    pool = ExecutorPool(1, limits, detect_isolation())
    binding = one("a@1", (canary["data"],))
    queries = [
        ("SELECT count(*) FROM dataset", 5),
        ("SELECT CAST('not a number' AS INTEGER) FROM dataset", 5),
        *[(BURN, 1)] * 5,
        ("SELECT x FROM dataset ORDER BY x", 3),
    ]
    started = sum(QUERY_EXECUTOR_STARTS.labels(r, "ok")._value.get() for r in ROUTES)
    try:
        answers = await pool.run_many(binding, queries, 5.0)
        assert len(answers) == len(queries)
        first, failed, *burns, last = answers
        assert isinstance(first, QueryResult) and orjson.loads(first.body)["rows"] == [[10]]
        assert isinstance(failed, QueryFailed) and failed.code == "query_error"
        assert all(isinstance(b, QueryFailed) and b.code == "query_timeout" for b in burns)
        assert isinstance(last, QueryResult) and orjson.loads(last.body)["rows"] == [[0], [1], [2]]
        assert last.truncated
        now = sum(QUERY_EXECUTOR_STARTS.labels(r, "ok")._value.get() for r in ROUTES)
        assert now - started >= 2  # it retired part-way and a fresh one took the rest
        assert pool.live <= 1
    finally:
        await pool.close()


async def test_a_file_the_executor_cannot_read_fails_its_start_clearly(
    canary: dict[str, Any], tmp_path: Path
) -> None:
    isolation = detect_isolation()
    assert isolation.drop_uid, "this host runs the service as root: executors drop their uid"
    private = tmp_path / "private.parquet"
    pq.write_table(pa.table({"x": [1]}), private)
    private.chmod(0o600)  # root's own: not readable by the executor's uid
    pool = ExecutorPool(1, LIMITS, isolation)
    try:
        with pytest.raises(ExecutorUnavailable):
            await pool.run(one("p@1", (str(private),)), "SELECT * FROM dataset", 1)
        assert pool.live == 0
    finally:
        await pool.close()


async def test_the_local_store_writes_files_the_executor_can_read(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    info = await store.put_bytes(store.uri_for("datasets/a/b/x.parquet"), b"PAR1")
    assert stat.S_IMODE(os.stat(store.path_of(info.uri)).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "objects").st_mode) == 0o700


PROBE = r"""
import json, os, socket, sys
sys.path.insert(0, "/opt/trace/lib")
report = {"uid": os.getuid(), "env": dict(os.environ), "root": sorted(os.listdir("/")),
          "data": sorted(os.listdir("/data"))}
def attempt(name, fn):
    try:
        fn()
        report[name] = "allowed"
    except Exception as exc:
        report[name] = type(exc).__name__
attempt("write_data", lambda: open("/data/new", "w").write("x"))
attempt("write_root", lambda: open("/new", "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/new", "w").write("x"))
attempt("overwrite_granted", lambda: open("/data/part-000-00000.parquet", "r+b").write(b"x"))
attempt("read_host_file", lambda: open(sys.argv[1]).read())
attempt("connect", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[2])), 2))
report["host_root_visible"] = os.path.exists(sys.argv[3])
import duckdb  # a DuckDB with none of the engine's settings: external access on
con = duckdb.connect()
con.execute("PRAGMA disable_progress_bar")
attempt("duckdb_copy", lambda: con.execute("COPY (SELECT 1) TO '/data/out.csv'"))
attempt("duckdb_attach", lambda: con.execute("ATTACH '/data/x.duckdb' AS x"))
report["duckdb_glob"] = [r[0] for r in con.execute("SELECT * FROM glob('/data/**')").fetchall()]
report["duckdb_host"] = [r[0] for r in con.execute(f"SELECT * FROM glob('{sys.argv[3]}/**')").fetchall()]
print(json.dumps(report))
"""


async def test_the_sandbox_holds_for_a_duckdb_without_our_settings(
    canary: dict[str, Any], untouched: None
) -> None:
    isolation = detect_isolation()
    binding = one("probe", (str(canary["version"] / "data.parquet"),))
    cmd, _, route = launch_command(
        isolation,
        binding,
        65533,
        program=[
            "-I",
            "-c",
            PROBE,
            str(canary["root"] / "secret.csv"),
            str(canary["port"]),
            str(canary["root"]),
        ],
    )
    assert route == ROUTE_READER
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={}
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    report = json.loads(out.splitlines()[-1])
    assert report["uid"] != 0
    assert set(report["env"]) <= {"PWD", "LC_CTYPE"}  # set by bwrap and Python themselves
    assert report["data"] == ["part-000-00000.parquet"]  # not the stray file next to it
    assert "home" not in report["root"] and "tmp" not in report["root"]
    for name in (
        "write_data",
        "write_root",
        "write_tmp",
        "overwrite_granted",
        "read_host_file",
        "connect",
        "duckdb_copy",
        "duckdb_attach",
    ):
        assert report[name] != "allowed", name
    assert report["duckdb_glob"] == ["/data/part-000-00000.parquet"]
    assert report["host_root_visible"] is False and report["duckdb_host"] == []


def test_the_engine_library_directory_is_the_services_own() -> None:
    # The sandbox mounts exactly this directory read-only as the engine's libraries.
    assert Path(library_dir(), "duckdb").is_dir()
    assert os.path.realpath(sys.prefix) != "/"


# --- gate + engine, composed at random ------------------------------------------------------

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
    "glob('{root}/granted/../*')",
    "'http://127.0.0.1:{port}/x'",
    "read_json('http://127.0.0.1:{port}/x')",
    "COPY",
    "TO '{root}/granted/out.csv'",
    "ATTACH '{root}/granted/db.duckdb'",
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
    canary: dict[str, Any], engines: dict[str, Engine], parts: list[str]
) -> None:
    sql = " ".join(parts).format(root=canary["root"], port=canary["port"])
    before = listing(canary["root"])
    try:
        gated = check_sql(sql)
    except SqlRejected:
        gated = None
    for candidate in ([gated.sql] if gated else []) + [sql]:  # gate + engine, and engine alone
        for engine in engines.values():
            try:
                result = run(engine, candidate)
            except QueryFailed:
                continue
            assert "CANARY" not in repr(result)  # no content of a file that is not granted
    assert listing(canary["root"]) == before
    assert canary["hits"] == []
