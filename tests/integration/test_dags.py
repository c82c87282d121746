"""DAGs of per-range SQL jobs (SPEC §19-20, invariants 19-20) against a real anvil, cryo,
Postgres, query service and sandboxed executor: a 3-level DAG over decoded swaps equals, row
for row, the same SQL run by DuckDB over the union of its inputs' files; refused specs name
their field; a reorg carries down every level."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chain_helpers import apply
from tests.conftest import (
    Proc,
    proc_env,
    start_dispatcher,
    start_proc,
    start_query_service,
    wait_until,
)
from tests.delivery_helpers import Receiver
from trace_platform.chain.devnet import Anvil, call_data, pools_artifact
from trace_platform.config import Settings
from trace_platform.delivery.signing import new_secret
from trace_platform.domain.errors import TraceError
from trace_platform.ops.dags import dag_status, delete_dag
from trace_platform.ops.datasets import query_here
from trace_platform.ops.env import open_env
from trace_platform.ops.specs import apply_specs
from trace_platform.ports import LITE_ORG_ID

BLOCKS = 60
SECRET = new_secret()
CHUNK = 10
SWAP = "swap(uint256,uint256,uint256,uint256,address)"

LEVEL1 = (
    "SELECT s.block_number, s.log_index, s.transaction_hash, s.address, s.amount0In_raw,"
    " b.timestamp AS block_time FROM pair_Swap s JOIN blocks b USING (block_number)"
)
LEVEL2 = (
    "SELECT address AS pool, count(*) AS swaps, min(block_time) AS first_time FROM swaps GROUP BY 1"
)
LEVEL3 = "SELECT pool, sum(swaps) AS swaps FROM pool_volume GROUP BY 1"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """Two pools and swaps spread over the blocks (several per range, some ranges none)."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    acct = anvil.accounts()
    factory = anvil.deploy_factory()

    def created(tx: str) -> str:
        receipt = anvil.receipt(tx)
        (log,) = [lg for lg in receipt["logs"] if lg["address"].lower() == factory.lower()]
        return "0x" + log["data"][2 + 24 : 2 + 64]

    pools = [
        created(anvil.transact(factory, "createPair(address,address)", [acct[8], acct[9]])),
        created(anvil.transact(factory, "createPair(address,address)", [acct[9], acct[8]])),
    ]
    for i in range(12):
        anvil.transact(pools[i % 2], SWAP, [10**18 * (i + 1), 0, 0, i, acct[1]], acct[2])
        if i % 3 == 2:
            anvil.mine(3)
    anvil.mine(BLOCKS - 1 - anvil.head())
    anvil.extra = {"factory": factory.lower()}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def fork_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """One pool, followed at its head; the reorg test rewrites its last blocks."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "fork.log").start()
    factory = anvil.deploy_factory()
    acct = anvil.accounts()
    tx = anvil.transact(factory, "createPair(address,address)", [acct[8], acct[9]])
    (log,) = anvil.receipt(tx)["logs"]
    anvil.extra = {"factory": factory.lower(), "pool": "0x" + log["data"][26:66]}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def d_settings(settings: Settings, node: Anvil, fork_node: Anvil) -> Settings:
    return settings.replace(
        chain_interval=0.1,
        rpc_pools=(("local", node.url), ("forknode", fork_node.url)),
        delivery_allow_private=True,
        delivery_retry_base_seconds=0.1,
    )


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


FIXED = f"{{kind: fixed_target, from_block: 0, to_block: {BLOCKS}}}"
FOLLOW = "{kind: follow_head, from_block: 0, tail_lag: 2, head_poll_seconds: 0.2, max_head_age_seconds: 600}"


def chain_spec(node: Anvil, name: str = "pools", mode: str = FIXED, pool: str = "local") -> str:
    art = pools_artifact()
    factory = node.extra["factory"]  # type: ignore[attr-defined]
    return (
        "kind: chain_sync\n"
        f"name: {name}\n"
        "chain_id: 31337\n"
        f"rpc_pool: {pool}\n"
        f"mode: {mode}\n"
        "streams:\n"
        f"  blocks: {{cryo_dataset: blocks, chunk_size: {CHUNK}, max_inflight: 4}}\n"
        f"  logs: {{cryo_dataset: logs, chunk_size: {CHUNK}, max_inflight: 4}}\n"
        "contracts:\n"
        "  factory:\n"
        f"    address: [{factory}]\n"
        f"    abi: {json.dumps(art['factory']['abi'])}\n"
        "  pair:\n"
        "    factory: {contract: factory, event: PairCreated, parameter: pair}\n"
        f"    abi: {json.dumps(art['pair']['abi'])}\n"
    )


def dag_spec(
    backfill_blocks: int = 20,
    level2: str = LEVEL2,
    name: str = "dex",
    chain: str = "pools",
    spans: tuple[str, str, str] | None = None,
) -> str:
    """The 3-level DAG; `spans`: each level's backfill line in place of the fixed spans
    (an empty one: the job's defaults)."""
    one, two, three = spans or (
        f"    backfill_blocks: {backfill_blocks}\n",
        "    backfill_blocks: 10\n",
        "    backfill_blocks: 25\n",
    )
    return (
        "kind: dag\n"
        f"name: {name}\n"
        "defaults: {max_concurrency: 3}\n"
        "jobs:\n"
        "  swaps:\n"
        f"    inputs: [{{chain: {chain}}}]\n"
        f"    sql: {json.dumps(LEVEL1)}\n"
        "    unique_key: [transaction_hash, log_index]\n"
        f"{one}"
        "  pool_volume:\n"
        "    inputs: [{job: swaps}]\n"
        f"    sql: {json.dumps(level2)}\n"
        f"{two}"
        "  busiest:\n"
        "    inputs: [{job: pool_volume}]\n"
        f"    sql: {json.dumps(LEVEL3)}\n"
        f"{three}"
    )


async def status(settings: Settings, dag: str = "dex") -> dict[str, Any]:
    async with open_env(settings) as env:
        return dataclasses.asdict(await dag_status(env, LITE_ORG_ID, dag))


async def wait_built(
    settings: Settings, tip: int, timeout: float = 90, dag: str = "dex"
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def done() -> Any:
        st = await status(settings, dag)
        last.update(st)
        jobs = st["jobs"]
        # A changed spec builds a new generation beside the current one: built once it
        # cut over.
        ok = st["building_generation"] is None and all(
            j["committed_to"] >= tip and j["in_flight"] == 0 for j in jobs
        )
        return st if ok else None

    try:
        built: dict[str, Any] = await wait_until(done, timeout, 0.2, f"dex built to {tip}")
    except AssertionError:
        raise AssertionError(f"{dag} not built to {tip}: {last}") from None
    return built


@contextlib.asynccontextmanager
async def dag_stack(
    settings: Settings, logs: Path, chain: str, secret: str
) -> AsyncIterator[dict[str, Proc]]:
    """Dispatcher, query service, worker, sink and delivery (`secret` as the DAG hook's
    TRACE_HOOK_SECRET_DAG), with the chain spec `chain` applied; all stopped when left."""
    procs = {
        "dispatcher": await start_dispatcher(settings, logs),
        "query": await start_query_service(settings, logs),
        "worker": start_proc(settings, logs, "worker"),
        "sink": start_proc(settings, logs, "sink"),
        "deliver": Proc(
            ["deliver"], proc_env(settings, TRACE_HOOK_SECRET_DAG=secret), logs / "deliver.log"
        ).start(),
    }
    try:
        await apply(settings, chain)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="module")
async def stack(
    d_settings: Settings, node: Anvil, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    async with dag_stack(
        d_settings, tmp_path_factory.mktemp("logs"), chain_spec(node), SECRET
    ) as procs:
        yield procs


async def live_files(settings: Settings, name: str) -> list[tuple[int, int, list[str]]]:
    async with open_env(settings) as env:
        rows = await env.state.fetch(
            "SELECT p.range_start, p.range_end, p.files FROM state.dataset_partitions p"
            " JOIN state.datasets d USING (dataset_uuid)"
            " WHERE d.name = $1 AND p.removed_seq IS NULL ORDER BY p.range_start",
            name,
        )
    return [
        (r["range_start"], r["range_end"], [f["uri"].removeprefix("file://") for f in r["files"]])
        for r in rows
    ]


def duck(relations: dict[str, list[str]]) -> Any:
    """DuckDB itself over the relations' files: the reference the DAG must equal."""
    import duckdb

    con = duckdb.connect()
    for name, files in relations.items():
        listed = ", ".join(f"'{f}'" for f in files)
        con.execute(
            f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{listed}], union_by_name=true)'
        )
    return con


