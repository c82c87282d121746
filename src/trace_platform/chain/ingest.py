"""`cryo_ingest`: extract exactly one range `[start, end)` of one cryo dataset (SPEC §11).

Runs in the trusted worker. cryo writes Parquet into a fresh staging directory (`extract`:
the ranges claimed together share cryo calls, each on an endpoint of the RPC pool); a range
past every endpoint's head is retryable, a dataset cryo does not know is fatal; files
and bytes are capped; each file is streamed into the attempt's own prefix (never whole in
memory) with its size, sha256, row count and min/max block, and the hashes of block
`start - 1` and `end - 1` are read before and after the extraction so a range that changed
under the extractor is retried, not committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from trace_platform.chain.commit import MAX_FILES, part_prefix
from trace_platform.chain.extract import Extraction, ExtractionFailed, RangeExtractor
from trace_platform.chain.pool import PoolRefused, PoolUnavailable, rpc_pool
from trace_platform.chain.spec import KNOWN_CRYO_DATASETS
from trace_platform.config import Settings
from trace_platform.domain.lifecycle import FatalTaskError, RetryableTaskError
from trace_platform.operators import OperatorContext, output_operator
from trace_platform.ports import ObjectStore

CHUNK = 1 << 20
_EXTRACTORS: dict[tuple[str, int], RangeExtractor] = {}


def extractor(settings: Settings) -> RangeExtractor:
    """The process's range extractor (one thread pool and coalescing window per worker)."""
    key = (str(settings.home), settings.cryo_concurrency)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = RangeExtractor(settings.home / "staging", settings.cryo_concurrency)
    return _EXTRACTORS[key]


def warm() -> None:
    """Import what extraction needs (cryo, pyarrow: a few hundred ms of CPU), so a worker
    pays it at start rather than in its first range."""
    import cryo  # noqa: F401
    import pyarrow.compute
    import pyarrow.parquet  # noqa: F401


def parse_range_payload(payload: dict[str, Any]) -> dict[str, Any]:
    spec = payload.get("chain")
    if not isinstance(spec, dict):
        raise FatalTaskError("cryo_ingest: payload has no chain range")
    for key, kind in (
        ("dataset_uuid", str),
        ("cryo_dataset", str),
        ("rpc_pool", str),
        ("start", int),
        ("end", int),
        ("chain_id", int),
    ):
        if type(spec.get(key)) is not kind:
            raise FatalTaskError(f"cryo_ingest: chain.{key} is missing or not a {kind.__name__}")
    if not 0 <= spec["start"] < spec["end"]:
        raise FatalTaskError("cryo_ingest: chain range must satisfy 0 <= start < end")
    return spec


def _describe(path: Path) -> dict[str, Any]:
    """Row count and min/max block of one Parquet file (reads only `block_number`; cryo
    writes no min/max statistics for its unsigned columns). `ParquetFile.read`, not
    `read_table`: no dataset machinery per file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    info: dict[str, Any] = {"rows": pf.metadata.num_rows}
    if pf.metadata.num_rows:
        column = pf.read(columns=["block_number"]).column("block_number")
        bounds = pc.min_max(column).as_py()
        info["min_block"], info["max_block"] = int(bounds["min"]), int(bounds["max"])
    return info


def _last_block_hash(path: Path) -> str | None:
    """The hash of the highest block in a blocks file (two columns read)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows == 0:
        return None
    table = pf.read(columns=["block_number", "block_hash"])
    last = pc.max(table.column("block_number"))
    rows = table.filter(pc.equal(table.column("block_number"), last))
    return str(rows.column("block_hash")[0].as_py())


async def _file_chunks(path: Path, digest: Any) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            digest.update(chunk)
            yield chunk


@output_operator("cryo_ingest")
async def cryo_ingest_operator(ctx: OperatorContext) -> dict[str, Any]:
    """The worker's `cryo_ingest`: its Parquet files go into the attempt's prefix, and the
    dispatcher commits the range with the completion that reports them."""
    store, settings = ctx.require()
    return await cryo_ingest(ctx.task_id, ctx.attempt, ctx.payload, store, settings)


async def cryo_ingest(
    task_id: uuid.UUID,
    attempt: int,
    payload: dict[str, Any],
    store: ObjectStore,
    settings: Settings,
) -> dict[str, Any]:
    """Extract, check and upload one range; returns the completion's `outputs`."""
    spec = parse_range_payload(payload)
    start, end, dataset = spec["start"], spec["end"], spec["cryo_dataset"]
    pool = rpc_pool(settings, spec["rpc_pool"])
    if pool is None:
        raise FatalTaskError(
            f"rpc pool {spec['rpc_pool']!r} is not configured on this worker"
            f" (set {Settings.rpc_pool_env(spec['rpc_pool'])})"
        )
    extraction: Extraction | None = None
    deadline = time.monotonic() + settings.cryo_timeout_seconds
    try:
        try:
            extraction = await asyncio.wait_for(
                extractor(settings).extract(pool, spec["chain_id"], dataset, start, end, deadline),
                settings.cryo_timeout_seconds,
            )
        except PoolRefused as exc:
            raise FatalTaskError(f"rpc: {exc}") from None
        except PoolUnavailable as exc:
            raise RetryableTaskError(f"rpc: {exc}") from None
        except TimeoutError:
            raise RetryableTaskError("cryo extraction timed out") from None
        except ExtractionFailed as exc:
            if dataset not in KNOWN_CRYO_DATASETS:
                raise FatalTaskError(f"cryo cannot extract dataset {dataset!r}") from None
            raise RetryableTaskError(f"cryo failed: {exc}") from None
        first, last = extraction.before.get(start - 1), extraction.before.get(end - 1)
        after = (extraction.after.get(start - 1), extraction.after.get(end - 1))
        if last is None:
            raise RetryableTaskError(f"range end {end} is past the node's head")
        if after != (first, last):
            raise RetryableTaskError("the chain changed during the extraction (reorg)")
        parent = first[0] if (start > 0 and first) else None
        last_before, block_time = last
        files = extraction.files
        if not files:
            raise RetryableTaskError("cryo wrote no file for the range")
        if len(files) > MAX_FILES:
            raise FatalTaskError(f"cryo wrote {len(files)} files; at most {MAX_FILES} per range")
        total = sum(f.stat().st_size for f in files)
        if total > settings.cryo_max_bytes:
            raise FatalTaskError(
                f"range output is {total} bytes,"
                f" over TRACE_CRYO_MAX_BYTES ({settings.cryo_max_bytes})"
            )
        if dataset == "blocks":
            in_file = await asyncio.to_thread(_last_block_hash, files[-1])
            if in_file != last_before:
                raise RetryableTaskError("extracted blocks do not end on the node's block hash")
        prefix = part_prefix(store.root, spec["dataset_uuid"], task_id, attempt)
        reported = []
        for i, path in enumerate(files):
            info = await asyncio.to_thread(_describe, path)
            digest = hashlib.sha256()
            uri = f"{prefix}part-{i:03d}.parquet"
            stored = await store.put_stream(uri, _file_chunks(path, digest))
            reported.append({"uri": uri, "size": stored.size, "sha256": digest.hexdigest(), **info})
        return {
            "chain": {
                "start": start,
                "end": end,
                "files": reported,
                "rows": sum(int(f["rows"]) for f in reported),
                "bytes": sum(int(f["size"]) for f in reported),
                "first_parent_hash": parent,
                "last_hash": last_before,
                "last_block_time": block_time,
            }
        }
    finally:
        if extraction is not None:
            extraction.release()
