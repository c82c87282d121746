"""Query service logic: gate the SQL, bind the relations it reads to the caller's grants and
their pinned manifests, execute it in a bounded executor pool, audit it. No SQL text is ever
logged."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from trace_platform.db.sql import q
from trace_platform.domain.errors import (
    OverloadedError,
    TraceError,
    ValidationError,
)
from trace_platform.domain.query_errors import public_reason
from trace_platform.domain.query_formats import AnswerCut
from trace_platform.domain.sql_gate import GatedQuery, SqlRejected, check_sql, sql_hash
from trace_platform.logs import get_logger
from trace_platform.metrics import QUERIES, QUERY_SECONDS
from trace_platform.query.binding import Binder, QueryCaller
from trace_platform.query.engine import EXPORT_FORMATS, FORMAT_ARROW, FORMAT_JSON
from trace_platform.query.executor import (
    Binding,
    ExecutorLimits,
    ExecutorPool,
    ExecutorUnavailable,
    ExportStream,
    QueryFailed,
    QueryResult,
)
from trace_platform.sandbox import Isolation

log = get_logger(__name__)
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000
MAX_EXPORT_ROWS = 10_000_000  # TRACE_QUERY_MAX_EXPORT_ROWS's default


class QueryRejected(ValidationError):
    code = "sql_rejected"


@dataclass(frozen=True)
class BatchItem:
    """One query of a batch: who asks, the dataset read as `dataset`, the SQL, the limit."""

    caller: QueryCaller
    dataset_id: str | None
    sql: str
    limit: int | None
    fmt: str = FORMAT_JSON
    params: tuple[str, ...] = ()  # a saved query's values for its `$1`..`$n`


@lru_cache(maxsize=4096)
def gate(sql: str, parameters: int = 0) -> GatedQuery:
    """The gate is a pure function of the SQL text: UDFs repeat their queries, so verdicts
    that pass are remembered (rejections are not cached and re-parse every time). Which
    names the caller may read is checked per query, by the binding. `parameters`: how many
    `$k` a saved query's values are bound to (none for any other query)."""
    return check_sql(sql, None, parameters)


def clamp_limit(
    limit: int | None, fmt: str = FORMAT_JSON, max_export_rows: int = MAX_EXPORT_ROWS
) -> int:
    """JSON answers hold at most MAX_LIMIT rows; an Arrow, CSV or Parquet body up to
    `max_export_rows` (by default all of them, within the engine's byte cap)."""
    if fmt in EXPORT_FORMATS:
        return max_export_rows if limit is None else max(1, min(max_export_rows, limit))
    return DEFAULT_LIMIT if limit is None else max(1, min(MAX_LIMIT, limit))