def rows_of(con: Any, sql: str) -> list[tuple[Any, ...]]:
    return sorted(con.execute(sql).fetchall(), key=repr)


async def read(settings: Settings, relation: str) -> list[tuple[Any, ...]]:
    async with open_env(settings) as env:
        result = await query_here(
            env, LITE_ORG_ID, None, f'SELECT * FROM "{relation}"', 10_000, None
        )
    return sorted((tuple(r) for r in result.rows), key=repr)


async def expected_levels(
    settings: Settings, chain: str = "pools", dag: str = "dex"
) -> dict[str, list[tuple[Any, ...]]]:
    """Each level recomputed by DuckDB from the chain's files, range by range as the job's
    committed partitions cut them."""
    swaps = await live_files(settings, f"{chain}.pair_Swap")
    blocks = await live_files(settings, f"{chain}.blocks")
    con = duck(
        {
            "pair_Swap": [f for *_, fs in swaps for f in fs],
            "blocks": [f for *_, fs in blocks for f in fs],
        }
    )
    con.execute(f"CREATE TABLE swaps AS {LEVEL1}")
    l2: list[tuple[Any, ...]] = []
    per_range2 = {}
    for a, b, _ in await live_files(settings, f"{dag}.pool_volume"):
        bounded = f"FROM swaps WHERE block_number >= {a} AND block_number < {b}"
        per_range2[(a, b)] = rows_of(con, LEVEL2.replace("FROM swaps", bounded))
        l2 += per_range2[(a, b)]
    l3: list[tuple[Any, ...]] = []
    for a, b, _ in await live_files(settings, f"{dag}.busiest"):
        inside = [r for (s, e), rows in per_range2.items() if a <= s and e <= b for r in rows]
        totals: dict[Any, int] = {}
        for pool, n, _first in inside:
            totals[pool] = totals.get(pool, 0) + n
        l3 += list(totals.items())
    return {
        f"{dag}.swaps": rows_of(con, "SELECT * FROM swaps"),
        f"{dag}.pool_volume": sorted(l2, key=repr),
        f"{dag}.busiest": sorted(l3, key=repr),
    }


