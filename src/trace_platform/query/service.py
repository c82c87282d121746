"""Query service logic: authorise the dataset against the token, resolve the pinned manifest,
gate the SQL, execute it in a bounded executor pool, audit it. No SQL text is ever logged."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import asyncpg

from trace_platform.db.sql import q
from trace_platform.domain.capability import CapabilityClaims, DatasetGrant, is_within_prefixes
from trace_platform.domain.sql_gate import SqlRejected, check_sql, sql_hash
from trace_platform.errors import ForbiddenError, OverloadedError, TraceError, ValidationError
from trace_platform.logs import get_logger
from trace_platform.query.executor import ExecutorLimits, QueryFailed, execute, executor_pool

log = get_logger(__name__)
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000


class QueryRejected(ValidationError):
    code = "sql_rejected"


class ExecutorUnavailable(TraceError):
    status = 503
    code = "executor_unavailable"


def clamp_limit(limit: int | None) -> int:
    return DEFAULT_LIMIT if limit is None else max(1, min(MAX_LIMIT, limit))


def grant_prefix(grant: DatasetGrant) -> str:
    ref = grant.storage_ref
    if ref.scheme == "s3":
        return f"s3://{ref.bucket}/{ref.prefix}"
    return f"file://{ref.prefix}"


class QueryService:
    def __init__(
        self,
        state: asyncpg.Pool,
        data: asyncpg.Pool,
        workers: int,
        limits: ExecutorLimits,
        s3_options: dict[str, str] | None = None,
    ) -> None:
        self.s3_options = s3_options
        self.state = state
        self.data = data
        self.workers = workers
        self.limits = limits
        self.slots = asyncio.Semaphore(workers)
        self.pool: ProcessPoolExecutor = executor_pool(workers, limits)

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def manifest_files(
        self, claims: CapabilityClaims, dataset_id: str
    ) -> tuple[list[str], dict[str, str] | None]:
        """Exactly the granted version's files (local paths or `bucket/key` with S3 options),
        or ForbiddenError."""
        grant = next((g for g in claims.datasets if g.dataset_uuid == dataset_id), None)
        if grant is None:
            raise ForbiddenError("dataset is not granted to this task")
        row = await self.state.fetchrow(
            q("datasets", "get_version"), uuid.UUID(grant.dataset_uuid), grant.dataset_version
        )
        if row is None or str(row["org_id"]) != claims.org_id:
            raise ForbiddenError("granted dataset version is not available")
        prefix = grant_prefix(grant)
        if row["storage_prefix"] != prefix or not any(
            prefix.startswith(p) for p in claims.s3.read_prefixes
        ):
            raise ForbiddenError("dataset storage is outside the token's read prefixes")
        manifest = row["manifest"]
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, list):
            raise ForbiddenError("dataset manifest is malformed")
        paths: list[str] = []
        for f in files:
            if not isinstance(f, dict):
                raise ForbiddenError("dataset manifest is malformed")
            uri = str(f.get("uri", ""))
            if not is_within_prefixes(uri, [prefix]) or not is_within_prefixes(
                uri, list(claims.s3.read_prefixes)
            ):
                raise ForbiddenError("a manifest entry is outside the granted prefix")
            if uri.startswith("s3://"):
                if self.s3_options is None:
                    raise ValidationError("this query service has no S3 access configured")
                paths.append(uri[len("s3://") :])
                continue
            path = Path(uri[len("file://") :])
            try:
                if path.stat().st_size != f.get("size"):
                    raise ForbiddenError("dataset file does not match its manifest")
            except FileNotFoundError:
                raise ForbiddenError("dataset file is missing") from None
            paths.append(str(path))
        if not paths:
            raise ForbiddenError("dataset version has no files")
        s3 = self.s3_options if paths and prefix.startswith("s3://") else None
        return paths, s3

    async def query(
        self, claims: CapabilityClaims, dataset_id: str, sql: str, limit: int | None
    ) -> dict[str, Any]:
        digest = sql_hash(sql)
        ids = {
            "task_id": claims.task_id,
            "attempt": claims.attempt,
            "dataset_id": dataset_id,
            "sql_sha256": digest,
        }
        try:
            files, s3 = await self.manifest_files(claims, dataset_id)
            gated = check_sql(sql)
        except SqlRejected as exc:
            log.warning("query.denied", reason=exc.code, **ids)
            raise QueryRejected(exc.reason, reason=exc.code) from None
        except TraceError as exc:
            log.warning("query.denied", reason=exc.code, **ids)
            raise
        if self.slots.locked():
            raise OverloadedError("all query executors are busy; retry shortly")
        async with self.slots:
            loop = asyncio.get_running_loop()
            try:
                result: dict[str, Any] = await asyncio.wait_for(
                    loop.run_in_executor(
                        self.pool, execute, files, gated.sql, clamp_limit(limit), self.limits, s3
                    ),
                    self.limits.timeout_seconds + 10,
                )
            except QueryFailed as exc:
                log.warning("query.failed", reason=exc.code, **ids)
                raise ValidationError(exc.reason, reason=exc.code) from None
            except (BrokenProcessPool, TimeoutError):
                log.error("query.executor_lost", **ids)
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = executor_pool(self.workers, self.limits)
                raise ExecutorUnavailable("query executor failed; retry") from None
        await self.data.execute(
            q("datasets", "insert_audit"),
            uuid.UUID(claims.org_id),
            uuid.UUID(claims.task_id),
            uuid.UUID(dataset_id),
            list(gated.columns),
            len(result["rows"]),
            digest,
        )
        log.info("query.allowed", rows=len(result["rows"]), truncated=result["truncated"], **ids)
        return result
