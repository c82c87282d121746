"""Range commit (SPEC §11): a range becomes part of its dataset only on the fenced
successful completion of its task, inside that completion's transaction.

The files must lie inside the attempt's own prefix and cover exactly the range; the range
must line up with its committed neighbours (the hash of the block before it equals the
predecessor's last hash, and likewise for the successor) and overlap no live partition.
Otherwise the completion is turned into a retryable failure (a fatal one when the range is
no longer scheduled: replaced, nothing could commit it): a stale or torn attempt's objects
are never referenced.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from trace_platform.db.sql import q
from trace_platform.logs import get_logger
from trace_platform.metrics import CHAIN_RANGES
from trace_platform.ports import CompletionRejected

log = get_logger(__name__)
_EVENT_NS = uuid.UUID("0f5e7a3c-2d1b-4c9e-8a7f-6b5d4c3e2f1a")
MAX_FILES = 64
MAX_CHILDREN = 100_000  # factory children of one contract
_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


class CommitRejected(CompletionRejected):
    """The completion's outputs cannot be committed; the attempt is retried."""


class RangeReplaced(CommitRejected):
    """The task's range is no longer scheduled (a reorg or a re-decode replaced it): no
    attempt of this task can commit any more, so it fails for good instead of retrying."""

    final = True


class RangeCommitHook:
    """The dispatcher's success hook of chain tasks: commit the range in the completion's
    transaction, then wake the planner (a slot is free)."""

    payload_key = "chain"  # the planner's range tasks carry payload.chain

    def __init__(self, store_root: str, on_commit: Callable[[], None] = lambda: None) -> None:
        self.store_root = store_root
        self.on_commit = on_commit

    async def on_success(
        self, conn: Any, task_id: uuid.UUID, attempt: int, outputs: dict[str, Any] | None
    ) -> None:
        try:
            await commit_range(conn, self.store_root, task_id, attempt, outputs)
        except CommitRejected as exc:
            CHAIN_RANGES.labels("rejected").inc()
            log.warning(
                "chain.commit_rejected", task_id=str(task_id), attempt=attempt, reason=str(exc)
            )
            raise

    def committed(self) -> None:
        self.on_commit()


def part_prefix(
    store_root: str, dataset_uuid: uuid.UUID | str, task_id: uuid.UUID | str, attempt: int
) -> str:
    """Where one attempt of one range writes its files: private to the attempt."""
    return f"{store_root.rstrip('/')}/datasets/{dataset_uuid}/parts/{task_id}/{attempt}/"


def dataset_prefix(store_root: str, dataset_uuid: uuid.UUID | str) -> str:
    return f"{store_root.rstrip('/')}/datasets/{dataset_uuid}/"


def report_block_time(outputs: Any) -> float | None:
    value = outputs["chain"].get("last_block_time")
    return float(value) if type(value) in (int, float) else None


def committed_event_id(dataset_uuid: uuid.UUID, start: int, end: int, seq: int) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NS, f"{dataset_uuid}:{start}:{end}:{seq}")


def checked_file(f: Any, prefix: str) -> dict[str, Any]:
    """One reported file, checked: inside the attempt's `prefix`, with a size, a row count
    and a sha256; its known fields only. CommitRejected otherwise (a range's and a DAG
    job's commits share it)."""
    if not isinstance(f, dict):
        raise CommitRejected("the completion's file list is malformed")
    uri = f.get("uri")
    if not isinstance(uri, str) or not uri.startswith(prefix) or ".." in uri[len(prefix) :]:
        raise CommitRejected("a reported file lies outside the attempt's prefix")
    n, b = f.get("rows"), f.get("size")
    if type(n) is not int or type(b) is not int or n < 0 or b <= 0:
        raise CommitRejected("a reported file has no valid size or row count")
    if not isinstance(f.get("sha256"), str):
        raise CommitRejected("a reported file has no sha256")
    return {k: f[k] for k in ("uri", "size", "sha256", "rows", "min_block", "max_block") if k in f}


def check_files(
    outputs: Any, prefix: str, start: int, end: int, cryo_dataset: str
) -> tuple[list[dict[str, Any]], int, int, str | None, str | None]:
    """Validate reported files; returns (files, rows, bytes, first_parent_hash, last_hash)."""
    report = outputs.get("chain") if isinstance(outputs, dict) else None
    if not isinstance(report, dict):
        raise CommitRejected("the completion reports no chain range")
    if report.get("start") != start or report.get("end") != end:
        raise CommitRejected("the completion reports another range")
    files = report.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise CommitRejected("the completion's file list is malformed")
    rows = size = 0
    clean: list[dict[str, Any]] = []
    for f in files:
        checked = checked_file(f, prefix)
        n, lo, hi = checked["rows"], checked.get("min_block"), checked.get("max_block")
        if n and (type(lo) is not int or type(hi) is not int or lo < start or hi >= end):
            raise CommitRejected("a reported file holds blocks outside the range")
        rows, size = rows + n, size + checked["size"]
        clean.append(checked)
    if not clean:
        raise CommitRejected("the completion reports no file for the range")
    if cryo_dataset == "blocks" and rows != end - start:
        raise CommitRejected(f"blocks range holds {rows} rows, expected {end - start}")
    parent, last = report.get("first_parent_hash"), report.get("last_hash")
    if parent is not None and not isinstance(parent, str):
        raise CommitRejected("first_parent_hash is malformed")
    if not isinstance(last, str):
        raise CommitRejected("last_hash is missing")
    return clean, rows, size, parent, last


