"""Query service logic: authorise the dataset against the token, resolve the pinned manifest,
gate the SQL, execute it in a bounded executor pool, audit it. No SQL text is ever logged."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import asyncpg

from trace_platform.datasets import parse_snapshot_version, snapshot_manifest
from trace_platform.db.sql import q
from trace_platform.domain.capability import CapabilityClaims, DatasetGrant, is_within_prefixes
from trace_platform.domain.errors import (
    ForbiddenError,
    OverloadedError,
    TraceError,
    ValidationError,
)
from trace_platform.domain.sql_gate import GatedQuery, SqlRejected, check_sql, sql_hash
from trace_platform.logs import get_logger
from trace_platform.metrics import QUERIES, QUERY_SECONDS
from trace_platform.query.executor import (
    Binding,
    ExecutorLimits,
    ExecutorPool,
    ExecutorUnavailable,
    QueryFailed,
    QueryResult,
)
from trace_platform.sandbox import Isolation

log = get_logger(__name__)
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000
VERSION_CACHE_SECONDS = 60.0


class QueryRejected(ValidationError):
    code = "sql_rejected"


@lru_cache(maxsize=4096)
def gate(sql: str) -> GatedQuery:
    """The gate is a pure function of the SQL text: UDFs repeat their queries, so verdicts
    that pass are remembered (rejections are not cached and re-parse every time)."""
    return check_sql(sql)


def clamp_limit(limit: int | None) -> int:
    return DEFAULT_LIMIT if limit is None else max(1, min(MAX_LIMIT, limit))


def grant_prefix(grant: DatasetGrant) -> str:
    ref = grant.storage_ref
    if ref.scheme == "s3":
        return f"s3://{ref.bucket}/{ref.prefix}"
    return f"file://{ref.prefix}"


def manifest_binding(
    key: str,
    prefix: str,
    manifest: object,
    read_prefixes: list[str],
    s3_options: dict[str, str] | None,
    block_range: tuple[int, int] | None = None,
) -> Binding:
    """Exactly a version's files (local paths, or `bucket/key` with S3 options), each inside
    the version's prefix and the caller's read prefixes, local sizes as recorded; else
    ForbiddenError (nothing is read)."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        raise ForbiddenError("dataset manifest is malformed")
    paths: list[str] = []
    for f in files:
        if not isinstance(f, dict):
            raise ForbiddenError("dataset manifest is malformed")
        uri = str(f.get("uri", ""))
        if not is_within_prefixes(uri, [prefix]) or not is_within_prefixes(uri, read_prefixes):
            raise ForbiddenError("a manifest entry is outside the granted prefix")
        if uri.startswith("s3://"):
            if s3_options is None:
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
    s3 = s3_options if prefix.startswith("s3://") else None
    return Binding(
        key, tuple(paths), tuple(sorted(s3.items())) if s3 is not None else None, block_range
    )


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
        self.s3_options = s3_options
        self.state = state
        self.data = data
        self.limits = limits
        self.pool = ExecutorPool(workers, limits, isolation, executor_uid)
        # Dataset versions are immutable (content-addressed): their rows are remembered for a
        # short while; every grant, org and prefix check still runs on each query.
        self.versions: OrderedDict[tuple[str, str], tuple[float, Mapping[str, Any]]] = OrderedDict()

    async def close(self) -> None:
        await self.pool.close()

    async def version_row(self, grant: DatasetGrant) -> Mapping[str, Any] | None:
        """The granted version's org, prefix and manifest: a registered version, or a
        snapshot of a chain dataset (immutable too: a commit sequence number)."""
        cached = self.versions.get((grant.dataset_uuid, grant.dataset_version))
        if cached is not None and time.monotonic() - cached[0] < VERSION_CACHE_SECONDS:
            return cached[1]
        if parse_snapshot_version(grant.dataset_version) is not None:
            async with self.state.acquire() as conn:
                return await snapshot_manifest(conn, grant)
        row = await self.state.fetchrow(
            q("datasets", "get_version"), uuid.UUID(grant.dataset_uuid), grant.dataset_version
        )
        return cast("Mapping[str, Any] | None", row)

    def remember(self, grant: DatasetGrant, row: Mapping[str, Any]) -> None:
        """Only rows that passed every check are remembered, for VERSION_CACHE_SECONDS."""
        key = (grant.dataset_uuid, grant.dataset_version)
        cached = self.versions.get(key)
        if cached is not None and cached[1] is row:
            return
        self.versions[key] = (time.monotonic(), row)
        while len(self.versions) > 1024:
            self.versions.popitem(last=False)

    async def manifest_files(self, claims: CapabilityClaims, dataset_id: str) -> Binding:
        """Exactly the granted version's files (local paths or `bucket/key` with S3 options),
        or ForbiddenError."""
        grant = next((g for g in claims.datasets if g.dataset_uuid == dataset_id), None)
        if grant is None:
            raise ForbiddenError("dataset is not granted to this task")
        row = await self.version_row(grant)
        if row is None or str(row["org_id"]) != claims.org_id:
            raise ForbiddenError("granted dataset version is not available")
        prefix = grant_prefix(grant)
        if row["storage_prefix"] != prefix or not any(
            prefix.startswith(p) for p in claims.s3.read_prefixes
        ):
            raise ForbiddenError("dataset storage is outside the token's read prefixes")
        binding = manifest_binding(
            f"{grant.dataset_uuid}@{grant.dataset_version}",
            prefix,
            row["manifest"],
            list(claims.s3.read_prefixes),
            self.s3_options,
            row.get("block_range"),
        )
        self.remember(grant, row)
        return binding

    async def query(
        self,
        claims: CapabilityClaims,
        dataset_id: str,
        sql: str,
        limit: int | None,
        user_id: uuid.UUID | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """`user_id`: a user's query (POST /v1/query), audited per user; `claims` then are
        the grant the user API resolved for the user's org, never a task's."""
        digest = sql_hash(sql)
        ids: dict[str, Any] = (
            {"user_id": str(user_id)}
            if user_id is not None
            else {"task_id": claims.task_id, "attempt": claims.attempt}
        )
        ids |= {"dataset_id": dataset_id, "sql_sha256": digest}
        try:
            binding = await self.manifest_files(claims, dataset_id)
            gated = gate(sql)
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
            q("datasets", "insert_user_audit" if user_id else "insert_audit"),
            uuid.UUID(claims.org_id),
            user_id or uuid.UUID(claims.task_id),
            uuid.UUID(dataset_id),
            list(gated.columns),
            result.rows,
            digest,
        )
        QUERIES.labels("allowed").inc()
        log.info("query.allowed", rows=result.rows, truncated=result.truncated, **ids)
        return result
