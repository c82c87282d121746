"""A chain reorganisation while ranges past the old tip are in flight (SPEC §11): the repair
cancels the tasks of every range it replaces in its own transaction, their running attempts
stop, the node is asked nothing more for those ranges, and the new fork is synced in full.
Real anvil (evm_snapshot / evm_revert), real cryo, real dispatcher and worker processes; the
counting proxy of tests/rpc_proxy.py in front of the node holds the in-flight ranges'
requests (so they are in flight, deterministically) and records which blocks were asked for
when."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.chain_helpers import (
    apply,
    node_blocks,
    node_log_counts,
    rows,
    spec_yaml,
    wait_synced,
)
from tests.conftest import Proc, start_dispatcher, start_proc, wait_until
from tests.rpc_proxy import FaultProxy
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.ops.chains import set_paused
from trace_platform.ops.env import open_env
from trace_platform.ports import LITE_ORG_ID

STREAMS = {
    "blocks": {"cryo_dataset": "blocks", "chunk_size": 4, "max_inflight": 4},
    "logs": {"cryo_dataset": "logs", "chunk_size": 4, "max_inflight": 4},
}
MODE = (
    "{kind: follow_head, from_block: 0, tail_lag: 0, head_poll_seconds: 0.1,"
    " max_head_age_seconds: 600}"
)
IN_FLIGHT = """SELECT r.task_id, r.stream, r.range_start, r.status AS range_status,
       t.status, t.attempt, t.last_error
FROM state.chain_ranges r JOIN state.tasks t USING (task_id)
JOIN state.chain_jobs j USING (job_id)
WHERE j.name = 'forked' AND r.task_id = ANY($1::uuid[])"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def proxy(node: Anvil) -> Iterator[FaultProxy]:
    made = FaultProxy(node.url)
    yield made
    made.release()
    made.close()


@pytest.fixture(scope="module")
def r_settings(settings: Settings, proxy: FaultProxy) -> Settings:
    # (lease 2 s: a worker heartbeats every 0.67 s; RPC calls held by the proxy must not
    # time out while the test holds them)
    return settings.replace(
        chain_interval=0.1, chain_rpc_timeout_seconds=60.0, rpc_pools=(("forked", proxy.url),)
    )


