"""Applying or resuming a DAG wakes the dispatcher's DAG scheduler at once (a
`trace_dag_planner` notification, sent when the change commits), instead of leaving it to the
scheduler's next tick; the dispatcher listens for it."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.helpers import env_of
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.db.sql import q
from trace_platform.ops.dags import set_dag_paused
from trace_platform.ops.specs import apply_specs
from trace_platform.ports import LITE_ORG_ID
from trace_platform.stack import prepare

CHAIN = (
    "kind: chain_sync\nname: wakes\nchain_id: 1\nrpc_pool: nowhere\n"
    "mode: {kind: fixed_target, from_block: 0, to_block: 100}\n"
    "streams:\n  blocks: {cryo_dataset: blocks, chunk_size: 10}\n"
)
DAG = (
    "kind: dag\nname: woken\njobs:\n"
    "  per_block: {inputs: [{chain: wakes}], sql: 'SELECT block_number FROM blocks'}\n"
)


async def test_apply_and_resume_wake_the_dag_scheduler_when_they_commit(
    settings: Settings,
) -> None:
    urls = await prepare(settings)
    pool = await create_pool(urls.state, max_size=2)
    listener = await asyncpg.connect(urls.state)
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("trace_dag_planner", lambda *args: woken.put_nowait(args[2]))
    try:
        env = env_of(pool)
        await apply_specs(env, LITE_ORG_ID, CHAIN)
        await apply_specs(env, LITE_ORG_ID, DAG)
        await asyncio.wait_for(woken.get(), 5)
        await set_dag_paused(env, LITE_ORG_ID, "woken", True)
        await set_dag_paused(env, LITE_ORG_ID, "woken", False)
        await asyncio.wait_for(woken.get(), 5)
        # A chain spec, a pause and an unchanged DAG wake nobody: nothing else arrived.
        await apply_specs(env, LITE_ORG_ID, DAG)
        await listener.execute("SELECT 1")  # a round trip: anything sent is delivered by now
        assert woken.empty()
    finally:
        await listener.close()
        await pool.close()


async def test_the_dispatchers_listener_wakes_the_dag_scheduler_on_that_notification(
    settings: Settings,
) -> None:
    from trace_platform.dispatcher.app import _listen_outbox

    urls = await prepare(settings)
    poke, plan_dags = asyncio.Event(), asyncio.Event()
    listener = await _listen_outbox(urls.state, poke, plan_dags)
    assert listener is not None
    other = await asyncpg.connect(urls.state)
    try:
        await other.execute(q("dags", "notify_planner"))
        await asyncio.wait_for(plan_dags.wait(), 5)
        assert not poke.is_set()  # the outbox drainer is not woken for it
    finally:
        await other.close()
        await listener.close()