async def test_a_three_level_dag_equals_duckdb_over_its_inputs_files(
    d_settings: Settings, stack: dict[str, Proc]
) -> None:
    await apply(d_settings, dag_spec())
    st = await wait_built(d_settings, BLOCKS)
    jobs = {j["job"]: j for j in st["jobs"]}
    assert [j["job"] for j in st["jobs"]] == ["swaps", "pool_volume", "busiest"]
    assert all(j["status"] == "active" and j["failed"] == 0 for j in jobs.values())
    assert jobs["swaps"]["rows"] == 12
    # Ranges cover [0, BLOCKS) with no gap or overlap; level 1's at most its
    # backfill_blocks; a job reading a job holds that job's partitions whole.
    cuts = {}
    for relation in ("dex.swaps", "dex.pool_volume", "dex.busiest"):
        cuts[relation] = [(a, b) for a, b, _ in await live_files(d_settings, relation)]
        ends = [0] + [b for _, b in cuts[relation]]
        assert [a for a, _ in cuts[relation]] == ends[:-1] and ends[-1] == BLOCKS
    assert all(b - a <= 20 for a, b in cuts["dex.swaps"])
    for up, down in (("dex.swaps", "dex.pool_volume"), ("dex.pool_volume", "dex.busiest")):
        assert {b for _, b in cuts[down]} <= {b for _, b in cuts[up]}
    expected = await expected_levels(d_settings)
    for relation, rows in expected.items():
        assert await read(d_settings, relation) == rows, relation
    assert sum(n for _pool, n in expected["dex.busiest"]) == 12
    # The DAG's outputs don't take the short names from the org's one chain job.
    async with open_env(d_settings) as env:
        short = await query_here(env, LITE_ORG_ID, None, "SELECT count(*) FROM pair_Swap", 10, None)
    assert short.rows == [[12]] or [list(r) for r in short.rows] == [[12]]


