"""Decoded tables (SPEC §15): ranges of `<contract>_<Event>` derived from the job's committed
raw `logs` partitions, never from the RPC.

A decoded table is a derived output, like a DAG job's: the dispatcher's derived-output
scheduler (`dag/decoded.py`, woken by each range commit), not the chain planner, plans it
with `plan_decoded` — one range per live logs partition from the stream's cursor on, in
order, once that partition is committed (`decoded_ranges`); a factory child's table also
waits until its parent event's table has committed past the range (so every child created
before the range's end is known, including children created inside the range). A range's
payload names the logs files and the children with the block they were created at.

`chain_decode` (in the trusted worker) reads those files, keeps the logs of the event's
topic0 emitted by the contract's addresses (a child from its creation block on), decodes
them with `eth_abi` in block and log order, writes one Parquet file into the attempt's
prefix and reports it (and, for a factory's event, the children it created) with the logs
partition's block hashes. The dispatcher commits it through the same fenced range commit
as an extracted range; a reorg replaces it like any range of the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import Sequence
from typing import Any

from trace_platform.chain.abi import Decoder, event_of_abi
from trace_platform.chain.commit import MAX_CHILDREN, part_prefix
from trace_platform.db.sql import q
from trace_platform.domain.lifecycle import FatalTaskError, RetryableTaskError
from trace_platform.operators import OperatorContext, output_operator
from trace_platform.ports import ObjectStore

_READ_COLUMNS = [
    "block_number",
    "block_hash",
    "transaction_index",
    "log_index",
    "transaction_hash",
    "address",
    "topic0",
    "topic1",
    "topic2",
    "topic3",
    "data",
]


def decoded_ranges(
    cursor: int, parts: Sequence[Any], parent_tip: int | None
) -> list[tuple[int, int, Any]]:
    """The ranges a decoded stream at `cursor` may take next, each with the logs partition
    it reads (`parts`: live logs partitions ending after the cursor, in order): one per
    partition, contiguous from the cursor (a range starting inside a partition, after a
    rewind, ends with it); stops at a gap in the committed logs (wait until it is
    committed) and, for a factory child's table, at a partition ending past its parent
    table's committed tip `parent_tip` (children created there are not known yet)."""
    chosen: list[tuple[int, int, Any]] = []
    at = cursor
    for p in parts:
        if p["range_start"] > at:
            break  # a gap in the raw logs: wait until it is committed
        if parent_tip is not None and p["range_end"] > parent_tip:
            break  # the parent's table has not committed this far: children unknown
        chosen.append((at, p["range_end"], p))
        at = p["range_end"]
    return chosen


async def plan_decoded(conn: Any, row: Any, room: int) -> list[tuple[int, int, dict[str, Any]]]:
    """The next ranges of a decoded stream (at most `room`) with their payloads; ValueError
    when the stream cannot go on (its reason stops it)."""
    cfg = row["decode"]
    job_id = row["job_id"]
    source = await conn.fetchrow(q("chain", "stream_dataset"), job_id, cfg["source"])
    if source is None:
        return []
    parts = await conn.fetch(
        q("chain", "live_logs_partitions"), source["dataset_uuid"], row["cursor"], room
    )
    parent_tip: int | None = None
    factory = cfg.get("factory")
    if factory is not None:
        from_block = int(row["mode"].get("from_block", 0))
        parent_tip = await conn.fetchval(
            q("chain", "contiguous_tip"), job_id, factory["table"], from_block
        )
    chosen = decoded_ranges(row["cursor"], parts, parent_tip)
    if not chosen:
        return []
    children: list[Any] = []
    if factory is not None:
        children = list(
            await conn.fetch(q("chain", "live_children"), job_id, cfg["contract"], chosen[-1][1])
        )
        if len(children) > MAX_CHILDREN:
            raise ValueError(f"contract {cfg['contract']} has over {MAX_CHILDREN} children")
    out = []
    for start, end, p in chosen:
        payload = {
            "operator": "chain_decode",
            "chain": {
                "job_id": str(job_id),
                "stream": row["stream"],
                "dataset_uuid": str(row["dataset_uuid"]),
                "cryo_dataset": row["cryo_dataset"],
                "chain_id": row["chain_id"],
                "start": start,
                "end": end,
                "generation": row["generation"],
                "decode": cfg,
                "logs": [f["uri"] for f in p["files"]],
                "children": [
                    [c["address"], int(c["block_number"])]
                    for c in children
                    if c["block_number"] < end
                ],
                "first_parent_hash": p["first_parent_hash"] if start == p["range_start"] else None,
                "last_hash": p["last_hash"],
            },
        }
        out.append((start, end, payload))
    return out


