"""`alert_eval`: evaluate one alert's SQL rule over one committed range (SPEC §12).

The trusted worker holds the task's capability token, which grants that range of every
relation of the source's chain job (the source read as `dataset`); the rule runs through the
query service (gate, sandbox, audit). A joined relation that has not committed the range yet
makes the attempt retry. Each result
row becomes an `alert_events` row (`domain.alert_events`) whose dedupe key is derived from
the alert, the identity columns and the block's hash, read from the node.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
import orjson

from trace_platform.chain.pool import PoolUnavailable, RpcPool, rpc_pool
from trace_platform.chain.rpc import RpcError
from trace_platform.client import Lease, ServiceUnavailable, TaskClient, new_session
from trace_platform.config import Settings
from trace_platform.domain.alert_events import MAX_ROWS, block_numbers, rows_to_events
from trace_platform.domain.catalog import RELATION_INCOMPLETE
from trace_platform.domain.errors import OverloadedError, TraceError
from trace_platform.domain.lifecycle import FatalTaskError, RetryableTaskError
from trace_platform.operators import OperatorContext, operator

MAX_BATCH = 64  # rule queries in one call to the query service
MAX_BATCH_BYTES = 512 * 1024  # and their tokens and SQL, well under the service's body limit
_BATCHERS: dict[int, RuleBatcher] = {}
# (range key, lease, dataset read as `dataset`, SQL, where the answer goes)
Pending = tuple[Any, Lease, str, str, "asyncio.Future[dict[str, Any]]"]


class RuleBatcher:
    """The rule queries of this worker's evaluations go to the query service in batches
    (`/v1/task/query-batch`): each keeps its own token, fencing, audit row and answer, but a
    new range's rules share one call, one binding and one executor session. At most two
    calls per executor are out at once; while they are, the next rules gather here, first
    come first served, and leave together (those of the oldest waiting range first) — a
    burst of rules over a new range queues in order instead of coming back as 429s."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots = asyncio.Semaphore(max(2, settings.query_executors * 2))
        self.pending: list[Pending] = []
        self.waiting = False
        self.tasks: set[asyncio.Task[None]] = set()
        self._client: TaskClient | None = None
        self.node_headers = NodeHeaders()

    @property
    def client(self) -> TaskClient:
        """One session for the batcher's calls, opened at the first: its connections to the
        query service are kept alive between batches (a session per batch cost a TCP
        connect, and the CPU of a session, each)."""
        if self._client is None:
            settings = self.settings
            self._client = TaskClient(
                settings.resolved_dispatcher_url,
                query_url=settings.resolved_query_url,
                session=new_session(settings.query_timeout_seconds * 2 + 10),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.session.close()
            self._client = None

    @classmethod
    def of_loop(cls, settings: Settings) -> RuleBatcher:
        loop = id(asyncio.get_running_loop())
        batcher = _BATCHERS.get(loop)
        if batcher is None:
            batcher = _BATCHERS[loop] = cls(settings)
        return batcher

    async def run(self, key: Any, lease: Lease, dataset_uuid: str, sql: str) -> dict[str, Any]:
        """The query's result, or the attempt's outcome as a TaskAttemptError."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending.append((key, lease, dataset_uuid, sql, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if self.waiting or not self.pending:
            return
        self.waiting = True
        task = asyncio.create_task(self._send_next())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_next(self) -> None:
        async with self.slots:
            self.waiting = False
            if not self.pending:
                return
            key = self.pending[0][0]
            batch: list[Pending] = []
            size = 0
            for p in self.pending:
                if p[0] != key:
                    continue
                size += len(p[1].capability_token) + len(p[3]) + 256
                if batch and (len(batch) == MAX_BATCH or size > MAX_BATCH_BYTES):
                    break
                batch.append(p)
            taken = {id(p) for p in batch}
            self.pending = [p for p in self.pending if id(p) not in taken]
            self._kick()
            batch = [p for p in batch if not p[4].done()]  # its attempt was abandoned
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[Pending]) -> None:
        answers: list[dict[str, Any] | Exception]
        try:
            answers = list(
                await self.client.query_batch([(p[1], p[2], p[3], MAX_ROWS) for p in batch])
            )
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            answers = [RetryableTaskError(f"query service: {type(exc).__name__}")] * len(batch)
        except TraceError as exc:
            # The call as a whole was refused (e.g. the service restarting): not any one
            # rule's fault, so every attempt of the batch is retried.
            answers = [RetryableTaskError(f"query service answered {exc.status}")] * len(batch)
        for p, answer in zip(batch, answers, strict=True):
            future = p[4]
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(attempt_error(answer))
            else:
                future.set_result(answer)


async def close_rule_batchers() -> None:
    """Close the sessions of this process's rule batchers (at the worker's exit)."""
    for batcher in list(_BATCHERS.values()):
        await batcher.close()
    _BATCHERS.clear()


def attempt_error(exc: Exception) -> Exception:
    """What the query service's answer means for the attempt (a fresh exception each)."""
    if isinstance(exc, RetryableTaskError):
        return RetryableTaskError(str(exc))
    if isinstance(exc, OverloadedError | ServiceUnavailable):
        return RetryableTaskError(f"query service answered {exc.status}")
    if isinstance(exc, TraceError):
        if exc.code != RELATION_INCOMPLETE:
            return FatalTaskError(f"rule rejected ({exc.status}): {exc.detail}"[:500])
        # A joined relation has not committed this range yet: the next attempt's token
        # pins a newer snapshot.
        return RetryableTaskError(exc.detail[:500])
    return RetryableTaskError(f"query service: {type(exc).__name__}")