async def test_a_backfill_cut_by_input_rows_equals_duckdb_and_tiles_the_history(
    d_settings: Settings, stack: dict[str, Proc]
) -> None:
    """Without backfill_blocks a job behind its inputs cuts ranges by their rows (SPEC §19):
    level 1 at 20 input rows a range (its inputs hold a block row a block and the swaps),
    levels 2 and 3 at the default 1,000,000 — and every level still equals DuckDB's
    recompute over the same cuts."""
    await apply(d_settings, dag_spec(name="byrows", spans=("    backfill_rows: 20\n", "", "")))
    await wait_built(d_settings, BLOCKS, dag="byrows")
    cuts = [(a, b) for a, b, _ in await live_files(d_settings, "byrows.swaps")]
    ends = [0] + [b for _, b in cuts]
    assert [a for a, _ in cuts] == ends[:-1] and ends[-1] == BLOCKS
    # 60 blocks and 12 swaps at 20 rows a range, cut evenly: four or five ranges, none
    # over 20 blocks (a block is a row).
    assert 3 <= len(cuts) <= 6 and all(b - a <= 20 for a, b in cuts), cuts
    expected = await expected_levels(d_settings, dag="byrows")
    for relation, rows in expected.items():
        assert await read(d_settings, relation) == rows, relation
    assert sum(n for _pool, n in expected["byrows.busiest"]) == 12


async def test_refused_dag_specs_name_the_field_and_change_nothing(
    d_settings: Settings, stack: dict[str, Proc]
) -> None:
    def job(sql: str, inputs: str = "[{chain: pools}]", extra: str = "") -> str:
        return (
            "kind: dag\nname: refused\njobs:\n"
            f"  a: {{inputs: {inputs}, sql: {json.dumps(sql)}{extra}}}\n"
        )

    cases = {
        job("SELECT 1 FROM blocks", "[{job: b}]"): "jobs.a.inputs: no job 'b'",
        job("SELECT * FROM secret_table"): "jobs.a.sql: relation 'secret_table' is not among",
        job("SELECT * FROM blocks", "[{chain: nope}]"): "jobs.a.inputs.0.chain: no chain job",
        job("SELECT 1 FROM blocks", extra=", max_queue_depth: 5"): "jobs.a.max_queue_depth",
        job("SELECT 1 FROM blocks", extra=", window: hourly"): "jobs.a.window",
        job("SELECT 1 FROM blocks", extra=", bogus: 1"): "jobs.a.bogus: unknown field",
        job("DROP TABLE blocks"): "jobs.a.sql:",
        (
            "kind: dag\nname: refused\njobs:\n"
            "  a: {inputs: [{job: b}], sql: SELECT 1 FROM b}\n"
            "  b: {inputs: [{job: a}], sql: SELECT 1 FROM a}\n"
        ): "jobs.a.inputs: cycle a -> b -> a",
    }
    for text, expected in cases.items():
        with pytest.raises(TraceError) as err:
            await apply(d_settings, text)
        assert expected in err.value.detail, (expected, err.value.detail)
        assert "secret" not in err.value.detail or "secret_table" in expected
    async with open_env(d_settings) as env:
        assert (
            await env.state.fetchval("SELECT count(*) FROM state.dags WHERE name = 'refused'") == 0
        )
        assert (
            await env.state.fetchval("SELECT count(*) FROM state.specs WHERE name = 'refused'") == 0
        )


