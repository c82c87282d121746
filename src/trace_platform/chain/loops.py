"""Chain sync's dispatcher loops (planner, head observer, compaction). The planner plans
extraction only. What follows a committed range is not chain sync's business — decoded
tables, alert evaluations and DAG jobs are derived outputs, planned by the derived-output
scheduler (`dag.scheduler`): it announces `dataset.range_committed` (`dag.dependents`
listens); the dispatcher wires its commit hook's callback to wake that scheduler too."""

from __future__ import annotations

import asyncio

import asyncpg

from trace_platform.aio import LoopRunner
from trace_platform.chain.compaction import Compactor
from trace_platform.chain.planner import ChainPlanner, HeadObserver
from trace_platform.config import Settings
from trace_platform.ports import ObjectStore

NEVER_BUSY = 1 << 30
COMPACTION_INTERVAL = 5.0


def start_chain_loops(
    runner: LoopRunner,
    settings: Settings,
    pool: asyncpg.Pool,
    store: ObjectStore,
    plan_now: asyncio.Event,
) -> HeadObserver:
    """Start the extraction planner (woken early by `plan_now`: a head moved, a range
    committed), the head observer and the compactor; returns the observer, whose RPC
    sessions the caller closes."""
    planner = ChainPlanner(pool, settings)
    observer = HeadObserver(pool, settings, on_new_head=plan_now.set)
    # Retired files outlive every token that could still name their snapshot.
    gc_after = 2 * max(settings.token_ttl_seconds, settings.lease_seconds * 2)
    compactor = Compactor(pool, store, gc_after)
    runner.start("chain_planner", planner.tick, settings.chain_interval, NEVER_BUSY, plan_now)
    runner.start("chain_head", observer.tick, min(0.1, settings.chain_interval), NEVER_BUSY)
    runner.start("chain_compaction", compactor.tick, COMPACTION_INTERVAL, NEVER_BUSY)
    return observer
