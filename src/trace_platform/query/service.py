"""Query service logic: gate the SQL, bind the relations it reads to the caller's grants and
their pinned manifests, execute it in a bounded executor pool, audit it. No SQL text is ever
logged."""

from __future__ import annotations

import time
import uuid
from functools import lru_cache

import asyncpg

from trace_platform.db.sql import q
from trace_platform.domain.errors import (
    OverloadedError,
    TraceError,
    ValidationError,
)
from trace_platform.domain.sql_gate import GatedQuery, SqlRejected, check_sql, sql_hash
from trace_platform.logs import get_logger
from trace_platform.metrics import QUERIES, QUERY_SECONDS
from trace_platform.query.binding import Binder, QueryCaller
from trace_platform.query.executor import (
    ExecutorLimits,
    ExecutorPool,
    ExecutorUnavailable,
    QueryFailed,
    QueryResult,
)
from trace_platform.sandbox import Isolation

log = get_logger(__name__)
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000


class QueryRejected(ValidationError):
    code = "sql_rejected"


@lru_cache(maxsize=4096)
def gate(sql: str) -> GatedQuery:
    """The gate is a pure function of the SQL text: UDFs repeat their queries, so verdicts
    that pass are remembered (rejections are not cached and re-parse every time). Which
    names the caller may read is checked per query, by the binding."""
    return check_sql(sql, None)


def clamp_limit(limit: int | None) -> int:
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
    ) -> None:
        self.binder = Binder(state, s3_options)
        self.data = data
        self.limits = limits
        self.pool = ExecutorPool(workers, limits, isolation, executor_uid)

    async def close(self) -> None:
        await self.pool.close()

    async def query(
        self,
        caller: QueryCaller,
        dataset_id: str | None,
        sql: str,
        limit: int | None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Gate, bind, run and audit one query (a task's, a user's or an operator's).
        `dataset_id`: the granted dataset read as `dataset` (None: by the catalog's names)."""
        digest = sql_hash(sql)
        ids = caller.log_ids() | {"dataset_id": dataset_id, "sql_sha256": digest}
        try:
            gated = gate(sql)
            binding, dataset_ids = await self.binder.bind(caller, gated, dataset_id)
        except SqlRejected as exc:
            QUERIES.labels(exc.code).inc()
            log.warning("query.denied", reason=exc.code, **ids)
            raise QueryRejected(exc.reason, reason=exc.code) from None
        except TraceError as exc:
            QUERIES.labels(exc.code).inc()
            log.warning("query.denied", reason=exc.code, **ids)
            raise
        started = time.perf_counter()
        try:
            result = await self.pool.run(binding, gated.sql, clamp_limit(limit), timeout)
        except QueryFailed as exc:
            QUERIES.labels(exc.code).inc()
            log.warning("query.failed", reason=exc.code, **ids)
            raise ValidationError(exc.reason, reason=exc.code) from None
        except ExecutorUnavailable:
            QUERIES.labels("executor_unavailable").inc()
            log.error("query.executor_lost", **ids)
            raise
        except OverloadedError:
            QUERIES.labels("overloaded").inc()
            raise
        QUERY_SECONDS.observe(time.perf_counter() - started)
        await self.data.execute(
            q("datasets", "insert_audit"),
            caller.org_id,
            caller.task_id,
            caller.user_id,
            caller.source,
            [uuid.UUID(d) for d in dataset_ids],
            list(gated.columns),
            result.rows,
            digest,
        )
        QUERIES.labels("allowed").inc()
        log.info(
            "query.allowed",
            rows=result.rows,
            truncated=result.truncated,
            relations=len(dataset_ids),
            **ids,
        )
        return result
