"""DAG generations (SPEC §19, invariant 21) against a real anvil behind a counting JSON-RPC
proxy, cryo, Postgres, query service, executor and worker: changing level 2's SQL of a
3-level DAG builds levels 2-3 beside the current ones from committed data (no range request
reaches the node, the alert on the rebuilt output included), level 1 keeps its partitions,
a reader polling throughout sees the old generation whole until the cut-over and the new
one whole after; a rollback restores the old rows creating no task; a purge deletes a kept
generation's rows and files and refuses the current one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chain_helpers import apply
from tests.conftest import (
    Proc,
    wait_until,
)
from tests.delivery_helpers import Receiver
from tests.integration.test_dags import (  # noqa: F401 (node: a fixture)
    LEVEL1,
    chain_spec,
    dag_stack,
    node,
)
from tests.rpc_proxy import FaultProxy
from trace_platform.alerts.headers import AlertBlockHeaders
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.delivery.signing import new_secret
from trace_platform.domain.errors import ConflictError, TraceError
from trace_platform.ops.dags import dag_status, purge_dag, rollback_dag
from trace_platform.ops.datasets import query_here
from trace_platform.ops.env import open_env
from trace_platform.ports import LITE_ORG_ID

BLOCKS = 60
SECRET = new_secret()
SWAPS = 12
# Level 2 tags its rows with its version; level 3 carries the tag on.
LEVEL2 = (
    "SELECT block_number, log_index, transaction_hash, address AS pool, '{tag}' AS tag FROM swaps"
)
LEVEL3 = "SELECT pool, tag, count(*) AS swaps FROM pool_volume GROUP BY 1, 2"
# Requests that name blocks: what a rebuild must never send.
NON_RANGE = {"eth_chainId", "eth_blockNumber", "net_version", "web3_clientVersion"}


def spec(tag: str) -> str:
    return (
        "kind: dag\nname: gx\ndefaults: {max_concurrency: 3}\njobs:\n"
        "  swaps:\n"
        "    inputs: [{chain: gpools}]\n"
        f"    sql: {json.dumps(LEVEL1)}\n"
        "    unique_key: [transaction_hash, log_index]\n"
        "    backfill_blocks: 20\n"
        "  pool_volume:\n"
        "    inputs: [{job: swaps}]\n"
        f"    sql: {json.dumps(LEVEL2.format(tag=tag))}\n"
        "    backfill_blocks: 10\n"
        "  busiest:\n"
        "    inputs: [{job: pool_volume}]\n"
        f"    sql: {json.dumps(LEVEL3)}\n"
        "    backfill_blocks: 25\n"
    )


@pytest.fixture(scope="module")
def proxy(node: Anvil) -> Iterator[FaultProxy]:  # noqa: F811
    p = FaultProxy(node.url)
    yield p
    p.close()


@pytest.fixture(scope="module")
def g_settings(settings: Settings, proxy: FaultProxy) -> Settings:
    return settings.replace(
        chain_interval=0.1,
        rpc_pools=(("local", proxy.url),),
        delivery_allow_private=True,
        delivery_retry_base_seconds=0.1,
    )


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture(scope="module")
async def stack(
    g_settings: Settings,
    node: Anvil,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, Proc]]:
    async with dag_stack(
        g_settings, tmp_path_factory.mktemp("logs"), chain_spec(node, "gpools"), SECRET
    ) as procs:
        yield procs


async def status(settings: Settings) -> dict[str, Any]:
    async with open_env(settings) as env:
        return dataclasses.asdict(await dag_status(env, LITE_ORG_ID, "gx"))


async def built(settings: Settings) -> dict[str, Any] | None:
    st = await status(settings)
    ok = st["building_generation"] is None and all(
        j["committed_to"] >= BLOCKS and j["in_flight"] == 0 for j in st["jobs"]
    )
    return st if ok else None


async def fetch(settings: Settings, sql: str, *args: Any) -> list[Any]:
    async with open_env(settings) as env:
        return list(await env.state.fetch(sql, *args))


async def partitions(settings: Settings, relation: str) -> dict[Any, Any]:
    rows = await fetch(
        settings,
        "SELECT p.partition_id, p.range_start, p.files FROM state.dataset_partitions p"
        " JOIN state.datasets d USING (dataset_uuid) WHERE d.name = $1 AND p.removed_seq IS NULL",
        relation,
    )
    return {r["partition_id"]: r for r in rows}


READER = (
    "SELECT 'l2' AS level, tag, count(*) AS n FROM \"gx.pool_volume\" GROUP BY 1, 2"
    " UNION ALL SELECT 'l3', tag, sum(swaps) FROM \"gx.busiest\" GROUP BY 1, 2"
)


async def read_levels(settings: Settings) -> list[tuple[str, str, int]]:
    """What one query of both rebuilt levels sees: (level, tag, rows or swaps)."""
    async with open_env(settings) as env:
        answer = await query_here(env, LITE_ORG_ID, None, READER, 100, None)
    return sorted((str(r[0]), str(r[1]), int(r[2])) for r in answer.rows)


def range_calls(proxy: FaultProxy, since: float) -> list[Any]:
    return [c for c in proxy.calls_since(since) if set(c.methods) - NON_RANGE]


async def test_a_changed_job_rebuilds_beside_the_current_one_and_cuts_over_whole(
    g_settings: Settings,
    stack: dict[str, Proc],
    proxy: FaultProxy,
    receiver: Receiver,
    node: Anvil,  # noqa: F811
) -> None:
    await apply(g_settings, spec("v1"))
    await wait_until(lambda: built(g_settings), 120, 0.2, "generation 1 built")
    alert = (
        "kind: alert\nname: gx-volume\nsource: {dataset: gx.pool_volume}\n"
        "start: {from_block: 0}\n"
        'rule: {sql: "SELECT block_number, transaction_hash, log_index, tag FROM dataset"}\n'
        "identity: [transaction_hash, log_index]\n"
        f"channels: [{{type: webhook, url: '{receiver.url('/gx')}',"
        " secret_env: TRACE_HOOK_SECRET_DAG}]\n"
    )
    await apply(g_settings, alert)

    def delivered() -> dict[str, int]:
        return receiver.per_tx("/gx")

    await wait_until(lambda: len(delivered()) == SWAPS, 60, 0.1, "every swap alerted")
    assert await read_levels(g_settings) == [("l2", "v1", SWAPS), ("l3", "v1", SWAPS)]
    level1 = await partitions(g_settings, "gx.swaps")
    old_l2 = await partitions(g_settings, "gx.pool_volume")
    before = await status(g_settings)
    assert before["generation"] == 1 and before["building_generation"] is None

    seen: list[list[tuple[str, str, int]]] = []
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            seen.append(await read_levels(g_settings))

    reader = asyncio.create_task(poll())
    await wait_until(lambda: len(seen) >= 3, 30, 0.05, "the reader reading")
    since = time.time()
    (result,) = await apply(g_settings, spec("v2"))
    assert result["jobs_changed"] == ["pool_volume", "busiest"]
    assert result["building_generation"] == 2
    building = await status(g_settings)
    assert building["generation"] == 1
    gens = {g["generation"]: g for g in building["generations"]}
    assert gens[2]["state"] == "building" or building["building_generation"] is None

    after = await wait_until(lambda: built(g_settings), 120, 0.2, "generation 2 cut over")
    await wait_until(lambda: len(seen) >= 3 and seen[-1][0][1] == "v2", 30, 0.05, "v2 read")
    stop.set()
    await reader

    # Every read saw one generation whole: v1 until the cut-over, v2 after, never a mix
    # and never a shrunken output.
    tags = []
    for levels in seen:
        assert {t for _, t, _ in levels} in ({"v1"}, {"v2"}), levels
        assert levels in (
            [("l2", "v1", SWAPS), ("l3", "v1", SWAPS)],
            [("l2", "v2", SWAPS), ("l3", "v2", SWAPS)],
        ), levels
        tags.append(levels[0][1])
    flip = tags.index("v2")
    assert flip > 0 and all(t == "v1" for t in tags[:flip]) and all(t == "v2" for t in tags[flip:])
    assert after["generation"] == 2
    assert {g["generation"]: g["state"] for g in after["generations"]} == {
        1: "retired",
        2: "current",
    }
    # Level 1 was not touched: the same partitions, by id.
    assert (await partitions(g_settings, "gx.swaps")).keys() == level1.keys()
    new_l2 = await partitions(g_settings, "gx.pool_volume")
    assert new_l2 and not (new_l2.keys() & old_l2.keys())

    # The alert now reads the rebuilt output: each of its partitions evaluated, headers from
    # the stored blocks, nothing delivered twice (same identity, same block hash).
    async def evaluated() -> bool:
        rows = await fetch(
            g_settings,
            "SELECT t.payload->'alert'->>'partition_id' AS p, t.status,"
            " t.payload->'alert'->>'headers_from' AS hf FROM state.tasks t"
            " WHERE t.payload->'alert'->>'partition_id' = ANY($1::text[])",
            [str(p) for p in new_l2],
        )
        return len(rows) == len(new_l2) and all(
            r["status"] == "completed" and r["hf"] == "gpools.blocks" for r in rows
        )

    try:
        await wait_until(evaluated, 60, 0.1, "the alert re-evaluated over generation 2")
    except AssertionError:
        tasks = await fetch(
            g_settings,
            "SELECT t.status, t.last_error FROM state.tasks t"
            " WHERE t.payload->'alert'->>'partition_id' = ANY($1::text[])",
            [str(p) for p in new_l2],
        )
        raise AssertionError(f"re-evaluations: {[dict(t) for t in tasks]}") from None
    assert all(n == 1 for n in delivered().values()) and len(delivered()) == SWAPS
    # A UDF rule's evaluation asks the dispatcher for its headers: a re-evaluation's come
    # from the stored blocks, equal to the node's.
    (task,) = await fetch(
        g_settings,
        "SELECT t.task_id, t.payload->'alert' AS a FROM state.tasks t"
        " WHERE t.payload->'alert'->>'partition_id' = $1",
        str(next(iter(new_l2))),
    )
    lo, hi = int(task["a"]["start"]), int(task["a"]["end"])
    numbers = [lo, (lo + hi) // 2, hi - 1]
    async with open_env(g_settings) as env:
        stored = await AlertBlockHeaders(env.state, g_settings)(task["task_id"], numbers)
    on_node = {
        str(n): [b["hash"], int(b["timestamp"], 16)]
        for n in numbers
        for b in [node.rpc("eth_getBlockByNumber", [hex(n), False])]
    }
    assert stored == on_node
    # Not one request naming blocks reached the node since the change was applied.
    assert range_calls(proxy, since) == []

    # A hidden generation is not a relation readers can name.
    hidden = await fetch(
        g_settings,
        "SELECT d.name FROM state.datasets d JOIN state.dag_jobs j USING (dataset_uuid)"
        " WHERE j.role = 'retired'",
    )
    assert len(hidden) == 2 and all(r["name"].startswith("gen-") for r in hidden)
    async with open_env(g_settings) as env:
        with pytest.raises(TraceError):
            await query_here(env, LITE_ORG_ID, None, f'SELECT * FROM "{hidden[0]["name"]}"', 5)

    # Rollback: the old rows again, no task created, no RPC.
    tasks = await fetch(g_settings, "SELECT count(*) AS n FROM state.tasks")
    async with open_env(g_settings) as env:
        back = await rollback_dag(env, LITE_ORG_ID, "gx")
    assert (back.from_generation, back.to_generation, back.jobs) == (2, 1, 2)
    assert await read_levels(g_settings) == [("l2", "v1", SWAPS), ("l3", "v1", SWAPS)]
    assert (await partitions(g_settings, "gx.pool_volume")).keys() == old_l2.keys()
    st = await wait_until(lambda: built(g_settings), 30, 0.2, "rolled back")
    assert st["generation"] == 1

    async def switched_events_done() -> bool:
        rows = await fetch(
            g_settings,
            "SELECT status FROM state.outbox WHERE topic = 'dag.generation_switched'",
        )
        return len(rows) == 2 and all(r["status"] == "sent" for r in rows)

    await wait_until(switched_events_done, 30, 0.1, "the rollback's alert move handled")
    assert await fetch(g_settings, "SELECT count(*) AS n FROM state.tasks") == tasks
    assert range_calls(proxy, since) == []

    # Purge: the current generation is refused; the retired one goes, rows and files.
    async with open_env(g_settings) as env:
        with pytest.raises(ConflictError):
            await purge_dag(env, LITE_ORG_ID, "gx", 1)
        purged = await purge_dag(env, LITE_ORG_ID, "gx", 2)
    assert purged.jobs == 2 and purged.partitions >= len(new_l2) and purged.files >= len(new_l2)
    for p in new_l2.values():
        for f in p["files"]:
            assert not Path(f["uri"].removeprefix("file://")).exists()
    left = await fetch(
        g_settings,
        "SELECT count(*) AS n FROM state.dataset_partitions WHERE partition_id = ANY($1::uuid[])",
        list(new_l2),
    )
    assert left[0]["n"] == 0
    st = await status(g_settings)
    assert {g["generation"]: g["state"] for g in st["generations"]} == {1: "current", 2: "purged"}
    # Purging it again is a conflict saying why, not a success that deleted nothing.
    async with open_env(g_settings) as env:
        with pytest.raises(ConflictError) as again:
            await purge_dag(env, LITE_ORG_ID, "gx", 2)
    assert again.value.status == 409
    assert again.value.detail == "generation 2 is already purged"
    assert await read_levels(g_settings) == [("l2", "v1", SWAPS), ("l3", "v1", SWAPS)]
    async with open_env(g_settings) as env:
        with pytest.raises(ConflictError):
            await rollback_dag(env, LITE_ORG_ID, "gx")  # nothing kept before generation 1
