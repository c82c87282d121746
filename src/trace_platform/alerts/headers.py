"""Block headers for UDF alert rules (`POST /v1/task/block-headers`): a UDF rule's runner
holds no RPC access, only its capability token, so the dispatcher reads the (hash,
timestamp) of blocks inside the evaluated range from the chain's RPC pool for it — or, for an
evaluation a DAG generation's cut-over scheduled (`headers_from`), from the chain's stored
`blocks` partitions (no RPC)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from trace_platform.chain.pool import PoolUnavailable, rpc_pool
from trace_platform.chain.rpc import RpcError
from trace_platform.config import Settings
from trace_platform.db.sql import q
from trace_platform.domain.errors import ForbiddenError, UnavailableError


class AlertBlockHeaders:
    """The dispatcher's block-header source; the route has checked the attempt's fence."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def __call__(self, task_id: uuid.UUID, numbers: list[int]) -> dict[str, Any]:
        row = await self.pool.fetchrow(q("alerts", "task_alert"), task_id)
        if row is None or not isinstance(row["alert"], dict):
            raise ForbiddenError("block headers are granted to alert evaluations only")
        alert = row["alert"]
        start, end = int(alert["start"]), int(alert["end"])
        outside = [n for n in numbers if not start <= n < end]
        if outside:
            raise ForbiddenError(
                f"block {outside[0]} is outside the evaluated range [{start}, {end})"
            )
        if isinstance(alert.get("headers_from"), str):
            return await self.stored(task_id, str(alert["headers_from"]), numbers)
        pool = rpc_pool(self.settings, str(alert["rpc_pool"]))
        if pool is None:
            raise UnavailableError(f"RPC pool {alert['rpc_pool']!r} is not configured")
        try:
            headers, _ = await pool.call(lambda rpc: rpc.block_headers(numbers), None)
        except (PoolUnavailable, RpcError) as exc:
            raise UnavailableError(f"rpc: {exc}"[:300]) from None
        return {str(n): (list(h) if h else None) for n, h in headers.items()}

    async def stored(self, task_id: uuid.UUID, relation: str, numbers: list[int]) -> dict[str, Any]:
        """(hash, time) of the blocks from the chain's stored `blocks` partitions (a DAG
        generation's re-evaluation: no RPC request)."""
        import asyncio
        import io

        from trace_platform.adapters.stores import object_store_from_settings

        out: dict[str, Any] = {str(n): None for n in numbers}
        if not numbers:
            return out
        rows = await self.pool.fetch(
            q("dags", "stored_block_files"), task_id, relation, min(numbers), max(numbers) + 1
        )
        store = object_store_from_settings(self.settings)
        wanted = set(numbers)

        def headers_of(data: bytes) -> list[tuple[int, str, int]]:
            import pyarrow.parquet as pq

            columns = ["block_number", "block_hash", "timestamp"]
            table = pq.read_table(io.BytesIO(data), columns=columns)
            return [
                (int(n), str(h), int(t))
                for n, h, t in zip(*(table[c].to_pylist() for c in table.column_names), strict=True)
                if int(n) in wanted
            ]

        for row in rows:
            for f in row["files"]:
                data = await store.get_bytes(str(f["uri"]))
                for n, block_hash, when in await asyncio.to_thread(headers_of, data):
                    out[str(n)] = [block_hash, when]
        return out