async def test_a_column_no_input_has_is_refused_at_apply_and_nothing_changes(
    d_settings: Settings, stack: dict[str, Proc]
) -> None:
    """A job's SQL is bound at apply against its inputs' columns, in job order: a column its
    input lacks (a raw stream's, from its committed file's footer; a decoded table's, from
    its ABI; an upstream job's, from binding that job's SQL), or a `where` on one, is
    refused with the field path and the name only, before anything is written."""
    await wait_until(lambda: live_files(d_settings, "pools.blocks"), 60, 0.1, "blocks committed")

    def dag(level1: str = LEVEL1, level2: str = LEVEL2, inputs2: str = "[{job: swaps}]") -> str:
        return (
            "kind: dag\nname: columns\njobs:\n"
            f"  swaps: {{inputs: [{{chain: pools}}], sql: {json.dumps(level1)}}}\n"
            f"  pool_volume: {{inputs: {inputs2}, sql: {json.dumps(level2)}}}\n"
            f"  busiest: {{inputs: [{{job: pool_volume}}], sql: {json.dumps(LEVEL3)}}}\n"
        )

    cases = {
        # level 1: a decoded table's column, and a raw stream's
        dag(level1=LEVEL1.replace("s.amount0In_raw", "s.amount_usd")): (
            'jobs.swaps.sql: column "amount_usd" not found in any input'
        ),
        dag(level1=LEVEL1.replace("b.timestamp", "b.base_fee_gwei")): (
            'jobs.swaps.sql: column "base_fee_gwei" not found in any input'
        ),
        # level 2: amount1In_raw is pair_Swap's, but level 1 does not produce it
        dag(level2="SELECT address AS pool, max(amount1In_raw) AS most FROM swaps GROUP BY 1"): (
            'jobs.pool_volume.sql: column "amount1In_raw" not found in any input'
        ),
        dag(inputs2="[{job: swaps, where: {amount1In_raw: '5'}}]"): (
            "jobs.pool_volume.inputs.0.where.amount1In_raw: column not in columns.swaps"
        ),
        dag(level2=LEVEL2 + " HAVING max(log_index_x) > 0"): (
            'jobs.pool_volume.sql: column "log_index_x" not found in any input'
        ),
    }
    for text, expected in cases.items():
        with pytest.raises(TraceError) as err:
            await apply(d_settings, text)
        assert err.value.status == 400 and err.value.detail == expected, err.value.detail
        assert "SELECT" not in err.value.detail
    async with open_env(d_settings) as env:
        for table in ("state.dags", "state.specs"):
            n = await env.state.fetchval(f"SELECT count(*) FROM {table} WHERE name = 'columns'")
            assert n == 0, table
        n = await env.state.fetchval(
            "SELECT count(*) FROM state.datasets WHERE name LIKE 'columns.%'"
        )
        assert n == 0
        n = await env.state.fetchval(
            "SELECT count(*) FROM state.dag_jobs j JOIN state.datasets d USING (dataset_uuid)"
            " WHERE d.name LIKE 'columns.%'"
        )
        assert n == 0
    # The same three levels with the columns each produces: applied.
    (applied,) = await apply(d_settings, dag())
    assert applied["created"] is True
    async with open_env(d_settings) as env:
        jobs = await env.state.fetchval(
            "SELECT count(*) FROM state.dag_jobs WHERE dag_id = $1", uuid.UUID(applied["dag_id"])
        )
        assert jobs == 3
        await delete_dag(env, LITE_ORG_ID, "columns")  # stops it: the stack is shared


