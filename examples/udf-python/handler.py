"""Example Python UDF: flag transfers above a threshold.

event: {"threshold_wei": int, "transfers": [{"tx_hash", "block_number", "value_wei", ...}]}
Returns alert_events rows; dedupe keys derive from the data (tx hash), never the attempt.
"""

import hashlib
import uuid

from trace_udf import FatalError

RULE = uuid.uuid5(uuid.NAMESPACE_URL, "trace:example:large-transfer")


def handler(event, context):
    threshold = event.get("threshold_wei")
    if not isinstance(threshold, int) or threshold < 0:
        raise FatalError("threshold_wei must be a non-negative integer")
    alerts = []
    for t in event.get("transfers", []):
        if int(t["value_wei"]) > threshold:
            alerts.append({
                "alert_definition_id": str(RULE),
                "dedupe_key": f"large-transfer:{t['tx_hash']}",
                "event_time": t.get("time", "2024-01-01T00:00:00Z"),
                "chain_id": t.get("chain_id", 1),
                "block_number": t.get("block_number"),
                "tx_hash": t["tx_hash"],
                "block_hash": "0x" + hashlib.sha256(str(t.get("block_number")).encode()).hexdigest(),
                "payload": {"value_wei": str(t["value_wei"]), "rule": "large-transfer",
                            "language": "python"},
            })
    context.log.info(f"{len(alerts)} alerts from {len(event.get('transfers', []))} transfers")
    return alerts
