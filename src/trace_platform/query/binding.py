"""The one query binding: (who asks, which relations a query reads) -> exactly the files an
executor may read.

Every query takes this path — a task's (`POST /v1/task/query`, grants from its capability
token), a user's (`POST /v1/query` and the console: every relation of the user's org) and
an operator's (`trace dataset query`, the same as a user's). The catalog (SPEC §15) maps the
names a query uses to granted relations (`relation_aliases`); a name that maps to nothing is
refused before anything runs. Then, per relation: its version (or snapshot) exists and
belongs to the caller's org; its storage lies inside its own prefix and the caller's read
prefixes; every manifest entry lies inside both; local files have their recorded sizes.
Anything else is ForbiddenError and nothing is read.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import asyncpg

from trace_platform.datasets import parse_snapshot_version, resolve_inputs, snapshot_manifest
from trace_platform.db.sql import q
from trace_platform.domain.capability import (
    CapabilityClaims,
    DatasetGrant,
    Where,
    is_within_prefixes,
)
from trace_platform.domain.catalog import (
    DATASET_ALIAS,
    RELATION_INCOMPLETE,
    default_job,
    job_of,
    person_aliases,
    relation_aliases,
)
from trace_platform.domain.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ValidationError,
)
from trace_platform.domain.sql_gate import GatedQuery, check_relations, shown
from trace_platform.query.executor import Binding, Relation

VERSION_CACHE_SECONDS = 60.0
RESOLVE_CACHE_SECONDS = 1.0
Source = Literal["task", "api", "cli"]


class RelationIncomplete(ConflictError):
    """A range-bounded relation has not committed its whole range yet (retry later)."""

    code = RELATION_INCOMPLETE


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
    # A person: every relation of the org, resolved by name as a query reads it.
    org_wide: bool = False
    primary: str | None = None  # a person's named dataset, also read as `dataset`
    job: str | None = None  # a person's default job for short names
    block_range: tuple[int, int] | None = None  # bounds every chain relation (a person's)

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
    names: tuple[str, ...] = (DATASET_ALIAS,),
    where: Where | None = None,
) -> Relation:
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
        path = uri[len("file://") :]
        try:
            if os.stat(path).st_size != f.get("size"):
                raise ForbiddenError("dataset file does not match its manifest")
        except FileNotFoundError:
            raise ForbiddenError("dataset file is missing") from None
        paths.append(path)
    if not paths:
        raise ForbiddenError("dataset version has no files")
    if prefix.startswith("s3://") and s3_options is None:
        raise ValidationError("this query service has no S3 access configured")
    return Relation(names, key, tuple(paths), block_range, where)


class Binder:
    """Binds callers to files. Dataset versions and snapshots are immutable, so their rows
    are remembered for a short while (only rows that passed every check); every grant, org
    and prefix check still runs on each query."""

    def __init__(self, state: asyncpg.Pool, s3_options: dict[str, str] | None = None) -> None:
        self.state = state
        self.s3_options = s3_options
        self.versions: OrderedDict[tuple[str, str], tuple[float, Mapping[str, Any]]] = OrderedDict()
        self.resolved: dict[tuple[uuid.UUID, str], tuple[float, Any, Any]] = {}
        self.catalogs: dict[uuid.UUID, tuple[float, list[Any]]] = {}
        self.relations: dict[tuple[Any, ...], tuple[Relation, Mapping[str, Any]]] = {}

    async def user_caller(
        self,
        org_id: uuid.UUID,
        dataset: str | None,
        user_id: uuid.UUID | None,
        source: Source,
        block_range: tuple[int, int] | None = None,
        job: str | None = None,
    ) -> QueryCaller:
        """A person's query in their org: every relation of the org by the catalog's names,
        `dataset` for the one named (404 when the org has no such dataset). A `block_range`
        bounds every chain relation the query reads."""
        if dataset is not None:
            await self.resolve(org_id, dataset, block_range, chain=None)
        if job is not None:
            relations = await self.org_relations(org_id)
            if not any(job_of(r["name"].lower()) == job.lower() for r in relations):
                raise NotFoundError(f"unknown chain job {shown(job)!r} in this org")
        return QueryCaller(
            org_id,
            (),
            (),
            source,
            user_id=user_id,
            org_wide=True,
            primary=dataset,
            job=job,
            block_range=block_range,
        )

    async def org_relations(self, org_id: uuid.UUID, fresh: bool = False) -> list[Any]:
        """(name, kind, dataset_uuid) of every readable dataset of the org, as of at most
        RESOLVE_CACHE_SECONDS ago (`fresh`: now)."""
        hit = self.catalogs.get(org_id)
        if not fresh and hit is not None and time.monotonic() - hit[0] < RESOLVE_CACHE_SECONDS:
            return hit[1]
        rows = list(await self.state.fetch(q("datasets", "org_relations"), org_id))
        self.catalogs[org_id] = (time.monotonic(), rows)
        while len(self.catalogs) > 1024:
            self.catalogs.pop(next(iter(self.catalogs)))
        return rows

    async def resolve(
        self,
        org_id: uuid.UUID,
        dataset: str,
        block_range: tuple[int, int] | None,
        chain: bool | None,
    ) -> tuple[DatasetGrant, str]:
        """NAME in the org → its grant (the newest version, or the current snapshot as of at
        most RESOLVE_CACHE_SECONDS ago; a chain relation within `block_range`)."""
        item: dict[str, Any] = {"dataset": dataset}
        if block_range is not None and chain is not False:
            item["range"] = list(block_range)
        key = (org_id, f"{dataset}\0{item.get('range')}")
        hit = self.resolved.get(key)
        if hit is not None and time.monotonic() - hit[0] < RESOLVE_CACHE_SECONDS:
            return hit[1], hit[2]
        async with self.state.acquire() as conn:
            try:
                grants, prefixes = await resolve_inputs(conn, org_id, {"inputs": [item]})
            except ValidationError as exc:
                if "unknown dataset" in exc.detail:
                    raise NotFoundError(f"unknown dataset {shown(dataset)!r} in this org") from None
                if "range input needs" in exc.detail and chain is None:
                    return await self.resolve(org_id, dataset, block_range, chain=False)
                raise
        self.resolved[key] = (time.monotonic(), grants[0], prefixes[0])
        while len(self.resolved) > 4096:
            self.resolved.pop(next(iter(self.resolved)))
        return grants[0], prefixes[0]

    async def version_row(self, grant: DatasetGrant) -> Mapping[str, Any] | None:
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
        if row.get("complete") is False:
            return  # its range is still being committed: look again next time
        key = (grant.dataset_uuid, grant.dataset_version)
        cached = self.versions.get(key)
        if cached is not None and cached[1] is row:
            return
        self.versions[key] = (time.monotonic(), row)
        while len(self.versions) > 1024:
            self.versions.popitem(last=False)

    async def _task_catalog(
        self, caller: QueryCaller, dataset_id: str | None
    ) -> tuple[dict[str, DatasetGrant], DatasetGrant | None]:
        """A task's names → its grants, and the grant read as `dataset`."""
        named = {g.name: g for g in caller.grants if g.name}
        chain = [g.name for g in caller.grants if g.name and g.dataset_version.startswith("snap-")]
        aliases = relation_aliases(named, default_job(named, chain))
        catalog = {alias: named[name] for alias, name in aliases.items()}
        for g in caller.grants:
            # A DAG job's SQL names its job inputs by dataset id (the generation it reads).
            catalog.setdefault(g.dataset_uuid.lower(), g)
        primary = None
        if dataset_id is not None:
            primary = next((g for g in caller.grants if g.dataset_uuid == dataset_id), None)
            if primary is None:
                raise ForbiddenError("dataset is not granted to this caller")
        elif len(caller.grants) == 1:
            primary = caller.grants[0]
        if primary is not None:
            catalog[DATASET_ALIAS] = primary
        return catalog, primary

    @staticmethod
    def _aliases(caller: QueryCaller, rows: list[Any]) -> tuple[dict[str, str], dict[str, bool]]:
        return person_aliases(rows, caller.job)

    async def _org_catalog(
        self, caller: QueryCaller, gated: GatedQuery
    ) -> tuple[dict[str, DatasetGrant], DatasetGrant | None, list[str]]:
        """A person's names → grants, resolved for the relations this query reads only."""
        rows = await self.org_relations(caller.org_id)
        aliases, kinds = self._aliases(caller, rows)
        if any(n not in aliases and n not in gated.ctes for n in gated.relations):
            # A relation registered a moment ago is not refused for a stale catalog.
            rows = await self.org_relations(caller.org_id, True)
            aliases, kinds = self._aliases(caller, rows)
        ids = {r["name"]: str(r["dataset_uuid"]) for r in rows}
        wanted = {name: aliases[name] for name in gated.relations if name in aliases}
        primary: DatasetGrant | None = None
        if caller.primary is not None and DATASET_ALIAS not in gated.ctes:
            wanted.setdefault(DATASET_ALIAS, "")
        check_relations(gated, set(wanted), kinds)
        catalog: dict[str, DatasetGrant] = {}
        prefixes: list[str] = []
        for alias, name in wanted.items():
            if alias == DATASET_ALIAS and caller.primary is not None:
                grant, prefix = await self.resolve(
                    caller.org_id, caller.primary, caller.block_range, chain=None
                )
                primary = grant
            else:
                grant, prefix = await self.resolve(
                    caller.org_id, name, caller.block_range, chain=kinds.get(name)
                )
                if name in ids and grant.dataset_uuid != ids[name]:
                    # A DAG's cut-over moved the name to another dataset between the two
                    # lookups: every relation of one query reads as of one catalog (no mix
                    # of generations).
                    grant, prefix = await self.resolve(
                        caller.org_id, ids[name], caller.block_range, chain=kinds.get(name)
                    )
            catalog[alias] = grant
            prefixes.append(prefix)
        return catalog, primary, prefixes

    async def bind(
        self, caller: QueryCaller, gated: GatedQuery, dataset_id: str | None = None
    ) -> tuple[Binding, list[str]]:
        """Exactly the files of the granted relations the query reads (and their dataset
        ids, the one read as `dataset` first), or SqlRejected / ForbiddenError."""
        read_prefixes = list(caller.read_prefixes)
        if caller.org_wide:
            catalog, primary, prefixes = await self._org_catalog(caller, gated)
            read_prefixes += prefixes
        else:
            catalog, primary = await self._task_catalog(caller, dataset_id)
            held = [g.name for g in caller.grants if g.name]
            check_relations(gated, set(catalog), held)
        used: dict[str, list[str]] = {}
        grants: dict[str, DatasetGrant] = {}
        for name in gated.relations:
            grant = catalog[name]
            used.setdefault(grant.dataset_uuid, []).append(name)
            grants[grant.dataset_uuid] = grant
        relations = []
        for ident, names in used.items():
            grant = grants[ident]
            relations.append(
                await self._bind_grant(caller, grant, read_prefixes, tuple(names), grant is primary)
            )
        order = sorted(used, key=lambda d: primary is None or d != primary.dataset_uuid)
        s3 = self.s3_options if any(p.startswith("s3://") for p in read_prefixes) else None
        # Every relation was checked to be of the caller's org (`_bind_grant`): the binding
        # carries it, so an executor is never rebound across orgs.
        binding = Binding(
            tuple(relations),
            tuple(sorted(s3.items())) if s3 is not None else None,
            org=str(caller.org_id),
        )
        return binding, order

    async def _bind_grant(
        self,
        caller: QueryCaller,
        grant: DatasetGrant,
        read_prefixes: list[str],
        names: tuple[str, ...],
        is_primary: bool,
    ) -> Relation:
        row = await self.version_row(grant)
        if row is None or row["org_id"] != caller.org_id:
            raise ForbiddenError("granted dataset version is not available")
        prefix = grant_prefix(grant)
        if row["storage_prefix"] != prefix or not any(prefix.startswith(p) for p in read_prefixes):
            raise ForbiddenError("dataset storage is outside the caller's read prefixes")
        if row.get("complete") is False and not is_primary:
            lo, hi = row["block_range"]
            raise RelationIncomplete(
                f"relation {shown(grant.name or names[0])!r} has not committed blocks"
                f" [{lo}, {hi}) yet; retry"
            )
        key = f"{grant.dataset_uuid}@{grant.dataset_version}"
        # A relation that passed every check is remembered with its version row (versions
        # and snapshots are immutable): a snapshot of many ranges is not re-checked file by
        # file on every query. The grant, org and prefix checks above still run each time.
        memo = (key, prefix, tuple(read_prefixes), names, grant.where)
        hit = self.relations.get(memo)
        if hit is not None and hit[1] is row:
            return hit[0]
        relation = manifest_binding(
            key,
            prefix,
            row["manifest"],
            read_prefixes,
            self.s3_options,
            row.get("block_range"),
            names,
            grant.where,
        )
        self._remember(grant, row)
        if self.versions.get((grant.dataset_uuid, grant.dataset_version), (0, None))[1] is row:
            self.relations[memo] = (relation, row)
            while len(self.relations) > 1024:
                self.relations.pop(next(iter(self.relations)))
        return relation