async def test_a_registered_datasets_columns_are_every_file_of_its_version(
    d_settings: Settings, stack: dict[str, Proc], tmp_path: Path
) -> None:
    """A `{dataset:}` input's columns at apply are those of every file of the version apply
    pins (read by name, as the run reads them): a column only its second file has is
    accepted, one none has — in the SQL or in its `where` — is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trace_platform.datasets import register_dataset

    pq.write_table(pa.table({"address": ["0x1"], "label": ["a"]}), tmp_path / "1.parquet")
    pq.write_table(
        pa.table({"address": ["0x2"], "label": ["b"], "label_type": ["cex"]}),
        tmp_path / "2.parquet",
    )
    async with open_env(d_settings) as env:
        await register_dataset(
            env.state,
            env.store,
            "labels",
            [tmp_path / "1.parquet", tmp_path / "2.parquet"],
            LITE_ORG_ID,
        )

    def dag(sql: str, where: str = "{label_type: cex}") -> str:
        return (
            "kind: dag\nname: labelled\njobs:\n"
            f"  a: {{inputs: [{{chain: pools}}, {{dataset: labels, where: {where}}}],"
            f" sql: {json.dumps(sql)}}}\n"
        )

    sql = (
        "SELECT s.block_number, l.label, l.label_type FROM pair_Swap s"
        " JOIN labels l ON l.address = s.address"
    )
    for text, expected in {
        dag(sql.replace("l.label_type", "l.owner")): (
            'jobs.a.sql: column "owner" not found in any input'
        ),
        dag(sql, "{kind: cex}"): "jobs.a.inputs.1.where.kind: column not in labels",
    }.items():
        with pytest.raises(TraceError) as err:
            await apply(d_settings, text)
        assert err.value.detail == expected
    (applied,) = await apply(d_settings, dag(sql))
    assert applied["created"] is True
    async with open_env(d_settings) as env:
        await delete_dag(env, LITE_ORG_ID, "labelled")  # stops it: the stack is shared


def web3_swaps(node: Anvil) -> set[tuple[str, int]]:
    """(tx hash, log index) of every Swap of the node's pool on its canonical chain."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(node.url))
    swap = w3.eth.contract(abi=pools_artifact()["pair"]["abi"]).events.Swap()
    pool = Web3.to_checksum_address(node.extra["pool"])  # type: ignore[attr-defined]
    return {
        ("0x" + bytes(e["transactionHash"]).hex(), e["logIndex"])
        for e in (swap.process_log(lg) for lg in w3.eth.get_logs({"fromBlock": 0, "address": pool}))
    }


async def test_a_reorg_carries_down_every_level_and_no_reader_sees_the_abandoned_fork(
    d_settings: Settings, stack: dict[str, Proc], fork_node: Anvil, receiver: Receiver
) -> None:
    """...and an alert on the enriched output delivers the canonical new event once."""
    node, acct = fork_node, fork_node.accounts()
    pool = node.extra["pool"]  # type: ignore[attr-defined]
    for i in range(8):  # swaps in blocks ~2..~58
        node.transact(pool, SWAP, [100 + i, 0, 0, 1, acct[1]])
        node.mine(6)
    node.mine(63 - node.head())
    await apply(d_settings, chain_spec(node, "forked", FOLLOW, "forknode"))
    await apply(d_settings, dag_spec(name="fx", chain="forked"))
    await wait_built(d_settings, 60, dag="fx")
    before = web3_swaps(node)
    assert len(before) == 8
    alert = (
        "kind: alert\nname: fx-swaps\nsource: {dataset: fx.swaps}\nstart: {from_block: 0}\n"
        'rule: {sql: "SELECT block_number, transaction_hash, log_index, block_time FROM dataset"}\n'
        "identity: [transaction_hash, log_index]\n"
        f"channels: [{{type: webhook, url: '{receiver.url('/fx')}',"
        " secret_env: TRACE_HOOK_SECRET_DAG}]\n"
    )
    await apply(d_settings, alert)

    def delivered() -> dict[str, int]:
        return receiver.per_tx("/fx")

    await wait_until(lambda: len(delivered()) == 8, 60, 0.1, "8 swaps alerted")

    swap = {"from": acct[0], "to": pool, "data": call_data(SWAP, [999, 0, 0, 1, acct[3]])}
    node.rpc("anvil_reorg", [12, [[{**swap, "gas": hex(200_000)}, 0]]])  # blocks 52..63 anew
    after = web3_swaps(node)
    abandoned = {tx for tx, _ in before - after}
    assert abandoned and after - before  # a swap left with the old fork, a new one came

    seen: list[set[str]] = []  # what readers saw once the repair had begun

    async def repaired() -> bool:
        async with open_env(d_settings) as env:
            detected = await env.state.fetchval(
                "SELECT reorgs FROM state.chain_jobs WHERE name = 'forked'"
            )
        rows = await read(d_settings, "fx.swaps")
        if detected:
            seen.append({r[2] for r in rows})
        st = await status(d_settings, "fx")
        built = all(j["committed_to"] >= 60 and j["in_flight"] == 0 for j in st["jobs"])
        return built and {(r[2], r[1]) for r in rows} == {p for p in after}

    await wait_until(repaired, 90, 0.1, "fx repaired to the canonical chain")
    assert seen and all(not (txs & abandoned) for txs in seen)  # nor saw the abandoned fork
    expected = await expected_levels(d_settings, "forked", "fx")
    for relation, rows in expected.items():
        assert await read(d_settings, relation) == rows, relation
    assert sum(n for _pool, n in expected["fx.busiest"]) == len(after)
    (new_tx,) = {tx for tx, _ in after - before}
    await wait_until(lambda: new_tx in delivered(), 60, 0.1, "the new swap alerted")
    counts = delivered()
    assert counts[new_tx] == 1  # the canonical new event, once
    assert all(n == 1 for n in counts.values())  # nothing re-delivered


