"""A paused chain job asks its node nothing: after `trace demo` its jobs stay paused, not in
error, although the node (and the pool naming it) is gone."""

from __future__ import annotations

from tests.chain_helpers import apply, spec_yaml, status
from trace_platform.chain.planner import HeadObserver
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.ops.chains import set_paused
from trace_platform.ops.env import open_env
from trace_platform.ports import LITE_ORG_ID


async def test_a_paused_job_whose_pool_is_gone_shows_no_error(settings: Settings) -> None:
    mode = "{kind: fixed_target, from_block: 0, to_block: 30}"
    streams = {"blocks": {"cryo_dataset": "blocks", "chunk_size": 10}}
    text = "---\n".join(spec_yaml(n, mode, streams, rpc_pool="gone") for n in ("kept", "parked"))
    await apply(settings, text)
    async with open_env(settings) as env:
        await set_paused(env, LITE_ORG_ID, "parked", True)
    pool = await create_pool(settings.state_database_url or "", max_size=2)
    observer = HeadObserver(pool, settings)
    try:
        await observer.tick()
    finally:
        await observer.close()
        await pool.close()
    kept, parked = await status(settings, "kept"), await status(settings, "parked")
    assert kept["state"] == "error" and kept["error"].startswith("rpc_pool_missing"), kept
    assert parked["state"] == "paused" and parked["error"] is None, parked
