"""An idle query executor takes the next version of its dataset in place (a followed chain's
next range), through the real sandbox: the new files replace the old ones in its slot, the
old ones are out of its sight. Another dataset of the same org takes it in a new database
(nothing of the earlier binding readable); another org's never takes it."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_platform.query.engine import ROUTE_READER, BoundRelation, Engine
from trace_platform.query.executor import (
    Binding,
    ExecutorLimits,
    ExecutorPool,
    QueryFailed,
    Relation,
)
from trace_platform.sandbox import Isolation, detect_isolation

LIMITS = ExecutorLimits(timeout_seconds=5)


def one(key: str, path: Path, org: str | None = None, name: str | None = None) -> Binding:
    names = ("dataset",) if name is None else ("dataset", name)
    return Binding((Relation(names, key, (str(path),)),), org=org)


ORG_A, ORG_B = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"


def version(root: Path, name: str, first: int) -> Path:
    """A dataset version: one Parquet file of ten rows x = first .. first + 9."""
    path = root / name / "part-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"x": list(range(first, first + 10))}), path)
    return path


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[ExecutorPool]:
    isolation = detect_isolation()
    assert isolation.strong, f"the executor sandbox needs bubblewrap here: {isolation.features}"
    pool = ExecutorPool(1, LIMITS, isolation, slots=tmp_path / "slots")
    yield pool
    await pool.close()


async def rows(pool: ExecutorPool, binding: Binding, sql: str) -> list[list[object]]:
    result = await pool.run(binding, sql, 50)
    found: list[list[object]] = orjson.loads(result.body)["rows"]
    return found


async def test_an_idle_executor_takes_the_next_version_of_its_dataset_in_place(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    v1, v2 = version(tmp_path, "v1", 0), version(tmp_path, "v2", 100)
    first, second = one("ds@1", v1), one("ds@2", v2)
    assert await rows(pool, first, "SELECT sum(x) FROM dataset") == [[45]]
    (executor,) = pool.idle.values()
    pid = executor.proc.pid
    assert await rows(pool, second, "SELECT sum(x) FROM dataset") == [[1045]]
    # The same process, bound anew: its slot holds the new version's file alone, under a
    # name never used before, and the old file is out of its sight.
    (rebound,) = pool.idle.values()
    assert rebound is executor and rebound.proc.pid == pid and pool.live == 1
    assert rebound.binding == second
    listed = await rows(pool, second, "SELECT file FROM glob('/data/**')")
    assert listed == [["/data/part-000001-000-00000.parquet"]]
    with pytest.raises(QueryFailed):
        await rows(
            pool, second, "SELECT * FROM read_parquet('/data/part-000000-000-00000.parquet')"
        )
    # Nothing of the first binding's database is left: one table, the new one.
    assert await rows(pool, second, "SELECT table_name FROM duckdb_tables()") == [["dataset"]]
    assert executor.slot is not None and sorted(p.name for p in executor.slot.iterdir()) == [
        "part-000001-000-00000.parquet"
    ]
    # And back: a version it held before is linked again, under a new name.
    assert await rows(pool, first, "SELECT max(x) FROM dataset") == [[9]]
    assert next(iter(pool.idle.values())).proc.pid == pid


async def test_another_dataset_of_the_same_org_takes_it_in_a_new_database(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """Two datasets of one org, each bound alone (the second's query is not granted the
    first): the executor is rebound in place, and nothing of the first binding — its names,
    its tables, its files by path — is readable from the second."""
    secret, other = version(tmp_path, "secret", 1000), version(tmp_path, "other", 0)
    first = one("secret@1", secret, ORG_A, name="secret_rel")
    second = one("other@1", other, ORG_A, name="other_rel")
    # Queried twice: the first binding's relation is loaded into memory (a table).
    assert await rows(pool, first, "SELECT sum(x) FROM secret_rel") == [[10045]]
    assert await rows(pool, first, "SELECT table_name FROM duckdb_tables()") == [["dataset"]]
    (executor,) = pool.idle.values()
    pid = executor.proc.pid
    assert await rows(pool, second, "SELECT sum(x) FROM other_rel") == [[45]]
    (rebound,) = pool.idle.values()
    assert rebound is executor and rebound.proc.pid == pid and rebound.binding == second
    for sql in (
        "SELECT * FROM secret_rel",
        "SELECT * FROM main.secret_rel",
        "SELECT * FROM memory.main.secret_rel",
        "SELECT * FROM read_parquet('/data/part-000000-000-00000.parquet')",
        f"SELECT * FROM read_parquet('{secret}')",
    ):
        with pytest.raises(QueryFailed):
            await rows(pool, second, sql)
    # What the database holds is the second binding's alone (its views; no table left).
    objects = (
        "SELECT table_name FROM duckdb_tables() UNION ALL"
        " SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1"
    )
    assert await rows(pool, second, objects) == [["dataset"], ["other_rel"]]
    assert await rows(pool, second, "SELECT file FROM glob('/data/**')") == [
        ["/data/part-000001-000-00000.parquet"]
    ]
    assert await rows(pool, second, "SELECT count(*) FROM duckdb_databases()") == [[3]]
    assert await rows(pool, second, "SELECT max(x) FROM dataset") == [[9]]


async def test_a_freed_executor_goes_first_to_a_waiting_query_of_its_own_datasets(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    """One executor, busy on dataset A; a query of dataset B (same org) starts waiting,
    then one of A's next version. When A's query ends, the query of A takes the executor
    (its database kept) although B's waited longer; B's runs next. Without the preference
    the first waiter took it, closing A's database to open B's, and A's query then closed
    B's in turn (two DAG levels alternating on the executors paid a database per range)."""
    a1, a2 = version(tmp_path, "a1", 0), version(tmp_path, "a2", 100)
    b1 = version(tmp_path, "b1", 1000)
    first, later = one("a@1", a1, ORG_A), one("a@2", a2, ORG_A)
    other = one("b@1", b1, ORG_A)
    assert await rows(pool, first, "SELECT sum(x) FROM dataset") == [[45]]
    done: list[str] = []

    async def query(label: str, binding: Binding, sql: str) -> list[list[object]]:
        found = await rows(pool, binding, sql)
        done.append(label)
        return found

    slow = asyncio.create_task(
        query("slow", first, "SELECT count(*) FROM dataset, range(60000000) t(i) WHERE i % 7 = 1")
    )
    while pool.idle:  # the slow query has the executor
        await asyncio.sleep(0.005)
    waiting_b = asyncio.create_task(query("b", other, "SELECT sum(x) FROM dataset"))
    while len(pool._waiting) < 1:
        await asyncio.sleep(0.005)
    waiting_a = asyncio.create_task(query("a", later, "SELECT sum(x) FROM dataset"))
    while len(pool._waiting) < 2:
        await asyncio.sleep(0.005)
    assert not slow.done(), "the slow query ended before both queries waited"
    assert await waiting_a == [[1045]]
    assert await waiting_b == [[10045]]
    await slow
    assert done == ["slow", "a", "b"]