class InFlight:
    """Samples the most ranges each job of a DAG had in flight at once."""

    def __init__(self, settings: Settings, dag: str) -> None:
        self.settings, self.dag, self.most = settings, dag, 0
        self.samples = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with open_env(self.settings) as env:
            while True:
                n = await env.state.fetchval(
                    "SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM state.dag_ranges r"
                    " JOIN state.dag_jobs j USING (job_uuid) JOIN state.dags d USING (dag_id)"
                    " WHERE d.name = $1 AND r.status = 'scheduled' GROUP BY r.job_uuid) per_job",
                    self.dag,
                )
                self.most = max(self.most, int(n))
                self.samples += 1
                await asyncio.sleep(0.02)

    def __enter__(self) -> InFlight:
        self.task = asyncio.create_task(self.run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self.task is not None
        self.task.cancel()


async def committed_ranges(settings: Settings, relation: str) -> int:
    return len(await live_files(settings, relation))


async def restart(procs: dict[str, Proc], settings: Settings, which: str, logs: Path) -> None:
    """SIGKILL one process and start a new one in its place."""
    procs[which].kill()
    if which == "dispatcher":
        procs[which] = await start_dispatcher(settings, logs)
    else:
        procs[which] = start_proc(settings, logs, which)


async def test_kills_during_backfill_and_at_the_head_lose_or_double_nothing(
    d_settings: Settings, stack: dict[str, Proc], fork_node: Anvil, tmp_path: Path
) -> None:
    # Backfill: level 1 in 5-block ranges, two in flight; a worker and a dispatcher die.
    await apply(
        d_settings,
        dag_spec(backfill_blocks=5, name="kx").replace("max_concurrency: 3", "max_concurrency: 2"),
    )
    with InFlight(d_settings, "kx") as sampled:
        await wait_until(
            lambda: committed_ranges(d_settings, "kx.swaps"), 60, 0.02, "a level-1 range"
        )
        await restart(stack, d_settings, "worker", tmp_path)
        await wait_until(
            lambda: committed_ranges(d_settings, "kx.pool_volume"), 60, 0.02, "a level-2 range"
        )
        await restart(stack, d_settings, "dispatcher", tmp_path)
        await wait_built(d_settings, BLOCKS, dag="kx")
    assert sampled.samples > 10 and 1 <= sampled.most <= 2  # max_concurrency held
    expected = await expected_levels(d_settings, "pools", "kx")
    for relation, rows in expected.items():
        assert await read(d_settings, relation) == rows, relation
        cuts = [(a, b) for a, b, _ in await live_files(d_settings, relation)]
        ends = [0] + [b for _, b in cuts]
        assert [a for a, _ in cuts] == ends[:-1] and ends[-1] == BLOCKS  # none torn or doubled

    # The head: swaps keep coming while a worker and a dispatcher die.
    node, acct = fork_node, fork_node.accounts()
    pool = node.extra["pool"]  # type: ignore[attr-defined]
    await apply(d_settings, chain_spec(node, "headed", FOLLOW, "forknode"))
    await apply(d_settings, dag_spec(name="hx", chain="headed"))

    def eligible() -> int:  # the end of the last whole chunk the sync may commit (tail_lag 2)
        return (node.head() + 1 - 2) // CHUNK * CHUNK

    await wait_built(d_settings, eligible(), dag="hx")
    for i in range(6):
        node.transact(pool, SWAP, [500 + i, 0, 0, 1, acct[1]])
        node.mine(2)
        if i == 2:
            await restart(stack, d_settings, "worker", tmp_path)
        if i == 4:
            await restart(stack, d_settings, "dispatcher", tmp_path)
    await wait_built(d_settings, eligible(), dag="hx")
    expected = await expected_levels(d_settings, "headed", "hx")
    assert len(expected["hx.swaps"]) == len(web3_swaps(node))
    for relation, rows in expected.items():
        assert await read(d_settings, relation) == rows, relation


ORG_B = uuid.UUID("0b0b0b0b-0000-4000-8000-0000000000b2")


async def test_where_is_a_typed_filter_a_value_cannot_change_the_statement(
    d_settings: Settings, stack: dict[str, Proc], node: Anvil
) -> None:
    await wait_built(d_settings, BLOCKS)  # dex, from the first test
    pools = sorted({r[3] for r in await read(d_settings, "dex.swaps")})
    assert len(pools) == 2

    def spec(value: str) -> str:
        return (
            "kind: dag\nname: one-pool\njobs:\n"
            "  picked:\n"
            f"    inputs: [{{job: swaps, where: {{address: {json.dumps(value)}}}}}]\n"
            "    sql: SELECT block_number, log_index, address FROM swaps\n"
            "  swaps:\n"
            "    inputs: [{chain: pools}]\n"
            f"    sql: {json.dumps(LEVEL1)}\n"
        )

    await apply(d_settings, spec(pools[0]))
    await wait_built(d_settings, BLOCKS, dag="one-pool")
    picked = await read(d_settings, "one-pool.picked")
    every = await read(d_settings, "dex.swaps")
    assert picked == sorted(((r[0], r[1], r[3]) for r in every if r[3] == pools[0]), key=repr)
    assert 0 < len(picked) < len(every)
    # An injection attempt is a value like any other: it matches no row, reads nothing more.
    await apply(d_settings, spec(f"{pools[0]}' OR '1'='1"))
    await wait_built(d_settings, BLOCKS, dag="one-pool")
    assert await read(d_settings, "one-pool.picked") == []
    for bad, reason in (
        ('{job: swaps, where: {"address; DROP TABLE x": 1}}', "where"),
        ("{chain: pools, where: {address: x}}", "a chain input holds many relations"),
    ):
        text = spec(pools[0]).replace(
            f"{{job: swaps, where: {{address: {json.dumps(pools[0])}}}}}", bad
        )
        with pytest.raises(TraceError) as err:
            await apply(d_settings, text)
        assert reason in err.value.detail


async def test_a_job_of_one_org_cannot_name_another_orgs_relations_by_any_name(
    d_settings: Settings, stack: dict[str, Proc]
) -> None:
    async with open_env(d_settings) as env:
        blocks_uuid = await env.state.fetchval(
            "SELECT dataset_uuid FROM state.datasets WHERE name = 'pools.blocks'"
        )
        refusals = {
            "[{chain: pools}]": "no chain job 'pools' in this org",
            "[{dataset: pools.blocks}]": "no dataset 'pools.blocks' in this org",
        }
        for inputs, reason in refusals.items():
            with pytest.raises(TraceError) as err:
                await apply_specs(
                    env,
                    ORG_B,
                    f"kind: dag\nname: steal\njobs:\n  a: {{inputs: {inputs}, sql: SELECT * FROM blocks}}\n",
                )
            assert reason in err.value.detail
        # Org A's own job may read only its inputs, whatever form names the other relation.
        for name in ('"pools.blocks"', "pools_blocks", f'"{blocks_uuid}"', '"pools".blocks'):
            with pytest.raises(TraceError) as err:
                await apply_specs(
                    env,
                    LITE_ORG_ID,
                    "kind: dag\nname: sneaky\njobs:\n"
                    "  s: {inputs: [{chain: pools}], sql: SELECT 1 AS one FROM blocks}\n"
                    f"  t: {{inputs: [{{job: s}}], sql: {json.dumps('SELECT * FROM ' + name)}}}\n",
                )
            assert "is not among the job's inputs" in err.value.detail, name
        assert (
            await env.state.fetchval("SELECT count(*) FROM state.dags WHERE org_id = $1", ORG_B)
            == 0
        )
