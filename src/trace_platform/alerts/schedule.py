"""Evaluation tasks: one per (alert, committed partition) with a deterministic id, created
with their wake-ups in one transaction — on `dataset.range_committed` (every new or re-synced
range) and, for `start: {from_block}`, as a backfill over what is already committed."""

from __future__ import annotations

import uuid
from typing import Any

from trace_platform.alerts.spec import evaluation_task_id
from trace_platform.db.sql import q
from trace_platform.logs import get_logger

log = get_logger(__name__)
EVAL_ATTEMPTS = 10


def evaluation_payload(
    alert: Any,
    source: Any,
    partition_id: str,
    start: int,
    end: int,
    headers_from: str | None = None,
) -> dict[str, Any]:
    """A SQL rule runs in the worker (operator alert_eval); a UDF rule runs in the sandboxed
    runner, whose handler gets {alert, range, config} and calls context.query.
    `headers_from`: a chain's stored `blocks` relation the events' block hashes and times
    are read from (granted for the range) instead of the node — a DAG generation's
    re-evaluation makes no RPC request."""
    spec = alert["spec"]
    about = {
        "alert_id": str(alert["alert_id"]),
        "name": alert["name"],
        "identity": spec["identity"],
        "severity": spec["severity"],
        "channels": list(range(len(spec.get("channels", [])))),
        "chain_id": source["chain_id"],
        "rpc_pool": source["rpc_pool"],
        "partition_id": partition_id,
        "dataset_uuid": str(alert["dataset_uuid"]),
        "dataset": source["dataset"],
        "start": start,
        "end": end,
    }
    # The task's token grants this range of every relation of the source's chain job (the
    # rule reads the source as `dataset` and may join the others), nothing else.
    inputs: list[dict[str, Any]] = [{"chain": source["job"], "range": [start, end]}]
    if headers_from is not None:
        about["headers_from"] = headers_from
        inputs.append({"dataset": headers_from, "range": [start, end]})
    udf = spec["rule"].get("udf")
    if udf is None:
        return {
            "operator": "alert_eval",
            "alert": about | {"sql": spec["rule"]["sql"]},
            "inputs": inputs,
        }
    return {
        "operator": "alert_eval",
        "runtime": "lambda",
        "udf": {"bundle_id": udf["bundle_id"]},
        "alert": about,
        "inputs": inputs,
        "work_payload": {
            "kind": "alert_eval",
            "alert": about,
            "range": {
                "dataset_id": str(alert["dataset_uuid"]),
                "dataset": source["dataset"],
                "start": start,
                "end": end,
            },
            "config": udf.get("config", {}),
        },
    }


async def schedule_evaluations(
    conn: Any,
    dataset_uuid: uuid.UUID,
    partitions: list[tuple[str, int, int]],
    alerts: list[Any] | None = None,
    headers_from: str | None = None,
) -> int:
    """Evaluation tasks of these partitions for every enabled alert of the dataset (or the
    given alerts) whose start block the partition ends after. Returns tasks created."""
    alerts = (
        alerts
        if alerts is not None
        else await conn.fetch(q("alerts", "alerts_of_dataset"), dataset_uuid)
    )
    if not alerts:
        return 0
    source = await conn.fetchrow(q("alerts", "source_chain"), dataset_uuid)
    if source is None:
        return 0
    # One statement per org (the dataset's, in practice) for every alert and partition.
    by_org: dict[Any, tuple[list[uuid.UUID], list[dict[str, Any]]]] = {}
    for alert in alerts:
        ids, payloads = by_org.setdefault(alert["org_id"], ([], []))
        for p, s, e in partitions:
            if e > alert["start_block"]:
                ids.append(evaluation_task_id(alert["alert_id"], p))
                payloads.append(evaluation_payload(alert, source, str(p), s, e, headers_from))
    created = 0
    for org_id, (ids, payloads) in by_org.items():
        if not ids:
            continue
        status = await conn.execute(
            q("chain", "insert_range_tasks"), ids, payloads, org_id, EVAL_ATTEMPTS
        )
        created += int(status.split()[-1])  # wake-ups written = tasks that did not exist
    if created:
        await conn.execute(q("outbox", "notify_outbox"))
    return created