async def test_another_orgs_dataset_never_takes_an_executor_in_place(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    v1 = version(tmp_path, "v1", 0)
    mine = one("ds@1", v1, ORG_A)
    assert await rows(pool, mine, "SELECT count(*) FROM dataset") == [[10]]
    (executor,) = pool.idle.values()
    theirs = one("theirs@1", v1, ORG_B)
    assert not executor.can_rebind(theirs)
    assert not executor.can_rebind(one("theirs@1", v1))  # no org: never another dataset
    assert await rows(pool, theirs, "SELECT count(*) FROM dataset") == [[10]]
    (fresh,) = pool.idle.values()
    assert fresh is not executor and fresh.proc.pid != executor.proc.pid
    # Asked directly, an executor refuses a binding it may not take (and stays as it was).
    with pytest.raises(Exception, match="cannot take"):
        await fresh.rebind(mine)
    assert fresh.binding == theirs


def test_a_fresh_rebinding_leaves_nothing_of_the_earlier_database(tmp_path: Path) -> None:
    """Whatever the earlier binding's database held — temporary tables, another attached
    database, macros, variables, sequences — a rebinding to other datasets starts from
    none of it (in-process, the engine's own database)."""
    secret, other = version(tmp_path, "secret", 1000), version(tmp_path, "other", 0)
    limits = ExecutorLimits(timeout_seconds=5)
    earlier = Engine(ROUTE_READER, [BoundRelation(("secret_rel",), (str(secret),))], limits)
    for statement in (
        "CREATE TEMP TABLE kept AS SELECT * FROM secret_rel",
        "ATTACH ':memory:' AS stash",
        "CREATE TABLE stash.copied AS SELECT * FROM secret_rel",
        "CREATE MACRO leak() AS (SELECT max(x) FROM secret_rel)",
        "CREATE SEQUENCE counter",
        "SET VARIABLE hidden = 10045",
    ):
        earlier.con.execute(statement)
    later = Engine(
        ROUTE_READER,
        [BoundRelation(("other_rel",), (str(other),))],
        limits,
        previous=earlier,
        fresh=True,
    )
    assert orjson.loads(later.query("SELECT sum(x) FROM other_rel", 5)[0])["rows"] == [[45]]
    for sql in (
        "SELECT * FROM kept",
        "SELECT * FROM temp.main.kept",
        "SELECT * FROM stash.copied",
        "SELECT leak()",
        "SELECT nextval('counter')",
        "SELECT * FROM secret_rel",
    ):
        with pytest.raises(QueryFailed):
            later.query(sql, 5)
    assert orjson.loads(later.query("SELECT getvariable('hidden')", 5)[0])["rows"] == [[None]]
    listed = "SELECT database_name FROM duckdb_databases() WHERE NOT internal"
    assert orjson.loads(later.query(listed, 5)[0])["rows"] == [["memory"]]
    # Its own settings, locked again: the earlier database's are gone with it.
    with pytest.raises(Exception, match="locked"):
        later.con.execute("SET threads = 3")


async def test_another_dataset_without_an_org_never_takes_an_executor_in_place(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    v1 = version(tmp_path, "v1", 0)
    assert await rows(pool, one("ds@1", v1), "SELECT count(*) FROM dataset") == [[10]]
    (executor,) = pool.idle.values()
    slot = executor.slot
    assert slot is not None and slot.exists()
    assert await rows(pool, one("other@1", v1), "SELECT count(*) FROM dataset") == [[10]]
    (fresh,) = pool.idle.values()
    assert fresh is not executor and fresh.proc.pid != executor.proc.pid
    await asyncio.gather(*pool.tasks)  # the recycled one's close, started in the background
    assert not slot.exists()  # its slot went with it


async def test_files_that_cannot_be_linked_are_bound_one_by_one(
    pool: ExecutorPool, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    assert shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev, (
        "this test needs /dev/shm on another filesystem than the temporary directory"
    )
    elsewhere = shm / f"trace-rebind-{os.getpid()}"
    try:
        v1, v2 = version(tmp_path, "v1", 0), version(elsewhere, "v2", 100)
        assert await rows(pool, one("ds@1", v1), "SELECT min(x) FROM dataset") == [[0]]
        (executor,) = pool.idle.values()
        # The next version cannot be linked into the slot: a fresh executor answers.
        assert await rows(pool, one("ds@2", v2), "SELECT min(x) FROM dataset") == [[100]]
        (fresh,) = pool.idle.values()
        assert fresh is not executor and fresh.slot is None and pool.live == 1
        # Bound file by file, it is never rebound: the next version starts another.
        assert not fresh.can_rebind(one("ds@3", v1))
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


async def test_without_bubblewrap_an_executor_is_rebound_to_the_new_paths(
    tmp_path: Path,
) -> None:
    weak = Isolation(bwrap=None, drop_uid=False, features={"filesystem_view": False})
    pool = ExecutorPool(1, LIMITS, weak, slots=tmp_path / "slots")
    try:
        v1, v2 = version(tmp_path, "v1", 0), version(tmp_path, "v2", 100)
        assert await rows(pool, one("ds@1", v1), "SELECT sum(x) FROM dataset") == [[45]]
        (executor,) = pool.idle.values()
        assert await rows(pool, one("ds@2", v2), "SELECT sum(x) FROM dataset") == [[1045]]
        assert next(iter(pool.idle.values())) is executor and executor.slot is None
    finally:
        await pool.close()


def test_slots_left_by_a_process_that_is_gone_are_removed(tmp_path: Path) -> None:
    base = tmp_path / "slots"
    gone = base / "slots-999999999"  # above any pid_max: no such process
    (gone / "executor-x").mkdir(parents=True)
    alive = base / f"slots-{os.getppid()}"
    alive.mkdir()
    pool = ExecutorPool(1, LIMITS, detect_isolation(), slots=base)
    assert pool.slots == base / f"slots-{os.getpid()}" and pool.slots.is_dir()
    assert not gone.exists() and alive.exists()


def test_a_range_grant_reads_only_its_blocks_and_a_relation_without_blocks_whole(
    tmp_path: Path,
) -> None:
    blocks = tmp_path / "blocks.parquet"
    pq.write_table(pa.table({"block_number": list(range(100)), "v": [1] * 100}), blocks)
    derived = version(tmp_path, "derived", 0)  # x = 0..9, no block numbers
    engine = Engine(
        ROUTE_READER,
        [
            BoundRelation(("chain",), (str(blocks),), (10, 20)),
            BoundRelation(("derived",), (str(derived),), (10, 20)),
        ],
        ExecutorLimits(timeout_seconds=5),
    )
    sql = "SELECT min(block_number), max(block_number), count(*) FROM chain"
    assert orjson.loads(engine.query(sql, 5)[0])["rows"] == [[10, 19, 10]]
    assert orjson.loads(engine.query("SELECT count(*) FROM derived", 5)[0])["rows"] == [[10]]
    # Queried again (loaded into memory): still the range's blocks alone.
    assert orjson.loads(engine.query(sql, 5)[0])["rows"] == [[10, 19, 10]]
    assert not engine.deferred


async def test_without_bubblewrap_another_dataset_of_the_org_is_rebound_with_nothing_left(
    tmp_path: Path,
) -> None:
    weak = Isolation(bwrap=None, drop_uid=False, features={"filesystem_view": False})
    pool = ExecutorPool(1, LIMITS, weak, slots=tmp_path / "slots")
    try:
        secret, other = version(tmp_path, "secret", 1000), version(tmp_path, "other", 0)
        first = one("secret@1", secret, ORG_A, name="secret_rel")
        assert await rows(pool, first, "SELECT sum(x) FROM secret_rel") == [[10045]]
        (executor,) = pool.idle.values()
        second = one("other@1", other, ORG_A, name="other_rel")
        assert await rows(pool, second, "SELECT sum(x) FROM other_rel") == [[45]]
        assert next(iter(pool.idle.values())) is executor
        for sql in ("SELECT * FROM secret_rel", f"SELECT * FROM read_parquet('{secret}')"):
            with pytest.raises(QueryFailed):
                await rows(pool, second, sql)
        # Another org's dataset starts a new executor.
        theirs = one("theirs@1", other, ORG_B)
        assert await rows(pool, theirs, "SELECT count(*) FROM dataset") == [[10]]
        assert next(iter(pool.idle.values())) is not executor
    finally:
        await pool.close()
