"""Dataset registry: upload Parquet files under a version-addressed prefix with a manifest,
and resolve a task's declared inputs to pinned grants at claim time."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from trace_platform.db.sql import q
from trace_platform.domain.capability import DatasetGrant, StorageRef, parse_where
from trace_platform.domain.errors import ValidationError
from trace_platform.ports import ObjectStore

_NS = uuid.UUID("4c0f3a9e-1b7d-4e51-9a2c-8d6e5f4b3a21")
MAX_INPUTS = 8
MAX_GRANTS = 32  # relations one task may be granted (a chain input counts each of its own)


@dataclass(frozen=True)
class RegisteredDataset:
    dataset_uuid: uuid.UUID
    dataset_version: str
    created: bool
    files: int


def dataset_uuid_for(org_id: uuid.UUID, name: str) -> uuid.UUID:
    return uuid.uuid5(_NS, f"{org_id}:{name}")


def _magic(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(4)


async def _chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, size):
            yield chunk


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
        if not p.is_file() or _magic(p) != b"PAR1":
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
        if not await store.exists(uri):  # streamed: a file is never held whole in memory
            await store.put_stream(uri, _chunks(Path(str(e["path"]))))
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
    expanded: list[Any] = []
    for item in inputs:
        if isinstance(item, dict) and "chain" in item:
            expanded.extend(await chain_inputs(conn, org_id, item))
        else:
            expanded.append(item)
    if len(expanded) > MAX_GRANTS:
        raise ValidationError(f"inputs grant more than {MAX_GRANTS} relations")
    for item in expanded:
        if not isinstance(item, dict):
            raise ValidationError("each input must be an object")
        row = None
        try:
            where = parse_where(item.get("where"))
        except ValueError as exc:
            raise ValidationError(f"input where: {exc}") from None
        if isinstance(item.get("dataset"), str):
            snap = await snapshot_grant(conn, org_id, item)
            if snap is not None:
                snap = snap.model_copy(update={"where": where}) if where else snap
                grants.append(snap)
                prefixes.append(snapshot_prefix(snap))
                continue
        if "range" in item:
            raise ValidationError("a range input needs a dataset synced from a chain")
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
                name=row["name"],
                where=where,
            )
        )
        prefixes.append(row["storage_prefix"])
    return grants, prefixes


async def chain_inputs(conn: Any, org_id: uuid.UUID, item: dict[str, Any]) -> list[dict[str, Any]]:
    """`{chain: JOB[, range]}` → one `{dataset[, range]}` input per relation of the job (its
    streams and decoded tables), each then pinned at its own current snapshot."""
    job = item.get("chain")
    if not isinstance(job, str) or set(item) - {"chain", "range"}:
        raise ValidationError("a chain input is {chain: JOB} with an optional range")
    names = [r["name"] for r in await conn.fetch(q("chain", "job_relations"), org_id, job)]
    if not names:
        raise ValidationError("task input names an unknown chain job")
    extra = {"range": item["range"]} if "range" in item else {}
    return [{"dataset": name, **extra} for name in names]


SNAPSHOT_PREFIX = "snap-"


def snapshot_version(seq: int, block_range: tuple[int, int] | None = None) -> str:
    """The version string of a snapshot grant: `snap-<seq>` or `snap-<seq>:<start>-<end>`.
    It is signed into the token, so the query service trusts what it says."""
    if block_range is None:
        return f"{SNAPSHOT_PREFIX}{seq}"
    return f"{SNAPSHOT_PREFIX}{seq}:{block_range[0]}-{block_range[1]}"


def parse_snapshot_version(version: str) -> tuple[int, tuple[int, int] | None] | None:
    """(seq, range or None) for a snapshot version; None for a content-addressed version."""
    if not version.startswith(SNAPSHOT_PREFIX):
        return None
    seq_text, _, range_text = version[len(SNAPSHOT_PREFIX) :].partition(":")
    try:
        seq = int(seq_text)
        if not range_text:
            return seq, None
        lo, _, hi = range_text.partition("-")
        return seq, (int(lo), int(hi))
    except ValueError:
        return None


def snapshot_prefix(grant: DatasetGrant) -> str:
    ref = grant.storage_ref
    return f"s3://{ref.bucket}/{ref.prefix}" if ref.scheme == "s3" else f"file://{ref.prefix}"


async def snapshot_grant(conn: Any, org_id: uuid.UUID, item: dict[str, Any]) -> DatasetGrant | None:
    """A partitioned (chain) dataset pinned at its current commit: every range committed so
    far, or only those inside `range` [start, end). The grant names a snapshot and the
    dataset's prefix, never a list of files, so the token's size does not grow with ranges."""
    row = await conn.fetchrow(q("chain", "partitioned_dataset"), org_id, item["dataset"])
    if row is None:
        return None
    block_range = None
    if "range" in item:
        r = item["range"]
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(type(v) is int and v >= 0 for v in r)
            or r[0] >= r[1]
        ):
            raise ValidationError("input range must be [start, end) with 0 <= start < end")
        block_range = (r[0], r[1])
    return DatasetGrant(
        dataset_uuid=str(row["dataset_uuid"]),
        dataset_version=snapshot_version(row["commit_seq"], block_range),
        storage_ref=storage_ref(row["storage_prefix"]),
        name=row["name"],
    )


async def snapshot_manifest(conn: Any, grant: DatasetGrant) -> dict[str, Any] | None:
    """What a snapshot grant reads: `{org_id, storage_prefix, manifest, block_range}` with the
    files of every partition live at that commit (and overlapping the range), or None."""
    parsed = parse_snapshot_version(grant.dataset_version)
    if parsed is None:
        return None
    seq, block_range = parsed
    ds = await conn.fetchrow(q("chain", "dataset_by_uuid"), uuid.UUID(grant.dataset_uuid))
    if ds is None or ds["kind"] != "partitions":
        return None
    lo, hi = block_range or (0, 2**62)
    parts = await conn.fetch(q("chain", "snapshot_files"), ds["dataset_uuid"], seq, lo, hi)
    files = [f for p in parts for f in p["files"]]
    return {
        "org_id": ds["org_id"],
        "storage_prefix": ds["storage_prefix"],
        "manifest": {"files": files},
        "block_range": block_range,
        "complete": block_range is None or covers(parts, lo, hi),
    }


def covers(parts: list[Any], lo: int, hi: int) -> bool:
    """True when the partitions (sorted by start) hold every block of [lo, hi)."""
    at = lo
    for p in parts:
        if p["range_start"] > at:
            return False
        at = max(at, p["range_end"])
    return at >= hi
