"""Analyst SQL over a synced chain (SPEC §15): named relations, joins across streams, and a
corpus of queries written the way chain analysts write them, each run through the real
catalog, gate, sandboxed executor and audit over a chain synced from a real anvil by cryo.

Every corpus query must be accepted and return rows; the ones with a known answer are
compared with what web3 reports for the same blocks. Through a real `trace api` and query
service (SPEC §21), every corpus query answers the same values as JSON, as an Arrow IPC
stream, as CSV and as Parquet, and as a query run's result fetched by its signed URL."""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.chain_helpers import apply, spec_yaml, wait_synced
from tests.conftest import (
    ApiStack,
    Proc,
    api_settings,
    api_stack,
    start_dispatcher,
    start_proc,
    wait_until,
)
from tests.helpers import env_of
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.domain.errors import NotFoundError, TraceError
from trace_platform.ops.datasets import QueryAnswer, query_here
from trace_platform.ops.env import open_env
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

JOB = "analyst"
BLOCKS = 240
START_TS = 1_830_297_600  # 2028-01-01 00:00:00 UTC (block 1; block 0 is the node's start)
INTERVAL = 1200  # seconds between blocks: 240 blocks span 80 hours (4 days)
STREAMS = {
    "blocks": {"cryo_dataset": "blocks", "chunk_size": 60, "max_inflight": 4},
    "transactions": {"cryo_dataset": "transactions", "chunk_size": 60, "max_inflight": 4},
    "logs": {"cryo_dataset": "logs", "chunk_size": 60, "max_inflight": 4},
    "erc20_transfers": {"cryo_dataset": "erc20_transfers", "chunk_size": 60, "max_inflight": 4},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """240 blocks 20 minutes apart; every 3rd block holds token transfers between several
    holders and an ETH transfer."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    acct = anvil.accounts()
    anvil.rpc("evm_setNextBlockTimestamp", [START_TS])
    anvil.rpc("anvil_setBlockTimestampInterval", [INTERVAL])
    token = anvil.deploy_token()
    for holder in acct[1:6]:
        anvil.transfer_token(token, holder, 10**24)
    i = 0
    while anvil.head() < BLOCKS - 1:
        if i % 3 == 0:
            anvil.set_automine(False)
            try:
                sender = acct[1 + i % 5]
                anvil.transfer_token(token, acct[6 + i % 3], 10**18 * (i + 1), sender=sender)
                anvil.transfer_token(token, acct[7], 3 * 10**20 + i, sender=acct[1 + (i + 2) % 5])
                anvil.transfer_eth(acct[9], 10**15 * (i + 1), sender=acct[0])
                anvil.mine(1)
            finally:
                anvil.set_automine(True)
        else:
            anvil.mine(1)
        i += 1
    assert anvil.head() == BLOCKS - 1
    anvil.extra = {"token": token}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def a_settings(settings: Settings, node: Anvil) -> Settings:
    """Also the ports of this module's own API and query service (`api_stack`)."""
    return api_settings(settings, chain_interval=0.1, rpc_pools=(("local", node.url),))


@pytest.fixture(scope="module")
async def synced(
    a_settings: Settings, node: Anvil, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("logs")
    procs: list[Proc] = [
        await start_dispatcher(a_settings, logs),
        start_proc(a_settings, logs, "worker"),
    ]
    try:
        mode = f"{{kind: fixed_target, from_block: 0, to_block: {BLOCKS}}}"
        await apply(a_settings, spec_yaml(JOB, mode, STREAMS))
        job = await wait_synced(a_settings, JOB, BLOCKS)
        yield job
    finally:
        for p in procs:
            p.stop()


async def ask(
    settings: Settings,
    sql: str,
    name: str | None = None,
    job: str | None = JOB,
    org_id: uuid.UUID = LITE_ORG_ID,
) -> QueryAnswer:
    async with open_env(settings) as env:
        return await query_here(env, org_id, name, sql, 10_000, None, job)


def web3_of(node: Anvil) -> Any:
    from web3 import Web3

    return Web3(Web3.HTTPProvider(node.url))


# -- joins compared with the node -------------------------------------------------------


async def test_transfers_joined_to_block_timestamps_equal_the_nodes(
    a_settings: Settings, synced: dict[str, Any], node: Anvil
) -> None:
    answer = await ask(
        a_settings,
        "SELECT t.block_number, b.timestamp, t.transaction_hash AS tx,"
        " t.log_index FROM erc20_transfers t JOIN blocks b USING (block_number)"
        " ORDER BY t.block_number, t.log_index",
    )
    w3 = web3_of(node)
    token = w3.to_checksum_address(node.extra["token"])  # type: ignore[attr-defined]
    topic = w3.keccak(text="Transfer(address,address,uint256)").hex()
    logs = w3.eth.get_logs(
        {"fromBlock": 0, "toBlock": BLOCKS - 1, "address": token, "topics": ["0x" + topic]}
    )
    expected = []
    for log in logs:
        ts = w3.eth.get_block(log["blockNumber"])["timestamp"]
        expected.append(
            [log["blockNumber"], ts, "0x" + bytes(log["transactionHash"]).hex(), log["logIndex"]]
        )
    assert answer.rows == expected
    assert len(expected) > 100


async def test_logs_joined_to_transactions_by_hash_and_blocks_equal_the_nodes(
    a_settings: Settings, synced: dict[str, Any], node: Anvil
) -> None:
    answer = await ask(
        a_settings,
        "SELECT l.block_number, lower(tx.from_address), count(*) AS n"
        ' FROM logs l JOIN "analyst.transactions" tx ON tx.transaction_hash = l.transaction_hash'
        " JOIN analyst_blocks b ON b.block_number = l.block_number"
        " GROUP BY ALL ORDER BY 1, 2",
    )
    w3 = web3_of(node)
    counts: Counter[tuple[int, str]] = Counter()
    for log in w3.eth.get_logs({"fromBlock": 0, "toBlock": BLOCKS - 1}):
        tx = w3.eth.get_transaction(log["transactionHash"])
        counts[(log["blockNumber"], tx["from"].lower())] += 1
    assert answer.rows == [[b, f, n] for (b, f), n in sorted(counts.items())]


async def test_gas_per_block_and_tx_counts_equal_the_nodes(
    a_settings: Settings, synced: dict[str, Any], node: Anvil
) -> None:
    answer = await ask(
        a_settings,
        "SELECT b.block_number, b.gas_used, count(t.transaction_hash) AS txs"
        " FROM blocks b LEFT JOIN transactions t USING (block_number)"
        " WHERE b.block_number BETWEEN 100 AND 130 GROUP BY 1, 2 ORDER BY 1",
    )
    w3 = web3_of(node)
    expected = []
    for n in range(100, 131):
        block = w3.eth.get_block(n)
        expected.append([n, block["gasUsed"], len(block["transactions"])])
    assert answer.rows == expected


# -- the catalog: names, aliases, refusals ------------------------------------------------


async def test_every_name_of_a_relation_reads_the_same_rows(
    a_settings: Settings, synced: dict[str, Any]
) -> None:
    names = ["blocks", '"analyst.blocks"', '"analyst".blocks', "analyst_blocks", "dataset"]
    counts = set()
    for name in names:
        answer = await ask(a_settings, f"SELECT count(*) FROM {name}", name="analyst.blocks")
        counts.add(answer.rows[0][0])
    assert counts == {BLOCKS}


async def test_unknown_and_other_org_relations_are_refused_by_name(
    a_settings: Settings, synced: dict[str, Any]
) -> None:
    for sql, named in [
        ("SELECT * FROM nosuch", "nosuch"),
        ("SELECT * FROM blocks JOIN secrets USING (block_number)", "secrets"),
        ('SELECT * FROM "analyst.blocks.parquet"', "analyst.blocks.parquet"),
        ("SELECT * FROM dataset", "dataset"),  # no dataset named: `dataset` is nobody
    ]:
        with pytest.raises(TraceError) as caught:
            await ask(a_settings, sql)
        assert caught.value.status == 400
        assert caught.value.extra.get("reason") == "sql_relation_not_allowed"
        assert named in caught.value.detail and "SELECT" not in caught.value.detail
    other = uuid.uuid4()
    with pytest.raises(TraceError) as caught:
        await ask(a_settings, "SELECT count(*) FROM blocks", job=None, org_id=other)
    assert caught.value.extra.get("reason") == "sql_relation_not_allowed"
    with pytest.raises(NotFoundError):
        await ask(a_settings, "SELECT 1", job=JOB, org_id=other)


async def test_a_cte_may_not_smuggle_a_file_or_shadow_into_another_relation(
    a_settings: Settings, synced: dict[str, Any]
) -> None:
    for sql in [
        'WITH "x.parquet" AS (SELECT 1) SELECT * FROM "x.parquet"',
        "SELECT * FROM (WITH t AS (SELECT 1 AS a) SELECT * FROM t) s, t",
    ]:
        with pytest.raises(TraceError) as caught:
            await ask(a_settings, sql)
        assert caught.value.status == 400
    # A CTE named like a relation is the CTE inside its query.
    answer = await ask(a_settings, "WITH blocks AS (SELECT 7 AS block_number) SELECT * FROM blocks")
    assert answer.rows == [[7]]


# -- the corpus ---------------------------------------------------------------------------

CORPUS: list[str] = [
    # 1-10: counts, activity, time buckets
    "SELECT count(*) AS blocks, min(block_number), max(block_number) FROM blocks",
    "SELECT date_trunc('day', to_timestamp(timestamp)) AS day, count(*) FROM blocks GROUP BY 1 ORDER BY 1",
    "SELECT date_trunc('day', to_timestamp(b.timestamp)) AS day, count(DISTINCT t.from_address) AS active"
    " FROM transactions t JOIN blocks b USING (block_number) GROUP BY 1 ORDER BY 1",
    "SELECT date_trunc('hour', to_timestamp(timestamp)) AS h, sum(gas_used) FROM blocks GROUP BY ALL ORDER BY h",
    "SELECT strftime(to_timestamp(timestamp), '%Y-%m-%d') AS day, avg(gas_used) FROM blocks GROUP BY 1 ORDER BY 1",
    "SELECT extract(hour FROM to_timestamp(timestamp)) AS hour, count(*) FROM blocks GROUP BY 1 ORDER BY 1",
    "SELECT dayofweek(to_timestamp(timestamp)) AS dow, count(*) FROM blocks GROUP BY 1 ORDER BY 1",
    "SELECT time_bucket(INTERVAL '6 hours', to_timestamp(timestamp)) AS bucket, count(*) FROM blocks GROUP BY 1 ORDER BY 1",
    "SELECT approx_count_distinct(from_address) AS senders, count(DISTINCT to_address) FROM transactions",
    "SELECT count(*) FILTER (WHERE gas_used > 0) AS busy, count(*) FILTER (WHERE gas_used = 0) AS empty FROM blocks",
    # 11-20: gas over windows, window functions, QUALIFY
    "SELECT block_number, gas_used, avg(gas_used) OVER (ORDER BY block_number ROWS BETWEEN 9 PRECEDING AND CURRENT ROW) AS ma10"
    " FROM blocks ORDER BY block_number",
    "SELECT block_number, sum(gas_used) OVER (ORDER BY block_number) AS cumulative FROM blocks ORDER BY block_number DESC LIMIT 5",
    "SELECT block_number, gas_used::BIGINT - lag(gas_used::BIGINT) OVER (ORDER BY block_number) AS delta"
    " FROM blocks WHERE gas_used > 0",
    "SELECT from_address, block_number, row_number() OVER (PARTITION BY from_address ORDER BY block_number) AS nth"
    " FROM transactions QUALIFY nth = 1",
    "SELECT * FROM erc20_transfers QUALIFY row_number() OVER (PARTITION BY to_address ORDER BY block_number DESC) = 1",
    "SELECT block_number, rank() OVER (ORDER BY gas_used DESC) AS r FROM blocks QUALIFY r <= 3",
    "SELECT to_address, ntile(4) OVER (ORDER BY sum(value_f64)) AS quartile FROM erc20_transfers GROUP BY to_address",
    "SELECT block_number, lead(block_number) OVER (ORDER BY block_number) - block_number AS gap"
    " FROM (SELECT DISTINCT block_number FROM transactions) ORDER BY 1",
    "SELECT from_address, first_value(block_number) OVER w, last_value(block_number) OVER w FROM transactions"
    " WINDOW w AS (PARTITION BY from_address ORDER BY block_number ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)",
    "SELECT block_number, percent_rank() OVER (ORDER BY gas_used) FROM blocks WHERE gas_used > 0",
    # 21-30: token senders, amounts, 256-bit values
    "SELECT from_address, count(*) AS n, sum(value_f64) AS amount FROM erc20_transfers GROUP BY 1 ORDER BY amount DESC LIMIT 10",
    "SELECT lower(from_address) AS sender, count(*) FROM erc20_transfers GROUP BY 1 ORDER BY 2 DESC",
    "SELECT lower(erc20) AS token, count(*) FROM erc20_transfers GROUP BY token",
    "SELECT to_address, sum(CAST(value_string AS HUGEINT)) AS total FROM erc20_transfers GROUP BY 1 ORDER BY total DESC",
    "SELECT sum(CAST(value_string AS DECIMAL(38, 0))) / 1e18 AS tokens FROM erc20_transfers",
    "SELECT max(value_f64), min(value_f64), median(value_f64), quantile_cont(value_f64, 0.9) FROM erc20_transfers",
    "SELECT from_address, to_address, count(*) FROM erc20_transfers GROUP BY ALL HAVING count(*) > 1 ORDER BY 3 DESC",
    "SELECT arg_max(to_address, value_f64) AS biggest_receiver, max(value_f64) FROM erc20_transfers",
    "SELECT block_number, transaction_hash FROM erc20_transfers WHERE value_f64 > 1e20 ORDER BY block_number",
    "SELECT count(*) FROM erc20_transfers WHERE from_address = '0x"
    + "00" * 20
    + "' OR value_f64 > 0",
    # 31-40: hex / bytes handling
    "SELECT '0x' || lower(hex(unhex(substr(block_hash, 3)))) = block_hash AS same FROM blocks LIMIT 3",
    "SELECT transaction_hash, length(input), octet_length(unhex(substr(input, 3))) FROM transactions LIMIT 5",
    "SELECT substr(input, 1, 10) AS selector, count(*) FROM transactions GROUP BY 1 ORDER BY 2 DESC",
    "SELECT count(*) FROM transactions WHERE starts_with(input, '0xa9059cbb')",
    "SELECT topic0, count(*) FROM logs GROUP BY 1",
    "SELECT '0x' || right(topic1, 40) AS sender FROM logs WHERE topic1 IS NOT NULL LIMIT 5",
    "SELECT count(*) FROM logs WHERE topic0 = '0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef'",
    "SELECT address, count(*) FROM logs GROUP BY address",
    "SELECT md5(block_hash), sha256(block_hash) FROM blocks LIMIT 2",
    "SELECT upper(hex(from_address)) = upper(hex(from_address)) AS same FROM transactions LIMIT 1",
    # 41-50: CTEs, subqueries, set operations
    "WITH daily AS (SELECT date_trunc('day', to_timestamp(timestamp)) AS day, block_number FROM blocks)"
    " SELECT d.day, count(t.transaction_hash) FROM daily d LEFT JOIN transactions t USING (block_number) GROUP BY 1 ORDER BY 1",
    "WITH s AS (SELECT from_address AS a FROM erc20_transfers), r AS (SELECT to_address AS a FROM erc20_transfers)"
    " SELECT count(*) FROM (SELECT a FROM s INTERSECT SELECT a FROM r)",
    "SELECT from_address AS a FROM erc20_transfers UNION SELECT to_address FROM erc20_transfers",
    "SELECT to_address FROM erc20_transfers EXCEPT SELECT from_address FROM erc20_transfers",
    "SELECT block_number FROM logs UNION ALL SELECT block_number FROM erc20_transfers ORDER BY 1 LIMIT 10",
    "SELECT * FROM blocks WHERE block_number IN (SELECT block_number FROM erc20_transfers WHERE value_f64 > 1e20)",
    "SELECT b.block_number FROM blocks b WHERE EXISTS (SELECT 1 FROM transactions t WHERE t.block_number = b.block_number)",
    "SELECT (SELECT count(*) FROM logs) AS logs, (SELECT count(*) FROM erc20_transfers) AS transfers",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT i FROM n",
    "WITH tx AS (SELECT * FROM transactions), bl AS (SELECT * FROM blocks)"
    " SELECT bl.block_number, count(*) FROM tx JOIN bl USING (block_number) GROUP BY 1 ORDER BY 2 DESC LIMIT 3",
    # 51-62: casts, conditionals, strings, misc
    "SELECT CASE WHEN gas_used = 0 THEN 'empty' WHEN gas_used < 100000 THEN 'light' ELSE 'heavy' END AS kind, count(*)"
    " FROM blocks GROUP BY 1",
    "SELECT coalesce(to_address, from_address), nullif(gas_used, 0) FROM transactions LIMIT 5",
    "SELECT CAST(timestamp AS BIGINT) * 1000 AS ms, epoch_ms(CAST(timestamp AS BIGINT) * 1000) FROM blocks LIMIT 3",
    "SELECT block_number::VARCHAR || ':' || transaction_index::VARCHAR AS id FROM transactions LIMIT 3",
    "SELECT greatest(max(block_number), 0), least(min(block_number), 1000) FROM transactions",
    "SELECT round(avg(gas_used), 2), stddev_samp(gas_used) FROM blocks",
    "SELECT block_number % 10 AS bucket, count(*) FROM blocks GROUP BY ROLLUP (bucket) ORDER BY bucket NULLS LAST",
    "SELECT list(DISTINCT transaction_type) AS types FROM transactions",
    "SELECT string_agg(DISTINCT CAST(success AS VARCHAR), ',') FROM transactions",
    "SELECT bool_and(success), bool_or(success), count_if(success) FROM transactions",
    "SELECT * FROM blocks ORDER BY block_number DESC LIMIT 5 OFFSET 2",
    "SELECT date_diff('hour', to_timestamp(min(timestamp)), to_timestamp(max(timestamp))) AS hours FROM blocks",
    "SELECT t.block_number, b.timestamp, l.log_index FROM transactions t JOIN blocks b USING (block_number)"
    " JOIN logs l ON l.transaction_hash = t.transaction_hash AND l.block_number = t.block_number ORDER BY 1, 3",
]


def test_the_corpus_is_large_enough_and_distinct() -> None:
    assert len(CORPUS) >= 60
    assert len(set(CORPUS)) == len(CORPUS)


async def test_every_corpus_query_is_accepted_and_returns_rows(
    a_settings: Settings, synced: dict[str, Any]
) -> None:
    failures: list[str] = []
    for i, sql in enumerate(CORPUS, 1):
        try:
            answer = await ask(a_settings, sql)
        except TraceError as exc:
            failures.append(f"#{i}: {exc.extra.get('reason', exc.code)} {exc.detail}")
            continue
        if not answer.rows:
            failures.append(f"#{i}: no rows")
    assert failures == [], "\n".join(failures)


async def test_corpus_answers_with_known_values_are_right(
    a_settings: Settings, synced: dict[str, Any], node: Anvil
) -> None:
    (first,) = (await ask(a_settings, CORPUS[0])).rows
    assert first == [BLOCKS, 0, BLOCKS - 1]
    w3 = web3_of(node)
    stamps = [w3.eth.get_block(n)["timestamp"] for n in range(BLOCKS)]
    days = (await ask(a_settings, CORPUS[1])).rows
    assert sum(n for _, n in days) == BLOCKS
    assert len(days) == len({ts // 86400 for ts in stamps})
    hours = (await ask(a_settings, CORPUS[-2])).rows
    assert hours == [[max(stamps) // 3600 - min(stamps) // 3600]]
    recursive = (await ask(a_settings, CORPUS[48])).rows
    assert recursive == [[1], [2], [3], [4], [5]]
    # The token's deployment is the one transaction without a `to`. cryo's files claimed no
    # NULL in to_address (a null_count statistic of 0), and a binding's first query (each
    # `ask` is one: it reads the files, nothing materialized) counted it, took the coalesce
    # for NULL, and found no row for `IS NULL` (the reader skipped the row group): cryo now
    # writes no statistics, and the engine propagates none from the files.
    deployer = w3.eth.get_block(1, full_transactions=True)["transactions"][0]["from"].lower()
    nulls = await ask(
        a_settings,
        "SELECT count(*) - count(to_address), count(DISTINCT to_address),"
        " (SELECT lower(coalesce(to_address, from_address)) FROM transactions"
        "  ORDER BY block_number, transaction_index LIMIT 1) FROM transactions",
    )
    assert nulls.rows == [[1, 2, deployer]]
    creations = await ask(
        a_settings,
        "SELECT block_number, lower(from_address) FROM transactions WHERE to_address IS NULL",
    )
    assert creations.rows == [[1, deployer]]
    # Exact 256-bit sums: HUGEINT over value_string equals web3's integer sum.
    token = w3.to_checksum_address(node.extra["token"])  # type: ignore[attr-defined]
    topic = "0x" + w3.keccak(text="Transfer(address,address,uint256)").hex()
    logs = w3.eth.get_logs(
        {"fromBlock": 0, "toBlock": BLOCKS - 1, "address": token, "topics": [topic]}
    )
    totals: Counter[str] = Counter()
    for log in logs:
        totals["0x" + bytes(log["topics"][2])[-20:].hex()] += int.from_bytes(
            bytes(log["data"]), "big"
        )
    answer = await ask(
        a_settings,
        "SELECT lower(to_address), sum(CAST(value_string AS HUGEINT)) FROM erc20_transfers"
        " GROUP BY 1 ORDER BY 1",
    )
    assert [[a, int(v)] for a, v in answer.rows] == sorted([a, v] for a, v in totals.items())


# -- the corpus through every answer format and through query runs (SPEC §21) -------------

FORMATS = ("json", "arrow", "csv", "parquet")
INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
INTEGERS |= {"UBIGINT", "HUGEINT", "UHUGEINT"}
FLOATS = {"FLOAT", "DOUBLE"}
LIMIT = 10_000  # above every corpus answer: none is cut


@pytest.fixture(scope="module")
async def stack(
    a_settings: Settings, synced: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ApiStack]:
    async with api_stack(a_settings, tmp_path_factory.mktemp("apilogs")) as s:
        yield s


@pytest.fixture(scope="module")
async def reader(a_settings: Settings, stack: ApiStack) -> dict[str, str]:
    """A reader's bearer header."""
    pool = await create_pool(a_settings.state_database_url or "", max_size=2)
    try:
        user = await create_user(env_of(pool), LITE_ORG_ID, "analyst-reader", "reader")
    finally:
        await pool.close()
    return {"Authorization": f"Bearer {user.api_key}"}


def exact(value: Any) -> Any:
    """One value in one form whatever carried it: an integral decimal as an int (Arrow
    and Parquet carry HUGEINT as a decimal), a fractional one normalized (1.2500 is 1.25),
    lists and structs value by value, an aware timestamp in UTC (JSON's offset, Arrow's
    zone name: the same instant)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value.normalize()
    if isinstance(value, list):
        return [exact(v) for v in value]
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    return value


def typed(value: Any, column_type: str) -> Any:
    """A JSON answer's value as its column's type says: JSON carries timestamps and dates
    as ISO text, decimals and integers beyond 64 bits as text."""
    if value is None:
        return None
    if column_type.startswith("TIMESTAMP"):
        return exact(datetime.fromisoformat(value))
    if column_type == "DATE":
        return date.fromisoformat(value)
    if column_type.startswith("DECIMAL") or column_type in INTEGERS:
        return exact(Decimal(str(value)))
    return exact(value)


def from_csv(text: str, column_type: str) -> Any:
    """A CSV field read as its column's type (the JSON answer's): nested values are JSON
    text; an empty field is NULL, except in a VARCHAR column (CSV cannot tell NULL from '')."""
    if column_type == "VARCHAR":
        return text
    if text == "":
        return None
    if column_type == "BOOLEAN":
        return {"true": True, "false": False}[text]
    if column_type in FLOATS:
        return float(text)
    if column_type.endswith("]") or column_type.startswith(("STRUCT", "MAP")):
        return exact(orjson.loads(text))
    return typed(text, column_type)


def answer_rows(fmt: str, body: bytes, types: list[str]) -> list[tuple[Any, ...]]:
    """An answer's rows as exact values (`types`: the JSON answer's column types)."""
    if fmt == "json":
        doc = orjson.loads(body)
        assert doc["truncated"] is False
        return [tuple(typed(v, t) for v, t in zip(r, types, strict=True)) for r in doc["rows"]]
    if fmt == "csv":
        header, *rows = csv.reader(io.StringIO(body.decode()))
        assert len(header) == len(types)
        return [tuple(from_csv(v, t) for v, t in zip(r, types, strict=True)) for r in rows]
    if fmt == "arrow":
        table = pa.ipc.open_stream(body).read_all()
    else:
        table = pq.read_table(pa.BufferReader(body))
    assert table.num_columns == len(types)
    columns = [[exact(v) for v in c.to_pylist()] for c in table.columns]
    return list(zip(*columns, strict=True)) if columns else []


def as_csv_holds(rows: list[tuple[Any, ...]], types: list[str]) -> list[tuple[Any, ...]]:
    """JSON's rows as CSV can hold them: a VARCHAR NULL is an empty field."""
    return [
        tuple("" if v is None and t == "VARCHAR" else v for v, t in zip(r, types, strict=True))
        for r in rows
    ]


def differ(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> str:
    """'' when they are the same rows in any order (each format is its own execution, and
    most corpus queries leave the order of some rows open), else the first that differ."""
    got_text, expected_text = sorted(map(repr, got)), sorted(map(repr, expected))
    if got_text == expected_text:
        return ""
    if len(got_text) != len(expected_text):
        return f"{len(got_text)} rows, not {len(expected_text)}"
    return next(f"{g} != {e}" for g, e in zip(got_text, expected_text, strict=True) if g != e)


async def test_every_corpus_query_answers_the_same_values_in_every_format_and_as_a_run(
    stack: ApiStack, reader: dict[str, str]
) -> None:
    """Each query as JSON, Arrow, CSV and Parquet from `POST /v1/query`, and as a query run
    in each format fetched by its signed URL, with the values of the JSON answer (wide
    integers exact, timestamps with their zone). The runs are all submitted first and run
    in the query service while the direct answers are compared."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, headers=reader) as http:
        runs: dict[tuple[int, str], str] = {}
        for i, sql in enumerate(CORPUS):
            for fmt in FORMATS:
                body = {"sql": sql, "job": JOB, "format": fmt, "limit": LIMIT}
                r = await http.post("/v1/query-runs", json=body)
                assert r.status_code == 202, (i + 1, r.text)
                runs[(i, fmt)] = r.json()["run_id"]
        expected: list[tuple[list[str], list[tuple[Any, ...]]]] = []
        failures: list[str] = []
        for i, sql in enumerate(CORPUS):
            r = await http.post("/v1/query", json={"sql": sql, "job": JOB, "limit": LIMIT})
            assert r.status_code == 200, (i + 1, r.text)
            types = [c["type"] for c in r.json()["columns"]]
            rows = answer_rows("json", r.content, types)
            expected.append((types, rows))
            for fmt in FORMATS[1:]:
                body = {"sql": sql, "job": JOB, "format": fmt, "limit": LIMIT}
                r = await http.post("/v1/query", json=body)
                assert r.status_code == 200, (i + 1, fmt, r.text)
                assert r.headers["x-trace-truncated"] == "false"
                want = as_csv_holds(rows, types) if fmt == "csv" else rows
                if why := differ(answer_rows(fmt, r.content, types), want):
                    failures.append(f"#{i + 1} {fmt}: {why}")
        assert failures == [], "\n".join(failures)
        for (i, fmt), run_id in runs.items():  # they finish in the order they were sent
            done = await wait_run(http, run_id)
            assert done["status"] == "succeeded", (i + 1, fmt, done)
            assert done["truncated"] is False
            got = await http.get(done["url"], headers={"Authorization": ""})
            assert got.status_code == 200, (i + 1, fmt, got.text)
            types, rows = expected[i]
            want = as_csv_holds(rows, types) if fmt == "csv" else rows
            if why := differ(answer_rows(fmt, got.content, types), want):
                failures.append(f"#{i + 1} run {fmt}: {why}")
        assert failures == [], "\n".join(failures)


async def wait_run(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        r = await http.get(f"/v1/query-runs/{run_id}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc if doc["status"] in ("succeeded", "failed", "canceled") else None

    found: dict[str, Any] = await wait_until(finished, 120, 0.05, f"query run {run_id}")
    return found
