"""Decoded tables as derived outputs (SPEC §15, §19): the derived-output scheduler's part
that plans a chain job's `<contract>_<Event>` streams. A decoded range is computed from a
committed logs partition (never from the node), so it is scheduled like a DAG job's range —
by the scheduler woken when a range commits — not by the chain planner, which plans only
what it extracts.

Each active decoded stream, in its own transaction holding the stream's row lock (SKIP
LOCKED): a range failed for good stops it with the range and reason (`chain.stream_stopped`);
a stream that cannot go on (a factory with too many children) stops with its reason; then
`chain.decode.plan_decoded` gives its next ranges (one per committed logs partition from its
cursor, a factory child's table waiting for its parent's), which become tasks with
deterministic ids and wake-ups (`chain.ranges_scheduled`) and move the cursor. A reorg
replaces decoded ranges like any range of the job (`chain.reorg`): the rewound stream is
planned again here as its logs commit again.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from trace_platform.chain.decode import plan_decoded
from trace_platform.chain.streams import (
    plannable_streams,
    schedule_ranges,
    settle_stream,
    stop_stream,
)
from trace_platform.config import Settings
from trace_platform.db.sql import q


class DecodedPlanner:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def tick(self) -> int:
        """Plan every active decoded stream once; returns how many ranges were scheduled."""
        by_job = await plannable_streams(self.pool, decoded=True)
        scheduled = 0
        async with self.pool.acquire() as conn:
            for job_id, names in by_job.items():
                for stream in names:
                    async with conn.transaction():
                        settled = await settle_stream(conn, self.settings, job_id, stream)
                        if settled is not None:
                            scheduled += await self._plan_stream(conn, settled[0], settled[1])
        return scheduled

    async def _plan_stream(self, conn: Any, row: Any, room: int) -> int:
        if room <= 0:
            return 0
        try:
            planned = await plan_decoded(conn, row, room)
        except ValueError as exc:
            await stop_stream(conn, row["job_id"], row["stream"], str(exc))
            return 0
        if not planned:
            return 0
        ranges = [(s, e) for s, e, _ in planned]
        job_id, stream = row["job_id"], row["stream"]
        await conn.execute(q("chain", "advance_cursor"), job_id, stream, ranges[-1][1])
        await schedule_ranges(conn, self.settings, row, ranges, [p for _, _, p in planned])
        return len(ranges)
