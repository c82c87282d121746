"""Decoded tables are derived outputs (SPEC §15, §19): the dispatcher's one derived-output
scheduler plans them next to DAG jobs, woken by commits; the chain planner plans only what
it extracts from the node. Against a real Postgres, with a logs partition committed in the
ledger (no node: the chain job's pool is not configured)."""

from __future__ import annotations

import uuid

import asyncpg

from tests.helpers import env_of
from trace_platform.chain.planner import ChainPlanner
from trace_platform.config import Settings
from trace_platform.dag.scheduler import DerivedScheduler
from trace_platform.db.pool import create_pool
from trace_platform.db.sql import q
from trace_platform.ops.specs import apply_specs
from trace_platform.ports import LITE_ORG_ID
from trace_platform.stack import prepare

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
CHAIN = (
    "kind: chain_sync\nname: tokens\nchain_id: 1\nrpc_pool: nowhere\n"
    "mode: {kind: fixed_target, from_block: 0, to_block: 100}\n"
    "streams:\n  logs: {cryo_dataset: logs, chunk_size: 10}\n"
    "contracts:\n  token:\n"
    "    address: ['0x00000000000000000000000000000000000000aa']\n"
    f"    events: ['{TRANSFER}']\n"
)
DECODED = "token_Transfer"


async def commit_logs_partition(
    pool: asyncpg.Pool, start: int, end: int, job: str = "tokens"
) -> str:
    """A live partition [start, end) of the job's `logs` dataset, as a range commit leaves
    it; returns its file's URI."""
    logs = await pool.fetchval(
        "SELECT s.dataset_uuid FROM state.chain_streams s JOIN state.chain_jobs j USING (job_id)"
        " WHERE j.name = $1 AND s.stream = 'logs'",
        job,
    )
    uri = f"file:///store/logs/{start}.parquet"
    seq = await pool.fetchval(q("chain", "bump_commit_seq"), logs)
    files = [{"uri": uri, "size": 1, "sha256": "0" * 64, "rows": 1}]
    await pool.execute(
        q("chain", "insert_partition"),
        uuid.uuid4(),
        logs,
        start,
        end,
        files,
        1,
        1,
        None,
        "0xend",
        seq,
        None,
        False,
    )
    return uri


async def decoded_ranges(pool: asyncpg.Pool) -> list[tuple[int, int, dict[str, object]]]:
    rows = await pool.fetch(
        "SELECT r.range_start, r.range_end, t.payload FROM state.chain_ranges r"
        " JOIN state.tasks t USING (task_id) JOIN state.chain_jobs j USING (job_id)"
        " WHERE j.name = 'tokens' AND r.stream = $1 ORDER BY r.range_start",
        DECODED,
    )
    return [(r["range_start"], r["range_end"], r["payload"]) for r in rows]


async def test_a_logs_commit_is_decoded_by_the_derived_scheduler_not_the_chain_planner(
    settings: Settings,
) -> None:
    urls = await prepare(settings)
    pool = await create_pool(urls.state, max_size=2)
    try:
        await apply_specs(env_of(pool), LITE_ORG_ID, CHAIN)
        uri = await commit_logs_partition(pool, 0, 10)

        # The chain planner's tick plans extraction only: with no head (no node) it has
        # nothing to extract, and it leaves the decoded table to the derived scheduler.
        assert await ChainPlanner(pool, settings).tick() == 0
        assert await decoded_ranges(pool) == []

        scheduler = DerivedScheduler(pool, settings)
        assert await scheduler.tick() == 1
        ((start, end, payload),) = await decoded_ranges(pool)
        assert (start, end) == (0, 10)
        assert payload["operator"] == "chain_decode"
        assert payload["chain"]["logs"] == [uri]  # type: ignore[index]
        cursor = await pool.fetchval(
            "SELECT s.cursor FROM state.chain_streams s JOIN state.chain_jobs j USING (job_id)"
            " WHERE j.name = 'tokens' AND s.stream = $1",
            DECODED,
        )
        assert cursor == 10

        # Nothing new committed: a tick plans nothing twice; the next logs commit plans the
        # next range (a gap in the logs waits: [20, 30) before [10, 20) is not taken).
        assert await scheduler.tick() == 0
        await commit_logs_partition(pool, 20, 30)
        assert await scheduler.tick() == 0
        await commit_logs_partition(pool, 10, 20)
        assert await scheduler.tick() == 2
        assert [(s, e) for s, e, _ in await decoded_ranges(pool)] == [(0, 10), (10, 20), (20, 30)]
        assert await ChainPlanner(pool, settings).tick() == 0
    finally:
        await pool.close()


async def test_a_decoded_range_that_failed_for_good_stops_its_stream_with_the_reason(
    settings: Settings,
) -> None:
    urls = await prepare(settings)
    pool = await create_pool(urls.state, max_size=2)
    try:
        await apply_specs(env_of(pool), LITE_ORG_ID, CHAIN.replace("tokens", "failing"))
        await commit_logs_partition(pool, 0, 10, job="failing")
        scheduler = DerivedScheduler(pool, settings)
        assert await scheduler.tick() == 1
        await pool.execute(
            "UPDATE state.tasks SET status = 'failed', next_retry_at = NULL,"
            " last_error = 'chain_decode: ValueError: bad abi'"
            " WHERE task_id = (SELECT r.task_id FROM state.chain_ranges r"
            "  JOIN state.chain_jobs j USING (job_id) WHERE j.name = 'failing')"
        )
        await commit_logs_partition(pool, 10, 20, job="failing")
        assert await scheduler.tick() == 0  # stopped: [10, 20) is not planned
        stream = await pool.fetchrow(
            "SELECT s.status, s.last_error FROM state.chain_streams s"
            " JOIN state.chain_jobs j USING (job_id) WHERE j.name = 'failing' AND s.stream = $1",
            DECODED,
        )
        assert stream["status"] == "stopped"
        assert stream["last_error"] == "range [0, 10) failed: chain_decode: ValueError: bad abi"
        event = await pool.fetchrow(
            "SELECT e.detail FROM state.chain_events e JOIN state.chain_jobs j USING (job_id)"
            " WHERE j.name = 'failing' AND e.kind = 'chain.stream_stopped'"
        )
        assert event["detail"] == {
            "stream": DECODED,
            "range": [0, 10],
            "error": "chain_decode: ValueError: bad abi",
        }
    finally:
        await pool.close()