class QueryService:
    def __init__(
        self,
        state: asyncpg.Pool,
        data: asyncpg.Pool,
        workers: int,
        limits: ExecutorLimits,
        isolation: Isolation,
        s3_options: dict[str, str] | None = None,
        executor_uid: int = 65533,
        executor_slots: Path | None = None,
        max_export_rows: int = MAX_EXPORT_ROWS,
    ) -> None:
        """`executor_slots`: where sandboxed executors link their files (`ExecutorPool`);
        `max_export_rows`: the most rows of an Arrow, CSV or Parquet answer."""
        self.binder = Binder(state, s3_options)
        self.data = data
        self.limits = limits
        self.max_export_rows = max_export_rows
        self.pool = ExecutorPool(workers, limits, isolation, executor_uid, slots=executor_slots)

    async def close(self) -> None:
        await self.pool.close()

    async def query(
        self,
        caller: QueryCaller,
        dataset_id: str | None,
        sql: str,
        limit: int | None,
        timeout: float | None = None,
        fmt: str = FORMAT_JSON,
        params: tuple[str, ...] = (),
    ) -> QueryResult:
        """Gate, bind, run and audit one query (a task's, a user's or an operator's).
        `dataset_id`: the granted dataset read as `dataset` (None: by the catalog's names);
        `fmt`: JSON, or an Arrow IPC stream, CSV or Parquet; `params`: a saved query's
        values, bound to its `$1`..`$n` (`domain.saved_query`)."""
        item = BatchItem(caller, dataset_id, sql, limit, fmt, params)
        gated, binding, dataset_ids = await self._bind(item, None)
        result = await self._execute(item, gated, binding, timeout)
        await self.data.execute(
            q("datasets", "insert_audit"), *self._audit(item, gated, dataset_ids, result)
        )
        self._allowed(item, result, dataset_ids)
        return result

    async def stream(
        self,
        caller: QueryCaller,
        dataset_id: str | None,
        sql: str,
        limit: int | None,
        timeout: float | None = None,
        fmt: str = FORMAT_ARROW,
        params: tuple[str, ...] = (),
    ) -> AnswerStream:
        """One export (Arrow IPC stream, CSV or Parquet) gated, bound and run as `query`
        runs it, but streamed: its bytes as the executor writes them, never held whole
        (`AnswerStream`); a refusal, or a failure before the first bytes, is raised here."""
        item = BatchItem(caller, dataset_id, sql, limit, fmt, params)
        gated, binding, dataset_ids = await self._bind(item, None)
        started = time.perf_counter()
        try:
            stream = await self.pool.stream(
                binding,
                gated.sql,
                clamp_limit(limit, fmt, self.max_export_rows),
                timeout,
                fmt=fmt,
                params=params,
            )
        except (QueryFailed, ExecutorUnavailable, OverloadedError) as exc:
            raise _error(self._outcome(item, exc, time.perf_counter() - started)) from None
        cap = limit is None or limit > self.max_export_rows
        return AnswerStream(self, item, gated, dataset_ids, stream, cap, started)

    async def check(self, caller: QueryCaller, sql: str, params: tuple[str, ...] = ()) -> None:
        """Refuse what `query` would refuse before running anything: SQL the gate rejects and
        relations the caller cannot read (a name that maps to nothing, another org's data);
        nothing is run or audited (a query run is refused so, and leaves no run). `params`:
        a saved query's values for its `$1`..`$n`."""
        await self._bind(BatchItem(caller, None, sql, None, params=params), None)

    async def query_batch(self, items: list[BatchItem]) -> list[QueryResult | TraceError]:
        """Many tasks' queries in one call (an alert's rules over one committed range): each
        is gated, bound to its own caller's grants and audited as if it came alone; queries
        with the same binding run one after another on one executor (bound once), the
        bindings side by side; every audit row is written by one statement. The queries of a
        binding that finds no executor free within the executors' time limit are answered
        429 (retry)."""
        out: list[QueryResult | TraceError | None] = [None] * len(items)
        memo: dict[Any, tuple[Binding, list[str]]] = {}
        groups: dict[Binding, list[tuple[int, GatedQuery, list[str]]]] = {}
        for i, item in enumerate(items):
            try:
                gated, binding, dataset_ids = await self._bind(item, memo)
            except TraceError as exc:
                out[i] = exc
                continue
            groups.setdefault(binding, []).append((i, gated, dataset_ids))
        deadline = time.monotonic() + self.limits.timeout_seconds

        async def run_group(
            binding: Binding, members: list[tuple[int, GatedQuery, list[str]]]
        ) -> None:
            started = time.perf_counter()
            queries = [(g.sql, clamp_limit(items[i].limit)) for i, g, _ in members]
            wait = max(0.0, deadline - time.monotonic())
            answers = await self.pool.run_many(binding, queries, wait)
            spent = (time.perf_counter() - started) / len(members)
            for (i, _, _), answer in zip(members, answers, strict=True):
                out[i] = self._outcome(items[i], answer, spent)

        await asyncio.gather(*(run_group(b, m) for b, m in groups.items()))
        audits = [
            self._audit(items[i], gated, dataset_ids, result)
            for members in groups.values()
            for i, gated, dataset_ids in members
            if isinstance(result := out[i], QueryResult)
        ]
        if audits:
            columns = list(zip(*audits, strict=True))
            await self.data.execute(
                q("datasets", "insert_audits"),
                *(list(c) for c in columns[:4]),
                ["{" + ",".join(map(str, d)) + "}" for d in columns[4]],
                [orjson.dumps(c).decode() for c in columns[5]],
                *(list(c) for c in columns[6:]),
            )
        for members in groups.values():
            for i, _, dataset_ids in members:
                if isinstance(result := out[i], QueryResult):
                    self._allowed(items[i], result, dataset_ids)
        return [r if r is not None else TraceError("query was not run") for r in out]

    async def _bind(
        self, item: BatchItem, memo: dict[Any, tuple[Binding, list[str]]] | None
    ) -> tuple[GatedQuery, Binding, list[str]]:
        """Gate and bind one query. `memo`: bindings already made in this batch, by caller
        grants and relations read (the same grants at the same moment bind the same)."""
        caller = item.caller
        try:
            gated = gate(item.sql, len(item.params))
            key = (
                caller.org_id,
                caller.grants,
                caller.read_prefixes,
                caller.org_wide,
                item.dataset_id,
                gated.relations,
            )
            found = memo.get(key) if memo is not None and not caller.org_wide else None
            if found is None:
                found = await self.binder.bind(caller, gated, item.dataset_id)
                if memo is not None:
                    memo[key] = found
        except SqlRejected as exc:
            QUERIES.labels(exc.code).inc()
            log.warning("query.denied", reason=exc.code, **self._ids(item))
            raise QueryRejected(exc.reason, reason=exc.code) from None
        except TraceError as exc:
            QUERIES.labels(exc.code).inc()
            log.warning("query.denied", reason=exc.code, **self._ids(item))
            raise
        return gated, found[0], found[1]

    async def _execute(
        self, item: BatchItem, gated: GatedQuery, binding: Binding, timeout: float | None
    ) -> QueryResult:
        started = time.perf_counter()
        answer: QueryResult | TraceError | QueryFailed
        try:
            answer = await self.pool.run(
                binding,
                gated.sql,
                clamp_limit(item.limit, item.fmt, self.max_export_rows),
                timeout,
                fmt=item.fmt,
                params=item.params,
            )
        except (QueryFailed, ExecutorUnavailable, OverloadedError) as exc:
            answer = exc
        outcome = self._outcome(item, answer, time.perf_counter() - started)
        if isinstance(outcome, TraceError):
            raise outcome from None
        return outcome

    def _outcome(
        self, item: BatchItem, answer: QueryResult | TraceError | QueryFailed, seconds: float
    ) -> QueryResult | TraceError:
        """A query's answer from the pool, counted and logged: the result, or the error the
        caller gets (QueryFailed becomes a 400 with the engine's code)."""
        if isinstance(answer, QueryResult):
            QUERY_SECONDS.observe(seconds)
            return answer
        if isinstance(answer, QueryFailed):
            QUERIES.labels(answer.code).inc()
            log.warning("query.failed", reason=answer.code, **self._ids(item))
            return ValidationError(self._shown_reason(item, answer), reason=answer.code)
        if isinstance(answer, OverloadedError):
            QUERIES.labels("overloaded").inc()
        else:
            QUERIES.labels("executor_unavailable").inc()
            log.error("query.executor_lost", **self._ids(item))
        return answer

    @staticmethod
    def _shown_reason(item: BatchItem, failed: QueryFailed) -> str:
        """The engine's message as the caller may read it: what is wrong, never the SQL
        (`domain.query_errors`)."""
        if failed.code != "query_error":
            return failed.reason  # the engine's own words, no query text in them
        return public_reason(
            failed.reason,
            item.sql,
            gate(item.sql, len(item.params)).sql,
            failed.names,
            "query failed in the engine",
        )

    @staticmethod
    def _ids(item: BatchItem) -> dict[str, Any]:
        return item.caller.log_ids() | {
            "dataset_id": item.dataset_id,
            "sql_sha256": sql_hash(item.sql),
        }

    @staticmethod
    def _audit(
        item: BatchItem, gated: GatedQuery, dataset_ids: list[str], result: QueryResult
    ) -> tuple[Any, ...]:
        """One `data.query_audit` row: the SQL's hash, never its text."""
        caller = item.caller
        return (
            caller.org_id,
            caller.task_id,
            caller.user_id,
            caller.source,
            [uuid.UUID(d) for d in dataset_ids],
            list(gated.columns),
            result.rows,
            gated.sha256,
        )

    def _allowed(self, item: BatchItem, result: QueryResult, dataset_ids: list[str]) -> None:
        QUERIES.labels("allowed").inc()
        log.info(
            "query.allowed",
            rows=result.rows,
            truncated=result.truncated,
            relations=len(dataset_ids),
            **self._ids(item),
        )


