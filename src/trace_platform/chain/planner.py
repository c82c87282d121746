"""Planner and head observer: dispatcher loops of chain sync (SPEC §11).

The planner plans extraction only — the streams cryo extracts from the node. It ticks each
active extracted stream holding the stream's row lock (SKIP LOCKED, so several dispatchers
never plan the same stream at once): it settles ranges whose task failed for good (the
stream stops with the range and reason), then schedules new ranges up to `max_inflight` as
tasks with deterministic ids and outbox wake-ups (`chain/streams.py`, shared with the
derived-output scheduler, which plans the decoded tables: outputs of committed logs, not of
the node, scheduled with DAG jobs in `dag/decoded.py`).

The head observer polls each job's node (async HTTP with timeouts: the API's event loop is
never blocked), records the head and its age, flags `stale_head` / `rpc_unavailable` /
`rpc_pool_missing` / `chain_id_mismatch`, and re-checks committed ranges within the watch
depth against the node's canonical chain (a mismatch is a reorg: `chain.reorg.repair`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from trace_platform.chain.pool import (
    REFUSED,
    RpcPool,
    endpoint_status,
    export_metrics,
    head_of_pool,
    record_endpoint_views,
    rpc_pool,
)
from trace_platform.chain.reorg import repair_reorg
from trace_platform.chain.rpc import RpcClient, RpcError, RpcUnavailable
from trace_platform.chain.streams import plannable_streams, schedule_ranges, settle_stream
from trace_platform.config import Settings
from trace_platform.db.sql import q
from trace_platform.logs import get_logger
from trace_platform.metrics import CHAIN_HEAD

log = get_logger(__name__)
JOBS_REFRESH_SECONDS = 1.0  # the observer reads the jobs' rows this often, not every tick
REORG_RECHECK_SECONDS = 1.0  # at an unchanged head, committed ranges are re-checked this often
RECORD_EVERY_SECONDS = 1.0  # an unchanged healthy head is written (checked_at) this often
BACKFILL_BLOCKS = 1000  # default range size far behind: cryo's own chunk


def eligible_end(mode: dict[str, Any], head: int | None) -> int | None:
    """First block the planner may not schedule yet (end-exclusive), or None."""
    if mode["kind"] == "fixed_target":
        return int(mode["to_block"])
    if head is None:
        return None
    return head + 1 - int(mode.get("tail_lag", 2))


def backfill_span(chunk: int, backfill_blocks: int | None, compaction: Any = None) -> int:
    """Range size while far behind: the stream's `backfill_blocks`, else the largest
    multiple of its chunk up to `BACKFILL_BLOCKS` that also divides the job's compaction
    window (`target_blocks`), so a backfill range never straddles a window; one chunk when
    none does."""
    if backfill_blocks:
        return backfill_blocks
    conf = compaction if isinstance(compaction, dict) else {}
    target = int(conf.get("target_blocks") or 0) if conf.get("enabled", True) else 0
    k = max(1, BACKFILL_BLOCKS // chunk)
    while k > 1 and target and target % (k * chunk):
        k -= 1
    return k * chunk


def next_ranges(
    cursor: int,
    chunk: int,
    mode: dict[str, Any],
    end: int,
    room: int,
    taken: set[int],
    span: int | None = None,
) -> tuple[list[tuple[int, int]], int]:
    """Ranges to schedule from `cursor` and the new cursor. `follow_head` takes full chunks
    only; `fixed_target` ends with a partial one at `to_block`. Starts in `taken` (already
    scheduled or committed) are stepped over.

    Far behind, a range is `span` blocks (k whole chunks, aligned to the span from the
    mode's `from_block`): fewer, larger cryo calls and commits. Within `span` blocks of a
    followed head ranges stay chunk-sized (fresh blocks may still reorg, and small ranges
    keep the tail's lag low); a fixed target takes spans up to its end."""
    ranges: list[tuple[int, int]] = []
    fixed = mode["kind"] == "fixed_target"
    base = int(mode.get("from_block", 0))
    span = span if span and span > chunk and span % chunk == 0 else chunk
    horizon = end if fixed else end - span
    while len(ranges) < room and cursor < end:
        stop = cursor + chunk
        if (
            span > chunk
            and (cursor - base) % span == 0
            and cursor + span <= horizon
            and not any(cursor < t < cursor + span for t in taken)
        ):
            stop = cursor + span
        if fixed:
            stop = min(stop, end)
        elif stop > end:
            break
        if cursor not in taken:
            ranges.append((cursor, stop))
        cursor = stop
    return ranges, cursor


def range_payload(row: asyncpg.Record, start: int, end: int) -> dict[str, Any]:
    return {
        "operator": "cryo_ingest",
        "chain": {
            "job_id": str(row["job_id"]),
            "stream": row["stream"],
            "dataset_uuid": str(row["dataset_uuid"]),
            "cryo_dataset": row["cryo_dataset"],
            "chain_id": row["chain_id"],
            "rpc_pool": row["rpc_pool"],
            "start": start,
            "end": end,
            "generation": row["generation"],
        },
    }


class ChainPlanner:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def tick(self) -> int:
        """Plan every active extracted stream once; returns how many ranges were scheduled."""
        by_job = await plannable_streams(self.pool, decoded=False)
        scheduled = 0
        for job_id, names in by_job.items():
            async with self.pool.acquire() as conn, conn.transaction():
                scheduled += await self._plan_job(conn, job_id, names)
        return scheduled

    async def _plan_job(self, conn: Any, job_id: uuid.UUID, names: list[str]) -> int:
        """A job's streams in one transaction (holding their row locks). Streams at the same
        cursor with the same chunk size move in step: each schedules the same ranges, as many
        as the busiest of them has room for, so their wake-ups reach the workers together and
        one cryo call extracts all their datasets. While backfilling, a stream waits until
        half its slots are free, so ranges go out in batches, not one by one."""
        scheduled = 0
        ready: dict[tuple[int, int, int | None], list[tuple[Any, int, int]]] = {}
        for stream in names:
            settled = await settle_stream(conn, self.settings, job_id, stream)
            if settled is None:
                continue
            row, room, limit = settled
            if row["head_error"] is None and row["head_number"] is not None:
                # (Otherwise scheduling waits until the observer has seen the pool serve the
                # right chain with a fresh head; its error is visible in status meanwhile.)
                key = (row["cursor"], row["chunk_size"], row["backfill_blocks"])
                ready.setdefault(key, []).append((row, room, limit))
        for members in ready.values():
            room = min(r for _, r, _ in members)
            for row, _, limit in members:
                scheduled += await self._extend(conn, row, room, limit)
        return scheduled

    async def _extend(self, conn: Any, row: Any, room: int, limit: int) -> int:
        """Schedule up to `room` new ranges of a stream from its cursor."""
        job_id, stream, mode = row["job_id"], row["stream"], row["mode"]
        end = eligible_end(mode, row["head_number"])
        if end is None or room <= 0 or row["cursor"] >= end:
            return 0
        backfill = row["cursor"] + limit * row["chunk_size"] <= end
        if backfill and room < max(1, limit // 2):
            return 0
        taken = {
            r["range_start"]
            for r in await conn.fetch(q("chain", "taken_starts"), job_id, stream, row["cursor"])
        }
        chunk = row["chunk_size"]
        span = backfill_span(chunk, row["backfill_blocks"], row["compaction"])
        ranges, cursor = next_ranges(row["cursor"], chunk, mode, end, room, taken, span)
        if cursor != row["cursor"]:
            await conn.execute(q("chain", "advance_cursor"), job_id, stream, cursor)
        if not ranges:
            return 0
        payloads = [range_payload(row, s, e) for s, e in ranges]
        await schedule_ranges(conn, self.settings, row, ranges, payloads)
        return len(ranges)


class HeadObserver:
    """Polls each job's node for its head; checks committed ranges for reorgs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        on_new_head: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.on_new_head = on_new_head
        self._heads: dict[uuid.UUID, int] = {}
        self._pools: dict[str, RpcPool] = {}
        self._last_reported = 0.0
        self._last_poll: dict[uuid.UUID, float] = {}
        self._last_check: dict[uuid.UUID, float] = {}
        self._recorded: dict[uuid.UUID, tuple[int | None, str | None, float]] = {}
        self._jobs: list[asyncpg.Record] = []
        self._jobs_read = float("-inf")

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    async def tick(self) -> int:
        """Poll each job's node when its `head_poll_seconds` have passed. The jobs' rows are
        read once a `JOBS_REFRESH_SECONDS` (a new or changed job is seen within it), not on
        every tick: polling many times a second, an idle deployment's reads add up."""
        now = time.monotonic()
        if now - self._jobs_read >= JOBS_REFRESH_SECONDS:
            self._jobs = list(await self.pool.fetch(q("chain", "jobs")))
            self._jobs_read = now
        polled = 0
        for job in self._jobs:
            if job["paused"]:
                continue  # asks its node nothing (which may be gone, as the demo's is)
            if job["extracted"] and job["head_number"] is not None:
                continue  # a fixed target fully extracted: decoding needs no node
            every = float(job["mode"].get("head_poll_seconds", 1.0))
            if now - self._last_poll.get(job["job_id"], 0.0) < every:
                continue
            self._last_poll[job["job_id"]] = now
            await self.observe(job)
            polled += 1
        return 0 if polled == 0 else 1

    async def observe(self, job: asyncpg.Record) -> None:
        """Ask every head endpoint of the job's pool for its head (at once); the job's head
        is the best of them. An endpoint serving another chain is refused; one that lags
        the best by more than the job's tail lag counts for nothing here."""
        job_id = job["job_id"]
        pool = rpc_pool(self.settings, job["rpc_pool"])
        if pool is None:
            error = (
                f"rpc_pool_missing: pool {job['rpc_pool']!r} is not configured"
                f" (set {Settings.rpc_pool_env(job['rpc_pool'])})"
            )
            await self.pool.execute(q("chain", "set_head_error"), job_id, error)
            return
        self._pools[pool.name] = pool
        heads = await head_of_pool(pool, job["chain_id"])
        await self.report()
        if not heads:
            refused = [h for h in pool.health if h.state == REFUSED]
            if refused and len(refused) == len(pool.health):
                await self.pool.execute(
                    q("chain", "set_head_error"), job_id, str(refused[0].reason)
                )
                return
            await self._record(job, None, f"rpc_unavailable: {pool.describe()}")
            return
        best, rpc = max(heads, key=lambda pair: pair[0])
        CHAIN_HEAD.labels(job["name"]).set(best)
        await self._record(job, best, None)
        moved = self._heads.get(job_id) != best
        if moved:
            self._heads[job_id] = best
            if self.on_new_head is not None:
                self.on_new_head()
        # A new head may sit on a new fork: check at once. At the same height a fork is
        # rare (a competing block); it is found within REORG_RECHECK_SECONDS.
        now = time.monotonic()
        if moved or now - self._last_check.get(job_id, float("-inf")) >= REORG_RECHECK_SECONDS:
            self._last_check[job_id] = now
            await self.check_reorgs(job, rpc, best)

    async def report(self, every: float = 2.0) -> None:
        """Write this process's view of its pools' endpoints (status reads it)."""
        now = time.monotonic()
        if now - self._last_reported < every:
            return
        self._last_reported = now
        await record_endpoint_views(self.pool, "dispatcher", list(self._pools.values()))
        export_metrics(await endpoint_status(self.pool, list(self._pools)))

    async def _record(self, job: asyncpg.Record, head: int | None, error: str | None) -> None:
        """Write the poll's outcome; the same healthy head is written again (its check
        time, the staleness check) once a RECORD_EVERY_SECONDS, not at every poll."""
        now = time.monotonic()
        last = self._recorded.get(job["job_id"], (None, None, float("-inf")))
        same = head is not None and error is None and last[:2] == (head, error)
        if same and now - last[2] < RECORD_EVERY_SECONDS:
            return
        self._recorded[job["job_id"]] = (head, error, now)
        row = await self.pool.fetchrow(q("chain", "record_head"), job["job_id"], head, error)
        mode = job["mode"]
        if row is None or mode["kind"] != "follow_head" or row["head_age"] is None:
            return
        max_age = float(mode.get("max_head_age_seconds", 30.0))
        if row["head_age"] > max_age:
            stale = f"stale_head: no new block for {row['head_age']:.0f} s (limit {max_age:g} s)"
            if error:
                stale += f"; {error}"
            await self.pool.execute(q("chain", "set_head_error"), job["job_id"], stale)
            if job["head_error"] is None or not job["head_error"].startswith("stale_head"):
                log.warning("chain.stale_head", job_id=str(job["job_id"]), age=row["head_age"])
                self._jobs_read = float("-inf")  # the next tick reads the row that says so

    async def check_reorgs(self, job: asyncpg.Record, rpc: RpcClient, head: int) -> None:
        """Committed ranges ending within the watch depth must still end on the node's
        canonical block; the earliest that does not is where the repair starts."""
        floor = head - self.settings.chain_watch_depth
        watched = await self.pool.fetch(q("chain", "watched_partitions"), job["job_id"], floor)
        if not watched:
            return
        try:
            hashes = await rpc.block_hashes([p["range_end"] - 1 for p in watched])
        except (RpcUnavailable, RpcError):
            return  # the next poll checks again
        mismatched = [p for p in watched if hashes.get(p["range_end"] - 1) != p["last_hash"]]
        if not mismatched:
            return
        first = min(mismatched, key=lambda p: p["range_start"])
        detail = {
            "fork_block": first["range_start"],
            "head": head,
            "depth": head - first["range_start"] + 1,
            "checked_block": first["range_end"] - 1,
            "stored_hash": first["last_hash"],
            "node_hash": hashes.get(first["range_end"] - 1),
        }
        await repair_reorg(self.pool, job["job_id"], first["range_start"], detail)
