"""Example Python UDF: flag transfers above a threshold.

event: {"threshold_wei": int, "dataset": "<dataset uuid granted to the task>"}
   or: {"threshold_wei": int, "transfers": [{"tx_hash", "block_number", "value_wei", ...}]}
Reads the granted dataset through the query service (context.query) and returns
alert_events rows; dedupe keys derive from the data (tx hash), never from the attempt.
"""

import uuid

from trace_udf import FatalError

RULE = uuid.uuid5(uuid.NAMESPACE_URL, "trace:example:large-transfer")


def transfers_above(event, context, threshold):
    if "dataset" not in event:
        return [t for t in event.get("transfers", []) if int(t["value_wei"]) > threshold]
    result = context.query(
        event["dataset"],
        "SELECT tx_hash, block_number, value_wei, ts FROM dataset "
        f"WHERE value_wei > {threshold} ORDER BY block_number",
        limit=10000,
    )
    names = [c["name"] for c in result["columns"]]
    return [dict(zip(names, row)) for row in result["rows"]]


def handler(event, context):
    threshold = event.get("threshold_wei")
    if not isinstance(threshold, int) or threshold < 0:
        raise FatalError("threshold_wei must be a non-negative integer")
    alerts = []
    for t in transfers_above(event, context, threshold):
        alerts.append(
            {
                "alert_definition_id": str(RULE),
                "dedupe_key": f"large-transfer:{t['tx_hash']}",
                "event_time": t.get("ts") or t.get("time") or "2024-01-01T00:00:00Z",
                "chain_id": t.get("chain_id", 1),
                "block_number": t.get("block_number"),
                "tx_hash": t["tx_hash"],
                "payload": {
                    "value_wei": str(t["value_wei"]),
                    "rule": "large-transfer",
                    "language": "python",
                },
            }
        )
    context.log.info(f"{len(alerts)} large transfers")
    return alerts
