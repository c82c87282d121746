"""`dag_sql`: one range of a per-range SQL job (SPEC §19), in the trusted worker.

The task's capability token grants each range input bounded to the range and each whole
input at its pinned snapshot, nothing else. The job's SQL (its relation names written out
in full at apply, so it reads the same relations whatever else is granted) runs in the
query service's sandboxed executor — same gate, same audit — and comes back as one Parquet
file, written there from DuckDB's Arrow batches with its types exact (not an Arrow stream
re-encoded here: a third of the bytes to move and one encode instead of two). Trusted code
reads its footer (rows, block bounds; an answer that is no Parquet file fails the attempt),
checks `unique_key` within the partition, stores the file in the attempt's own prefix and
reports it; the dispatcher commits it through the fenced range commit (`dag/commit.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

import aiohttp

from trace_platform.client import Lease, ServiceUnavailable, TaskClient, new_session
from trace_platform.config import Settings
from trace_platform.domain.catalog import RELATION_INCOMPLETE
from trace_platform.domain.errors import OverloadedError, TraceError
from trace_platform.domain.lifecycle import FatalTaskError, RetryableTaskError
from trace_platform.domain.query_formats import AnswerCut
from trace_platform.operators import OperatorContext, output_operator
from trace_platform.ports import ObjectStore

PAYLOAD_KEY = "dag"


def output_prefix(
    store_root: str, dataset_uuid: str, task_id: uuid.UUID | str, attempt: int
) -> str:
    """Where one attempt of one range of a job writes: private to the attempt (the same
    layout as a chain range, under the output dataset's prefix)."""
    return f"{store_root.rstrip('/')}/datasets/{dataset_uuid}/parts/{task_id}/{attempt}/"


def duplicate_key(table: Any, key: list[str]) -> tuple[int, int] | None:
    """The row indexes of the first two rows that share `key` (nulls equal), or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = pa.array(range(table.num_rows), pa.int64())
    indexed = table.select(key).append_column("__row", rows)
    groups = indexed.group_by(key, use_threads=False).aggregate(
        [("__row", "count"), ("__row", "min")]
    )
    repeated = groups.filter(pc.greater(groups["__row_count"], 1))
    if repeated.num_rows == 0:
        return None
    first = int(pc.min(repeated["__row_min"]).as_py())
    values = indexed.slice(first, 1).to_pylist()[0]
    mask = pc.greater(indexed["__row"], first)
    for name in key:
        column, value = indexed[name], values[name]
        same = pc.is_null(column) if value is None else pc.fill_null(pc.equal(column, value), False)
        mask = pc.and_(mask, same)
    second = pc.min(indexed.filter(mask)["__row"]).as_py()
    return first, int(second)


def parquet_facts(data: bytes, unique_key: list[str] | None) -> dict[str, Any]:
    """The facts of the job's result for one range, a Parquet file: rows, and min/max block
    when it has a block_number column (from its footer's statistics, else its values).
    FatalTaskError naming a missing or repeated key; RetryableTaskError when the answer is
    not a Parquet file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError):
        raise RetryableTaskError("the query service's answer is not a Parquet file") from None
    if unique_key:
        missing = [c for c in unique_key if c not in names]
        if missing:
            raise FatalTaskError(f"the job's result has no unique_key column(s) {missing}")
        dup = duplicate_key(parquet.read(columns=unique_key), unique_key)
        if dup is not None:
            raise FatalTaskError(
                f"unique_key {unique_key} is not unique in this range: rows {dup[0]} and"
                f" {dup[1]} of the result share it"
            )
    meta = parquet.metadata
    facts: dict[str, Any] = {"rows": meta.num_rows}
    if meta.num_rows and "block_number" in names:
        # From the values, not the footer's statistics: the file was written in the
        # sandboxed executor, and the range commit's bounds check must not take its word.
        found = pc.min_max(parquet.read(columns=["block_number"])["block_number"]).as_py()
        if found["min"] is not None:
            facts["min_block"], facts["max_block"] = int(found["min"]), int(found["max"])
    return facts


def attempt_error(exc: TraceError) -> Exception:
    """What the query service's refusal means for this attempt."""
    if isinstance(exc, OverloadedError | ServiceUnavailable) or exc.status >= 500:
        return RetryableTaskError(f"query service answered {exc.status}")
    if exc.code == RELATION_INCOMPLETE:
        # An input has not committed the whole range yet: the next attempt pins a newer
        # snapshot.
        return RetryableTaskError(exc.detail[:500])
    return FatalTaskError(f"the job's SQL failed ({exc.status}): {exc.detail}"[:500])


async def run_range(
    settings: Settings, store: ObjectStore, lease: Lease, spec: dict[str, Any]
) -> dict[str, Any]:
    session = new_session(settings.query_timeout_seconds * 2 + 10)
    client = TaskClient(
        settings.resolved_dispatcher_url, query_url=settings.resolved_query_url, session=session
    )
    started = time.time()
    try:
        async with session:
            data, truncated = await client.query_parquet(lease, spec["sql"])
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryableTaskError(f"query service: {type(exc).__name__}") from None
    except AnswerCut:
        raise RetryableTaskError(
            "the query service's answer was cut part-way: a failure, or more rows in one"
            " range than TRACE_QUERY_MAX_EXPORT_ROWS allows (use a smaller backfill_rows)"
        ) from None
    except TraceError as exc:
        raise attempt_error(exc) from None
    if truncated:
        raise FatalTaskError(
            "the job's result for one range is larger than one partition may hold; use a"
            " smaller backfill_rows"
        )
    queried = time.time()
    facts = await asyncio.to_thread(parquet_facts, data, spec.get("unique_key"))
    prefix = output_prefix(store.root, spec["dataset_uuid"], lease.task_id, lease.attempt)
    uri = f"{prefix}part-000.parquet"
    stored = await store.put_bytes(uri, data)
    report = {"uri": uri, "size": stored.size, "sha256": hashlib.sha256(data).hexdigest(), **facts}
    return {
        PAYLOAD_KEY: {
            "start": spec["start"],
            "end": spec["end"],
            "files": [report],
            "rows": facts["rows"],
            "bytes": stored.size,
            # Where the attempt's time went (wall clock, seconds since the epoch): the
            # operator began, the query service answered, the partition was stored.
            "timing": {"started": started, "queried": queried, "written": time.time()},
        }
    }


@output_operator("dag_sql")
async def dag_sql_operator(ctx: OperatorContext) -> dict[str, Any]:
    store, settings = ctx.require()
    spec = ctx.payload.get(PAYLOAD_KEY)
    if not isinstance(spec, dict) or not isinstance(spec.get("sql"), str):
        raise FatalTaskError("dag_sql: payload has no job range")
    lease = Lease(ctx.task_id, ctx.attempt, "", "", ctx.capability_token, ctx.payload)
    return await run_range(settings, store, lease, spec)