@pytest.fixture(scope="module")
async def procs(
    r_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    started = {
        "dispatcher": await start_dispatcher(r_settings, logs),
        "worker": start_proc(r_settings, logs, "worker"),
    }
    yield started
    for p in started.values():
        p.stop()


async def pause(settings: Settings, paused: bool) -> None:
    async with open_env(settings) as env:
        await set_paused(env, LITE_ORG_ID, "forked", paused)


def traffic(node: Anvil, token: str, blocks: int, seed: int) -> None:
    """`blocks` blocks, each with token transfers (logs) whose amounts depend on `seed`."""
    for i in range(blocks):
        node.traffic_block(token, [10**18 * (seed + i + 1), 3 * 10**18 * (seed + i + 1)])


async def test_a_reorg_cancels_the_tasks_of_replaced_ranges_in_flight_and_asks_nothing_more(
    r_settings: Settings,
    procs: dict[str, Proc],
    node: Anvil,
    proxy: FaultProxy,
    state_conn: asyncpg.Connection,
) -> None:
    token = node.deploy_token()
    node.mine(10 - node.head())  # head 10: blocks up to here are shared by both forks
    snapshot = node.rpc("evm_snapshot")
    traffic(node, token, 1, seed=100)  # head 11: the old fork's block 11
    await apply(r_settings, spec_yaml("forked", MODE, STREAMS, rpc_pool="forked"))
    await wait_synced(r_settings, "forked", 12)  # [0, 4), [4, 8), [8, 12) committed

    # The old fork grows to 19; the planner schedules [12, 16) and [16, 20) of both streams
    # past the committed tip, the worker claims them, and their first request (the hashes
    # around the ranges) waits in the proxy: four attempts in flight.
    proxy.hold(12)
    traffic(node, token, 9, seed=200)  # head 20 -> eligible up to block 20: ranges to 20

    async def in_flight() -> list[asyncpg.Record] | None:
        found = await state_conn.fetch(
            "SELECT r.task_id FROM state.chain_ranges r JOIN state.tasks t USING (task_id)"
            " JOIN state.chain_jobs j USING (job_id) WHERE j.name = 'forked'"
            " AND r.status = 'scheduled' AND r.range_start >= 12 AND t.status = 'running'"
        )
        return found if len(found) == 4 and proxy.held >= 1 else None

    ids = [r["task_id"] for r in await wait_until(in_flight, 60, 0.05, "4 ranges in flight")]
    before = {r["task_id"]: r for r in await state_conn.fetch(IN_FLIGHT, ids)}
    assert {(r["stream"], r["range_start"]) for r in before.values()} == {
        (s, start) for s in STREAMS for start in (12, 16)
    }

    # Paused, the planner schedules nothing after the repair: any request for these blocks
    # from here on could only come from the replaced ranges' tasks. (The repair itself does
    # not depend on it: the head observer watches a paused job as any other.)
    await pause(r_settings, True)
    node.rpc("evm_revert", [snapshot])  # head 10
    traffic(node, token, 14, seed=300)  # a different, longer fork: head 24

    async def repaired() -> asyncpg.Record | None:
        return await state_conn.fetchrow(
            "SELECT j.reorgs, j.last_reorg, e.created_at FROM state.chain_jobs j"
            " JOIN state.chain_events e ON e.job_id = j.job_id AND e.kind = 'chain.reorg'"
            " WHERE j.name = 'forked'"
        )

    job = await wait_until(repaired, 60, 0.05, "the reorg repaired")
    assert job["reorgs"] == 1
    assert job["last_reorg"]["fork_block"] == 8  # [8, 12) ended on the old block 11
    repair_started = job["created_at"].timestamp()  # the repair transaction's start

    # In the repair's own transaction, every in-flight task of a replaced range was canceled
    # (none is left to re-extract and be refused at commit), at the attempt it was running.
    canceled = await state_conn.fetch(IN_FLIGHT, ids)
    assert [(r["range_status"], r["status"]) for r in canceled] == [("replaced", "canceled")] * 4
    assert all(r["last_error"].startswith("canceled: its range was replaced") for r in canceled)
    assert {r["task_id"]: r["attempt"] for r in canceled} == {
        t: r["attempt"] for t, r in before.items()
    }

    # Their running attempts learn it at their next heartbeat and stop...
    worker = procs["worker"]

    def stopped() -> bool:
        lines = [
            line for line in worker.log_text().splitlines() if "worker.attempt_stopped" in line
        ]
        return all(any(str(t) in line for line in lines) for t in ids)

    await wait_until(stopped, 30, 0.05, "the in-flight attempts stopped")
    # ... and once the requests they waited on are answered, the extractor drops their ranges
    # instead of extracting them: nothing more is asked of the node for a replaced range.
    proxy.release()
    await wait_until(
        lambda: "chain.extract_dropped" in worker.log_text(), 30, 0.05, "the ranges dropped"
    )
    assert proxy.held == 0
    asked = [c for c in proxy.calls_since(repair_started) if c.names_blocks(8, 20)]
    assert asked == [], asked

    # Resumed, the new fork is synced in full: every block and log as the node has them now.
    await pause(r_settings, False)
    await wait_synced(r_settings, "forked", 24)
    synced = await rows(
        r_settings, "forked.blocks", "SELECT block_number, block_hash FROM dataset ORDER BY 1"
    )
    canonical = node_blocks(node.url, 0, 24)
    assert {r[0]: r[1] for r in synced} == {n: b["hash"] for n, b in canonical.items()}
    logs = await rows(
        r_settings,
        "forked.logs",
        "SELECT block_number, count(*) FROM dataset GROUP BY 1 ORDER BY 1",
    )
    assert {r[0]: r[1] for r in logs} == node_log_counts(node.url, 0, 24)

    # The replaced ranges' tasks stayed canceled at the attempt they had: never retried, and
    # no commit of this job was refused.
    after = await state_conn.fetch(IN_FLIGHT, ids)
    assert {r["task_id"]: (r["status"], r["attempt"]) for r in after} == {
        t: ("canceled", r["attempt"]) for t, r in before.items()
    }
    refused = await state_conn.fetchval(
        "SELECT count(*) FROM state.tasks t JOIN state.chain_ranges r USING (task_id)"
        " JOIN state.chain_jobs j USING (job_id)"
        " WHERE j.name = 'forked' AND t.last_error LIKE 'commit rejected%'"
    )
    assert refused == 0
