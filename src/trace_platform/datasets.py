"""Dataset registry: upload Parquet files under a version-addressed prefix with a manifest,
and resolve a task's declared inputs to pinned grants at claim time."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from trace_platform.db.sql import q
from trace_platform.domain.capability import DatasetGrant, StorageRef
from trace_platform.errors import ValidationError
from trace_platform.ports import ObjectStore

_NS = uuid.UUID("4c0f3a9e-1b7d-4e51-9a2c-8d6e5f4b3a21")
MAX_INPUTS = 8


@dataclass(frozen=True)
class RegisteredDataset:
    dataset_uuid: uuid.UUID
    dataset_version: str
    created: bool
    files: int


def dataset_uuid_for(org_id: uuid.UUID, name: str) -> uuid.UUID:
    return uuid.uuid5(_NS, f"{org_id}:{name}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def register_dataset(
    pool: asyncpg.Pool, store: ObjectStore, name: str, paths: list[Path], org_id: uuid.UUID
) -> RegisteredDataset:
    """Same content → same version (the version is a hash of names and file hashes)."""
    if not paths:
        raise ValidationError("give at least one Parquet file")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValidationError("file names must be unique within a version")
    entries = []
    for p in sorted(paths, key=lambda p: p.name):
        if not p.is_file() or p.read_bytes()[:4] != b"PAR1":
            raise ValidationError(f"{p.name} is not a Parquet file")
        entries.append({"name": p.name, "size": p.stat().st_size, "sha256": _sha256(p), "path": p})
    version = hashlib.sha256(
        "\n".join(f"{e['name']}:{e['sha256']}" for e in entries).encode()
    ).hexdigest()[:20]
    ds_uuid = dataset_uuid_for(org_id, name)
    prefix = store.uri_for(f"datasets/{ds_uuid}/{version}/x")[: -len("x")]
    files = []
    for e in entries:
        uri = prefix + str(e["name"])
        if not await store.exists(uri):
            await store.put_bytes(uri, Path(str(e["path"])).read_bytes())
        files.append({"name": e["name"], "uri": uri, "size": e["size"], "sha256": e["sha256"]})
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(q("datasets", "upsert_dataset"), ds_uuid, org_id, name)
            created = await conn.fetchval(
                q("datasets", "insert_version"), ds_uuid, version, prefix, {"files": files}
            )
    except asyncpg.CheckViolationError:
        raise ValidationError("dataset name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}") from None
    return RegisteredDataset(ds_uuid, version, created is not None, len(files))


def storage_ref(prefix: str) -> StorageRef:
    scheme, _, rest = prefix.partition("://")
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        return StorageRef(scheme="s3", bucket=bucket, prefix=key, glob="*.parquet")
    return StorageRef(scheme="file", prefix=rest, glob="*.parquet")


async def resolve_inputs(
    conn: Any, org_id: uuid.UUID, payload: dict[str, Any]
) -> tuple[list[DatasetGrant], list[str]]:
    """The task's `inputs` → pinned grants and read prefixes; unknown → ValidationError."""
    inputs = payload.get("inputs") or []
    if not isinstance(inputs, list) or len(inputs) > MAX_INPUTS:
        raise ValidationError(f"inputs must be a list of at most {MAX_INPUTS} datasets")
    grants: list[DatasetGrant] = []
    prefixes: list[str] = []
    for item in inputs:
        if not isinstance(item, dict):
            raise ValidationError("each input must be an object")
        row = None
        if isinstance(item.get("dataset_uuid"), str) and isinstance(
            item.get("dataset_version"), str
        ):
            try:
                pinned = uuid.UUID(item["dataset_uuid"])
            except ValueError:
                raise ValidationError("input dataset_uuid is not a UUID") from None
            row = await conn.fetchrow(
                q("datasets", "resolve_pinned"), org_id, pinned, item["dataset_version"]
            )
        elif isinstance(item.get("dataset"), str):
            row = await conn.fetchrow(q("datasets", "resolve_latest"), org_id, item["dataset"])
        if row is None:
            raise ValidationError("task input names an unknown dataset (or version)")
        grants.append(
            DatasetGrant(
                dataset_uuid=str(row["dataset_uuid"]),
                dataset_version=row["dataset_version"],
                storage_ref=storage_ref(row["storage_prefix"]),
            )
        )
        prefixes.append(row["storage_prefix"])
    return grants, prefixes


async def list_datasets(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(q("datasets", "list_datasets"))]
