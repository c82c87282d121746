"""Alert result rows -> `alert_events` rows (SPEC §12), the same for a SQL rule (evaluated in
the trusted worker) and a UDF rule (its rows come back through the sandboxed runner).

The dedupe key is derived from the alert, the identity columns and the block's hash, so
retries and duplicate evaluations insert nothing twice, and an event on a block that a
reorg replaced is a new event. Pure: block headers are looked up by the caller.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from trace_platform.domain.lifecycle import FatalTaskError

MAX_ROWS = 10_000


def dedupe_key(alert_id: str, identity: list[Any], block_hash: str | None) -> str:
    digest = hashlib.sha256(orjson.dumps([alert_id, identity, block_hash])).hexdigest()
    return f"alert:{alert_id}:{digest[:40]}"


def alert_of(work: dict[str, Any]) -> dict[str, Any] | None:
    """The alert of an alert-rule evaluation's payload, or None for any other task."""
    alert = work.get("alert")
    if work.get("kind") == "alert_eval" and isinstance(alert, dict):
        return alert
    return None


def block_numbers(rows: list[dict[str, Any]]) -> list[int]:
    """The distinct block numbers of result rows (FatalTaskError on a bad one)."""
    out = set()
    for r in rows:
        n = r.get("block_number")
        if n is not None:
            if type(n) is not int or n < 0:
                raise FatalTaskError("block_number of a result row must be a non-negative integer")
            out.add(n)
    return sorted(out)


def rows_to_events(
    a: dict[str, Any], rows: list[dict[str, Any]], headers: dict[int, tuple[str, int] | None]
) -> list[dict[str, Any]]:
    """alert_events rows of an alert's result rows; `headers` = block number -> (hash, time)
    from the node. A row without an identity column fails the evaluation (naming it)."""
    if len(rows) > MAX_ROWS:
        raise FatalTaskError(f"the rule returned more than {MAX_ROWS} rows for one range")
    events = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise FatalTaskError(f"result row {i} is not an object")
        missing = [c for c in a["identity"] if c not in r]
        if missing:
            raise FatalTaskError(f"result row {i} lacks identity column(s) {missing}")
        number = r.get("block_number")
        header = headers.get(int(number)) if number is not None else None
        block_hash = r.get("block_hash") or (header[0] if header else None)
        when = datetime.fromtimestamp(header[1], UTC) if header else datetime.now(UTC)
        identity = [r[c] for c in a["identity"]]
        tx = r.get("transaction_hash") or r.get("tx_hash")
        events.append(
            {
                "alert_definition_id": a["alert_id"],
                "dedupe_key": dedupe_key(a["alert_id"], identity, block_hash),
                "event_time": when.isoformat(),
                "chain_id": a["chain_id"],
                "block_number": int(number) if number is not None else None,
                "block_hash": str(block_hash) if block_hash is not None else None,
                "tx_hash": str(tx) if tx is not None else None,
                "payload": {"alert": a["name"], "severity": a["severity"], "row": r},
                **({"channels": a["channels"]} if a.get("channels") else {}),
            }
        )
    return events