async def commit_range(
    conn: Any, store_root: str, task_id: uuid.UUID, attempt: int, outputs: Any
) -> dict[str, Any] | None:
    """Commit the range of a chain task (caller holds the task's row lock inside the
    completion's transaction). Returns the commit, or None for a task with no live range;
    raises CommitRejected."""
    rng = await conn.fetchrow(q("chain", "range_for_task"), task_id)
    if rng is None or rng["status"] != "scheduled":
        raise RangeReplaced("the range of this task is no longer scheduled (replaced)")
    start, end, ds = rng["range_start"], rng["range_end"], rng["dataset_uuid"]
    prefix = part_prefix(store_root, ds, task_id, attempt)
    files, rows, size, parent, last = check_files(outputs, prefix, start, end, rng["cryo_dataset"])
    # The dataset's row lock first: commits of one dataset run one at a time from here, so
    # the neighbours read next include every commit before this one (concurrent completions
    # of adjacent ranges cannot both miss each other). A rejection rolls the bump back.
    seq = await conn.fetchval(q("chain", "bump_commit_seq"), ds)
    for n in await conn.fetch(q("chain", "neighbours"), ds, start, end):
        if n["range_end"] == start:
            if parent is not None and n["last_hash"] is not None and n["last_hash"] != parent:
                raise CommitRejected(
                    f"range does not line up with the committed range before it at block"
                    f" {start - 1} (reorg?)"
                )
        elif n["range_start"] == end:
            if n["first_parent_hash"] is not None and n["first_parent_hash"] != last:
                raise CommitRejected(
                    f"range does not line up with the committed range after it at block"
                    f" {end - 1} (reorg?)"
                )
        else:
            raise CommitRejected("range overlaps a committed partition")
    partition_id = uuid.uuid4()
    await conn.execute(
        q("chain", "insert_partition"),
        partition_id,
        ds,
        start,
        end,
        files,
        rows,
        size,
        parent,
        last,
        seq,
        task_id,
        False,
    )
    if rng["decode"] is not None and rng["decode"].get("feeds"):
        try:
            await record_children(conn, rng, partition_id, outputs["chain"])
        except ValueError as exc:
            raise CommitRejected(str(exc)) from None
    if rng["decode"] is not None:
        await record_undecodable(conn, rng, task_id, outputs["chain"])
    block_time = report_block_time(outputs)
    await conn.execute(q("chain", "mark_committed"), task_id, block_time)
    event = {
        "dataset_uuid": str(ds),
        "job_id": str(rng["job_id"]),
        "stream": rng["stream"],
        "start": start,
        "end": end,
        "commit_seq": seq,
        "partition_id": str(partition_id),
    }
    await conn.execute(
        q("chain", "insert_committed_event"), committed_event_id(ds, start, end, seq), event
    )
    CHAIN_RANGES.labels("committed").inc()
    log.info(
        "chain.range_committed",
        task_id=str(task_id),
        attempt=attempt,
        dataset_uuid=str(ds),
        range_start=start,
        range_end=end,
        commit_seq=seq,
        rows=rows,
    )
    return event


async def record_undecodable(
    conn: Any, rng: Any, task_id: uuid.UUID, report: dict[str, Any]
) -> None:
    """At the commit of a decoded range: the logs of its event (topic0, contract) that its
    ABI could not decode, as one `chain.logs_undecodable` event of the job (status sums
    them over the table's ranges still committed) and one log line; ids only, never the
    log's data."""
    n = report.get("undecodable", 0)
    if type(n) is not int or n < 0:
        raise CommitRejected("the completion's undecodable count is malformed")
    if n == 0:
        return
    first = report.get("first_undecodable")
    first = first if isinstance(first, dict) else {}
    ids = {
        "block_number": first.get("block_number"),
        "log_index": first.get("log_index"),
        "transaction_hash": first.get("transaction_hash"),
    }
    if not all(type(ids[k]) is int for k in ("block_number", "log_index")) or not (
        isinstance(ids["transaction_hash"], str) and _TX_HASH.match(ids["transaction_hash"])
    ):
        ids = {}
    detail = {
        "task_id": str(task_id),
        "stream": rng["stream"],
        "range_start": rng["range_start"],
        "range_end": rng["range_end"],
        "undecodable": n,
        "first": ids,
    }
    await conn.execute(q("chain", "insert_event"), rng["job_id"], "chain.logs_undecodable", detail)
    log.warning(
        "chain.logs_undecodable",
        job_id=str(rng["job_id"]),
        stream=rng["stream"],
        task_id=str(task_id),
        range_start=rng["range_start"],
        range_end=rng["range_end"],
        undecodable=n,
        **{f"first_{k}": v for k, v in ids.items()},
    )


async def record_children(
    conn: Any, rng: Any, partition_id: uuid.UUID, report: dict[str, Any]
) -> None:
    """At the commit of a factory event's range: the children it created (checked)."""
    cfg = rng["decode"]
    reported = report.get("children") or {}
    if not isinstance(reported, dict):
        raise ValueError("children are malformed")
    for feed in cfg.get("feeds") or []:
        items = reported.get(feed["contract"]) or []
        if not isinstance(items, list) or len(items) > MAX_CHILDREN:
            raise ValueError("children are malformed")
        addrs, blocks, idx = [], [], []
        for item in items:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not isinstance(item[0], str)
                or not _ADDRESS.match(item[0])
                or type(item[1]) is not int
                or not rng["range_start"] <= item[1] < rng["range_end"]
                or type(item[2]) is not int
            ):
                raise ValueError("a child is malformed or outside the range")
            addrs.append(item[0])
            blocks.append(item[1])
            idx.append(item[2])
        if addrs:
            await conn.execute(
                q("chain", "insert_children"),
                rng["job_id"],
                feed["contract"],
                addrs,
                blocks,
                idx,
                partition_id,
            )
