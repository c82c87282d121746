"""`alert_eval`: evaluate one alert's SQL rule over one committed range (SPEC §12).

The trusted worker holds the task's capability token, which grants that range of the source
dataset only; the rule runs through the query service (gate, sandbox, audit). Each result
row becomes an `alert_events` row whose dedupe key is derived from the alert, the identity
columns and the block's hash (read from the node), so retries and duplicate evaluations
insert nothing twice and an event on a block that a reorg replaced is a new event.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from trace_platform.chain.rpc import RpcClient, RpcError, RpcUnavailable
from trace_platform.config import Settings
from trace_platform.query.client import task_query

MAX_ROWS = 10_000


class EvaluationFatal(Exception):
    """The rule cannot produce events (missing identity column, too many rows)."""


class EvaluationRetryable(Exception):
    """Try again (query service or node unavailable)."""


def dedupe_key(alert_id: str, identity: list[Any], block_hash: str | None) -> str:
    digest = hashlib.sha256(orjson.dumps([alert_id, identity, block_hash])).hexdigest()
    return f"alert:{alert_id}:{digest[:40]}"


async def run_rule(
    settings: Settings, task_id: uuid.UUID, attempt: int, token: str, dataset_uuid: str, sql: str
) -> dict[str, Any]:
    body = {
        "task_id": str(task_id),
        "attempt": attempt,
        "dataset_id": dataset_uuid,
        "sql": sql,
        "limit": MAX_ROWS,
    }
    timeout = aiohttp.ClientTimeout(total=settings.query_timeout_seconds + 10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            status, answer = await task_query(http, settings.resolved_query_url, token, body)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise EvaluationRetryable(f"query service: {type(exc).__name__}") from None
    if status in (429, 503) or status >= 500:
        raise EvaluationRetryable(f"query service answered {status}")
    if status != 200:
        raise EvaluationFatal(f"rule rejected ({status}): {answer.get('detail', '')}"[:500])
    result: dict[str, Any] = answer
    return result


def block_numbers(rows: list[dict[str, Any]]) -> list[int]:
    out = set()
    for r in rows:
        n = r.get("block_number")
        if n is not None:
            if type(n) is not int or n < 0:
                raise EvaluationFatal("block_number of a result row must be a non-negative integer")
            out.add(n)
    return sorted(out)


def rows_to_events(
    a: dict[str, Any], rows: list[dict[str, Any]], headers: dict[int, tuple[str, int] | None]
) -> list[dict[str, Any]]:
    """alert_events rows of an alert's result rows; `headers` = block number -> (hash, time)
    from the node. A row without an identity column fails the evaluation (naming it)."""
    if len(rows) > MAX_ROWS:
        raise EvaluationFatal(f"the rule returned more than {MAX_ROWS} rows for one range")
    events = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise EvaluationFatal(f"result row {i} is not an object")
        missing = [c for c in a["identity"] if c not in r]
        if missing:
            raise EvaluationFatal(f"result row {i} lacks identity column(s) {missing}")
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


async def evaluate(
    settings: Settings, task_id: uuid.UUID, attempt: int, token: str, payload: dict[str, Any]
) -> list[dict[str, Any]]:
    """The alert_events rows of one (alert, range) of a SQL rule."""
    a = payload.get("alert")
    if not isinstance(a, dict):
        raise EvaluationFatal("alert_eval: payload has no alert")
    result = await run_rule(settings, task_id, attempt, token, a["dataset_uuid"], a["sql"])
    if result.get("truncated"):
        raise EvaluationFatal(f"the rule returned more than {MAX_ROWS} rows for one range")
    names = [c["name"] for c in result["columns"]]
    missing = [c for c in a["identity"] if c not in names]
    if missing:
        raise EvaluationFatal(f"the rule's result lacks identity column(s) {missing}")
    rows = [dict(zip(names, r, strict=True)) for r in result["rows"]]
    if not rows:
        return []
    numbers = block_numbers(rows)
    headers: dict[int, tuple[str, int] | None] = {}
    url = settings.rpc_url(a["rpc_pool"])
    if numbers and url is not None:
        try:
            async with RpcClient(url, settings.chain_rpc_timeout_seconds) as rpc:
                headers = await rpc.block_headers(numbers)
        except (RpcUnavailable, RpcError) as exc:
            raise EvaluationRetryable(f"rpc: {exc}") from None
    return rows_to_events(a, rows, headers)
