"""Compaction (SPEC §11): live partitions that ended more than `finality_depth` blocks below
the head are merged, per aligned window of `target_blocks` blocks, into one sorted Parquet
file with min/max statistics; one commit retires the old partitions and adds the new one at
a new snapshot, so readers of older snapshots keep their files until those are collected
(after every token that could name them has expired)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import uuid
from typing import Any

import asyncpg

from trace_platform.chain.commit import dataset_prefix
from trace_platform.db.sql import q
from trace_platform.logs import get_logger
from trace_platform.metrics import CHAIN_COMPACTIONS
from trace_platform.ports import ObjectStore

log = get_logger(__name__)
ROW_GROUP_ROWS = 100_000


def windows(
    partitions: list[asyncpg.Record], from_block: int, target: int, final_end: int
) -> list[list[asyncpg.Record]]:
    """Groups of ≥ 2 contiguous partitions inside one aligned window that is wholly final."""
    groups: dict[int, list[asyncpg.Record]] = {}
    for p in partitions:
        w = (p["range_start"] - from_block) // target
        if (p["range_end"] - 1 - from_block) // target != w:
            continue  # straddles a window (a chunk size not dividing the target)
        groups.setdefault(w, []).append(p)
    out = []
    for w, group in sorted(groups.items()):
        if from_block + (w + 1) * target > final_end or len(group) < 2:
            continue
        group.sort(key=lambda p: p["range_start"])
        if all(a["range_end"] == b["range_start"] for a, b in itertools.pairwise(group)):
            out.append(group)
    return out


def _merge(blobs: list[bytes]) -> tuple[bytes, int, int | None, int | None]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = [pq.read_table(io.BytesIO(b)) for b in blobs]
    table = pa.concat_tables(tables, promote_options="permissive")
    if table.num_rows:
        table = table.sort_by("block_number")
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, write_statistics=True)
    lo = hi = None
    if table.num_rows:
        bounds = pc.min_max(table.column("block_number")).as_py()
        lo, hi = int(bounds["min"]), int(bounds["max"])
    return sink.getvalue(), table.num_rows, lo, hi


class Compactor:
    def __init__(self, pool: asyncpg.Pool, store: ObjectStore, gc_after_seconds: float) -> None:
        self.pool = pool
        self.store = store
        self.gc_after_seconds = gc_after_seconds

    async def tick(self) -> int:
        merged = 0
        for row in await self.pool.fetch(q("chain", "compactable_datasets")):
            if row["head_number"] is None and row["mode"]["kind"] != "fixed_target":
                continue
            merged += await self.compact_dataset(row)
        await self.collect()
        return merged

    async def compact_dataset(self, row: asyncpg.Record) -> int:
        conf, mode = row["compaction"], row["mode"]
        head = row["head_number"]
        if head is None:
            return 0
        final_end = head + 1 - int(conf.get("finality_depth", 1024))
        parts = await self.pool.fetch(q("chain", "live_partitions"), row["dataset_uuid"])
        merged = 0
        for group in windows(
            list(parts),
            int(mode.get("from_block", 0)),
            int(conf.get("target_blocks", 10_000)),
            final_end,
        ):
            if await self.merge(row["dataset_uuid"], group):
                merged += len(group)
        return merged

    async def merge(self, dataset_uuid: uuid.UUID, group: list[asyncpg.Record]) -> bool:
        blobs = [await self.store.get_bytes(f["uri"]) for p in group for f in p["files"]]
        data, rows, lo, hi = await asyncio.to_thread(_merge, blobs)
        partition_id = uuid.uuid4()
        uri = f"{dataset_prefix(self.store.root, dataset_uuid)}compacted/{partition_id}.parquet"
        await self.store.put_bytes(uri, data)
        entry: dict[str, Any] = {
            "uri": uri,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "rows": rows,
        }
        if lo is not None:
            entry.update(min_block=lo, max_block=hi)
        ids = [p["partition_id"] for p in group]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.fetchval(q("chain", "lock_dataset"), dataset_uuid)
            locked = await conn.fetch(q("chain", "lock_partitions"), ids)
            if len(locked) != len(ids) or any(p["removed_seq"] is not None for p in locked):
                await self.store.delete(uri)  # a reorg or another compactor got there first
                return False
            seq = await conn.fetchval(q("chain", "bump_commit_seq"), dataset_uuid)
            await conn.execute(q("chain", "retire_partitions"), ids, seq)
            await conn.execute(
                q("chain", "insert_partition"),
                partition_id,
                dataset_uuid,
                group[0]["range_start"],
                group[-1]["range_end"],
                [entry],
                rows,
                len(data),
                group[0]["first_parent_hash"],
                group[-1]["last_hash"],
                seq,
                None,
                True,
            )
        CHAIN_COMPACTIONS.inc(len(group))
        log.info(
            "chain.compacted",
            dataset_uuid=str(dataset_uuid),
            range_start=group[0]["range_start"],
            range_end=group[-1]["range_end"],
            partitions=len(group),
            commit_seq=seq,
        )
        return True

    async def collect(self, limit: int = 200) -> int:
        """Delete files of partitions retired long enough ago that no token names them."""
        rows = await self.pool.fetch(
            q("chain", "collectable_partitions"), self.gc_after_seconds, limit
        )
        for r in rows:
            for f in r["files"]:
                await self.store.delete(f["uri"])
        if rows:
            await self.pool.execute(
                q("chain", "mark_files_deleted"), [r["partition_id"] for r in rows]
            )
        return len(rows)
