"""The one scheduler of derived outputs (SPEC §15, §19): everything computed from committed
input partitions — a chain job's decoded tables (`dag/decoded.py`), DAG jobs
(`dag/planner.py`) — is planned by one dispatcher loop, woken by the same events: a range
committed anywhere (the range commit hooks; `dataset.range_committed` from the outbox, whose
route in `dag/dependents.py` also schedules the alert evaluations of the new partition), a
DAG applied or resumed (`trace_dag_planner`), and its interval. A replacement (a reorg
repair, a recompute) rewinds what derived from the lost ranges in its own transaction; this
loop plans them again as their inputs commit again.

The chain planner plans only extraction; chain sync announces commits and replacements and
imports none of this (the `chain-announces` import contract).
"""

from __future__ import annotations

import asyncio

import asyncpg

from trace_platform.aio import LoopRunner
from trace_platform.config import Settings
from trace_platform.dag.decoded import DecodedPlanner
from trace_platform.dag.planner import DagPlanner

NEVER_BUSY = 1 << 30


class DerivedScheduler:
    """One tick plans every derived output: decoded streams, then DAG jobs."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.decoded = DecodedPlanner(pool, settings)
        self.dags = DagPlanner(pool)

    async def tick(self) -> int:
        """Returns the ranges and runs scheduled."""
        return await self.decoded.tick() + await self.dags.tick()


def start_derived_loops(
    runner: LoopRunner, pool: asyncpg.Pool, settings: Settings, wake: asyncio.Event
) -> None:
    """The derived-output scheduler's loop (`derived_scheduler`), every `chain_interval`
    and woken early by `wake`."""
    scheduler = DerivedScheduler(pool, settings)
    runner.start("derived_scheduler", scheduler.tick, settings.chain_interval, NEVER_BUSY, wake)