class AnswerStream:
    """An export streaming from its executor to its caller (`QueryService.stream`): its
    chunks in order, the last one held back until the query's audit row is written, so a
    complete answer never goes out without one. Past TRACE_QUERY_MAX_EXPORT_ROWS with rows
    left it ends in AnswerCut (holding that last chunk), never in a body that looks whole;
    a failure part-way raises the caller's error. `close()` it in any case: one abandoned
    before its end is audited then (rows it had: not counted, 0) and its executor killed."""

    def __init__(
        self,
        service: QueryService,
        item: BatchItem,
        gated: GatedQuery,
        dataset_ids: list[str],
        stream: ExportStream,
        cap: bool,
        started: float,
    ) -> None:
        self._service = service
        self._item, self._gated, self._dataset_ids = item, gated, dataset_ids
        self._stream = stream
        self._cap = cap  # the limit was the deployment's cap, not the caller's own
        self._started = started
        self._held: bytes | None = None
        self._ended = False
        self.audited = False

    @property
    def rows(self) -> int:
        return self._stream.rows

    @property
    def truncated(self) -> bool:
        return self._stream.truncated

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._ended:
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                self._ended = True
                break
            except (QueryFailed, ExecutorUnavailable) as exc:
                self._ended = True
                seconds = time.perf_counter() - self._started
                raise _error(self._service._outcome(self._item, exc, seconds)) from None
            held, self._held = self._held, chunk
            if held is not None:
                return held
        last, self._held = self._held, None
        if not self.audited:
            await self._audit(self._stream.rows)
            QUERY_SECONDS.observe(time.perf_counter() - self._started)
            result = QueryResult(b"", self._stream.rows, self._stream.truncated)
            self._service._allowed(self._item, result, self._dataset_ids)
            if self._stream.truncated and self._cap:
                raise AnswerCut(
                    "the answer reached TRACE_QUERY_MAX_EXPORT_ROWS with rows left", last or b""
                )
        if last is None:
            raise StopAsyncIteration
        return last

    async def _audit(self, rows: int) -> None:
        self.audited = True
        result = QueryResult(b"", rows, self._stream.truncated)
        await self._service.data.execute(
            q("datasets", "insert_audit"),
            *self._service._audit(self._item, self._gated, self._dataset_ids, result),
        )

    async def close(self) -> None:
        self._stream.close()
        if not self.audited:  # abandoned part-way: it ran, and bytes may have gone out
            log.warning("query.stream_abandoned", **self._service._ids(self._item))
            task = asyncio.ensure_future(self._audit(0))
            _AUDITS.add(task)
            task.add_done_callback(_AUDITS.discard)
            await asyncio.shield(task)


_AUDITS: set[asyncio.Future[None]] = set()  # audits of abandoned streams, finished if cancelled


def _error(outcome: QueryResult | TraceError) -> TraceError:
    """The error `_outcome` made of an executor's refusal or failure."""
    return outcome if isinstance(outcome, TraceError) else TraceError("query was not run")
