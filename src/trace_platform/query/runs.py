"""Query runs in the query service (SPEC §21): a user's query executed in the background with
its own time limit, through the same gate, binding, sandbox and audit as `POST /v1/query`,
its result written to the object store under `results/{org}/{run_id}/` (an Arrow, CSV or
Parquet answer streamed from the executor into the store, never held whole).

The service that accepted a run holds it (the SQL text lives only in its memory, never in a
row or a log) and beats the run's row every second while it is queued or running. The beat
is also how a cancel arrives: a run whose row no longer says queued or running (canceled
through the user API) is stopped here, its executor killed. A run whose beat stops (this
process killed) is failed by the collector of any query service after `LOST_SECONDS`, with a
reason; a service stopped cleanly fails its own runs at once. The collector also deletes
results past their expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from trace_platform.aio import LoopRunner
from trace_platform.db.sql import q
from trace_platform.domain.errors import OverloadedError, TraceError
from trace_platform.domain.query_formats import AnswerCut
from trace_platform.domain.query_runs import PriorRun, params_hash, result_key, reuse_run
from trace_platform.domain.sql_gate import sql_hash
from trace_platform.logs import get_logger
from trace_platform.ports import ObjectStore
from trace_platform.query.binding import QueryCaller
from trace_platform.query.engine import FORMAT_JSON
from trace_platform.query.service import QueryService

log = get_logger(__name__)
T = TypeVar("T")
BEAT_SECONDS = 1.0  # how often a held run's row is beaten (and a cancel noticed)
LOST_SECONDS = 15.0  # a live run unbeaten this long lost its query service
COLLECT_SECONDS = 5.0  # how often lost runs and expired results are collected
COLLECT_BATCH = 100
BUSY_RETRY_SECONDS = 0.5  # a run waits for a free executor, within its own time limit
DETAIL_CHARS = 300


class QueryRuns:
    """The runs this query service holds, their beat and the collector."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        service: QueryService,
        store: ObjectStore,
        timeout_seconds: float,
        ttl_seconds: float,
        concurrency: int = 1,
    ) -> None:
        """`concurrency`: runs executing at once; the others stay queued (so runs never take
        every executor from interactive queries: the service passes its executors less one)."""
        self.pool = pool
        self.service = service
        self.store = store
        self.timeout_seconds = timeout_seconds
        self.ttl_seconds = ttl_seconds
        self.held: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.slots = asyncio.Semaphore(max(1, concurrency))
        self.loops = LoopRunner()
        self._stopping = False

    def start(self) -> None:
        self.loops.start("query_runs.beat", self.beat, BEAT_SECONDS, busy_at=1 << 30)
        self.loops.start("query_runs.collect", self.collect, COLLECT_SECONDS, busy_at=COLLECT_BATCH)

    async def close(self) -> None:
        """Stop the loops, then the held runs: each is failed with a reason (the service is
        stopping), never left running."""
        self._stopping = True
        await self.loops.stop()
        tasks = list(self.held.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def submit(
        self,
        caller: QueryCaller,
        sql: str,
        limit: int | None,
        fmt: str,
        idempotency_key: str | None,
        params: tuple[str, ...] | None = None,
        saved_query: str | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """Accept a run: (run id, whether it is new). SQL the gate refuses or a relation the
        caller cannot read is refused here as `POST /v1/query` refuses it, and leaves no
        row; the same idempotency key with the same SQL and format is the run it named
        before (not run again), with other SQL a 409. `params`, `saved_query`: a saved
        query's bound values (for its `$1`..`$n`) and its name; the row records the name and
        the sha256 of the values, never the values, and a key also compares their hash."""
        digest = sql_hash(sql)
        values = params or ()
        params_digest = params_hash(values if saved_query is not None else None)
        try:
            await self.service.check(caller, sql, values)  # the gate, the relations it reads
        except TraceError as exc:
            log.warning("query_run.denied", reason=exc.code, sql_sha256=digest, **caller.log_ids())
            raise
        run_id = uuid.uuid4()
        inserted = await self.pool.fetchval(
            q("query_runs", "insert_run"),
            run_id,
            caller.org_id,
            caller.user_id,
            idempotency_key,
            digest,
            fmt,
            self.ttl_seconds,
            saved_query,
            params_digest,
        )
        if inserted is None:
            prior = await self.pool.fetchrow(
                q("query_runs", "run_by_key"), caller.org_id, caller.user_id, idempotency_key
            )
            if prior is None:  # the row that conflicted is gone: a caller's retry will do
                raise OverloadedError("the run could not be recorded; retry", retry_after=1)
            same = reuse_run(
                PriorRun(
                    prior["run_id"],
                    prior["sql_sha256"],
                    prior["format"],
                    prior["saved_query"],
                    prior["params_sha256"],
                ),
                digest,
                fmt,
                saved_query,
                params_digest,
            )
            return same, False
        task = asyncio.create_task(self._run(run_id, caller, sql, limit, fmt, values))
        self.held[run_id] = task
        task.add_done_callback(lambda _t: self.held.pop(run_id, None))
        log.info(
            "query_run.queued",
            run_id=str(run_id),
            format=fmt,
            sql_sha256=digest,
            saved_query=saved_query,
            params_sha256=params_digest,
            **caller.log_ids(),
        )
        return run_id, True

    async def _run(
        self,
        run_id: uuid.UUID,
        caller: QueryCaller,
        sql: str,
        limit: int | None,
        fmt: str,
        params: tuple[str, ...] = (),
    ) -> None:
        started = time.monotonic()
        ids = {"run_id": str(run_id), **caller.log_ids()}
        try:
            async with self.slots:  # queued until a slot is free
                if await self.pool.fetchval(q("query_runs", "start_run"), run_id) is None:
                    return  # canceled while queued
                started = time.monotonic()  # its time limit and duration count from here
                log.info("query_run.started", **ids)
                uri = self.store.uri_for(result_key(caller.org_id, run_id, fmt))
                rows, size, truncated = await self._write(
                    caller, sql, limit, fmt, started, uri, params
                )
            ms = int((time.monotonic() - started) * 1000)
            done = await self.pool.fetchval(
                q("query_runs", "finish_run"), run_id, rows, size, truncated, ms, uri
            )
            if done is None:  # canceled while it ran: its result is nobody's
                await self.store.delete(uri)
                log.info("query_run.discarded", **ids)
                return
            log.info(
                "query_run.succeeded",
                rows=rows,
                bytes=size,
                truncated=truncated,
                duration_ms=ms,
                **ids,
            )
        except asyncio.CancelledError:
            if self._stopping:  # this service stops: the run fails with that reason
                await asyncio.shield(
                    self._fail(
                        run_id,
                        "query_service_stopped",
                        "the query service stopped; submit it again",
                        started,
                    )
                )
                log.warning("query_run.failed", reason="query_service_stopped", **ids)
            else:
                log.info("query_run.canceled", **ids)
            raise
        except TraceError as exc:
            code = str(exc.extra.get("reason") or exc.code)
            await self._fail(run_id, code, exc.detail, started)
            log.warning("query_run.failed", reason=code, **ids)
        except Exception as exc:  # recorded, never left running: the run failed
            await self._fail(run_id, "internal", "the run failed in the query service", started)
            log.error("query_run.failed", reason="internal", error=type(exc).__name__, **ids)

    async def _write(
        self,
        caller: QueryCaller,
        sql: str,
        limit: int | None,
        fmt: str,
        started: float,
        uri: str,
        params: tuple[str, ...] = (),
    ) -> tuple[int, int, bool]:
        """Run the query and write its answer to `uri`: (rows, bytes, truncated). An Arrow,
        CSV or Parquet answer streams from the executor into the store, never held whole; a
        JSON one (at most 10,000 rows) is written at once."""
        if fmt == FORMAT_JSON:
            result = await self._busy_retry(
                lambda left: self.service.query(
                    caller, None, sql, limit, timeout=left, fmt=fmt, params=params
                ),
                started,
            )
            await self.store.put_bytes(uri, result.body)
            return result.rows, len(result.body), result.truncated
        stream = await self._busy_retry(
            lambda left: self.service.stream(
                caller, None, sql, limit, timeout=left, fmt=fmt, params=params
            ),
            started,
        )
        size, cut = 0, False

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal size, cut
            try:
                async for chunk in stream:
                    size += len(chunk)
                    yield chunk
            except AnswerCut as exc:  # at TRACE_QUERY_MAX_EXPORT_ROWS: whole up to there
                cut = True
                size += len(exc.rest)
                yield exc.rest

        try:
            await self.store.put_stream(uri, chunks())
        finally:
            await stream.close()
        return stream.rows, size, stream.truncated or cut

    async def _busy_retry(self, call: Callable[[float], Awaitable[T]], started: float) -> T:
        """`call(seconds left)`, waiting out a busy executor pool within the run's limit."""
        while True:
            left = self.timeout_seconds - (time.monotonic() - started)
            try:
                return await call(max(1.0, left))
            except OverloadedError:
                if left <= BUSY_RETRY_SECONDS:
                    raise
                await asyncio.sleep(BUSY_RETRY_SECONDS)

    async def _fail(self, run_id: uuid.UUID, code: str, detail: str, started: float) -> None:
        ms = int((time.monotonic() - started) * 1000)
        await self.pool.fetchval(
            q("query_runs", "fail_run"), run_id, code, detail[:DETAIL_CHARS], ms
        )

    async def beat(self) -> int:
        """Beat the held runs' rows; stop those no longer wanted (canceled)."""
        if not self.held:
            return 0
        held = list(self.held)
        wanted = {r["run_id"] for r in await self.pool.fetch(q("query_runs", "beat_runs"), held)}
        for run_id in held:
            task = self.held.get(run_id)
            if run_id not in wanted and task is not None and not task.done():
                task.cancel()  # its executor is killed with it (never reused mid-query)
        return len(held)

    async def collect(self) -> int:
        """Fail runs whose service stopped beating; delete results past their expiry."""
        lost = await self.pool.fetch(q("query_runs", "fail_lost_runs"), LOST_SECONDS)
        for row in lost:
            log.warning(
                "query_run.failed",
                reason="query_service_lost",
                run_id=str(row["run_id"]),
                org_id=str(row["org_id"]),
            )
        expired = await self.pool.fetch(q("query_runs", "expired_results"), COLLECT_BATCH)
        for row in expired:
            await self.store.delete(row["output_uri"])
            await self.pool.execute(q("query_runs", "mark_collected"), row["run_id"])
            log.info("query_run.collected", run_id=str(row["run_id"]), org_id=str(row["org_id"]))
        return len(expired)
