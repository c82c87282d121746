"""Datasets for people: list and show (ranges or versions) an org's datasets, register
Parquet files as a version, and query one through the one query binding (the same grant,
prefix checks, gate, sandbox and audit row as a task's query)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from trace_platform.client import BytesReply, TaskClient
from trace_platform.datasets import RegisteredDataset, register_dataset
from trace_platform.db.sql import q
from trace_platform.domain.catalog import RelationInfo
from trace_platform.domain.errors import ConfigError, NotFoundError
from trace_platform.domain.query_formats import TRUNCATED_HEADER, AnswerCut, check_limit
from trace_platform.ops.env import OpsEnv, from_row
from trace_platform.ports import WORKER_HEADER


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    dataset_uuid: uuid.UUID
    kind: str
    created_at: datetime
    current_version: str | None


@dataclass(frozen=True)
class CommittedRange:
    range_start: int
    range_end: int
    row_count: int | None
    size_bytes: int | None
    added_seq: int
    compacted: bool


@dataclass(frozen=True)
class DatasetVersion:
    dataset_version: str
    created_at: datetime
    files: int | None


@dataclass(frozen=True)
class DatasetDetail:
    dataset_uuid: uuid.UUID
    name: str
    kind: str
    created_at: datetime
    commit_seq: int | None
    current_version: str | None
    ranges: list[CommittedRange] | None = None
    versions: list[DatasetVersion] | None = None


@dataclass(frozen=True)
class QueryAnswer:
    columns: list[dict[str, str]]
    rows: list[list[Any]]
    truncated: bool


@dataclass(frozen=True)
class ExportAnswer:
    """A query answered as bytes: an Arrow IPC stream, CSV or Parquet (`fmt`)."""

    fmt: str
    body: bytes
    truncated: bool


@dataclass(frozen=True)
class ExportWritten:
    """A query answered as bytes handed on chunk by chunk (`stream_here`): its rows and
    whether rows were left out."""

    fmt: str
    rows: int
    truncated: bool


async def list_datasets(env: OpsEnv, org_id: uuid.UUID) -> list[DatasetSummary]:
    rows = await env.state.fetch(q("console", "datasets_of_org"), org_id)
    return [from_row(DatasetSummary, r) for r in rows]


async def show_dataset(env: OpsEnv, org_id: uuid.UUID, name: str) -> DatasetDetail:
    ds = await env.state.fetchrow(q("console", "dataset_of_org"), org_id, name)
    if ds is None:
        raise NotFoundError(f"no dataset named {name!r}")
    if ds["kind"] == "partitions":
        parts = await env.state.fetch(q("console", "dataset_partitions"), ds["dataset_uuid"], 1000)
        ranges = [from_row(CommittedRange, p) for p in parts]
        return from_row(
            DatasetDetail, ds, current_version=f"snap-{ds['commit_seq']}", ranges=ranges
        )
    rows = await env.state.fetch(q("console", "dataset_versions"), ds["dataset_uuid"])
    versions = [from_row(DatasetVersion, v) for v in rows]
    current = versions[0].dataset_version if versions else None
    return from_row(DatasetDetail, ds, current_version=current, versions=versions)


async def register_files(
    env: OpsEnv, org_id: uuid.UUID, name: str, paths: list[Path]
) -> RegisteredDataset:
    """Upload Parquet files as a new version of NAME (same content: the existing one)."""
    return await register_dataset(env.state, env.store, name, paths, org_id)


def _local_service(env: OpsEnv) -> Any:
    """The query service's own binding, gate, sandboxed executor and audit, in this process."""
    from trace_platform.query.app import s3_options
    from trace_platform.query.executor import executor_limits
    from trace_platform.query.service import QueryService
    from trace_platform.sandbox import detect_isolation

    s = env.settings
    return QueryService(
        env.state,
        env.data,
        1,
        executor_limits(s),
        detect_isolation(),
        s3_options(s),
        s.query_uid,
        max_export_rows=s.query_max_export_rows,
    )


async def query_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    block_range: tuple[int, int] | None = None,
    job: str | None = None,
    params: tuple[str, ...] = (),
) -> QueryAnswer:
    """An operator's query at this installation (`trace dataset query`): every relation of
    the org by its catalog name (NAME also as `dataset`), run in this process. `params`: a
    saved query's values for its `$1`..`$n` (`ops.saved_queries`)."""
    body, _truncated = await _run_here(
        env, org_id, name, sql, limit, block_range, job, "json", params
    )
    return QueryAnswer(**orjson.loads(body))


async def export_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    fmt: str,
    block_range: tuple[int, int] | None = None,
    job: str | None = None,
    params: tuple[str, ...] = (),
) -> ExportAnswer:
    """The same query answered (`fmt`) as an Arrow IPC stream, CSV or Parquet, made by the
    engine (up to TRACE_QUERY_MAX_EXPORT_ROWS rows)."""
    body, truncated = await _run_here(env, org_id, name, sql, limit, block_range, job, fmt, params)
    return ExportAnswer(fmt, body, truncated)


