"""The one query binding: (who asks, which dataset) -> exactly the files an executor may read.

Every query takes this path — a task's (`POST /v1/task/query`, grants from its capability
token), a user's (`POST /v1/query` and the console, grants resolved for the user's org) and
an operator's (`trace dataset query`, the same as a user's). The checks, in order: the
dataset is granted to the caller; its version (or snapshot) exists and belongs to the
caller's org; its storage lies inside its own prefix and the caller's read prefixes; every
manifest entry lies inside both; local files have their recorded sizes. Anything else is
ForbiddenError and nothing is read.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import asyncpg

from trace_platform.datasets import parse_snapshot_version, resolve_inputs, snapshot_manifest
from trace_platform.db.sql import q
from trace_platform.domain.capability import CapabilityClaims, DatasetGrant, is_within_prefixes
from trace_platform.domain.errors import ForbiddenError, NotFoundError, ValidationError
from trace_platform.query.executor import Binding

VERSION_CACHE_SECONDS = 60.0
RESOLVE_CACHE_SECONDS = 1.0
Source = Literal["task", "api", "cli"]


@dataclass(frozen=True)
class QueryCaller:
    """Who runs a query and what it may read. A task's grants come from its verified token;
    a user's are resolved for the user's org (no token is minted for a user)."""

    org_id: uuid.UUID
    grants: tuple[DatasetGrant, ...]
    read_prefixes: tuple[str, ...]
    source: Source
    task_id: uuid.UUID | None = None
    attempt: int | None = None
    user_id: uuid.UUID | None = None

    @classmethod
    def of_task(cls, claims: CapabilityClaims) -> QueryCaller:
        return cls(
            org_id=uuid.UUID(claims.org_id),
            grants=tuple(claims.datasets),
            read_prefixes=tuple(claims.s3.read_prefixes),
            source="task",
            task_id=uuid.UUID(claims.task_id),
            attempt=claims.attempt,
        )

    def log_ids(self) -> dict[str, Any]:
        if self.task_id is not None:
            return {"task_id": str(self.task_id), "attempt": self.attempt}
        return {"user_id": str(self.user_id) if self.user_id else None, "source": self.source}


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


class Binder:
    """Binds callers to files. Dataset versions and snapshots are immutable, so their rows
    are remembered for a short while (only rows that passed every check); every grant, org
    and prefix check still runs on each query."""

    def __init__(self, state: asyncpg.Pool, s3_options: dict[str, str] | None = None) -> None:
        self.state = state
        self.s3_options = s3_options
        self.versions: OrderedDict[tuple[str, str], tuple[float, Mapping[str, Any]]] = OrderedDict()
        self.resolved: dict[tuple[uuid.UUID, str], tuple[float, Any, Any]] = {}

    async def user_caller(
        self,
        org_id: uuid.UUID,
        dataset: str,
        user_id: uuid.UUID | None,
        source: Source,
        block_range: tuple[int, int] | None = None,
    ) -> tuple[QueryCaller, str]:
        """A person's query of NAME in their org: the newest version (or the current
        snapshot, as of at most RESOLVE_CACHE_SECONDS ago; a chain dataset's `block_range`
        only) as the only grant. Returns the caller and the dataset id to bind."""
        item: dict[str, Any] = {"dataset": dataset}
        if block_range is not None:
            item["range"] = list(block_range)
        key = (org_id, f"{dataset}\0{block_range}")
        hit = self.resolved.get(key)
        if hit is not None and time.monotonic() - hit[0] < RESOLVE_CACHE_SECONDS:
            grants, prefixes = hit[1], hit[2]
        else:
            async with self.state.acquire() as conn:
                try:
                    grants, prefixes = await resolve_inputs(conn, org_id, {"inputs": [item]})
                except ValidationError as exc:
                    if "unknown dataset" not in exc.detail:
                        raise
                    raise NotFoundError(f"unknown dataset {dataset!r} in this org") from None
            self.resolved[key] = (time.monotonic(), grants, prefixes)
            while len(self.resolved) > 4096:
                self.resolved.pop(next(iter(self.resolved)))
        caller = QueryCaller(org_id, tuple(grants), tuple(prefixes), source, user_id=user_id)
        return caller, grants[0].dataset_uuid

    async def _version_row(self, grant: DatasetGrant) -> Mapping[str, Any] | None:
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

    def _remember(self, grant: DatasetGrant, row: Mapping[str, Any]) -> None:
        key = (grant.dataset_uuid, grant.dataset_version)
        cached = self.versions.get(key)
        if cached is not None and cached[1] is row:
            return
        self.versions[key] = (time.monotonic(), row)
        while len(self.versions) > 1024:
            self.versions.popitem(last=False)

    async def bind(self, caller: QueryCaller, dataset_id: str) -> Binding:
        """Exactly the granted version's files, or ForbiddenError."""
        grant = next((g for g in caller.grants if g.dataset_uuid == dataset_id), None)
        if grant is None:
            raise ForbiddenError("dataset is not granted to this caller")
        row = await self._version_row(grant)
        if row is None or row["org_id"] != caller.org_id:
            raise ForbiddenError("granted dataset version is not available")
        prefix = grant_prefix(grant)
        if row["storage_prefix"] != prefix or not any(
            prefix.startswith(p) for p in caller.read_prefixes
        ):
            raise ForbiddenError("dataset storage is outside the caller's read prefixes")
        binding = manifest_binding(
            f"{grant.dataset_uuid}@{grant.dataset_version}",
            prefix,
            row["manifest"],
            list(caller.read_prefixes),
            self.s3_options,
            row.get("block_range"),
        )
        self._remember(grant, row)
        return binding