def _select(table: Any, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The logs of the range that are this event's, emitted by one of its contracts, in
    block and log order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cfg = spec["decode"]
    start, end = spec["start"], spec["end"]
    floor = int(cfg.get("start_block") or 0)
    mask = pc.and_(
        pc.greater_equal(
            table["block_number"], pa.scalar(max(start, floor), table["block_number"].type)
        ),
        pc.less(table["block_number"], pa.scalar(end, table["block_number"].type)),
    )
    mask = pc.and_(mask, pc.equal(pc.utf8_lower(table["topic0"]), cfg["topic0"]))
    table = table.filter(mask)
    lowered = pc.utf8_lower(table["address"])
    table = table.set_column(table.schema.get_field_index("address"), "address", lowered)
    if cfg.get("addresses") is not None:
        table = table.filter(pc.is_in(table["address"], pa.array(cfg["addresses"])))
        created: dict[str, int] = {}
    else:
        created = {str(a): int(b) for a, b in spec.get("children") or []}
        table = table.filter(pc.is_in(table["address"], pa.array(list(created), pa.string())))
    table = table.sort_by([("block_number", "ascending"), ("log_index", "ascending")])
    rows: list[dict[str, Any]] = table.to_pylist()
    if created:
        rows = [r for r in rows if r["block_number"] >= created[r["address"]]]
    return rows


def decode_range(spec: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, Any], Any]:
    """(Parquet bytes, facts, children by contract) of one decoded range. The facts are the
    file's (rows, min/max block) and the range's logs of the event its ABI could not decode
    (`undecodable`, with the first one's ids in `first_undecodable`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for blob in blobs:
        table = pq.read_table(pa.BufferReader(blob))
        for name in _READ_COLUMNS:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        tables.append(table.select(_READ_COLUMNS))
    rows: list[dict[str, Any]] = []
    for table in tables:
        rows += _select(table, spec)
    rows.sort(key=lambda r: (r["block_number"], r["log_index"]))
    cfg = spec["decode"]
    decoder = Decoder(event_of_abi(cfg["event"]))
    for r in rows:
        decoder.add(r)
    out = decoder.table()
    children: dict[str, list[list[Any]]] = {}
    for feed in cfg.get("feeds") or []:
        values = out.column(feed["parameter"]).to_pylist()
        blocks = out.column("block_number").to_pylist()
        logs = out.column("log_index").to_pylist()
        children[feed["contract"]] = [
            [v, b, i] for v, b, i in zip(values, blocks, logs, strict=True) if v
        ]
    sink = io.BytesIO()
    pq.write_table(out, sink, compression="zstd")
    facts: dict[str, Any] = {"rows": out.num_rows, "undecodable": decoder.undecodable}
    if decoder.first_undecodable is not None:
        facts["first_undecodable"] = decoder.first_undecodable
    if out.num_rows:
        facts["min_block"] = int(min(out.column("block_number").to_pylist()))
        facts["max_block"] = int(max(out.column("block_number").to_pylist()))
    return sink.getvalue(), facts, children


@output_operator("chain_decode")
async def chain_decode_operator(ctx: OperatorContext) -> dict[str, Any]:
    store, _settings = ctx.require()
    return await chain_decode(ctx.task_id, ctx.attempt, ctx.payload, store)


async def chain_decode(
    task_id: uuid.UUID, attempt: int, payload: dict[str, Any], store: ObjectStore
) -> dict[str, Any]:
    spec = payload.get("chain")
    if not isinstance(spec, dict) or not isinstance(spec.get("decode"), dict):
        raise FatalTaskError("chain_decode: payload has no decoded range")
    root = store.root.rstrip("/") + "/"
    blobs = []
    for uri in spec.get("logs") or []:
        if not isinstance(uri, str) or not uri.startswith(root) or ".." in uri:
            raise FatalTaskError("chain_decode: a logs file lies outside the object store")
        try:
            blobs.append(await store.get_bytes(uri))
        except FileNotFoundError:
            raise RetryableTaskError("a logs file of the range is gone (compacted?)") from None
    try:
        data, facts, children = await asyncio.to_thread(decode_range, spec, blobs)
    except (KeyError, ValueError) as exc:
        raise FatalTaskError(f"chain_decode: {type(exc).__name__}: {exc}"[:300]) from None
    undecodable = facts.pop("undecodable")
    first_undecodable = facts.pop("first_undecodable", None)
    prefix = part_prefix(store.root, spec["dataset_uuid"], task_id, attempt)
    uri = f"{prefix}part-000.parquet"
    stored = await store.put_bytes(uri, data)
    report = {"uri": uri, "size": stored.size, "sha256": hashlib.sha256(data).hexdigest(), **facts}
    return {
        "chain": {
            "start": spec["start"],
            "end": spec["end"],
            "files": [report],
            "rows": facts["rows"],
            "bytes": stored.size,
            "first_parent_hash": spec.get("first_parent_hash"),
            "last_hash": spec.get("last_hash"),
            "children": children,
            # counted, committed with the range and summed in `trace chain status`
            "undecodable": undecodable,
            "first_undecodable": first_undecodable,
        }
    }