async def stream_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    fmt: str,
    write: Callable[[bytes], object],
    block_range: tuple[int, int] | None = None,
    job: str | None = None,
    params: tuple[str, ...] = (),
) -> ExportWritten:
    """The same export as `export_here`, each chunk handed to `write` as the executor makes
    it (never held whole, so no 63 MiB frame bounds it). At TRACE_QUERY_MAX_EXPORT_ROWS with
    rows left it is whole up to there and says truncated, as `export_here`'s body and a
    query run's file are; a refusal or a failure, before or part-way, is raised."""
    service = _local_service(env)
    try:
        caller = await service.binder.user_caller(org_id, name, None, "cli", block_range, job)
        stream = await service.stream(caller, None, sql, limit, fmt=fmt, params=params)
        cut = False
        try:
            async for chunk in stream:
                write(chunk)
        except AnswerCut as exc:  # the cap reached: the held last chunk ends the file
            cut = True
            write(exc.rest)
        finally:
            await stream.close()
    finally:
        await service.close()
    return ExportWritten(fmt, stream.rows, stream.truncated or cut)


async def _run_here(
    env: OpsEnv,
    org_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    block_range: tuple[int, int] | None,
    job: str | None,
    fmt: str,
    params: tuple[str, ...] = (),
) -> tuple[bytes, bool]:
    service = _local_service(env)
    try:
        caller = await service.binder.user_caller(org_id, name, None, "cli", block_range, job)
        result = await service.query(caller, None, sql, limit, fmt=fmt, params=params)
    finally:
        await service.close()
    return result.body, result.truncated


async def relations_here(
    env: OpsEnv, org_id: uuid.UUID, job: str | None = None
) -> list[RelationInfo]:
    """Every relation the org's queries may read, with its names and columns."""
    from trace_platform.query.relations import describe

    service = _local_service(env)
    try:
        caller = await service.binder.user_caller(org_id, None, None, "cli", job=job)
        return list(await describe(service.binder, caller))
    finally:
        await service.close()


async def relations_as_user(
    env: OpsEnv, org_id: uuid.UUID, user_id: uuid.UUID, job: str | None = None
) -> list[RelationInfo]:
    """The same for a user (`GET /v1/relations`, the console's SQL page), from the query
    service."""
    client, url, headers = _query_service(env)
    body = {"org_id": str(org_id), "user_id": str(user_id), "job": job}
    answer = await client.post(f"{url}/internal/relations", body, headers, retry=False)
    return [
        RelationInfo(r["name"], r["kind"], tuple(r["names"]), tuple(r["columns"]))
        for r in answer["relations"]
    ]


async def query_as_user(
    env: OpsEnv,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    job: str | None = None,
    params: tuple[str, ...] = (),
) -> QueryAnswer:
    """A user's query (`POST /v1/query`, the console): sent to the query service, which
    binds it for the user's org, gates, runs and audits it per user."""
    client, url, headers = _query_service(env)
    body = _user_query(env, org_id, user_id, name, sql, limit, job, "json", params)
    answer = await client.post(f"{url}/internal/user-query", body, headers, retry=False)
    return QueryAnswer(**answer)


async def export_as_user(
    env: OpsEnv,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    fmt: str,
    job: str | None = None,
    params: tuple[str, ...] = (),
) -> ExportAnswer:
    """A user's query answered (`fmt`) as an Arrow IPC stream, CSV or Parquet: the same
    binding, gate, sandbox and audit; the engine makes the bytes."""
    client, url, headers = _query_service(env)
    body = _user_query(env, org_id, user_id, name, sql, limit, job, fmt, params)
    raw, reply_headers = await client.post_bytes(f"{url}/internal/user-query", body, headers)
    return ExportAnswer(fmt, raw, reply_headers.get(TRUNCATED_HEADER.lower()) == "true")


async def stream_as_user(
    env: OpsEnv,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    fmt: str,
    job: str | None = None,
    params: tuple[str, ...] = (),
) -> BytesReply:
    """The same as `export_as_user`, but read as the query service sends it (`BytesReply`,
    chunk by chunk, to be closed): never held whole in this process."""
    client, url, headers = _query_service(env)
    body = _user_query(env, org_id, user_id, name, sql, limit, job, fmt, params)
    return await client.open_bytes(f"{url}/internal/user-query", body, headers)


def _query_service(env: OpsEnv) -> tuple[TaskClient, str, dict[str, str]]:
    """This process's client of the query service, its URL and the worker token's header;
    ConfigError when it has none."""
    if env.query_client is None or env.worker_token is None:
        raise ConfigError("this process has no client of the query service")
    return env.query_client, env.settings.resolved_query_url, {WORKER_HEADER: env.worker_token}


def _user_query(
    env: OpsEnv,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str | None,
    sql: str,
    limit: int | None,
    job: str | None,
    fmt: str,
    params: tuple[str, ...],
) -> dict[str, Any]:
    """The body of a user's query to the query service (`/internal/user-query`), its
    `limit` checked for `fmt`."""
    return {
        "org_id": str(org_id),
        "user_id": str(user_id),
        "dataset": name,
        "job": job,
        "sql": sql,
        "limit": check_limit(fmt, limit),
        "timeout_seconds": env.settings.api_query_timeout_seconds,
        "format": fmt,
        "params": list(params),
    }