async def evaluate(settings: Settings, lease: Lease) -> list[dict[str, Any]]:
    """The alert_events rows of one (alert, range) of a SQL rule."""
    a = lease.work_payload.get("alert")
    if not isinstance(a, dict):
        raise FatalTaskError("alert_eval: payload has no alert")
    key = (a["dataset_uuid"], a.get("start"), a.get("end"))
    result = await RuleBatcher.of_loop(settings).run(key, lease, a["dataset_uuid"], a["sql"])
    if result.get("truncated"):
        raise FatalTaskError(f"the rule returned more than {MAX_ROWS} rows for one range")
    names = [c["name"] for c in result["columns"]]
    missing = [c for c in a["identity"] if c not in names]
    if missing:
        raise FatalTaskError(f"the rule's result lacks identity column(s) {missing}")
    rows = [dict(zip(names, r, strict=True)) for r in result["rows"]]
    if not rows:
        return []
    numbers = block_numbers(rows)
    headers: dict[int, tuple[str, int] | None] = {}
    pool = rpc_pool(settings, a["rpc_pool"])
    if numbers and isinstance(a.get("headers_from"), str):
        headers = await stored_headers(settings, lease, a, numbers)
    elif numbers and pool is not None:
        batcher = RuleBatcher.of_loop(settings)
        partition = a.get("partition_id")
        try:
            if isinstance(partition, str):
                headers = await batcher.node_headers.read(pool, partition, numbers)
            else:
                headers, _ = await pool.call(lambda rpc: rpc.block_headers(numbers), None)
        except (PoolUnavailable, RpcError) as exc:
            raise RetryableTaskError(f"rpc: {exc}") from None
    return rows_to_events(a, rows, headers)


Header = tuple[str, int] | None
Read = asyncio.Task[tuple[dict[int, Header], Any]]


class NodeHeaders:
    """The node's block headers for this worker's evaluations, by committed partition: the
    rules of one range that fire on the same blocks share one read (those firing together
    wait for the same call), so N firing rules make one RPC call, not N. A range a reorg
    replaced is a new partition and is read afresh; a failed read, or a block the node did
    not have, is not kept (the next attempt asks again)."""

    def __init__(self, partitions: int = 256) -> None:
        self.partitions = partitions
        self.reads: OrderedDict[tuple[str, str], dict[int, Read]] = OrderedDict()

    async def read(self, pool: RpcPool, partition: str, numbers: list[int]) -> dict[int, Header]:
        """(hash, time) by block number, as `RpcClient.block_headers` answers; raises what
        the pool call raised."""
        key = (pool.name, partition)
        reads = self.reads.pop(key, None) or {}
        self.reads[key] = reads  # the most recently used last
        while len(self.reads) > self.partitions:
            self.reads.popitem(last=False)
        missing = sorted({n for n in numbers if n not in reads})
        if missing:
            task = asyncio.create_task(pool.call(lambda rpc: rpc.block_headers(missing), None))
            task.add_done_callback(partial(_forget_unread, reads, missing))
            for n in missing:
                reads[n] = task
        waits = {n: reads[n] for n in numbers}
        found: dict[int, Header] = {}
        for task in set(waits.values()):
            # Shielded: an attempt that stops waiting does not cancel the others' read.
            headers, _ = await asyncio.shield(task)
            found.update(headers)
        return {n: found.get(n) for n in numbers}


def _forget_unread(reads: dict[int, Read], numbers: list[int], task: Read) -> None:
    """A finished read keeps only the headers it found."""
    failed = task.cancelled() or task.exception() is not None
    headers = {} if failed else task.result()[0]
    for n in numbers:
        if reads.get(n) is task and headers.get(n) is None:
            del reads[n]


async def stored_headers(
    settings: Settings, lease: Lease, a: dict[str, Any], numbers: list[int]
) -> dict[int, tuple[str, int] | None]:
    """(hash, time) of the blocks from the chain's stored `blocks` relation (granted for
    the range), not the node: a DAG generation's re-evaluation makes no RPC request."""
    job, _, table = str(a["headers_from"]).replace('"', "").partition(".")
    listed = ", ".join(str(int(n)) for n in numbers)
    sql = (
        f'SELECT block_number, block_hash, "timestamp" FROM "{job}.{table}"'
        f" WHERE block_number IN ({listed})"
    )
    key = ("headers", a["dataset_uuid"], a.get("start"), a.get("end"))
    result = await RuleBatcher.of_loop(settings).run(key, lease, a["dataset_uuid"], sql)
    out: dict[int, tuple[str, int] | None] = {n: None for n in numbers}
    for number, block_hash, when in result["rows"]:
        out[int(number)] = (str(block_hash), int(when))
    return out


@operator("alert_eval")
async def alert_eval(ctx: OperatorContext) -> AsyncIterator[dict[str, Any]]:
    """The worker's `alert_eval` (a SQL rule): its events go to the sink as one batch."""
    _store, settings = ctx.require()
    lease = Lease(ctx.task_id, ctx.attempt, "", "", ctx.capability_token, ctx.payload)
    for event in await evaluate(settings, lease):
        yield event
